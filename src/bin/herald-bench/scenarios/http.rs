//! The server over HTTP, a herald child process with the fake Resend: events
//! one per request then in bulk from `--clients` connections (throughput,
//! time to deliver, herald's CPU per event), bytes stored per notification,
//! and commit-to-inbox latency at `--rate`; then the `stream`, `paced` and
//! `retention` phases, in that order.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::args;
use herald::store::Store;
use serde_json::{json, Map, Value};

use super::{paced, retention, stream};
use crate::client::LoadClient;
use crate::db::{self, count};
use crate::events::{bulk_json, event_json};
use crate::fake_provider::{fake_resend, FakeResend};
use crate::options::Opts;
use crate::process::{cpu_secs, rss_kb, start_herald, Herald};
use crate::report::{percentile, progress, ratio, round};
use crate::seed::prepared_db;

pub fn run(dir: &Path, opts: &Opts, out: &mut Map<String, Value>) -> Result<(), String> {
    let users = opts.users.min(1000);
    eprintln!(
        "http: {} events over HTTP from {} clients, one per request then {} per request, {users} users",
        opts.events, opts.clients, opts.http_batch
    );
    let db = dir.join("http.db");
    drop(prepared_db(&db, users, 0)?);
    let mail = fake_resend()?;
    let herald = start_herald(&db, &mail.url)?;
    let pid = herald.child.id();
    std::thread::sleep(Duration::from_secs(2));
    if let Some(kb) = rss_kb(pid, "VmRSS:") {
        out.insert("idle_rss_mb".into(), json!(ratio(kb as f64 / 1024.0)));
    }
    let store = db::watch(&db)?;

    // herald's own CPU per event delivered (parsing, committing,
    // dispatching and sending it): steadier than throughput on a shared
    // machine, and what an A/B comparison of a change should look at.
    let cpu_us_per_event = |before: Option<f64>| {
        let used = cpu_secs(pid)
            .zip(before)
            .map(|(after, before)| after - before);
        json!(used.map(|s| round(s * 1e6 / opts.events as f64)))
    };
    let cpu = cpu_secs(pid);
    let (per_s, drain_s) = load_phase(&herald, &mail, &store, opts, 1, 0, users)?;
    out.insert("http_events_per_s".into(), json!(round(per_s)));
    out.insert("http_drain_s".into(), json!(ratio(drain_s)));
    out.insert("http_cpu_us_per_event".into(), cpu_us_per_event(cpu));
    let cpu = cpu_secs(pid);
    let (per_s, drain_s) = load_phase(
        &herald,
        &mail,
        &store,
        opts,
        opts.http_batch,
        opts.events,
        users,
    )?;
    out.insert("http_bulk_events_per_s".into(), json!(round(per_s)));
    out.insert("http_bulk_drain_s".into(), json!(ratio(drain_s)));
    out.insert("http_bulk_cpu_us_per_event".into(), cpu_us_per_event(cpu));
    let sent_before = 2 * opts.events;

    storage_figures(&store, out)?;

    let lat = commit_to_inbox(
        &herald,
        &store,
        opts.rate,
        opts.rate * 3,
        sent_before,
        users,
    )?;
    out.insert("commit_to_inbox_samples".into(), json!(lat.len()));
    out.insert(
        "commit_to_inbox_p50_ms".into(),
        json!(percentile(&lat, 0.5)),
    );
    out.insert(
        "commit_to_inbox_p99_ms".into(),
        json!(percentile(&lat, 0.99)),
    );
    eprintln!(
        "  commit-to-inbox at {}/s: p50 {} ms, p99 {} ms ({} samples, millisecond resolution)",
        opts.rate,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.len()
    );
    stream::phase(&herald, out)?;
    if let Some(kb) = rss_kb(pid, "VmHWM:") {
        out.insert("peak_rss_mb".into(), json!(ratio(kb as f64 / 1024.0)));
    }
    drop(herald);
    paced::phase(dir, users, out)?;
    retention::phase(dir, users, opts, out)
}

