//! Topics (SPEC 10) against the real binary, on both engines: the
//! subscribers API (pages, idempotent adds, unknown users and topics, bad
//! keys), and `{"topic": key}` recipients fanned out at dispatch a page at
//! a time: each subscriber once (also when named directly), never the
//! actor, exactly once across a kill -9 in the middle and with two
//! instances expanding the same fan-out.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use herald::args;
use serde_json::{json, Value};

use crate::support::database::{postgres_or_skip, PgDatabase};
use crate::support::{wait_until, FakeResend, TestServer};

const TYPE: &str = "org.member.role_changed";
const TOPIC: &str = "project:42";

fn event(recipients: Value, actor: &str) -> Value {
    json!({
        "type": TYPE, "recipients": recipients, "actorId": actor, "subjectId": "sub_1",
        "payload": {"newRole": "admin", "before": "member", "orgName": "Acme", "actorName": "Al"}
    })
}

/// `n` users `s<i>` (i from 1), all subscribed to `TOPIC`, written in one
/// statement each through the store: the API would take minutes.
fn subscribers(server: &TestServer, n: i64) {
    let (status, body) = server.put(
        &format!("/v1/topics/{TOPIC}"),
        Some(server.service_key()),
        json!({"name": "Project 42"}),
    );
    assert_eq!(status, 201, "{body}");
    server.execute(
        "INSERT INTO users (id, email, name, created_at, updated_at)
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
         SELECT 's' || i, 's' || i || '@acme.test', 'S', 1, 1 FROM n",
        args![n],
    );
    server.execute(
        "INSERT INTO topic_subscribers (topic_key, user_id, created_at)
         SELECT ?1, id, 1 FROM users WHERE id LIKE 's%'",
        args![TOPIC],
    );
}

/// Inbox rows of the event per user, from the database.
fn inbox_rows(server: &TestServer) -> BTreeMap<String, i64> {
    server
        .rows(
            "SELECT user_id, COUNT(*) FROM notifications GROUP BY user_id",
            args![],
            |r| Ok((r.get::<String>(0)?, r.get::<i64>(1)?)),
        )
        .into_iter()
        .collect()
}

fn fan_out_done(server: &TestServer) -> bool {
    server.count("SELECT COUNT(*) FROM topic_fanouts") == 0
        && server.count("SELECT COUNT(*) FROM outbox WHERE status = 'pending'") == 0
}

/// Every subscriber but the actor has one inbox row; the one also named
/// directly has one too; the result counts each once.
fn assert_each_once(server: &TestServer, n: i64, event_id: &str) {
    let rows = inbox_rows(server);
    assert_eq!(
        rows.len() as i64,
        n - 1,
        "one row per subscriber but the actor"
    );
    assert!(rows.values().all(|&c| c == 1), "a user got two rows");
    assert!(!rows.contains_key("s1"), "the actor was notified");
    assert!(rows.contains_key("s2"), "the user named twice got nothing");
    let (status, view) = server.get(
        &format!("/v1/events/{event_id}"),
        Some(server.service_key()),
    );
    assert_eq!(status, 200);
    assert!(view.get("fanOutPending").is_none(), "{}", view["result"]);
    assert_eq!(view["result"]["sent"], n - 1, "{}", view["result"]);
    assert_eq!(view["result"]["channels"]["inbox"]["sent"], n - 1);
    assert_eq!(view["result"]["channels"]["email"]["sent"], n - 1);
}

#[test]
fn a_topic_of_20000_reaches_each_subscriber_once_but_the_actor() {
    let mail = FakeResend::start();
    let server = TestServer::builder().mail(&mail).start();
    let n = 20_000;
    subscribers(&server, n);
    let (status, body) = server.post_event(event(json!(["s2", {"topic": TOPIC}]), "s1"));
    assert_eq!(status, 202, "{body}");
    let id = body["eventId"].as_str().unwrap().to_string();
    assert!(
        wait_until(Duration::from_secs(240), || fan_out_done(&server)),
        "fan-out not done: {}",
        server.logs()
    );
    assert_each_once(&server, n, &id);
    let deliveries = "SELECT COUNT(DISTINCT recipient) FROM deliveries";
    assert_eq!(server.count(deliveries), n - 1);
    assert_eq!(server.count("SELECT COUNT(*) FROM deliveries"), n - 1);
}

#[test]
fn kill_9_in_the_middle_of_a_fan_out_then_restart_reaches_each_subscriber_once() {
    let mail = FakeResend::start();
    let mut server = TestServer::builder()
        .mail(&mail)
        .env("HERALD_TEST_FANOUT_PAGE_DELAY_MS", "400")
        .start();
    let n = 5_000;
    subscribers(&server, n);
    let (status, body) = server.post_event(event(json!(["s2", {"topic": TOPIC}]), "s1"));
    assert_eq!(status, 202, "{body}");
    let id = body["eventId"].as_str().unwrap().to_string();
    // Two pages committed, more to come: the middle of the fan-out.
    let middle = || server.count("SELECT COUNT(*) FROM topic_fanouts WHERE pages >= 2") == 1;
    assert!(
        wait_until(Duration::from_secs(20), middle),
        "{}",
        server.logs()
    );
    server.kill9();
    let written = server.count("SELECT COUNT(*) FROM notifications");
    assert!(
        written > 0 && written < n - 1,
        "killed in the middle: {written}"
    );

    let server = server.restart();
    assert!(
        wait_until(Duration::from_secs(30), || fan_out_done(&server)),
        "fan-out not resumed: {}",
        server.logs()
    );
    assert_each_once(&server, n, &id);
    // Each email once at the provider: one per subscriber but the actor.
    assert!(
        wait_until(Duration::from_secs(30), || mail.accepted_count() as i64
            >= n - 1),
        "{} emails accepted",
        mail.accepted_count()
    );
    let mut per_address: BTreeMap<String, usize> = BTreeMap::new();
    for email in mail.accepted() {
        for to in email.to {
            *per_address.entry(to).or_default() += 1;
        }
    }
    assert_eq!(per_address.len() as i64, n - 1);
    assert!(
        per_address.values().all(|&c| c == 1),
        "an address got two emails"
    );
    assert!(!per_address.contains_key("s1@acme.test"));
}

