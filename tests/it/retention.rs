//! Retention (SPEC 8): with periods of seconds, final email bodies, the
//! delivery log and finished outbox rows go, while every pending delivery
//! keeps its row, its body and its batch, across kill -9 in the middle of a
//! prune; inbox rows stay unless their own retention is set; and under a
//! steady load the database file stops growing.

use herald::args;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::database::sqlite_only;
use crate::support::{wait_until, FakeResend, Mode, TestServer, TestServerBuilder};

const WAIT: Duration = Duration::from_secs(60);

fn short_retention(builder: TestServerBuilder) -> TestServerBuilder {
    builder
        .env("HERALD_EMAIL_BODY_RETENTION", "2s")
        .env("HERALD_LOG_RETENTION", "3s")
}

/// `count` role changes, one inbox row and one email each, in bulk.
fn post_role_changes(server: &TestServer, from: usize, count: usize) {
    for start in (from..from + count).step_by(500) {
        let events: Vec<_> = (start..(start + 500).min(from + count))
            .map(|i| {
                json!({"type": "org.member.role_changed", "recipients": [format!("u{}", i % 20)],
                       "subjectId": format!("mem_{i}"),
                       "payload": {"newRole": "admin", "before": "member", "orgName": "Acme",
                                   "actorName": "Bob"}})
            })
            .collect();
        let (status, body) = server.post(
            "/v1/events/bulk",
            Some(server.service_key()),
            json!({"events": events}),
        );
        assert_eq!(status, 202, "{body}");
    }
}

fn users(server: &TestServer) {
    for u in 0..20 {
        server.create_user(&format!("u{u}"), &format!("u{u}@acme.test"), "U");
    }
}

/// Unfinished deliveries (a restart turns `retrying` back into `pending`)
/// with whether their body and batch are there, as a comparable set.
fn pending_work(server: &TestServer) -> BTreeSet<(String, bool, bool)> {
    let rows = server.rows(
        "SELECT d.id,
                EXISTS (SELECT 1 FROM email_bodies b WHERE b.event_seq = d.event_seq),
                d.batch_id IS NULL OR EXISTS (SELECT 1 FROM mail_batches m WHERE m.id = d.batch_id)
         FROM deliveries d WHERE d.status NOT IN ('sent', 'failed', 'dead')",
        args![],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    );
    rows.into_iter().collect()
}

