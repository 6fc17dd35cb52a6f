//! herald-bench's own looks into herald's database: a `Store` to read the
//! one a herald child process is serving, and what each engine says about
//! its size; and what `Store` must not do, which makes this the only module
//! of the bench that names the drivers (`rusqlite`, `postgres`): `settle`,
//! creating and dropping the PostgreSQL databases the scenarios run on,
//! loading seeded inbox rows there with COPY, and the raw ceiling's insert
//! loop on a bare SQLite connection.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use herald::args;
use herald::store::{Database, Engine, Store, Synchronous};
use herald::time::Clock;
use postgres::NoTls;

use crate::report::progress;

/// herald's own `Store` on the database a herald child process serves, to
/// read it while that process writes. Opening it writes nothing there: the
/// migrations find the schema current (the server migrated it before
/// listening), and on SQLite its checkpointer only wakes after this
/// process's own writes, of which there are none, so herald's checkpoints
/// and WAL are the server's alone, as with a bare connection.
pub fn watch(db: &Database) -> Result<Store, String> {
    Store::connect(db, Synchronous::Normal, Clock::system()).map_err(|e| format!("{db}: {e}"))
}

/// The single integer `sql` returns (a count), or -1 if it fails.
pub fn count(store: &Store, sql: &str) -> i64 {
    store
        .read(|c| c.query_one(sql, args![], |r| r.get(0)))
        .unwrap_or(-1)
}

/// Makes a database no process has open ready to be served as it would
/// be after a quiet while, with the query planner's statistics, which the
/// inbox reads' plans depend on, gathered.
///
/// On SQLite: copies the WAL back into the file and empties it, then
/// ANALYZE. With rusqlite, because `Store` has no way to do it: a
/// checkpoint cannot run inside the transaction `Store::write` opens
/// (SQLite refuses it there), `Store::read` is for reading, and the
/// checkpoints are its checkpointer thread's job, which keeps running until
/// the `Store` is gone and would contend with a truncating one.
///
/// On PostgreSQL: VACUUM (ANALYZE), what autovacuum would have done after
/// the load (visibility map set, so counts can read the index alone), then
/// a CHECKPOINT, so the loaded pages are not written out during the
/// measurement. Neither may run in a transaction, which is all `Store`
/// runs.
pub fn settle(db: &Database) -> Result<(), String> {
    match db {
        Database::File(path) => {
            let conn = rusqlite::Connection::open(path).map_err(|e| e.to_string())?;
            conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); ANALYZE;")
                .map_err(|e| e.to_string())
        }
        Database::Postgres(url) => {
            // One statement at a time: several in one message would be one
            // implicit transaction.
            let mut client = connect(url)?;
            ["VACUUM (ANALYZE)", "CHECKPOINT"]
                .iter()
                .try_for_each(|sql| {
                    client
                        .batch_execute(sql)
                        .map_err(|e| format!("{db}: {sql}: {}", pg_error(e)))
                })
        }
    }
}

fn connect(url: &str) -> Result<postgres::Client, String> {
    postgres::Client::connect(url, NoTls).map_err(|e| {
        format!(
            "cannot connect to {}: {}",
            Database::Postgres(url.into()),
            pg_error(e)
        )
    })
}

/// The server's own message when it sent one ("db error" says nothing).
fn pg_error(e: postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.to_string(),
        None => e.to_string(),
    }
}

/// A database the bench created on a PostgreSQL server, dropped with this
/// value (WITH (FORCE): a killed server's sessions may linger a moment).
pub struct PgDatabase {
    server: String,
    name: String,
}

/// Creates the empty database `name` on the server `server` reaches.
pub fn create_database(server: &str, name: &str) -> Result<PgDatabase, String> {
    connect(server)?
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .map_err(|e| format!("CREATE DATABASE {name}: {}", pg_error(e)))?;
    Ok(PgDatabase {
        server: server.to_string(),
        name: name.to_string(),
    })
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(e) = connect(&self.server).and_then(|mut c| {
            c.batch_execute(&drop)
                .map_err(|e| format!("{}: {}", self.name, pg_error(e)))
        }) {
            eprintln!("herald-bench: warning: {drop}: {e}");
        }
    }
}

/// What the PostgreSQL server at `url` runs with, for the report: its
/// version and the settings the write figures depend on.
pub fn server_settings(url: &str) -> Result<Vec<(String, String)>, String> {
    let names = [
        "server_version",
        "synchronous_commit",
        "fsync",
        "shared_buffers",
        "autovacuum",
    ];
    let mut client = connect(url)?;
    names
        .iter()
        .map(|name| {
            let row = client
                .query_one("SELECT current_setting($1)", &[name])
                .map_err(pg_error)?;
            Ok((name.to_string(), row.get::<_, String>(0)))
        })
        .collect()
}

/// The title, body and payload of every seeded inbox row (herald's
/// rendering of `org.member.role_changed`). None holds a tab, newline or
/// backslash, so they go into COPY's text format as they are.
pub const TITLE: &str = "Your role in Acme is now admin";
pub const BODY: &str = "Alice changed your role in Acme from member to admin.";
pub const PAYLOAD: &str =
    r#"{"newRole":"admin","before":"member","orgName":"Acme","actorName":"Alice"}"#;

