//! This process among the herald instances that share one database: its
//! row in `instances`, its heartbeat while it serves, and who else still
//! lives. Deliveries are held by one instance (`deliveries.claimed_by`);
//! those of an instance silent for longer than the lease are taken over by
//! the living (`deliveries::take_over`). On SQLite one server owns the file,
//! so only this process counts as alive.

use super::delivery::deliveries;
use crate::args;
use crate::store::{Conn, Store, StoreResult, Tx};

/// Instances silent this long are forgotten (their claims were taken over
/// long before).
const FORGET_AFTER_MS: i64 = 24 * 3600 * 1000;

/// Registers this process; its id, which its claims carry.
pub fn register(store: &Store) -> StoreResult<i64> {
    let host = std::env::var("HOSTNAME").unwrap_or_default();
    store.write(|tx| {
        let now = tx.now_ms();
        tx.insert_one(
            "INSERT INTO instances (started_at, heartbeat_at, host, pid) VALUES (?1, ?1, ?2, ?3)",
            args![now, host, std::process::id()],
        )
    })
}

/// One transaction of a shared database's sweep: tells the others this
/// instance still lives (a row forgotten meanwhile, after a very long
/// pause, is written again under the same id), forgets instances silent
/// for a day, and takes over up to `limit` deliveries of instances silent
/// for longer than `lease_ms`; how many it took.
pub fn beat(store: &Store, id: i64, lease_ms: i64, limit: usize) -> StoreResult<usize> {
    store.write(|tx| {
        let now = tx.now_ms();
        let beat = tx.execute(
            "UPDATE instances SET heartbeat_at = ?2 WHERE id = ?1",
            args![id, now],
        )?;
        if beat == 0 {
            tx.execute(
                "INSERT INTO instances (id, started_at, heartbeat_at, pid) VALUES (?1, ?2, ?2, ?3)",
                args![id, now, std::process::id()],
            )?;
        }
        forget_silent(tx, now)?;
        deliveries::take_over(tx, id, alive_since(tx, now, lease_ms), limit)
    })
}

/// A stopping instance leaves: whatever it still holds is taken over at
/// once rather than after the lease.
pub fn retire(store: &Store, id: i64) -> StoreResult<()> {
    store.write(|tx| tx.execute("DELETE FROM instances WHERE id = ?1", args![id]))?;
    Ok(())
}

/// Forgets instances silent for a day.
fn forget_silent(tx: &Tx<'_>, now: i64) -> StoreResult<usize> {
    tx.execute(
        "DELETE FROM instances WHERE heartbeat_at < ?1",
        args![now - FORGET_AFTER_MS],
    )
}

/// Takes over, for this process starting, the deliveries of instances
/// taken for dead (see `alive_since`), `limit` at most; how many. Forgets
/// instances silent for a day too: on SQLite, where no heartbeat runs,
/// this is where their rows go.
pub fn take_over(store: &Store, id: i64, lease_ms: i64, limit: usize) -> StoreResult<usize> {
    store.write(|tx| {
        let now = tx.now_ms();
        forget_silent(tx, now)?;
        deliveries::take_over(tx, id, alive_since(tx, now, lease_ms), limit)
    })
}

/// The oldest heartbeat of an instance still taken for alive at `now`:
/// within the lease on a shared database; on SQLite none but this process
/// is (no heartbeat is that new).
fn alive_since(conn: &Conn<'_>, now: i64, lease_ms: i64) -> i64 {
    if conn.engine().is_shared() {
        now - lease_ms
    } else {
        i64::MAX
    }
}
