//! A test's webhook endpoint on tiny_http: records every request, answers as
//! its mode says (accept, fail every other request, fail all, or hang), and
//! checks each signature with its own Standard Webhooks verification,
//! written here apart from herald's signer so a shared mistake cannot pass.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

/// How the endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Accept,
    /// 500 to the 1st, 3rd, 5th... request, 204 to the others.
    FailEveryOther,
    FailAll,
    /// Reads the request and never answers (until the receiver stops).
    Hang,
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub body: String,
    /// The status answered (None: hung).
    pub status: Option<u16>,
    /// Whether the signature verified, with the secret known at receipt.
    pub verified: bool,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

struct State {
    answer: Answer,
    secret: Option<String>,
    received: Vec<Received>,
}

pub struct Receiver {
    url: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    pub fn start(answer: Answer) -> Receiver {
        let server = tiny_http::Server::http("127.0.0.1:0").expect("bind the webhook receiver");
        let url = format!("http://{}/hooks", server.server_addr());
        let state = Arc::new(Mutex::new(State {
            answer,
            secret: None,
            received: Vec::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            thread::spawn(move || accept_loop(server, &state, &stop))
        };
        Receiver {
            url,
            state,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The endpoint's secret, as `POST /v1/webhooks` returned it.
    pub fn set_secret(&self, secret: &str) {
        self.lock().secret = Some(secret.to_string());
    }

    pub fn secret(&self) -> Option<String> {
        self.lock().secret.clone()
    }

    pub fn set_answer(&self, answer: Answer) {
        self.lock().answer = answer;
    }

    pub fn received(&self) -> Vec<Received> {
        self.lock().received.clone()
    }

    /// The requests answered 2xx.
    pub fn accepted(&self) -> Vec<Received> {
        let ok = |r: &&Received| r.status.is_some_and(|s| (200..300).contains(&s));
        self.received().iter().filter(ok).cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn accept_loop(server: tiny_http::Server, state: &Arc<Mutex<State>>, stop: &Arc<AtomicBool>) {
    let mut hung = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let Ok(Some(mut request)) = server.recv_timeout(Duration::from_millis(20)) else {
            continue;
        };
        let header = |name: &str| {
            request
                .headers()
                .iter()
                .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
                .map(|h| h.value.as_str().to_string())
                .unwrap_or_default()
        };
        let (id, timestamp, signature) = (
            header("webhook-id"),
            header("webhook-timestamp"),
            header("webhook-signature"),
        );
        let mut body = String::new();
        let _ = request.as_reader().read_to_string(&mut body);
        let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
        let verified = state
            .secret
            .as_deref()
            .is_some_and(|secret| verify(secret, &id, &timestamp, &signature, &body));
        let status = match state.answer {
            Answer::Accept => Some(204),
            Answer::FailEveryOther if state.received.len().is_multiple_of(2) => Some(500),
            Answer::FailEveryOther => Some(204),
            Answer::FailAll => Some(500),
            Answer::Hang => None,
        };
        state.received.push(Received {
            id,
            timestamp,
            signature,
            body,
            status,
            verified,
        });
        drop(state);
        match status {
            Some(code) => {
                let _ = request.respond(tiny_http::Response::empty(code));
            }
            // Held open, unanswered, until the receiver stops.
            None => hung.push(request),
        }
    }
    drop(hung);
}

/// The Standard Webhooks check: the timestamp within five minutes of now,
/// and one of the header's space-separated `v1,<base64>` signatures equal
/// to HMAC-SHA256 of `{id}.{timestamp}.{body}` under the decoded secret.
pub fn verify(secret: &str, id: &str, timestamp: &str, header: &str, body: &str) -> bool {
    let Some(key) = secret
        .strip_prefix("whsec_")
        .and_then(|s| STANDARD.decode(s).ok())
    else {
        return false;
    };
    let Ok(ts) = timestamp.parse::<i64>() else {
        return false;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if (now - ts).abs() > 300 || id.is_empty() {
        return false;
    }
    let signed = format!("{id}.{timestamp}.{body}");
    header.split(' ').any(|candidate| {
        let Some(sig) = candidate.strip_prefix("v1,") else {
            return false;
        };
        let Ok(sig) = STANDARD.decode(sig) else {
            return false;
        };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key) else {
            return false;
        };
        mac.update(signed.as_bytes());
        mac.verify_slice(&sig).is_ok()
    })
}
