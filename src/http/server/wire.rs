//! HTTP/1.1 on the wire: a strict request-head parser (RFC 9112), the
//! request and response a handler takes and gives, and the response
//! writer. Strict because herald may sit behind a proxy that frames
//! requests differently: a head the parser does not fully understand is
//! refused and the connection closed, never guessed at.

use std::fmt::Write as _;

/// How the request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length(usize),
    Chunked,
}

/// A parsed request head.
#[derive(Debug)]
pub struct Head {
    pub method: String,
    pub target: String,
    /// Names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    pub framing: Framing,
    /// The client asked for `100 Continue` before it sends the body.
    pub expect_continue: bool,
    /// The connection ends after this exchange (HTTP/1.0 or `Connection: close`).
    pub close: bool,
}

/// Why a head was refused: the status to answer before closing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

pub fn refuse(status: u16, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        message: message.into(),
    }
}

/// The 413 for a body over `max` bytes.
pub fn too_large(max: usize) -> Refusal {
    refuse(413, format!("request body exceeds {max} bytes"))
}

/// Most header lines in one head.
const MAX_HEADERS: usize = 100;

/// Parses the head at the start of `buf`. `Ok(None)`: incomplete, read
/// more. `Ok(Some((head, len)))`: the head took `len` bytes. The caller
/// bounds how much it reads before a head completes.
pub fn parse_head(buf: &[u8], max_body: usize) -> Result<Option<(Head, usize)>, Refusal> {
    let Some(end) = find_head_end(buf) else {
        return Ok(None);
    };
    let text = &buf[..end];
    let mut lines = text.split(|&b| b == b'\n').map(|line| {
        line.strip_suffix(b"\r")
            .ok_or_else(|| refuse(400, "lines must end with CRLF"))
    });
    let request_line = lines.next().unwrap_or(Ok(b""))?;
    let (method, target, http10) = parse_request_line(request_line)?;
    let mut headers = Vec::new();
    for line in lines {
        let line = line?;
        if line.is_empty() {
            break;
        }
        if headers.len() == MAX_HEADERS {
            return Err(refuse(431, "too many header fields"));
        }
        headers.push(parse_header(line)?);
    }
    let head = interpret(method, target, http10, headers, max_body)?;
    Ok(Some((head, end)))
}

/// The offset just past the blank line ending the head.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

fn parse_request_line(line: &[u8]) -> Result<(String, String, bool), Refusal> {
    let bad = || refuse(400, "malformed request line");
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Err(bad());
    }
    // Origin form only ("/path?query"): herald is an origin server.
    if target.first() != Some(&b'/') || !target.iter().all(|&b| b.is_ascii_graphic()) {
        return Err(refuse(400, "request target must be a path"));
    }
    let http10 = match version {
        b"HTTP/1.1" => false,
        b"HTTP/1.0" => true,
        v if v.starts_with(b"HTTP/") => {
            return Err(refuse(505, "only HTTP/1.1 and HTTP/1.0 are served"))
        }
        _ => return Err(bad()),
    };
    // Both are ASCII by the checks above.
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Ok((text(method), text(target), http10))
}

fn parse_header(line: &[u8]) -> Result<(String, String), Refusal> {
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or_else(|| refuse(400, "malformed header field"))?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    // No whitespace around the name (RFC 9112 5.1), no obsolete line folding.
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return Err(refuse(400, "malformed header field name"));
    }
    if value.iter().any(|&b| b != b'\t' && (b < 0x20 || b == 0x7f)) {
        return Err(refuse(400, "control character in a header field"));
    }
    let value = value.trim_ascii();
    Ok((
        String::from_utf8_lossy(name).to_ascii_lowercase(),
        String::from_utf8_lossy(value).into_owned(),
    ))
}

