//! Status webhooks (SPEC 10): every message signed per Standard Webhooks
//! and checked by the test's own verifier; written with the change it
//! reports and sent after commit, at least once under one `webhook-id` per
//! message, through failures; a hanging endpoint delays neither emails nor
//! the inbox; an endpoint failing for the whole period is disabled, shown
//! in the API and the metrics, and can be enabled again; bad requests are
//! refused naming the field.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::database::{postgres_or_skip, PgDatabase};
use crate::support::webhook_receiver::{verify, Answer, Receiver};
use crate::support::{wait_until, FakeResend, TestServer, TestServerBuilder};

const WAIT: Duration = Duration::from_secs(15);

fn role_changed(recipients: &[String]) -> Value {
    json!({
        "type": "org.member.role_changed", "recipients": recipients, "subjectId": "mem_1",
        "payload": {"newRole": "admin", "before": "member", "orgName": "Acme", "actorName": "Al"}
    })
}

/// Retries that come quickly, so a test sees several.
fn fast_retries(builder: TestServerBuilder) -> TestServerBuilder {
    builder
        .env("HERALD_WEBHOOK_RETRY_BASE_MS", "50")
        .env("HERALD_WEBHOOK_RETRY_CAP_MS", "200")
}

/// Subscribes `receiver` to `events`; hands it the secret.
fn subscribe(server: &TestServer, receiver: &Receiver, events: &[&str]) -> String {
    let key = server.service_key().to_string();
    let (status, created) = server.post(
        "/v1/webhooks",
        Some(&key),
        json!({"url": receiver.url(), "events": events}),
    );
    assert_eq!(status, 201, "{created}");
    let secret = created["secret"].as_str().expect("a secret").to_string();
    assert!(secret.starts_with("whsec_"), "{secret}");
    receiver.set_secret(&secret);
    created["id"].as_str().unwrap().to_string()
}

fn users(server: &TestServer, n: usize) -> (Vec<String>, Vec<String>) {
    (0..n)
        .map(|i| {
            let id = format!("u{i}");
            let token = server.create_user(&id, &format!("{id}@acme.test"), &id);
            (id, token)
        })
        .unzip()
}

fn post_and_wait(server: &TestServer, event: Value) {
    let (status, body) = server.post_event(event);
    assert_eq!(status, 202, "{body}");
    server.wait_event_done(body["eventId"].as_str().unwrap(), WAIT);
}

/// The messages accepted by `receiver`, of kind `kind`.
fn of_kind(receiver: &Receiver, kind: &str) -> Vec<Value> {
    let all = receiver.accepted();
    all.iter()
        .map(|r| r.json())
        .filter(|m| m["type"] == kind)
        .collect()
}

