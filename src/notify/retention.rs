//! Retention: what herald keeps of finished work, and for how long. Stored
//! email bodies go once every delivery of their event is final, the log of
//! deliveries and finished outbox rows after `log`, inbox rows (if asked)
//! after `inbox`. Pending work is never pruned: a row goes only when nothing
//! unfinished refers to it. Each step deletes a bounded chunk of each kind
//! in one short write transaction, so the writer is never held for long.

use std::time::Duration;

use crate::args;
use crate::store::{Conn, Tx};

use crate::metrics::METRICS;
use crate::store::{Store, StoreResult};

/// Rows of each kind deleted per step (one write transaction).
pub const CHUNK: usize = 500;
/// Steps per pass: a pass that finds more comes back soon, letting the
/// scheduler's other work and every other writer in between.
const STEPS_PER_PASS: usize = 20;
/// Free pages given back to the filesystem per write.
const RECLAIM_PAGES: u32 = 2_048;

/// How long herald keeps finished work; `None` keeps it for ever.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// Stored bodies of emails whose deliveries are all final (sent,
    /// failed, dead), from their event's creation.
    pub email_bodies: Option<Duration>,
    /// Final deliveries, finished outbox rows and what hangs off them
    /// (batches, listener runs, flushed digests).
    pub log: Option<Duration>,
    /// Inbox rows, read or not.
    pub inbox: Option<Duration>,
    /// `HERALD_TEST_PRUNE_DELAY_MS`, inert unless set: each step holds its
    /// transaction open this long after deleting, so a test can kill herald
    /// in the middle of one.
    pub test_step_delay: Option<Duration>,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            email_bodies: Some(Duration::from_secs(7 * 86_400)),
            log: Some(Duration::from_secs(30 * 86_400)),
            inbox: None,
            test_step_delay: None,
        }
    }
}

impl Retention {
    /// How often to prune: often enough that nothing outlives its period by
    /// more than half of it, and at most once a second.
    pub fn every(&self, longest: Duration) -> Option<Duration> {
        [self.email_bodies, self.log, self.inbox]
            .into_iter()
            .flatten()
            .min()
            .map(|shortest| (shortest / 2).clamp(Duration::from_secs(1), longest))
    }
}

/// Rows deleted by one step, by kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub email_bodies: usize,
    pub deliveries: usize,
    pub outbox: usize,
    pub inbox: usize,
    /// Batches, listener runs, digests and expired sessions.
    pub other: usize,
}

impl Pruned {
    pub fn total(&self) -> usize {
        self.email_bodies + self.deliveries + self.outbox + self.inbox + self.other
    }

    fn add(self, o: Pruned) -> Pruned {
        Pruned {
            email_bodies: self.email_bodies + o.email_bodies,
            deliveries: self.deliveries + o.deliveries,
            outbox: self.outbox + o.outbox,
            inbox: self.inbox + o.inbox,
            other: self.other + o.other,
        }
    }

    /// Whether any kind filled its chunk: more may be waiting.
    pub fn full(&self) -> bool {
        [self.email_bodies, self.deliveries, self.outbox, self.inbox]
            .into_iter()
            .any(|n| n >= CHUNK)
    }
}

/// One pass: up to `STEPS_PER_PASS` steps, each its own transaction, then
/// the freed pages back to the filesystem. True if more may be waiting.
pub fn pass(store: &Store, retention: &Retention, now: i64) -> bool {
    let mut all = Pruned::default();
    let mut more = false;
    for _ in 0..STEPS_PER_PASS {
        let started = std::time::Instant::now();
        let pruned = match store.write(|tx| step(tx, now, retention)) {
            Ok(pruned) => pruned,
            Err(e) => {
                log::error!("retention: cannot prune: {e}");
                return false;
            }
        };
        log::debug!(
            "retention: step pruned {} rows in {:.1} ms",
            pruned.total(),
            started.elapsed().as_secs_f64() * 1000.0
        );
        METRICS.pruned(&[
            ("email_body", pruned.email_bodies),
            ("delivery", pruned.deliveries),
            ("outbox", pruned.outbox),
            ("inbox", pruned.inbox),
            ("other", pruned.other),
        ]);
        all = all.add(pruned);
        more = pruned.full();
        if !more {
            break;
        }
    }
    if all.total() > 0 {
        log::info!(
            "retention: pruned {} email bodies, {} deliveries, {} outbox rows, {} inbox rows, {} others",
            all.email_bodies,
            all.deliveries,
            all.outbox,
            all.inbox,
            all.other
        );
    }
    // Pages freed by this pass or an earlier one.
    if store.reclaimable_pages().is_ok_and(|free| free > 0) {
        for _ in 0..STEPS_PER_PASS {
            match store.reclaim_free_pages(RECLAIM_PAGES) {
                Ok(left) if left > 0 => {}
                Ok(_) => break,
                Err(e) => {
                    log::error!("retention: cannot give free pages back: {e}");
                    break;
                }
            }
        }
    }
    more
}

