//! Topic fan-out through the library: one event to a topic of
//! `--subscribers` users (default 20,000), each to an inbox row and an
//! email to the in-process `Counter`; notifications per second from the
//! enqueue until the last email is accepted and the last inbox row stored.
//! The pages are the scheduler's, 1000 subscribers per transaction.

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::args;
use herald::notify::{DeliveryPolicy, Event, Notifier, Recipient, Registry, Templates};
use herald::store::{Store, Synchronous};
use herald::time::Clock;
use serde_json::json;

use crate::databases::Engine;
use crate::fake_provider::{wait_for_emails, Counter};
use crate::seed::prepared_db;

pub fn run(engine: &Engine, subscribers: usize) -> Result<f64, String> {
    eprintln!(
        "fanout: one event to a topic of {subscribers} subscribers (inbox + email each), on {}",
        engine.name()
    );
    let db = engine.fresh("fanout")?;
    drop(prepared_db(&db.database, subscribers, 0)?);
    let store = Store::connect(&db.database, Synchronous::Normal, Clock::system())
        .map_err(|e| e.to_string())?;
    let store = Arc::new(store);
    store
        .write(|tx| {
            tx.execute(
                "INSERT INTO topics (key, name, created_at, updated_at) VALUES ('bench', '', 0, 0)",
                args![],
            )?;
            tx.execute(
                "INSERT INTO topic_subscribers (topic_key, user_id, created_at)
                 SELECT 'bench', id, 0 FROM users",
                args![],
            )
        })
        .map_err(|e| e.to_string())?;
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
    let started = Instant::now();
    let mut event = Event::new(
        "org.member.role_changed",
        vec![Recipient::Topic {
            topic: "bench".into(),
        }],
        json!({"newRole": "admin", "before": "member", "orgName": "Acme", "actorName": "Alice"}),
    );
    event.subject_id = Some("bench_fanout".into());
    notifier
        .transaction(|outbox| outbox.enqueue(&event).map(|_| ()))
        .map_err(|e| e.to_string())?;
    wait_for_emails(&counter.accepted, subscribers, started, 10)?;
    let inbox = |s: &Store| -> Result<i64, String> {
        s.read(|c| c.query_one("SELECT COUNT(*) FROM notifications", args![], |r| r.get(0)))
            .map_err(|e| e.to_string())
    };
    while inbox(&store)? < subscribers as i64 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!();
    running.shutdown(Duration::from_secs(10));
    let per_s = subscribers as f64 / elapsed;
    eprintln!("  fanout: {per_s:.0} notifications/s (enqueue to last email accepted)");
    Ok(per_s)
}