/// `opts.events` events over HTTP from `opts.clients` connections, `batch`
/// per request (1: `POST /v1/events`, more: `POST /v1/events/bulk`), then
/// waits until the fake provider accepted every email and herald recorded
/// it sent. `before` events were sent by earlier phases. Returns events/s
/// accepted and the seconds until everything was delivered.
fn load_phase(
    herald: &Herald,
    mail: &FakeResend,
    store: &Store,
    opts: &Opts,
    batch: usize,
    before: usize,
    users: usize,
) -> Result<(f64, f64), String> {
    let total = opts.events;
    eprintln!("  {total} events, {batch} per request:");
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let clients: Vec<_> = (0..opts.clients)
        .map(|_| {
            let (next, errors, base, key) = (
                next.clone(),
                errors.clone(),
                herald.base.clone(),
                herald.key.clone(),
            );
            std::thread::spawn(move || {
                let mut client = LoadClient::new(&base);
                loop {
                    let i = next.fetch_add(batch, Ordering::Relaxed);
                    if i >= total {
                        return;
                    }
                    let (first, end) = (before + i, before + (i + batch).min(total));
                    let (path, body) = match batch {
                        1 => ("/v1/events", event_json(first, users)),
                        _ => ("/v1/events/bulk", bulk_json(first, end, users)),
                    };
                    if client.call("POST", path, &key, body.as_bytes()) != Some(202) {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    while !clients.iter().all(|c| c.is_finished()) {
        progress(
            "accepted",
            next.load(Ordering::Relaxed).min(total),
            total,
            started,
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for c in clients {
        let _ = c.join();
    }
    let accept_s = started.elapsed().as_secs_f64();
    eprintln!();
    if errors.load(Ordering::Relaxed) > 0 {
        return Err(format!(
            "{} requests failed",
            errors.load(Ordering::Relaxed)
        ));
    }
    let delivered = (before + total) as i64;
    while (mail.accepted.load(Ordering::Relaxed) as i64) < delivered
        || count(
            store,
            "SELECT COUNT(*) FROM deliveries WHERE status = 'sent'",
        ) < delivered
    {
        if started.elapsed() > Duration::from_secs(900) {
            return Err("http drain did not finish within 15 minutes".into());
        }
        progress(
            "emails accepted",
            mail.accepted.load(Ordering::Relaxed) - before,
            total,
            started,
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let drain_s = started.elapsed().as_secs_f64();
    eprintln!();
    let per_s = total as f64 / accept_s;
    eprintln!("  {per_s:.0} events/s accepted, everything delivered in {drain_s:.2} s");
    Ok((per_s, drain_s))
}

/// Commit-to-inbox latency at `rate` events/s for `total` events, from the
/// stored timestamps of each outbox row and its inbox row (same clock).
pub(super) fn commit_to_inbox(
    herald: &Herald,
    store: &Store,
    rate: usize,
    total: usize,
    first_event: usize,
    users: usize,
) -> Result<Vec<f64>, String> {
    let first_seq = count(store, "SELECT COALESCE(MAX(seq), 0) FROM outbox");
    let mut client = LoadClient::new(&herald.base);
    let paced = Instant::now();
    for i in 0..total {
        let due = Duration::from_secs_f64(i as f64 / rate as f64);
        if let Some(wait) = due.checked_sub(paced.elapsed()) {
            std::thread::sleep(wait);
        }
        let event = event_json(first_event + i, users);
        let _ = client.call("POST", "/v1/events", &herald.key, event.as_bytes());
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut lat: Vec<f64> = store
        .read(|c| {
            c.query_all(
                "SELECT n.created_at - o.created_at FROM notifications n JOIN outbox o ON o.seq = n.event_seq
                 WHERE o.seq > ?1",
                args![first_seq],
                |r| r.get::<Option<i64>>(0),
            )
        })
        .map_err(|e| e.to_string())?
        .into_iter()
        .flatten()
        .map(|ms| ms as f64)
        .collect();
    lat.sort_by(f64::total_cmp);
    Ok(lat)
}

/// Bytes the database uses per notification (an inbox row and an email
/// each), and what each table and index takes of it (SQLite's dbstat).
fn storage_figures(store: &Store, out: &mut Map<String, Value>) -> Result<(), String> {
    let notifications = count(store, "SELECT COUNT(*) FROM notifications").max(1) as f64;
    let used = count(
        store,
        "SELECT (page_count - freelist_count) * page_size
         FROM pragma_page_count, pragma_freelist_count, pragma_page_size",
    ) as f64;
    let parts: Vec<(String, i64)> = store
        .read(|c| {
            c.query_all(
                "SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC LIMIT 12",
                args![],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })
        .map_err(|e| e.to_string())?;
    let per = |bytes: f64| round(bytes / notifications);
    out.insert("db_bytes_per_notification".into(), json!(per(used)));
    let by_table: Map<String, Value> = parts
        .iter()
        .map(|(name, bytes)| (name.clone(), json!(per(*bytes as f64))))
        .collect();
    eprintln!(
        "  storage: {} bytes per notification; {}",
        per(used),
        parts
            .iter()
            .map(|(name, bytes)| format!("{name} {}", per(*bytes as f64)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    out.insert(
        "db_bytes_per_notification_by_table".into(),
        Value::Object(by_table),
    );
    Ok(())
}
