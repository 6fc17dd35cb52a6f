//! herald-bench: measures herald against SQLite's own ceiling on this
//! machine and prints the figures as one JSON object on the last line of
//! stdout (a human summary goes to stderr). Ratios against the raw insert
//! loop of the same run are what compare across machines. With
//! `--database-url` the same scenarios run on PostgreSQL.
//!
//! This file runs the scenarios the options ask for and assembles the JSON;
//! `scenarios/` measure, and the other modules are their tools: the fake
//! mail providers, the load client, the herald child process, where each
//! scenario's database lives (`databases`), the seeded databases and the
//! one module that names the database drivers (`db`).

mod client;
mod databases;
mod db;
mod events;
mod fake_provider;
mod options;
mod process;
mod report;
mod scenarios;
mod seed;

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use databases::Engine;
use options::{parse_opts, Opts};
use process::herald_binary;
use report::{ratio, round};
use scenarios::{dispatch, fanout, http, inbox, raw, two_instances};

fn main() {
    let opts = match parse_opts() {
        Ok(opts) => opts,
        Err(e) => {
            eprintln!("herald-bench: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&opts) {
        eprintln!("herald-bench: {e}");
        std::process::exit(1);
    }
}

fn run(opts: &Opts) -> Result<(), String> {
    let mut out = Map::new();
    out.insert("scenario".into(), json!(opts.scenario));
    out.insert("events".into(), json!(opts.events));
    out.insert("inbox_rows".into(), json!(opts.inbox_rows));
    out.insert("users".into(), json!(opts.users));
    out.insert("clients".into(), json!(opts.clients));
    out.insert("offered_rate".into(), json!(opts.rate));
    out.insert("enqueue_batch".into(), json!(opts.enqueue_batch));
    out.insert("http_batch".into(), json!(opts.http_batch));
    out.insert(
        "cores".into(),
        json!(std::thread::available_parallelism().map_or(1, |n| n.get())),
    );
    let all = opts.scenario == "all";
    let work = WorkDir::new()?;
    let engine = match &opts.database_url {
        Some(url) => Engine::Postgres(url.clone()),
        None => Engine::Sqlite(work.path().to_path_buf()),
    };
    out.insert("engine".into(), json!(engine.name()));
    if let Some(url) = &opts.database_url {
        let settings = db::server_settings(url)?;
        let shown: Vec<String> = settings.iter().map(|(n, v)| format!("{n} {v}")).collect();
        eprintln!("on PostgreSQL: {}", shown.join(", "));
        let settings: Map<String, Value> = settings
            .into_iter()
            .map(|(name, value)| (name, json!(value)))
            .collect();
        out.insert("postgres".into(), Value::Object(settings));
    }
    // The raw ceiling is SQLite's; on PostgreSQL there is nothing to pair
    // dispatch with but the SQLite run beside it.
    let sqlite = !engine.is_postgres();
    let raw = if sqlite && (all || opts.scenario == "raw" || opts.scenario == "dispatch") {
        let rows_per_s = raw::run(work.path(), opts.events, opts.users)?;
        out.insert("raw_rows_per_s".into(), json!(round(rows_per_s)));
        Some(rows_per_s)
    } else {
        None
    };
    if all || opts.scenario == "dispatch" {
        let per_s = dispatch::run(&engine, opts.events, opts.users, opts.enqueue_batch)?;
        out.insert("dispatch_notifications_per_s".into(), json!(round(per_s)));
        if let Some(raw) = raw {
            out.insert("dispatch_ratio_to_raw".into(), json!(ratio(per_s / raw)));
        }
    }
    if all || opts.scenario == "fanout" {
        let per_s = fanout::run(&engine, opts.subscribers)?;
        out.insert("fanout_notifications_per_s".into(), json!(round(per_s)));
    }
    if all || opts.scenario == "http" || opts.scenario == "http-load" {
        http::run(&engine, opts, &mut out)?;
    }
    if all || opts.scenario == "inbox" {
        inbox::run(&engine, opts, &mut out)?;
    }
    if (all && engine.is_postgres()) || opts.scenario == "two-instances" {
        two_instances::run(&engine, opts, &mut out)?;
    }
    if let Ok(meta) = std::fs::metadata(herald_binary()) {
        out.insert("binary_mb".into(), json!(ratio(meta.len() as f64 / 1e6)));
    }
    println!("{}", Value::Object(out));
    Ok(())
}

/// A scratch directory for the benchmark's databases, removed at the end.
struct WorkDir(PathBuf);

impl WorkDir {
    fn new() -> Result<WorkDir, String> {
        let dir = std::env::temp_dir().join(format!("herald-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(WorkDir(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
