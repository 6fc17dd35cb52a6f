//! The command line: the flags, their defaults and limits, and the usage
//! text `--help` prints. Parsing only; what each flag drives lives in the
//! scenarios.

const USAGE: &str = "\
herald-bench: herald's throughput and latency against a raw SQLite insert loop

usage: herald-bench [--scenario raw|dispatch|http|inbox|all] [--events N]
                    [--inbox-rows N] [--users N] [--clients N] [--rate N]

  --events N       events for raw, dispatch and http (default 100000)
  --inbox-rows N   notifications in the inbox scenario (default 1000000)
  --users N        distinct recipients (default 10000)
  --clients N      concurrent HTTP clients (default 8)
  --rate N         offered load for the commit-to-inbox latency phase, events/s (default 1000)
  --enqueue-batch N  events per enqueuing transaction in the dispatch scenario (default 100;
                   1 measures one commit per event, which the http scenario also does)
  --http-batch N   events per request in the http scenario's bulk phase
                   (POST /v1/events/bulk; default 100); its first phase posts
                   one event per request (POST /v1/events), and its last
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
                   and the database file's size every 5 s under 1,000
                   events/s (retention_db_mb_every_5s)

The http and inbox scenarios start the release `herald` binary found next to
this one (cargo build --release first). The last stdout line is JSON.";

pub struct Opts {
    pub scenario: String,
    pub events: usize,
    pub inbox_rows: usize,
    pub users: usize,
    pub clients: usize,
    pub rate: usize,
    pub enqueue_batch: usize,
    pub http_batch: usize,
}

pub fn parse_opts() -> Result<Opts, String> {
    let mut opts = Opts {
        scenario: "all".into(),
        events: 100_000,
        inbox_rows: 1_000_000,
        users: 10_000,
        clients: 8,
        rate: 1000,
        enqueue_batch: 100,
        http_batch: 100,
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
            "--clients" => opts.clients = number()?.max(1),
            "--rate" => opts.rate = number()?.max(1),
            "--enqueue-batch" => opts.enqueue_batch = number()?.max(1),
            "--http-batch" => opts.http_batch = number()?.clamp(2, 1000),
            other => return Err(format!("unknown flag {other}\n\n{USAGE}")),
        }
    }
    if !["raw", "dispatch", "http", "inbox", "all"].contains(&opts.scenario.as_str()) {
        return Err(format!("unknown scenario {:?}", opts.scenario));
    }
    Ok(opts)
}