#[test]
fn every_message_is_signed_and_reports_sends_and_inbox_marks() {
    let mail = FakeResend::start();
    let server = TestServer::builder().mail(&mail).start();
    let receiver = Receiver::start(Answer::Accept);
    subscribe(
        &server,
        &receiver,
        &["delivery.sent", "inbox.seen", "inbox.read"],
    );
    let (ids, tokens) = users(&server, 3);
    post_and_wait(&server, role_changed(&ids));
    assert!(mail.wait_for_accepted(3, WAIT), "{}", server.logs());

    // One row read (and so seen), every row of another seen at once.
    let (_, inbox) = server.get("/v1/inbox", Some(&tokens[0]));
    let row = inbox["items"][0]["id"].as_str().unwrap().to_string();
    let (status, _) = server.post(
        &format!("/v1/inbox/{row}/read"),
        Some(&tokens[0]),
        json!({}),
    );
    assert_eq!(status, 204);
    let (status, _) = server.post("/v1/inbox/seen-all", Some(&tokens[1]), json!({}));
    assert!(status < 300);
    // Marking again changes nothing, and reports nothing.
    let (status, _) = server.post(
        &format!("/v1/inbox/{row}/read"),
        Some(&tokens[0]),
        json!({}),
    );
    assert_eq!(status, 204);

    assert!(
        wait_until(WAIT, || receiver.accepted().len() >= 6),
        "{:?}\n{}",
        receiver.received(),
        server.logs()
    );
    std::thread::sleep(Duration::from_millis(500));
    let received = receiver.received();
    assert_eq!(received.len(), 6, "3 sent, 2 seen, 1 read: {received:?}");
    for r in &received {
        assert!(r.verified, "signature does not verify: {r:?}");
        assert!(r.id.starts_with("msg_"), "{r:?}");
        // A byte changed in the body, or another id, fails the check.
        let secret = server_secret_of(&receiver);
        let tampered = r.body.replacen("\"data\"", "\"dat4\"", 1);
        assert!(!verify(
            &secret,
            &r.id,
            &r.timestamp,
            &r.signature,
            &tampered
        ));
        assert!(!verify(
            &secret,
            "msg_other",
            &r.timestamp,
            &r.signature,
            &r.body
        ));
    }
    let sent = of_kind(&receiver, "delivery.sent");
    let recipients: BTreeSet<&str> = sent
        .iter()
        .filter_map(|m| m["data"]["recipient"].as_str())
        .collect();
    assert_eq!(recipients, ids.iter().map(String::as_str).collect());
    for m in &sent {
        let data = &m["data"];
        assert_eq!(data["status"], "sent", "{m}");
        assert_eq!(data["channel"], "email", "{m}");
        assert_eq!(data["type"], "org.member.role_changed", "{m}");
        assert!(
            data["deliveryId"]
                .as_str()
                .is_some_and(|d| d.starts_with("dlv_")),
            "{m}"
        );
        assert!(
            data["eventId"]
                .as_str()
                .is_some_and(|e| e.starts_with("evt_")),
            "{m}"
        );
        assert!(
            data["providerId"].as_str().is_some_and(|p| !p.is_empty()),
            "{m}"
        );
        assert_eq!(data["attempts"], 1, "{m}");
        assert!(
            m["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{m}"
        );
    }
    let seen = of_kind(&receiver, "inbox.seen");
    let seen_by: BTreeSet<&str> = seen
        .iter()
        .filter_map(|m| m["data"]["userId"].as_str())
        .collect();
    assert_eq!(seen_by, BTreeSet::from(["u0", "u1"]));
    let read = of_kind(&receiver, "inbox.read");
    assert_eq!(read.len(), 1);
    assert_eq!(read[0]["data"]["notificationId"], row.as_str());
    assert_eq!(read[0]["data"]["userId"], "u0");
    assert_eq!(read[0]["data"]["type"], "org.member.role_changed");
    let metrics = metrics_text(&server);
    assert!(
        metrics.contains("herald_webhook_attempts_total{outcome=\"accepted\"} 6"),
        "{metrics}"
    );
}

/// The secret the receiver was handed (the test keeps no other copy).
/// Archiving, one row or in bulk, reports `inbox.archived` once per row
/// that was not archived yet; archiving again reports nothing.
#[test]
fn archiving_reports_inbox_archived_once_per_row() {
    let server = TestServer::start();
    let receiver = Receiver::start(Answer::Accept);
    subscribe(&server, &receiver, &["inbox.archived"]);
    let (ids, tokens) = users(&server, 1);
    for subject in ["mem_1", "mem_2", "mem_3"] {
        let mut event = role_changed(&ids);
        event["subjectId"] = json!(subject);
        post_and_wait(&server, event);
    }
    let (_, inbox) = server.get("/v1/inbox", Some(&tokens[0]));
    let rows: Vec<String> = inbox["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(rows.len(), 3, "{inbox}");
    for _ in 0..2 {
        let (status, body) = server.post(
            &format!("/v1/inbox/{}/archive", rows[0]),
            Some(&tokens[0]),
            json!({}),
        );
        assert!(status < 300, "{status} {body}");
    }
    let (status, body) = server.post(
        "/v1/inbox/bulk",
        Some(&tokens[0]),
        json!({"action": "archive", "all": true}),
    );
    assert!(status < 300, "{status} {body}");
    assert!(
        wait_until(WAIT, || receiver.accepted().len() >= 3),
        "{:?}\n{}",
        receiver.received(),
        server.logs()
    );
    std::thread::sleep(Duration::from_millis(500));
    let archived = of_kind(&receiver, "inbox.archived");
    let reported: BTreeSet<String> = archived
        .iter()
        .map(|m| m["data"]["notificationId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(archived.len(), 3, "{archived:?}");
    assert_eq!(reported, rows.iter().cloned().collect(), "{archived:?}");
    assert!(receiver.received().iter().all(|r| r.verified));
}

fn server_secret_of(receiver: &Receiver) -> String {
    receiver.secret().expect("subscribed")
}

fn metrics_text(server: &TestServer) -> String {
    server.request_raw("GET", "/metrics", &[], None).text()
}

#[test]
fn with_half_the_requests_failing_every_send_arrives_under_one_id_each() {
    let mail = FakeResend::start();
    let server = fast_retries(TestServer::builder().mail(&mail)).start();
    let receiver = Receiver::start(Answer::FailEveryOther);
    subscribe(&server, &receiver, &["delivery.sent"]);
    let (ids, _) = users(&server, 40);
    post_and_wait(&server, role_changed(&ids));
    assert!(mail.wait_for_accepted(40, WAIT), "{}", server.logs());

    let delivered = || -> BTreeSet<String> {
        of_kind(&receiver, "delivery.sent")
            .iter()
            .filter_map(|m| m["data"]["deliveryId"].as_str().map(str::to_string))
            .collect()
    };
    assert!(
        wait_until(WAIT, || delivered().len() == 40),
        "{} of 40 sends reported\n{}",
        delivered().len(),
        server.logs()
    );
    let received = receiver.received();
    assert!(
        received.iter().any(|r| r.status == Some(500)),
        "no request failed: {received:?}"
    );
    // Every attempt at a message carries the same bytes under its id, and
    // each send has one id.
    let mut bodies: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut ids_of_send: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    for r in &received {
        assert!(r.verified, "{r:?}");
        bodies.entry(&r.id).or_default().insert(&r.body);
        let send = r.json()["data"]["deliveryId"]
            .as_str()
            .unwrap_or("")
            .to_string();
        ids_of_send.entry(send).or_default().insert(&r.id);
    }
    assert!(bodies.values().all(|b| b.len() == 1), "{bodies:?}");
    assert_eq!(ids_of_send.len(), 40);
    assert!(
        ids_of_send.values().all(|ids| ids.len() == 1),
        "{ids_of_send:?}"
    );
    assert!(
        received.len() > 40,
        "failed messages were attempted again: {}",
        received.len()
    );
}

/// p99 of `n` inbox reads, each followed by a mark (a write that records
/// webhook messages when subscribed).
fn inbox_p99(server: &TestServer, token: &str, n: usize) -> Duration {
    let mut took = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let (status, _) = server.get("/v1/inbox?limit=20", Some(token));
        assert_eq!(status, 200);
        took.push(start.elapsed());
    }
    took.sort();
    took[n * 99 / 100]
}

#[test]
fn a_hanging_endpoint_delays_neither_emails_nor_the_inbox() {
    let mail = FakeResend::start();
    let server = TestServer::builder()
        .mail(&mail)
        .env("HERALD_WEBHOOK_TIMEOUT_MS", "30000")
        .start();
    let (ids, tokens) = users(&server, 30);
    post_and_wait(&server, role_changed(&ids));
    assert!(mail.wait_for_accepted(30, WAIT), "{}", server.logs());
    let before = inbox_p99(&server, &tokens[0], 300);

    let receiver = Receiver::start(Answer::Hang);
    subscribe(
        &server,
        &receiver,
        &["delivery.sent", "inbox.seen", "inbox.read"],
    );
    let started = Instant::now();
    let event = json!({
        "type": "org.member.role_changed", "recipients": ids, "subjectId": "mem_2",
        "payload": {"newRole": "owner", "before": "admin", "orgName": "Acme", "actorName": "Al"}
    });
    post_and_wait(&server, event);
    assert!(mail.wait_for_accepted(60, WAIT), "{}", server.logs());
    // Every webhook sender now holds a request the endpoint never answers.
    assert!(
        wait_until(WAIT, || receiver.received().len() >= 4),
        "{}",
        server.logs()
    );
    for token in &tokens[1..] {
        let (status, _) = server.post("/v1/inbox/seen-all", Some(token), json!({}));
        assert!(status < 300);
    }
    let during = inbox_p99(&server, &tokens[0], 300);
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "emails and inbox waited on the endpoint: {:?}",
        started.elapsed()
    );
    // A generous bound: a request waiting on the endpoint would take 30 s.
    assert!(
        during < before * 10 + Duration::from_millis(250),
        "inbox p99 {during:?} with the hanging endpoint, {before:?} without"
    );
    let (_, hook) = server.get("/v1/webhooks", Some(server.service_key()));
    assert!(
        hook["items"][0]["pending"].as_i64().unwrap_or(0) >= 30,
        "{hook}"
    );
}

#[test]
fn an_endpoint_failing_for_the_whole_period_is_disabled_and_can_be_enabled() {
    let mail = FakeResend::start();
    let server = fast_retries(TestServer::builder().mail(&mail))
        .env("HERALD_WEBHOOK_DISABLE_AFTER_SECS", "2")
        .start();
    let key = server.service_key().to_string();
    let receiver = Receiver::start(Answer::FailAll);
    let id = subscribe(&server, &receiver, &["delivery.sent"]);
    let (ids, _) = users(&server, 2);
    post_and_wait(&server, role_changed(&ids));

    let path = format!("/v1/webhooks/{id}");
    let disabled = || server.get(&path, Some(&key)).1["disabledAt"].is_string();
    assert!(wait_until(WAIT, disabled), "{}", server.logs());
    let (_, hook) = server.get(&path, Some(&key));
    assert!(
        hook["disabledReason"]
            .as_str()
            .is_some_and(|r| r.contains("HTTP 500")),
        "{hook}"
    );
    assert_eq!(hook["pending"], 2, "{hook}");
    assert!(hook.get("secret").is_none(), "{hook}");
    let metrics = metrics_text(&server);
    for line in [
        "herald_webhook_endpoints{state=\"disabled\"} 1",
        "herald_webhook_messages{state=\"stopped\"} 2",
        "herald_webhooks_disabled_total 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    // Its messages stop.
    let attempts = receiver.received().len();
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(receiver.received().len(), attempts);
    assert!(attempts >= 3, "retried before giving up: {attempts}");

    receiver.set_answer(Answer::Accept);
    let (status, hook) = server.post(&format!("{path}/enable"), Some(&key), json!({}));
    assert_eq!(status, 200, "{hook}");
    assert!(
        hook["disabledAt"].is_null() && hook["failingSince"].is_null(),
        "{hook}"
    );
    assert!(
        wait_until(WAIT, || receiver.accepted().len() == 2),
        "{}",
        server.logs()
    );
    assert!(wait_until(WAIT, || server.get(&path, Some(&key)).1
        ["pending"]
        == 0));
    assert!(metrics_text(&server)
        .lines()
        .any(|l| l == "herald_webhook_endpoints{state=\"active\"} 1"));
}

#[test]
fn bad_webhooks_are_refused_naming_the_field_and_unknown_ids_are_404() {
    let server = TestServer::start();
    let key = server.service_key().to_string();
    let events = json!(["delivery.sent"]);
    for (body, field) in [
        (
            json!({"url": "ftp://app.example/h", "events": events}),
            "url",
        ),
        (
            json!({"url": "https://me:pw@app.example/h", "events": events}),
            "url",
        ),
        (json!({"url": "not a url", "events": events}), "url"),
        (json!({"events": events}), "url"),
        (
            json!({"url": "https://app.example/h", "events": []}),
            "events",
        ),
        (json!({"url": "https://app.example/h"}), "events"),
        (
            json!({"url": "https://app.example/h", "events": ["delivery.lost"]}),
            "events[0]",
        ),
    ] {
        let (status, answer) = server.post("/v1/webhooks", Some(&key), &body);
        assert_eq!(status, 422, "{body}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or("");
        assert!(
            message.starts_with(&format!("{field}: ")),
            "{body}: {message}"
        );
    }
    let (_, list) = server.get("/v1/webhooks", Some(&key));
    assert_eq!(list["items"], json!([]), "nothing stored");
    let (status, _) = server.post(
        "/v1/webhooks",
        None,
        json!({"url": "https://a.example", "events": events}),
    );
    assert_eq!(status, 401);

    for (method, path) in [
        ("GET", "/v1/webhooks/wh_nope"),
        ("DELETE", "/v1/webhooks/wh_nope"),
        ("POST", "/v1/webhooks/wh_nope/enable"),
    ] {
        let response = server.request_raw(
            method,
            path,
            &[("Authorization", &format!("Bearer {key}"))],
            None,
        );
        assert_eq!(response.status, 404, "{method} {path}: {}", response.text());
    }
    let (status, created) = server.post(
        "/v1/webhooks",
        Some(&key),
        json!({"url": "https://app.example/h", "events": ["inbox.read", "delivery.dead"]}),
    );
    assert_eq!(status, 201, "{created}");
    let (_, list) = server.get("/v1/webhooks", Some(&key));
    assert_eq!(list["items"][0]["id"], created["id"]);
    assert!(list["items"][0].get("secret").is_none(), "{list}");
    let path = format!("/v1/webhooks/{}", created["id"].as_str().unwrap());
    assert_eq!(server.delete(&path, Some(&key)).0, 204);
    assert_eq!(server.get(&path, Some(&key)).0, 404);
}

/// Two instances on one PostgreSQL database, both recording and sending
/// messages, half of the requests failing: every send is reported, and no
/// message is accepted twice (one instance holds it at a time).
#[test]
fn two_instances_send_each_message_from_one_instance_at_a_time() {
    let Some(pg) = postgres_or_skip("webhooks::two_instances_send_each_message") else {
        return;
    };
    let db = Arc::new(PgDatabase::create(&pg));
    let mail = FakeResend::start();
    let builder = fast_retries(TestServer::builder().mail(&mail).postgres(&db));
    let a = builder.clone().start();
    let b = builder.start();
    let receiver = Receiver::start(Answer::FailEveryOther);
    subscribe(&a, &receiver, &["delivery.sent"]);
    let (ids, _) = users(&a, 40);
    for (i, chunk) in ids.chunks(4).enumerate() {
        let server = if i % 2 == 0 { &a } else { &b };
        let mut event = role_changed(chunk);
        event["subjectId"] = json!(format!("mem_{i}"));
        let (status, body) = server.post_event(event);
        assert_eq!(status, 202, "{body}");
    }
    assert!(mail.wait_for_accepted(40, WAIT), "{}", a.logs());
    let accepted_ids = || -> BTreeMap<String, usize> {
        let mut count = BTreeMap::new();
        for r in receiver.accepted() {
            *count.entry(r.id).or_insert(0) += 1;
        }
        count
    };
    assert!(
        wait_until(WAIT, || accepted_ids().len() == 40),
        "{} of 40\n{}\n{}",
        accepted_ids().len(),
        a.logs(),
        b.logs()
    );
    std::thread::sleep(Duration::from_millis(500));
    let accepted = accepted_ids();
    assert_eq!(accepted.len(), 40);
    assert!(accepted.values().all(|&n| n == 1), "{accepted:?}");
    let sends: BTreeSet<String> = receiver
        .accepted()
        .iter()
        .filter_map(|r| r.json()["data"]["deliveryId"].as_str().map(str::to_string))
        .collect();
    assert_eq!(sends.len(), 40);
}
