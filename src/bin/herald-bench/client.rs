//! herald-bench's HTTP clients: `LoadClient`, a bare keep-alive client
//! cheap enough to generate load on the cores herald runs on, and a ureq
//! agent for the few calls that need a full client (tokens, streams).

use std::io::Write;
use std::time::Duration;

use serde_json::Value;

use crate::process::Herald;

/// A minimal keep-alive HTTP/1.1 client for the load phases: on two cores
/// the load generator shares the CPU with herald, so it must cost as little
/// as wrk does (a ureq agent costs several times more per request). It
/// expects `Content-Length` responses, which is all herald sends outside
/// the stream.
pub struct LoadClient {
    host: String,
    conn: Option<std::io::BufReader<std::net::TcpStream>>,
    request: Vec<u8>,
}

impl LoadClient {
    pub fn new(base: &str) -> LoadClient {
        let host = base.trim_start_matches("http://").to_string();
        LoadClient {
            host,
            conn: None,
            request: Vec::with_capacity(16 * 1024),
        }
    }

    /// Sends one request and reads the whole response; the status code, or
    /// None when the connection failed (the next call reconnects).
    pub fn call(&mut self, method: &str, path: &str, token: &str, body: &[u8]) -> Option<u16> {
        self.request.clear();
        let _ = write!(
            self.request,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n",
            self.host
        );
        if !body.is_empty() {
            let _ = write!(
                self.request,
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            );
        }
        self.request.extend_from_slice(b"\r\n");
        self.request.extend_from_slice(body);
        let status = self.exchange();
        if status.is_none() {
            self.conn = None;
        }
        status
    }

    fn exchange(&mut self) -> Option<u16> {
        use std::io::{BufRead, Read};
        if self.conn.is_none() {
            let stream = std::net::TcpStream::connect(&self.host).ok()?;
            stream.set_nodelay(true).ok()?;
            stream
                .set_read_timeout(Some(Duration::from_secs(30)))
                .ok()?;
            self.conn = Some(std::io::BufReader::with_capacity(64 * 1024, stream));
        }
        let conn = self.conn.as_mut()?;
        conn.get_mut().write_all(&self.request).ok()?;
        let mut line = String::new();
        conn.read_line(&mut line).ok()?;
        let status = line.split(' ').nth(1)?.parse().ok()?;
        let mut length = 0usize;
        loop {
            line.clear();
            if conn.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().ok()?;
                }
            }
        }
        let mut body = vec![0; length];
        conn.read_exact(&mut body).ok()?;
        Some(status)
    }
}

/// A ureq agent that reads every status as an answer, 30 s per call.
pub fn new_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// A new API token for `user`, issued with the service key.
pub fn issue_token(agent: &ureq::Agent, herald: &Herald, user: &str) -> Result<String, String> {
    let mut response = agent
        .post(format!("{}/v1/users/{user}/tokens", herald.base))
        .header("Authorization", format!("Bearer {}", herald.key))
        .send_empty()
        .map_err(|e| e.to_string())?;
    let body: Value = serde_json::from_str(
        &response
            .body_mut()
            .read_to_string()
            .map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    Ok(body["token"].as_str().ok_or("no token")?.to_string())
}

/// The value of the unlabelled metric `name` summed over `heralds`' /metrics.
pub fn metric(heralds: &[&Herald], name: &str) -> Option<f64> {
    let agent = new_agent();
    heralds.iter().try_fold(0.0, |sum, herald| {
        let text = agent
            .get(format!("{}/metrics", herald.base))
            .call()
            .ok()?
            .body_mut()
            .read_to_string()
            .ok()?;
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())?;
        Some(sum + value)
    })
}
