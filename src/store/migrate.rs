//! Schema migrations: an ordered list of SQL steps embedded in the binary,
//! each applied in its own transaction together with its version bump, so a
//! database is always at exactly one known version. A database written by a
//! newer herald is refused rather than guessed at. PostgreSQL databases
//! start at version 4 (the engine came then) and take the later steps.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use super::error::{StoreError, StoreResult};

/// Step `i` takes the schema from version `i` to `i + 1`.
const STEPS: &[&str] = &[
    include_str!("../../schema.sql"),
    include_str!("schema_v2.sql"),
    include_str!("schema_v3.sql"),
    include_str!("schema_v4.sql"),
    include_str!("schema_v5.sql"),
    include_str!("schema_v6.sql"),
    include_str!("schema_v7.sql"),
];

pub const SCHEMA_VERSION: i64 = STEPS.len() as i64;

/// The version PostgreSQL databases are created at, and its schema.
const POSTGRES_BASE: (i64, &str) = (4, include_str!("postgres_v4.sql"));
/// PostgreSQL's steps after its base: step `i` takes the schema from
/// version `POSTGRES_BASE.0 + i` to the next.
const POSTGRES_STEPS: &[&str] = &[
    include_str!("postgres_v5.sql"),
    include_str!("postgres_v6.sql"),
    include_str!("postgres_v7.sql"),
];
const _: () = assert!(POSTGRES_BASE.0 + POSTGRES_STEPS.len() as i64 == SCHEMA_VERSION);

/// An arbitrary key for PostgreSQL's advisory lock: instances starting
/// together migrate one after the other.
const MIGRATION_LOCK: i64 = 0x6865_7261_6c64; // "herald"

/// Steps that rebuild a table (SQLite's way to change a constraint) run with
/// foreign keys off, as SQLite's own procedure asks; every key is checked
/// before each step commits, and the setting is restored after.
pub fn apply_sqlite(conn: &mut Connection) -> StoreResult<()> {
    conn.execute_batch("PRAGMA foreign_keys = OFF")?;
    let applied = apply_sqlite_steps(conn);
    conn.execute_batch("PRAGMA foreign_keys = ON")?;
    applied
}

fn apply_sqlite_steps(conn: &mut Connection) -> StoreResult<()> {
    conn.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")?;
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current: i64 = tx
            .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
            .optional()?
            .unwrap_or(0);
        if current > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                found: current,
                supported: SCHEMA_VERSION,
            });
        }
        let Some(step) = STEPS.get(current as usize) else {
            return Ok(());
        };
        tx.execute_batch(step)?;
        let broken: Option<String> = tx
            .query_row("PRAGMA foreign_key_check", [], |r| r.get(0))
            .optional()?;
        if let Some(table) = broken {
            return Err(StoreError::Database(format!(
                "schema step {} left a broken foreign key in {table}",
                current + 1
            )));
        }
        tx.execute("DELETE FROM schema_version", [])?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES (?1)",
            [current + 1],
        )?;
        tx.commit()?;
        log::info!("database migrated to schema version {}", current + 1);
    }
}

