//! `FakeResend`: a Resend-compatible `POST /emails` and `POST /emails/batch`
//! on 127.0.0.1, run inside the test process: auth, validation, idempotency
//! keys and rate limits as Resend does them, told to fail, hang, delay or
//! break the connection at will (also at random, for a ratio of requests),
//! recording all it receives.
//!
//! Both endpoints go through the same steps; a batch differs only in what is
//! validated and accepted. Invariants:
//! - A batch is all or nothing: one invalid item (or `attachments` /
//!   `scheduled_at`, or not 1..=100 items) refuses the whole request with 422
//!   naming the index, and nothing is accepted or remembered.
//! - An idempotency key covers the whole request body: a batch accepted
//!   under a key is replayed whole (the same ids, in order), never in part.
//! - "Sent twice" is judged the way Resend would send: a repeat of an
//!   accepted key gets the original response and is not a second email, so a
//!   client's resends after a crash count once. What the fake accepted is
//!   counted from its request log (`RecordedRequest::new_email_ids`), where a
//!   key accepted as new twice shows up: after `forget_idempotency_keys`, as
//!   after Resend's 24 hours, it can.

use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How often held (hanging or delayed) requests look at the mode and the stop flag.
const POLL: Duration = Duration::from_millis(10);
/// Resend refuses idempotency keys longer than this.
const MAX_IDEMPOTENCY_KEY_LEN: usize = 256;
/// Resend's limit on recipients in `to`.
const MAX_RECIPIENTS: usize = 50;
/// Resend's limit on emails in one `POST /emails/batch`.
const MAX_BATCH: usize = 100;

/// What `POST /emails` and `POST /emails/batch` do with a request that passed
/// auth and rate limiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Validate, apply idempotency, accept and answer 200 `{id}` (a batch:
    /// `{data: [{id}, ...]}`).
    Ok,
    /// Answer with this status and Resend's error shape; nothing is accepted
    /// and nothing is remembered for idempotency.
    Fail(u16),
    /// Never answer: hold the request until the mode is changed or the fake is
    /// dropped, then let go of it without a response (the client only sees
    /// its own timeout). Nothing is accepted.
    Hang,
    /// Wait this long, then behave like `Ok`.
    Delay(Duration),
    /// Break the connection instead of answering: the client reads bytes
    /// that are not HTTP and sees a transport error at once. Nothing is
    /// accepted. (tiny_http cannot reset a socket; a garbled answer is the
    /// closest it gets, and the client handles both the same way.)
    Close,
}

/// One scripted failure drawn by `set_random_faults`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 500 `internal_server_error`.
    Status500,
    /// 503 `application_error`.
    Status503,
    /// 429 `rate_limit_exceeded` with `retry-after` (see `set_retry_after`).
    RateLimited,
    /// The connection breaks before the email is accepted.
    Close,
    /// The email (every email of a batch) is accepted and its key
    /// remembered, then the connection breaks: the client never learns it
    /// went out, and must retry under the same key to get the original
    /// answer instead of a second email.
    AcceptThenClose,
}

impl Fault {
    pub const ALL: [Fault; 5] = [
        Fault::Status500,
        Fault::Status503,
        Fault::RateLimited,
        Fault::Close,
        Fault::AcceptThenClose,
    ];
}

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// Path without the query string.
    pub path: String,
    /// Header names lowercased; repeated headers joined with ", ".
    pub headers: BTreeMap<String, String>,
    /// The body parsed as JSON, `Value::Null` if empty or not JSON.
    pub body: Value,
    /// The body as sent (lossy UTF-8), to check retries send identical bytes.
    pub raw_body: String,
    /// Status answered; `None` while still in flight, or if it was never
    /// answered (`Mode::Hang`, or the fake stopped first).
    pub status: Option<u16>,
    /// JSON body answered, `Value::Null` until answered.
    pub response: Value,
    pub idempotency_key: Option<String>,
    pub received_at: Instant,
    /// The fault `set_random_faults` drew for this request, if any.
    pub fault: Option<Fault>,
    /// True if the connection was broken instead of answered (`Mode::Close`,
    /// `Fault::Close`, `Fault::AcceptThenClose`).
    pub closed: bool,
    /// The ids of the emails this request made the fake accept as new
    /// (answered 2xx, or `Fault::AcceptThenClose`): one for `/emails`, one
    /// per item, in order, for `/emails/batch`. Empty for everything else,
    /// including a repeat of an accepted key: that gets the original
    /// response (status 200, the same ids) and sends nothing.
    pub new_email_ids: Vec<String>,
}

impl RecordedRequest {
    /// A header by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

/// An email the fake actually accepted: one per id in some request's
/// `RecordedRequest::new_email_ids` (so a batch of n makes n).
#[derive(Debug, Clone)]
pub struct AcceptedEmail {
    /// The `id` answered to the client.
    pub id: String,
    /// The request's key; every email of a batch shares it.
    pub idempotency_key: Option<String>,
    pub from: String,
    /// `to` normalised to a list (Resend also takes a single string).
    pub to: Vec<String>,
    pub subject: String,
    pub html: Option<String>,
    pub text: Option<String>,
    /// The full `Authorization` header value, e.g. `Bearer re_test_key`.
    pub authorization: String,
    /// The email's JSON object, for fields not broken out above: the whole
    /// body for `/emails`, the email's own item for `/emails/batch`.
    pub body: Value,
    pub accepted_at: Instant,
}

/// The running fake. Stops (and joins its threads) on drop.
pub struct FakeResend {
    shared: Arc<Shared>,
    url: String,
    acceptor: Option<JoinHandle<()>>,
}

impl FakeResend {
    /// Starts the fake on an ephemeral loopback port.
    pub fn start() -> FakeResend {
        let server = tiny_http::Server::http("127.0.0.1:0").expect("fake resend: bind 127.0.0.1:0");
        let addr = server
            .server_addr()
            .to_ip()
            .expect("fake resend: listening on an IP address");
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            state: Mutex::new(State::new()),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name("fake-resend-accept".into())
                .spawn(move || accept_loop(server, shared))
                .expect("fake resend: spawn acceptor")
        };
        FakeResend {
            shared,
            url: format!("http://{addr}"),
            acceptor: Some(acceptor),
        }
    }

