//! Several herald instances on one PostgreSQL database (SPEC 11): events
//! posted to either are dispatched and delivered exactly once, also when
//! one instance is killed mid-work; a live stream on one carries the rows
//! the other commits; a digest and a re-armed dead delivery happen once.
//! Each test needs PostgreSQL and is skipped, with a notice, without it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::args;
use serde_json::json;

use crate::delivery_engine::{check_one_email_per_delivery, engine, role_changed};
use crate::policy_catalog::Catalog;
use crate::support::database::{postgres_or_skip, PgDatabase};
use crate::support::sse::{Frame, SseClient};
use crate::support::{wait_until, FakeResend, Mode, TestServer, TestServerBuilder};

/// The lease the instances run with: a killed one's work is taken over
/// this long after its last heartbeat.
const LEASE: Duration = Duration::from_millis(2000);
const WAIT: Duration = Duration::from_secs(120);
const USERS: usize = 20;

/// Two instances' settings on one fresh database; None when there is no
/// PostgreSQL to run on.
fn pair(test: &str, mail: &FakeResend) -> Option<(Arc<PgDatabase>, TestServerBuilder)> {
    let server = postgres_or_skip(test)?;
    let db = Arc::new(PgDatabase::create(&server));
    let builder = engine(mail)
        .postgres(&db)
        .env("HERALD_LEASE_MS", &LEASE.as_millis().to_string())
        .env("HERALD_MAX_ATTEMPTS", "100");
    Some((db, builder))
}

fn create_users(server: &TestServer) -> Vec<String> {
    (0..USERS)
        .map(|u| server.create_user(&format!("u{u}"), &format!("u{u}@acme.test"), "U"))
        .collect()
}

/// Posts events `range` round-robin to `servers` from four client threads;
/// `alive(i)` says whether server `i` still takes events.
fn post_round_robin(servers: &[&TestServer], range: std::ops::Range<usize>) {
    let chunks: Vec<Vec<usize>> = (0..4)
        .map(|t| range.clone().filter(|i| i % 4 == t).collect())
        .collect();
    std::thread::scope(|scope| {
        for chunk in &chunks {
            scope.spawn(move || {
                for &i in chunk {
                    let server = servers[i % servers.len()];
                    let event = role_changed(json!([format!("u{}", i % USERS)]), &format!("s{i}"));
                    let (status, body) = server.post_event(event);
                    assert_eq!(status, 202, "event {i}: {body}");
                }
            });
        }
    });
}

fn sent(server: &TestServer) -> i64 {
    server.count("SELECT COUNT(*) FROM deliveries WHERE status = 'sent'")
}

/// Waits for `events` emails sent, then checks each was accepted by the
/// provider exactly once: one email per delivery (per event and
/// recipient), one per idempotency key.
fn assert_each_email_once(mail: &FakeResend, server: &TestServer, events: usize) {
    if !wait_until(WAIT, || sent(server) == events as i64) {
        let states: Vec<(String, Option<i64>, i64)> = server.rows(
            "SELECT status, claimed_by, COUNT(*) FROM deliveries GROUP BY status, claimed_by",
            args![],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        );
        let instances: Vec<(i64, i64)> =
            server.rows("SELECT id, heartbeat_at FROM instances", args![], |r| {
                Ok((r.get(0)?, r.get(1)?))
            });
        server.fail(&format!(
            "{} of {events} emails sent, {} accepted by the provider; deliveries by \
             (status, holder): {states:?}; instances: {instances:?}; {} events pending",
            sent(server),
            mail.accepted_count(),
            server.count("SELECT COUNT(*) FROM outbox WHERE status = 'pending'")
        ));
    }
    // Late duplicates would arrive now.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        server.count("SELECT COUNT(*) FROM notifications"),
        events as i64
    );
    assert_eq!(
        server.count("SELECT COUNT(DISTINCT event_seq) FROM deliveries"),
        events as i64,
        "one email delivery per event (each has one recipient)"
    );
    assert_eq!(mail.accepted_count(), events, "no email accepted twice");
    assert_eq!(check_one_email_per_delivery(mail, server), Ok(()));
}

