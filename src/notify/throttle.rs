//! Throttles (SPEC 9): at most `limit` notifications of a type per
//! (recipient, rendered key) in any sliding window of `windowSecs`. Each
//! notification let through leaves a `throttle_hits` row, written in the
//! dispatcher's transaction, so the count commits exactly when the
//! notification does; the scheduler prunes rows older than every window.

use crate::args;
use crate::store::{Conn, StoreResult, Tx};

use super::registry::{Registry, ThrottleDef};

/// Whose budget a notification uses: its type, recipient key and rendered
/// throttle key ("" for a throttle without one).
pub struct Budget<'a> {
    pub kind: &'a str,
    pub recipient: &'a str,
    pub key: &'a str,
}

fn window_ms(def: &ThrottleDef) -> i64 {
    i64::try_from(def.window_secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// Lets the notification of event `seq` through if fewer than `limit` went
/// out in the window ending `now`, recording it; false, writing nothing,
/// when the budget is spent. Within one transaction, earlier admissions
/// count: on SQLite the one writer orders them, on PostgreSQL two
/// instances admitting against the same budget conflict and one runs again.
pub fn admit(
    tx: &Tx<'_>,
    def: &ThrottleDef,
    budget: &Budget<'_>,
    seq: i64,
    now: i64,
) -> StoreResult<bool> {
    let used: i64 = tx.query_one(
        "SELECT COUNT(*) FROM throttle_hits
         WHERE type = ?1 AND recipient = ?2 AND throttle_key = ?3 AND at > ?4",
        args![
            budget.kind,
            budget.recipient,
            budget.key,
            now.saturating_sub(window_ms(def))
        ],
        |r| r.get(0),
    )?;
    if used >= i64::from(def.limit) {
        return Ok(false);
    }
    tx.execute(
        "INSERT INTO throttle_hits (type, recipient, throttle_key, at, event_seq)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        args![budget.kind, budget.recipient, budget.key, now, seq],
    )?;
    Ok(true)
}

/// The instant before which no hit counts in any type's window any more;
/// None when no type has a throttle.
pub fn horizon(registry: &Registry, now: i64) -> Option<i64> {
    registry
        .types()
        .filter_map(|(_, def)| def.throttle.as_ref())
        .map(window_ms)
        .max()
        .map(|longest| now.saturating_sub(longest))
}

/// The `at` up to which deleting hits older than `before` removes about
/// `chunk` of them (ties may add a few); None when fewer are left, all of
/// which may go. Read without the write lock: the scan is the costly part.
pub fn chunk_end(conn: &Conn<'_>, before: i64, chunk: usize) -> StoreResult<Option<i64>> {
    conn.query_opt(
        "SELECT at FROM throttle_hits WHERE at < ?1 ORDER BY at LIMIT 1 OFFSET ?2",
        args![before, chunk],
        |r| r.get(0),
    )
}

/// Deletes the hits older than `before` and at most `through`.
pub fn delete(tx: &Tx<'_>, before: i64, through: i64) -> StoreResult<usize> {
    tx.execute(
        "DELETE FROM throttle_hits WHERE at < ?1 AND at <= ?2",
        args![before, through],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Store, Synchronous};

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db"), Synchronous::Normal).unwrap();
        (dir, store)
    }

    #[test]
    fn the_window_slides_and_each_key_has_its_own_budget() {
        let (_dir, store) = store();
        let def = ThrottleDef {
            limit: 2,
            window_secs: 10,
            key: None,
        };
        let admit_at = |key: &str, at: i64| {
            let budget = Budget {
                kind: "t",
                recipient: "u",
                key,
            };
            store.write(|tx| admit(tx, &def, &budget, 1, at)).unwrap()
        };
        assert!(admit_at("a", 100_000));
        assert!(admit_at("a", 104_000));
        assert!(!admit_at("a", 109_999), "two in the last 10 s");
        assert!(admit_at("b", 109_999), "another key, another budget");
        // The first hit leaves the window exactly 10 s after it.
        assert!(admit_at("a", 110_000));
        assert!(!admit_at("a", 110_001), "the hits of 104 s and 110 s count");
        assert!(admit_at("a", 114_000));
        let hits: i64 = store
            .read(|c| c.query_one("SELECT COUNT(*) FROM throttle_hits", args![], |r| r.get(0)))
            .unwrap();
        assert_eq!(hits, 5, "a throttled notification leaves no hit");
    }

    #[test]
    fn pruning_goes_in_chunks_and_keeps_hits_inside_the_horizon() {
        let (_dir, store) = store();
        store
            .write(|tx| {
                for at in [1, 2, 2, 3, 4, 50] {
                    tx.execute(
                        "INSERT INTO throttle_hits (type, recipient, throttle_key, at, event_seq)
                         VALUES ('t', 'u', '', ?1, 1)",
                        args![at],
                    )?;
                }
                Ok::<_, crate::store::StoreError>(())
            })
            .unwrap();
        let end = store.read(|c| chunk_end(c, 10, 1)).unwrap();
        assert_eq!(end, Some(2), "the second oldest, ties included");
        assert_eq!(store.write(|tx| delete(tx, 10, 2)).unwrap(), 3);
        assert_eq!(store.read(|c| chunk_end(c, 10, 5)).unwrap(), None);
        assert_eq!(store.write(|tx| delete(tx, 10, i64::MAX)).unwrap(), 2);
        let left: i64 = store
            .read(|c| c.query_one("SELECT COUNT(*) FROM throttle_hits", args![], |r| r.get(0)))
            .unwrap();
        assert_eq!(left, 1);
    }
}
