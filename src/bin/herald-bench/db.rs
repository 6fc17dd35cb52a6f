//! herald-bench's own looks into herald's database: a `Store` to read the
//! one a herald child process is serving, and `settle`, the one step that
//! `Store` cannot do, which makes this the only module that names `rusqlite`.

use std::path::Path;

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
