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
//!
//! The steps live in the submodules: `server` (tiny_http, one thread per
//! request), `decide` (route, auth and the order of the checks), `faults`
//! (rate limit, injected and random failures), `validate` (Resend's email
//! schema) and `idempotency` (keys, accepting, the ids answered).

mod decide;
mod faults;
mod idempotency;
mod server;
#[cfg(test)]
mod tests;
mod validate;

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use idempotency::{answered_ids, IdempotencyEntry};
use server::accept_loop;

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
