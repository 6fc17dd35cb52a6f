//! The bench's mail providers, which accept every email at once and count
//! it: `Counter` in process for the dispatch scenario, and `FakeResend`, a
//! Resend API on loopback for the herald child process.
//!
//! Not the integration tests' `tests/it/support/fake_resend`, on purpose.
//! That one is Resend's whole behaviour (validation, idempotency, faults)
//! on tiny_http, a dev-dependency a bin target cannot use; it keeps every
//! request and email it saw, and ends each connection after one answer
//! (tiny_http 0.12 can lose a wake-up under load). Driven by herald's own
//! Resend provider from 4 threads on this 2-core machine, it took 32-35 us
//! of CPU and 12.7 KB of memory per email in batches of 100 (36,000-39,000
//! emails/s, 506 MB after 40,000 emails), against 7.4-7.8 us and nothing
//! kept here (161,000-170,000 emails/s, 9 MB); one email per request, 317
//! us against 52 us (3,400 against 19,400 emails/s). The bench shares its
//! two cores with herald and sends 200,000 emails and more in a default
//! run, so this one parses only the request line, `Content-Length` and, for
//! a batch, the JSON array's length, and keeps its connections alive.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::mail::{Email, MailError, MailProvider, RateHint, Sent};
use serde_json::Value;

use crate::report::progress;

/// The in-process fake provider: accepts at once and counts.
#[derive(Default)]
pub struct Counter {
    pub accepted: AtomicUsize,
}

impl MailProvider for Counter {
    fn name(&self) -> &'static str {
        "bench"
    }

    fn send_email(&self, _email: &Email, key: &str) -> (Result<Sent, MailError>, RateHint) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        (
            Ok(Sent {
                provider_id: key.to_string(),
            }),
            RateHint::default(),
        )
    }

    fn send_batch(&self, emails: &[Email], key: &str) -> (Result<Vec<Sent>, MailError>, RateHint) {
        self.accepted.fetch_add(emails.len(), Ordering::Relaxed);
        let sent = (0..emails.len())
            .map(|i| Sent {
                provider_id: format!("{key}.{i}"),
            })
            .collect();
        (Ok(sent), RateHint::default())
    }
}

/// A fake Resend API on loopback that accepts every email at once: plain
/// HTTP/1.1 keep-alive on std's TcpListener, a thread per connection. (Not
/// tiny_http: its 0.12 task pool can lose a wake-up when connections arrive
/// together, leaving a keep-alive connection unserved until another closes.)
pub struct FakeResend {
    pub url: String,
    pub accepted: Arc<AtomicUsize>,
}

/// Starts the fake on an ephemeral loopback port; it runs until the bench exits.
pub fn fake_resend() -> Result<FakeResend, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let counter = counter.clone();
            std::thread::spawn(move || serve_fake_connection(stream, &counter));
        }
    });
    Ok(FakeResend {
        url: format!("http://127.0.0.1:{port}"),
        accepted,
    })
}

/// Answers every request on one connection until the client closes it:
/// `POST /emails/batch` with 200 `{"data":[{"id"},...]}`, one id per item of
/// the body's JSON array (422 and nothing counted if it is not one),
/// anything else with 200 `{"id"}`. Every email answered is counted in
/// `accepted`. Buffers are reused across requests: this is load generation.
fn serve_fake_connection(stream: std::net::TcpStream, accepted: &AtomicUsize) {
    use std::fmt::Write as _;
    use std::io::{BufRead, Read};
    let _ = stream.set_nodelay(true);
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = std::io::BufReader::new(stream);
    let mut line = String::new();
    let mut body = Vec::new();
    let mut reply = String::new();
    let mut response = String::new();
    loop {
        line.clear();
        if matches!(reader.read_line(&mut line), Ok(0) | Err(_)) {
            return;
        }
        // Request line: METHOD SP PATH SP VERSION.
        let path = line.split(' ').nth(1).unwrap_or("");
        let batch = path.split('?').next() == Some("/emails/batch");
        let mut length = 0usize;
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line == "\r\n" => break,
                Ok(_) => {
                    if let Some((name, value)) = line.split_once(':') {
                        if name.eq_ignore_ascii_case("content-length") {
                            length = value.trim().parse().unwrap_or(0);
                        }
                    }
                }
            }
        }
        body.clear();
        body.resize(length, 0);
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        reply.clear();
        let status = if batch {
            match serde_json::from_slice::<Vec<Value>>(&body) {
                Ok(items) => {
                    let first = accepted.fetch_add(items.len(), Ordering::Relaxed);
                    reply.push_str("{\"data\":[");
                    for n in first..first + items.len() {
                        if n > first {
                            reply.push(',');
                        }
                        let _ = write!(reply, "{{\"id\":\"bench-{n}\"}}");
                    }
                    reply.push_str("]}");
                    "200 OK"
                }
                Err(_) => {
                    reply.push_str(
                        "{\"statusCode\":422,\"name\":\"validation_error\",\
                         \"message\":\"The request body must be a JSON array of emails.\"}",
                    );
                    "422 Unprocessable Entity"
                }
            }
        } else {
            let n = accepted.fetch_add(1, Ordering::Relaxed);
            let _ = write!(reply, "{{\"id\":\"bench-{n}\"}}");
            "200 OK"
        };
        response.clear();
        let _ = write!(
            response,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{reply}",
            reply.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// Waits, with a progress line, until the fake provider has accepted
/// `emails`; an error after `minutes` since `started`.
pub fn wait_for_emails(
    accepted: &AtomicUsize,
    emails: usize,
    started: Instant,
    minutes: u64,
) -> Result<(), String> {
    while accepted.load(Ordering::Relaxed) < emails {
        if started.elapsed() > Duration::from_secs(minutes * 60) {
            return Err(format!(
                "emails did not all go out within {minutes} minutes"
            ));
        }
        progress(
            "emails accepted",
            accepted.load(Ordering::Relaxed),
            emails,
            started,
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
