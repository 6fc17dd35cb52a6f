//! Databases the scenarios start from, filled through herald's own `Store`:
//! users and outbox rows to hang inbox rows on, and inbox rows: inserted by
//! herald's inbox insert in transactions of 1,000 on SQLite, loaded with
//! COPY on PostgreSQL (`db::copy_inbox_rows`).

use std::time::Instant;

use herald::args;
use herald::notify::inbox;
use herald::notify::templates::InboxContent;
use herald::store::{Database, Store, StoreError, Synchronous};
use herald::time::Clock;

use crate::db::{self, BODY, PAYLOAD, TITLE};
use crate::report::progress;

/// A database with herald's schema, `users` users and the outbox rows that
/// inbox-shaped rows reference.
pub fn prepared_db(database: &Database, users: usize, events: usize) -> Result<Store, String> {
    let store = Store::connect(database, Synchronous::Normal, Clock::system())
        .map_err(|e| format!("{database}: {e}"))?;
    store
        .write(|tx| {
            for u in 0..users {
                tx.execute(
                    "INSERT INTO users (id, email, name, created_at, updated_at)
                     VALUES (?1, ?2, ?1, 0, 0)",
                    args![format!("u{u}"), format!("u{u}@bench.test")],
                )?;
            }
            for seq in 1..=events.div_ceil(users) {
                tx.execute(
                    "INSERT INTO outbox (seq, id, type, body, status, created_at)
                     VALUES (?1, ?2, 'bench', '{}', 'dispatched', 0)",
                    args![seq, format!("evt_bench{seq}")],
                )?;
            }
            Ok::<_, StoreError>(())
        })
        .map_err(|e| e.to_string())?;
    Ok(store)
}

/// Fills `store` (on `database`) with `rows` inbox rows over `users` users;
/// rows per second.
pub fn fill_inbox(
    store: &Store,
    database: &Database,
    rows: usize,
    users: usize,
    label: &str,
) -> Result<f64, String> {
    match database {
        Database::File(_) => insert_inbox_rows(store, rows, users, label),
        Database::Postgres(url) => db::copy_inbox_rows(url, rows, users, label),
    }
}

/// Inserts `rows` inbox rows over `users` users in transactions of 1,000,
/// through herald's own inbox insert (the seam's one writer of inbox rows).
fn insert_inbox_rows(store: &Store, rows: usize, users: usize, label: &str) -> Result<f64, String> {
    let content = InboxContent {
        title: TITLE.into(),
        body: BODY.into(),
        actions: Vec::new(),
    };
    let started = Instant::now();
    let mut done = 0;
    while done < rows {
        store
            .write(|tx| {
                for i in done..(done + 1000).min(rows) {
                    let seq = (i / users + 1) as i64;
                    let user = format!("u{}", i % users);
                    inbox::insert(tx, seq, &user, "bench", &content, PAYLOAD)?;
                }
                Ok::<_, StoreError>(())
            })
            .map_err(|e| e.to_string())?;
        done = (done + 1000).min(rows);
        if done % 50_000 == 0 || done == rows {
            progress(label, done, rows, started);
        }
    }
    eprintln!();
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}
