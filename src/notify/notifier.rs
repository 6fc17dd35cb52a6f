//! The handle call sites hold (`Notifier`): enqueue and publish through
//! the seam, re-arm deliveries, and start and stop the threads behind it
//! (dispatcher, mail senders, scheduler, listeners) as one `Running`.
//! Everything the threads share lives in `Shared`; this file only wires
//! them together, and nothing below it names it.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::bus::{BusMsg, Wake};
use super::delivery::pacer::Pacer;
use super::delivery::policy::DeliveryPolicy;
use super::delivery::retry::Outcome;
use super::delivery::sender::{self, SenderContext};
use super::delivery::views::DeliveryView;
use super::error::NotifyError;
use super::event::Event;
use super::inbox::InboxCommitted;
use super::listeners::{self, Listener, ListenerHooks};
use super::outbox::Enqueued;
use super::publisher::Outbox;
use super::registry::Registry;
use super::schedules::{self, NewSchedule, Schedule};
use super::shared::Shared;
use super::templates::Templates;
use super::webhooks;
use super::{dispatcher, instance, peers, scheduler, service, threads};
use crate::mail::MailProvider;
use crate::store::{Store, StoreError, Tx};

/// The handle call sites hold. Cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    shared: Arc<Shared>,
}

impl Notifier {
    pub fn new(
        store: Arc<Store>,
        registry: Registry,
        templates: Templates,
        policy: DeliveryPolicy,
    ) -> Notifier {
        Notifier {
            shared: Arc::new(Shared::new(store, registry, templates, policy)),
        }
    }

    pub fn store(&self) -> &Store {
        self.shared.store()
    }

    pub fn registry(&self) -> &Registry {
        self.shared.registry()
    }

    /// Library entry point: validates `event` and writes its outbox row in
    /// the caller's transaction. The caller commits, then calls `publish`;
    /// a rolled-back transaction therefore notifies nobody. An event whose
    /// idempotency key was seen before returns the first event's id with
    /// `created: false`. An event due later (`send_at`) is published like
    /// any other: the dispatcher leaves it to the scheduler, which publishes
    /// it again when due (on PostgreSQL every instance's scheduler is also
    /// woken on commit to look at its time).
    pub fn enqueue(&self, tx: &Tx<'_>, event: &Event) -> Result<Enqueued, NotifyError> {
        let enqueued = self.shared.publisher.enqueue(tx, event)?;
        if enqueued.scheduled {
            peers::wake_all(tx)?;
        }
        Ok(enqueued)
    }

    /// Hands a committed outbox row to the dispatcher. Publishing an id whose
    /// transaction rolled back is harmless: there is no row to dispatch.
    pub fn publish(&self, seq: i64) {
        self.shared.publisher.publish(seq);
    }

    /// The call sites' write transaction: `Publisher::transaction`, whose
    /// events are published only after COMMIT (those due later wake the
    /// schedulers instead, see `waking_peers`).
    pub fn transaction<T, E: From<StoreError>>(
        &self,
        mut f: impl FnMut(&mut Outbox<'_, '_>) -> Result<T, E>,
    ) -> Result<T, E> {
        self.shared
            .publisher
            .transaction(move |outbox| waking_peers(outbox, &mut f))
    }

