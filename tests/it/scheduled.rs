//! Scheduled sends and cancellation (SPEC 9) against the real binary: an
//! event with `sendAt` is committed now and dispatched once, when due, not
//! before, also across a restart or a crash in between (and, on
//! PostgreSQL, with two instances); an event not yet dispatched can be
//! cancelled by id or by `cancellationKey`, and then nothing is ever sent;
//! once dispatched, cancelling is a conflict; bad input changes nothing.

use std::time::Duration;

use serde_json::{json, Value};

use crate::delivery_engine::{engine, role_changed};
use crate::metrics::scrape;
use crate::support::database::{postgres_or_skip, PgDatabase};
use crate::support::{FakeResend, TestServer};

const WAIT: Duration = Duration::from_secs(15);

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn rfc3339(ms: i64) -> String {
    herald::time::rfc3339(ms)
}

/// Carol's role change, due at `send_at`.
fn scheduled(subject: &str, send_at: i64) -> Value {
    let mut event = role_changed(json!(["carol"]), subject);
    event["sendAt"] = json!(rfc3339(send_at));
    event
}

/// Posts `event`, expecting it accepted; its id.
fn post(server: &TestServer, event: &Value) -> String {
    let (status, body) = server.post_event(event);
    assert_eq!(status, 202, "{body}");
    body["eventId"].as_str().unwrap().to_string()
}

fn view(server: &TestServer, id: &str) -> Value {
    let (status, view) = server.get(&format!("/v1/events/{id}"), Some(server.service_key()));
    assert_eq!(status, 200, "{view}");
    view
}

/// Inbox rows and email deliveries, all events together.
fn written(server: &TestServer) -> (i64, i64) {
    (
        server.count("SELECT COUNT(*) FROM notifications"),
        server.count("SELECT COUNT(*) FROM deliveries"),
    )
}

/// Nothing was written before its event was due.
fn assert_none_early(server: &TestServer) {
    let early = server.count(
        "SELECT COUNT(*) FROM notifications n JOIN outbox o ON o.seq = n.event_seq
         WHERE n.created_at < o.due_at",
    ) + server.count(
        "SELECT COUNT(*) FROM deliveries d JOIN outbox o ON o.seq = d.event_seq
         WHERE d.created_at < o.due_at",
    );
    assert_eq!(early, 0, "rows written before their event was due");
}

fn emails_settle(mail: &FakeResend, server: &TestServer, n: usize) {
    if !mail.wait_for_accepted(n, WAIT) {
        server.fail(&format!("{} of {n} emails accepted", mail.accepted_count()));
    }
    // A late extra email would arrive now.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(mail.accepted_count(), n);
}

#[test]
fn an_event_two_seconds_ahead_arrives_once_when_due_and_not_before() {
    let mail = FakeResend::start();
    let server = TestServer::builder().mail(&mail).start();
    server.create_user("carol", "carol@acme.test", "Carol");

    let due = now_ms() + 2_000;
    let event = scheduled("s1", due);
    let (status, body) = server.post_event(&event);
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["sendAt"], rfc3339(due), "{body}");
    let id = body["eventId"].as_str().unwrap().to_string();
    // The same request again is the same event.
    let again = {
        let mut e = scheduled("s2", due);
        e["idempotencyKey"] = json!("k1");
        e
    };
    let first = post(&server, &again);
    let (status, repeat) = server.post_event(&again);
    assert_eq!(status, 200, "{repeat}");
    assert_eq!(repeat["eventId"], first.as_str());
    assert_eq!(repeat["sendAt"], rfc3339(due), "{repeat}");

    let before = view(&server, &id);
    if now_ms() < due - 300 {
        assert_eq!(before["status"], "scheduled", "{before}");
        assert_eq!(before["sendAt"], rfc3339(due), "{before}");
        assert_eq!(before["result"], Value::Null);
        assert_eq!(written(&server), (0, 0));
        assert_eq!(mail.accepted_count(), 0);
        // Waiting by design is not a backlog.
        let metrics = scrape(&server);
        let depth = |queue: &str| metrics.value("herald_queue_depth", &[("queue", queue)]);
        assert_eq!((depth("scheduled"), depth("outbox")), (2.0, 0.0));
    }

    let done = server.wait_event_done(&id, WAIT);
    assert_eq!(done["result"]["sent"], 1, "{done}");
    server.wait_event_done(&first, WAIT);
    assert_eq!(written(&server), (2, 2));
    emails_settle(&mail, &server, 2);
    assert_none_early(&server);
}

