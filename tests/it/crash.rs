//! Crash safety (SPEC 2.4): events accepted before a kill -9 are all
//! delivered after restart, with no inbox row duplicated and no email sent
//! under two keys or accepted twice (resends under the same key are the
//! provider's replays, counted from its request log), and nothing resent
//! once recorded sent, even when the provider has forgotten the keys.

use herald::args;
use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;

use crate::delivery_engine::{check_one_email_per_delivery, send_keys};
use crate::support::{wait_until, FakeResend, Mode, TestServer};

#[test]
fn kill_9_with_sends_hanging_loses_and_duplicates_nothing() {
    let mail = FakeResend::start();
    mail.set_mode(Mode::Hang);
    let mut server = TestServer::builder()
        .mail(&mail)
        .env("HERALD_MAIL_TIMEOUT_MS", "60000")
        .start();
    let users = ["u1", "u2", "u3"];
    for u in users {
        server.create_user(u, &format!("{u}@acme.test"), u);
    }
    let events = 40;
    let mut ids = Vec::new();
    for i in 0..events {
        let (status, body) = server.post_event(json!({
            "type": "org.member.role_changed",
            "recipients": ["u1", "u2", "u3", {"email": format!("guest{i}@example.com")}],
            "subjectId": format!("sub_{i}"),
            "payload": {"newRole": "admin", "before": format!("r{i}"), "orgName": "Acme", "actorName": "A"}
        }));
        assert_eq!(status, 202, "{body}");
        ids.push(body["eventId"].as_str().unwrap().to_string());
    }
    // Some sends are in flight (hanging) when the process dies; some events
    // may not even be dispatched yet.
    assert!(
        mail.wait_for_requests(1, Duration::from_secs(10)),
        "{}",
        server.logs()
    );
    server.kill9();
    assert!(
        server.count("SELECT COUNT(*) FROM deliveries WHERE status = 'sent'") == 0,
        "nothing can have been recorded as sent while the provider hangs"
    );

    mail.set_mode(Mode::Ok);
    let server = server.restart();
    for id in &ids {
        server.wait_event_done(id, Duration::from_secs(20));
    }
    let expected_emails = events * 4;
    assert!(
        wait_until(Duration::from_secs(20), || {
            server.count("SELECT COUNT(*) FROM deliveries WHERE status = 'sent'") == expected_emails
        }),
        "not every delivery was sent: provider saw {} requests, {} in flight, \
         statuses {:?}; {} deliveries still pending\n{}",
        mail.request_count(),
        mail.in_flight(),
        mail.requests().iter().map(|r| r.status).collect::<Vec<_>>(),
        server.count("SELECT COUNT(*) FROM deliveries WHERE status = 'pending'"),
        server.logs()
    );

    // Inbox: exactly one row per (event, user).
    assert_eq!(
        server.count("SELECT COUNT(*) FROM notifications"),
        events * 3
    );
    assert_eq!(
        server.count(
            "SELECT COUNT(*) FROM (SELECT DISTINCT event_seq, user_id FROM notifications) AS pairs"
        ),
        events * 3
    );

    // Email: one delivery per (event, recipient), each accepted exactly once
    // under its batch's key or its own id; resends after the crash reuse the
    // key.
    assert_eq!(
        server.count("SELECT COUNT(*) FROM deliveries"),
        expected_emails
    );
    // Counted from the provider's request log: a resend under the same key
    // is answered with the original response and is no second email; a key
    // accepted as a new email twice would be.
    assert_eq!(check_one_email_per_delivery(&mail, &server), Ok(()));
    let keys = send_keys(&server);
    let keys_sent: BTreeSet<String> = mail
        .requests()
        .into_iter()
        .filter_map(|r| r.idempotency_key)
        .collect();
    assert_eq!(
        keys_sent,
        keys.keys().cloned().collect(),
        "no email was ever sent under a key that is not its batch's or its own"
    );

    // Recorded as sent means done: herald must not lean on the provider's
    // idempotency for those. With every key forgotten (as Resend does after
    // 24 hours), another restart sends nothing, so no address gets a second
    // email.
    let requests_before = mail.request_count();
    mail.forget_idempotency_keys();
    let server = server.restart();
    let resent = wait_until(Duration::from_secs(3), || {
        mail.request_count() > requests_before
    });
    assert!(
        !resent,
        "a restart resent {} emails already recorded as sent\n{}",
        mail.request_count() - requests_before,
        server.logs()
    );
    assert_eq!(check_one_email_per_delivery(&mail, &server), Ok(()));
}

#[test]
fn events_committed_but_never_dispatched_are_re_driven_at_start() {
    let mail = FakeResend::start();
    let mut server = TestServer::builder().mail(&mail).start();
    server.create_user("u1", "u1@acme.test", "U1");
    server.kill9();
    // Write outbox rows the way a crashed process leaves them: committed,
    // pending, never published.
    // Written now: a row from 1970 would be a month past the log's
    // retention, and pruned as soon as it is dispatched.
    let now_ms = crate::support::app::now_secs() * 1000;
    for i in 0..5 {
        server.execute(
            "INSERT INTO outbox (id, type, body, created_at) VALUES (?1, 'system.announcement', ?2, ?3)",
            args![
                format!("evt_crash{i}"),
                json!({"type": "system.announcement", "recipients": ["u1"],
                       "payload": {"title": "t", "body": "b"}})
                .to_string(),
                now_ms
            ],
        );
    }
    let server = server.restart();
    for i in 0..5 {
        let event = server.wait_event_done(&format!("evt_crash{i}"), Duration::from_secs(10));
        assert_eq!(event["result"]["sent"], 1);
    }
    assert_eq!(server.count("SELECT COUNT(*) FROM notifications"), 5);
}
