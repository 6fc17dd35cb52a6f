//! Escalation (SPEC 9) against the real binary: the email of an escalated
//! type is created `held` at dispatch and sent when due only to recipients
//! whose inbox row of the event is still unseen (or unread); the others
//! end `skipped` and get nothing. The condition is read in the transaction
//! that releases, so a mark committing at the release instant never gives
//! both an email and a row seen before the release. A held email is a row:
//! it survives kill -9, and two instances release it once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::args;
use serde_json::{json, Value};

use crate::delivery_engine::engine;
use crate::policy_catalog::Catalog;
use crate::support::app::emails_to;
use crate::support::database::{postgres_or_skip, PgDatabase};
use crate::support::{result, wait_until, FakeResend, TestServer};

const WAIT: Duration = Duration::from_secs(20);

/// The built-in catalog with `comment.mentioned` escalating after
/// `after_secs`, unless `unless` ("seen" or "read").
pub(crate) fn catalog(after_secs: u64, unless: &str) -> Catalog {
    let mut catalog = Catalog::builtin();
    catalog.set(
        "comment.mentioned",
        "escalate",
        json!({"channel": "email", "afterSecs": after_secs, "unless": unless}),
    );
    catalog
}

/// A mention of `recipients`; `n` makes its dedup key its own.
pub(crate) fn mention(recipients: Value, n: usize) -> Value {
    json!({
        "type": "comment.mentioned", "recipients": recipients,
        "payload": {"authorName": "Alice", "commentExcerpt": format!("ping {n}"),
                    "threadTitle": "Budget", "url": format!("https://app.test/c/{n}")}
    })
}

/// Posts `event` and returns it once dispatched.
fn post(server: &TestServer, event: Value) -> Value {
    let (status, body) = server.post_event(event);
    assert_eq!(status, 202, "{body}");
    server.wait_event_done(body["eventId"].as_str().unwrap(), WAIT)
}

