//! Shared support for herald's integration tests: the real binary under test
//! (`TestServer`), a fake Resend mail API (`FakeResend`) and a polling helper.
//! Not every test uses every helper, hence the module-wide allowances.

#![allow(dead_code, unused_imports)]

pub mod app;
pub mod database;
pub mod fake_resend;
pub mod server;
pub mod sse;
pub mod webdriver;
pub mod webhook_receiver;

pub use fake_resend::{AcceptedEmail, FakeResend, Fault, Mode, RecordedRequest};
pub use server::{RawResponse, TestServer, TestServerBuilder};

use std::time::{Duration, Instant};

/// Polls `done` every 20 ms until it returns true (then true) or `timeout`
/// passes (then false, after one last look).
pub fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An event's `result` as `GET /v1/events/{id}` serves it: `recipients`
/// are the per-recipient `[sent, deduped, suppressedByPrefs]`, `inbox` and
/// `email` the same counts per channel; nothing throttled.
pub fn result(recipients: [i64; 3], inbox: [i64; 3], email: [i64; 3]) -> serde_json::Value {
    let throttled = |[sent, deduped, suppressed]: [i64; 3]| [sent, deduped, suppressed, 0];
    result4(throttled(recipients), throttled(inbox), throttled(email))
}

/// `result` with the fourth count: `[sent, deduped, suppressedByPrefs,
/// throttled]` per recipient and per channel.
pub fn result4(recipients: [i64; 4], inbox: [i64; 4], email: [i64; 4]) -> serde_json::Value {
    fn counts([sent, deduped, suppressed, throttled]: [i64; 4]) -> serde_json::Value {
        serde_json::json!({"sent": sent, "deduped": deduped, "suppressedByPrefs": suppressed,
                           "throttled": throttled})
    }
    let mut result = counts(recipients);
    result["channels"] = serde_json::json!({"inbox": counts(inbox), "email": counts(email)});
    result
}
