//! The command line: the flags, their defaults and limits, and the usage
//! text `--help` prints. Parsing only; what each flag drives lives in the
//! scenarios.

const USAGE: &str = "\
herald-bench: herald's throughput and latency against a raw SQLite insert loop

usage: herald-bench [--scenario raw|dispatch|fanout|http|http-load|inbox|two-instances|all]
                    [--database-url postgres://...] [--events N]
                    [--inbox-rows N] [--users N] [--clients N] [--rate N]

  --scenario S     what to measure (default all); two-instances runs only
                   on PostgreSQL, raw only on SQLite; http-load is the http
                   scenario's single and bulk phases and commit-to-inbox
                   only, to compare two builds quickly
  --events N       events for raw, dispatch, http and two-instances (default 100000)
  --inbox-rows N   notifications in the inbox scenario (default 1000000)
  --users N        distinct recipients (default 10000)
  --subscribers N  the topic's subscribers in the fanout scenario (default 20000)
  --clients N      concurrent HTTP clients (default 8)
  --rate N         offered load for the commit-to-inbox latency phase, events/s (default 1000)
  --enqueue-batch N  events per enqueuing transaction in the dispatch scenario (default 100;
                   1 measures one commit per event)
  --http-batch N   events per request in the http scenario's bulk phase
                   (POST /v1/events/bulk; default 100); its first phase posts
                   one event per request (POST /v1/events; with
                   http_write_group_mean, the requests per group commit), and its last
                   (paced_emails_per_s) sends 2,000 emails from a fresh server
                   held to 2 mail requests a second, Resend's default limit,
                   then 1,000 single events at 100 a second
                   (paced_trickle_emails_per_s, paced_trickle_lag_s), then
                   500 events of two recipients at 50 a second
                   (paced_pairs_emails_per_s, paced_pairs_lag_s); after the
                   bulk phase it reports the bytes stored per notification
                   (db_bytes_per_notification, by table), and last, on a
                   fresh server keeping everything 5 s, commit-to-inbox while
                   the pruner works (commit_to_inbox_p99_ms_while_pruning)
                   and the database's size every 5 s under 1,000 events/s
                   (retention_db_mb_every_5s)
  --database-url URL  run on PostgreSQL instead of SQLite files: each
                   scenario, and each phase that starts a fresh server, on
                   a database of its own created on the server URL names
                   (CREATE DATABASE: its user needs that right) and dropped
                   afterwards (a run killed half-way leaves its
                   herald_bench_<pid>_* databases behind). `all` is then
                   dispatch, http, inbox and two-instances; raw, a bare
                   SQLite insert loop (SQLite's own ceiling), runs on
                   SQLite only. What SQLite reports of its file comes from
                   the server instead: bytes per notification from each
                   table's and index's size, the retention curve from
                   pg_database_size.

The two-instances scenario (PostgreSQL only) starts two herald processes on
one database, both sending to one fake provider, and runs the http
scenario's single and bulk phases with the requests spread round-robin over
both, then commit-to-inbox at --rate, round-robin too (two_instances_*).
Each load phase reports events/s accepted (*_events_per_s) and delivered,
every inbox row written and every email sent (*_delivered_per_s).

The http, inbox and two-instances scenarios start the release `herald` binary
found next to this one (cargo build --release first). The last stdout line is JSON.";

pub struct Opts {
    pub scenario: String,
    pub events: usize,
    pub inbox_rows: usize,
    pub users: usize,
    pub subscribers: usize,
    pub clients: usize,
    pub rate: usize,
    pub enqueue_batch: usize,
    pub http_batch: usize,
    /// `--database-url`: the PostgreSQL server to create databases on.
    pub database_url: Option<String>,
}

pub fn parse_opts() -> Result<Opts, String> {
    let mut opts = Opts {
        scenario: "all".into(),
        events: 100_000,
        inbox_rows: 1_000_000,
        users: 10_000,
        subscribers: 20_000,
        clients: 8,
        rate: 1000,
        enqueue_batch: 100,
        http_batch: 100,
        database_url: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<usize>()
                .map_err(|_| format!("{flag} {value}: not a number"))
        };
        match flag.as_str() {
            "--scenario" => opts.scenario = value.clone(),
            "--events" => opts.events = number()?.max(1),
            "--inbox-rows" => opts.inbox_rows = number()?.max(1),
            "--users" => opts.users = number()?.max(1),
            "--subscribers" => opts.subscribers = number()?.max(1),
            "--clients" => opts.clients = number()?.max(1),
            "--rate" => opts.rate = number()?.max(1),
            "--enqueue-batch" => opts.enqueue_batch = number()?.max(1),
            "--http-batch" => opts.http_batch = number()?.clamp(2, 1000),
            "--database-url" => opts.database_url = Some(value.clone()),
            other => return Err(format!("unknown flag {other}\n\n{USAGE}")),
        }
    }
    validate(&opts)?;
    Ok(opts)
}

/// What no run can do: an unknown scenario, a URL that is not PostgreSQL's,
/// the raw SQLite loop on PostgreSQL, two instances on one SQLite file.
fn validate(opts: &Opts) -> Result<(), String> {
    let scenarios = [
        "raw",
        "dispatch",
        "fanout",
        "http",
        "http-load",
        "inbox",
        "two-instances",
        "all",
    ];
    if !scenarios.contains(&opts.scenario.as_str()) {
        return Err(format!("unknown scenario {:?}", opts.scenario));
    }
    match &opts.database_url {
        Some(url) if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) => Err(
            format!("--database-url must be a postgres:// or postgresql:// URL, not {url:?}"),
        ),
        Some(_) if opts.scenario == "raw" => Err(
            "the raw scenario is a bare SQLite insert loop, SQLite's own ceiling; \
             it does not run on PostgreSQL (drop --database-url)"
                .into(),
        ),
        None if opts.scenario == "two-instances" => Err(
            "the two-instances scenario needs --database-url postgres://...: \
             several herald instances share one database only on PostgreSQL \
             (an SQLite file has one server)"
                .into(),
        ),
        _ => Ok(()),
    }
}
