//! `herald migrate-to-postgres`: a deployment's SQLite file copied into an
//! empty PostgreSQL database, every row of every table with its keys, so
//! herald started on PostgreSQL carries on where it stopped on SQLite.
//! Pending work is rows like any other (events not yet dispatched, emails
//! pending or waiting for a retry, open digests, listener runs, mail
//! batches): herald re-drives them at start, as after a restart.
//!
//! The copy reads one snapshot of the file and writes one PostgreSQL
//! transaction: a herald started on the target sees nothing or everything.
//! Tables go in an order where each follows those it refers to, rows in
//! multi-row INSERTs. Identity sequences then continue after the copied
//! keys, and after keys SQLite handed out and forgot: the inbox's
//! AUTOINCREMENT counter, since the live stream resumes by inbox ids.

use std::path::Path;
use std::time::{Duration, Instant};

use super::files::{self, FileError};
use super::value::{Arg, Column, Value};
use super::{Conn, Database, Store, StoreError, StoreResult, Synchronous, Tx};
use crate::args;
use crate::time::Clock;

/// herald's tables, each after every table it refers to. `schema_version`
/// is not copied: the target is migrated to the same version first.
pub const TABLES: &[&str] = &[
    "users",
    "api_tokens",
    "sessions",
    "preferences",
    "credit_ledger",
    "organizations",
    "members",
    "invitations",
    "audit_log",
    "processed_events",
    "plan_entitlements",
    "outbox",
    "notifications",
    "email_bodies",
    "email_bodies_localized",
    "mail_batches",
    "deliveries",
    "digests",
    "digest_events",
    "listener_runs",
    "dedup_marks",
    "throttle_hits",
    "schedules",
    "topics",
    "webhooks",
    "webhook_messages",
    "topic_subscribers",
    "topic_fanouts",
];

/// Tables left behind: the instances are the processes that ran on the
/// file, not data. The deliveries they held are copied as held by nobody,
/// and whichever herald starts on PostgreSQL first takes them.
const NOT_COPIED: &[&str] = &["instances"];

/// PostgreSQL binds at most 65,535 parameters to one statement.
const MAX_PARAMS: usize = 65_535;
/// Rows one INSERT carries at most, and the text they may add up to:
/// large enough that a million rows take a thousand round trips, small
/// enough that a statement of email bodies stays a few megabytes.
const ROWS_PER_INSERT: usize = 1_000;
const BYTES_PER_INSERT: usize = 4 << 20;

/// One table as copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableCopy {
    pub table: &'static str,
    /// Rows in the SQLite snapshot, and in PostgreSQL after the commit.
    pub source_rows: u64,
    pub target_rows: u64,
}

/// What `migrate_to_postgres` did.
#[derive(Debug, Clone)]
pub struct Migrated {
    /// The target, without its password.
    pub target: String,
    pub tables: Vec<TableCopy>,
    /// Each identity column's table, and the key its next row gets.
    pub next_keys: Vec<(String, i64)>,
    pub took: Duration,
}

impl Migrated {
    pub fn rows(&self) -> u64 {
        self.tables.iter().map(|t| t.target_rows).sum()
    }
}

