//! What the notifier's threads share: the publisher, the rendering inputs,
//! the delivery policy, both ends of the bus and of the scheduler's wake
//! channel, the mail queue and who hears about committed inbox rows. The
//! dispatcher and the scheduler take this, never the `Notifier` handle, so
//! neither depends on the file that starts them.

use std::sync::{Arc, Mutex, OnceLock};

use crossbeam_channel::{Receiver, Sender};

use super::bus::{BusMsg, NextWake, Wake};
use super::delivery::mail_queue::MailQueue;
use super::delivery::policy::DeliveryPolicy;
use super::inbox::InboxCommitted;
use super::instance;
use super::listeners::Listeners;
use super::publisher::Publisher;
use super::registry::Registry;
use super::templates::Templates;
use crate::store::{Store, StoreResult};

pub(crate) struct Shared {
    pub publisher: Publisher,
    pub templates: Templates,
    pub policy: DeliveryPolicy,
    pub bus: Sender<BusMsg>,
    pub bus_rx: Receiver<BusMsg>,
    /// Wakes the scheduler (it sleeps until the earliest due retry).
    pub wake: Sender<Wake>,
    pub wake_rx: Receiver<Wake>,
    /// When the scheduler wakes next by itself.
    pub next_wake: NextWake,
    pub listeners: Listeners,
    /// Emails waiting for a sender thread, bounded in memory.
    pub mail_queue: Arc<MailQueue>,
    /// Who hears about committed inbox rows; a dropped receiver is forgotten
    /// at the next announcement.
    pub inbox_listeners: Mutex<Vec<Sender<InboxCommitted>>>,
    /// This process's id among the instances sharing the database,
    /// registered on first use (see `instance.rs`).
    instance: OnceLock<i64>,
}

impl Shared {
    pub fn new(
        store: Arc<Store>,
        registry: Registry,
        templates: Templates,
        policy: DeliveryPolicy,
    ) -> Shared {
        let (bus, bus_rx) = crossbeam_channel::unbounded();
        let (wake, wake_rx) = crossbeam_channel::unbounded();
        let mail_queue = Arc::new(MailQueue::bounded(policy.queue_capacity));
        Shared {
            publisher: Publisher::new(store, registry, bus.clone(), wake.clone()),
            templates,
            policy,
            bus,
            bus_rx,
            wake,
            wake_rx,
            next_wake: NextWake::new(),
            listeners: Listeners::default(),
            mail_queue,
            inbox_listeners: Mutex::new(Vec::new()),
            instance: OnceLock::new(),
        }
    }

    /// This process's instance id, registering it the first time.
    pub fn instance(&self) -> StoreResult<i64> {
        if let Some(id) = self.instance.get() {
            return Ok(*id);
        }
        let id = instance::register(self.store())?;
        // Two threads may race to register: the first to set wins, and the
        // other row is forgotten once silent.
        Ok(*self.instance.get_or_init(|| id))
    }

    /// The instance id, if this process registered one.
    pub fn registered(&self) -> Option<i64> {
        self.instance.get().copied()
    }

    pub fn store(&self) -> &Store {
        self.publisher.store()
    }

    pub fn registry(&self) -> &Registry {
        self.publisher.registry()
    }

    /// Tells every listener about rows that have just been committed. Never
    /// blocks: the channels are unbounded.
    pub fn announce_inbox(&self, rows: &[InboxCommitted]) {
        if rows.is_empty() {
            return;
        }
        let mut listeners = self
            .inbox_listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        listeners.retain(|tx| rows.iter().all(|row| tx.send(row.clone()).is_ok()));
    }
}
