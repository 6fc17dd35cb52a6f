//! Helpers for the reference-application tests: a `--demo` server (org
//! `org_acme`: alice owner, bob admin, carol member, subscription
//! `sub_demo_acme`) with the seeded tokens, a writable database connection
//! for raw-SQL checks, and Stripe-Signature headers built from Stripe's
//! documented scheme with the `hmac` crate directly, not herald's code.

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use super::{wait_until, FakeResend, TestServer, TestServerBuilder};

pub const ORG: &str = "org_acme";
pub const WEBHOOK_SECRET: &str = "whsec_test_0123456789";
pub const WAIT: Duration = Duration::from_secs(10);

pub struct Demo {
    pub alice: String,
    pub bob: String,
    pub carol: String,
}

/// The token `serve --demo` printed for `user`.
pub fn demo_token(server: &TestServer, user: &str) -> String {
    let prefix = format!("demo user {user} token: ");
    server
        .logs()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).map(|t| t.trim().to_string()))
        .unwrap_or_else(|| server.fail(&format!("no token printed for {user}")))
}

pub fn demo_builder(mail: &FakeResend) -> TestServerBuilder {
    TestServer::builder()
        .mail(mail)
        .arg("--demo")
        .env("STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET)
}

pub fn start_demo(builder: TestServerBuilder) -> (TestServer, Demo) {
    let server = builder.start();
    let demo = Demo {
        alice: demo_token(&server, "alice"),
        bob: demo_token(&server, "bob"),
        carol: demo_token(&server, "carol"),
    };
    (server, demo)
}

/// Waits until every outbox row is dispatched and every delivery settled.
pub fn settle(server: &TestServer) {
    let done = wait_until(WAIT, || {
        server.count("SELECT COUNT(*) FROM outbox WHERE status = 'pending'") == 0
            && server
                .count("SELECT COUNT(*) FROM deliveries WHERE status IN ('pending', 'retrying')")
                == 0
    });
    if !done {
        server.fail("outbox or deliveries did not settle");
    }
    // Anything that would be a duplicate send has had time to show up.
    std::thread::sleep(Duration::from_millis(200));
}

pub fn emails_to(mail: &FakeResend, address: &str) -> usize {
    mail.accepted()
        .iter()
        .filter(|e| e.to.iter().any(|t| t.eq_ignore_ascii_case(address)))
        .count()
}

pub fn inbox_rows(server: &TestServer, user: &str, kind: &str) -> i64 {
    server.count(&format!(
        "SELECT COUNT(*) FROM notifications WHERE user_id = '{user}' AND type = '{kind}'"
    ))
}

/// Row counts of every table an app action may write, to prove "nothing
/// written".
pub fn footprint(server: &TestServer) -> Vec<(&'static str, i64)> {
    [
        "organizations",
        "members",
        "invitations",
        "audit_log",
        "processed_events",
        "plan_entitlements",
        "outbox",
        "notifications",
        "deliveries",
    ]
    .into_iter()
    .map(|t| (t, server.count(&format!("SELECT COUNT(*) FROM {t}"))))
    .collect()
}

/// One `v1` signature per Stripe's docs: hex HMAC-SHA256 of "{t}.{payload}".
pub fn stripe_v1(payload: &[u8], t: i64, secret: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// POSTs `payload` to the webhook with `signature` as Stripe-Signature (or
/// none).
pub fn post_webhook(server: &TestServer, payload: &[u8], signature: Option<&str>) -> (u16, Value) {
    let mut headers = vec![("content-type", "application/json")];
    if let Some(sig) = signature {
        headers.push(("stripe-signature", sig));
    }
    server.request("POST", "/webhooks/stripe", &headers, Some(payload.to_vec()))
}

/// Signs `payload` now with the test secret and posts it.
pub fn deliver(server: &TestServer, payload: &Value) -> (u16, Value) {
    let bytes = serde_json::to_vec(payload).expect("encode event");
    let t = now_secs();
    let sig = format!("t={t},v1={}", stripe_v1(&bytes, t, WEBHOOK_SECRET));
    post_webhook(server, &bytes, Some(&sig))
}
