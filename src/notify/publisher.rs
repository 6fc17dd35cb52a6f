//! The write side of the seam: an event is validated and its outbox row
//! written in the caller's transaction (`Outbox`), and its id goes on the
//! bus only after COMMIT has returned, so a rolled-back transaction
//! notifies nobody. Listeners enqueue through the same door.

use std::sync::Arc;

use crossbeam_channel::Sender;

use super::bus::BusMsg;
use super::error::NotifyError;
use super::event::{Event, Recipient};
use super::outbox::{self, Enqueued};
use super::registry::Registry;
use crate::store::{users, Store, StoreError, Tx};

/// What enqueuing and publishing need; cheap to clone.
#[derive(Clone)]
pub(crate) struct Publisher {
    store: Arc<Store>,
    registry: Arc<Registry>,
    bus: Sender<BusMsg>,
}

impl Publisher {
    pub fn new(store: Arc<Store>, registry: Registry, bus: Sender<BusMsg>) -> Publisher {
        Publisher {
            store,
            registry: Arc::new(registry),
            bus,
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
        for (i, recipient) in event.recipients.iter().enumerate() {
            if let Recipient::User(id) = recipient {
                if !users::exists(tx, id)? {
                    return Err(NotifyError::Invalid {
                        field: format!("recipients[{i}]"),
                        message: format!("unknown user {id:?}"),
                    });
                }
            }
        }
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
        let (value, committed) = self.store.write(|tx| {
            let mut outbox = Outbox {
                tx,
                publisher: self,
                committed_later: Vec::new(),
            };
            let value = f(&mut outbox)?;
            Ok::<_, E>((value, outbox.committed_later))
        })?;
        crate::metrics::METRICS.events_accepted(committed.len() as u64);
        for (seq, event) in committed {
            // The bus's receiver lives as long as the notifier, so this cannot fail.
            let _ = self.bus.send(BusMsg::Dispatch(seq, event));
        }
        Ok(value)
    }
}

/// The events one transaction enqueued; published after it commits.
pub struct Outbox<'a, 'c> {
    tx: &'a Tx<'c>,
    publisher: &'a Publisher,
    committed_later: Vec<(i64, Option<Arc<Event>>)>,
}

impl<'c> Outbox<'_, 'c> {
    pub fn tx(&self) -> &Tx<'c> {
        self.tx
    }

    /// Validates `event` and writes its outbox row in this transaction.
    pub fn enqueue(&mut self, event: &Event) -> Result<Enqueued, NotifyError> {
        let enqueued = self.publisher.enqueue(self.tx, event)?;
        if enqueued.created {
            self.committed_later
                .push((enqueued.seq, Some(Arc::new(event.clone()))));
        }
        Ok(enqueued)
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