pub fn apply_postgres(client: &mut postgres::Client) -> StoreResult<()> {
    loop {
        let mut tx = client.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
        // "relation already exists, skipping" is no news at every start.
        tx.batch_execute("SET LOCAL client_min_messages = warning")?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")?;
        let current: i64 = tx
            .query_opt("SELECT version FROM schema_version", &[])?
            .map_or(Ok(0), |r| r.try_get(0))?;
        if current > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                found: current,
                supported: SCHEMA_VERSION,
            });
        }
        let (version, step) = match current {
            0 => POSTGRES_BASE,
            v if v == SCHEMA_VERSION => return Ok(()),
            v if v < POSTGRES_BASE.0 => {
                return Err(StoreError::Database(format!(
                    "schema version {v} on PostgreSQL, which starts at {}",
                    POSTGRES_BASE.0
                )))
            }
            v => (v + 1, POSTGRES_STEPS[(v - POSTGRES_BASE.0) as usize]),
        };
        tx.batch_execute(step)?;
        tx.execute("DELETE FROM schema_version", &[])?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&version],
        )?;
        tx.commit()?;
        log::info!("database migrated to schema version {version}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applies_once_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        let mut conn = Connection::open(&path).unwrap();
        apply_sqlite(&mut conn).unwrap();
        apply_sqlite(&mut conn).unwrap();
        let version: i64 = conn
            .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
            .unwrap();
        let rows: i64 = conn
            .query_row("SELECT COUNT(*) FROM schema_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!((version, rows), (SCHEMA_VERSION, 1));
    }

    /// A database from the previous version upgrades in place: rows it
    /// holds keep their values and read NULL in the new columns.
    #[test]
    fn version_3_keeps_the_results_of_events_dispatched_before_it() {
        let mut conn = Connection::open_in_memory().unwrap();
        let previous = 2;
        for step in &STEPS[..previous as usize] {
            conn.execute_batch(step).unwrap();
        }
        conn.execute_batch(&format!(
            "CREATE TABLE schema_version (version INTEGER NOT NULL);
             INSERT INTO schema_version (version) VALUES ({previous});
             INSERT INTO outbox (id, type, body, status, created_at, sent, deduped, suppressed)
                 VALUES ('evt_old', 't', '{{}}', 'dispatched', 0, 2, 0, 1);"
        ))
        .unwrap();
        apply_sqlite(&mut conn).unwrap();
        let version: i64 = conn
            .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let row: (i64, i64, Option<i64>, Option<i64>) = conn
            .query_row(
                "SELECT sent, suppressed, inbox_sent, email_suppressed FROM outbox",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap();
        assert_eq!(row, (2, 1, None, None));
    }

    #[test]
    fn refuses_a_newer_database() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("m.db")).unwrap();
        apply_sqlite(&mut conn).unwrap();
        conn.execute("UPDATE schema_version SET version = 99", [])
            .unwrap();
        assert!(matches!(
            apply_sqlite(&mut conn),
            Err(StoreError::TooNew { found: 99, .. })
        ));
    }

    /// SQLite evaluates `CHECK (x IN ('a', 'b', 'c'))` by building a
    /// temporary B-tree on every write; the schema spells such checks out
    /// with OR so that no insert pays for one.
    #[test]
    fn no_insert_builds_a_temporary_btree() {
        let mut conn = Connection::open_in_memory().unwrap();
        apply_sqlite(&mut conn).unwrap();
        let tables: Vec<String> = conn
            .prepare(
                "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(tables.len() > 10, "{tables:?}");
        for table in tables {
            let columns: i64 = conn
                .query_row(
                    &format!("SELECT COUNT(*) FROM pragma_table_info('{table}')"),
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            let sql = format!(
                "INSERT INTO {table} VALUES ({})",
                vec!["?"; columns as usize].join(", ")
            );
            let mut explain = conn.prepare(&format!("EXPLAIN {sql}")).unwrap();
            let ops: Vec<String> = explain
                .query_map(
                    rusqlite::params_from_iter(vec![rusqlite::types::Null; columns as usize]),
                    |r| r.get(1),
                )
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert!(
                !ops.iter().any(|op| op == "OpenEphemeral"),
                "{sql} builds a temporary B-tree"
            );
        }
    }

    #[test]
    fn checks_still_refuse_unknown_values() {
        let mut conn = Connection::open_in_memory().unwrap();
        apply_sqlite(&mut conn).unwrap();
        let insert = |status: &str| {
            conn.execute(
                "INSERT INTO outbox (id, type, body, status, created_at) VALUES (?1, 't', '{}', ?2, 0)",
                [format!("evt_{status}"), status.to_string()],
            )
        };
        assert!(insert("dispatched").is_ok());
        assert!(insert("dispatchd").is_err());
    }
}
