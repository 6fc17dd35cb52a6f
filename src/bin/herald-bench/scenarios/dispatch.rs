//! Dispatch through the library: events enqueued in transactions of
//! `--enqueue-batch`, each to an inbox row and an email to the in-process
//! `Counter`; notifications per second from the first enqueue until the last
//! email is accepted and the last inbox row stored. On PostgreSQL the
//! library's store is connected to the scenario's database on the server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::args;
use herald::notify::{DeliveryPolicy, Event, Notifier, Registry, Running, Templates};
use herald::store::{Store, Synchronous};
use herald::time::Clock;

use crate::databases::Engine;
use crate::events::role_changed;
use crate::fake_provider::{wait_for_emails, Counter};
use crate::report::progress;
use crate::seed::prepared_db;

pub fn run(engine: &Engine, events: usize, users: usize, batch: usize) -> Result<f64, String> {
    eprintln!(
        "dispatch: {events} events (inbox + email each) through the library, {batch} per \
         transaction, to an in-process provider, on {}",
        engine.name()
    );
    let db = engine.fresh("dispatch")?;
    drop(prepared_db(&db.database, users, 0)?);
    let store = Store::connect(&db.database, Synchronous::Normal, Clock::system())
        .map_err(|e| e.to_string())?;
    let store = Arc::new(store);
    let (notifier, counter, running) = start_notifier(&store)?;
    let started = Instant::now();
    for first in (0..events).step_by(batch) {
        let chunk: Vec<Event> = (first..(first + batch).min(events))
            .map(|i| role_changed(i, users))
            .collect();
        notifier
            .transaction(|outbox| chunk.iter().try_for_each(|e| outbox.enqueue(e).map(|_| ())))
            .map_err(|e| e.to_string())?;
        if first % 20_000 < batch {
            progress("enqueued", first, events, started);
        }
    }
    eprintln!();
    finish(&store, &counter, running, events, started, "dispatch")
}

/// The embedded registry's notifier on `store`, started with an in-process
/// provider that counts what it accepts.
pub(super) fn start_notifier(
    store: &Arc<Store>,
) -> Result<(Notifier, Arc<Counter>, Running), String> {
    let registry = Registry::embedded().map_err(|e| e.to_string())?;
    let templates = Templates::load(&registry, None).map_err(|e| e.to_string())?;
    let notifier = Notifier::new(
        store.clone(),
        registry,
        templates,
        DeliveryPolicy::default(),
    );
    let counter = Arc::new(Counter::default());
    let running = notifier.start(counter.clone()).map_err(|e| e.to_string())?;
    Ok((notifier, counter, running))
}

/// Waits for `notifications` emails and inbox rows, stops the notifier and
/// reports notifications/s since `started` under `label`.
pub(super) fn finish(
    store: &Store,
    counter: &Counter,
    running: Running,
    notifications: usize,
    started: Instant,
    label: &str,
) -> Result<f64, String> {
    wait_for_emails(&counter.accepted, notifications, started, 10)?;
    let inbox_rows = || -> Result<i64, String> {
        store
            .read(|c| c.query_one("SELECT COUNT(*) FROM notifications", args![], |r| r.get(0)))
            .map_err(|e| e.to_string())
    };
    while inbox_rows()? < notifications as i64 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!();
    running.shutdown(Duration::from_secs(10));
    let per_s = notifications as f64 / elapsed;
    eprintln!("  {label}: {per_s:.0} notifications/s (enqueue to last email accepted)");
    Ok(per_s)
}
