//! The server over HTTP, a herald child process with the fake Resend: events
//! one per request then in bulk from `--clients` connections (throughput,
//! time to deliver, herald's CPU per event), bytes stored per notification,
//! and commit-to-inbox latency at `--rate`; then the `stream`, `paced` and
//! `retention` phases, in that order. The load and latency phases take
//! several servers too, spreading requests round-robin over them, for the
//! two-instances scenario.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::args;
use herald::store::Store;
use serde_json::{json, Map, Value};

use super::{paced, retention, stream};
use crate::client::{metric, LoadClient};
use crate::databases::Engine;
use crate::db::{self, count};
use crate::events::{bulk_json, event_json};
use crate::fake_provider::{fake_resend, FakeResend};
use crate::options::Opts;
use crate::process::{cpu_secs, rss_kb, start_herald, Herald};
use crate::report::{percentile, progress, ratio, round};
use crate::seed::prepared_db;

pub fn run(engine: &Engine, opts: &Opts, out: &mut Map<String, Value>) -> Result<(), String> {
    let users = opts.users.min(1000);
    eprintln!(
        "http: {} events over HTTP from {} clients, one per request then {} per request, \
         {users} users, on {}",
        opts.events,
        opts.clients,
        opts.http_batch,
        engine.name()
    );
    let db = engine.fresh("http")?;
    drop(prepared_db(&db.database, users, 0)?);
    let mail = fake_resend()?;
    let herald = start_herald(&db.database, &mail.url)?;
    let pid = herald.child.id();
    std::thread::sleep(Duration::from_secs(2));
    if let Some(kb) = rss_kb(pid, "VmRSS:") {
        out.insert("idle_rss_mb".into(), json!(ratio(kb as f64 / 1024.0)));
    }
    let store = db::watch(&db.database)?;
    load_phases(&[&herald], &mail, &store, opts, users, "http", out)?;
    let sent_before = 2 * opts.events;

    if opts.scenario != "http-load" {
        storage_figures(&store, out)?;
    }

    let lat = commit_to_inbox(
        &[&herald],
        &store,
        opts.rate,
        opts.rate * 3,
        sent_before,
        users,
    )?;
    report_commit_to_inbox(out, "commit_to_inbox", opts.rate, &lat);
    if opts.scenario == "http-load" {
        return Ok(());
    }
    stream::phase(&herald, out)?;
    if let Some(kb) = rss_kb(pid, "VmHWM:") {
        out.insert("peak_rss_mb".into(), json!(ratio(kb as f64 / 1024.0)));
    }
    drop(store);
    drop(herald);
    drop(db);
    paced::phase(engine, users, out)?;
    retention::phase(engine, users, opts, out)
}

/// The single then the bulk load phase on `heralds`, reported as
/// `{name}_events_per_s` (accepted), `{name}_drain_s` (from the first
/// request until every event's inbox row and email were written and sent),
/// `{name}_delivered_per_s` (events over that time),
/// `{name}_cpu_us_per_event` and their `{name}_bulk_*` twins.
pub(super) fn load_phases(
    heralds: &[&Herald],
    mail: &FakeResend,
    store: &Store,
    opts: &Opts,
    users: usize,
    name: &str,
    out: &mut Map<String, Value>,
) -> Result<(), String> {
    // herald's own CPU per event delivered (parsing, committing,
    // dispatching and sending it), all its processes together: steadier
    // than throughput on a shared machine, and what an A/B comparison of a
    // change should look at.
    let cpu = || -> Option<f64> { heralds.iter().map(|h| cpu_secs(h.child.id())).sum() };
    let cpu_us_per_event = |before: Option<f64>| {
        let used = cpu().zip(before).map(|(after, before)| after - before);
        json!(used.map(|s| round(s * 1e6 / opts.events as f64)))
    };
    // Group commits of the single-event phase: how many requests' writes
    // shared one transaction, on average.
    let groups = || {
        let groups = metric(heralds, "herald_write_groups_total")?;
        Some((groups, metric(heralds, "herald_write_group_works_total")?))
    };
    for (batch, before, phase) in [
        (1, 0, name.to_string()),
        (opts.http_batch, opts.events, format!("{name}_bulk")),
    ] {
        let cpu_before = cpu();
        let groups_before = groups();
        let (per_s, drain_s) = load_phase(heralds, mail, store, opts, batch, before, users)?;
        if batch == 1 {
            if let Some(((g0, w0), (g1, w1))) = groups_before.zip(groups()) {
                let mean = (w1 - w0) / (g1 - g0).max(1.0);
                out.insert(format!("{phase}_write_group_mean"), json!(ratio(mean)));
            }
        }
        out.insert(format!("{phase}_events_per_s"), json!(round(per_s)));
        out.insert(format!("{phase}_drain_s"), json!(ratio(drain_s)));
        let delivered_per_s = opts.events as f64 / drain_s;
        out.insert(
            format!("{phase}_delivered_per_s"),
            json!(round(delivered_per_s)),
        );
        out.insert(
            format!("{phase}_cpu_us_per_event"),
            cpu_us_per_event(cpu_before),
        );
    }
    Ok(())
}