    /// Base URL, e.g. `http://127.0.0.1:40123` (what `HERALD_MAIL_API_URL` takes).
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Changes the behaviour for requests from now on. Requests held by
    /// `Mode::Hang` are let go of (unanswered) as soon as the mode changes.
    pub fn set_mode(&self, mode: Mode) {
        let mut state = self.shared.lock();
        state.mode = mode;
        state.mode_generation += 1;
    }

    pub fn mode(&self) -> Mode {
        self.shared.lock().mode
    }

    /// Fails the next `n` requests (that pass auth and rate limiting) with
    /// `status`, then goes back to the mode. Replaces any earlier `fail_next`.
    pub fn fail_next(&self, n: u32, status: u16) {
        let mut state = self.shared.lock();
        state.fail_next = n;
        state.fail_next_status = status;
    }

    /// Allows at most `per_sec` requests in any sliding 1 s window; more get
    /// 429 `rate_limit_exceeded`. Every answer then carries `ratelimit-*`
    /// headers. `0` turns the limit (and the headers) off, the default.
    pub fn set_rate_limit(&self, per_sec: u32) {
        let mut state = self.shared.lock();
        state.rate_limit = per_sec;
        state.window.clear();
    }

    /// Fails a `ratio` (0.0 to 1.0) of the requests that pass auth and rate
    /// limiting, each with a fault drawn uniformly from `faults` (all kinds
    /// when empty). `0.0` turns it off, the default. `fail_next` goes first.
    pub fn set_random_faults(&self, ratio: f64, faults: &[Fault]) {
        let mut state = self.shared.lock();
        state.fault_ratio = ratio.clamp(0.0, 1.0);
        state.faults = match faults.is_empty() {
            true => Fault::ALL.to_vec(),
            false => faults.to_vec(),
        };
    }

    /// Distinct idempotency keys accepted as new, from the request log.
    pub fn accepted_keys(&self) -> BTreeSet<String> {
        self.new_emails_per_key().into_keys().collect()
    }

    /// Per idempotency key, how many requests were accepted as new (a batch
    /// counts once), from the request log. 1 for a key however often it was
    /// resent while the fake remembered it; 2 or more means its recipients
    /// got the email (or the batch) more than once.
    pub fn new_emails_per_key(&self) -> BTreeMap<String, usize> {
        let mut per_key = BTreeMap::new();
        for r in self.shared.lock().requests.iter() {
            if let Some(key) = &r.idempotency_key {
                if !r.new_email_ids.is_empty() {
                    *per_key.entry(key.clone()).or_insert(0) += 1;
                }
            }
        }
        per_key
    }

    /// Per idempotency key, how many emails were accepted under it (summed
    /// over the requests accepted as new), from the request log: a batch of
    /// 5 accepted once is 5, accepted twice 10.
    pub fn emails_per_key(&self) -> BTreeMap<String, usize> {
        let mut per_key = BTreeMap::new();
        for r in self.shared.lock().requests.iter() {
            if let Some(key) = &r.idempotency_key {
                if !r.new_email_ids.is_empty() {
                    *per_key.entry(key.clone()).or_insert(0) += r.new_email_ids.len();
                }
            }
        }
        per_key
    }

    /// The provider's side of "exactly once", from the request log: the keys
    /// accepted as new are exactly `keys`, each by exactly one request, and
    /// every 2xx answered under a key (a resend after a crash or a lost
    /// answer) carried that key's original ids (for a batch, all of them in
    /// order), i.e. was the original response, not a second send. `Err`
    /// says what broke.
    pub fn check_one_email_per_key(&self, keys: &BTreeSet<String>) -> Result<(), String> {
        let requests = self.requests();
        // Per key, the ids of each request accepted as new under it.
        let mut sends: BTreeMap<&str, Vec<&[String]>> = BTreeMap::new();
        for r in requests.iter().filter(|r| !r.new_email_ids.is_empty()) {
            match &r.idempotency_key {
                Some(key) => sends.entry(key).or_default().push(&r.new_email_ids),
                None => {
                    return Err(format!(
                        "{} {:?} accepted without an idempotency key: {:?}",
                        r.method, r.path, r.new_email_ids
                    ))
                }
            }
        }
        let twice: Vec<String> = sends
            .iter()
            .filter(|(_, accepted)| accepted.len() > 1)
            .map(|(key, accepted)| {
                let emails: usize = accepted.iter().map(|ids| ids.len()).sum();
                format!("{key} ({} requests, {emails} emails)", accepted.len())
            })
            .collect();
        if !twice.is_empty() {
            return Err(format!(
                "accepted as new more than once under one key: {}",
                twice.join(", ")
            ));
        }
        let accepted: BTreeSet<String> = sends.keys().map(|k| k.to_string()).collect();
        if accepted != *keys {
            let missing: Vec<&String> = keys.difference(&accepted).collect();
            let extra: Vec<&String> = accepted.difference(keys).collect();
            return Err(format!(
                "keys accepted as new differ from the expected ones: \
                 never accepted {missing:?}, not expected {extra:?}"
            ));
        }
        for r in requests
            .iter()
            .filter(|r| r.status.is_some_and(|s| (200..300).contains(&s)))
        {
            let key = r.idempotency_key.as_deref().unwrap_or_default();
            let answered = answered_ids(&r.response);
            let original: &[String] = sends.get(key).map(|s| s[0]).unwrap_or_default();
            if answered != original {
                return Err(format!(
                    "a 2xx to {} under key {key:?} answered ids {answered:?}, \
                     but the key's original ids are {original:?}",
                    r.path
                ));
            }
        }
        Ok(())
    }

