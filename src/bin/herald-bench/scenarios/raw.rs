//! The ceiling: inbox-shaped rows straight into a database with herald's
//! schema and indexes, 1,000 per transaction, on a bare SQLite connection
//! (`db::raw_inbox_rows`). Every other throughput compares with it.

use std::path::Path;

use herald::store::Database;

use crate::db::raw_inbox_rows;
use crate::seed::prepared_db;

/// Rows per second.
pub fn run(dir: &Path, events: usize, users: usize) -> Result<f64, String> {
    eprintln!("raw: {events} inbox-shaped rows straight into SQLite (same schema and indexes)");
    let db = dir.join("raw.db");
    drop(prepared_db(&Database::File(db.clone()), users, events)?);
    let per_s = raw_inbox_rows(&db, events, users)?;
    eprintln!("  raw: {per_s:.0} rows/s");
    Ok(per_s)
}