#[test]
fn two_instances_deliver_each_of_2000_events_once_with_30_percent_of_sends_failing() {
    let mail = FakeResend::start();
    let Some((_db, builder)) = pair("two_instances_deliver_each_of_2000_events_once", &mail) else {
        return;
    };
    mail.set_random_faults(0.3, &[]);
    // 429s without pauses of a second each (Retry-After has its own test).
    mail.set_retry_after(Some(0));
    let a = builder.clone().start();
    let b = builder.start();
    create_users(&a);
    post_round_robin(&[&a, &b], 0..2000);
    assert_each_email_once(&mail, &a, 2000);
    // Both instances did the work: each held deliveries of its own.
    assert_eq!(
        a.count("SELECT COUNT(DISTINCT claimed_by) FROM deliveries"),
        2,
        "{}\n{}",
        a.logs(),
        b.logs()
    );
}

#[test]
fn a_killed_instances_events_and_emails_are_taken_over_once_within_the_lease() {
    let mail = FakeResend::start();
    let Some((_db, builder)) = pair("a_killed_instances_events_and_emails_are_taken_over", &mail)
    else {
        return;
    };
    mail.set_random_faults(0.3, &[]);
    mail.set_retry_after(Some(0));
    // Sends take a while, so that the killed instance leaves emails behind.
    mail.set_mode(Mode::Delay(Duration::from_millis(20)));
    let builder = builder.env("HERALD_MAIL_BATCH", "1");
    let mut a = builder.clone().start();
    let b = builder.start();
    create_users(&a);
    post_round_robin(&[&a, &b], 0..1000);
    let a_pid = a.pid().map_or(0, i64::from);
    let a_id = b.count(&format!("SELECT id FROM instances WHERE pid = {a_pid}"));
    let last_seq = b.count("SELECT MAX(seq) FROM outbox");
    a.kill9();
    let killed = Instant::now();
    // What the killed instance held: its emails not yet sent and the
    // events it had not dispatched yet.
    let held = |server: &TestServer| {
        server.count(&format!(
            "SELECT COUNT(*) FROM deliveries WHERE status = 'pending' AND claimed_by = {a_id}"
        ))
    };
    let undispatched = |server: &TestServer| {
        server.count(&format!(
            "SELECT COUNT(*) FROM outbox WHERE status = 'pending' AND seq <= {last_seq}"
        ))
    };
    let (held_at_kill, undispatched_at_kill) = (held(&b), undispatched(&b));
    assert!(
        held_at_kill > 0,
        "the kill left no email behind to take over"
    );
    // Taking over is finding the instance dead (a lease without a
    // heartbeat, seen by the next sweep, a fifth of it later at most) and
    // claiming what it held; dispatching its backlog of events then takes
    // as long as that much work takes.
    let claimed = wait_until(WAIT, || held(&b) == 0);
    let claimed_after = killed.elapsed();
    assert!(
        claimed,
        "the killed instance's emails were never taken over"
    );
    let dispatched = wait_until(WAIT, || undispatched(&b) == 0);
    let dispatched_after = killed.elapsed();
    assert!(
        dispatched,
        "the killed instance's events were never dispatched"
    );
    mail.set_mode(Mode::Ok);
    post_round_robin(&[&b], 1000..2000);
    assert_each_email_once(&mail, &b, 2000);
    eprintln!(
        "killed holding {held_at_kill} emails and {undispatched_at_kill} undispatched events: \
         emails claimed {claimed_after:?} and events dispatched {dispatched_after:?} after \
         the kill (lease {LEASE:?}); all 2000 emails out {:?} after it",
        killed.elapsed()
    );
    assert!(
        claimed_after <= LEASE + LEASE / 5 + Duration::from_secs(1),
        "the killed instance's emails were claimed {claimed_after:?} after the kill"
    );
}