    /// Forgets every accepted idempotency key, as Resend does 24 hours after
    /// a key's first use: from now on a request under an old key is a new
    /// email. Keys of requests still in flight are kept.
    pub fn forget_idempotency_keys(&self) {
        self.shared
            .lock()
            .idempotency
            .retain(|_, entry| matches!(entry, IdempotencyEntry::InFlight));
    }

    /// Requests received but neither answered nor broken off yet (held by
    /// `Mode::Hang` or `Mode::Delay`).
    pub fn in_flight(&self) -> usize {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.status.is_none() && !r.closed)
            .count()
    }

    /// Overrides the `retry-after` seconds sent with every 429 (default 1).
    pub fn set_retry_after(&self, secs: Option<u64>) {
        self.shared.lock().retry_after = secs;
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    /// Requests received so far that carried this idempotency key.
    pub fn requests_with_key(&self, key: &str) -> Vec<RecordedRequest> {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.idempotency_key.as_deref() == Some(key))
            .cloned()
            .collect()
    }

    pub fn request_count(&self) -> usize {
        self.shared.lock().requests.len()
    }

    /// Emails actually accepted, in acceptance order.
    pub fn accepted(&self) -> Vec<AcceptedEmail> {
        self.shared.lock().accepted.clone()
    }

    /// Emails accepted as new (a batch of 5 counts 5), from the request log:
    /// a repeat of an accepted key (answered with the original response) is
    /// not counted.
    pub fn accepted_count(&self) -> usize {
        self.shared
            .lock()
            .requests
            .iter()
            .map(|r| r.new_email_ids.len())
            .sum()
    }

    /// Polls until at least `n` emails were accepted; false at the deadline.
    pub fn wait_for_accepted(&self, n: usize, timeout: Duration) -> bool {
        super::wait_until(timeout, || self.accepted_count() >= n)
    }

    /// Polls until at least `n` requests were received; false at the deadline.
    pub fn wait_for_requests(&self, n: usize, timeout: Duration) -> bool {
        super::wait_until(timeout, || self.request_count() >= n)
    }
}

