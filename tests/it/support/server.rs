//! `TestServer`: runs the real `herald serve` binary on 127.0.0.1:0 with a
//! temporary database (SQLite, or PostgreSQL: see `database.rs`), keeps its
//! stdout/stderr for failure messages, and offers HTTP helpers (never
//! panicking on a status), SQL through herald's own store, and restarts.

use super::database::{self, PgDatabase};
use super::fake_resend::FakeResend;
use herald::store::Store;
use serde::Serialize;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::OnceLock;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The binary under test, built by Cargo for this integration test.
pub const HERALD_BIN: &str = env!("CARGO_BIN_EXE_herald");
/// How long `serve` may take to print its listening line.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long `stop` waits for the process to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Per-request limit of the HTTP helpers, so a hung server fails the test.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
const LISTENING_PREFIX: &str = "listening on ";
/// The API key and sender that `.mail(&FakeResend)` configures.
pub const TEST_MAIL_API_KEY: &str = "re_test_key";
pub const TEST_MAIL_FROM: &str = "herald <noreply@herald.test>";
/// Set this in the test environment to see the server's output live.
const ECHO_ENV: &str = "HERALD_IT_ECHO";

/// Where the database lives: a temp dir shared by restarts, or a caller's dir.
#[derive(Clone)]
enum DbDir {
    Owned(Arc<TempDir>),
    Given(PathBuf),
}

impl DbDir {
    fn path(&self) -> &Path {
        match self {
            DbDir::Owned(dir) => dir.path(),
            DbDir::Given(path) => path,
        }
    }
}

/// Configures a `TestServer`; `start()` runs it.
#[derive(Clone)]
pub struct TestServerBuilder {
    /// Set for the child in this order; one entry per name.
    env: Vec<(String, String)>,
    args: Vec<String>,
    dir: Option<DbDir>,
    /// The PostgreSQL database, shared by restarts; None on SQLite.
    postgres: Option<Arc<PgDatabase>>,
    /// Logs of earlier runs on the same database, kept for failure messages.
    previous_logs: String,
}

impl TestServerBuilder {
    fn new() -> TestServerBuilder {
        let builder = TestServerBuilder {
            env: Vec::new(),
            args: Vec::new(),
            dir: None,
            postgres: None,
            previous_logs: String::new(),
        };
        builder
            .env(
                "HERALD_SERVICE_KEY",
                &format!("hsk_test_{}", random_hex(16)),
            )
            .env("HERALD_MAIL_PROVIDER", "console")
            .env("HERALD_RETRY_BASE_MS", "50")
            // On PostgreSQL a server restarted after kill -9 takes over the
            // dead one's emails once its lease has run out: 3 s, not 15 s,
            // keeps that within the tests' waits.
            .env("HERALD_LEASE_MS", "3000")
            .env("RUST_LOG", "info")
    }

    /// Sets (or replaces) an environment variable of the server.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.retain(|(n, _)| n != name);
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// Leaves a variable unset (including the defaults above).
    pub fn env_remove(mut self, name: &str) -> Self {
        self.env.retain(|(n, _)| n != name);
        self
    }

    /// Sends mail through `fake` with the `resend` provider.
    pub fn mail(self, fake: &FakeResend) -> Self {
        self.env("HERALD_MAIL_PROVIDER", "resend")
            .env("HERALD_MAIL_API_URL", &fake.url())
            .env("HERALD_MAIL_API_KEY", TEST_MAIL_API_KEY)
            .env("HERALD_MAIL_FROM", TEST_MAIL_FROM)
    }