#[test]
fn the_subscribers_api_adds_removes_and_pages_and_names_what_is_wrong() {
    let server = TestServer::start();
    let key = server.service_key().to_string();
    for u in ["ann", "bob", "cid"] {
        server.create_user(u, &format!("{u}@acme.test"), u);
    }
    let topic = "/v1/topics/project%3A42";
    assert_eq!(server.put(topic, Some(&key), json!({"name": "P"})).0, 201);
    let (status, renamed) = server.put(topic, Some(&key), json!({"name": "Project 42"}));
    assert_eq!(
        (status, renamed["name"].clone()),
        (200, json!("Project 42"))
    );

    let subs = format!("{topic}/subscribers");
    let (status, body) = server.post(&subs, Some(&key), json!({"userIds": ["cid", "ann", "bob"]}));
    assert_eq!((status, body["added"].clone()), (200, json!(3)), "{body}");
    let (status, body) = server.post(&subs, Some(&key), json!({"userIds": ["ann"]}));
    assert_eq!(
        (status, body["added"].clone()),
        (200, json!(0)),
        "idempotent: {body}"
    );
    // An unknown user: 422 naming it, and nothing added.
    let (status, body) = server.post(&subs, Some(&key), json!({"userIds": ["ann", "zed"]}));
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("userIds[1]"),
        "{body}"
    );

    let (status, page) = server.get(&format!("{subs}?limit=2"), Some(&key));
    assert_eq!(status, 200);
    let ids = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["userId"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&page), ["ann", "bob"]);
    let next = page["nextCursor"].as_str().unwrap();
    let (_, page) = server.get(&format!("{subs}?limit=2&cursor={next}"), Some(&key));
    assert_eq!(ids(&page), ["cid"]);
    assert_eq!(page["nextCursor"], Value::Null);

    assert_eq!(server.delete(&format!("{subs}/bob"), Some(&key)).0, 204);
    assert_eq!(server.delete(&format!("{subs}/bob"), Some(&key)).0, 204);
    let (_, topic_view) = server.get(topic, Some(&key));
    assert_eq!(topic_view["subscribers"], 2, "{topic_view}");
    // A user deleted from herald leaves its subscriptions.
    server.execute("DELETE FROM users WHERE id = 'cid'", args![]);
    let (_, topic_view) = server.get(topic, Some(&key));
    assert_eq!(topic_view["subscribers"], 1, "{topic_view}");

    // Unknown topic: 404 everywhere; bad key: 422.
    let unknown = "/v1/topics/nope";
    assert_eq!(server.get(unknown, Some(&key)).0, 404);
    assert_eq!(
        server.get(&format!("{unknown}/subscribers"), Some(&key)).0,
        404
    );
    assert_eq!(
        server
            .post(
                &format!("{unknown}/subscribers"),
                Some(&key),
                json!({"userIds": ["ann"]})
            )
            .0,
        404
    );
    assert_eq!(
        server
            .delete(&format!("{unknown}/subscribers/ann"), Some(&key))
            .0,
        404
    );
    assert_eq!(server.delete(unknown, Some(&key)).0, 404);
    let too_long = format!("/v1/topics/{}", "k".repeat(201));
    let (status, body) = server.put(&too_long, Some(&key), json!({}));
    assert_eq!(status, 422, "{body}");
    assert_eq!(server.get("/v1/topics/a%0Ab", Some(&key)).0, 422);

    // A topic recipient of an unknown topic: 422 naming the recipient.
    let (status, body) = server.post_event(event(json!(["ann", {"topic": "nope"}]), "bob"));
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("recipients[1]"),
        "{body}"
    );
    assert_eq!(server.count("SELECT COUNT(*) FROM outbox"), 0);

    // Deleting the topic takes its subscriptions.
    assert_eq!(server.delete(topic, Some(&key)).0, 204);
    assert_eq!(server.count("SELECT COUNT(*) FROM topic_subscribers"), 0);
}

#[test]
fn two_instances_expand_one_fan_out_of_5000_exactly_once() {
    let Some(pg) = postgres_or_skip("topics::two_instances") else {
        return;
    };
    let db = Arc::new(PgDatabase::create(&pg));
    let mail = FakeResend::start();
    let one = TestServer::builder()
        .mail(&mail)
        .postgres(&db)
        .env("HERALD_LEASE_MS", "1000")
        .env("HERALD_TEST_FANOUT_PAGE_DELAY_MS", "50")
        .start();
    let two = TestServer::builder()
        .mail(&mail)
        .postgres(&db)
        .env("HERALD_LEASE_MS", "1000")
        .env("HERALD_TEST_FANOUT_PAGE_DELAY_MS", "50")
        .start();
    let n = 5_000;
    subscribers(&one, n);
    let (status, body) = one.post_event(event(json!(["s2", {"topic": TOPIC}]), "s1"));
    assert_eq!(status, 202, "{body}");
    let id = body["eventId"].as_str().unwrap().to_string();
    assert!(
        wait_until(Duration::from_secs(30), || fan_out_done(&two)),
        "fan-out not done: {}\n{}",
        one.logs(),
        two.logs()
    );
    assert_each_once(&two, n, &id);
    assert_eq!(two.count("SELECT COUNT(*) FROM deliveries"), n - 1);
}