impl Drop for FakeResend {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

struct Shared {
    stop: AtomicBool,
    state: Mutex<State>,
}

impl Shared {
    /// A panicking request thread must not take the whole fake down with it.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

enum IdempotencyEntry {
    InFlight,
    Done { body: Value, response: Value },
}

struct State {
    mode: Mode,
    /// Bumped by every `set_mode`, so a hanging request notices any change.
    mode_generation: u64,
    fail_next: u32,
    fail_next_status: u16,
    rate_limit: u32,
    fault_ratio: f64,
    faults: Vec<Fault>,
    /// Arrival times of the requests let through in the last second.
    window: VecDeque<Instant>,
    retry_after: Option<u64>,
    idempotency: HashMap<String, IdempotencyEntry>,
    requests: Vec<RecordedRequest>,
    accepted: Vec<AcceptedEmail>,
}

impl State {
    fn new() -> State {
        State {
            mode: Mode::Ok,
            mode_generation: 0,
            fail_next: 0,
            fail_next_status: 500,
            rate_limit: 0,
            fault_ratio: 0.0,
            faults: Fault::ALL.to_vec(),
            window: VecDeque::new(),
            retry_after: None,
            idempotency: HashMap::new(),
            requests: Vec::new(),
            accepted: Vec::new(),
        }
    }
}

/// One thread per request, so a hanging or delayed request never blocks others.
fn accept_loop(server: tiny_http::Server, shared: Arc<Shared>) {
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

/// What the fake answers, before it is written out.
struct Reply {
    status: u16,
    body: Value,
    headers: Vec<(String, String)>,
}

impl Reply {
    fn error(status: u16, name: &str, message: &str) -> Reply {
        Reply {
            status,
            body: json!({ "statusCode": status, "name": name, "message": message }),
            headers: Vec::new(),
        }
    }

    fn with_headers(mut self, headers: &[(String, String)]) -> Reply {
        self.headers.extend_from_slice(headers);
        self
    }
}

/// A valid send that passed every check and holds its idempotency key (if any).
struct PendingSend {
    key: Option<String>,
    /// The one email of `/emails`, or a batch's emails in request order.
    emails: Vec<ValidEmail>,
    /// Answer `{data: [{id}, ...]}` instead of `{id}`.
    batch: bool,
    authorization: String,
    /// The request body as a whole, what the key's replays are compared with.
    body: Value,
    rate_headers: Vec<(String, String)>,
    mode: Mode,
    mode_generation: u64,
    /// Accept, then break the connection instead of answering.
    close_after_accept: bool,
}

enum Decision {
    Reply(Reply),
    Send(PendingSend),
    /// Break the connection without accepting anything.
    Close,
}

struct Incoming {
    method: String,
    path: String,
    headers: BTreeMap<String, String>,
    body: Value,
    raw_body: String,
    key: Option<String>,
    received_at: Instant,
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

/// Everything up to the point of accepting, in this order: route, auth, rate
/// limit, injected failures, key format, validation, idempotency. So a held
/// (hanging or delayed) request owns its key, and a repeat meanwhile gets 409.
/// A repeat of a key already answered is replayed even in `Hang`/`Delay`.
/// `fault` is set to the random fault drawn for this request, if any.
fn decide(state: &mut State, incoming: &Incoming, fault: &mut Option<Fault>) -> Decision {
    let batch = match incoming.path.as_str() {
        "/emails" => false,
        "/emails/batch" => true,
        _ => {
            return Decision::Reply(Reply::error(
                404,
                "not_found",
                "The requested endpoint does not exist.",
            ))
        }
    };
    if incoming.method != "POST" {
        return Decision::Reply(Reply::error(
            405,
            "method_not_allowed",
            "Method Not Allowed",
        ));
    }
    let authorization = incoming
        .headers
        .get("authorization")
        .cloned()
        .unwrap_or_default();
    if !has_bearer_token(&authorization) {
        return Decision::Reply(Reply::error(
            401,
            "missing_api_key",
            "Missing API key in the authorization header. Include the following header \
             in the request: Authorization: Bearer YOUR_API_KEY",
        ));
    }

    let rate_headers = match check_rate_limit(state, incoming.received_at) {
        Ok(headers) => headers,
        Err(reply) => return Decision::Reply(reply),
    };
    if let Some(status) = injected_failure(state) {
        return Decision::Reply(failure(state, status).with_headers(&rate_headers));
    }
    if state.mode == Mode::Close {
        return Decision::Close;
    }
    *fault = draw_fault(state);
    let status = match *fault {
        Some(Fault::Status500) => Some(500),
        Some(Fault::Status503) => Some(503),
        Some(Fault::RateLimited) => Some(429),
        Some(Fault::Close) => return Decision::Close,
        Some(Fault::AcceptThenClose) | None => None,
    };
    if let Some(status) = status {
        return Decision::Reply(failure(state, status).with_headers(&rate_headers));
    }
    if let Some(key) = &incoming.key {
        if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
            return Decision::Reply(
                Reply::error(
                    400,
                    "invalid_idempotency_key",
                    "The key must be between 1-256 chars.",
                )
                .with_headers(&rate_headers),
            );
        }
    }
    let emails = match batch {
        true => validate_batch(&incoming.body),
        false => validate(&incoming.body, None).map(|email| vec![email]),
    };
    let emails = match emails {
        Ok(emails) => emails,
        Err(reply) => return Decision::Reply(reply.with_headers(&rate_headers)),
    };
    if let Some(key) = &incoming.key {
        if let Some(reply) = claim_key(state, key, &incoming.body) {
            return Decision::Reply(reply.with_headers(&rate_headers));
        }
    }
    Decision::Send(PendingSend {
        key: incoming.key.clone(),
        emails,
        batch,
        authorization,
        body: incoming.body.clone(),
        rate_headers,
        mode: state.mode,
        mode_generation: state.mode_generation,
        close_after_accept: *fault == Some(Fault::AcceptThenClose),
    })
}

/// Draws this request's random fault, if `set_random_faults` is on.
fn draw_fault(state: &mut State) -> Option<Fault> {
    if state.fault_ratio <= 0.0 || state.faults.is_empty() {
        return None;
    }
    let roll = random_u64();
    let threshold = (state.fault_ratio * u32::MAX as f64) as u64;
    if (roll & 0xffff_ffff) >= threshold {
        return None;
    }
    Some(state.faults[((roll >> 32) % state.faults.len() as u64) as usize])
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("fake resend: random bytes");
    u64::from_le_bytes(bytes)
}

/// Answers with bytes that are not HTTP, so the client drops the connection
/// with a transport error straight away (see `Mode::Close`).
fn break_connection(request: tiny_http::Request) {
    use std::io::Write;
    let mut writer = request.into_writer();
    let _ = writer.write_all(b"\x00\x01 connection broken by the fake \r\n\r\n");
    let _ = writer.flush();
}

fn has_bearer_token(authorization: &str) -> bool {
    let mut parts = authorization.trim().splitn(2, ' ');
    let scheme = parts.next().unwrap_or("");
    let token = parts.next().unwrap_or("").trim();
    scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()
}

/// Sliding one-second window over the requests let through.
fn check_rate_limit(state: &mut State, now: Instant) -> Result<Vec<(String, String)>, Reply> {
    let limit = state.rate_limit;
    if limit == 0 {
        return Ok(Vec::new());
    }
    let window = Duration::from_secs(1);
    while let Some(&oldest) = state.window.front() {
        if now.saturating_duration_since(oldest) >= window {
            state.window.pop_front();
        } else {
            break;
        }
    }
    if state.window.len() >= limit as usize {
        let oldest = *state.window.front().expect("window is full, so not empty");
        let frees_in = (oldest + window).saturating_duration_since(now);
        let reset = frees_in.as_secs_f64().ceil().max(1.0) as u64;
        let headers = rate_headers(limit, 0, reset);
        let reply = Reply::error(
            429,
            "rate_limit_exceeded",
            &format!(
                "Too many requests. You can only make {limit} requests per second. See rate \
                 limit response headers for more information. Or contact support to increase \
                 rate limit."
            ),
        );
        return Err(with_retry_after(state, reply).with_headers(&headers));
    }
    state.window.push_back(now);
    let remaining = limit - state.window.len() as u32;
    Ok(rate_headers(limit, remaining, 1))
}

fn rate_headers(limit: u32, remaining: u32, reset: u64) -> Vec<(String, String)> {
    vec![
        ("ratelimit-limit".to_string(), limit.to_string()),
        ("ratelimit-remaining".to_string(), remaining.to_string()),
        ("ratelimit-reset".to_string(), reset.to_string()),
    ]
}

fn with_retry_after(state: &State, mut reply: Reply) -> Reply {
    let secs = state.retry_after.unwrap_or(1);
    reply
        .headers
        .push(("retry-after".to_string(), secs.to_string()));
    reply
}

/// `fail_next` first, then `Mode::Fail`.
fn injected_failure(state: &mut State) -> Option<u16> {
    if state.fail_next > 0 {
        state.fail_next -= 1;
        return Some(state.fail_next_status);
    }
    match state.mode {
        Mode::Fail(status) => Some(status),
        _ => None,
    }
}

fn failure(state: &State, status: u16) -> Reply {
    let (name, message) = match status {
        400 => ("validation_error", "Injected failure: bad request."),
        401 => ("missing_api_key", "Injected failure: missing API key."),
        403 => ("invalid_api_key", "API key is invalid"),
        404 => ("not_found", "The requested endpoint does not exist."),
        405 => ("method_not_allowed", "Method Not Allowed"),
        409 => (
            "concurrent_idempotent_requests",
            "Same idempotency key used while original request is still in progress.",
        ),
        422 => ("validation_error", "Injected failure: validation error."),
        429 => (
            "rate_limit_exceeded",
            "Too many requests. Injected failure: rate limit exceeded.",
        ),
        451 => ("security_error", "Injected failure: security error."),
        500 => (
            "internal_server_error",
            "An unexpected error occurred. Injected failure.",
        ),
        s if s >= 500 => ("application_error", "Injected failure: server error."),
        _ => ("application_error", "Injected failure."),
    };
    let reply = Reply::error(status, name, message);
    if status == 429 {
        with_retry_after(state, reply)
    } else {
        reply
    }
}

struct ValidEmail {
    from: String,
    to: Vec<String>,
    subject: String,
    html: Option<String>,
    text: Option<String>,
    /// The email's own JSON object.
    body: Value,
}

/// A batch is all or nothing: a JSON array of 1..=100 emails, each a valid
/// `SendEmailRequest` without `attachments` or `scheduled_at` (Resend's batch
/// supports neither); the first bad item refuses the whole request.
fn validate_batch(body: &Value) -> Result<Vec<ValidEmail>, Reply> {
    let invalid = |message: &str| Reply::error(422, "validation_error", message);
    let Some(items) = body.as_array() else {
        return Err(invalid("The request body must be a JSON array of emails."));
    };
    if items.is_empty() || items.len() > MAX_BATCH {
        return Err(invalid(&format!(
            "A batch must contain between 1 and {MAX_BATCH} emails, got {}.",
            items.len()
        )));
    }
    let mut emails = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        for name in ["attachments", "scheduled_at"] {
            if item.get(name).is_some() {
                return Err(invalid(&format!(
                    "Invalid {}. Batch emails do not support `{name}`.",
                    field(name, Some(index))
                )));
            }
        }
        emails.push(validate(item, Some(index))?);
    }
    Ok(emails)
}

/// `SendEmailRequest` from Resend's OpenAPI description: `from`, `to`,
/// `subject` required; `to` a string or 1..=50 strings; the rest typed.
/// `index` is the email's place in a batch, named in every error.
fn validate(body: &Value, index: Option<usize>) -> Result<ValidEmail, Reply> {
    let invalid = |message: &str| Reply::error(422, "validation_error", message);
    let Some(fields) = body.as_object() else {
        return Err(invalid(&match index {
            None => "The request body must be a JSON object.".to_string(),
            Some(i) => format!("The email at index {i} must be a JSON object."),
        }));
    };
    let from = required_string(fields, "from", index)?;
    if !is_mailbox(&from) {
        // A batch reports every item's error as `validation_error`.
        let name = match index {
            None => "invalid_from_address",
            Some(_) => "validation_error",
        };
        return Err(Reply::error(
            422,
            name,
            &format!(
                "Invalid {}. The email address needs to follow the \
                 `email@example.com` or `Name <email@example.com>` format.",
                field("from", index)
            ),
        ));
    }
    let to = match fields.get("to") {
        None | Some(Value::Null) => {
            return Err(invalid(&format!("Missing {}.", field("to", index))))
        }
        Some(value) => address_list(value, "to", 1, index)?,
    };
    if to.len() > MAX_RECIPIENTS {
        return Err(invalid(&format!(
            "Invalid {}. You can send to at most 50 recipients.",
            field("to", index)
        )));
    }
    let subject = required_string(fields, "subject", index)?;
    let html = optional_string(fields, "html", index)?;
    let text = optional_string(fields, "text", index)?;
    for name in ["cc", "bcc", "reply_to"] {
        if let Some(value) = fields.get(name) {
            address_list(value, name, 0, index)?;
        }
    }
    for name in ["scheduled_at", "topic_id"] {
        optional_string(fields, name, index)?;
    }
    if let Some(value) = fields.get("headers") {
        if !value.is_object() {
            return Err(invalid(&format!(
                "Invalid {}. Expected an object.",
                field("headers", index)
            )));
        }
    }
    for name in ["attachments", "tags"] {
        if let Some(value) = fields.get(name) {
            if !value.is_array() {
                return Err(invalid(&format!(
                    "Invalid {}. Expected an array.",
                    field(name, index)
                )));
            }
        }
    }
    Ok(ValidEmail {
        from,
        to,
        subject,
        html,
        text,
        body: body.clone(),
    })
}

/// "`to` field", or "`to` field at index 3" for a batch's email.
fn field(name: &str, index: Option<usize>) -> String {
    match index {
        None => format!("`{name}` field"),
        Some(i) => format!("`{name}` field at index {i}"),
    }
}

fn required_string(
    fields: &Map<String, Value>,
    name: &str,
    index: Option<usize>,
) -> Result<String, Reply> {
    match fields.get(name) {
        None | Some(Value::Null) => Err(Reply::error(
            422,
            "validation_error",
            &format!("Missing {}.", field(name, index)),
        )),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(Reply::error(
            422,
            "validation_error",
            &format!("Invalid {}. Expected a string.", field(name, index)),
        )),
    }
}

/// Present means it must be a string: the schema does not allow `null`.
fn optional_string(
    fields: &Map<String, Value>,
    name: &str,
    index: Option<usize>,
) -> Result<Option<String>, Reply> {
    match fields.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Reply::error(
            422,
            "validation_error",
            &format!("Invalid {}. Expected a string.", field(name, index)),
        )),
    }
}