    /// An extra argument after `serve --addr 127.0.0.1:0 --db <path>`.
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_string());
        self
    }

    /// Uses the SQLite file `herald.db` in an existing directory the caller
    /// keeps alive, instead of a fresh temp dir, whatever the suite's engine.
    pub fn db_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.dir = Some(DbDir::Given(dir.as_ref().to_path_buf()));
        self
    }

    /// Runs on this PostgreSQL database (another instance's, say) whatever
    /// the suite's engine.
    pub fn postgres(mut self, db: &Arc<PgDatabase>) -> Self {
        self.postgres = Some(db.clone());
        self
    }

    /// Spawns `herald serve` and waits for its listening line.
    pub fn start(mut self) -> TestServer {
        if self.postgres.is_none() && self.dir.is_none() && database::on_postgres() {
            let server = database::postgres_server().expect("checked by on_postgres");
            self.postgres = Some(Arc::new(PgDatabase::create(&server)));
        }
        let dir = self.dir.clone().unwrap_or_else(|| {
            let temp = tempfile::Builder::new()
                .prefix("herald-it-")
                .tempdir()
                .expect("create temp dir for the test database");
            DbDir::Owned(Arc::new(temp))
        });
        let db_path = dir.path().join("herald.db");
        let logs = Arc::new(Mutex::new(self.previous_logs.clone()));

        let mut command = Command::new(HERALD_BIN);
        command
            .arg("serve")
            .arg("--addr")
            .arg("127.0.0.1:0")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        isolate_env(&mut command, &self.env);
        set_database(&mut command, self.postgres.as_deref(), &db_path);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {HERALD_BIN}: {e}"));

        let (listening_tx, listening_rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let drains = vec![
            drain(
                "herald-stdout",
                stdout,
                Arc::clone(&logs),
                Some(listening_tx),
            ),
            drain("herald-stderr", stderr, Arc::clone(&logs), None),
        ];

        let mut server = TestServer {
            store: OnceLock::new(),
            postgres: self.postgres.clone(),
            child: Some(child),
            exit_status: None,
            drains,
            logs,
            logs_shown: AtomicBool::new(false),
            base_url: String::new(),
            db_path,
            service_key: self
                .env
                .iter()
                .find(|(n, _)| n == "HERALD_SERVICE_KEY")
                .map(|(_, v)| v.clone())
                .unwrap_or_default(),
            agent: http_agent(),
            builder: TestServerBuilder {
                dir: Some(dir),
                previous_logs: String::new(),
                ..self
            },
        };
        server.base_url = server.wait_listening(&listening_rx);
        server
    }
}

/// A running `herald serve`. Killed on drop; its logs are printed if the test
/// is panicking.
pub struct TestServer {
    /// The test's own connection to the database (dropped before it, and
    /// whenever the server stops, so that nothing holds the file open).
    pub(super) store: OnceLock<Store>,
    pub(super) postgres: Option<Arc<PgDatabase>>,
    child: Option<Child>,
    exit_status: Option<ExitStatus>,
    drains: Vec<JoinHandle<()>>,
    logs: Arc<Mutex<String>>,
    /// Set once the logs went into a panic message, so Drop does not repeat them.
    logs_shown: AtomicBool,
    base_url: String,
    pub(super) db_path: PathBuf,
    service_key: String,
    agent: ureq::Agent,
    /// What started this server (env, args, dir), for `restart`.
    builder: TestServerBuilder,
}

/// A full HTTP answer, for headers, cookies, HTML or text bodies.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    /// Names lowercased, in the order received (repeats kept, e.g. set-cookie).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first header with this (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON, `Value::Null` if empty or not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

impl TestServer {
    pub fn builder() -> TestServerBuilder {
        TestServerBuilder::new()
    }

    /// A server with the defaults (console mail provider).
    pub fn start() -> TestServer {
        TestServer::builder().start()
    }

