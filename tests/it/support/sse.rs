//! A small server-sent events client over a raw TCP connection, for the
//! stream tests: it sends a GET with the given headers, checks the response
//! head, and reads events and comments line by line with a deadline.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct SseClient {
    reader: BufReader<TcpStream>,
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

/// One thing read from the stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Event { id: Option<String>, data: String },
    Comment(String),
}

impl Frame {
    pub fn id(&self) -> Option<i64> {
        match self {
            Frame::Event { id, .. } => id.as_deref().and_then(|i| i.parse().ok()),
            Frame::Comment(_) => None,
        }
    }

    pub fn json(&self) -> Value {
        match self {
            Frame::Event { data, .. } => serde_json::from_str(data).unwrap_or(Value::Null),
            Frame::Comment(_) => Value::Null,
        }
    }
}

impl SseClient {
    /// Opens `path` on `base_url` (`http://host:port`) with extra headers;
    /// reads the status line and headers (the body stays open).
    pub fn open(base_url: &str, path: &str, headers: &[(&str, &str)]) -> SseClient {
        SseClient::read_head(SseClient::send_request(base_url, path, headers))
    }

    /// Sends the stream request and reads nothing: a client that stopped
    /// reading (a closed laptop lid, a buffering proxy).
    pub fn send_request(base_url: &str, path: &str, headers: &[(&str, &str)]) -> TcpStream {
        let host = base_url.trim_start_matches("http://");
        let mut stream = TcpStream::connect(host).unwrap_or_else(|e| panic!("connect {host}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        let mut request =
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).expect("send request");
        stream
    }

    /// Reads the response head of a request sent by `send_request`.
    pub fn read_head(stream: TcpStream) -> SseClient {
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).expect("status line");
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {line:?}"));
        let mut headers = Vec::new();
        loop {
            line.clear();
            reader.read_line(&mut line).expect("header line");
            let trimmed = line.trim_end();
            if trimmed.is_empty() {
                break;
            }
            if let Some((name, value)) = trimmed.split_once(':') {
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
            }
        }
        SseClient {
            reader,
            status,
            headers,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The next event or comment, or None if nothing complete arrives before
    /// `timeout` (or the server closed the stream).
    pub fn next_frame(&mut self, timeout: Duration) -> Option<Frame> {
        let deadline = Instant::now() + timeout;
        let mut id = None;
        let mut data: Vec<String> = Vec::new();
        let mut comment = None;
        let mut line = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.reader
                .get_ref()
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .ok()?;
            line.clear();
            match self.reader.read_line(&mut line) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(_) => return None,
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                if !data.is_empty() {
                    return Some(Frame::Event {
                        id,
                        data: data.join("\n"),
                    });
                }
                if let Some(text) = comment.take() {
                    return Some(Frame::Comment(text));
                }
                continue;
            }
            if let Some(text) = line.strip_prefix(':') {
                comment = Some(text.trim().to_string());
            } else if let Some(value) = line.strip_prefix("id:") {
                id = Some(value.trim().to_string());
            } else if let Some(value) = line.strip_prefix("data:") {
                data.push(value.strip_prefix(' ').unwrap_or(value).to_string());
            }
        }
    }

    /// True once the server closes the stream (EOF) within `timeout`; false
    /// if it stays open. Whatever arrives before the end is discarded.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let _ = self.reader.get_ref().set_read_timeout(Some(left));
            match std::io::Read::read(&mut self.reader, &mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }

    /// The ids of every event until the stream ends or stays silent for
    /// `quiet`.
    pub fn event_ids_until_silent(&mut self, quiet: Duration) -> Vec<i64> {
        let mut ids = Vec::new();
        while let Some(event) = self.next_event(quiet) {
            ids.push(event.id().expect("an event id"));
        }
        ids
    }

    /// The next event (comments skipped), or None by `timeout`.
    pub fn next_event(&mut self, timeout: Duration) -> Option<Frame> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_frame(left)? {
                frame @ Frame::Event { .. } => return Some(frame),
                Frame::Comment(_) => continue,
            }
        }
    }

    /// Events up to the next heartbeat comment: with a short heartbeat
    /// period, "everything the server had to send right now".
    pub fn events_until_heartbeat(&mut self, timeout: Duration) -> Vec<Frame> {
        let deadline = Instant::now() + timeout;
        let mut events = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_frame(left) {
                Some(Frame::Comment(c)) if c == "heartbeat" => return events,
                Some(frame @ Frame::Event { .. }) => events.push(frame),
                Some(Frame::Comment(_)) => {}
                None => panic!("no heartbeat within {timeout:?}; events so far: {events:?}"),
            }
        }
    }
}