/// A string or an array of strings, each an address.
fn address_list(
    value: &Value,
    name: &str,
    min: usize,
    index: Option<usize>,
) -> Result<Vec<String>, Reply> {
    let invalid = |detail: &str| {
        Reply::error(
            422,
            "validation_error",
            &format!("Invalid {}. {detail}", field(name, index)),
        )
    };
    let list = match value {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => {
            let mut list = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::String(s) => list.push(s.clone()),
                    _ => return Err(invalid("Expected a string or an array of strings.")),
                }
            }
            list
        }
        _ => return Err(invalid("Expected a string or an array of strings.")),
    };
    if list.len() < min {
        return Err(invalid("At least one address is required."));
    }
    if let Some(bad) = list.iter().find(|a| !is_mailbox(a)) {
        return Err(invalid(&format!(
            "`{bad}` does not follow the `email@example.com` or `Name <email@example.com>` format."
        )));
    }
    Ok(list)
}

/// `email@example.com` or `Name <email@example.com>`, loosely.
fn is_mailbox(text: &str) -> bool {
    let text = text.trim();
    let address = match (text.rfind('<'), text.strip_suffix('>')) {
        (Some(open), Some(inner)) => &inner[open + 1..],
        _ => text,
    };
    match address.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && !address
                    .chars()
                    .any(|c| c.is_whitespace() || c == '<' || c == '>')
        }
        None => false,
    }
}

