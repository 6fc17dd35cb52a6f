//! A phase of the http scenario: the live inbox's push latency, from an
//! event's POST to the item read off a user's stream, alone and beside
//! streams that never read.

use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::client::{issue_token, new_agent, LoadClient};
use crate::process::Herald;
use crate::report::{percentile, ratio};

/// Push latency of the live inbox, twice: one subscriber alone, then 50
/// subscribers beside 200 streams that never read while their users get 4 KB
/// rows (`stream_push_crowded_*`). Events arrive at 100/s; each carries the
/// time its POST was sent, so a sample is POST-sent to pushed-item-read, an
/// upper bound on commit-to-push.
pub fn phase(herald: &Herald, out: &mut Map<String, Value>) -> Result<(), String> {
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
