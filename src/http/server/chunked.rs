//! The chunked transfer coding (RFC 9112 section 7.1), decoded as bytes
//! arrive: the decoder keeps its place between reads, so a body sent one
//! byte at a time is still read in linear time, and it refuses a body over
//! the limit as soon as a chunk size says so.

use super::wire::{refuse, too_large, Refusal};

/// Longest chunk-size line (with extensions) or trailer line.
const MAX_LINE: usize = 4096;
/// Most trailer bytes in all.
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug)]
enum State {
    Size,
    Data(usize),
    DataEnd,
    Trailers(usize),
    Done,
}

#[derive(Debug)]
pub struct Dechunker {
    state: State,
    body: Vec<u8>,
    max: usize,
}

fn bad() -> Refusal {
    refuse(400, "malformed chunked body")
}

impl Dechunker {
    pub fn new(max: usize) -> Dechunker {
        Dechunker {
            state: State::Size,
            body: Vec::new(),
            max,
        }
    }

    pub fn done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    pub fn into_body(self) -> Vec<u8> {
        self.body
    }

    /// Decodes from the start of `input`; returns how many bytes it took.
    /// Stops at the end of the body: what follows is the next request.
    pub fn feed(&mut self, input: &[u8]) -> Result<usize, Refusal> {
        let mut at = 0;
        loop {
            let rest = &input[at..];
            match self.state {
                State::Done => return Ok(at),
                State::Size => {
                    let Some(line) = take_line(rest)? else {
                        return Ok(at);
                    };
                    at += line.len() + 2;
                    let size = parse_size(line)?;
                    if size > self.max - self.body.len() {
                        return Err(too_large(self.max));
                    }
                    self.state = match size {
                        0 => State::Trailers(0),
                        n => State::Data(n),
                    };
                }
                State::Data(left) => {
                    let n = left.min(rest.len());
                    if n == 0 {
                        return Ok(at);
                    }
                    self.body.extend_from_slice(&rest[..n]);
                    at += n;
                    self.state = match left - n {
                        0 => State::DataEnd,
                        left => State::Data(left),
                    };
                }
                State::DataEnd => {
                    if rest.len() < 2 {
                        return Ok(at);
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err(bad());
                    }
                    at += 2;
                    self.state = State::Size;
                }
                State::Trailers(seen) => {
                    let Some(line) = take_line(rest)? else {
                        return Ok(at);
                    };
                    at += line.len() + 2;
                    let seen = seen + line.len() + 2;
                    if seen > MAX_TRAILERS {
                        return Err(bad());
                    }
                    self.state = if line.is_empty() {
                        State::Done
                    } else {
                        State::Trailers(seen)
                    };
                }
            }
        }
    }
}

/// The line at the start of `input` without its CRLF; None until complete.
fn take_line(input: &[u8]) -> Result<Option<&[u8]>, Refusal> {
    match input.windows(2).position(|w| w == b"\r\n") {
        Some(end) if end <= MAX_LINE => Ok(Some(&input[..end])),
        Some(_) => Err(bad()),
        None if input.len() > MAX_LINE => Err(bad()),
        None => Ok(None),
    }
}

/// `1a;ext=v` -> 26. Hex digits only, and few enough to fit.
fn parse_size(line: &[u8]) -> Result<usize, Refusal> {
    let digits = line.split(|&b| b == b';').next().unwrap_or(b"");
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(bad());
    }
    let text = std::str::from_utf8(digits).map_err(|_| bad())?;
    usize::from_str_radix(text, 16).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_steps(input: &[u8], step: usize) -> Result<(Vec<u8>, usize), Refusal> {
        let mut decoder = Dechunker::new(64);
        let mut buffer = Vec::new();
        let mut taken = 0;
        for piece in input.chunks(step) {
            buffer.extend_from_slice(piece);
            let n = decoder.feed(&buffer)?;
            buffer.drain(..n);
            taken += n;
            if decoder.done() {
                return Ok((decoder.into_body(), taken));
            }
        }
        Ok((Vec::new(), usize::MAX))
    }

    #[test]
    fn decodes_whole_or_byte_by_byte_and_stops_at_the_end() {
        let input = b"5;name=v\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\nGET /next";
        for step in [1, 3, input.len()] {
            let (body, taken) = decode_in_steps(input, step).unwrap();
            assert_eq!(body, b"hello world", "step {step}");
            assert_eq!(taken, input.len() - b"GET /next".len());
        }
    }

    #[test]
    fn refuses_bad_sizes_missing_crlf_and_oversized_bodies() {
        for bad in [
            &b"x\r\n"[..],
            b"-1\r\n",
            b"\r\n",
            b"5\r\nhelloXX",
            b"123456789\r\n",
        ] {
            assert_eq!(decode_in_steps(bad, 64).unwrap_err().status, 400, "{bad:?}");
        }
        assert_eq!(decode_in_steps(b"41\r\n", 64).unwrap_err().status, 413);
        assert_eq!(
            decode_in_steps(b"40\r\n", 64).map(|r| r.1),
            Ok(usize::MAX),
            "exactly the limit is fine, and waits for the data"
        );
    }
}
