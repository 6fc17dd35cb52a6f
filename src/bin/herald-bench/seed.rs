//! Databases the scenarios start from, filled through herald's own `Store`:
//! users and outbox rows to hang inbox rows on, and inbox rows inserted by
//! herald's inbox insert in transactions of 1,000.

use std::path::Path;
use std::time::Instant;

use herald::args;
use herald::notify::inbox;
use herald::notify::templates::InboxContent;
use herald::store::{Store, StoreError, Synchronous};

use crate::report::progress;

/// A database with herald's schema, `users` users and the outbox rows that
/// inbox-shaped rows reference.
pub fn prepared_db(path: &Path, users: usize, events: usize) -> Result<Store, String> {
    let store = Store::open(path, Synchronous::Normal).map_err(|e| e.to_string())?;
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

/// Inserts `rows` inbox rows over `users` users in transactions of 1,000,
/// through herald's own inbox insert (the seam's one writer of inbox rows).
pub fn insert_inbox_rows(
    store: &Store,
    rows: usize,
    users: usize,
    label: &str,
) -> Result<f64, String> {
    let content = InboxContent {
        title: "Your role in Acme is now admin".into(),
        body: "Alice changed your role in Acme from member to admin.".into(),
        actions: Vec::new(),
    };
    let payload = r#"{"newRole":"admin","before":"member","orgName":"Acme","actorName":"Alice"}"#;
    let started = Instant::now();
    let mut done = 0;
    while done < rows {
        store
            .write(|tx| {
                for i in done..(done + 1000).min(rows) {
                    let seq = (i / users + 1) as i64;
                    let user = format!("u{}", i % users);
                    inbox::insert(tx, seq, &user, "bench", &content, payload)?;
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
