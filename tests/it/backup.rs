//! `herald backup` and `herald compact`: a copy taken while `serve` is
//! under load holds everything committed before it began and, served by a
//! new herald, delivers exactly the emails still pending in it, once each;
//! a backup never replaces a file it should not or leaves a partial one;
//! `compact` gives deleted space back without losing a row, and refuses a
//! database `serve` has open. Both work on the SQLite file; on PostgreSQL
//! they refuse and name the server's own tools.

use herald::args;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use serde_json::{json, Value};

use crate::delivery_engine::role_changed;
use crate::support::database::{postgres_or_skip, sqlite_only, PgDatabase};
use crate::support::{wait_until, FakeResend, Fault, Mode, TestServer};

const WAIT: Duration = Duration::from_secs(90);

fn address(i: usize) -> String {
    format!("n{i}@example.com")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The command's stdout; fails the test unless it succeeded.
pub(crate) fn succeeded(output: &Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

/// The command's stderr; fails the test unless it failed with status 1.
pub(crate) fn failed(output: &Output) -> String {
    assert_eq!(
        output.status.code(),
        Some(1),
        "stdout: {}\nstderr: {}",
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stderr)
}

fn integrity_check(path: &Path) -> String {
    Connection::open(path)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

fn strings(conn: &Connection, sql: &str) -> BTreeSet<String> {
    let mut stmt = conn.prepare(sql).unwrap();
    let rows = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    rows
}

fn count(conn: &Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

/// Posts `role_changed` events, one address each, in bulks of `per_bulk`
/// from `threads` threads, together about `per_sec` a second, until `stop`;
/// every accepted event goes into `accepted` as (event id, address number)
/// once its 202 arrived.
fn post_load(
    server: &TestServer,
    threads: usize,
    per_bulk: usize,
    per_sec: usize,
    stop: &AtomicBool,
    accepted: &Mutex<Vec<(String, usize)>>,
) {
    let next = AtomicUsize::new(0);
    let url = server.url("/v1/events/bulk");
    let auth = format!("Bearer {}", server.service_key());
    let every = Duration::from_secs_f64((threads * per_bulk) as f64 / per_sec as f64);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(30)))
                    .build()
                    .into();
                let mut due = Instant::now();
                while !stop.load(Ordering::SeqCst) {
                    let first = next.fetch_add(per_bulk, Ordering::SeqCst);
                    let events: Vec<Value> = (first..first + per_bulk)
                        .map(|i| {
                            let mut event =
                                role_changed(json!([{ "email": address(i) }]), &format!("s{i}"));
                            // Room for the backup to take many steps.
                            event["payload"]["note"] = json!("x".repeat(2000));
                            event
                        })
                        .collect();
                    let body = serde_json::to_vec(&json!({ "events": events })).unwrap();
                    let mut response = agent
                        .post(&url)
                        .header("Authorization", &auth)
                        .header("Content-Type", "application/json")
                        .send(&body[..])
                        .expect("POST /v1/events/bulk");
                    assert_eq!(response.status(), 202);
                    let answer: Value =
                        serde_json::from_str(&response.body_mut().read_to_string().unwrap())
                            .unwrap();
                    let ids = answer["events"].as_array().unwrap();
                    let mut accepted = accepted.lock().unwrap();
                    for (n, id) in ids.iter().enumerate() {
                        accepted.push((id["eventId"].as_str().unwrap().to_string(), first + n));
                    }
                    drop(accepted);
                    due += every;
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                }
            });
        }
    });
}