    /// e.g. `http://127.0.0.1:40123`, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `base_url` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    pub fn db_path(&self) -> &Path {
        &self.db_path
    }

    /// The directory holding the database (shared with restarts).
    pub fn dir(&self) -> &Path {
        self.db_path.parent().expect("db path has a parent")
    }

    pub fn service_key(&self) -> &str {
        &self.service_key
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the server printed so far (stdout and stderr interleaved),
    /// earlier runs on the same database included.
    pub fn logs(&self) -> String {
        lock(&self.logs).clone()
    }

    /// Crash: SIGKILL, then reap the process.
    pub fn kill9(&mut self) {
        self.store.take();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            self.exit_status = child.wait().ok();
        }
        self.join_drains();
    }

    /// Graceful stop: SIGTERM, then wait up to 10 s for the exit.
    pub fn stop(&mut self) -> ExitStatus {
        self.store.take();
        let Some(mut child) = self.child.take() else {
            return self.exit_status.expect("server was stopped before");
        };
        let pid = child.id().to_string();
        match Command::new("kill").args(["-TERM", &pid]).status() {
            Ok(status) if status.success() => {}
            other => {
                self.child = Some(child);
                self.fail(&format!("kill -TERM {pid} failed: {other:?}"));
            }
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => {
                    self.child = Some(child);
                    self.kill9();
                    self.fail("server did not exit within 10 s of SIGTERM");
                }
            }
        };
        self.exit_status = Some(status);
        self.join_drains();
        status
    }

    /// A new server on the same database with the same env and args (a new
    /// port: read `base_url()` again). Stops this one with SIGTERM first if it
    /// still runs; call `kill9()` before for a crash restart.
    pub fn restart(mut self) -> TestServer {
        if self.child.is_some() {
            self.stop();
        }
        self.restart_builder().start()
    }

    /// The builder this server was started from, on the same database, to
    /// restart with changed env or args. Stop this server first.
    pub fn restart_builder(&self) -> TestServerBuilder {
        let mut builder = self.builder.clone();
        builder.previous_logs = format!("{}--- restart ---\n", self.logs());
        builder
    }

    /// Runs another `herald` command (`outbox list`, `migrate`, ...) with this
    /// server's env and database (`HERALD_DB` or `HERALD_DATABASE_URL`).
    pub fn run_cli(&self, args: &[&str]) -> Output {
        let mut command = Command::new(HERALD_BIN);
        command.args(args).stdin(Stdio::null());
        isolate_env(&mut command, &self.builder.env);
        set_database(&mut command, self.postgres.as_deref(), &self.db_path);
        command
            .output()
            .unwrap_or_else(|e| panic!("run {HERALD_BIN} {args:?}: {e}"))
    }

    // ---- HTTP ----

    pub fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        self.call("GET", path, token, None, None)
    }

    pub fn delete(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        self.call("DELETE", path, token, None, None)
    }

    pub fn post(&self, path: &str, token: Option<&str>, body: impl Serialize) -> (u16, Value) {
        self.send_json("POST", path, token, body)
    }

    pub fn put(&self, path: &str, token: Option<&str>, body: impl Serialize) -> (u16, Value) {
        self.send_json("PUT", path, token, body)
    }

    pub fn patch(&self, path: &str, token: Option<&str>, body: impl Serialize) -> (u16, Value) {
        self.send_json("PATCH", path, token, body)
    }

    /// POST with any bytes and content type (bad JSON, wrong media type, ...).
    pub fn post_raw(
        &self,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: &[u8],
    ) -> (u16, Value) {
        self.call("POST", path, token, Some(content_type), Some(body.to_vec()))
    }

    /// Any method, headers and body; JSON answer or `Value::Null`.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> (u16, Value) {
        let response = self.request_raw(method, path, headers, body);
        (response.status, response.json())
    }

    /// Like `request`, with headers and the raw body.
    pub fn request_raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> RawResponse {
        match self.try_request_raw(method, path, headers, body) {
            Ok(response) => response,
            Err(e) => self.fail(&format!("{method} {path}: {e}")),
        }
    }

    /// Like `request_raw`, but a transport error (server down, timeout) is
    /// returned instead of failing the test.
    pub fn try_request_raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<RawResponse, ureq::Error> {
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(self.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let mut response = match body {
            Some(bytes) => self.agent.run(request.body(bytes)?)?,
            None => self.agent.run(request.body(())?)?,
        };
        let headers = response
            .headers()
            .iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_ascii_lowercase(), value)
            })
            .collect();
        let body = response
            .body_mut()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_to_vec()?;
        Ok(RawResponse {
            status: response.status().as_u16(),
            headers,
            body,
        })
    }

    fn send_json(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: impl Serialize,
    ) -> (u16, Value) {
        let bytes = serde_json::to_vec(&body).expect("serialize request body");
        self.call(method, path, token, Some("application/json"), Some(bytes))
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        content_type: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (u16, Value) {
        let authorization = token.map(|token| format!("Bearer {token}"));
        let mut headers = Vec::new();
        if let Some(authorization) = &authorization {
            headers.push(("authorization", authorization.as_str()));
        }
        if let Some(content_type) = content_type {
            headers.push(("content-type", content_type));
        }
        self.request(method, path, &headers, body)
    }

    // ---- conveniences ----

    /// Upserts a user and mints a token for it with the service key.
    pub fn create_user(&self, id: &str, email: &str, name: &str) -> String {
        let key = self.service_key.clone();
        let path = format!("/v1/users/{id}");
        let (status, body) = self.put(&path, Some(&key), json!({ "email": email, "name": name }));
        if status != 200 && status != 201 {
            self.fail(&format!("PUT {path} answered {status}: {body}"));
        }
        let path = format!("/v1/users/{id}/tokens");
        let (status, body) = self.post(&path, Some(&key), json!({}));
        match (status, body["token"].as_str()) {
            (201, Some(token)) => token.to_string(),
            _ => self.fail(&format!("POST {path} answered {status}: {body}")),
        }
    }

    /// `POST /v1/events` with the service key.
    pub fn post_event(&self, event: impl Serialize) -> (u16, Value) {
        self.post("/v1/events", Some(&self.service_key), event)
    }

    /// Polls `GET /v1/events/{id}` until its status is `dispatched`.
    pub fn wait_event_done(&self, event_id: &str, timeout: Duration) -> Value {
        let path = format!("/v1/events/{event_id}");
        let deadline = Instant::now() + timeout;
        loop {
            let (status, body) = self.get(&path, Some(&self.service_key));
            if status == 200 && body["status"] == "dispatched" {
                return body;
            }
            if Instant::now() >= deadline {
                self.fail(&format!(
                    "event {event_id} not dispatched within {timeout:?}; last answer {status}: {body}"
                ));
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    // ---- database ----

    // ---- internals ----

    /// Panics with the server's logs attached.
    pub fn fail(&self, message: &str) -> ! {
        self.logs_shown.store(true, Ordering::SeqCst);
        panic!(
            "{message}\n--- herald logs ({}) ---\n{}--- end of herald logs ---",
            self.database(),
            self.logs()
        );
    }

    fn wait_listening(&mut self, listening: &mpsc::Receiver<String>) -> String {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            match listening.recv_timeout(Duration::from_millis(50)) {
                Ok(url) => return url,
                Err(RecvTimeoutError::Timeout) => {}
                // stdout closed without the line: the process is exiting.
                Err(RecvTimeoutError::Disconnected) => thread::sleep(Duration::from_millis(50)),
            }
            let exited = match self.child.as_mut().map(Child::try_wait) {
                Some(Ok(Some(status))) => Some(status),
                _ => None,
            };
            if let Some(status) = exited {
                self.child = None;
                self.exit_status = Some(status);
                self.join_drains();
                self.fail(&format!(
                    "herald serve exited with {status} before printing `{LISTENING_PREFIX}...`"
                ));
            }
            if Instant::now() >= deadline {
                self.kill9();
                self.fail(&format!(
                    "herald serve printed no `{LISTENING_PREFIX}...` line within {STARTUP_TIMEOUT:?}"
                ));
            }
        }
    }

    /// The drains end when the pipes close; do not hang on a straggler.
    fn join_drains(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.drains.iter().any(|h| !h.is_finished()) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        for handle in std::mem::take(&mut self.drains) {
            if handle.is_finished() {
                let _ = handle.join();
            }
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.join_drains();
        if thread::panicking() && !self.logs_shown.load(Ordering::SeqCst) {
            eprintln!(
                "--- herald logs ({}) ---\n{}--- end of herald logs ---",
                self.database(),
                self.logs()
            );
        }
    }
}

/// Points a `herald` command at the test's database.
fn set_database(command: &mut Command, postgres: Option<&PgDatabase>, db_path: &Path) {
    match postgres {
        Some(db) => command.env("HERALD_DATABASE_URL", &db.url),
        None => command.env("HERALD_DB", db_path),
    };
}

/// The child gets exactly the env we give it, on top of the test's own minus
/// any `HERALD_*` / `STRIPE_*` / `RUST_LOG` a developer may have exported.
fn isolate_env(command: &mut Command, env: &[(String, String)]) {
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("HERALD_") || name.starts_with("STRIPE_") || name == "RUST_LOG" {
            command.env_remove(name.as_ref());
        }
    }
    for (name, value) in env {
        command.env(name, value);
    }
}

/// Copies a pipe into the shared log line by line, so it never fills up; the
/// stdout drain also reports the listening URL once.
fn drain(
    name: &str,
    pipe: impl Read + Send + 'static,
    logs: Arc<Mutex<String>>,
    listening: Option<Sender<String>>,
) -> JoinHandle<()> {
    let echo = std::env::var_os(ECHO_ENV).is_some();
    thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let mut listening = listening;
            let mut reader = BufReader::new(pipe);
            let mut raw = Vec::new();
            loop {
                raw.clear();
                match reader.read_until(b'\n', &mut raw) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let line = String::from_utf8_lossy(&raw);
                let line = line.trim_end_matches(['\r', '\n']);
                if echo {
                    eprintln!("[herald] {line}");
                }
                {
                    let mut logs = lock(&logs);
                    logs.push_str(line);
                    logs.push('\n');
                }
                if let Some(url) = line.trim().strip_prefix(LISTENING_PREFIX) {
                    if let Some(tx) = listening.take() {
                        let _ = tx.send(url.trim().trim_end_matches('/').to_string());
                    }
                }
            }
        })
        .expect("spawn log drain")
}

fn http_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(HTTP_TIMEOUT))
        .max_redirects(0)
        .build()
        .into()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(super) fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("random bytes");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}
