//! The real `herald serve` as a child process: finding the release binary
//! next to this one, starting it on a database (an SQLite file or a
//! PostgreSQL URL) with the fake provider, stopping it, and reading its
//! memory and CPU time from /proc.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use herald::store::Database;

/// The `herald` binary beside this one (both from `cargo build --release`).
pub fn herald_binary() -> PathBuf {
    let me = std::env::current_exe().unwrap_or_default();
    me.with_file_name(format!("herald{}", std::env::consts::EXE_SUFFIX))
}

/// The real `herald serve` as a child process.
pub struct Herald {
    pub child: Child,
    pub base: String,
    pub key: String,
}

impl Drop for Herald {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `herald serve` on `db`, sending mail to the Resend API at `mail_url`.
pub fn start_herald(db: &Database, mail_url: &str) -> Result<Herald, String> {
    start_herald_with(db, mail_url, &[])
}

/// `start_herald` with more environment for the server. The database is
/// named as an operator would: `--db` for a file, `HERALD_DATABASE_URL`
/// for PostgreSQL (an environment variable, as a URL with a password
/// belongs in one, not on a command line `ps` shows).
pub fn start_herald_with(
    db: &Database,
    mail_url: &str,
    env: &[(&str, &str)],
) -> Result<Herald, String> {
    let bin = herald_binary();
    if !bin.exists() {
        return Err(format!(
            "{} not found: run cargo build --release first",
            bin.display()
        ));
    }
    let key = "hsk_bench_key".to_string();
    let mut command = Command::new(&bin);
    command
        .args(["serve", "--addr", "127.0.0.1:0"])
        .env_remove("HERALD_DB")
        .env_remove("HERALD_DATABASE_URL");
    match db {
        Database::File(path) => command.arg("--db").arg(path),
        Database::Postgres(url) => command.env("HERALD_DATABASE_URL", url),
    };
    let mut child = command
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

/// A memory figure of `/proc/{pid}/status` in KiB (`VmRSS:`, `VmHWM:`).
pub fn rss_kb(pid: u32, field: &str) -> Option<u64> {
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
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}
