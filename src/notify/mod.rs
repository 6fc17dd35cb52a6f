//! The notification seam. Call sites enqueue events inside their own write
//! transaction (`Notifier::transaction` or `Notifier::enqueue`); only after
//! COMMIT is the outbox id pushed on the bus. The dispatcher thread turns
//! outbox rows into inbox rows and email deliveries, the delivery engine
//! sends them, and the scheduler re-drives retries and stale rows.
//!
//! The folder (this file only declares and re-exports; no two files import
//! each other, even through others, which tests/it/architecture.rs checks):
//! - `notifier`: the `Notifier` handle and `Running`, which start and stop
//!   the threads; `shared`: what those threads share; `threads`: naming,
//!   starting and joining them.
//! - `dispatcher`: writes inbox rows, email deliveries and send outcomes
//!   (the senders write only the batches they merge); `scheduler`:
//!   retries, digests, sweeps, retention passes; `listeners`: domain-event
//!   listener threads.
//! - `publisher`: validating and enqueuing events in the caller's
//!   transaction (`Outbox`), publishing after COMMIT; `bus`: the in-process
//!   messages.
//! - `delivery/`: the email delivery engine (deliveries table, retry policy,
//!   sender threads, mail queue, pacer, operator views, `DeliveryPolicy`).
//! - `inbox`, `outbox`, `digest`, `policy` (dedup and preferences applied),
//!   `throttle`, `preferences`, `retention`, `stats`: the tables, each
//!   owning its SQL; `schedules`: recurring schedules (table, operations,
//!   the scheduler's runs), with `recurrence` (their rules and
//!   occurrences, pure);
//!   `event_view` and `service`: what the API and CLI read and change.
//! - `event`, `registry`, `templates`, `links`: what an event is and how it
//!   renders; `locale` (BCP 47 tags and their fallback chain) and
//!   `translations` (an event rendered once per locale its recipients
//!   read); `quiet_hours`: a user's time zone and quiet-hours window;
//!   `error`: `NotifyError`.
//!
//! Invariants: inbox rows are inserted only by `inbox`; the mail provider is
//! called only by `delivery::sender`, never inside a transaction.

mod bus;
mod deliver;
pub mod delivery;
pub mod digest;
mod dispatcher;
mod error;
pub mod event;
pub mod event_view;
pub mod inbox;
mod instance;
pub mod links;
pub mod listeners;
pub mod locale;
mod notifier;
pub mod outbox;
mod peers;
pub mod policy;
pub mod preferences;
mod publisher;
pub mod quiet_hours;
pub mod recurrence;
pub mod registry;
pub mod retention;
mod scheduler;
pub mod schedules;
pub mod service;
mod shared;
pub mod stats;
pub mod templates;
mod threads;
pub mod throttle;
mod topic_fanout;
pub mod topics;
pub mod translations;
pub mod webhooks;

pub use delivery::policy::DeliveryPolicy;
pub use error::NotifyError;
pub use event::{Event, Recipient};
pub use inbox::InboxCommitted;
pub use listeners::{DomainEvent, Listener, ListenerError, ListenerHooks};
pub use notifier::{Notifier, Running};
pub use outbox::Enqueued;
pub use publisher::Outbox;
pub use registry::{Channel, Registry};
pub use scheduler::SWEEP_EVERY_SECS;
pub use templates::Templates;
