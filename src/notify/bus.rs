//! The in-process messages: what travels on the bus to the dispatcher
//! thread, and what wakes the scheduler. Invariant: an outbox id goes on
//! the bus only after the transaction that wrote its row has committed.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use crossbeam_channel::Sender;

use super::delivery::retry::Outcome;
use super::event::Event;

/// What travels on the in-process bus to the dispatcher thread.
pub(crate) enum BusMsg {
    /// A committed outbox row to dispatch, with the event when the publisher
    /// still holds it (so the dispatcher need not read it back).
    Dispatch(i64, Option<Arc<Event>>),
    /// A send attempt's outcome to record.
    Outcome(Outcome),
    /// Acknowledge once every message before this one is handled.
    Flush(Sender<()>),
    Stop,
}

/// What wakes the scheduler before its next due time.
pub(crate) enum Wake {
    /// A retry was scheduled; look again for the earliest one.
    Retry,
    Stop,
}

/// When the scheduler next wakes by itself, so that work due later (a
/// held email, say) needs no wake: the scheduler reads the database for
/// its next due time after it says it is awake, and says when it sleeps
/// until only after that read.
pub(crate) struct NextWake(AtomicI64);

/// The scheduler is looking at the database now, or is about to.
const AWAKE: i64 = i64::MIN;

impl NextWake {
    pub fn new() -> NextWake {
        NextWake(AtomicI64::new(AWAKE))
    }

    pub fn awake(&self) {
        self.0.store(AWAKE, Ordering::SeqCst);
    }

    pub fn asleep_until(&self, at: i64) {
        self.0.store(at, Ordering::SeqCst);
    }

    /// Whether work committed just now and due at `at` needs a wake: the
    /// scheduler sleeps past it, or may have read the database before the
    /// commit.
    pub fn misses(&self, at: i64) -> bool {
        let planned = self.0.load(Ordering::SeqCst);
        planned == AWAKE || at < planned
    }
}
