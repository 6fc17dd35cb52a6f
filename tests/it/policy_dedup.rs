//! Dedup windows (SPEC 2.3 rule 1) against the real binary: identical
//! events (type, recipient, subjectId, rendered dedupKey) inside a type's
//! window notify once and count `deduped`; after the window, or with another
//! key, they notify again.

use std::time::Duration;

use serde_json::{json, Value};

use crate::policy_catalog::Catalog;
use crate::support::{result, FakeResend, TestServer};

const WAIT: Duration = Duration::from_secs(10);

fn role_changed(subject: &str, before: &str, new_role: &str) -> Value {
    json!({
        "type": "org.member.role_changed", "recipients": ["carol"], "subjectId": subject,
        "payload": {"newRole": new_role, "before": before, "orgName": "Acme", "actorName": "Alice"}
    })
}

fn send(server: &TestServer, event: Value) -> Value {
    let (status, body) = server.post_event(&event);
    assert_eq!(status, 202, "{body}");
    server.wait_event_done(body["eventId"].as_str().unwrap(), WAIT)["result"].clone()
}

/// The result of one event to carol, a user on a type with both channels:
/// each channel fares as she does.
fn counters(sent: i64, deduped: i64) -> Value {
    let counts = [sent, deduped, 0];
    result(counts, counts, counts)
}

#[test]
fn two_identical_events_inside_the_window_notify_once() {
    let mail = FakeResend::start();
    let server = TestServer::builder().mail(&mail).start();
    let token = server.create_user("carol", "carol@acme.test", "Carol");

    assert_eq!(
        send(&server, role_changed("mem_1", "member", "admin")),
        counters(1, 0)
    );
    assert_eq!(
        send(&server, role_changed("mem_1", "member", "admin")),
        counters(0, 1)
    );

    let (_, inbox) = server.get("/v1/inbox", Some(&token));
    assert_eq!(inbox["items"].as_array().unwrap().len(), 1, "{inbox}");
    assert!(mail.wait_for_accepted(1, WAIT), "{}", server.logs());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(mail.accepted_count(), 1);

    // Another dedupKey value (before:newRole) or another subject is news.
    assert_eq!(
        send(&server, role_changed("mem_1", "admin", "owner")),
        counters(1, 0)
    );
    assert_eq!(
        send(&server, role_changed("mem_2", "member", "admin")),
        counters(1, 0)
    );
    let (_, inbox) = server.get("/v1/inbox", Some(&token));
    assert_eq!(inbox["items"].as_array().unwrap().len(), 3, "{inbox}");
    assert!(mail.wait_for_accepted(3, WAIT));
}

#[test]
fn after_the_window_the_same_event_notifies_again() {
    let mut catalog = Catalog::builtin();
    catalog.set("org.member.role_changed", "dedupWindowSecs", json!(1));
    let server = catalog.serve(TestServer::builder()).start();
    let token = server.create_user("carol", "carol@acme.test", "Carol");

    assert_eq!(
        send(&server, role_changed("mem_1", "member", "admin")),
        counters(1, 0)
    );
    assert_eq!(
        send(&server, role_changed("mem_1", "member", "admin")),
        counters(0, 1)
    );
    std::thread::sleep(Duration::from_millis(1_100));
    assert_eq!(
        send(&server, role_changed("mem_1", "member", "admin")),
        counters(1, 0)
    );
    let (_, inbox) = server.get("/v1/inbox", Some(&token));
    assert_eq!(inbox["items"].as_array().unwrap().len(), 2, "{inbox}");
}

#[test]
fn a_zero_window_turns_dedup_off() {
    let mut catalog = Catalog::builtin();
    catalog.set("org.member.role_changed", "dedupWindowSecs", json!(0));
    let server = catalog.serve(TestServer::builder()).start();
    server.create_user("carol", "carol@acme.test", "Carol");
    assert_eq!(
        send(&server, role_changed("mem_1", "member", "admin")),
        counters(1, 0)
    );
    assert_eq!(
        send(&server, role_changed("mem_1", "member", "admin")),
        counters(1, 0)
    );
}
