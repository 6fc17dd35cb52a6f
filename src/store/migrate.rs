//! Schema migrations: an ordered list of SQL steps embedded in the binary,
//! each applied in its own transaction together with its version bump, so a
//! database is always at exactly one known version. A database written by a
//! newer herald is refused rather than guessed at.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use super::{StoreError, StoreResult};

/// Step `i` takes the schema from version `i` to `i + 1`.
const STEPS: &[&str] = &[include_str!("../../schema.sql")];

pub const SCHEMA_VERSION: i64 = STEPS.len() as i64;

pub fn apply(conn: &mut Connection) -> StoreResult<()> {
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
        tx.execute("DELETE FROM schema_version", [])?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES (?1)",
            [current + 1],
        )?;
        tx.commit()?;
        log::info!("database migrated to schema version {}", current + 1);
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
        apply(&mut conn).unwrap();
        apply(&mut conn).unwrap();
        let version: i64 = conn
            .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
            .unwrap();
        let rows: i64 = conn
            .query_row("SELECT COUNT(*) FROM schema_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!((version, rows), (SCHEMA_VERSION, 1));
    }

    #[test]
    fn refuses_a_newer_database() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("m.db")).unwrap();
        apply(&mut conn).unwrap();
        conn.execute("UPDATE schema_version SET version = 99", [])
            .unwrap();
        assert!(matches!(
            apply(&mut conn),
            Err(StoreError::TooNew { found: 99, .. })
        ));
    }
}