/// Records commit-to-inbox latencies as `{name}_samples`, `{name}_p50_ms`
/// and `{name}_p99_ms`.
pub(super) fn report_commit_to_inbox(
    out: &mut Map<String, Value>,
    name: &str,
    rate: usize,
    lat: &[f64],
) {
    let (p50, p99) = (percentile(lat, 0.5), percentile(lat, 0.99));
    out.insert(format!("{name}_samples"), json!(lat.len()));
    out.insert(format!("{name}_p50_ms"), json!(p50));
    out.insert(format!("{name}_p99_ms"), json!(p99));
    eprintln!(
        "  commit-to-inbox at {rate}/s: p50 {p50} ms, p99 {p99} ms ({} samples, millisecond resolution)",
        lat.len()
    );
}

/// `opts.events` events over HTTP from `opts.clients` connections, `batch`
/// per request (1: `POST /v1/events`, more: `POST /v1/events/bulk`),
/// request after request round-robin over `heralds`, then waits until the
/// fake provider accepted every email and herald recorded it sent.
/// `before` events were sent by earlier phases. Returns events/s accepted
/// and the seconds until everything was delivered.
fn load_phase(
    heralds: &[&Herald],
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
    let servers: Vec<(String, String)> = heralds
        .iter()
        .map(|h| (h.base.clone(), h.key.clone()))
        .collect();
    let clients: Vec<_> = (0..opts.clients)
        .map(|_| {
            let (next, errors, servers) = (next.clone(), errors.clone(), servers.clone());
            std::thread::spawn(move || {
                // A keep-alive connection to each server.
                let mut connections: Vec<(LoadClient, String)> = servers
                    .iter()
                    .map(|(base, key)| (LoadClient::new(base), key.clone()))
                    .collect();
                loop {
                    let i = next.fetch_add(batch, Ordering::Relaxed);
                    if i >= total {
                        return;
                    }
                    let n = connections.len();
                    let (client, key) = &mut connections[(i / batch) % n];
                    let (first, end) = (before + i, before + (i + batch).min(total));
                    let (path, body) = match batch {
                        1 => ("/v1/events", event_json(first, users)),
                        _ => ("/v1/events/bulk", bulk_json(first, end, users)),
                    };
                    if client.call("POST", path, key, body.as_bytes()) != Some(202) {
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
    eprintln!(
        "  {per_s:.0} events/s accepted, everything delivered in {drain_s:.2} s ({:.0} events/s)",
        total as f64 / drain_s
    );
    Ok((per_s, drain_s))
}

/// Commit-to-inbox latency at `rate` events/s for `total` events, posted
/// round-robin over `heralds`, from the stored timestamps of each outbox
/// row and its inbox row (the machine's one clock).
pub(super) fn commit_to_inbox(
    heralds: &[&Herald],
    store: &Store,
    rate: usize,
    total: usize,
    first_event: usize,
    users: usize,
) -> Result<Vec<f64>, String> {
    let first_seq = count(store, "SELECT COALESCE(MAX(seq), 0) FROM outbox");
    let mut clients: Vec<(LoadClient, &str)> = heralds
        .iter()
        .map(|h| (LoadClient::new(&h.base), h.key.as_str()))
        .collect();
    let paced = Instant::now();
    for i in 0..total {
        let due = Duration::from_secs_f64(i as f64 / rate as f64);
        if let Some(wait) = due.checked_sub(paced.elapsed()) {
            std::thread::sleep(wait);
        }
        let event = event_json(first_event + i, users);
        let n = clients.len();
        let (client, key) = &mut clients[i % n];
        let _ = client.call("POST", "/v1/events", key, event.as_bytes());
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
/// each), and what each table and index takes of it (`db::storage`).
fn storage_figures(store: &Store, out: &mut Map<String, Value>) -> Result<(), String> {
    let notifications = count(store, "SELECT COUNT(*) FROM notifications").max(1) as f64;
    let (used, parts) = db::storage(store)?;
    let used = used as f64;
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
