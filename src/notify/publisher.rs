//! The write side of the seam: an event is validated and its outbox row
//! written in the caller's transaction (`Outbox`), and its id goes on the
//! bus only after COMMIT has returned, so a rolled-back transaction
//! notifies nobody. An event due later (`sendAt`) is not published at all:
//! the scheduler, woken after COMMIT, publishes it when due. Listeners
//! enqueue through the same door.

use std::sync::Arc;

use crossbeam_channel::Sender;

use super::bus::{BusMsg, Wake};
use super::error::NotifyError;
use super::event::Event;
use super::outbox::{self, Enqueued};
use super::registry::Registry;
use super::topics;
use crate::store::{Store, StoreError, Tx};

/// What enqueuing and publishing need; cheap to clone.
#[derive(Clone)]
pub(crate) struct Publisher {
    store: Arc<Store>,
    registry: Arc<Registry>,
    bus: Sender<BusMsg>,
    /// The scheduler's, told of events due later.
    wake: Sender<Wake>,
}

impl Publisher {
    pub fn new(
        store: Arc<Store>,
        registry: Registry,
        bus: Sender<BusMsg>,
        wake: Sender<Wake>,
    ) -> Publisher {
        Publisher {
            store,
            registry: Arc::new(registry),
            bus,
            wake,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The store, for a thread that keeps it.
    pub fn store_arc(&self) -> Arc<Store> {
        self.store.clone()
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Validates `event` and writes its outbox row in `tx`; see
    /// `Notifier::enqueue`.
    pub fn enqueue(&self, tx: &Tx<'_>, event: &Event) -> Result<Enqueued, NotifyError> {
        event.validate(&self.registry)?;
        event.validate_send_at(tx.now_ms())?;
        topics::check_recipients(tx, &event.recipients)?;
        outbox::enqueue(tx, event)
    }

    /// Hands a committed outbox row to the dispatcher. Publishing an id whose
    /// transaction rolled back is harmless: there is no row to dispatch.
    pub fn publish(&self, seq: i64) {
        // The bus's receiver lives as long as the notifier, so this cannot fail.
        let _ = self.bus.send(BusMsg::Dispatch(seq, None));
    }

    /// Runs `f` in one write transaction and publishes the events it
    /// enqueued only after COMMIT has returned. Like any write closure, `f`
    /// may run more than once (see `Store::write`).
    pub fn transaction<T, E>(
        &self,
        mut f: impl FnMut(&mut Outbox<'_, '_>) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let written = self.store.write(|tx| self.run(tx, &mut f))?;
        Ok(self.after_commit(written))
    }

    /// `transaction` through the store's group commit (`Store::write_grouped`):
    /// for callers that write a little and come many at once, like one
    /// event per HTTP request.
    pub fn transaction_grouped<T, E, F>(&self, mut f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnMut(&mut Outbox<'_, '_>) -> Result<T, E> + Send + 'static,
    {
        let publisher = self.clone();
        let written = self
            .store
            .write_grouped(move |tx| publisher.run(tx, &mut f))?;
        Ok(self.after_commit(written))
    }

    fn run<T, E>(
        &self,
        tx: &Tx<'_>,
        f: &mut impl FnMut(&mut Outbox<'_, '_>) -> Result<T, E>,
    ) -> Result<Written<T>, E> {
        let mut outbox = Outbox {
            tx,
            publisher: self,
            committed_later: Vec::new(),
            scheduled: 0,
        };
        let value = f(&mut outbox)?;
        Ok(Written {
            value,
            committed: outbox.committed_later,
            scheduled: outbox.scheduled,
        })
    }

    /// Publishes what a committed transaction enqueued.
    fn after_commit<T>(&self, written: Written<T>) -> T {
        let Written {
            value,
            committed,
            scheduled,
        } = written;
        crate::metrics::METRICS.events_accepted((committed.len() + scheduled) as u64);
        for (seq, event) in committed {
            // The bus's receiver lives as long as the notifier, so this cannot fail.
            let _ = self.bus.send(BusMsg::Dispatch(seq, event));
        }
        if scheduled > 0 {
            // It looks again for the soonest due time.
            let _ = self.wake.send(Wake::Retry);
        }
        value
    }
}

/// What a transaction's closure returned, and the events it enqueued.
struct Written<T> {
    value: T,
    committed: Vec<(i64, Option<Arc<Event>>)>,
    scheduled: usize,
}

/// The events one transaction enqueued; published after it commits.
pub struct Outbox<'a, 'c> {
    tx: &'a Tx<'c>,
    publisher: &'a Publisher,
    committed_later: Vec<(i64, Option<Arc<Event>>)>,
    /// New events due later, which the scheduler publishes.
    scheduled: usize,
}

impl<'c> Outbox<'_, 'c> {
    pub fn tx(&self) -> &Tx<'c> {
        self.tx
    }

    /// Validates `event` and writes its outbox row in this transaction.
    pub fn enqueue(&mut self, event: &Event) -> Result<Enqueued, NotifyError> {
        let enqueued = self.publisher.enqueue(self.tx, event)?;
        if enqueued.scheduled {
            self.scheduled += 1;
        } else if enqueued.created {
            self.committed_later
                .push((enqueued.seq, Some(Arc::new(event.clone()))));
        }
        Ok(enqueued)
    }

    /// Whether this transaction enqueued an event due later.
    pub fn scheduled(&self) -> bool {
        self.scheduled > 0
    }

    /// Writes a domain event (`invitation.accepted`, ...) for the listeners
    /// in this transaction; it reaches them only after COMMIT.
    pub fn emit(
        &mut self,
        kind: &str,
        payload: serde_json::Value,
    ) -> Result<Enqueued, NotifyError> {
        let enqueued = outbox::enqueue_domain(self.tx, kind, &payload)?;
        self.committed_later.push((enqueued.seq, None));
        Ok(enqueued)
    }
}