#[test]
fn a_stream_on_one_instance_carries_a_row_committed_by_the_other_within_200_ms() {
    let mail = FakeResend::start();
    let Some((_db, builder)) = pair("a_stream_on_one_instance_carries_a_row", &mail) else {
        return;
    };
    let a = builder.clone().start();
    let b = builder.start();
    let token = a.create_user("u0", "u0@acme.test", "U");
    let auth = format!("Bearer {token}");
    let mut stream = SseClient::open(
        b.base_url(),
        "/v1/inbox/stream",
        &[("Authorization", &auth)],
    );
    assert_eq!(stream.status, 200);
    assert_eq!(
        stream.next_frame(Duration::from_secs(5)),
        Some(Frame::Comment("connected".into()))
    );
    let mut delays = Vec::new();
    for i in 0..20 {
        let posted = Instant::now();
        let (status, body) = a.post_event(role_changed(json!(["u0"]), &format!("s{i}")));
        assert_eq!(status, 202, "{body}");
        let event = stream.next_event(Duration::from_secs(5));
        delays.push(posted.elapsed());
        let Some(Frame::Event { data, .. }) = event else {
            b.fail(&format!(
                "no row on instance B's stream for event {i}: {event:?}"
            ));
        };
        let row: serde_json::Value = serde_json::from_str(&data).unwrap();
        assert_eq!(row["type"], "org.member.role_changed", "{row}");
    }
    delays.sort();
    eprintln!(
        "post on A to row on B's stream: median {:?}, max {:?}",
        delays[10], delays[19]
    );
    assert!(
        delays[19] <= Duration::from_millis(200),
        "a row took {:?} to reach the other instance's stream",
        delays[19]
    );
}

#[test]
fn a_digest_and_a_dead_delivery_retry_happen_once_with_two_instances() {
    let mail = FakeResend::start();
    let Some((_db, builder)) = pair("a_digest_and_a_dead_delivery_retry_happen_once", &mail) else {
        return;
    };
    let mut catalog = Catalog::builtin();
    catalog.set(
        "document_uploaded",
        "digest",
        json!({"key": "{{ orderId }}", "windowSecs": 2, "batchType": "document_uploaded_batch"}),
    );
    let builder = catalog.serve(builder.env("HERALD_MAX_ATTEMPTS", "2"));
    let a = builder.clone().start();
    let b = builder.start();
    a.create_user("bob", "bob@acme.test", "Bob");

    // Uploads for one order, posted to both: one digest, released once.
    for n in 0..6 {
        let server = if n % 2 == 0 { &a } else { &b };
        let (status, body) = server.post_event(json!({
            "type": "document_uploaded", "recipients": ["bob"],
            "subjectId": format!("doc_{n}"),
            "payload": {"orderId": "ord_1", "eventName": format!("Concert {n}"), "ticketCount": n}
        }));
        assert_eq!(status, 202, "{body}");
    }
    let released = wait_until(Duration::from_secs(20), || {
        a.count("SELECT COUNT(*) FROM digests WHERE status = 'flushed'") == 1
    });
    assert!(released, "the digest was never released");
    assert!(mail.wait_for_accepted(1, Duration::from_secs(20)));
    std::thread::sleep(LEASE);
    assert_eq!(a.count("SELECT COUNT(*) FROM digests"), 1);
    assert_eq!(a.count("SELECT COUNT(*) FROM digest_events"), 6);
    assert_eq!(
        a.count("SELECT COUNT(*) FROM notifications WHERE type = 'document_uploaded_batch'"),
        1
    );
    assert_eq!(mail.accepted_count(), 1, "one email for the digest");

    // A delivery that died, re-armed through one instance: sent once.
    mail.set_mode(Mode::Fail(503));
    let (status, body) = b.post_event(role_changed(json!(["bob"]), "dead"));
    assert_eq!(status, 202, "{body}");
    let dead = wait_until(Duration::from_secs(20), || {
        a.count("SELECT COUNT(*) FROM deliveries WHERE status = 'dead'") == 1
    });
    assert!(dead, "the delivery never died");
    let id: String = a.row(
        "SELECT id FROM deliveries WHERE status = 'dead'",
        args![],
        |r| r.get(0),
    );
    mail.set_mode(Mode::Ok);
    let (status, body) = a.post(
        &format!("/v1/deliveries/{id}/retry"),
        Some(a.service_key()),
        json!({}),
    );
    assert_eq!(status, 200, "{body}");
    let resent = wait_until(Duration::from_secs(20), || {
        mail.accepted()
            .iter()
            .any(|e| e.idempotency_key.as_deref() == Some(&id))
    });
    assert!(resent, "the re-armed delivery never went out");
    std::thread::sleep(LEASE);
    let sends = mail
        .accepted()
        .iter()
        .filter(|e| e.idempotency_key.as_deref() == Some(&id))
        .count();
    assert_eq!(sends, 1, "the re-armed delivery went out once");
    assert_eq!(
        a.count("SELECT COUNT(*) FROM deliveries WHERE status = 'sent'"),
        2
    );
}

