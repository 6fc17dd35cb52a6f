//! The notification seam. Call sites enqueue events inside their own write
//! transaction (`Notifier::transaction` or `Notifier::enqueue`); only after
//! COMMIT is the outbox id pushed on the bus. The dispatcher thread turns
//! outbox rows into inbox rows and email deliveries, mail sender threads send
//! them, and the scheduler re-drives retries and stale rows. Inbox rows are
//! written only by `inbox`, and the mail provider is called only by `email`.

mod bus;
pub mod delivery;
pub mod digest;
mod dispatcher;
mod error;
pub mod event;
pub mod inbox;
pub mod links;
pub mod listeners;
pub mod outbox;
pub mod policy;
pub mod preferences;
pub mod registry;
pub mod retention;
mod scheduler;
pub mod service;
pub mod stats;
pub mod templates;

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::mail::MailProvider;
use crate::store::{users, Store, StoreError, Tx};
use bus::{BusMsg, Wake};
use delivery::mail_queue::MailQueue;
pub use delivery::policy::DeliveryPolicy;
use delivery::retry::Outcome;
use delivery::views::{self, DeliveryView};
use delivery::{pacer, sender};
pub use error::NotifyError;
pub use event::{Event, Recipient};
pub use listeners::{DomainEvent, Listener, ListenerError, ListenerHooks};
pub use outbox::Enqueued;
pub use registry::{Channel, Registry};
pub use templates::Templates;

/// How often the scheduler looks for work written by another process (see
/// `scheduler`); what `herald outbox retry` tells the operator to expect.
pub const SWEEP_EVERY_SECS: i64 = 30;

/// A new inbox row, announced only after the transaction that wrote it
/// committed (the live stream reads the row itself by id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxCommitted {
    pub user_id: String,
    pub id: i64,
}

struct Shared {
    store: Arc<Store>,
    registry: Registry,
    templates: Templates,
    policy: DeliveryPolicy,
    bus: Sender<BusMsg>,
    bus_rx: Receiver<BusMsg>,
    /// Wakes the scheduler (it sleeps until the earliest due retry).
    wake: Sender<Wake>,
    wake_rx: Receiver<Wake>,
    listeners: listeners::Listeners,
    /// Emails waiting for a sender thread, bounded in memory.
    mail_queue: Arc<MailQueue>,
    /// Who hears about committed inbox rows; a dropped receiver is forgotten
    /// at the next announcement.
    inbox_listeners: Mutex<Vec<Sender<InboxCommitted>>>,
}

