//! herald-bench: measures herald against SQLite's own ceiling on this
//! machine and prints the figures as one JSON object on the last line of
//! stdout (a human summary goes to stderr). Ratios against the raw insert
//! loop of the same run are what compare across machines.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald::args;
use herald::mail::{Email, MailError, MailProvider, RateHint, Sent};
use herald::notify::inbox;
use herald::notify::templates::InboxContent;
use herald::notify::{DeliveryPolicy, Event, Notifier, Recipient, Registry, Templates};
use herald::store::{Store, StoreError, Synchronous};
use rusqlite::Connection;
use serde_json::{json, Map, Value};

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

struct Opts {
    scenario: String,
    events: usize,
    inbox_rows: usize,
    users: usize,
    clients: usize,
    rate: usize,
    enqueue_batch: usize,
    http_batch: usize,
}

fn parse_opts() -> Result<Opts, String> {
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
    let raw = if all || opts.scenario == "raw" || opts.scenario == "dispatch" {
        let rows_per_s = raw_scenario(work.path(), opts.events, opts.users)?;
        out.insert("raw_rows_per_s".into(), json!(round(rows_per_s)));
        Some(rows_per_s)
    } else {
        None
    };
    if all || opts.scenario == "dispatch" {
        let per_s = dispatch_scenario(work.path(), opts.events, opts.users, opts.enqueue_batch)?;
        out.insert("dispatch_notifications_per_s".into(), json!(round(per_s)));
        if let Some(raw) = raw {
            out.insert("dispatch_ratio_to_raw".into(), json!(ratio(per_s / raw)));
        }
    }
    if all || opts.scenario == "http" {
        http_scenario(work.path(), opts, &mut out)?;
    }
    if all || opts.scenario == "inbox" {
        inbox_scenario(work.path(), opts, &mut out)?;
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

fn round(x: f64) -> f64 {
    x.round()
}

fn ratio(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn progress(label: &str, done: usize, total: usize, started: Instant) {
    eprint!(
        "\r  {label}: {done}/{total} ({:.0}/s)   ",
        done as f64 / started.elapsed().as_secs_f64().max(1e-9)
    );
    let _ = std::io::stderr().flush();
}

/// A database with herald's schema, `users` users and the outbox rows that
/// inbox-shaped rows reference.
fn prepared_db(path: &Path, users: usize, events: usize) -> Result<Store, String> {
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
fn insert_inbox_rows(store: &Store, rows: usize, users: usize, label: &str) -> Result<f64, String> {
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

/// Waits, with a progress line, until the fake provider has accepted
/// `emails`; an error after `minutes` since `started`.
fn wait_for_emails(
    accepted: &AtomicUsize,
    emails: usize,
    started: Instant,
    minutes: u64,
) -> Result<(), String> {
    while accepted.load(Ordering::Relaxed) < emails {
        if started.elapsed() > Duration::from_secs(minutes * 60) {
            return Err(format!(
                "emails did not all go out within {minutes} minutes"
            ));
        }
        progress(
            "emails accepted",
            accepted.load(Ordering::Relaxed),
            emails,
            started,
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn raw_scenario(dir: &Path, events: usize, users: usize) -> Result<f64, String> {
    eprintln!("raw: {events} inbox-shaped rows straight into SQLite (same schema and indexes)");
    let store = prepared_db(&dir.join("raw.db"), users, events)?;
    let per_s = insert_inbox_rows(&store, events, users, "raw")?;
    eprintln!("  raw: {per_s:.0} rows/s");
    Ok(per_s)
}

/// The in-process fake provider: accepts at once and counts.
#[derive(Default)]
struct Counter {
    accepted: AtomicUsize,
}

impl MailProvider for Counter {
    fn name(&self) -> &'static str {
        "bench"
    }

    fn send_email(&self, _email: &Email, key: &str) -> (Result<Sent, MailError>, RateHint) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        (
            Ok(Sent {
                provider_id: key.to_string(),
            }),
            RateHint::default(),
        )
    }

    fn send_batch(&self, emails: &[Email], key: &str) -> (Result<Vec<Sent>, MailError>, RateHint) {
        self.accepted.fetch_add(emails.len(), Ordering::Relaxed);
        let sent = (0..emails.len())
            .map(|i| Sent {
                provider_id: format!("{key}.{i}"),
            })
            .collect();
        (Ok(sent), RateHint::default())
    }
}

fn role_changed(i: usize, users: usize) -> Event {
    let mut event = Event::new(
        "org.member.role_changed",
        vec![Recipient::User(format!("u{}", i % users))],
        json!({"newRole": "admin", "before": "member", "orgName": "Acme", "actorName": "Alice"}),
    );
    event.subject_id = Some(format!("bench_{i}"));
    event
}

fn dispatch_scenario(dir: &Path, events: usize, users: usize, batch: usize) -> Result<f64, String> {
    eprintln!(
        "dispatch: {events} events (inbox + email each) through the library, {batch} per \
         transaction, to an in-process provider"
    );
    let path = dir.join("dispatch.db");
    drop(prepared_db(&path, users, 0)?);
    let store = Arc::new(Store::open(&path, Synchronous::Normal).map_err(|e| e.to_string())?);
    let registry = Registry::embedded().map_err(|e| e.to_string())?;
    let templates = Templates::load(&registry, None).map_err(|e| e.to_string())?;
    let notifier = Notifier::new(
        store.clone(),
        registry,
        templates,
        DeliveryPolicy::default(),
    );
    let counter = Arc::new(Counter::default());
    let running = notifier.start(counter.clone());
    let started = Instant::now();
    for first in (0..events).step_by(batch) {
        let chunk: Vec<Event> = (first..(first + batch).min(events))
            .map(|i| role_changed(i, users))
            .collect();
        notifier
            .transaction(|outbox| chunk.iter().try_for_each(|e| outbox.enqueue(e).map(|_| ())))
            .map_err(|e| e.to_string())?;
        if first % 20_000 < batch {
            progress("enqueued", first, events, started);
        }
    }
    eprintln!();
    wait_for_emails(&counter.accepted, events, started, 10)?;
    let inbox_done = |s: &Store| -> Result<i64, String> {
        s.read(|c| c.query_one("SELECT COUNT(*) FROM notifications", args![], |r| r.get(0)))
            .map_err(|e| e.to_string())
    };
    while inbox_done(&store)? < events as i64 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!();
    running.shutdown(Duration::from_secs(10));
    let per_s = events as f64 / elapsed;
    eprintln!("  dispatch: {per_s:.0} notifications/s (enqueue to last email accepted)");
    Ok(per_s)
}

/// A fake Resend API on loopback that accepts every email at once: plain
/// HTTP/1.1 keep-alive on std's TcpListener, a thread per connection. (Not
/// tiny_http: its 0.12 task pool can lose a wake-up when connections arrive
/// together, leaving a keep-alive connection unserved until another closes.)
struct FakeResend {
    url: String,
    accepted: Arc<AtomicUsize>,
}

fn fake_resend() -> Result<FakeResend, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let counter = counter.clone();
            std::thread::spawn(move || serve_fake_connection(stream, &counter));
        }
    });
    Ok(FakeResend {
        url: format!("http://127.0.0.1:{port}"),
        accepted,
    })
}

/// Answers every request on one connection until the client closes it:
/// `POST /emails/batch` with 200 `{"data":[{"id"},...]}`, one id per item of
/// the body's JSON array (422 and nothing counted if it is not one),
/// anything else with 200 `{"id"}`. Every email answered is counted in
/// `accepted`. Buffers are reused across requests: this is load generation.
fn serve_fake_connection(stream: std::net::TcpStream, accepted: &AtomicUsize) {
    use std::fmt::Write as _;
    use std::io::{BufRead, Read};
    let _ = stream.set_nodelay(true);
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = std::io::BufReader::new(stream);
    let mut line = String::new();
    let mut body = Vec::new();
    let mut reply = String::new();
    let mut response = String::new();
    loop {
        line.clear();
        if matches!(reader.read_line(&mut line), Ok(0) | Err(_)) {
            return;
        }
        // Request line: METHOD SP PATH SP VERSION.
        let path = line.split(' ').nth(1).unwrap_or("");
        let batch = path.split('?').next() == Some("/emails/batch");
        let mut length = 0usize;
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line == "\r\n" => break,
                Ok(_) => {
                    if let Some((name, value)) = line.split_once(':') {
                        if name.eq_ignore_ascii_case("content-length") {
                            length = value.trim().parse().unwrap_or(0);
                        }
                    }
                }
            }
        }
        body.clear();
        body.resize(length, 0);
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        reply.clear();
        let status = if batch {
            match serde_json::from_slice::<Vec<Value>>(&body) {
                Ok(items) => {
                    let first = accepted.fetch_add(items.len(), Ordering::Relaxed);
                    reply.push_str("{\"data\":[");
                    for n in first..first + items.len() {
                        if n > first {
                            reply.push(',');
                        }
                        let _ = write!(reply, "{{\"id\":\"bench-{n}\"}}");
                    }
                    reply.push_str("]}");
                    "200 OK"
                }
                Err(_) => {
                    reply.push_str(
                        "{\"statusCode\":422,\"name\":\"validation_error\",\
                         \"message\":\"The request body must be a JSON array of emails.\"}",
                    );
                    "422 Unprocessable Entity"
                }
            }
        } else {
            let n = accepted.fetch_add(1, Ordering::Relaxed);
            let _ = write!(reply, "{{\"id\":\"bench-{n}\"}}");
            "200 OK"
        };
        response.clear();
        let _ = write!(
            response,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{reply}",
            reply.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

fn herald_binary() -> PathBuf {
    let me = std::env::current_exe().unwrap_or_default();
    me.with_file_name(format!("herald{}", std::env::consts::EXE_SUFFIX))
}

/// The real `herald serve` as a child process.
struct Herald {
    child: Child,
    base: String,
    key: String,
}

impl Drop for Herald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_herald(db: &Path, mail_url: &str) -> Result<Herald, String> {
    start_herald_with(db, mail_url, &[])
}

/// `start_herald` with more environment for the server.
fn start_herald_with(db: &Path, mail_url: &str, env: &[(&str, &str)]) -> Result<Herald, String> {
    let bin = herald_binary();
    if !bin.exists() {
        return Err(format!(
            "{} not found: run cargo build --release first",
            bin.display()
        ));
    }
    let key = "hsk_bench_key".to_string();
    let mut child = Command::new(&bin)
        .args(["serve", "--addr", "127.0.0.1:0", "--db"])
        .arg(db)
        .env("HERALD_SERVICE_KEY", &key)
        .env("HERALD_MAIL_PROVIDER", "resend")
        .env("HERALD_MAIL_API_URL", mail_url)
        .env("HERALD_MAIL_API_KEY", "re_bench")
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let line = first_line_then_drain(stdout).map_err(|e| e.to_string())?;
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .ok_or(format!("unexpected first line from herald: {line:?}"))?
        .to_string();
    Ok(Herald {
        child,
        base: addr,
        key,
    })
}

/// Reads the child's first stdout line, then keeps draining so the child
/// never blocks on a full pipe.
fn first_line_then_drain(stdout: std::process::ChildStdout) -> std::io::Result<String> {
    use std::io::BufRead;
    let mut reader = std::io::BufReader::new(stdout);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    std::thread::spawn(move || {
        let mut sink = String::new();
        while reader.read_line(&mut sink).is_ok_and(|n| n > 0) {
            sink.clear();
        }
    });
    Ok(line)
}

/// A minimal keep-alive HTTP/1.1 client for the load phases: on two cores
/// the load generator shares the CPU with herald, so it must cost as little
/// as wrk does (a ureq agent costs several times more per request). It
/// expects `Content-Length` responses, which is all herald sends outside
/// the stream.
struct LoadClient {
    host: String,
    conn: Option<std::io::BufReader<std::net::TcpStream>>,
    request: Vec<u8>,
}

impl LoadClient {
    fn new(base: &str) -> LoadClient {
        let host = base.trim_start_matches("http://").to_string();
        LoadClient {
            host,
            conn: None,
            request: Vec::with_capacity(16 * 1024),
        }
    }

    /// Sends one request and reads the whole response; the status code, or
    /// None when the connection failed (the next call reconnects).
    fn call(&mut self, method: &str, path: &str, token: &str, body: &[u8]) -> Option<u16> {
        self.request.clear();
        let _ = write!(
            self.request,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n",
            self.host
        );
        if !body.is_empty() {
            let _ = write!(
                self.request,
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            );
        }
        self.request.extend_from_slice(b"\r\n");
        self.request.extend_from_slice(body);
        let status = self.exchange();
        if status.is_none() {
            self.conn = None;
        }
        status
    }

    fn exchange(&mut self) -> Option<u16> {
        use std::io::{BufRead, Read};
        if self.conn.is_none() {
            let stream = std::net::TcpStream::connect(&self.host).ok()?;
            stream.set_nodelay(true).ok()?;
            stream
                .set_read_timeout(Some(Duration::from_secs(30)))
                .ok()?;
            self.conn = Some(std::io::BufReader::with_capacity(64 * 1024, stream));
        }
        let conn = self.conn.as_mut()?;
        conn.get_mut().write_all(&self.request).ok()?;
        let mut line = String::new();
        conn.read_line(&mut line).ok()?;
        let status = line.split(' ').nth(1)?.parse().ok()?;
        let mut length = 0usize;
        loop {
            line.clear();
            if conn.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().ok()?;
                }
            }
        }
        let mut body = vec![0; length];
        conn.read_exact(&mut body).ok()?;
        Some(status)
    }
}

fn new_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// A new API token for `user`, issued with the service key.
fn issue_token(agent: &ureq::Agent, herald: &Herald, user: &str) -> Result<String, String> {
    let mut response = agent
        .post(format!("{}/v1/users/{user}/tokens", herald.base))
        .header("Authorization", format!("Bearer {}", herald.key))
        .send_empty()
        .map_err(|e| e.to_string())?;
    let body: Value = serde_json::from_str(
        &response
            .body_mut()
            .read_to_string()
            .map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    Ok(body["token"].as_str().ok_or("no token")?.to_string())
}

fn rss_kb(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// CPU seconds (user + system) the process has used so far; Linux only.
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn count(conn: &Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0)).unwrap_or(-1)
}

fn http_scenario(dir: &Path, opts: &Opts, out: &mut Map<String, Value>) -> Result<(), String> {
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
    let conn = Connection::open(&db).map_err(|e| e.to_string())?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|e| e.to_string())?;

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
    let (per_s, drain_s) = load_phase(&herald, &mail, &conn, opts, 1, 0, users)?;
    out.insert("http_events_per_s".into(), json!(round(per_s)));
    out.insert("http_drain_s".into(), json!(ratio(drain_s)));
    out.insert("http_cpu_us_per_event".into(), cpu_us_per_event(cpu));
    let cpu = cpu_secs(pid);
    let (per_s, drain_s) = load_phase(
        &herald,
        &mail,
        &conn,
        opts,
        opts.http_batch,
        opts.events,
        users,
    )?;
    out.insert("http_bulk_events_per_s".into(), json!(round(per_s)));
    out.insert("http_bulk_drain_s".into(), json!(ratio(drain_s)));
    out.insert("http_bulk_cpu_us_per_event".into(), cpu_us_per_event(cpu));
    let sent_before = 2 * opts.events;

    storage_figures(&conn, out)?;

    let lat = commit_to_inbox(&herald, &conn, opts.rate, opts.rate * 3, sent_before, users)?;
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
    stream_phase(&herald, out)?;
    if let Some(kb) = rss_kb(pid, "VmHWM:") {
        out.insert("peak_rss_mb".into(), json!(ratio(kb as f64 / 1024.0)));
    }
    drop(herald);
    paced_phase(dir, users, out)?;
    retention_phase(dir, users, opts, out)
}

