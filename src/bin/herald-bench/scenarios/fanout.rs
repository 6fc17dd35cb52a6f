//! Topic fan-out through the library: one event to a topic of
//! `--subscribers` users (default 20,000), each to an inbox row and an
//! email to the in-process `Counter`; notifications per second from the
//! enqueue until the last email is accepted and the last inbox row stored.
//! The pages are the scheduler's, 1000 subscribers per transaction.

use std::sync::Arc;
use std::time::Instant;

use herald::args;
use herald::notify::{Event, Recipient};
use herald::store::{Store, Synchronous};
use herald::time::Clock;
use serde_json::json;

use super::dispatch::{finish, start_notifier};
use crate::databases::Engine;
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
    let (notifier, counter, running) = start_notifier(&store)?;
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
    finish(&store, &counter, running, subscribers, started, "fanout")
}
