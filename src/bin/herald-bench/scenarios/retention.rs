//! The http scenario's last phase, retention at work: a fresh server that
//! keeps finished work 5 s, its commit-to-inbox latency while the pruner
//! deletes, and the database's size as the load goes on: the SQLite file's,
//! or on PostgreSQL the server's `pg_database_size`, which only stops
//! growing where (auto)vacuum makes the pruned rows' space reusable.

use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::http::commit_to_inbox;
use crate::client::LoadClient;
use crate::databases::Engine;
use crate::db;
use crate::events::event_json;
use crate::fake_provider::{fake_resend, wait_for_emails};
use crate::options::Opts;
use crate::process::start_herald_with;
use crate::report::{percentile, ratio};
use crate::seed::prepared_db;

/// Retention at work: a fresh server keeping finished work 5 s. 20,000
/// events in bulk, then 1,000 events/s for 30 s while everything older
/// than 5 s is pruned: commit-to-inbox p99 while a prune runs, and the
/// database's size every 5 s (it should stop growing).
pub fn phase(
    engine: &Engine,
    users: usize,
    opts: &Opts,
    out: &mut Map<String, Value>,
) -> Result<(), String> {
    const BACKLOG: usize = 20_000;
    let rate = opts.rate;
    eprintln!("  retention: {BACKLOG} events, then {rate}/s for 30 s, everything kept 5 s");
    let db = engine.fresh("retention")?;
    drop(prepared_db(&db.database, users, 0)?);
    let mail = fake_resend()?;
    let keep = [
        ("HERALD_EMAIL_BODY_RETENTION", "5s"),
        ("HERALD_LOG_RETENTION", "5s"),
        ("HERALD_INBOX_RETENTION", "5s"),
    ];
    let herald = start_herald_with(&db.database, &mail.url, &keep)?;
    let store = db::watch(&db.database)?;
    let mut client = LoadClient::new(&herald.base);
    for start in (0..BACKLOG).step_by(500) {
        let events: Vec<String> = (start..start + 500).map(|i| event_json(i, users)).collect();
        let body = format!("{{\"events\":[{}]}}", events.join(","));
        if client.call("POST", "/v1/events/bulk", &herald.key, body.as_bytes()) != Some(202) {
            return Err("retention phase: a bulk request was refused".into());
        }
    }
    wait_for_emails(&mail.accepted, BACKLOG, Instant::now(), 2)?;
    std::thread::sleep(Duration::from_secs(5));
    // The file alone on SQLite (its WAL is bounded apart), the database on
    // PostgreSQL.
    let size_mb = || ratio(store.disk_usage().db as f64 / (1024.0 * 1024.0));
    let mut curve = vec![size_mb()];
    // The backlog is now past its retention: the pruner works through it
    // while this load runs.
    let lat = commit_to_inbox(&[&herald], &store, rate, rate * 5, BACKLOG, users)?;
    curve.push(size_mb());
    let p99 = percentile(&lat, 0.99);
    out.insert("commit_to_inbox_p99_ms_while_pruning".into(), json!(p99));
    for i in 0..5 {
        let first = BACKLOG + rate * 5 * (i + 1);
        commit_to_inbox(&[&herald], &store, rate, rate * 5, first, users)?;
        curve.push(size_mb());
    }
    eprintln!(
        "  retention: commit-to-inbox p99 {p99} ms while pruning; database every 5 s (MB): {curve:?}"
    );
    out.insert("retention_db_mb_every_5s".into(), json!(curve));
    Ok(())
}