fn interpret(
    method: String,
    target: String,
    http10: bool,
    headers: Vec<(String, String)>,
    max_body: usize,
) -> Result<Head, Refusal> {
    let values = |name: &'static str| {
        headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    if !http10 && values("host").count() != 1 {
        return Err(refuse(
            400,
            "an HTTP/1.1 request needs exactly one Host header",
        ));
    }
    let mut length: Option<u64> = None;
    for value in values("content-length") {
        let n = parse_length(value)?;
        if length.is_some_and(|m| m != n) {
            return Err(refuse(400, "conflicting Content-Length headers"));
        }
        length = Some(n);
    }
    let codings: Vec<&str> = values("transfer-encoding")
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let framing = match (codings.is_empty(), length) {
        (true, None) => Framing::Length(0),
        (true, Some(n)) => match usize::try_from(n) {
            Ok(n) if n <= max_body => Framing::Length(n),
            _ => return Err(too_large(max_body)),
        },
        (false, Some(_)) => {
            return Err(refuse(
                400,
                "Content-Length together with Transfer-Encoding",
            ))
        }
        (false, None) if http10 => {
            return Err(refuse(400, "Transfer-Encoding in an HTTP/1.0 request"))
        }
        (false, None) => {
            if codings.len() != 1 || !codings[0].eq_ignore_ascii_case("chunked") {
                return Err(refuse(501, "only the chunked transfer coding is supported"));
            }
            Framing::Chunked
        }
    };
    let connection = |token: &str| {
        values("connection")
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    let expect_continue = !http10
        && values("expect").any(|v| v.eq_ignore_ascii_case("100-continue"))
        && framing != Framing::Length(0);
    Ok(Head {
        close: http10 || connection("close"),
        method,
        target,
        framing,
        expect_continue,
        headers,
    })
}

/// `1*DIGIT`, and only that: no sign, no list, no whitespace inside, and a
/// value that fits.
fn parse_length(value: &str) -> Result<u64, Refusal> {
    let bad = || refuse(400, "invalid Content-Length");
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    value.parse().map_err(|_| bad())
}

/// RFC 9110 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A complete request, as the handler sees it.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// The origin-form target: path and query.
    pub target: String,
    /// Names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A response to write: status, headers (Content-Type among them) and body.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

/// How the head describes the body that follows.
pub enum BodyLength {
    /// `Content-Length` of the body; `head_only` for a HEAD request.
    Fixed { head_only: bool },
    /// A stream: no length, the connection ends the body.
    UntilClose,
}

/// Serialises `response`. Header values holding CR, LF or NUL are dropped
/// (with a log line): a handler bug must not split the response.
pub fn write_response(response: &Response, length: BodyLength, close: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + response.body.len());
    let mut head = String::with_capacity(160);
    let _ = write!(
        head,
        "HTTP/1.1 {} {}\r\nDate: {}\r\n",
        response.status,
        reason(response.status),
        crate::time::http_date(unix_ms())
    );
    for (name, value) in &response.headers {
        if value.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
            log::error!("dropped response header {name} holding a line break");
            continue;
        }
        let _ = write!(head, "{name}: {value}\r\n");
    }
    let head_only = match length {
        BodyLength::Fixed { head_only } => {
            if !matches!(response.status, 100..=199 | 204 | 304) {
                let _ = write!(head, "Content-Length: {}\r\n", response.body.len());
            }
            head_only
        }
        BodyLength::UntilClose => false,
    };
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    out.extend_from_slice(head.as_bytes());
    if !head_only {
        out.extend_from_slice(&response.body);
    }
    out
}

/// The answer to a head refused before any handler ran; the connection
/// closes after it.
pub fn refusal_response(refusal: &Refusal) -> Vec<u8> {
    let code = match refusal.status {
        408 => "request_timeout",
        413 => "payload_too_large",
        431 => "header_too_large",
        501 => "not_implemented",
        503 => "unavailable",
        505 => "version_not_supported",
        _ => "bad_request",
    };
    let body = serde_json::json!({"error": {"code": code, "message": refusal.message}});
    let mut headers = vec![("Content-Type", "application/json".to_string())];
    if refusal.status == 503 {
        headers.push(("Retry-After", "1".to_string()));
    }
    let response = Response {
        status: refusal.status,
        headers,
        body: body.to_string().into_bytes(),
    };
    write_response(&response, BodyLength::Fixed { head_only: false }, true)
}