#[test]
fn a_time_past_means_now() {
    let server = TestServer::start();
    server.create_user("carol", "carol@acme.test", "Carol");
    let id = post(&server, &scheduled("s1", now_ms() - 60_000));
    let done = server.wait_event_done(&id, WAIT);
    assert_eq!(done["result"]["sent"], 1, "{done}");
    assert_eq!(written(&server).0, 1);
}

/// A server on a fresh database with carol, and one event of hers due in
/// three seconds; its id and due time.
fn one_scheduled(mail: &FakeResend) -> (TestServer, String, i64) {
    let server = TestServer::builder().mail(mail).start();
    server.create_user("carol", "carol@acme.test", "Carol");
    let due = now_ms() + 3_000;
    let id = post(&server, &scheduled("s1", due));
    (server, id, due)
}

#[test]
fn a_scheduled_event_survives_a_restart_and_arrives_once() {
    let mail = FakeResend::start();
    let (mut server, id, due) = one_scheduled(&mail);
    server.stop();
    let server = server.restart();
    if now_ms() < due - 300 {
        assert_eq!(view(&server, &id)["status"], "scheduled");
    }
    server.wait_event_done(&id, WAIT);
    assert_eq!(written(&server), (1, 1));
    emails_settle(&mail, &server, 1);
    assert_none_early(&server);
}

#[test]
fn a_scheduled_event_survives_a_crash_and_arrives_once() {
    let mail = FakeResend::start();
    let (mut server, id, _) = one_scheduled(&mail);
    server.kill9();
    let server = server.restart();
    server.wait_event_done(&id, WAIT);
    assert_eq!(written(&server), (1, 1));
    emails_settle(&mail, &server, 1);
    assert_none_early(&server);
}

#[test]
fn an_event_cancelled_before_it_is_due_never_goes_out() {
    let mail = FakeResend::start();
    let server = TestServer::builder().mail(&mail).start();
    server.create_user("carol", "carol@acme.test", "Carol");
    let due = now_ms() + 2_000;
    let id = post(&server, &scheduled("s1", due));

    let path = format!("/v1/events/{id}");
    let (status, cancelled) = server.delete(&path, Some(server.service_key()));
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    assert_eq!(cancelled["sendAt"], rfc3339(due));

    // Well past its time: still nothing, and still cancelled.
    std::thread::sleep(Duration::from_millis((due + 1_500 - now_ms()).max(0) as u64));
    assert_eq!(view(&server, &id)["status"], "cancelled");
    assert_eq!(written(&server), (0, 0));
    assert_eq!(mail.accepted_count(), 0);
    // Cancelling again changes nothing and says so the same way.
    let (status, again) = server.delete(&path, Some(server.service_key()));
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["status"], "cancelled");
}

#[test]
fn cancelling_a_dispatched_event_is_a_conflict_and_an_unknown_one_not_found() {
    let server = TestServer::start();
    server.create_user("carol", "carol@acme.test", "Carol");
    let id = post(&server, &role_changed(json!(["carol"]), "s1"));
    server.wait_event_done(&id, WAIT);

    let (status, body) = server.delete(&format!("/v1/events/{id}"), Some(server.service_key()));
    assert_eq!(status, 409, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("dispatched"), "{message}");
    assert_eq!(view(&server, &id)["status"], "dispatched");
    assert_eq!(written(&server).0, 1);

    let (status, body) = server.delete("/v1/events/evt_nope", Some(server.service_key()));
    assert_eq!(status, 404, "{body}");
}

#[test]
fn a_cancellation_key_cancels_every_undispatched_event_with_it_and_no_other() {
    let server = TestServer::start();
    server.create_user("carol", "carol@acme.test", "Carol");
    let with_key = |subject: &str, key: Option<&str>, send_at: Option<i64>| {
        let mut event = role_changed(json!(["carol"]), subject);
        if let Some(key) = key {
            event["cancellationKey"] = json!(key);
        }
        if let Some(at) = send_at {
            event["sendAt"] = json!(rfc3339(at));
        }
        post(&server, &event)
    };
    // Dispatched before the cancel: it stays so.
    let gone = with_key("s0", Some("cart_1"), None);
    server.wait_event_done(&gone, WAIT);
    let due = now_ms() + 3_000;
    let cancelled: Vec<String> = (1..=3)
        .map(|i| with_key(&format!("s{i}"), Some("cart_1"), Some(due)))
        .collect();
    let other_key = with_key("s4", Some("cart_2"), Some(due));
    let no_key = with_key("s5", None, Some(due));

    let key = server.service_key();
    let (status, body) = server.post(
        "/v1/events/cancel",
        Some(key),
        json!({"cancellationKey": "cart_1"}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"cancelled": 3}));
    let (status, body) = server.post(
        "/v1/events/cancel",
        Some(key),
        json!({"cancellationKey": "cart_1"}),
    );
    assert_eq!((status, body), (200, json!({"cancelled": 0})));

    server.wait_event_done(&other_key, WAIT);
    server.wait_event_done(&no_key, WAIT);
    for id in &cancelled {
        let event = view(&server, id);
        assert_eq!(event["status"], "cancelled", "{event}");
        assert_eq!(event["cancellationKey"], "cart_1");
    }
    assert_eq!(view(&server, &gone)["status"], "dispatched");
    assert_eq!(written(&server).0, 3, "s0, s4 and s5");
    assert_none_early(&server);
}

