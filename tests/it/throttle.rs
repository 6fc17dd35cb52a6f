//! Throttles (SPEC 9) against the real binary: a type's `throttle` lets at
//! most `limit` notifications per recipient (and rendered key) through in
//! any sliding window; the rest count `throttled`, per recipient and per
//! channel, and leave nothing behind (no inbox row, no email, no dedup
//! mark). Deduped and preference-suppressed notifications use no budget,
//! and two instances on one PostgreSQL database share the budget exactly.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::metrics::scrape;
use crate::policy_catalog::Catalog;
use crate::support::database::{postgres_or_skip, PgDatabase};
use crate::support::{result4, FakeResend, TestServer};

const WAIT: Duration = Duration::from_secs(15);
const TYPE: &str = "org.member.role_changed";

/// The built-in catalog with `throttle` on the role change (two channels,
/// a 600 s dedup window on subject and roles).
fn catalog(throttle: Value) -> Catalog {
    let mut catalog = Catalog::builtin();
    catalog.set(TYPE, "throttle", throttle);
    catalog
}

fn role_changed(to: &str, subject: &str, org: &str) -> Value {
    json!({
        "type": TYPE, "recipients": [to], "subjectId": subject,
        "payload": {"newRole": "admin", "before": "member", "orgName": org, "actorName": "Al"}
    })
}

/// Posts `events` in one bulk request (one transaction, so they are
/// dispatched back to back, well inside any window) and returns each
/// one's result, in order, once dispatched.
fn send_bulk(server: &TestServer, events: Vec<Value>) -> Vec<Value> {
    let (status, body) = server.post(
        "/v1/events/bulk",
        Some(server.service_key()),
        json!({ "events": events }),
    );
    assert_eq!(status, 202, "{body}");
    body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| server.wait_event_done(e["eventId"].as_str().unwrap(), WAIT)["result"].clone())
        .collect()
}

fn send_one(server: &TestServer, event: Value) -> Value {
    send_bulk(server, vec![event]).remove(0)
}

/// Both channels went out.
fn sent() -> Value {
    result4([1, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0])
}

/// Both channels throttled.
fn throttled() -> Value {
    result4([0, 0, 0, 1], [0, 0, 0, 1], [0, 0, 0, 1])
}

fn deduped() -> Value {
    result4([0, 1, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0])
}

