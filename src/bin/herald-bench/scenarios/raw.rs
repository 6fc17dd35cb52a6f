//! The ceiling: inbox-shaped rows straight into a database with herald's
//! schema and indexes, 1,000 per transaction, through herald's own inbox
//! insert. Every other throughput compares with it.

use std::path::Path;

use crate::seed::{insert_inbox_rows, prepared_db};

/// Rows per second.
pub fn run(dir: &Path, events: usize, users: usize) -> Result<f64, String> {
    eprintln!("raw: {events} inbox-shaped rows straight into SQLite (same schema and indexes)");
    let store = prepared_db(&dir.join("raw.db"), users, events)?;
    let per_s = insert_inbox_rows(&store, events, users, "raw")?;
    eprintln!("  raw: {per_s:.0} rows/s");
    Ok(per_s)
}
