//! `herald migrate-to-postgres`: a deployment stopped on SQLite with emails
//! pending, emails waiting for a retry and a digest still open, copied into
//! PostgreSQL and started there, delivers each of them once, with every
//! inbox row and id kept and new ids after every old one; every row of
//! every table is copied unchanged; and whatever the copy cannot do safely
//! (no file, a file `serve` has open, a URL that is not PostgreSQL's or
//! cannot be reached, a target with rows) it refuses, writing nothing.
//! Each test needs PostgreSQL (`HERALD_TEST_DATABASE_URL`) and is skipped
//! with a notice without it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use herald::args;
use herald::store::{copy::TABLES, Column, Database, Store, Synchronous, Value};
use herald::time::Clock;
use serde_json::json;

use crate::backup::{failed, succeeded};
use crate::delivery_engine::{post_email, post_to_addresses, role_changed};
use crate::migration::{now_ms, version_3_database, DAVE_TOKEN};
use crate::policy_digest::catalog;
use crate::support::database::{postgres_or_skip, PgDatabase};
use crate::support::server::HERALD_BIN;
use crate::support::{wait_until, FakeResend, Mode, TestServer, TestServerBuilder};
use herald::store::with_database;

const WAIT: Duration = Duration::from_secs(60);
/// The digest window: long enough to stop, copy and start again inside it.
const WINDOW_SECS: u64 = 10;

/// Runs `herald migrate-to-postgres <file> <url>` in an empty environment.
fn migrate(file: &Path, url: &str) -> Output {
    Command::new(HERALD_BIN)
        .env_clear()
        .args(["migrate-to-postgres", file.to_str().unwrap(), url])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {HERALD_BIN} migrate-to-postgres: {e}"))
}

fn open(database: Database) -> Store {
    Store::connect(&database, Synchronous::Normal, Clock::system())
        .unwrap_or_else(|e| panic!("open {database}: {e}"))
}

/// A column as herald reads it, its storage class spelled out
/// (`Int(5)` is not `Text("5")`).
struct Shown(String);

impl Column for Shown {
    fn from_value(v: Value<'_>) -> Option<Shown> {
        Some(Shown(format!("{v:?}")))
    }
}

