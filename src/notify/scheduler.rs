//! The scheduler: at start it re-drives every unfinished outbox row and
//! pending delivery; then its thread sleeps until the earliest due retry,
//! digest, held email, scheduled event (`sendAt`) or schedule run (woken
//! early when a sooner one is scheduled or a delivery is re-armed, or when
//! the senders' queue has room for deliveries waiting in the database),
//! releases due digests and held emails (`delivery::held`), brings back
//! snoozed inbox rows whose time came, publishes due
//! events, runs due schedules, pages those deliveries in and, rarely, sweeps
//! for work another process wrote (outbox rows whose bus
//! message never arrived, deliveries re-armed by `herald outbox retry`). An
//! idle server wakes this thread once per sweep, and nothing else.
//! On a database several instances share, the sweep comes every fifth of
//! the lease: it is this instance's heartbeat, and it takes over the
//! deliveries and events of instances silent for longer than the lease.

use std::collections::HashSet;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::bus::Wake;
use super::delivery::mail_queue::MailQueue;
use super::delivery::{deliveries, held};
use super::shared::Shared;
use super::{
    digest, inbox, instance, outbox, peers, policy, retention, schedules, throttle, topic_fanout,
};
use crate::metrics::METRICS;
use crate::store::StoreResult;

/// How often the scheduler looks for work written by another process; what
/// `herald outbox retry` tells the operator to expect.
pub const SWEEP_EVERY_SECS: i64 = 30;

/// How often the database is looked at for work this process was not told
/// about. In-process work always arrives by message, so this only bounds
/// how late another process's writes are noticed; rare keeps idle idle.
const SWEEP_EVERY_MS: i64 = SWEEP_EVERY_SECS * 1000;
/// Rows younger than this are probably still on the bus.
const STALE_AFTER_MS: i64 = 1_000;
const CLAIM_BATCH: usize = 500;
/// Scheduled events published per look; more wait for the next one.
const DUE_BATCH: usize = 5_000;
/// Dedup marks deleted per write transaction, and chunks per sweep: pruning
/// keeps up with any realistic rate while never holding the write lock long.
const PRUNE_CHUNK: usize = 1_000;
const PRUNE_CHUNKS_PER_SWEEP: usize = 50;
/// A retention pass that left more behind comes back after this.
const PRUNE_AGAIN_MS: i64 = 50;

/// When the sweep comes and what it takes for abandoned.
struct Sweep {
    every_ms: i64,
    /// Pending outbox rows older than this are re-published.
    stale_after_ms: i64,
    lease_ms: i64,
    /// Whether other instances may share the database.
    shared: bool,
}

impl Sweep {
    fn of(shared: &Shared) -> Sweep {
        let lease_ms = shared
            .policy
            .lease
            .as_millis()
            .try_into()
            .unwrap_or(i64::MAX);
        if shared.store().engine().is_shared() {
            Sweep {
                every_ms: (lease_ms / 5).max(20),
                // Younger rows may be on their own instance's bus still.
                stale_after_ms: lease_ms,
                lease_ms,
                shared: true,
            }
        } else {
            Sweep {
                every_ms: SWEEP_EVERY_MS,
                stale_after_ms: STALE_AFTER_MS,
                lease_ms,
                shared: false,
            }
        }
    }
}