    /// `transaction` in a group commit with other callers' (see
    /// `Store::write_grouped`): what one-event requests use, many at once.
    pub fn transaction_grouped<T, E, F>(&self, mut f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnMut(&mut Outbox<'_, '_>) -> Result<T, E> + Send + 'static,
    {
        self.shared
            .publisher
            .transaction_grouped(move |outbox| waking_peers(outbox, &mut f))
    }

    /// Re-arms a dead or failed delivery for a fresh round of attempts, due
    /// now, and wakes the scheduler to send it.
    pub fn retry_delivery(&self, id: &str) -> Result<DeliveryView, NotifyError> {
        let view = service::rearm(self.store(), id)?;
        let _ = self.shared.wake.send(Wake::Retry);
        Ok(view)
    }

    /// Stores a recurring schedule (see `schedules::create`) and wakes the
    /// scheduler, whose sleep its first run may now bound.
    pub fn create_schedule(&self, new: &NewSchedule) -> Result<Schedule, NotifyError> {
        let schedule = schedules::create(self.store(), self.registry(), new)?;
        let _ = self.shared.wake.send(Wake::Retry);
        Ok(schedule)
    }

    /// Snoozes one of a user's inbox rows (`service::snooze`) and wakes the
    /// scheduler if it would sleep past the snooze's end.
    pub fn snooze_inbox(&self, user_id: &str, id: i64, until: i64) -> Result<(), NotifyError> {
        service::snooze(self.store(), user_id, id, until)?;
        if self.shared.next_wake.misses(until) {
            let _ = self.shared.wake.send(Wake::Retry);
        }
        Ok(())
    }

    /// Re-arms every dead delivery; returns how many.
    pub fn retry_dead(&self) -> Result<usize, NotifyError> {
        let count = service::rearm_dead(self.store())?;
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
        // Every email it created was tried here; a failed one waits as a
        // retry, which any instance claims.
        if let Some(me) = self.shared.registered() {
            if let Err(e) = instance::retire(self.store(), me) {
                log::warn!("cannot retire this process's instance: {e}");
            }
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

    /// Registers this instance, starts the dispatcher, the mail senders,
    /// the scheduler and, on a shared database, the thread that hears the
    /// other instances, and re-drives everything a previous run left
    /// unfinished.
    pub fn start(&self, provider: Arc<dyn MailProvider>) -> Result<Running, NotifyError> {
        let shared = &self.shared;
        let me = shared.instance()?;
        let queue = shared.mail_queue.clone();
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let pacer = Arc::new(Pacer::new(shared.policy.rate_per_sec));
        scheduler::redrive(shared, &queue, me);

        let mut senders = Vec::new();
        for i in 0..shared.policy.sender_threads.max(1) {
            let ctx = SenderContext {
                provider: provider.clone(),
                from: shared.policy.from.clone(),
                queue: queue.clone(),
                outcomes: shared.bus.clone(),
                pacer: pacer.clone(),
                store: shared.publisher.store_arc(),
                mail_batch: shared.policy.mail_batch,
                instance: me,
                stop: stop_rx.clone(),
            };
            senders.push(threads::spawn(&format!("herald-mail-{i}"), move || {
                sender::run_sender(ctx)
            }));
        }
        let dispatcher = {
            let shared = self.shared.clone();
            let (queue, wake) = (queue.clone(), shared.wake.clone());
            threads::spawn("herald-dispatcher", move || {
                dispatcher::run(&shared, &queue, wake)
            })
        };
        let listeners = shared.listeners.start(
            &shared.publisher,
            listeners::Backoff {
                base: shared.policy.retry_base,
                cap: shared.policy.retry_cap,
            },
        );
        let scheduler = {
            let shared = self.shared.clone();
            let wake = shared.wake_rx.clone();
            threads::spawn("herald-scheduler", move || {
                scheduler::run(&shared, &queue, wake, me)
            })
        };
        let stop_peers = Arc::new(AtomicBool::new(false));
        let peers = peers::start(&self.shared, me, stop_peers.clone());
        let (stop_webhooks, webhooks_stop) = crossbeam_channel::bounded::<()>(0);
        let webhooks = webhooks::sender::start(
            shared.publisher.store_arc(),
            shared.policy.webhooks.clone(),
            me,
            webhooks_stop,
        );
        Ok(Running {
            notifier: self.clone(),
            me,
            stop_senders: Some(stop_tx),
            dispatcher: Some(dispatcher),
            scheduler: Some(scheduler),
            senders,
            listeners: Some(listeners),
            peers,
            stop_peers,
            stop_webhooks: Some(stop_webhooks),
            webhooks,
        })
    }
}

/// The running delivery machinery; `shutdown` stops it in order.
pub struct Running {
    notifier: Notifier,
    /// This instance's id, retired at shutdown.
    me: i64,
    /// Dropped to stop the senders (see `sender::SenderContext::stop`).
    stop_senders: Option<Sender<()>>,
    dispatcher: Option<JoinHandle<()>>,
    scheduler: Option<JoinHandle<()>>,
    senders: Vec<JoinHandle<()>>,
    listeners: Option<listeners::Threads>,
    peers: Option<JoinHandle<()>>,
    stop_peers: Arc<AtomicBool>,
    /// Dropped to stop the webhook senders, which share nothing with the
    /// mail senders.
    stop_webhooks: Option<Sender<()>>,
    webhooks: Vec<JoinHandle<()>>,
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
        threads::join_until(self.scheduler.take(), deadline);
        // A webhook in flight past the grace period is sent again by the
        // next start: its claim is released (SQLite) or runs out.
        self.stop_webhooks.take();
        for webhook in self.webhooks.drain(..) {
            threads::join_until(Some(webhook), deadline);
        }
        self.stop_senders.take();
        for sender in self.senders.drain(..) {
            threads::join_until(Some(sender), deadline);
        }
        let _ = self.notifier.shared.bus.send(BusMsg::Stop);
        threads::join_until(self.dispatcher.take(), deadline + Duration::from_secs(5));
        peers::stop(
            &self.notifier.shared,
            self.peers.take(),
            &self.stop_peers,
            deadline + Duration::from_secs(1),
        );
        // What this instance still holds is the others' to take at once.
        if let Err(e) = instance::retire(self.notifier.store(), self.me) {
            log::warn!("cannot retire this instance: {e}");
        }
    }
}

/// Runs `f`; events it enqueued due later wake every instance's scheduler
/// on commit: any of them may publish one when due, and the outbox claim
/// keeps it once.
fn waking_peers<T, E: From<StoreError>>(
    outbox: &mut Outbox<'_, '_>,
    f: &mut impl FnMut(&mut Outbox<'_, '_>) -> Result<T, E>,
) -> Result<T, E> {
    let value = f(outbox)?;
    if outbox.scheduled() {
        peers::wake_all(outbox.tx())?;
    }
    Ok(value)
}