#[test]
fn a_backup_under_load_holds_every_committed_event_and_its_pending_emails_go_out_once_after_a_restore(
) {
    if sqlite_only("backup::a_backup_under_load_holds_every_committed_event_and_its_pending_emails_go_out_once_after_a_restore") {
        return;
    }
    let mail = FakeResend::start();
    // The provider is slow and fails some requests, and herald may send
    // only a few small batches a second: emails pile up, some sent, some
    // pending and some waiting for a retry when the backup is taken.
    mail.set_mode(Mode::Delay(Duration::from_millis(20)));
    mail.set_random_faults(0.3, &[Fault::Status503, Fault::Close]);
    let server = TestServer::builder()
        .mail(&mail)
        .env("HERALD_RETRY_BASE_MS", "50")
        .env("HERALD_RETRY_CAP_MS", "500")
        .env("HERALD_MAX_ATTEMPTS", "100")
        .env("HERALD_MAIL_BATCH", "10")
        .env("HERALD_MAIL_RATE_PER_SEC", "40")
        .start();
    let restore_dir = tempfile::tempdir().unwrap();
    let copy = restore_dir.path().join("herald.db");

    let stop = AtomicBool::new(false);
    let accepted = Mutex::new(Vec::new());
    let (before, during, backup_output, loaded_for) = std::thread::scope(|scope| {
        let started = Instant::now();
        scope.spawn(|| post_load(&server, 4, 10, 1000, &stop, &accepted));
        let loaded = wait_until(WAIT, || {
            started.elapsed() > Duration::from_secs(2) && mail.accepted_count() >= 20
        });
        assert!(loaded, "no email went out under load");
        let before: Vec<(String, usize)> = accepted.lock().unwrap().clone();
        let output = server.run_cli(&["backup", copy.to_str().unwrap()]);
        let during = accepted.lock().unwrap().len() - before.len();
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::SeqCst);
        (before, during, output, started.elapsed())
    });
    let printed = succeeded(&backup_output);
    let accepted = accepted.into_inner().unwrap();
    eprintln!(
        "{} events in {loaded_for:.1?} ({:.0}/s), {} of them while the backup ran; {printed}",
        accepted.len(),
        accepted.len() as f64 / loaded_for.as_secs_f64(),
        during
    );
    assert!(printed.contains("backed up"), "{printed}");
    assert_eq!(integrity_check(&copy), "ok");

    // What the copy holds: every event committed before the backup began,
    // each email sent or still to send.
    let db = Connection::open(&copy).unwrap();
    let events_in_copy = strings(&db, "SELECT id FROM outbox");
    let missing: Vec<&String> = before
        .iter()
        .map(|(id, _)| id)
        .filter(|id| !events_in_copy.contains(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "committed before the backup, not in it: {missing:?}"
    );
    let number: BTreeMap<&str, usize> = accepted.iter().map(|(id, i)| (id.as_str(), *i)).collect();
    let sent_in_copy = strings(&db, "SELECT address FROM deliveries WHERE status = 'sent'");
    let to_send: BTreeSet<String> = events_in_copy
        .iter()
        .map(|id| address(number[id.as_str()]))
        .filter(|a| !sent_in_copy.contains(a))
        .collect();
    let by_status = |status: &str| {
        count(
            &db,
            &format!("SELECT COUNT(*) FROM deliveries WHERE status = '{status}'"),
        )
    };
    let undispatched = count(&db, "SELECT COUNT(*) FROM outbox WHERE status = 'pending'");
    eprintln!(
        "the copy: {} events ({undispatched} not dispatched), deliveries sent {}, pending {}, \
         retrying {}",
        events_in_copy.len(),
        by_status("sent"),
        by_status("pending"),
        by_status("retrying")
    );
    assert_eq!(by_status("failed") + by_status("dead"), 0);
    assert!(
        !sent_in_copy.is_empty(),
        "nothing was sent before the backup"
    );
    assert!(
        to_send.len() > 50,
        "too little pending in the copy: {}",
        to_send.len()
    );
    drop(db);
    drop(server);

    // Restored: a new herald on the copy, with a provider that knows none of
    // the keys the first one saw.
    let fresh = FakeResend::start();
    let restored = TestServer::builder()
        .mail(&fresh)
        .env("HERALD_RETRY_BASE_MS", "50")
        .db_dir(restore_dir.path())
        .start();
    let all_sent = wait_until(WAIT, || {
        restored.count("SELECT COUNT(*) FROM outbox WHERE status = 'pending'") == 0
            && restored.count("SELECT COUNT(*) FROM deliveries WHERE status = 'sent'")
                == events_in_copy.len() as i64
    });
    if !all_sent {
        restored.fail("the restored copy did not deliver everything pending in it");
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut per_address: BTreeMap<String, usize> = BTreeMap::new();
    for email in fresh.accepted() {
        for to in email.to {
            *per_address.entry(to).or_default() += 1;
        }
    }
    let twice: Vec<_> = per_address.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "sent twice after the restore: {twice:?}");
    let delivered: BTreeSet<String> = per_address.into_keys().collect();
    let resent: Vec<_> = delivered.intersection(&sent_in_copy).collect();
    assert!(
        resent.is_empty(),
        "already sent in the copy, sent again: {resent:?}"
    );
    assert_eq!(delivered, to_send);
    // By Idempotency-Key: each key the restored herald sends under was
    // accepted once, with as many emails as it covers.
    let mut keys: BTreeMap<String, usize> = BTreeMap::new();
    let rows = restored.rows(
        "SELECT COALESCE(batch_id, id), address FROM deliveries",
        args![],
        |r| Ok((r.get::<String>(0)?, r.get::<String>(1)?)),
    );
    for (key, address) in rows {
        if to_send.contains(&address) {
            *keys.entry(key).or_default() += 1;
        }
    }
    assert_eq!(fresh.emails_per_key(), keys);
    assert_eq!(
        fresh.check_one_email_per_key(&keys.into_keys().collect()),
        Ok(())
    );
}