fn emails_settle(mail: &FakeResend, server: &TestServer, n: usize) {
    if !mail.wait_for_accepted(n, WAIT) {
        server.fail(&format!("{} of {n} emails accepted", mail.accepted_count()));
    }
    // A late extra email would arrive now.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(mail.accepted_count(), n);
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn ten_events_in_the_window_let_three_through_and_the_next_after_it() {
    let mail = FakeResend::start();
    let catalog = catalog(json!({"limit": 3, "windowSecs": 2}));
    let server = catalog.serve(TestServer::builder().mail(&mail)).start();
    server.create_user("carol", "carol@acme.test", "Carol");

    let events = (0..10)
        .map(|i| role_changed("carol", &format!("s{i}"), "Acme"))
        .collect();
    let results = send_bulk(&server, events);
    for (i, result) in results.iter().enumerate() {
        let expected = if i < 3 { sent() } else { throttled() };
        assert_eq!(*result, expected, "event {i}");
    }
    assert_eq!(server.count("SELECT COUNT(*) FROM notifications"), 3);
    emails_settle(&mail, &server, 3);
    assert_eq!(server.count("SELECT COUNT(*) FROM deliveries"), 3);
    // Only what went out counts against the budget, and only it is marked
    // for dedup: a throttled notification may go out later.
    assert_eq!(server.count("SELECT COUNT(*) FROM throttle_hits"), 3);
    assert_eq!(server.count("SELECT COUNT(*) FROM dedup_marks"), 3);
    let metrics = scrape(&server);
    for channel in ["inbox", "email"] {
        let labels = [("type", TYPE), ("channel", channel)];
        assert_eq!(
            metrics.value("herald_notifications_throttled_total", &labels),
            7.0
        );
        assert_eq!(
            metrics.value("herald_notifications_sent_total", &labels),
            3.0
        );
    }

    // Once the window has passed the three, a throttled subject goes out,
    // not deduped: its throttling left no mark.
    let last_hit = server.count("SELECT MAX(at) FROM throttle_hits");
    let wait = (last_hit + 2_000 + 100 - now_ms()).max(0);
    std::thread::sleep(Duration::from_millis(wait as u64));
    assert_eq!(
        send_one(&server, role_changed("carol", "s9", "Acme")),
        sent()
    );
    assert_eq!(server.count("SELECT COUNT(*) FROM notifications"), 4);
    emails_settle(&mail, &server, 4);
}

#[test]
fn a_throttle_key_gives_each_organization_and_recipient_its_own_budget() {
    let catalog = catalog(json!({"limit": 1, "windowSecs": 600, "key": "{{ orgName }}"}));
    let server = catalog.serve(TestServer::builder()).start();
    server.create_user("carol", "carol@acme.test", "Carol");
    server.create_user("dave", "dave@acme.test", "Dave");

    let results = send_bulk(
        &server,
        vec![
            role_changed("carol", "s1", "Acme"),
            role_changed("carol", "s2", "Acme"),
            role_changed("carol", "s3", "Globex"),
            role_changed("carol", "s4", "Globex"),
            role_changed("dave", "s5", "Acme"),
        ],
    );
    assert_eq!(
        results,
        [sent(), throttled(), sent(), throttled(), sent()],
        "one per (recipient, organization)"
    );
    let rows: Vec<(String, String)> = server.rows(
        "SELECT recipient, throttle_key FROM throttle_hits ORDER BY recipient, throttle_key",
        herald::args![],
        |r| Ok((r.get(0)?, r.get(1)?)),
    );
    let expected = [("carol", "Acme"), ("carol", "Globex"), ("dave", "Acme")];
    assert_eq!(rows, expected.map(|(r, k)| (r.to_string(), k.to_string())));
    assert_eq!(server.count("SELECT COUNT(*) FROM notifications"), 3);
}

#[test]
fn deduped_and_switched_off_notifications_use_no_budget() {
    let catalog = catalog(json!({"limit": 2, "windowSecs": 600}));
    let server = catalog.serve(TestServer::builder()).start();
    server.create_user("carol", "carol@acme.test", "Carol");
    let erin = server.create_user("erin", "erin@acme.test", "Erin");
    for channel in ["inbox", "email"] {
        let body = json!({"type": TYPE, "channel": channel, "enabled": false});
        let (status, answer) = server.put("/v1/preferences", Some(&erin), &body);
        assert_eq!(status, 200, "{answer}");
    }

    let results = send_bulk(
        &server,
        vec![
            role_changed("carol", "s1", "Acme"),
            role_changed("carol", "s1", "Acme"),
            role_changed("carol", "s1", "Acme"),
            role_changed("carol", "s2", "Acme"),
            role_changed("carol", "s3", "Acme"),
            role_changed("erin", "s1", "Acme"),
            role_changed("erin", "s2", "Acme"),
            role_changed("erin", "s3", "Acme"),
        ],
    );
    let suppressed = result4([0, 0, 1, 0], [0, 0, 1, 0], [0, 0, 1, 0]);
    assert_eq!(
        results,
        [
            sent(),
            deduped(),
            deduped(),
            sent(),
            throttled(),
            suppressed.clone(),
            suppressed.clone(),
            suppressed
        ]
    );
    assert_eq!(server.count("SELECT COUNT(*) FROM throttle_hits"), 2);
    assert_eq!(
        server.count("SELECT COUNT(*) FROM throttle_hits WHERE recipient = 'erin'"),
        0
    );
}

#[test]
fn a_channel_switched_off_counts_suppressed_and_the_other_throttled() {
    let catalog = catalog(json!({"limit": 1, "windowSecs": 600}));
    let server = catalog.serve(TestServer::builder()).start();
    let carol = server.create_user("carol", "carol@acme.test", "Carol");
    let body = json!({"type": TYPE, "channel": "email", "enabled": false});
    let (status, answer) = server.put("/v1/preferences", Some(&carol), &body);
    assert_eq!(status, 200, "{answer}");

    let results = send_bulk(
        &server,
        vec![
            role_changed("carol", "s1", "Acme"),
            role_changed("carol", "s2", "Acme"),
        ],
    );
    // The throttle counts what the preferences left: the inbox.
    assert_eq!(
        results,
        [
            result4([1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0]),
            result4([0, 0, 0, 1], [0, 0, 0, 1], [0, 0, 1, 0]),
        ]
    );
    let out = server.run_cli(&["outbox", "list"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.ends_with("throttled 1  [inbox: throttled 1] [email: suppressed 1]")),
        "{stdout}"
    );
}

#[test]
fn two_instances_share_one_budget() {
    let Some(pg) = postgres_or_skip("throttle::two_instances_share_one_budget") else {
        return;
    };
    let db = Arc::new(PgDatabase::create(&pg));
    let catalog = catalog(json!({"limit": 3, "windowSecs": 600}));
    let builder = catalog.serve(TestServer::builder().postgres(&db));
    let a = builder.clone().start();
    let b = builder.start();
    a.create_user("carol", "carol@acme.test", "Carol");

    // Posted to both at once: each instance dispatches its own events,
    // against the one budget.
    let ids: Vec<String> = std::thread::scope(|scope| {
        let posters: Vec<_> = [&a, &b]
            .into_iter()
            .enumerate()
            .map(|(n, server)| {
                scope.spawn(move || {
                    (0..5)
                        .map(|i| {
                            let event = role_changed("carol", &format!("s{n}_{i}"), "Acme");
                            let (status, body) = server.post_event(event);
                            assert_eq!(status, 202, "{body}");
                            body["eventId"].as_str().unwrap().to_string()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        posters
            .into_iter()
            .flat_map(|p| p.join().unwrap())
            .collect()
    });
    let results: Vec<Value> = ids
        .iter()
        .map(|id| a.wait_event_done(id, WAIT)["result"].clone())
        .collect();
    let count = |expected: Value| results.iter().filter(|r| **r == expected).count();
    assert_eq!((count(sent()), count(throttled())), (3, 7), "{results:?}");
    assert_eq!(a.count("SELECT COUNT(*) FROM notifications"), 3);
    assert_eq!(a.count("SELECT COUNT(*) FROM throttle_hits"), 3);
}