/// One bounded step of pruning at `now`, in the caller's transaction.
pub fn step(tx: &Tx<'_>, now: i64, retention: &Retention) -> StoreResult<Pruned> {
    let mut pruned = Pruned::default();
    let limit = CHUNK as i64;
    if let Some(keep) = retention.email_bodies {
        let horizon = last_id_before(tx, Table::Outbox, cutoff(now, keep))?;
        // Translations first: a delivery falls back to the default body.
        pruned.email_bodies += tx
            .execute("DELETE FROM email_bodies_localized WHERE (event_seq, locale) IN (
                     SELECT b.event_seq, b.locale FROM email_bodies_localized b
                     WHERE b.event_seq <= ?1 AND NOT EXISTS (
                         SELECT 1 FROM deliveries d
                         WHERE d.event_seq = b.event_seq AND d.status NOT IN ('sent', 'failed', 'dead', 'skipped'))
                     ORDER BY b.event_seq LIMIT ?2)", args![horizon, limit])?;
        pruned.email_bodies += tx
            .execute("DELETE FROM email_bodies WHERE event_seq IN (
                     SELECT b.event_seq FROM email_bodies b
                     WHERE b.event_seq <= ?1 AND NOT EXISTS (
                         SELECT 1 FROM deliveries d
                         WHERE d.event_seq = b.event_seq AND d.status NOT IN ('sent', 'failed', 'dead', 'skipped'))
                     ORDER BY b.event_seq LIMIT ?2)", args![horizon, limit])?;
    }
    if let Some(keep) = retention.log {
        prune_log(tx, cutoff(now, keep), &mut pruned)?;
    }
    if let Some(keep) = retention.inbox {
        let horizon = last_id_before(tx, Table::Notifications, cutoff(now, keep))?;
        pruned.inbox += tx.execute(
            "DELETE FROM notifications WHERE id IN (
                     SELECT id FROM notifications WHERE id <= ?1 ORDER BY id LIMIT ?2)",
            args![horizon, limit],
        )?;
    }
    pruned.other += tx.execute("DELETE FROM sessions WHERE expires_at < ?1", args![now])?;
    if let Some(delay) = retention.test_step_delay.filter(|_| pruned.total() > 0) {
        std::thread::sleep(delay);
    }
    Ok(pruned)
}

/// The log: final deliveries, then what only they kept alive (bodies,
/// batches), listener runs done, flushed digests, and last the outbox rows
/// nothing refers to any more. The newest outbox row always stays: SQLite
/// would otherwise reuse its sequence number, and inbox rows and
/// deliveries are unique by it.
fn prune_log(tx: &Tx<'_>, before: i64, pruned: &mut Pruned) -> StoreResult<()> {
    let newest: i64 = tx.query_one("SELECT COALESCE(MAX(seq), 0) FROM outbox", args![], |r| {
        r.get(0)
    })?;
    let horizon = last_id_before(tx, Table::Outbox, before)?.min(newest - 1);
    if horizon <= 0 {
        return Ok(());
    }
    let limit = CHUNK as i64;
    let run = |sql: &str| -> StoreResult<usize> { tx.execute(sql, args![horizon, limit]) };
    pruned.deliveries += run("DELETE FROM deliveries WHERE id IN (
             SELECT id FROM deliveries
             WHERE event_seq <= ?1 AND status IN ('sent', 'failed', 'dead', 'skipped')
             ORDER BY event_seq LIMIT ?2)")?;
    pruned.email_bodies += run(
        "DELETE FROM email_bodies_localized WHERE (event_seq, locale) IN (
             SELECT b.event_seq, b.locale FROM email_bodies_localized b
             WHERE b.event_seq <= ?1
               AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_seq = b.event_seq)
             ORDER BY b.event_seq LIMIT ?2)",
    )?;
    pruned.email_bodies += run("DELETE FROM email_bodies WHERE event_seq IN (
             SELECT b.event_seq FROM email_bodies b
             WHERE b.event_seq <= ?1
               AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_seq = b.event_seq)
             ORDER BY b.event_seq LIMIT ?2)")?;
    pruned.other += run("DELETE FROM mail_batches WHERE id IN (
             SELECT m.id FROM mail_batches m
             WHERE m.last_seq <= ?1 AND NOT EXISTS (
                 SELECT 1 FROM deliveries d
                 WHERE d.event_seq BETWEEN m.first_seq AND m.last_seq AND d.batch_id = m.id)
             LIMIT ?2)")?;
    pruned.other += run("DELETE FROM listener_runs WHERE (event_seq, listener) IN (
             SELECT event_seq, listener FROM listener_runs
             WHERE event_seq <= ?1 AND status = 'done' ORDER BY event_seq LIMIT ?2)")?;
    pruned.other += run("DELETE FROM digest_events WHERE digest_id IN (
             SELECT id FROM digests WHERE status = 'flushed' AND flushed_seq <= ?1
             ORDER BY id LIMIT ?2)")?;
    pruned.other += run("DELETE FROM digests WHERE id IN (
             SELECT g.id FROM digests g
             WHERE g.status = 'flushed' AND g.flushed_seq <= ?1
               AND NOT EXISTS (SELECT 1 FROM digest_events e WHERE e.digest_id = g.id)
             ORDER BY g.id LIMIT ?2)")?;
    pruned.outbox += run("DELETE FROM outbox WHERE seq IN (
             SELECT o.seq FROM outbox o
             WHERE o.seq <= ?1 AND o.status != 'pending'
               AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_seq = o.seq)
               AND NOT EXISTS (SELECT 1 FROM email_bodies b WHERE b.event_seq = o.seq)
               AND NOT EXISTS (SELECT 1 FROM email_bodies_localized b WHERE b.event_seq = o.seq)
               AND NOT EXISTS (SELECT 1 FROM listener_runs l WHERE l.event_seq = o.seq)
               AND NOT EXISTS (SELECT 1 FROM digest_events e WHERE e.event_seq = o.seq)
               AND NOT EXISTS (SELECT 1 FROM digests g WHERE g.flushed_seq = o.seq)
             ORDER BY o.seq LIMIT ?2)")?;
    Ok(())
}