/// Copies the herald database in the SQLite file `source` into the empty
/// PostgreSQL database at `url`, calling `progress(table, rows so far)`
/// as rows go in. Refuses, copying no row, a missing file (none is
/// created), a file another process has open (a running `serve` would go
/// on writing after the snapshot), a URL that is not PostgreSQL's, and a
/// target that holds any herald row. The target is created at the current
/// schema version (its empty tables stay after a later refusal), then the
/// file migrated to it.
pub fn migrate_to_postgres(
    source: &Path,
    url: &str,
    progress: &mut dyn FnMut(&str, u64),
) -> Result<Migrated, FileError> {
    let started = Instant::now();
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(FileError::Refused(format!(
            "{:?} is not a PostgreSQL URL (postgres://user@host/database); nothing was copied",
            Database::Postgres(url.to_string()).to_string()
        )));
    }
    files::check_unused(source)?;
    let target = Database::Postgres(url.to_string());
    let target = Store::connect(&target, Synchronous::Normal, Clock::system())?;
    // Checked before the file is opened, which may migrate it, and again
    // in the transaction that copies.
    target.read(|c| refuse_unless_empty(c, &target.location()))?;
    let source = Database::File(source.to_path_buf());
    let source = Store::connect(&source, Synchronous::Normal, Clock::system())?;

    let (copied, next_keys) = source.snapshot(|src| {
        let plan = plan(src, &target)?;
        target.write(|tx| {
            refuse_unless_empty(tx, &target.location())?;
            let mut copied = Vec::with_capacity(plan.len());
            for (table, columns) in &plan {
                let rows = copy_table(src, tx, table, columns, &mut *progress)?;
                copied.push((*table, rows));
            }
            tx.execute(
                "UPDATE deliveries SET claimed_by = NULL WHERE claimed_by IS NOT NULL",
                args![],
            )?;
            let next_keys = continue_sequences(src, tx)?;
            Ok::<_, FileError>((copied, next_keys))
        })
    })?;

    let counted = target.snapshot(|c| {
        copied
            .iter()
            .map(|&(table, source_rows)| {
                Ok(TableCopy {
                    table,
                    source_rows,
                    target_rows: count(c, table)?,
                })
            })
            .collect::<StoreResult<Vec<_>>>()
    })?;
    let differ: Vec<String> = counted
        .iter()
        .filter(|t| t.source_rows != t.target_rows)
        .map(|t| {
            format!(
                "{} ({} in SQLite, {})",
                t.table, t.source_rows, t.target_rows
            )
        })
        .collect();
    if !differ.is_empty() {
        return Err(FileError::Refused(format!(
            "copied, but PostgreSQL's row counts differ (is something else writing to {}?): {}",
            target.location(),
            differ.join(", ")
        )));
    }
    Ok(Migrated {
        target: target.location(),
        tables: counted,
        next_keys,
        took: started.elapsed(),
    })
}

/// Each table with the columns to copy, in `TABLES` order, once the two
/// schemas are found to have the same tables and columns.
fn plan(src: &Conn<'_>, target: &Store) -> Result<Vec<(&'static str, Vec<String>)>, FileError> {
    let mut expected: Vec<&str> = TABLES.to_vec();
    expected.sort_unstable();
    let source_tables = sqlite_tables(src)?;
    let target_tables = target.read(|c| {
        c.query_all(
            "SELECT table_name::text FROM information_schema.tables
             WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'
             AND table_name != 'schema_version' ORDER BY 1",
            args![],
            |r| r.get::<String>(0),
        )
    })?;
    for (side, tables) in [("SQLite", &source_tables), ("PostgreSQL", &target_tables)] {
        let tables: Vec<&str> = tables
            .iter()
            .map(String::as_str)
            .filter(|t| !NOT_COPIED.contains(t))
            .collect();
        if tables != expected {
            return Err(FileError::Refused(format!(
                "the {side} database has tables {tables:?}; this herald copies {expected:?}"
            )));
        }
    }
    let mut plan = Vec::with_capacity(TABLES.len());
    for &table in TABLES {
        let columns = src.query_all(
            "SELECT name FROM pragma_table_info(?1) ORDER BY cid",
            args![table],
            |r| r.get::<String>(0),
        )?;
        let mut theirs = target.read(|c| {
            c.query_all(
                "SELECT column_name::text FROM information_schema.columns
                 WHERE table_schema = current_schema() AND table_name = ?1",
                args![table],
                |r| r.get::<String>(0),
            )
        })?;
        let mut ours = columns.clone();
        ours.sort_unstable();
        theirs.sort_unstable();
        if ours != theirs {
            return Err(FileError::Refused(format!(
                "{table} has columns {ours:?} in SQLite and {theirs:?} in PostgreSQL"
            )));
        }
        plan.push((table, columns));
    }
    Ok(plan)
}

/// The SQLite file's tables, by name, but its own and `schema_version`.
fn sqlite_tables(src: &Conn<'_>) -> StoreResult<Vec<String>> {
    src.query_all(
        "SELECT name FROM sqlite_schema WHERE type = 'table'
         AND name NOT LIKE 'sqlite_%' AND name != 'schema_version' ORDER BY name",
        args![],
        |r| r.get::<String>(0),
    )
}

/// Refuses a target that holds any herald row.
fn refuse_unless_empty(c: &Conn<'_>, target: &str) -> Result<(), FileError> {
    let mut holding = Vec::new();
    for &table in TABLES {
        let sql = format!("SELECT EXISTS (SELECT 1 FROM {table})");
        if c.query_one(&sql, args![], |r| r.get::<bool>(0))? {
            holding.push(table);
        }
    }
    if holding.is_empty() {
        return Ok(());
    }
    Err(FileError::Refused(format!(
        "{target} already holds herald data (rows in {}); migrate-to-postgres copies into \
         an empty database only: nothing was copied",
        holding.join(", ")
    )))
}