pub(super) fn run(shared: &Shared, queue: &MailQueue, wake: Receiver<Wake>, me: i64) {
    let store = shared.store();
    let sweep = Sweep::of(shared);
    let mut next_sweep = store.clock().now_ms() + sweep.every_ms;
    let retention = &shared.policy.retention;
    let prune_every = retention
        .every(Duration::from_millis(SWEEP_EVERY_MS as u64))
        .map(|d| d.as_millis() as i64);
    let mut next_prune = store.clock().now_ms();
    // Scheduled events published and not yet seen dispatched: not
    // published again while the dispatcher has them.
    let mut published_due = HashSet::new();
    loop {
        // Work committed from here on may not be in what this pass reads.
        shared.next_wake.awake();
        let now = store.clock().now_ms();
        let mut next_wake = next_sweep;
        if queue.behind() {
            if let Err(e) = queue.page_in(store, me) {
                log::error!("scheduler cannot page in pending deliveries: {e}");
            }
        }
        match store.write(|tx| deliveries::claim_due(tx, now, CLAIM_BATCH, me)) {
            Ok(due) => {
                let full = due.len() == CLAIM_BATCH;
                // A due retry the queue has no room for is pending again in
                // the database, and is paged in like any other.
                for job in due {
                    queue.offer(job);
                }
                if full {
                    continue;
                }
            }
            Err(e) => log::error!("scheduler cannot claim due retries: {e}"),
        }
        if release_held(shared, queue, me) {
            continue;
        }
        // A topic fan-out goes a page per pass, so the timers above keep
        // their turn between pages.
        if topic_fanout::run_page(shared, queue, &shared.wake, me) {
            continue;
        }
        if now >= next_sweep {
            if sweep.shared {
                take_over(queue, |limit| {
                    instance::beat(store, me, sweep.lease_ms, limit)
                });
            }
            if shared.bus_rx.is_empty() {
                publish_stale(shared, now - sweep.stale_after_ms);
            }
            prune_dedup_marks(shared, now);
            prune_throttle_hits(shared, now);
            next_sweep = now + sweep.every_ms;
            next_wake = next_sweep;
        }
        if let Some(every) = prune_every {
            if now >= next_prune {
                let more = retention::pass(store, retention, now);
                next_prune = store.clock().now_ms() + if more { PRUNE_AGAIN_MS } else { every };
            }
            next_wake = next_wake.min(next_prune);
        }
        // Digests due now are released; the next one bounds the sleep.
        if let Some(at) = digest::flush_due(store, |seq| shared.publisher.publish(seq)) {
            next_wake = next_wake.min(at);
        }
        // So are due recurring schedules' runs; the next run bounds it too.
        if let Some(at) = schedules::run_due(store, |seq| shared.publisher.publish(seq)) {
            next_wake = next_wake.min(at);
        }
        // Snoozed inbox rows whose time came are back; the next end bounds it.
        if let Some(at) = return_snoozed(shared, now, me) {
            next_wake = next_wake.min(at);
        }
        // So are scheduled events.
        if let Some(at) = publish_due(shared, &mut published_due) {
            next_wake = next_wake.min(at);
        }
        match store.read(deliveries::next_retry_at) {
            Ok(Some(at)) => next_wake = next_wake.min(at),
            Ok(None) => {}
            Err(e) => log::error!("scheduler cannot read the retry queue: {e}"),
        }
        match store.read(held::next_due_at) {
            Ok(Some(at)) => next_wake = next_wake.min(at),
            Ok(None) => {}
            Err(e) => log::error!("scheduler cannot read the held emails: {e}"),
        }
        shared.next_wake.asleep_until(next_wake);
        let sleep = Duration::from_millis((next_wake - store.clock().now_ms()).max(0) as u64);
        match wake.recv_timeout(sleep) {
            Ok(Wake::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Ok(Wake::Retry) | Err(RecvTimeoutError::Timeout) => {}
        }
        // A burst of outcomes sends a burst of wakes: one look serves them all.
        while let Ok(more) = wake.try_recv() {
            if let Wake::Stop = more {
                return;
            }
        }
    }
}

/// Snoozed rows returned per write transaction.
const RETURN_BATCH: usize = 500;

/// Brings back the inbox rows whose snooze ended by `now` (unseen, in one
/// transaction per page) and announces them to the live streams after each
/// commit, here and, on a shared database, on every instance. Returns when
/// the next snooze ends: now again if a page was full.
fn return_snoozed(shared: &Shared, now: i64, me: i64) -> Option<i64> {
    let store = shared.store();
    loop {
        let returned: StoreResult<Vec<_>> = store.write(|tx| {
            let rows = inbox::return_snoozed(tx, now, RETURN_BATCH)?;
            peers::announce_returned(tx, me, &rows)?;
            Ok(rows)
        });
        match returned {
            Ok(rows) => {
                shared.announce_inbox(&rows);
                if rows.len() < RETURN_BATCH {
                    break;
                }
            }
            Err(e) => {
                log::error!("scheduler cannot bring back snoozed inbox rows: {e}");
                return Some(now + 1_000);
            }
        }
    }
    match store.read(inbox::next_snooze_end) {
        Ok(at) => at,
        Err(e) => {
            log::error!("scheduler cannot read the snoozed inbox rows: {e}");
            None
        }
    }
}

/// Everything a previous run (or a crash) left unfinished goes back in:
/// undispatched events onto the bus now, unsent emails through the mail
/// queue, which starts behind and pages them in from the database. On
/// SQLite this process takes every delivery another one held; on a shared
/// database, only those of instances silent for longer than the lease.
pub(super) fn redrive(shared: &Shared, queue: &MailQueue, me: i64) {
    let lease_ms = Sweep::of(shared).lease_ms;
    take_over(queue, |limit| {
        instance::take_over(shared.store(), me, lease_ms, limit)
    });
    let events = publish_stale(shared, i64::MAX);
    match shared.store().read(deliveries::pending_count) {
        Ok(emails) if events > 0 || emails > 0 => {
            log::info!("re-driving {events} undispatched events and {emails} unsent emails");
        }
        Ok(_) => {}
        Err(e) => log::error!("cannot count pending deliveries: {e}"),
    }
}

/// Releases the held emails due now (skipped, held again for quiet hours,
/// or handed to the mail queue after COMMIT); true when there may be more
/// due at once.
fn release_held(shared: &Shared, queue: &MailQueue, me: i64) -> bool {
    // A read first: most passes find nothing due, and a write transaction
    // would take the write lock for nothing.
    let store = shared.store();
    match store.read(held::next_due_at) {
        Ok(Some(at)) if at <= store.clock().now_ms() => {}
        Ok(_) => return false,
        Err(e) => {
            log::error!("scheduler cannot read the held emails: {e}");
            return false;
        }
    }
    let registry = shared.registry();
    let critical = |kind: &str| registry.get(kind).is_some_and(|def| def.critical);
    let released = store
        .write(|tx| held::release_due(tx, CLAIM_BATCH, me, shared.policy.mail_batch, &critical));
    match released {
        Ok(released) => {
            for kind in &released.skipped {
                METRICS.skipped(kind);
            }
            if released.deferred > 0 {
                log::info!(
                    "{} due emails held again until their recipients' quiet hours end",
                    released.deferred
                );
            }
            for job in released.jobs {
                queue.offer(job);
            }
            released.full
        }
        Err(e) => {
            log::error!("scheduler cannot release held emails: {e}");
            false
        }
    }
}

/// Deletes dedup marks older than the longest window of any type: they can
/// no longer make anything a duplicate, and without this the table would
/// grow by a row for nearly every notification, forever.
fn prune_dedup_marks(shared: &Shared, now: i64) {
    let longest_secs = shared
        .registry()
        .types()
        .map(|(_, def)| def.dedup_window_secs)
        .max()
        .unwrap_or(0);
    let before =
        now.saturating_sub(i64::try_from(longest_secs.saturating_mul(1000)).unwrap_or(i64::MAX));
    let store = shared.store();
    for _ in 0..PRUNE_CHUNKS_PER_SWEEP {
        let pruned = store
            .read(|c| policy::expired_marks(c, before, PRUNE_CHUNK))
            .and_then(|marks| {
                if marks.is_empty() {
                    return Ok(false);
                }
                let full = marks.len() == PRUNE_CHUNK;
                store
                    .write(|tx| policy::delete_marks(tx, &marks, before))
                    .map(|_| full)
            });
        match pruned {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                log::error!("scheduler cannot prune dedup marks: {e}");
                return;
            }
        }
    }
}