/// The email deliveries of a dispatched event, by recipient.
fn emails(server: &TestServer, event: &Value) -> BTreeMap<String, Value> {
    let (status, view) = server.get(
        &format!("/v1/events/{}", event["id"].as_str().unwrap()),
        Some(server.service_key()),
    );
    assert_eq!(status, 200, "{view}");
    view["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["channel"] == "email")
        .map(|d| (d["recipient"].as_str().unwrap().to_string(), d.clone()))
        .collect()
}

fn unfinished(server: &TestServer) -> i64 {
    server.count(
        "SELECT COUNT(*) FROM deliveries
         WHERE status = 'held' OR status = 'pending' OR status = 'retrying'",
    )
}

/// Waits until no email is held or waiting to be sent, then a moment
/// longer for a duplicate to show.
pub(crate) fn settle(server: &TestServer) {
    if !wait_until(WAIT, || unfinished(server) == 0) {
        server.fail(&format!("{} emails still unfinished", unfinished(server)));
    }
    std::thread::sleep(Duration::from_millis(300));
}

/// The id of `user`'s (only) inbox row.
fn row_of(server: &TestServer, user: &str) -> i64 {
    server.row(
        "SELECT id FROM notifications WHERE user_id = ?1",
        args![user],
        |r| r.get(0),
    )
}

fn mark(server: &TestServer, token: &str, row: i64, what: &str) {
    let (status, body) = server.post(
        &format!("/v1/inbox/ntf_{row}/{what}"),
        Some(token),
        json!({}),
    );
    assert_eq!(status, 204, "{body}");
}

/// No email was released before its escalation was due: `after_ms` after
/// its event was accepted (the due time counts from the dispatch, later).
fn assert_none_released_early(server: &TestServer, after_ms: i64) {
    assert_eq!(
        server.count(&format!(
            "SELECT COUNT(*) FROM deliveries d JOIN outbox o ON o.seq = d.event_seq
             WHERE d.released_at < o.created_at + {after_ms}"
        )),
        0
    );
}

#[test]
fn an_escalated_email_goes_out_when_due_only_to_whom_has_not_seen_the_row() {
    let mail = FakeResend::start();
    let catalog = catalog(2, "seen");
    let server = catalog.serve(TestServer::builder().mail(&mail)).start();
    let bob = server.create_user("bob", "bob@acme.test", "Bob");
    server.create_user("carol", "carol@acme.test", "Carol");
    let event = post(
        &server,
        mention(json!(["bob", "carol", {"email": "ext@partner.test"}]), 1),
    );
    // Each recipient counts once, when its email is created (held).
    assert_eq!(event["result"], result([3, 0, 0], [2, 0, 0], [3, 0, 0]));
    let held = emails(&server, &event);
    for (recipient, unless) in [("bob", "seen"), ("carol", "seen")] {
        assert_eq!(held[recipient]["status"], "held", "{held:?}");
        assert_eq!(held[recipient]["releaseUnless"], unless, "{held:?}");
        assert!(held[recipient]["releaseAt"].is_string(), "{held:?}");
        assert_eq!(held[recipient]["nextAttemptAt"], Value::Null);
    }
    // An address-only recipient has no inbox: it gets the email when due.
    let ext = &held["email:ext@partner.test"];
    assert_eq!(ext["status"], "held");
    assert!(ext.get("releaseUnless").is_none(), "{ext}");
    let (_, listed) = server.get("/v1/deliveries?status=held", Some(server.service_key()));
    assert_eq!(listed["items"].as_array().unwrap().len(), 3, "{listed}");

    mark(&server, &bob, row_of(&server, "bob"), "seen");
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        mail.accepted_count(),
        0,
        "nothing goes out before it is due"
    );
    settle(&server);

    assert_eq!(emails_to(&mail, "carol@acme.test"), 1);
    assert_eq!(emails_to(&mail, "ext@partner.test"), 1);
    assert_eq!(emails_to(&mail, "bob@acme.test"), 0);
    assert_eq!(mail.accepted_count(), 2);
    assert_none_released_early(&server, 2000);
    let done = emails(&server, &event);
    assert_eq!(done["bob"]["status"], "skipped", "{done:?}");
    assert_eq!(
        done["bob"]["lastError"],
        "seen before the escalation was due"
    );
    assert!(done["bob"]["releasedAt"].is_string(), "{done:?}");
    assert_eq!(done["carol"]["status"], "sent", "{done:?}");
    assert_eq!(done["email:ext@partner.test"]["status"], "sent");
    let (_, skipped) = server.get("/v1/deliveries?status=skipped", Some(server.service_key()));
    let skipped = skipped["items"].as_array().unwrap().clone();
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0]["recipient"], "bob");
    let metrics = server.request_raw("GET", "/metrics", &[], None).text();
    assert!(
        metrics.contains("herald_notifications_skipped_total{type=\"comment.mentioned\"} 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("herald_queue_depth{queue=\"held\"} 0\n"));
}

#[test]
fn unless_read_spares_only_who_read_the_row_and_an_inbox_switched_off_counts_unseen() {
    let mail = FakeResend::start();
    let catalog = catalog(2, "read");
    let server = catalog.serve(TestServer::builder().mail(&mail)).start();
    let bob = server.create_user("bob", "bob@acme.test", "Bob");
    let carol = server.create_user("carol", "carol@acme.test", "Carol");
    let dave = server.create_user("dave", "dave@acme.test", "Dave");
    let off = json!({"type": "comment.mentioned", "channel": "inbox", "enabled": false});
    let (status, body) = server.put("/v1/preferences", Some(&dave), &off);
    assert_eq!(status, 200, "{body}");
    let event = post(&server, mention(json!(["bob", "carol", "dave"]), 2));
    assert_eq!(event["result"], result([3, 0, 0], [2, 0, 1], [3, 0, 0]));

    mark(&server, &bob, row_of(&server, "bob"), "read");
    mark(&server, &carol, row_of(&server, "carol"), "seen");
    settle(&server);

    assert_eq!(emails_to(&mail, "bob@acme.test"), 0);
    assert_eq!(emails_to(&mail, "carol@acme.test"), 1, "seen is not read");
    assert_eq!(emails_to(&mail, "dave@acme.test"), 1, "no row to see");
    assert_eq!(mail.accepted_count(), 2);
    assert_none_released_early(&server, 2000);
    let done = emails(&server, &event);
    assert_eq!(done["bob"]["status"], "skipped");
    assert_eq!(
        done["bob"]["lastError"],
        "read before the escalation was due"
    );
}