/// Unique keys in the database, not one process's memory, make a repeated
/// idempotency key and a repeat inside the dedup window count once, when
/// the copies arrive at both instances at the same moment.
#[test]
fn idempotency_keys_and_dedup_windows_hold_across_instances() {
    let mail = FakeResend::start();
    let Some((_db, builder)) = pair("idempotency_keys_and_dedup_windows_hold", &mail) else {
        return;
    };
    let a = builder.clone().start();
    let b = builder.start();
    a.create_user("u0", "u0@acme.test", "U");
    let at_once = |event: serde_json::Value| -> Vec<(u16, serde_json::Value)> {
        std::thread::scope(|scope| {
            let posts: Vec<_> = (0..8)
                .map(|i| {
                    let (server, event) = (if i % 2 == 0 { &a } else { &b }, &event);
                    scope.spawn(move || server.post_event(event))
                })
                .collect();
            posts.into_iter().map(|p| p.join().unwrap()).collect()
        })
    };
    for round in 0..5 {
        let mut event = role_changed(json!(["u0"]), &format!("keyed-{round}"));
        event["idempotencyKey"] = json!(format!("key-{round}"));
        let answers = at_once(event);
        let ids: BTreeSet<&str> = answers
            .iter()
            .map(|(_, b)| b["eventId"].as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), 1, "one event per key: {answers:?}");
        let created = answers.iter().filter(|(status, _)| *status == 202).count();
        assert_eq!(created, 1, "one 202, the rest duplicates: {answers:?}");
    }
    // Eight events alike (same type, recipient, subject and dedup key), none
    // keyed: the first dispatched is sent, the others deduped.
    let answers = at_once(role_changed(json!(["u0"]), "same"));
    assert!(
        answers.iter().all(|(status, _)| *status == 202),
        "{answers:?}"
    );
    for (_, body) in &answers {
        a.wait_event_done(body["eventId"].as_str().unwrap(), WAIT);
    }
    let sent: i64 = answers
        .iter()
        .map(|(_, body)| {
            let (_, event) = b.get(
                &format!("/v1/events/{}", body["eventId"].as_str().unwrap()),
                Some(b.service_key()),
            );
            event["result"]["sent"].as_i64().unwrap()
        })
        .sum();
    assert_eq!(sent, 1, "one of eight alike events sent");
    assert!(mail.wait_for_accepted(6, Duration::from_secs(20)));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        mail.accepted_count(),
        6,
        "five keyed events and one of the alike"
    );
    assert_eq!(a.count("SELECT COUNT(*) FROM notifications"), 6);
}