/// Loads `rows` inbox rows over `users` users into the PostgreSQL database
/// at `url` with COPY, 50,000 a statement, as herald's inbox insert would
/// have written them (row `i` for user `u{i % users}` and event
/// `i / users + 1`; `created_at` shared by each thousand, as in the
/// transactions of 1,000 the SQLite seed commits). Rows per second.
///
/// Not through herald's insert: on PostgreSQL each row is a round trip to
/// the server, and COPY streams them. On the 2-core machine of the
/// README's figures, with the server on it, herald's insert seeded 17,600
/// rows/s where COPY did 52,000 at the same time (and 67,000-69,000 when
/// the machine was quiet: 1,000,000 rows in 15 s).
pub fn copy_inbox_rows(url: &str, rows: usize, users: usize, label: &str) -> Result<f64, String> {
    const PER_COPY: usize = 50_000;
    let mut client = connect(url)?;
    let started = Instant::now();
    let mut done = 0;
    let mut line = Vec::with_capacity(256);
    while done < rows {
        let end = (done + PER_COPY).min(rows);
        let mut writer = client
            .copy_in(
                "COPY notifications
                     (event_seq, user_id, type, title, body, actions, payload, created_at)
                 FROM STDIN",
            )
            .map_err(pg_error)?;
        let mut now = herald::time::system_now_ms();
        for i in done..end {
            if i % 1000 == 0 {
                now = herald::time::system_now_ms();
            }
            line.clear();
            let (seq, user) = (i / users + 1, i % users);
            let _ = writeln!(
                line,
                "{seq}\tu{user}\tbench\t{TITLE}\t{BODY}\t[]\t{PAYLOAD}\t{now}"
            );
            writer.write_all(&line).map_err(|e| e.to_string())?;
        }
        writer.finish().map_err(pg_error)?;
        done = end;
        progress(label, done, rows, started);
    }
    eprintln!();
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}

/// Bytes herald's tables and indexes use, all together and the largest
/// dozen by name: SQLite's pages in use and its dbstat; on PostgreSQL each
/// table's size with its TOAST, free space and visibility maps
/// (`pg_table_size`), and each index's. Dead row versions count until a
/// vacuum makes their space reusable.
pub fn storage(store: &Store) -> Result<(i64, Vec<(String, i64)>), String> {
    let sqlite = store.engine() == Engine::Sqlite;
    let mut parts: Vec<(String, i64)> = store
        .read(|c| {
            let sql = if sqlite {
                "SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC"
            } else {
                "SELECT c.relname::text,
                        CASE c.relkind WHEN 'i' THEN pg_relation_size(c.oid)
                                       ELSE pg_table_size(c.oid) END
                 FROM pg_class c
                 WHERE c.relnamespace = current_schema()::regnamespace
                   AND c.relkind IN ('r', 'i')
                 ORDER BY 2 DESC"
            };
            c.query_all(sql, args![], |r| Ok((r.get(0)?, r.get(1)?)))
        })
        .map_err(|e| e.to_string())?;
    let used = if sqlite {
        count(
            store,
            "SELECT (page_count - freelist_count) * page_size
             FROM pragma_page_count, pragma_freelist_count, pragma_page_size",
        )
    } else {
        parts.iter().map(|(_, bytes)| bytes).sum()
    };
    parts.truncate(12);
    Ok((used, parts))
}

/// The statement of herald's inbox insert (`notify::inbox::insert`).
const INSERT: &str = "INSERT OR IGNORE INTO notifications
        (event_seq, user_id, type, title, body, actions, payload, created_at)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

/// The raw ceiling: `rows` inbox-shaped rows over `users` users, 1,000 a
/// transaction, on a bare connection (WAL, synchronous NORMAL, SQLite's own
/// checkpoints) with the statement herald's inbox insert runs. Not through
/// `Store`, so the ceiling stays what it has always measured: SQLite
/// itself, without herald's storage layer or its checkpointer thread.
pub fn raw_inbox_rows(db: &Path, rows: usize, users: usize) -> Result<f64, String> {
    let err = |e: rusqlite::Error| e.to_string();
    let mut conn = rusqlite::Connection::open(db).map_err(err)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
    )
    .map_err(err)?;
    let started = Instant::now();
    let mut done = 0;
    while done < rows {
        let tx = conn.transaction().map_err(err)?;
        for i in done..(done + 1000).min(rows) {
            // Row by row as herald's inbox insert does it: the cached
            // statement looked up, the actions encoded, the key read back.
            let seq = (i / users + 1) as i64;
            let user = format!("u{}", i % users);
            let actions = serde_json::to_string(&[(); 0]).map_err(|e| e.to_string())?;
            let now = herald::time::system_now_ms();
            let row = rusqlite::params![seq, user, "bench", TITLE, BODY, actions, PAYLOAD, now];
            if tx
                .prepare_cached(INSERT)
                .map_err(err)?
                .execute(row)
                .map_err(err)?
                == 1
            {
                std::hint::black_box(tx.last_insert_rowid());
            }
        }
        tx.commit().map_err(err)?;
        done = (done + 1000).min(rows);
        if done % 50_000 == 0 || done == rows {
            progress("raw", done, rows, started);
        }
    }
    eprintln!();
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}