/// The wall clock for the `Date` header (the edge's own, not the store's).
fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        303 => "See Other",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1024;

    fn parse(text: &str) -> Result<Option<(Head, usize)>, Refusal> {
        parse_head(text.as_bytes(), MAX)
    }

    fn status_of(text: &str) -> u16 {
        match parse(text) {
            Err(r) => r.status,
            Ok(Some(_)) => 200,
            Ok(None) => 0,
        }
    }

    #[test]
    fn a_plain_request_parses_with_its_length() {
        let text =
            "POST /v1/events?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nX-A:  v \r\n\r\nhello";
        let (head, len) = parse(text).unwrap().unwrap();
        assert_eq!(len, text.len() - 5);
        assert_eq!(head.method, "POST");
        assert_eq!(head.target, "/v1/events?x=1");
        assert_eq!(head.framing, Framing::Length(5));
        assert!(head.headers.contains(&("x-a".into(), "v".into())));
        assert!(!head.close && !head.expect_continue);
    }

    #[test]
    fn an_incomplete_head_asks_for_more() {
        assert_eq!(status_of("GET / HTTP/1.1\r\nHost: h\r\n"), 0);
        assert_eq!(status_of(""), 0);
    }

    #[test]
    fn invalid_or_conflicting_framing_is_refused() {
        let with = |headers: &str| format!("POST / HTTP/1.1\r\nHost: h\r\n{headers}\r\n");
        for bad in [
            "Content-Length: -1\r\n",
            "Content-Length: abc\r\n",
            "Content-Length: +5\r\n",
            "Content-Length: 1, 1\r\n",
            "Content-Length: 12345678901234567890123\r\n",
            "Content-Length: 5\r\nContent-Length: 6\r\n",
            "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
            "Content-Length : 5\r\n",
            " Content-Length: 5\r\n",
        ] {
            assert_eq!(status_of(&with(bad)), 400, "{bad:?}");
        }
        assert_eq!(
            status_of(&with("Content-Length: 5\r\nContent-Length: 5\r\n")),
            200
        );
        assert_eq!(status_of(&with("Content-Length: 1025\r\n")), 413);
        assert_eq!(
            status_of(&with("Transfer-Encoding: gzip, chunked\r\n")),
            501
        );
        let chunked = parse(&with("Transfer-Encoding: Chunked\r\n"))
            .unwrap()
            .unwrap();
        assert_eq!(chunked.0.framing, Framing::Chunked);
        assert_eq!(
            status_of("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            400
        );
    }

    #[test]
    fn malformed_heads_are_refused() {
        for bad in [
            "GET / HTTP/1.1\nHost: h\r\n\r\n",
            "GET  / HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nNoColon\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n folded\r\n\r\n",
            "G(T / HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET / FTP/1.1\r\nHost: h\r\n\r\n",
        ] {
            assert_eq!(status_of(bad), 400, "{bad:?}");
        }
        assert_eq!(status_of("GET / HTTP/2.0\r\nHost: h\r\n\r\n"), 505);
    }

    #[test]
    fn connection_persistence_follows_the_version_and_header() {
        let close = |t: &str| parse(t).unwrap().unwrap().0.close;
        assert!(!close("GET / HTTP/1.1\r\nHost: h\r\n\r\n"));
        assert!(close(
            "GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Close\r\n\r\n"
        ));
        assert!(close("GET / HTTP/1.0\r\n\r\n"));
    }

    #[test]
    fn expect_continue_only_for_a_body() {
        let expect = |t: &str| parse(t).unwrap().unwrap().0.expect_continue;
        assert!(expect(
            "POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"
        ));
        assert!(!expect(
            "GET / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n"
        ));
    }

    #[test]
    fn responses_carry_length_date_and_close() {
        let response = Response {
            status: 201,
            headers: vec![
                ("Content-Type", "application/json".into()),
                ("X-Bad", "a\r\nSet-Cookie: x".into()),
            ],
            body: b"{}".to_vec(),
        };
        let text = String::from_utf8(write_response(
            &response,
            BodyLength::Fixed { head_only: false },
            true,
        ))
        .unwrap();
        assert!(text.starts_with("HTTP/1.1 201 Created\r\nDate: "), "{text}");
        assert!(text.contains("\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"));
        assert!(!text.contains("Set-Cookie"), "{text}");
        let head = write_response(&response, BodyLength::Fixed { head_only: true }, false);
        assert!(String::from_utf8(head)
            .unwrap()
            .ends_with("Content-Length: 2\r\n\r\n"));
    }
}
