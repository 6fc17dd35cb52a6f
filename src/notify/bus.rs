//! The in-process messages: what travels on the bus to the dispatcher
//! thread, and what wakes the scheduler. Invariant: an outbox id goes on
//! the bus only after the transaction that wrote its row has committed.

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