#[test]
fn preferences_are_judged_when_a_scheduled_event_is_due() {
    let server = TestServer::start();
    let carol = server.create_user("carol", "carol@acme.test", "Carol");
    let id = post(&server, &scheduled("s1", now_ms() + 1_500));
    let body = json!({"type": "org.member.role_changed", "channel": "email", "enabled": false});
    let (status, answer) = server.put("/v1/preferences", Some(&carol), &body);
    assert_eq!(status, 200, "{answer}");
    let done = server.wait_event_done(&id, WAIT);
    assert_eq!(
        done["result"]["channels"]["email"]["suppressedByPrefs"], 1,
        "{done}"
    );
    assert_eq!(written(&server), (1, 0));
}

#[test]
fn bad_schedules_and_cancellations_are_refused_and_write_nothing() {
    let server = TestServer::start();
    server.create_user("carol", "carol@acme.test", "Carol");
    let key = server.service_key();
    let with = |field: &str, value: Value| {
        let mut event = role_changed(json!(["carol"]), "s1");
        event[field] = value;
        event
    };
    let year_and_a_bit = now_ms() + 367 * 86_400_000;
    for (event, field) in [
        (with("sendAt", json!("next tuesday")), "sendAt"),
        (with("sendAt", json!("2026-13-01T00:00:00Z")), "sendAt"),
        (with("sendAt", json!(1_800_000_000)), "sendAt"),
        (with("sendAt", json!(rfc3339(year_and_a_bit))), "sendAt"),
        (
            with("cancellationKey", json!("k".repeat(201))),
            "cancellationKey",
        ),
        (with("cancellationKey", json!("")), "cancellationKey"),
    ] {
        let (status, body) = server.post_event(&event);
        assert_eq!(status, 422, "{event}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(&format!("{field}:")), "{message}");
    }
    let bulk = json!({"events": [
        role_changed(json!(["carol"]), "s1"),
        with("sendAt", json!("soon")),
    ]});
    let (status, body) = server.post("/v1/events/bulk", Some(key), bulk);
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("events[1].sendAt:"),
        "{body}"
    );

    for (body, field) in [
        (json!({}), "cancellationKey"),
        (json!({"cancellationKey": 7}), "cancellationKey"),
        (json!({"cancellationKey": ""}), "cancellationKey"),
        (json!({"cancellationKey": "k", "also": 1}), "also"),
        (json!(["k"]), "body"),
    ] {
        let (status, answer) = server.post("/v1/events/cancel", Some(key), &body);
        assert_eq!(status, 422, "{body}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(&format!("{field}:")), "{message}");
    }
    assert_eq!(server.count("SELECT COUNT(*) FROM outbox"), 0);
}

#[test]
fn two_instances_dispatch_each_scheduled_event_once() {
    let Some(pg) = postgres_or_skip("scheduled::two_instances_dispatch_each_scheduled_event_once")
    else {
        return;
    };
    let mail = FakeResend::start();
    let db = std::sync::Arc::new(PgDatabase::create(&pg));
    let builder = engine(&mail).postgres(&db).env("HERALD_LEASE_MS", "2000");
    let a = builder.clone().start();
    let b = builder.start();
    a.create_user("carol", "carol@acme.test", "Carol");
    let due = now_ms() + 2_000;
    let ids: Vec<String> = (0..20)
        .map(|i| {
            let server = if i % 2 == 0 { &a } else { &b };
            post(server, &scheduled(&format!("s{i}"), due))
        })
        .collect();
    for id in &ids {
        a.wait_event_done(id, WAIT);
    }
    assert_eq!(written(&a), (20, 20));
    emails_settle(&mail, &a, 20);
    assert_none_early(&a);
}