/// Publishes the scheduled events due now that `published` does not hold
/// yet, and keeps in it those still pending (the dispatcher has them, or
/// they failed to dispatch and the sweep re-drives them as stale). On a
/// shared database every instance publishes a due event; the outbox claim
/// dispatches it once. Returns when the next one is due.
fn publish_due(shared: &Shared, published: &mut HashSet<i64>) -> Option<i64> {
    let store = shared.store();
    let now = store.clock().now_ms();
    let found: StoreResult<_> = store.read(|c| {
        Ok((
            outbox::due(c, now, DUE_BATCH)?,
            outbox::next_due_at(c, now)?,
        ))
    });
    match found {
        Ok((due, next)) => {
            let full = due.len() == DUE_BATCH;
            let due: HashSet<i64> = due.into_iter().collect();
            published.retain(|seq| due.contains(seq));
            for seq in due {
                if published.insert(seq) {
                    shared.publisher.publish(seq);
                }
            }
            // A full batch: more are due, behind those the dispatcher has
            // yet to take. Look again once it has made some way.
            match full {
                true => Some(now + PRUNE_AGAIN_MS),
                false => next,
            }
        }
        Err(e) => {
            log::error!("scheduler cannot read scheduled events: {e}");
            None
        }
    }
}

/// Deletes throttle hits older than the longest throttle window of any
/// type: they count in no window any more.
fn prune_throttle_hits(shared: &Shared, now: i64) {
    let Some(before) = throttle::horizon(shared.registry(), now) else {
        return;
    };
    let store = shared.store();
    for _ in 0..PRUNE_CHUNKS_PER_SWEEP {
        let pruned = store
            .read(|c| throttle::chunk_end(c, before, PRUNE_CHUNK))
            .and_then(|end| {
                let through = end.unwrap_or(i64::MAX);
                store
                    .write(|tx| throttle::delete(tx, before, through))
                    .map(|_| end.is_some())
            });
        match pruned {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                log::error!("scheduler cannot prune throttle hits: {e}");
                return;
            }
        }
    }
}

/// Takes over, through `take` (up to so many a call), the pending
/// deliveries of instances taken for dead, for this instance's mail queue.
fn take_over(queue: &MailQueue, mut take: impl FnMut(usize) -> StoreResult<usize>) {
    loop {
        match take(CLAIM_BATCH) {
            Ok(0) => return,
            Ok(taken) => {
                log::info!("took over {taken} deliveries of instances no longer running");
                queue.fall_behind();
                if taken < CLAIM_BATCH {
                    return;
                }
            }
            Err(e) => {
                log::error!("scheduler cannot take over abandoned deliveries: {e}");
                return;
            }
        }
    }
}

/// Publishes the pending rows due before `before_ms` (see
/// `outbox::stale_pending`); how many.
fn publish_stale(shared: &Shared, before_ms: i64) -> usize {
    let mut published = 0;
    let mut after = 0;
    let now = shared.store().clock().now_ms();
    loop {
        let seqs = match shared
            .store()
            .read(|c| outbox::stale_pending(c, before_ms, now, after, 10_000))
        {
            Ok(seqs) => seqs,
            Err(e) => {
                log::error!("cannot read pending outbox rows: {e}");
                return published;
            }
        };
        let Some(&last) = seqs.last() else {
            return published;
        };
        after = last;
        published += seqs.len();
        for seq in seqs {
            shared.publisher.publish(seq);
        }
    }
}