/// Commit-to-inbox latency at `rate` events/s for `total` events, from the
/// stored timestamps of each outbox row and its inbox row (same clock).
fn commit_to_inbox(
    herald: &Herald,
    conn: &Connection,
    rate: usize,
    total: usize,
    first_event: usize,
    users: usize,
) -> Result<Vec<f64>, String> {
    let first_seq = count(conn, "SELECT COALESCE(MAX(seq), 0) FROM outbox");
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
    let mut stmt = conn
        .prepare(
            "SELECT n.created_at - o.created_at FROM notifications n JOIN outbox o ON o.seq = n.event_seq
             WHERE o.seq > ?1",
        )
        .map_err(|e| e.to_string())?;
    let mut lat: Vec<f64> = stmt
        .query_map([first_seq], |r| r.get::<_, i64>(0))
        .map_err(|e| e.to_string())?
        .filter_map(Result::ok)
        .map(|ms| ms as f64)
        .collect();
    lat.sort_by(f64::total_cmp);
    Ok(lat)
}

/// Bytes the database uses per notification (an inbox row and an email
/// each), and what each table and index takes of it (SQLite's dbstat).
fn storage_figures(conn: &Connection, out: &mut Map<String, Value>) -> Result<(), String> {
    let notifications = count(conn, "SELECT COUNT(*) FROM notifications").max(1) as f64;
    let used = count(
        conn,
        "SELECT (page_count - freelist_count) * page_size
         FROM pragma_page_count, pragma_freelist_count, pragma_page_size",
    ) as f64;
    let mut stmt = conn
        .prepare("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC LIMIT 12")
        .map_err(|e| e.to_string())?;
    let parts: Vec<(String, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(|e| e.to_string())?
        .collect::<Result<_, _>>()
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

/// Retention at work: a fresh server keeping finished work 5 s. 20,000
/// events in bulk, then 1,000 events/s for 30 s while everything older
/// than 5 s is pruned: commit-to-inbox p99 while a prune runs, and the
/// database file's size every 5 s (it should stop growing).
fn retention_phase(
    dir: &Path,
    users: usize,
    opts: &Opts,
    out: &mut Map<String, Value>,
) -> Result<(), String> {
    const BACKLOG: usize = 20_000;
    let rate = opts.rate;
    eprintln!("  retention: {BACKLOG} events, then {rate}/s for 30 s, everything kept 5 s");
    let db = dir.join("retention.db");
    drop(prepared_db(&db, users, 0)?);
    let mail = fake_resend()?;
    let keep = [
        ("HERALD_EMAIL_BODY_RETENTION", "5s"),
        ("HERALD_LOG_RETENTION", "5s"),
        ("HERALD_INBOX_RETENTION", "5s"),
    ];
    let herald = start_herald_with(&db, &mail.url, &keep)?;
    let conn = Connection::open(&db).map_err(|e| e.to_string())?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
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
    let size_mb =
        || std::fs::metadata(&db).map_or(0.0, |m| ratio(m.len() as f64 / (1024.0 * 1024.0)));
    let mut curve = vec![size_mb()];
    // The backlog is now past its retention: the pruner works through it
    // while this load runs.
    let lat = commit_to_inbox(&herald, &conn, rate, rate * 5, BACKLOG, users)?;
    curve.push(size_mb());
    let p99 = percentile(&lat, 0.99);
    out.insert("commit_to_inbox_p99_ms_while_pruning".into(), json!(p99));
    for i in 0..5 {
        let first = BACKLOG + rate * 5 * (i + 1);
        commit_to_inbox(&herald, &conn, rate, rate * 5, first, users)?;
        curve.push(size_mb());
    }
    eprintln!(
        "  retention: commit-to-inbox p99 {p99} ms while pruning; database file every 5 s (MB): {curve:?}"
    );
    out.insert("retention_db_mb_every_5s".into(), json!(curve));
    Ok(())
}

/// Emails out per second while herald paces itself to Resend's default
/// limit of 2 requests a second (`HERALD_MAIL_RATE_PER_SEC=2`): how fast a
/// burst reaches its recipients on a provider's default plan. A fresh
/// server and database, so nothing else is queued.
fn paced_phase(dir: &Path, users: usize, out: &mut Map<String, Value>) -> Result<(), String> {
    const EMAILS: usize = 2_000;
    const PER_REQUEST: usize = 100;
    eprintln!("  paced: {EMAILS} events in bulk, emails at most 2 requests a second");
    let db = dir.join("paced.db");
    drop(prepared_db(&db, users, 0)?);
    let mail = fake_resend()?;
    let herald = start_herald_with(&db, &mail.url, &[("HERALD_MAIL_RATE_PER_SEC", "2")])?;
    let mut client = LoadClient::new(&herald.base);
    let started = Instant::now();
    for first in (0..EMAILS).step_by(PER_REQUEST) {
        let body = bulk_json(first, first + PER_REQUEST, users);
        if client.call("POST", "/v1/events/bulk", &herald.key, body.as_bytes()) != Some(202) {
            return Err("a paced bulk request failed".into());
        }
    }
    wait_for_emails(&mail.accepted, EMAILS, started, 20)?;
    eprintln!();
    let per_s = EMAILS as f64 / started.elapsed().as_secs_f64();
    eprintln!("  paced: {per_s:.0} emails/s at 2 requests/s");
    out.insert("paced_emails_per_s".into(), json!(round(per_s)));

    // Steady trickles, far faster than the provider takes requests: one
    // event per POST, each dispatched (and its emails created) alone.
    let mut trickle = Trickle {
        client: &mut client,
        key: &herald.key,
        mail: &mail,
        users,
        sent: EMAILS,
    };
    trickle.run(1, "trickle", out)?;
    trickle.run(2, "pairs", out)
}

/// Posts trickles of events to a paced server, counting the emails sent.
struct Trickle<'a> {
    client: &'a mut LoadClient,
    key: &'a str,
    mail: &'a FakeResend,
    users: usize,
    sent: usize,
}

impl Trickle<'_> {
    /// 1,000 emails in events of `recipients` each, posted one event at a
    /// time at 100 emails a second: each dispatch creates its emails alone
    /// (one recipient) or as a small batch. Reports
    /// `paced_{name}_emails_per_s` and `paced_{name}_lag_s` (the last email
    /// accepted after the last event posted).
    fn run(
        &mut self,
        recipients: usize,
        name: &str,
        out: &mut Map<String, Value>,
    ) -> Result<(), String> {
        const EMAILS: usize = 1_000;
        const EMAILS_PER_S: f64 = 100.0;
        let events = EMAILS / recipients;
        eprintln!(
            "  paced: {events} events of {recipients} recipients at {} a second",
            EMAILS_PER_S / recipients as f64
        );
        let started = Instant::now();
        for i in 0..events {
            let first = i * recipients;
            let due = started + Duration::from_secs_f64(first as f64 / EMAILS_PER_S);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            let to: Vec<String> = (first..first + recipients)
                .map(|r| format!("u{}", (self.sent + r) % self.users))
                .collect();
            let body = event_to(&format!("{name}_{i}"), &to);
            if self
                .client
                .call("POST", "/v1/events", self.key, body.as_bytes())
                != Some(202)
            {
                return Err("a paced event failed".into());
            }
        }
        let posted = started.elapsed().as_secs_f64();
        self.sent += EMAILS;
        wait_for_emails(&self.mail.accepted, self.sent, started, 20)?;
        eprintln!();
        let elapsed = started.elapsed().as_secs_f64();
        let per_s = EMAILS as f64 / elapsed;
        eprintln!(
            "  paced {name}: {per_s:.0} emails/s, the last {:.1} s after the last event",
            elapsed - posted
        );
        out.insert(format!("paced_{name}_emails_per_s"), json!(round(per_s)));
        out.insert(
            format!("paced_{name}_lag_s"),
            json!(ratio(elapsed - posted)),
        );
        Ok(())
    }
}