#[test]
fn a_backup_replaces_a_file_only_with_force_and_never_leaves_a_partial_one() {
    if sqlite_only(
        "backup::a_backup_replaces_a_file_only_with_force_and_never_leaves_a_partial_one",
    ) {
        return;
    }
    let server = TestServer::start();
    for i in 0..5 {
        let (status, body) = server.post_event(role_changed(
            json!([{ "email": address(i) }]),
            &format!("s{i}"),
        ));
        assert_eq!(status, 202, "{body}");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("copy.db");
    let file_arg = file.to_str().unwrap();
    std::fs::write(&file, b"yesterday's copy").unwrap();

    let refused = failed(&server.run_cli(&["backup", file_arg]));
    assert!(
        refused.contains("exists") && refused.contains("--force"),
        "{refused}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"yesterday's copy");

    let printed = succeeded(&server.run_cli(&["backup", file_arg, "--force"]));
    assert!(
        printed.contains("backed up") && printed.contains("pages"),
        "{printed}"
    );
    assert_eq!(integrity_check(&file), "ok");
    let copy = Connection::open(&file).unwrap();
    assert_eq!(count(&copy, "SELECT COUNT(*) FROM outbox"), 5);
    drop(copy);

    // Fails before anything is written: no FILE, no temporary file.
    let nowhere = dir.path().join("missing").join("copy.db");
    let refused = failed(&server.run_cli(&["backup", nowhere.to_str().unwrap()]));
    assert!(refused.contains("copy.db"), "{refused}");
    assert!(!dir.path().join("missing").exists());
    let onto_itself = server.db_path().to_str().unwrap().to_string();
    let refused = failed(&server.run_cli(&["backup", &onto_itself, "--force"]));
    assert!(
        refused.contains("the database being backed up"),
        "{refused}"
    );
    assert_eq!(server.count("SELECT COUNT(*) FROM outbox"), 5);

    let names = |dir: &Path| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(names(dir.path()), BTreeSet::from(["copy.db".to_string()]));
    let beside_db: Vec<String> = names(server.dir())
        .into_iter()
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(beside_db.is_empty(), "{beside_db:?}");
}

#[test]
fn compact_shrinks_a_database_after_deletes_and_keeps_every_remaining_row() {
    if sqlite_only("backup::compact_shrinks_a_database_after_deletes_and_keeps_every_remaining_row")
    {
        return;
    }
    let mut server = TestServer::start();
    // Enough rows that the empty schema's pages (a few hundred KiB) do not
    // decide the ratio below.
    let events: Vec<Value> = (0..1000)
        .map(|i| {
            let mut event = role_changed(json!([{ "email": address(i) }]), &format!("s{i}"));
            event["payload"]["note"] = json!("x".repeat(4000));
            event
        })
        .collect();
    for bulk in events.chunks(100) {
        let (status, body) = server.post(
            "/v1/events/bulk",
            Some(server.service_key()),
            json!({ "events": bulk }),
        );
        assert_eq!(status, 202, "{body}");
    }
    let dispatched = wait_until(WAIT, || {
        server.count("SELECT COUNT(*) FROM outbox WHERE status = 'pending'") == 0
    });
    assert!(dispatched, "the events were never dispatched");
    server.stop();

    let db = server.db_path().to_path_buf();
    let kept = {
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch(
            "PRAGMA foreign_keys = ON;
             BEGIN;
             DELETE FROM deliveries WHERE event_seq > 50;
             DELETE FROM email_bodies WHERE event_seq > 50;
             DELETE FROM notifications WHERE event_seq > 50;
             DELETE FROM listener_runs WHERE event_seq > 50;
             DELETE FROM outbox WHERE seq > 50;
             COMMIT;",
        )
        .unwrap();
        strings(&conn, "SELECT id || ' ' || status FROM outbox")
    };
    assert_eq!(kept.len(), 50);
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let before = size(&db);

    let printed = succeeded(&server.run_cli(&["compact"]));
    let after = size(&db);
    eprintln!("{printed}");
    assert!(
        printed.contains("before") && printed.contains("after"),
        "{printed}"
    );
    assert!(after * 4 < before, "{before} -> {after} bytes");
    assert_eq!(integrity_check(&db), "ok");
    let conn = Connection::open(&db).unwrap();
    assert_eq!(
        strings(&conn, "SELECT id || ' ' || status FROM outbox"),
        kept
    );
    assert_eq!(count(&conn, "PRAGMA auto_vacuum"), 2, "not incremental");
    drop(conn);

    let server = server.restart_builder().start();
    let id = kept.first().unwrap().split(' ').next().unwrap();
    let (status, event) = server.get(&format!("/v1/events/{id}"), Some(server.service_key()));
    assert_eq!(status, 200, "{event}");
}

#[test]
fn compact_refuses_while_serve_has_the_database_open() {
    if sqlite_only("backup::compact_refuses_while_serve_has_the_database_open") {
        return;
    }
    let server = TestServer::start();
    let refused = failed(&server.run_cli(&["compact"]));
    assert!(
        refused.contains("in use") && refused.contains("herald serve"),
        "{refused}"
    );
    let (status, body) = server.post_event(role_changed(json!([{ "email": address(1) }]), "s1"));
    assert_eq!(status, 202, "{body}");
}

#[test]
fn on_postgresql_backup_and_compact_refuse_and_name_the_servers_own_tools() {
    let test = "backup::on_postgresql_backup_and_compact_refuse_and_name_the_servers_own_tools";
    let Some(url) = postgres_or_skip(test) else {
        return;
    };
    let server = TestServer::builder()
        .postgres(&Arc::new(PgDatabase::create(&url)))
        .start();
    let (status, body) = server.post_event(role_changed(json!([{ "email": address(1) }]), "s1"));
    assert_eq!(status, 202, "{body}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("copy.db");

    let refused = failed(&server.run_cli(&["backup", file.to_str().unwrap()]));
    assert!(
        refused.contains("SQLite file") && refused.contains("pg_dump"),
        "{refused}"
    );
    assert!(!file.exists(), "a refused backup wrote {}", file.display());
    let refused = failed(&server.run_cli(&["compact"]));
    assert!(
        refused.contains("SQLite file") && refused.contains("VACUUM FULL"),
        "{refused}"
    );

    // Nothing was touched: the server goes on as before.
    assert_eq!(server.count("SELECT COUNT(*) FROM outbox"), 1);
    let (status, body) = server.post_event(role_changed(json!([{ "email": address(2) }]), "s2"));
    assert_eq!(status, 202, "{body}");
}