fn count(c: &Conn<'_>, table: &str) -> StoreResult<u64> {
    c.query_one(&format!("SELECT COUNT(*) FROM {table}"), args![], |r| {
        r.get(0)
    })
}

/// Copies `table` from the snapshot into the transaction, its rows many to
/// an INSERT; how many rows it holds.
fn copy_table(
    src: &Conn<'_>,
    tx: &Tx<'_>,
    table: &str,
    columns: &[String],
    progress: &mut dyn FnMut(&str, u64),
) -> StoreResult<u64> {
    let quoted: Vec<String> = columns.iter().map(|c| format!("\"{c}\"")).collect();
    let list = quoted.join(", ");
    let per_insert = (MAX_PARAMS / columns.len()).min(ROWS_PER_INSERT);
    let mut batch = Batch {
        table,
        list: &list,
        width: columns.len(),
        full_rows: per_insert,
        full_sql: insert_sql(table, &list, columns.len(), per_insert),
        cells: Vec::with_capacity(per_insert * columns.len()),
        bytes: 0,
        inserted: 0,
    };
    let mut read = 0u64;
    let copied = src.for_each(&format!("SELECT {list} FROM {table}"), args![], |row| {
        for i in 0..columns.len() {
            let cell: Cell = row.get(i)?;
            batch.bytes += cell.len();
            batch.cells.push(cell);
        }
        read += 1;
        if batch.rows() == batch.full_rows || batch.bytes >= BYTES_PER_INSERT {
            batch.flush(tx)?;
            progress(table, read);
        }
        Ok(())
    });
    copied.and_then(|()| batch.flush(tx)).map_err(|e| match e {
        // A value PostgreSQL refuses (text SQLite kept in an integer
        // column, say): say where.
        StoreError::Database(m) => StoreError::Database(format!("copying {table}: {m}")),
        other => other,
    })?;
    progress(table, read);
    let counted = count(src, table)?;
    if batch.inserted != read || read != counted {
        return Err(StoreError::Database(format!(
            "{table}: {counted} rows in SQLite, {read} read, {} inserted",
            batch.inserted
        )));
    }
    Ok(read)
}

/// Rows waiting for their INSERT.
struct Batch<'a> {
    table: &'a str,
    list: &'a str,
    width: usize,
    /// Rows in a full batch, and its statement, prepared once and reused.
    full_rows: usize,
    full_sql: String,
    cells: Vec<Cell>,
    bytes: usize,
    inserted: u64,
}

impl Batch<'_> {
    fn rows(&self) -> usize {
        self.cells.len() / self.width
    }

    fn flush(&mut self, tx: &Tx<'_>) -> StoreResult<()> {
        let rows = self.rows();
        if rows == 0 {
            return Ok(());
        }
        let args: Vec<&dyn Arg> = self.cells.iter().map(|c| c as &dyn Arg).collect();
        let changed = if rows == self.full_rows {
            tx.execute(&self.full_sql, &args)?
        } else {
            tx.execute(&insert_sql(self.table, self.list, self.width, rows), &args)?
        };
        self.inserted += changed as u64;
        self.cells.clear();
        self.bytes = 0;
        Ok(())
    }
}

/// `INSERT INTO table (list) VALUES (?1, ?2), (?3, ?4), ...` for `rows`
/// rows of `width` columns.
fn insert_sql(table: &str, list: &str, width: usize, rows: usize) -> String {
    let mut sql = format!("INSERT INTO {table} ({list}) VALUES ");
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for column in 0..width {
            if column > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("?{}", row * width + column + 1));
        }
        sql.push(')');
    }
    sql
}