#[test]
fn a_seen_at_the_release_instant_never_gives_both_an_email_and_a_row_seen_before_release() {
    const USERS: usize = 200;
    const SPREAD_MS: i64 = 800;
    let mail = FakeResend::start();
    let catalog = catalog(3, "seen");
    let server = catalog.serve(TestServer::builder().mail(&mail)).start();
    let tokens: Vec<String> = (0..USERS)
        .map(|u| server.create_user(&format!("u{u}"), &format!("u{u}@acme.test"), "U"))
        .collect();
    let users: Vec<String> = (0..USERS).map(|u| format!("u{u}")).collect();
    post(&server, mention(json!(users), 3));
    let rows: BTreeMap<String, i64> = server
        .rows("SELECT user_id, id FROM notifications", args![], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .into_iter()
        .collect();
    assert_eq!(rows.len(), USERS);

    // Mark the rows seen one after another, spread evenly across the
    // instant the emails are due (the server's clock is the system's).
    let due: i64 = server.count("SELECT MIN(next_attempt_at) FROM deliveries");
    let start = due - SPREAD_MS / 2;
    let now_ms = herald::time::system_now_ms;
    std::thread::sleep(Duration::from_millis((start - now_ms()).max(0) as u64));
    let begun = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..8 {
            let (server, tokens, rows) = (&server, &tokens, &rows);
            scope.spawn(move || {
                for u in (t..USERS).step_by(8) {
                    let at = start + SPREAD_MS * u as i64 / USERS as i64;
                    std::thread::sleep(Duration::from_millis((at - now_ms()).max(0) as u64));
                    mark(server, &tokens[u], rows[&format!("u{u}")], "seen");
                }
            });
        }
    });
    let marking = begun.elapsed();
    settle(&server);

    let outcomes: Vec<(String, String, Option<i64>, Option<i64>)> = server.rows(
        "SELECT d.recipient, d.status, d.released_at, n.seen_at
         FROM deliveries d JOIN notifications n ON n.event_seq = d.event_seq AND n.user_id = d.recipient",
        args![],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    );
    assert_eq!(outcomes.len(), USERS);
    let (mut skipped, mut sent) = (0, 0);
    for (user, status, released_at, seen_at) in &outcomes {
        let received = emails_to(&mail, &format!("{user}@acme.test"));
        let released_at = released_at.expect("every email was released or skipped");
        match status.as_str() {
            "skipped" => {
                assert_eq!(received, 0, "{user}: skipped, yet emailed");
                skipped += 1;
            }
            "sent" => {
                assert_eq!(received, 1, "{user}: sent {received} times");
                let seen_at = seen_at.expect("every row was marked seen");
                assert!(
                    seen_at >= released_at,
                    "{user}: emailed though seen at {seen_at}, before the release at {released_at}"
                );
                sent += 1;
            }
            other => panic!("{user}: {other}"),
        }
    }
    eprintln!("{skipped} skipped, {sent} sent; marking took {marking:?}");
    assert_eq!(
        mail.accepted_count(),
        sent,
        "one email per released delivery"
    );
    // The marks straddled the release: both outcomes happened.
    assert!(
        skipped > 0 && sent > 0,
        "{skipped} skipped, {sent} sent; marking took {marking:?}"
    );
}

#[test]
fn held_emails_survive_kill_9_and_each_goes_out_or_is_skipped_once() {
    let mail = FakeResend::start();
    let catalog = catalog(2, "seen");
    let mut server = catalog.serve(TestServer::builder().mail(&mail)).start();
    let tokens: Vec<String> = (0..10)
        .map(|u| server.create_user(&format!("u{u}"), &format!("u{u}@acme.test"), "U"))
        .collect();
    let users: Vec<String> = (0..10).map(|u| format!("u{u}")).collect();
    post(&server, mention(json!(users), 4));
    for (u, token) in tokens.iter().enumerate().take(3) {
        mark(&server, token, row_of(&server, &format!("u{u}")), "seen");
    }
    server.kill9();
    // Due while herald is down: released once it is back.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(mail.accepted_count(), 0);
    let server = server.restart_builder().start();
    settle(&server);

    for u in 0..10 {
        let expected = usize::from(u >= 3);
        assert_eq!(
            emails_to(&mail, &format!("u{u}@acme.test")),
            expected,
            "u{u}"
        );
    }
    assert_eq!(mail.accepted_count(), 7);
    assert_eq!(
        server.count("SELECT COUNT(*) FROM deliveries WHERE status = 'skipped'"),
        3
    );
    assert_none_released_early(&server, 2000);
}