/// `None` if the key is now held by this request; otherwise the answer Resend
/// gives: the original response, or a 409.
fn claim_key(state: &mut State, key: &str, body: &Value) -> Option<Reply> {
    match state.idempotency.get(key) {
        None => {
            state
                .idempotency
                .insert(key.to_string(), IdempotencyEntry::InFlight);
            None
        }
        Some(IdempotencyEntry::InFlight) => Some(Reply::error(
            409,
            "concurrent_idempotent_requests",
            "Same idempotency key used while original request is still in progress.",
        )),
        Some(IdempotencyEntry::Done {
            body: original,
            response,
        }) => {
            if original == body {
                Some(Reply {
                    status: 200,
                    body: response.clone(),
                    headers: Vec::new(),
                })
            } else {
                Some(Reply::error(
                    409,
                    "invalid_idempotent_request",
                    "Same idempotency key used with a different request payload.",
                ))
            }
        }
    }
}

fn release_key(state: &mut State, key: Option<&str>) {
    if let Some(key) = key {
        if let Some(IdempotencyEntry::InFlight) = state.idempotency.get(key) {
            state.idempotency.remove(key);
        }
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

/// Accepts every email of the send at once, remembers the answer under the
/// key, and returns it with the new ids in request order.
fn accept(state: &mut State, send: PendingSend) -> (Reply, Vec<String>) {
    let ids: Vec<String> = send.emails.iter().map(|_| uuid_v4()).collect();
    let response = match send.batch {
        true => json!({ "data": ids.iter().map(|id| json!({ "id": id })).collect::<Vec<_>>() }),
        false => json!({ "id": ids.first() }),
    };
    if let Some(key) = &send.key {
        state.idempotency.insert(
            key.clone(),
            IdempotencyEntry::Done {
                body: send.body,
                response: response.clone(),
            },
        );
    }
    let accepted_at = Instant::now();
    for (email, id) in send.emails.into_iter().zip(&ids) {
        state.accepted.push(AcceptedEmail {
            id: id.clone(),
            idempotency_key: send.key.clone(),
            from: email.from,
            to: email.to,
            subject: email.subject,
            html: email.html,
            text: email.text,
            authorization: send.authorization.clone(),
            body: email.body,
            accepted_at,
        });
    }
    let reply = Reply {
        status: 200,
        body: response,
        headers: send.rate_headers,
    };
    (reply, ids)
}

/// The email ids in a 2xx answer: `{id}` from `/emails`, `{data: [{id}, ...]}`
/// from `/emails/batch`.
fn answered_ids(response: &Value) -> Vec<&str> {
    if let Some(id) = response["id"].as_str() {
        return vec![id];
    }
    response["data"]
        .as_array()
        .map(|data| data.iter().filter_map(|d| d["id"].as_str()).collect())
        .unwrap_or_default()
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

fn uuid_v4() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("fake resend: random id");
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// The fake's own bookkeeping, which the delivery tests' "exactly once"
/// checks stand on: a same-key repeat is a replay, not a second email, and a
/// key accepted twice (possible once keys are forgotten) is caught.
#[cfg(test)]
mod tests {
    use super::*;

    /// `body` as JSON to the fake at `url` + `path` under `key`; `Err` if
    /// the connection broke.
    fn send(url: &str, path: &str, key: &str, body: &Value) -> Result<(u16, Value), ureq::Error> {
        send_within(Duration::from_secs(10), url, path, key, body)
    }

    /// `send`, giving up after `timeout` (a request the fake let go of
    /// unanswered is only ended by the client's timeout).
    fn send_within(
        timeout: Duration,
        url: &str,
        path: &str,
        key: &str,
        body: &Value,
    ) -> Result<(u16, Value), ureq::Error> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .build()
            .into();
        let mut response = agent
            .post(&format!("{url}{path}"))
            .header("Authorization", "Bearer re_test")
            .header("Idempotency-Key", key)
            .header("Content-Type", "application/json")
            .send(&serde_json::to_vec(body).expect("a JSON value serialises")[..])?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        Ok((status, serde_json::from_str(&text).unwrap_or_default()))
    }

    fn email(to: &str, subject: &str) -> Value {
        json!({
            "from": "herald <noreply@herald.test>",
            "to": [to],
            "subject": subject,
            "text": "hello"
        })
    }

    fn post(fake: &FakeResend, key: &str, subject: &str) -> (u16, Value) {
        send(
            &fake.url(),
            "/emails",
            key,
            &email("dave@example.com", subject),
        )
        .expect("the fake answers")
    }

    /// `n` valid emails to user0@example.com, user1@example.com, ...
    fn batch(n: usize) -> Value {
        Value::Array(
            (0..n)
                .map(|i| email(&format!("user{i}@example.com"), "Hi"))
                .collect(),
        )
    }

    fn post_batch(fake: &FakeResend, key: &str, body: &Value) -> (u16, Value) {
        send(&fake.url(), "/emails/batch", key, body).expect("the fake answers")
    }

    /// The ids of a batch answer, in order.
    fn data_ids(answer: &Value) -> Vec<String> {
        answered_ids(answer).into_iter().map(String::from).collect()
    }

    /// A 422 `validation_error` whose message contains `part`.
    fn assert_invalid(answer: (u16, Value), part: &str) {
        let (status, body) = answer;
        assert_eq!(status, 422, "{body}");
        assert_eq!(body["name"], "validation_error", "{body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.contains(part), "{message:?} lacks {part:?}");
    }

    #[test]
    fn a_repeat_is_a_replay_and_a_key_accepted_twice_is_caught() {
        let fake = FakeResend::start();
        let keys = BTreeSet::from(["dlv_a".to_string(), "dlv_b".to_string()]);
        let (status, first) = post(&fake, "dlv_a", "Hi");
        assert_eq!(status, 200, "{first}");
        // A resend under the same key (the client never saw the answer, or
        // crashed before recording it) gets the original response.
        let (status, again) = post(&fake, "dlv_a", "Hi");
        assert_eq!((status, &again), (200, &first));
        // The same key with another body is refused, not sent.
        let (status, refused) = post(&fake, "dlv_a", "Other");
        assert_eq!(status, 409, "{refused}");
        assert_eq!(post(&fake, "dlv_b", "Hi").0, 200);
        assert_eq!(fake.request_count(), 4);
        assert_eq!(fake.accepted_count(), 2);
        assert_eq!(fake.accepted_keys(), keys);
        assert_eq!(fake.check_one_email_per_key(&keys), Ok(()));
        assert!(fake
            .check_one_email_per_key(&BTreeSet::from(["dlv_a".to_string()]))
            .is_err_and(|e| e.contains("dlv_b")));

        // Once the keys are forgotten, as after Resend's 24 hours, the same
        // request is a second email to the same address, and it is counted.
        fake.forget_idempotency_keys();
        let (status, second) = post(&fake, "dlv_a", "Hi");
        assert_eq!(status, 200);
        assert_ne!(second["id"], first["id"]);
        assert_eq!(fake.new_emails_per_key()["dlv_a"], 2);
        assert_eq!(fake.accepted_count(), 3);
        let err = fake.check_one_email_per_key(&keys).unwrap_err();
        assert!(err.contains("dlv_a (2 requests, 2 emails)"), "{err}");
    }

    #[test]
    fn a_batch_is_accepted_in_order_and_counted_per_email() {
        let fake = FakeResend::start();
        let body = batch(3);
        let (status, answer) = post_batch(&fake, "bat_a", &body);
        assert_eq!(status, 200, "{answer}");
        let ids = data_ids(&answer);
        assert_eq!(ids.len(), 3, "{answer}");
        let accepted = fake.accepted();
        let accepted_ids: Vec<String> = accepted.iter().map(|e| e.id.clone()).collect();
        assert_eq!(accepted_ids, ids, "answered in request order");
        for (i, email) in accepted.iter().enumerate() {
            assert_eq!(email.to, vec![format!("user{i}@example.com")]);
            assert_eq!(email.idempotency_key.as_deref(), Some("bat_a"));
            assert_eq!(email.body, body[i], "each email keeps its own item");
        }
        assert_eq!(fake.requests()[0].new_email_ids, ids);
        assert_eq!(fake.accepted_count(), 3);
        assert_eq!(
            fake.emails_per_key(),
            BTreeMap::from([("bat_a".to_string(), 3)])
        );
        assert_eq!(
            fake.new_emails_per_key(),
            BTreeMap::from([("bat_a".to_string(), 1)])
        );
        // The largest batch Resend takes.
        let (status, answer) = post_batch(&fake, "bat_b", &batch(MAX_BATCH));
        assert_eq!(status, 200, "{answer}");
        assert_eq!(data_ids(&answer).len(), MAX_BATCH);
        assert_eq!(fake.accepted_count(), 3 + MAX_BATCH);
    }

    #[test]
    fn one_invalid_email_refuses_the_whole_batch() {
        let fake = FakeResend::start();
        let mut body = batch(3);
        body[1]["to"] = json!(["not an address"]);
        assert_invalid(post_batch(&fake, "bat_a", &body), "`to` field at index 1");
        assert_eq!(fake.accepted_count(), 0);
        assert!(fake.accepted().is_empty());
        assert!(fake.requests()[0].new_email_ids.is_empty());
        // Nothing was remembered under the key: the corrected batch goes out.
        assert_eq!(post_batch(&fake, "bat_a", &batch(3)).0, 200);
        assert_eq!(fake.accepted_count(), 3);
    }

    #[test]
    fn a_batch_must_hold_1_to_100_emails() {
        let fake = FakeResend::start();
        assert_invalid(post_batch(&fake, "bat_a", &batch(0)), "got 0");
        assert_invalid(post_batch(&fake, "bat_b", &batch(MAX_BATCH + 1)), "got 101");
        assert_invalid(
            post_batch(&fake, "bat_c", &email("dave@example.com", "Hi")),
            "JSON array",
        );
        assert_eq!(fake.accepted_count(), 0);
    }

    #[test]
    fn a_batch_email_may_not_carry_attachments_or_scheduled_at() {
        let fake = FakeResend::start();
        let mut body = batch(2);
        body[1]["attachments"] = json!([{ "filename": "a.txt", "content": "aGk=" }]);
        assert_invalid(
            post_batch(&fake, "bat_a", &body),
            "`attachments` field at index 1",
        );
        let mut body = batch(2);
        body[0]["scheduled_at"] = json!("2030-01-01T00:00:00Z");
        assert_invalid(
            post_batch(&fake, "bat_b", &body),
            "`scheduled_at` field at index 0",
        );
        assert_eq!(fake.accepted_count(), 0);
        // `POST /emails` takes both.
        let mut single = email("dave@example.com", "Hi");
        single["attachments"] = json!([{ "filename": "a.txt", "content": "aGk=" }]);
        single["scheduled_at"] = json!("2030-01-01T00:00:00Z");
        let (status, answer) =
            send(&fake.url(), "/emails", "dlv_a", &single).expect("the fake answers");
        assert_eq!(status, 200, "{answer}");
    }

    #[test]
    fn a_batch_repeat_is_replayed_whole_and_another_body_is_refused() {
        let fake = FakeResend::start();
        let keys = BTreeSet::from(["bat_a".to_string()]);
        let (status, first) = post_batch(&fake, "bat_a", &batch(3));
        assert_eq!(status, 200, "{first}");
        let (status, again) = post_batch(&fake, "bat_a", &batch(3));
        assert_eq!(
            (status, &again),
            (200, &first),
            "the same ids in the same order"
        );
        assert!(fake.requests()[1].new_email_ids.is_empty());
        assert_eq!(fake.accepted_count(), 3);
        assert_eq!(fake.emails_per_key()["bat_a"], 3);
        assert_eq!(fake.check_one_email_per_key(&keys), Ok(()));

        let (status, refused) = post_batch(&fake, "bat_a", &batch(2));
        assert_eq!(status, 409, "{refused}");
        assert_eq!(refused["name"], "invalid_idempotent_request");
        // A key covers the request, whichever endpoint it was first used on.
        let (status, refused) = post(&fake, "bat_a", "Hi");
        assert_eq!(status, 409, "{refused}");
        assert_eq!(fake.accepted_count(), 3);
        assert_eq!(fake.check_one_email_per_key(&keys), Ok(()));
    }

    #[test]
    fn a_batch_repeat_while_the_first_is_held_is_a_409() {
        let fake = FakeResend::start();
        fake.set_mode(Mode::Hang);
        let url = fake.url();
        let held = thread::spawn(move || {
            send_within(
                Duration::from_millis(500),
                &url,
                "/emails/batch",
                "bat_a",
                &batch(2),
            )
        });
        assert!(crate::support::wait_until(Duration::from_secs(5), || {
            fake.in_flight() == 1
        }));
        let (status, refused) = post_batch(&fake, "bat_a", &batch(2));
        assert_eq!(status, 409, "{refused}");
        assert_eq!(refused["name"], "concurrent_idempotent_requests");
        // Let go of the held request unanswered: nothing was accepted, and
        // the key is free again.
        fake.set_mode(Mode::Ok);
        assert!(crate::support::wait_until(Duration::from_secs(5), || {
            !fake.shared.lock().idempotency.contains_key("bat_a")
        }));
        assert!(
            held.join().is_ok_and(|sent| sent.is_err()),
            "never answered"
        );
        assert_eq!(fake.accepted_count(), 0);
        assert_eq!(post_batch(&fake, "bat_a", &batch(2)).0, 200);
        assert_eq!(fake.accepted_count(), 2);
    }

    #[test]
    fn a_batch_key_accepted_twice_is_caught() {
        let fake = FakeResend::start();
        let keys = BTreeSet::from(["bat_a".to_string(), "dlv_b".to_string()]);
        let (status, first) = post_batch(&fake, "bat_a", &batch(3));
        assert_eq!(status, 200, "{first}");
        assert_eq!(post(&fake, "dlv_b", "Hi").0, 200);
        assert_eq!(post_batch(&fake, "bat_a", &batch(3)).0, 200);
        assert_eq!(fake.check_one_email_per_key(&keys), Ok(()));
        let err = fake
            .check_one_email_per_key(&BTreeSet::from(["dlv_b".to_string()]))
            .unwrap_err();
        assert!(err.contains("bat_a"), "{err}");

        fake.forget_idempotency_keys();
        let (status, second) = post_batch(&fake, "bat_a", &batch(3));
        assert_eq!(status, 200, "{second}");
        assert_ne!(data_ids(&second), data_ids(&first));
        assert_eq!(fake.new_emails_per_key()["bat_a"], 2);
        assert_eq!(fake.emails_per_key()["bat_a"], 6);
        assert_eq!(fake.accepted_count(), 7);
        let err = fake.check_one_email_per_key(&keys).unwrap_err();
        assert!(err.contains("bat_a (2 requests, 6 emails)"), "{err}");
    }

    #[test]
    fn accept_then_close_on_a_batch_accepts_every_email() {
        let fake = FakeResend::start();
        let keys = BTreeSet::from(["bat_a".to_string()]);
        fake.set_random_faults(1.0, &[Fault::AcceptThenClose]);
        assert!(
            send(&fake.url(), "/emails/batch", "bat_a", &batch(3)).is_err(),
            "the connection breaks instead of answering"
        );
        let requests = fake.requests();
        let broken = &requests[0];
        assert!(broken.closed && broken.status.is_none(), "{broken:?}");
        assert_eq!(broken.new_email_ids.len(), 3);
        assert_eq!(fake.accepted_count(), 3);
        assert_eq!(fake.check_one_email_per_key(&keys), Ok(()));

        // The client's retry under the same key learns the original ids.
        fake.set_random_faults(0.0, &[]);
        let (status, answer) = post_batch(&fake, "bat_a", &batch(3));
        assert_eq!(status, 200, "{answer}");
        assert_eq!(data_ids(&answer), broken.new_email_ids);
        assert_eq!(fake.accepted_count(), 3);
        assert_eq!(fake.check_one_email_per_key(&keys), Ok(()));
    }

    #[test]
    fn a_replay_with_other_ids_is_caught() {
        let fake = FakeResend::start();
        let keys = BTreeSet::from(["bat_a".to_string()]);
        assert_eq!(post_batch(&fake, "bat_a", &batch(2)).0, 200);
        assert_eq!(post_batch(&fake, "bat_a", &batch(2)).0, 200);
        // Doctor the replay's answer: the ids in another order are not the
        // original response.
        {
            let mut state = fake.shared.lock();
            if let Some(data) = state.requests[1].response["data"].as_array_mut() {
                data.reverse();
            }
        }
        let err = fake.check_one_email_per_key(&keys).unwrap_err();
        assert!(err.contains("original ids"), "{err}");
    }
}