#[test]
fn final_work_is_pruned_and_pending_work_survives_kill_9_mid_prune() {
    let mail = FakeResend::start();
    // Default retention while the work is made: nothing goes yet.
    let mut server = TestServer::builder()
        .mail(&mail)
        .env("HERALD_RETRY_BASE_MS", "2000")
        .env("HERALD_MAX_ATTEMPTS", "50")
        .start();
    users(&server);
    post_role_changes(&server, 0, 3000);
    let sent = wait_until(WAIT, || {
        server.count("SELECT COUNT(*) FROM deliveries WHERE status = 'sent'") == 3000
    });
    assert!(sent, "the first 3,000 emails were not all sent");
    // The provider goes down: these stay pending, retrying.
    mail.set_mode(Mode::Fail(503));
    post_role_changes(&server, 3000, 100);
    let retrying = wait_until(WAIT, || {
        server.count("SELECT COUNT(*) FROM deliveries WHERE status = 'retrying'") == 100
    });
    assert!(
        retrying,
        "the last 100 emails did not fail over to retrying"
    );
    server.stop();
    let pending_before = pending_work(&server);
    assert_eq!(pending_before.len(), 100);
    assert!(
        pending_before
            .iter()
            .all(|(_, body, batch)| *body && *batch),
        "each pending delivery has its body and batch"
    );
    let inbox_ids = server.count("SELECT COUNT(*) FROM notifications");
    let db = server.db_path().to_path_buf();
    let file_size = || std::fs::metadata(&db).map_or(0, |m| m.len());
    let full_size = file_size();
    std::thread::sleep(Duration::from_secs(3));

    // Killed while a prune step holds its transaction open (each holds it
    // 300 ms, and a pass of several steps starts as herald starts), three
    // times over: each time the open step rolls back.
    let builder =
        short_retention(server.restart_builder()).env("HERALD_TEST_PRUNE_DELAY_MS", "300");
    for _ in 0..3 {
        let mut pruning = builder.clone().start();
        std::thread::sleep(Duration::from_millis(200));
        pruning.kill9();
        assert!(pruning.logs().contains("TEST HOOK"), "{}", pruning.logs());
        assert_eq!(
            pending_work(&pruning),
            pending_before,
            "a kill mid-prune lost pending work"
        );
    }

    let server = short_retention(server.restart_builder()).start();
    let done = wait_until(WAIT, || {
        server.count("SELECT COUNT(*) FROM deliveries") == 100
            && server.count("SELECT COUNT(*) FROM email_bodies") == 100
    });
    if !done {
        server.fail("final deliveries and bodies were not pruned");
    }
    assert_eq!(
        pending_work(&server),
        pending_before,
        "pending work is never pruned"
    );
    // On SQLite the pages freed go back to the filesystem (inbox rows stay,
    // so not all of them). PostgreSQL keeps the space its vacuum frees for
    // new rows and never gives it back by itself: nothing to check there.
    if !server.on_postgres() {
        let shrunk = wait_until(Duration::from_secs(10), || file_size() < full_size * 3 / 4);
        assert!(
            shrunk,
            "the file did not shrink: {full_size} then {} bytes",
            file_size()
        );
    }
    assert_eq!(
        server.count("SELECT COUNT(*) FROM outbox WHERE status != 'pending'"),
        100,
        "only the events with pending deliveries keep their outbox rows"
    );
    assert_eq!(
        server.count(
            "SELECT COUNT(*) FROM mail_batches m WHERE NOT EXISTS
                          (SELECT 1 FROM deliveries d WHERE d.batch_id = m.id)"
        ),
        0,
        "no batch is left without deliveries"
    );
    assert_eq!(
        server.count("SELECT COUNT(*) FROM notifications"),
        inbox_ids,
        "inbox rows are kept without HERALD_INBOX_RETENTION"
    );
    let metrics = crate::metrics::scrape(&server);
    assert!(metrics.value("herald_pruned_rows_total", &[("kind", "email_body")]) >= 1.0);

    // The provider recovers: each pending email goes out once, with its body.
    mail.set_mode(Mode::Ok);
    let keys: BTreeSet<String> = pending_before.iter().map(|(id, ..)| id.clone()).collect();
    // Counted at the provider: a sent delivery is soon pruned itself (the
    // log is kept 3 s), so the database may never show all 100 as sent.
    let all_sent = wait_until(WAIT, || mail.accepted_count() >= 3100);
    if !all_sent {
        server.fail("the pending emails were not sent after the prune");
    }
    // Anything that would be a second send has had time to show up.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(mail.accepted_count(), 3100, "every email exactly once");
    let resent: BTreeSet<String> = mail
        .accepted()
        .iter()
        .filter(|a| a.subject.contains("admin") && a.html.as_deref().is_some_and(|h| !h.is_empty()))
        .filter_map(|a| a.idempotency_key.clone())
        .collect();
    assert_eq!(mail.check_one_email_per_key(&resent), Ok(()));
    assert_eq!(keys.len(), 100);
}

#[test]
fn inbox_retention_prunes_old_inbox_rows_and_the_stream_ids_go_on() {
    let server = TestServer::builder()
        .env("HERALD_INBOX_RETENTION", "2s")
        .start();
    users(&server);
    let announce = |title: &str| {
        let (status, body) = server.post_event(json!({
            "type": "system.announcement", "recipients": ["u1"],
            "payload": {"title": title, "body": "b"}
        }));
        assert_eq!(status, 202, "{body}");
        server.wait_event_done(body["eventId"].as_str().unwrap(), WAIT);
    };
    announce("old");
    let old_id = server.count("SELECT MAX(id) FROM notifications");
    let gone = wait_until(WAIT, || {
        server.count("SELECT COUNT(*) FROM notifications") == 0
    });
    assert!(gone, "the old inbox row was not pruned");
    announce("new");
    assert!(
        server.count("SELECT MAX(id) FROM notifications") > old_id,
        "ids are never reused, so a stream's Last-Event-ID stays meaningful"
    );
}

