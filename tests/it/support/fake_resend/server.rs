//! The fake's HTTP side on tiny_http: a thread per request, each request
//! recorded, decided, held as the mode says, accepted or refused, and the
//! answer written by hand (or the connection broken).

use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::decide::{decide, Decision, PendingSend, Reply};
use super::idempotency::{accept, release_key};
use super::{Mode, RecordedRequest, Shared};

/// How often held (hanging or delayed) requests look at the mode and the stop flag.
const POLL: Duration = Duration::from_millis(10);

/// One thread per request, so a hanging or delayed request never blocks others.
pub(super) fn accept_loop(server: tiny_http::Server, shared: Arc<Shared>) {
    let mut handlers: Vec<JoinHandle<()>> = Vec::new();
    while !shared.stopping() {
        match server.recv_timeout(Duration::from_millis(20)) {
            Ok(Some(request)) => {
                let shared = Arc::clone(&shared);
                let handler = thread::Builder::new()
                    .name("fake-resend-request".into())
                    .spawn(move || handle(&shared, request))
                    .expect("fake resend: spawn request thread");
                handlers.retain(|h| !h.is_finished());
                handlers.push(handler);
            }
            Ok(None) => {}
            Err(_) => break,
        }
    }
    // Held requests see the stop flag within POLL and let go.
    for handler in handlers {
        let _ = handler.join();
    }
}

pub(super) struct Incoming {
    pub(super) method: String,
    pub(super) path: String,
    pub(super) headers: BTreeMap<String, String>,
    pub(super) body: Value,
    pub(super) raw_body: String,
    pub(super) key: Option<String>,
    pub(super) received_at: Instant,
}

fn handle(shared: &Shared, mut request: tiny_http::Request) {
    let incoming = read_request(&mut request);
    let index = {
        let mut state = shared.lock();
        state.requests.push(RecordedRequest {
            method: incoming.method.clone(),
            path: incoming.path.clone(),
            headers: incoming.headers.clone(),
            body: incoming.body.clone(),
            raw_body: incoming.raw_body.clone(),
            status: None,
            response: Value::Null,
            idempotency_key: incoming.key.clone(),
            received_at: incoming.received_at,
            fault: None,
            closed: false,
            new_email_ids: Vec::new(),
        });
        state.requests.len() - 1
    };

    let decision = {
        let mut state = shared.lock();
        let mut fault = None;
        let decision = decide(&mut state, &incoming, &mut fault);
        state.requests[index].fault = fault;
        decision
    };
    let reply = match decision {
        Decision::Reply(reply) => reply,
        Decision::Close => {
            shared.lock().requests[index].closed = true;
            break_connection(request);
            return;
        }
        Decision::Send(send) => {
            if !hold(shared, &send) {
                release_key(&mut shared.lock(), send.key.as_deref());
                // Let go without answering: no bytes, and no 500 from tiny_http's Drop.
                drop(request.into_writer());
                return;
            }
            let close = send.close_after_accept;
            let reply = {
                let mut state = shared.lock();
                let (reply, ids) = accept(&mut state, send);
                state.requests[index].new_email_ids = ids;
                reply
            };
            if close {
                shared.lock().requests[index].closed = true;
                break_connection(request);
                return;
            }
            reply
        }
    };
    {
        let mut state = shared.lock();
        let recorded = &mut state.requests[index];
        recorded.status = Some(reply.status);
        recorded.response = reply.body.clone();
    }
    respond(request, reply);
}

fn read_request(request: &mut tiny_http::Request) -> Incoming {
    let received_at = Instant::now();
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for header in request.headers() {
        let name = header.field.as_str().as_str().to_ascii_lowercase();
        let value = header.value.as_str().to_string();
        headers
            .entry(name)
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    let mut raw = Vec::new();
    let _ = request.as_reader().read_to_end(&mut raw);
    let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    let key = headers.get("idempotency-key").cloned();
    Incoming {
        method: request.method().as_str().to_ascii_uppercase(),
        path: request.url().split('?').next().unwrap_or("").to_string(),
        headers,
        body,
        raw_body: String::from_utf8_lossy(&raw).into_owned(),
        key,
        received_at,
    }
}

/// Waits as the mode says. False if the request must be let go unanswered.
fn hold(shared: &Shared, send: &PendingSend) -> bool {
    match send.mode {
        Mode::Hang => loop {
            if shared.stopping() || shared.lock().mode_generation != send.mode_generation {
                return false;
            }
            thread::sleep(POLL);
        },
        Mode::Delay(delay) => {
            let deadline = Instant::now() + delay;
            while Instant::now() < deadline {
                if shared.stopping() {
                    return false;
                }
                thread::sleep(POLL.min(deadline.saturating_duration_since(Instant::now())));
            }
            true
        }
        Mode::Ok | Mode::Fail(_) | Mode::Close => true,
    }
}

/// Answers with bytes that are not HTTP, so the client drops the connection
/// with a transport error straight away (see `Mode::Close`).
fn break_connection(request: tiny_http::Request) {
    use std::io::Write;
    let mut writer = request.into_writer();
    let _ = writer.write_all(b"\x00\x01 connection broken by the fake \r\n\r\n");
    let _ = writer.flush();
}

/// Writes the reply by hand with `Connection: close` (tiny_http drops that
/// header from its own responses). tiny_http 0.12 serves each connection on
/// a task-pool thread for the connection's whole life, and its pool can lose
/// a wake-up when several connections arrive at once under load: the extra
/// connection then waits for a thread until another connection ends. With
/// keep-alive clients that can be never, so the fake ends every connection
/// after one exchange.
fn respond(request: tiny_http::Request, reply: Reply) {
    let body = reply.body.to_string();
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        reply.status,
        reason(reply.status),
        body.len()
    );
    for (name, value) in &reply.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut writer = request.into_writer();
    // The client may have given up already; nothing to do about that here.
    let _ = writer
        .write_all(head.as_bytes())
        .and_then(|()| writer.write_all(body.as_bytes()))
        .and_then(|()| writer.flush());
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}