fn cutoff(now: i64, keep: Duration) -> i64 {
    now.saturating_sub(i64::try_from(keep.as_millis()).unwrap_or(i64::MAX))
}

/// Tables whose ids grow with their `created_at` (one writer stamps both).
#[derive(Clone, Copy)]
enum Table {
    Outbox,
    Notifications,
}

impl Table {
    fn first_from(self) -> &'static str {
        match self {
            Table::Outbox => {
                "SELECT seq, created_at FROM outbox WHERE seq >= ?1 ORDER BY seq LIMIT 1"
            }
            Table::Notifications => {
                "SELECT id, created_at FROM notifications WHERE id >= ?1 ORDER BY id LIMIT 1"
            }
        }
    }

    fn bounds(self) -> &'static str {
        match self {
            Table::Outbox => "SELECT MIN(seq), MAX(seq) FROM outbox",
            Table::Notifications => "SELECT MIN(id), MAX(id) FROM notifications",
        }
    }
}

/// The largest id of `table` created before `before` (0 if none), by
/// binary search over the id: a few point lookups instead of an index on
/// `created_at` that every row would pay for.
fn last_id_before(conn: &Conn<'_>, table: Table, before: i64) -> StoreResult<i64> {
    let (low, high): (Option<i64>, Option<i64>) =
        conn.query_one(table.bounds(), args![], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let (Some(mut low), Some(mut high)) = (low, high) else {
        return Ok(0);
    };
    let at = |id: i64| -> StoreResult<Option<(i64, i64)>> {
        conn.query_opt(table.first_from(), args![id], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
    };
    match at(low)? {
        Some((_, created)) if created < before => {}
        _ => return Ok(0),
    }
    // `low` is always a row created before `before`.
    while low < high {
        let mid = low + (high - low + 1) / 2;
        match at(mid)? {
            Some((id, created)) if created < before && id <= high => low = id,
            _ => high = mid - 1,
        }
    }
    Ok(low)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{StoreError, Synchronous};

    #[test]
    fn prunes_every_so_often_as_the_shortest_period_asks() {
        let longest = Duration::from_secs(30);
        let days = |d: u64| Some(Duration::from_secs(d * 86_400));
        let r = Retention::default();
        assert_eq!(r.every(longest), Some(longest));
        let short = Retention {
            email_bodies: Some(Duration::from_secs(4)),
            log: days(1),
            inbox: None,
            test_step_delay: None,
        };
        assert_eq!(short.every(longest), Some(Duration::from_secs(2)));
        let none = Retention {
            email_bodies: None,
            log: None,
            inbox: None,
            test_step_delay: None,
        };
        assert_eq!(none.every(longest), None);
    }

    #[test]
    fn finds_the_last_row_before_a_time_across_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db"), Synchronous::Normal).unwrap();
        let before = |t| store.read(|c| last_id_before(c, Table::Outbox, t)).unwrap();
        assert_eq!(before(100), 0, "empty");
        // ids 1..=1000 at time id * 10, with every third id missing.
        store
            .write(|tx| {
                for id in (1..=1000).filter(|id| id % 3 != 0) {
                    tx.execute(
                        "INSERT INTO outbox (seq, id, type, body, created_at)
                         VALUES (?1, 'evt_' || ?1, 't', '', ?2)",
                        args![id, id * 10],
                    )?;
                }
                Ok::<_, StoreError>(())
            })
            .unwrap();
        assert_eq!(before(10), 0, "nothing before the first row");
        assert_eq!(before(11), 1);
        assert_eq!(before(35), 2, "3 is missing");
        assert_eq!(before(5_000), 499, "the last row created before 5,000");
        assert_eq!(before(i64::MAX), 1000);
    }
}