/// What herald keeps stops growing under a steady load, on both engines;
/// on SQLite so does the file, whose freed pages go back to the
/// filesystem. PostgreSQL makes the space of pruned rows reusable when its
/// autovacuum gets to the tables, on the server's schedule (a minute apart
/// by default), which these 16 seconds cannot wait for.
#[test]
fn under_steady_load_the_database_stops_growing() {
    let server = TestServer::builder()
        .env("HERALD_EMAIL_BODY_RETENTION", "2s")
        .env("HERALD_LOG_RETENTION", "2s")
        .env("HERALD_INBOX_RETENTION", "2s")
        .start();
    users(&server);
    let db = server.db_path().to_path_buf();
    let size = || {
        if server.on_postgres() {
            return server.count("SELECT pg_database_size(current_database())") as u64;
        }
        std::fs::metadata(&db).map_or(0, |m| m.len())
    };
    let rows = || {
        server.count(
            "SELECT (SELECT COUNT(*) FROM outbox) + (SELECT COUNT(*) FROM deliveries)
                  + (SELECT COUNT(*) FROM email_bodies) + (SELECT COUNT(*) FROM notifications)",
        ) as u64
    };
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut posted = 0;
    while started.elapsed() < Duration::from_secs(16) {
        post_role_changes(&server, posted, 200);
        posted += 200;
        std::thread::sleep(Duration::from_millis(500));
        samples.push((started.elapsed().as_secs_f64(), size(), rows()));
    }
    let curve: Vec<String> = samples
        .iter()
        .map(|(t, bytes, rows)| format!("{t:.0}s {} KB {rows} rows", bytes / 1024))
        .collect();
    eprintln!(
        "database under 400 events/s with 2 s retention: {}",
        curve.join(", ")
    );
    let third = samples.len() / 3;
    let early = |of: fn(&(f64, u64, u64)) -> u64| samples[..third].iter().map(of).max().unwrap();
    let late = |of: fn(&(f64, u64, u64)) -> u64| samples[2 * third..].iter().map(of).max().unwrap();
    // Without retention both would grow by 2.5x from the first third to the
    // last.
    assert!(
        late(|s| s.2) <= early(|s| s.2) * 3 / 2,
        "the rows kept growing: {}",
        curve.join(", ")
    );
    if !server.on_postgres() {
        assert!(
            late(|s| s.1) <= early(|s| s.1) * 3 / 2,
            "the file kept growing: {}",
            curve.join(", ")
        );
    }
}

/// A database as schema version 3 left it, with inbox rows whose ids 1 and
/// 2 were used and 2 deleted since.
fn version_3_database(dir: &std::path::Path) {
    let conn = rusqlite::Connection::open(dir.join("herald.db")).unwrap();
    for step in [
        include_str!("../../schema.sql"),
        include_str!("../../src/store/schema_v2.sql"),
        include_str!("../../src/store/schema_v3.sql"),
    ] {
        conn.execute_batch(step).unwrap();
    }
    conn.execute_batch(
        "CREATE TABLE schema_version (version INTEGER NOT NULL);
         INSERT INTO schema_version (version) VALUES (3);
         INSERT INTO users (id, email, name, created_at, updated_at)
             VALUES ('u1', 'u1@acme.test', 'U', 0, 0), ('u2', 'u2@acme.test', 'V', 0, 0);
         INSERT INTO outbox (seq, id, type, body, status, created_at)
             VALUES (1, 'evt_1', 'system.announcement', '', 'dispatched', 0);
         INSERT INTO notifications (event_seq, user_id, type, title, body, payload, created_at, read_at)
             VALUES (1, 'u1', 'system.announcement', 'kept', 'b', '{}', 1, 5);
         INSERT INTO notifications (event_seq, user_id, type, title, body, payload, created_at)
             VALUES (1, 'u2', 'system.announcement', 'deleted', 'b', '{}', 2);
         DELETE FROM notifications WHERE user_id = 'u2';",
    )
    .unwrap();
}

#[test]
fn version_4_keeps_inbox_rows_and_their_ids_while_their_events_are_pruned() {
    if sqlite_only(
        "retention::version_4_keeps_inbox_rows_and_their_ids_while_their_events_are_pruned",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    version_3_database(dir.path());
    let server = TestServer::builder()
        .db_dir(dir.path())
        .env("HERALD_LOG_RETENTION", "1s")
        .start();
    let token = server.run_cli(&["user", "token", "u1"]);
    let token = String::from_utf8_lossy(&token.stdout).trim().to_string();
    let (status, page) = server.get("/v1/inbox", Some(&token));
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["items"][0]["id"], "ntf_1");
    assert_eq!(page["items"][0]["title"], "kept");
    assert!(page["items"][0]["readAt"].is_string(), "{page}");
    // Its event goes with the log; the newest outbox row stays, so post one
    // more first.
    let (status, body) = server.post_event(json!({
        "type": "system.announcement", "recipients": ["u1"],
        "payload": {"title": "new", "body": "b"}
    }));
    assert_eq!(status, 202, "{body}");
    server.wait_event_done(body["eventId"].as_str().unwrap(), WAIT);
    let pruned = wait_until(WAIT, || {
        server.count("SELECT COUNT(*) FROM outbox WHERE id = 'evt_1'") == 0
    });
    assert!(pruned, "the old event was not pruned");
    assert_eq!(
        server.count("SELECT COUNT(*) FROM notifications WHERE id = 1"),
        1,
        "its inbox row stays"
    );
    assert_eq!(
        server.count("SELECT MAX(id) FROM notifications"),
        3,
        "the new row's id carries on past the deleted 2"
    );
    let check: String = server.row("PRAGMA integrity_check", args![], |r| r.get(0));
    assert_eq!(check, "ok");
}