impl Shared {
    /// Tells every listener about rows that have just been committed. Never
    /// blocks: the channels are unbounded.
    fn announce_inbox(&self, rows: &[InboxCommitted]) {
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

/// The handle call sites hold. Cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    shared: Arc<Shared>,
}

/// The events one transaction enqueued; published after it commits.
pub struct Outbox<'a, 'c> {
    tx: &'a Tx<'c>,
    notifier: &'a Notifier,
    committed_later: Vec<(i64, Option<Arc<Event>>)>,
}

impl<'c> Outbox<'_, 'c> {
    pub fn tx(&self) -> &Tx<'c> {
        self.tx
    }

    /// Validates `event` and writes its outbox row in this transaction.
    pub fn enqueue(&mut self, event: &Event) -> Result<Enqueued, NotifyError> {
        let enqueued = self.notifier.enqueue(self.tx, event)?;
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

impl Notifier {
    pub fn new(
        store: Arc<Store>,
        registry: Registry,
        templates: Templates,
        policy: DeliveryPolicy,
    ) -> Notifier {
        let (bus, bus_rx) = crossbeam_channel::unbounded();
        let (wake, wake_rx) = crossbeam_channel::unbounded();
        let mail_queue = Arc::new(MailQueue::bounded(policy.queue_capacity));
        Notifier {
            shared: Arc::new(Shared {
                store,
                registry,
                templates,
                policy,
                bus,
                bus_rx,
                wake,
                wake_rx,
                listeners: listeners::Listeners::default(),
                mail_queue,
                inbox_listeners: Mutex::new(Vec::new()),
            }),
        }
    }

    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    pub fn registry(&self) -> &Registry {
        &self.shared.registry
    }

    /// Library entry point: validates `event` and writes its outbox row in
    /// the caller's transaction. The caller commits, then calls `publish`;
    /// a rolled-back transaction therefore notifies nobody. An event whose
    /// idempotency key was seen before returns the first event's id with
    /// `created: false`.
    pub fn enqueue(&self, tx: &Tx<'_>, event: &Event) -> Result<Enqueued, NotifyError> {
        event.validate(&self.shared.registry)?;
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
        // The receiver lives in `Shared`, so the channel cannot be closed.
        let _ = self.shared.bus.send(BusMsg::Dispatch(seq, None));
    }

    /// Runs `f` in one write transaction and publishes the events it
    /// enqueued only after COMMIT has returned.
    pub fn transaction<T, E>(
        &self,
        f: impl FnOnce(&mut Outbox<'_, '_>) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let (value, committed) = self.shared.store.write(|tx| {
            let mut outbox = Outbox {
                tx,
                notifier: self,
                committed_later: Vec::new(),
            };
            let value = f(&mut outbox)?;
            Ok::<_, E>((value, outbox.committed_later))
        })?;
        crate::metrics::METRICS.events_accepted(committed.len() as u64);
        for (seq, event) in committed {
            // The receiver lives in `Shared`, so the channel cannot be closed.
            let _ = self.shared.bus.send(BusMsg::Dispatch(seq, event));
        }
        Ok(value)
    }

    /// Re-arms a dead or failed delivery for a fresh round of attempts, due
    /// now, and wakes the scheduler to send it.
    pub fn retry_delivery(&self, id: &str) -> Result<DeliveryView, NotifyError> {
        let view = self.shared.store.write(|tx| views::rearm(tx, id))?;
        let view = view.map_err(|status| {
            NotifyError::Conflict(format!(
                "delivery {id} is {status}; only dead or failed deliveries can be retried"
            ))
        })?;
        let _ = self.shared.wake.send(Wake::Retry);
        Ok(view)
    }

    /// Re-arms every dead delivery; returns how many.
    pub fn retry_dead(&self) -> Result<usize, NotifyError> {
        let count = self.shared.store.write(views::rearm_dead)?;
        let _ = self.shared.wake.send(Wake::Retry);
        Ok(count)
    }

    /// Adds a domain-event listener; call before `start`.
    pub fn subscribe(&self, listener: Arc<dyn Listener>) {
        self.shared.listeners.subscribe(listener);
    }

    /// Test failure injection for listeners (inert by default); before `start`.
    pub fn set_listener_hooks(&self, hooks: ListenerHooks) {
        self.shared.listeners.set_hooks(hooks);
    }

    /// For one-shot commands (`herald send`, `herald reconcile`): dispatches
    /// the events this process published and sends their emails here, with
    /// no background threads. A server running on the same database keeps
    /// what it owns (its pending deliveries are never loaded here), and the
    /// outbox claim makes each event dispatched by exactly one process.
    /// Sends that fail stay `retrying` for the server's scheduler. Returns
    /// how many events were handed over.
    pub fn deliver_published(&self, provider: &dyn MailProvider) -> usize {
        let seqs: Vec<(i64, Option<Arc<Event>>)> = self
            .shared
            .bus_rx
            .try_iter()
            .filter_map(|msg| match msg {
                BusMsg::Dispatch(seq, event) => Some((seq, event)),
                _ => None,
            })
            .collect();
        let jobs = dispatcher::dispatch_now(&self.shared, &seqs);
        let outcomes: Vec<Outcome> = jobs
            .into_iter()
            .map(|job| sender::attempt(provider, &self.shared.policy.from, job).0)
            .collect();
        if !outcomes.is_empty() {
            dispatcher::record_now(&self.shared, &outcomes);
        }
        seqs.len()
    }

    /// A receiver of every inbox row committed from now on, in commit order.
    /// The live stream's hub is the listener; a dropped receiver costs
    /// nothing.
    pub fn subscribe_inbox(&self) -> Receiver<InboxCommitted> {
        let (tx, rx) = crossbeam_channel::unbounded();
        self.shared
            .inbox_listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tx);
        rx
    }

    /// Emails queued in memory for the mail senders.
    pub fn mail_queue_len(&self) -> usize {
        self.shared.mail_queue.len()
    }

    /// Messages waiting on the bus (not yet taken by the dispatcher).
    pub fn bus_len(&self) -> usize {
        self.shared.bus_rx.len()
    }

    /// Starts the dispatcher, the mail senders and the scheduler, and
    /// re-drives everything a previous run left unfinished.
    pub fn start(&self, provider: Arc<dyn MailProvider>) -> Running {
        let shared = &self.shared;
        let queue = shared.mail_queue.clone();
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let pacer = Arc::new(pacer::Pacer::new(shared.policy.rate_per_sec));
        scheduler::redrive(self);

        let mut senders = Vec::new();
        for i in 0..shared.policy.sender_threads.max(1) {
            let ctx = sender::SenderContext {
                provider: provider.clone(),
                from: shared.policy.from.clone(),
                queue: queue.clone(),
                outcomes: shared.bus.clone(),
                pacer: pacer.clone(),
                store: shared.store.clone(),
                mail_batch: shared.policy.mail_batch,
                stop: stop_rx.clone(),
            };
            senders.push(spawn(&format!("herald-mail-{i}"), move || {
                sender::run_sender(ctx)
            }));
        }
        let dispatcher = {
            let shared = self.shared.clone();
            let (queue, wake) = (queue.clone(), shared.wake.clone());
            spawn("herald-dispatcher", move || {
                dispatcher::run(&shared, &queue, wake)
            })
        };
        let listeners = shared.listeners.start(
            self,
            listeners::Backoff {
                base: shared.policy.retry_base,
                cap: shared.policy.retry_cap,
            },
        );
        let scheduler = {
            let notifier = self.clone();
            let wake = shared.wake_rx.clone();
            spawn("herald-scheduler", move || {
                scheduler::run(&notifier, &queue, wake)
            })
        };
        Running {
            notifier: self.clone(),
            stop_senders: Some(stop_tx),
            dispatcher: Some(dispatcher),
            scheduler: Some(scheduler),
            senders,
            listeners: Some(listeners),
        }
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .unwrap_or_else(|e| panic!("cannot start thread {name}: {e}"))
}

/// The running delivery machinery; `shutdown` stops it in order.
pub struct Running {
    notifier: Notifier,
    /// Dropped to stop the senders (see `sender::SenderContext::stop`).
    stop_senders: Option<Sender<()>>,
    dispatcher: Option<JoinHandle<()>>,
    scheduler: Option<JoinHandle<()>>,
    senders: Vec<JoinHandle<()>>,
    listeners: Option<listeners::Threads>,
}

impl Running {
    /// Waits until every message published so far has been dispatched.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let _ = self.notifier.shared.bus.send(BusMsg::Flush(tx));
        rx.recv_timeout(timeout).is_ok()
    }

    /// Dispatches what is on the bus, lets in-flight sends finish within
    /// `grace`, records their outcomes and stops every thread. Deliveries not
    /// yet sent stay pending in the database for the next start.
    pub fn shutdown(mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        self.flush(grace);
        if let Some(listeners) = self.listeners.take() {
            listeners.stop(deadline);
        }
        let _ = self.notifier.shared.wake.send(Wake::Stop);
        join_until(self.scheduler.take(), deadline);
        self.stop_senders.take();
        for sender in self.senders.drain(..) {
            join_until(Some(sender), deadline);
        }
        let _ = self.notifier.shared.bus.send(BusMsg::Stop);
        join_until(self.dispatcher.take(), deadline + Duration::from_secs(5));
    }
}

fn join_until(handle: Option<JoinHandle<()>>, deadline: Instant) {
    let Some(handle) = handle else { return };
    while !handle.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if handle.is_finished() {
        let _ = handle.join();
    } else {
        log::warn!(
            "thread {} did not stop within the grace period",
            handle.thread().name().unwrap_or("?")
        );
    }
}