/// Every row `sql` returns, each column shown.
fn shown(store: &Store, sql: &str, width: usize) -> Vec<Vec<String>> {
    store
        .read(|c| {
            c.query_all(sql, args![], |r| {
                (0..width).map(|i| Ok(r.get::<Shown>(i)?.0)).collect()
            })
        })
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn strings(store: &Store, sql: &str) -> Vec<String> {
    store
        .read(|c| c.query_all(sql, args![], |r| r.get(0)))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn count(store: &Store, sql: &str) -> i64 {
    store
        .read(|c| c.query_one(sql, args![], |r| r.get(0)))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

const INBOX_ROWS: &str = "SELECT id, event_seq, user_id, type, title, body, actions, payload,
    created_at, seen_at, read_at FROM notifications ORDER BY id";

fn upload(server: &TestServer, n: i64) {
    let (status, body) = server.post_event(json!({
        "type": "document_uploaded", "recipients": ["bob"], "subjectId": format!("doc_{n}"),
        "payload": {"orderId": "ord_1", "eventName": format!("Concert {n}"), "ticketCount": n}
    }));
    assert_eq!(status, 202, "{body}");
    server.wait_event_done(body["eventId"].as_str().unwrap(), WAIT);
}

/// Acceptance 5 of issue 20.
#[test]
fn pending_emails_and_a_half_open_digest_are_each_delivered_once_after_the_move() {
    let Some(pg_server) =
        postgres_or_skip("migrate_postgres::pending_emails_and_a_half_open_digest")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("herald.db");
    let catalog = catalog(WINDOW_SECS);
    let builder = |mail: &FakeResend| -> TestServerBuilder {
        catalog
            .serve(TestServer::builder().mail(mail))
            .env("HERALD_RETRY_BASE_MS", "300")
            .env("HERALD_RETRY_CAP_MS", "1000")
            .env("HERALD_MAX_ATTEMPTS", "100")
    };

    // On SQLite, with the provider down and asked once a second, about
    // four emails at a time: emails stay pending or wait for a retry, none
    // is sent.
    let down = FakeResend::start();
    down.set_mode(Mode::Fail(503));
    let mut sqlite = builder(&down)
        .env("HERALD_MAIL_RATE_PER_SEC", "1")
        .env("HERALD_MAIL_BATCH", "4")
        .db_dir(dir.path())
        .start();
    let dave = sqlite.create_user("dave", "dave@acme.test", "Dave");
    let bob = sqlite.create_user("bob", "bob@acme.test", "Bob");
    for i in 0..20 {
        post_email(&sqlite, i);
    }
    post_to_addresses(&sqlite, 100..104);
    for n in 1..=3 {
        let event = role_changed(json!(["dave"]), &format!("mem_dave_{n}"));
        let (status, body) = sqlite.post_event(event);
        assert_eq!(status, 202, "{body}");
        sqlite.wait_event_done(body["eventId"].as_str().unwrap(), WAIT);
    }
    // Dave reads his oldest row and deletes his newest, the newest inbox
    // row of all: its id stays used.
    let (_, inbox) = sqlite.get("/v1/inbox", Some(&dave));
    let ids: Vec<String> = inbox["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 3, "{inbox}");
    let (status, _) = sqlite.post(
        &format!("/v1/inbox/{}/read", ids[2]),
        Some(&dave),
        json!({}),
    );
    assert_eq!(status, 204);
    let (status, _) = sqlite.delete(&format!("/v1/inbox/{}", ids[0]), Some(&dave));
    assert_eq!(status, 204);
    let (_, dave_inbox) = sqlite.get("/v1/inbox", Some(&dave));
    for n in 1..=3 {
        upload(&sqlite, n);
    }
    let tried = wait_until(WAIT, || {
        sqlite.count("SELECT COUNT(*) FROM deliveries WHERE status = 'retrying'") >= 2
    });
    assert!(tried, "no email was tried before the move");
    let status = sqlite.stop();
    assert!(status.success(), "serve exited with {status}");

    // What the file holds.
    let file = open(Database::File(db.clone()));
    let inbox_before = shown(&file, INBOX_ROWS, 11);
    let counter = count(
        &file,
        "SELECT seq FROM sqlite_sequence WHERE name = 'notifications'",
    );
    let largest = count(&file, "SELECT MAX(id) FROM notifications");
    assert!(counter > largest, "the newest inbox row was deleted");
    let status_of = |status: &str| {
        count(
            &file,
            &format!("SELECT COUNT(*) FROM deliveries WHERE status = '{status}'"),
        )
    };
    let (pending, retrying) = (status_of("pending"), status_of("retrying"));
    eprintln!("moving {pending} pending and {retrying} retrying emails");
    assert!(
        pending > 0 && retrying > 0,
        "{pending} pending, {retrying} retrying"
    );
    assert_eq!(
        count(&file, "SELECT COUNT(*) FROM deliveries"),
        pending + retrying
    );
    assert!(count(&file, "SELECT COUNT(*) FROM mail_batches") > 0);
    // An email tried goes on under its key; one never tried may still be
    // merged into a batch with others waiting.
    let tried_keys: BTreeSet<String> = strings(
        &file,
        "SELECT COALESCE(batch_id, id) FROM deliveries WHERE attempts > 0",
    )
    .into_iter()
    .collect();
    let mut per_address: BTreeMap<String, usize> = BTreeMap::new();
    for address in strings(&file, "SELECT address FROM deliveries") {
        *per_address.entry(address).or_default() += 1;
    }
    let due = count(
        &file,
        "SELECT due_at FROM digests WHERE status = 'open' AND recipient_key = 'bob'",
    );
    drop(file);
    assert!(now_ms() < due - 2_000, "the digest closes before the move");

    let pg = Arc::new(PgDatabase::create(&pg_server));
    let printed = succeeded(&migrate(&db, &pg.url));
    eprintln!("{printed}");
    for table in ["notifications", "deliveries", "digests", "mail_batches"] {
        assert!(printed.contains(table), "{printed}");
    }
    assert!(printed.contains("rows/s"), "{printed}");
    assert!(now_ms() < due, "the digest closed during the move");

    // On PostgreSQL, with the provider back.
    let up = FakeResend::start();
    let server = builder(&up).postgres(&pg).start();
    let done = wait_until(WAIT, || {
        server.count("SELECT COUNT(*) FROM digests WHERE status = 'flushed'") == 1
            && server.count("SELECT COUNT(*) FROM deliveries WHERE status = 'sent'")
                == pending + retrying + 1
    });
    if !done {
        server.fail("what was pending on SQLite was not all sent from PostgreSQL");
    }
    std::thread::sleep(Duration::from_millis(500));

    // Each email once: under its key, and to its recipient.
    assert_eq!(down.accepted_count(), 0);
    let keys: BTreeSet<String> = server
        .rows(
            "SELECT DISTINCT COALESCE(batch_id, id) FROM deliveries",
            args![],
            |r| r.get(0),
        )
        .into_iter()
        .collect();
    assert!(keys.is_superset(&tried_keys), "{tried_keys:?} {keys:?}");
    assert_eq!(up.check_one_email_per_key(&keys), Ok(()));
    *per_address.entry("bob@acme.test".into()).or_default() += 1;
    let mut delivered: BTreeMap<String, usize> = BTreeMap::new();
    for email in up.accepted() {
        for to in email.to {
            *delivered.entry(to).or_default() += 1;
        }
    }
    assert_eq!(delivered, per_address);

    // The digest: released once, when due, with its three uploads.
    let (_, bob_inbox) = server.get("/v1/inbox", Some(&bob));
    let items = bob_inbox["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{bob_inbox}");
    assert_eq!(items[0]["type"], "document_uploaded_batch");
    assert_eq!(items[0]["payload"]["count"], 3);
    assert_eq!(
        server.count(
            "SELECT COUNT(*) FROM digests d JOIN notifications n ON n.event_seq = d.flushed_seq
             WHERE n.created_at < d.due_at"
        ),
        0
    );

    // The inbox as it was, ids and all; new rows after every old id.
    let (status, after) = server.get("/v1/inbox", Some(&dave));
    assert_eq!(status, 200, "{after}");
    assert_eq!(after["items"], dave_inbox["items"]);
    let (status, posted) = server.post_event(json!({
        "type": "system.announcement", "recipients": ["dave"],
        "payload": {"title": "Moved", "body": "herald runs on PostgreSQL now."}
    }));
    assert_eq!(status, 202, "{posted}");
    server.wait_event_done(posted["eventId"].as_str().unwrap(), WAIT);
    let postgres = open(Database::Postgres(pg.url.clone()));
    let inbox_after = shown(&postgres, INBOX_ROWS, 11);
    assert_eq!(inbox_after.len(), inbox_before.len() + 2, "{inbox_after:?}");
    assert_eq!(&inbox_after[..inbox_before.len()], inbox_before.as_slice());
    // The digest's row and the announcement's, after the deleted one too.
    let newer = format!("SELECT COUNT(*) FROM notifications WHERE id > {counter}");
    assert_eq!(count(&postgres, &newer), 2);
}

/// Upgrades the file and fills the tables that came after version 3.
fn with_tables_of_later_versions(db: &Path) {
    let store = open(Database::File(db.to_path_buf()));
    store
        .write(|tx| {
            tx.execute(
                "INSERT INTO throttle_hits (type, recipient, throttle_key, at, event_seq)
                 VALUES ('org.member.role_changed', 'dave', 'Acme', 1, 7)",
                args![],
            )?;
            tx.execute(
                "INSERT INTO schedules (id, type, recipients, payload, repeat, next_run_at,
                                        created_at)
                 VALUES ('sch_1', 'system.announcement', '[\"dave\"]', '{}',
                         '{\"frequency\":\"daily\"}', 2, 1)",
                args![],
            )?;
            tx.execute(
                "INSERT INTO topics (key, name, created_at, updated_at)
                 VALUES ('project:42', 'Project 42', 1, 1)",
                args![],
            )?;
            tx.execute(
                "INSERT INTO webhooks (id, url, events, secret, created_at, failing_since)
                 VALUES ('wh_1', 'https://app.example/hooks', '[\"delivery.sent\"]',
                         'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', 1, 2)",
                args![],
            )?;
            tx.execute(
                "INSERT INTO webhook_messages (id, webhook_id, kind, body, attempts,
                                               next_attempt_at, last_error, created_at)
                 VALUES ('msg_1', 'wh_1', 'delivery.sent', '{}', 2, 3, 'HTTP 500', 1)",
                args![],
            )?;
            tx.execute(
                "INSERT INTO topic_subscribers (topic_key, user_id, created_at)
                 VALUES ('project:42', 'dave', 1)",
                args![],
            )?;
            tx.execute(
                "INSERT INTO topic_fanouts (event_seq, after_user, pages, created_at)
                 VALUES (7, 'carol', 2, 1)",
                args![],
            )?;
            tx.execute(
                "INSERT INTO email_bodies_localized (event_seq, locale, subject, html, text)
                 SELECT event_seq, 'fr', 'Bonjour', '<p>Bonjour</p>', 'Bonjour'
                 FROM email_bodies ORDER BY event_seq LIMIT 1",
                args![],
            )
        })
        .unwrap();
}

/// Every table of herald 3's fixture (no table empty; the newest inbox row
/// deleted): the file is upgraded, then each row reaches PostgreSQL with
/// the same values, and herald there signs in with the old credentials
/// and numbers new inbox rows after the deleted one.
#[test]
fn every_row_of_every_table_is_copied_unchanged_and_the_old_credentials_sign_in() {
    let Some(pg_server) = postgres_or_skip("migrate_postgres::every_row_of_every_table") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("herald.db");
    version_3_database(dir.path(), now_ms());
    with_tables_of_later_versions(&db);
    let pg = Arc::new(PgDatabase::create(&pg_server));
    let printed = succeeded(&migrate(&db, &pg.url));

    let file = open(Database::File(db.clone()));
    let postgres = open(Database::Postgres(pg.url.clone()));
    for table in TABLES {
        let columns = strings(
            &file,
            &format!("SELECT name FROM pragma_table_info('{table}') ORDER BY cid"),
        );
        let select = format!("SELECT {} FROM {table}", columns.join(", "));
        let rows = |store: &Store| -> BTreeSet<Vec<String>> {
            shown(store, &select, columns.len()).into_iter().collect()
        };
        let (ours, theirs) = (rows(&file), rows(&postgres));
        assert!(!ours.is_empty(), "the fixture fills {table}");
        assert_eq!(ours, theirs, "{table} ({columns:?})");
        let line = format!("{} = {}", ours.len(), ours.len());
        assert!(
            printed
                .lines()
                .any(|l| l.contains(table) && l.contains(&line)),
            "{printed}"
        );
    }
    let counter = count(
        &file,
        "SELECT seq FROM sqlite_sequence WHERE name = 'notifications'",
    );
    drop(file);

    let server = TestServer::builder().postgres(&pg).start();
    let (status, me) = server.get("/v1/me", Some(DAVE_TOKEN));
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["id"], "dave");
    let (status, posted) = server.post_event(json!({
        "type": "system.announcement", "recipients": ["dave"],
        "payload": {"title": "Moved", "body": "herald runs on PostgreSQL now."}
    }));
    assert_eq!(status, 202, "{posted}");
    server.wait_event_done(posted["eventId"].as_str().unwrap(), WAIT);
    let (_, inbox) = server.get("/v1/inbox", Some(DAVE_TOKEN));
    assert_eq!(inbox["items"][0]["title"], "Moved", "{inbox}");
    assert_eq!(inbox["items"][0]["id"], format!("ntf_{}", counter + 1));
    assert_eq!(inbox["items"].as_array().map(Vec::len), Some(4), "{inbox}");
}

/// Every row of every table in the file at `db`, its schema version too.
fn content(db: &Path) -> BTreeMap<String, BTreeSet<Vec<String>>> {
    let file = open(Database::File(db.to_path_buf()));
    TABLES
        .iter()
        .chain(&["schema_version"])
        .map(|table| {
            let columns = format!("SELECT COUNT(*) FROM pragma_table_info('{table}')");
            let width = count(&file, &columns) as usize;
            let rows = shown(&file, &format!("SELECT * FROM {table}"), width);
            (table.to_string(), rows.into_iter().collect())
        })
        .collect()
}

/// Refusals: each says why, and neither the file nor a target changes.
#[test]
fn what_cannot_be_copied_safely_is_refused_and_nothing_is_written() {
    let Some(pg_server) = postgres_or_skip("migrate_postgres::what_cannot_be_copied_safely") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("herald.db");
    let pg = Arc::new(PgDatabase::create(&pg_server));

    let missing = dir.path().join("none.db");
    let refused = failed(&migrate(&missing, &pg.url));
    assert!(refused.contains("none.db: no database there"), "{refused}");
    let names = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    assert_eq!(names(), Vec::<String>::new(), "no file is created");

    // A running serve would go on writing after the copy's snapshot.
    let mut sqlite = TestServer::builder().db_dir(dir.path()).start();
    let token = sqlite.create_user("dave", "dave@acme.test", "Dave");
    let refused = failed(&migrate(&db, &pg.url));
    assert!(
        refused.contains("in use by another process (is `herald serve` running?)"),
        "{refused}"
    );
    sqlite.stop();
    let before = content(&db);
    let unchanged = || {
        let left: Vec<String> = names()
            .into_iter()
            .filter(|n| !n.starts_with("herald.db"))
            .collect();
        assert_eq!(left, Vec::<String>::new());
        assert!(content(&db) == before, "the file's rows changed");
    };
    unchanged();

    let absent = with_database(&pg_server, "herald_it_no_such_database");
    for (url, says) in [
        ("mysql://db/herald", "is not a PostgreSQL URL"),
        (
            "postgres://postgres@127.0.0.1:1/herald",
            "cannot connect to",
        ),
        (absent.as_str(), "herald_it_no_such_database"),
    ] {
        let refused = failed(&migrate(&db, url));
        assert!(refused.contains(says), "{url}: {refused}");
        unchanged();
    }

    // A target that holds herald rows.
    let used = PgDatabase::create(&pg_server);
    let target = open(Database::Postgres(used.url.clone()));
    target
        .write(|tx| {
            tx.execute(
                "INSERT INTO users (id, email, created_at, updated_at)
                 VALUES ('erin', 'erin@acme.test', 0, 0)",
                args![],
            )
        })
        .unwrap();
    let refused = failed(&migrate(&db, &used.url));
    assert!(
        refused.contains("already holds herald data (rows in users)"),
        "{refused}"
    );
    assert_eq!(strings(&target, "SELECT id FROM users"), ["erin"]);
    assert_eq!(count(&target, "SELECT COUNT(*) FROM api_tokens"), 0);
    unchanged();

    // A value PostgreSQL refuses, in the last table copied: the whole
    // copy is rolled back, the tables before it included.
    let odd = tempfile::tempdir().unwrap();
    let odd_db = odd.path().join("herald.db");
    let store = open(Database::File(odd_db.clone()));
    store
        .write(|tx| {
            tx.execute(
                "INSERT INTO users (id, email, created_at, updated_at)
                 VALUES ('erin', 'erin@acme.test', 0, 0)",
                args![],
            )?;
            tx.execute(
                "INSERT INTO dedup_marks (type, recipient, subject_id, dedup_key, notified_at)
                 VALUES ('t', 'erin', '', '', 'yesterday')",
                args![],
            )
        })
        .unwrap();
    drop(store);
    let empty = PgDatabase::create(&pg_server);
    let refused = failed(&migrate(&odd_db, &empty.url));
    assert!(refused.contains("copying dedup_marks"), "{refused}");
    let target = open(Database::Postgres(empty.url.clone()));
    assert_eq!(count(&target, "SELECT COUNT(*) FROM users"), 0);
    assert_eq!(
        count(&target, "SELECT COUNT(*) FROM schema_version"),
        1,
        "only herald's empty tables"
    );

    // The target every refusal left alone takes the copy; a second copy
    // into it is refused.
    succeeded(&migrate(&db, &pg.url));
    let refused = failed(&migrate(&db, &pg.url));
    assert!(refused.contains("already holds herald data"), "{refused}");
    let server = TestServer::builder().postgres(&pg).start();
    let (status, me) = server.get("/v1/me", Some(&token));
    assert_eq!((status, &me["id"]), (200, &json!("dave")), "{me}");
}
