//! Inbox reads over HTTP: a database filled with `--inbox-rows`
//! notifications, served by a herald child process, then the inbox page and
//! the unseen count read by one client (latency) and by four (throughput).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{json, Map, Value};

use crate::client::{issue_token, new_agent, LoadClient};
use crate::databases::Engine;
use crate::db;
use crate::fake_provider::fake_resend;
use crate::options::Opts;
use crate::process::start_herald;
use crate::report::{percentile, ratio, round};
use crate::seed::{fill_inbox, prepared_db};

/// Read latency percentiles and throughput of one measured run.
struct Reads {
    p50: f64,
    p99: f64,
    per_s: f64,
}

pub fn run(engine: &Engine, opts: &Opts, out: &mut Map<String, Value>) -> Result<(), String> {
    let users = opts.users;
    eprintln!(
        "inbox: {} notifications over {users} users, then page and unseen-count reads, on {}",
        opts.inbox_rows,
        engine.name()
    );
    let db = engine.fresh("inbox")?;
    {
        let store = prepared_db(&db.database, users, opts.inbox_rows)?;
        let per_s = fill_inbox(&store, &db.database, opts.inbox_rows, users, "filled")?;
        out.insert("inbox_seed_rows_per_s".into(), json!(round(per_s)));
        drop(store);
        db::settle(&db.database)?;
    }
    let mail = fake_resend()?;
    let herald = start_herald(&db.database, &mail.url)?;
    let agent = new_agent();
    let sample_users = 200.min(users);
    let mut tokens = Vec::new();
    for u in 0..sample_users {
        let user = (u * users / sample_users).min(users - 1);
        tokens.push(issue_token(&agent, &herald, &format!("u{user}"))?);
    }
    // Latency is read with one client, so a sample is one request's own
    // time and not the queue in front of it (on two cores, four busy
    // clients mostly measure each other); throughput with four clients.
    let measure = |path: &str, label: &str, clients: usize| -> Result<Reads, String> {
        let requests = 4000;
        let lat = Arc::new(Mutex::new(Vec::with_capacity(requests)));
        let started = Instant::now();
        let threads: Vec<_> = (0..clients)
            .map(|t| {
                let (lat, tokens, base, path) = (
                    lat.clone(),
                    tokens.clone(),
                    herald.base.clone(),
                    path.to_string(),
                );
                std::thread::spawn(move || {
                    let mut client = LoadClient::new(&base);
                    for i in (t..requests).step_by(clients) {
                        let token = &tokens[i % tokens.len()];
                        let t0 = Instant::now();
                        let ok = client.call("GET", &path, token, b"") == Some(200);
                        let ms = t0.elapsed().as_secs_f64() * 1000.0;
                        if ok {
                            lat.lock().unwrap_or_else(|p| p.into_inner()).push(ms);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            let _ = t.join();
        }
        let per_s = requests as f64 / started.elapsed().as_secs_f64();
        let mut lat = lat.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if lat.len() < requests {
            return Err(format!(
                "{label}: {} of {requests} requests failed",
                requests - lat.len()
            ));
        }
        lat.sort_by(f64::total_cmp);
        let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
        eprintln!(
            "  {label}, {clients} client(s): p50 {p50:.3} ms, p99 {p99:.3} ms, {per_s:.0} requests/s"
        );
        Ok(Reads { p50, p99, per_s })
    };
    for (path, name) in [
        ("/v1/inbox?limit=20", "inbox_list"),
        ("/v1/inbox/unseen-count", "unseen_count"),
    ] {
        measure(path, "warm-up", 4)?;
        let one = measure(path, name, 1)?;
        let four = measure(path, name, 4)?;
        out.insert(format!("{name}_p50_ms"), json!(ratio(one.p50)));
        out.insert(format!("{name}_p99_ms"), json!(ratio(one.p99)));
        out.insert(format!("{name}_requests_per_s"), json!(round(four.per_s)));
        out.insert(format!("{name}_4_clients_p99_ms"), json!(ratio(four.p99)));
    }
    Ok(())
}