/// `opts.events` events over HTTP from `opts.clients` connections, `batch`
/// per request (1: `POST /v1/events`, more: `POST /v1/events/bulk`), then
/// waits until the fake provider accepted every email and herald recorded
/// it sent. `before` events were sent by earlier phases. Returns events/s
/// accepted and the seconds until everything was delivered.
fn load_phase(
    herald: &Herald,
    mail: &FakeResend,
    conn: &Connection,
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
            conn,
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

/// Push latency of the live inbox, twice: one subscriber alone, then 50
/// subscribers beside 200 streams that never read while their users get 4 KB
/// rows (`stream_push_crowded_*`). Events arrive at 100/s; each carries the
/// time its POST was sent, so a sample is POST-sent to pushed-item-read, an
/// upper bound on commit-to-push.
fn stream_phase(herald: &Herald, out: &mut Map<String, Value>) -> Result<(), String> {
    const EVENTS: usize = 300;
    let agent = new_agent();
    let epoch = Instant::now();
    let alone = vec![open_push_reader(&agent, herald, "u0", EVENTS, epoch)?];
    let lat = push_latencies(herald, alone, &["u0".to_string()], &[], epoch, EVENTS)?;
    report_push(out, "stream_push", "alone", &lat);

    // Ten streams for each of 20 users (the default bound per user), never
    // read, and 50 readers.
    let crowd: Vec<String> = (1..=20).map(|i| format!("u{i}")).collect();
    let mut abandoned = Vec::new();
    for user in &crowd {
        let token = issue_token(&agent, herald, user)?;
        for _ in 0..10 {
            abandoned.push(open_abandoned(herald, &token)?);
        }
    }
    let readers: Vec<String> = (100..150).map(|i| format!("u{i}")).collect();
    let per_reader = EVENTS / readers.len();
    let listeners = readers
        .iter()
        .map(|user| open_push_reader(&agent, herald, user, per_reader, epoch))
        .collect::<Result<Vec<_>, _>>()?;
    let lat = push_latencies(herald, listeners, &readers, &crowd, epoch, EVENTS)?;
    report_push(
        out,
        "stream_push_crowded",
        "beside 200 stalled streams",
        &lat,
    );
    drop(abandoned);
    Ok(())
}

/// Opens `user`'s stream and reads `count` pushed items on a thread, which
/// returns each one's latency in ms.
fn open_push_reader(
    agent: &ureq::Agent,
    herald: &Herald,
    user: &str,
    count: usize,
    epoch: Instant,
) -> Result<std::thread::JoinHandle<Vec<f64>>, String> {
    use std::io::BufRead;
    let token = issue_token(agent, herald, user)?;
    let stream = agent
        .get(format!("{}/v1/inbox/stream", herald.base))
        .header("Authorization", format!("Bearer {token}"))
        .call()
        .map_err(|e| format!("cannot open the inbox stream: {e}"))?;
    let reader = std::io::BufReader::new(stream.into_body().into_reader());
    Ok(std::thread::spawn(move || {
        let mut lat = Vec::new();
        for line in reader.lines() {
            let Ok(line) = line else { break };
            let Some(data) = line.strip_prefix("data: ") else {
                continue;
            };
            let Ok(item) = serde_json::from_str::<Value>(data) else {
                continue;
            };
            if let Some(sent_us) = item["payload"]["body"]
                .as_str()
                .and_then(|b| b.parse::<u64>().ok())
            {
                lat.push(
                    (epoch.elapsed().as_micros() as u64).saturating_sub(sent_us) as f64 / 1000.0,
                );
            }
            if lat.len() == count {
                break;
            }
        }
        lat
    }))
}

/// A stream request whose answer is never read.
fn open_abandoned(herald: &Herald, token: &str) -> Result<std::net::TcpStream, String> {
    use std::io::Write;
    let host = herald.base.trim_start_matches("http://");
    let mut socket = std::net::TcpStream::connect(host).map_err(|e| e.to_string())?;
    write!(
        socket,
        "GET /v1/inbox/stream HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    Ok(socket)
}

/// Posts `events` at 100/s, event `i` to `readers[i % len]` and every one
/// of `crowd` (with a 4 KB title), and collects the readers' latencies.
fn push_latencies(
    herald: &Herald,
    listeners: Vec<std::thread::JoinHandle<Vec<f64>>>,
    readers: &[String],
    crowd: &[String],
    epoch: Instant,
    events: usize,
) -> Result<Vec<f64>, String> {
    let mut client = LoadClient::new(&herald.base);
    let padding = if crowd.is_empty() { 0 } else { 4096 };
    for i in 0..events {
        std::thread::sleep(Duration::from_millis(10));
        let mut recipients = vec![readers[i % readers.len()].clone()];
        recipients.extend(crowd.iter().cloned());
        let event = json!({
            "type": "system.announcement", "recipients": recipients, "subjectId": format!("push_{i}"),
            "payload": {"title": format!("push {i} {}", "x".repeat(padding)),
                        "body": epoch.elapsed().as_micros().to_string()}
        })
        .to_string();
        if client.call("POST", "/v1/events", &herald.key, event.as_bytes()) != Some(202) {
            return Err("stream phase: an event was refused".into());
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !listeners.iter().all(|l| l.is_finished()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if !listeners.iter().all(|l| l.is_finished()) {
        return Err("stream phase: not every event reached its stream within 20 s".into());
    }
    let mut lat = Vec::new();
    for listener in listeners {
        lat.extend(listener.join().map_err(|_| "stream listener panicked")?);
    }
    lat.sort_by(f64::total_cmp);
    Ok(lat)
}

fn report_push(out: &mut Map<String, Value>, name: &str, what: &str, sorted: &[f64]) {
    let (p50, p99) = (percentile(sorted, 0.5), percentile(sorted, 0.99));
    out.insert(format!("{name}_p50_ms"), json!(ratio(p50)));
    out.insert(format!("{name}_p99_ms"), json!(ratio(p99)));
    eprintln!(
        "  stream {what}: event POST to pushed item at 100/s: p50 {p50:.2} ms, p99 {p99:.2} ms ({} samples)",
        sorted.len()
    );
}

fn event_json(i: usize, users: usize) -> String {
    event_to(&format!("bench_{i}"), &[format!("u{}", i % users)])
}

/// An event about `subject` to the users `to`.
fn event_to(subject: &str, to: &[String]) -> String {
    format!(
        r#"{{"type":"org.member.role_changed","recipients":{},"subjectId":"{subject}","payload":{{"newRole":"admin","before":"member","orgName":"Acme","actorName":"Alice"}}}}"#,
        json!(to)
    )
}

/// Events `first..end` as one `POST /v1/events/bulk` body.
fn bulk_json(first: usize, end: usize, users: usize) -> String {
    let events: Vec<String> = (first..end).map(|i| event_json(i, users)).collect();
    format!(r#"{{"events":[{}]}}"#, events.join(","))
}

/// Read latency percentiles and throughput of one measured run.
struct Reads {
    p50: f64,
    p99: f64,
    per_s: f64,
}

fn inbox_scenario(dir: &Path, opts: &Opts, out: &mut Map<String, Value>) -> Result<(), String> {
    let users = opts.users;
    eprintln!(
        "inbox: {} notifications over {users} users, then page and unseen-count reads",
        opts.inbox_rows
    );
    let db = dir.join("inbox.db");
    {
        let store = prepared_db(&db, users, opts.inbox_rows)?;
        insert_inbox_rows(&store, opts.inbox_rows, users, "filled")?;
        drop(store);
        let conn = Connection::open(&db).map_err(|e| e.to_string())?;
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); ANALYZE;")
            .map_err(|e| e.to_string())?;
    }
    let mail = fake_resend()?;
    let herald = start_herald(&db, &mail.url)?;
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
