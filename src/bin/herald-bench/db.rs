//! herald-bench's own looks into herald's database: a `Store` to read the
//! one a herald child process is serving; and two things `Store` must not
//! do, which make this the only module that names `rusqlite`: `settle`, and
//! the raw ceiling's insert loop on a bare connection.

use std::path::Path;
use std::time::Instant;

use herald::args;
use herald::store::{Store, Synchronous};

/// herald's own `Store` on the database a herald child process serves, to
/// read it while that process writes. Opening it writes nothing there: the
/// migrations find the schema current (the server migrated it before
/// listening), and its checkpointer only wakes after this process's own
/// writes, of which there are none, so herald's checkpoints and WAL are the
/// server's alone, as with a bare connection.
pub fn watch(db: &Path) -> Result<Store, String> {
    Store::open(db, Synchronous::Normal).map_err(|e| format!("{}: {e}", db.display()))
}

/// The single integer `sql` returns (a count), or -1 if it fails.
pub fn count(store: &Store, sql: &str) -> i64 {
    store
        .read(|c| c.query_one(sql, args![], |r| r.get(0)))
        .unwrap_or(-1)
}

/// Makes a database no process has open ready to be served as it would
/// be after a quiet while: copies the WAL back into the file and empties it,
/// then gathers the query planner's statistics (ANALYZE), which the inbox
/// reads' plans depend on.
///
/// With rusqlite, because `Store` has no way to do it: a checkpoint cannot
/// run inside the transaction `Store::write` opens (SQLite refuses it
/// there), `Store::read` is for reading, and the checkpoints are its
/// checkpointer thread's job, which keeps running until the `Store` is
/// gone and would contend with a truncating one.
pub fn settle(db: &Path) -> Result<(), String> {
    let conn = rusqlite::Connection::open(db).map_err(|e| e.to_string())?;
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); ANALYZE;")
        .map_err(|e| e.to_string())
}

/// The statement of herald's inbox insert (`notify::inbox::insert`).
const INSERT: &str = "INSERT OR IGNORE INTO notifications
        (event_seq, user_id, type, title, body, actions, payload, created_at)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";
const TITLE: &str = "Your role in Acme is now admin";
const BODY: &str = "Alice changed your role in Acme from member to admin.";

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
    let payload = r#"{"newRole":"admin","before":"member","orgName":"Acme","actorName":"Alice"}"#;
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
            let row = rusqlite::params![seq, user, "bench", TITLE, BODY, actions, payload, now];
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
            crate::report::progress("raw", done, rows, started);
        }
    }
    eprintln!();
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}