/// Sets each identity column's sequence so that the next row's key follows
/// every key SQLite used: the largest copied, or SQLite's AUTOINCREMENT
/// counter where it is higher (the newest inbox rows deleted); never
/// lowered. Each table with the key its next row gets.
fn continue_sequences(src: &Conn<'_>, tx: &Tx<'_>) -> StoreResult<Vec<(String, i64)>> {
    let identities = tx.query_all(
        "SELECT table_name::text, column_name::text FROM information_schema.columns
         WHERE table_schema = current_schema() AND is_identity = 'YES' ORDER BY 1",
        args![],
        |r| Ok((r.get::<String>(0)?, r.get::<String>(1)?)),
    )?;
    let mut next = Vec::with_capacity(identities.len());
    for (table, column) in identities {
        let largest: i64 = src.query_one(
            &format!("SELECT COALESCE(MAX({column}), 0) FROM {table}"),
            args![],
            |r| r.get(0),
        )?;
        let counter: i64 = src
            .query_opt(
                "SELECT seq FROM sqlite_sequence WHERE name = ?1",
                args![table],
                |r| r.get(0),
            )?
            .unwrap_or(0);
        let used = largest.max(counter);
        let last = if used > 0 {
            tx.query_one(
                "SELECT setval(s, GREATEST(?1, COALESCE(pg_sequence_last_value(s), 0)))
                 FROM (SELECT pg_get_serial_sequence(?2, ?3)::regclass AS s) AS q",
                args![used, table, column],
                |r| r.get::<i64>(0),
            )?
        } else {
            0
        };
        next.push((table, last + 1));
    }
    Ok(next)
}

/// One value of a copied row, owned until its INSERT runs.
enum Cell {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl Cell {
    fn len(&self) -> usize {
        match self {
            Cell::Text(s) => s.len(),
            Cell::Blob(b) => b.len(),
            _ => 8,
        }
    }
}

impl Column for Cell {
    fn from_value(v: Value<'_>) -> Option<Cell> {
        Some(match v {
            Value::Null => Cell::Null,
            Value::Int(i) => Cell::Int(i),
            Value::Real(x) => Cell::Real(x),
            Value::Text(s) => Cell::Text(s.to_string()),
            Value::Blob(b) => Cell::Blob(b.to_vec()),
        })
    }
}

impl Arg for Cell {
    fn value(&self) -> Value<'_> {
        match self {
            Cell::Null => Value::Null,
            Cell::Int(i) => Value::Int(*i),
            Cell::Real(x) => Value::Real(*x),
            Cell::Text(s) => Value::Text(s),
            Cell::Blob(b) => Value::Blob(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db"), Synchronous::Normal).unwrap();
        (dir, store)
    }

    /// A schema step that adds a table must add it here too (to `TABLES`
    /// or `NOT_COPIED`), or the copy refuses every database; and the order must let each row's
    /// references exist before it.
    #[test]
    fn the_tables_are_the_schemas_and_each_follows_those_it_refers_to() {
        let (_dir, store) = sqlite();
        let (tables, references) = store
            .read(|c| {
                let tables = sqlite_tables(c)?;
                let references = c.query_all(
                    "SELECT m.name, f.\"table\" FROM sqlite_schema m,
                     pragma_foreign_key_list(m.name) f WHERE m.type = 'table'",
                    args![],
                    |r| Ok((r.get::<String>(0)?, r.get::<String>(1)?)),
                )?;
                Ok::<_, StoreError>((tables, references))
            })
            .unwrap();
        let mut listed: Vec<&str> = TABLES.iter().chain(NOT_COPIED).copied().collect();
        listed.sort_unstable();
        assert_eq!(tables, listed);
        let position = |t: &str| TABLES.iter().position(|x| *x == t).unwrap();
        assert!(references.len() > 10, "{references:?}");
        for (table, refers_to) in references {
            assert!(
                position(&refers_to) < position(&table),
                "{table} refers to {refers_to}, which is copied after it"
            );
        }
    }

    #[test]
    fn inserts_number_their_placeholders_row_after_row() {
        assert_eq!(
            insert_sql("t", "\"a\", \"b\"", 2, 2),
            "INSERT INTO t (\"a\", \"b\") VALUES (?1, ?2), (?3, ?4)"
        );
    }

    #[test]
    fn nothing_is_read_or_created_without_a_file_and_a_postgres_url() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.db");
        let mut progress = |_: &str, _: u64| {};
        let err =
            migrate_to_postgres(&missing, "postgres://127.0.0.1:1/x", &mut progress).unwrap_err();
        assert!(matches!(err, FileError::Missing(_)), "{err}");
        assert!(!missing.exists());
        let (dir, store) = sqlite();
        let file = dir.path().join("t.db");
        let err = migrate_to_postgres(&file, "mysql://db/herald", &mut progress).unwrap_err();
        assert!(matches!(err, FileError::Refused(_)), "{err}");
        // Open by this store: as good as a running serve.
        let err = migrate_to_postgres(&file, "postgres://127.0.0.1:1/x", &mut progress);
        assert!(matches!(err, Err(FileError::InUse(_))), "{err:?}");
        drop(store);
    }
}