#[test]
fn a_held_email_killed_mid_hold_is_released_at_its_time_after_restart() {
    let mail = FakeResend::start();
    let catalog = catalog(3, "seen");
    let mut server = catalog.serve(TestServer::builder().mail(&mail)).start();
    server.create_user("bob", "bob@acme.test", "Bob");
    post(&server, mention(json!(["bob"]), 5));
    server.kill9();
    // Back before it is due: the new process sleeps until then.
    let server = server.restart_builder().start();
    assert_eq!(
        server.count("SELECT COUNT(*) FROM deliveries WHERE status = 'held'"),
        1
    );
    settle(&server);
    assert_eq!(emails_to(&mail, "bob@acme.test"), 1);
    assert_none_released_early(&server, 3000);
}

/// One PostgreSQL database and two instances on it, with a short lease so
/// each learns of the other's held emails quickly.
type Pair = (Catalog, Arc<PgDatabase>, TestServer, TestServer);

fn pair(test: &str, mail: &FakeResend) -> Option<Pair> {
    let url = postgres_or_skip(test)?;
    let db = Arc::new(PgDatabase::create(&url));
    let catalog = catalog(2, "seen");
    let builder = catalog
        .serve(engine(mail).postgres(&db))
        .env("HERALD_LEASE_MS", "2000");
    let (a, b) = (builder.clone().start(), builder.start());
    Some((catalog, db, a, b))
}

#[test]
fn two_instances_release_each_held_email_once() {
    const EVENTS: usize = 40;
    let mail = FakeResend::start();
    let Some((_catalog, _db, a, b)) = pair("two_instances_release_each_held_email_once", &mail)
    else {
        return;
    };
    let tokens: Vec<String> = (0..EVENTS)
        .map(|u| a.create_user(&format!("u{u}"), &format!("u{u}@acme.test"), "U"))
        .collect();
    for u in 0..EVENTS {
        let server = if u % 2 == 0 { &a } else { &b };
        let (status, body) = server.post_event(mention(json!([format!("u{u}")]), 100 + u));
        assert_eq!(status, 202, "{body}");
    }
    let dispatched = || a.count("SELECT COUNT(*) FROM outbox WHERE status = 'dispatched'");
    assert!(wait_until(WAIT, || dispatched() == EVENTS as i64));
    // Every fifth recipient saw the row in time.
    for u in (0..EVENTS).step_by(5) {
        mark(&a, &tokens[u], row_of(&a, &format!("u{u}")), "seen");
    }
    settle(&a);
    settle(&b);

    for u in 0..EVENTS {
        let expected = usize::from(u % 5 != 0);
        assert_eq!(
            emails_to(&mail, &format!("u{u}@acme.test")),
            expected,
            "u{u}"
        );
    }
    assert_eq!(mail.accepted_count(), EVENTS - EVENTS / 5);
    assert_eq!(
        a.count(
            "SELECT COUNT(*) FROM deliveries WHERE status = 'sent' AND released_at IS NOT NULL"
        ),
        (EVENTS - EVENTS / 5) as i64
    );
    assert_eq!(
        a.count("SELECT COUNT(*) FROM deliveries WHERE status = 'skipped'"),
        (EVENTS / 5) as i64
    );
    // Each accepted email was its own delivery's, under one key each.
    let keys = a.rows(
        "SELECT COALESCE(batch_id, id) FROM deliveries WHERE status = 'sent'",
        args![],
        |r| r.get::<String>(0),
    );
    let accepted = mail.emails_per_key();
    for key in &keys {
        assert!(
            accepted.contains_key(key),
            "{key} never accepted: {accepted:?}"
        );
    }
    assert_eq!(accepted.values().sum::<usize>(), EVENTS - EVENTS / 5);
}
