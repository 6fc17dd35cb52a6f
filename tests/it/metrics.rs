//! `GET /metrics`: the text parses under a strict reading of the Prometheus
//! exposition format 0.0.4 (the parser below, tested on bad input too), and
//! its counters move as events flow: events accepted, notifications sent,
//! deduped and suppressed by type and channel, email sends and retries,
//! deliveries by status, and HTTP requests labelled by route pattern.
//! `.ci/run` also parses it with prometheus_client from PyPI.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::json;

use crate::support::{wait_until, FakeResend, TestServer};

const WAIT: Duration = Duration::from_secs(15);

type Labels = BTreeMap<String, String>;

#[derive(Debug)]
struct Sample {
    name: String,
    labels: Labels,
    value: f64,
}

#[derive(Debug, Default)]
pub struct Scrape {
    /// Family name -> declared type.
    types: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

impl Scrape {
    /// The value of the one series with exactly these labels, 0 if absent
    /// (a labelled counter appears on first use).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let want: Labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map_or(0.0, |s| s.value)
    }

    fn has_series(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.samples.iter().any(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with("__")
}

/// Go's ParseFloat as the format uses it: decimals, exponents, +Inf, -Inf, NaN.
fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ if s.chars().all(|c| c.is_ascii_digit() || "+-.eE".contains(c)) => {
            s.parse().map_err(|_| format!("bad value {s:?}"))
        }
        _ => Err(format!("bad value {s:?}")),
    }
}

/// `{name="value",...}`: returns the labels and the rest of the line.
fn parse_labels(s: &str) -> Result<(Labels, &str), String> {
    let mut labels = Labels::new();
    let mut rest = s.strip_prefix('{').ok_or("expected {")?;
    loop {
        rest = rest.trim_start_matches(' ');
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = rest.find('=').ok_or("label without =")?;
        let name = rest[..eq].trim();
        if !is_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        rest = rest[eq + 1..]
            .trim_start()
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?} in label value")),
                },
                Some((_, '\n')) => return Err("raw newline in label value".into()),
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label {name} repeated"));
        }
        rest = rest[end + 1..].trim_start_matches(' ');
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return Err("expected , or } after a label".into());
        }
    }
}

/// The family a sample belongs to, given the declared types.
fn family_of<'a>(name: &'a str, types: &BTreeMap<String, String>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types
                .get(base)
                .is_some_and(|t| t == "histogram" || t == "summary")
            {
                return base;
            }
        }
    }
    name
}

/// A strict reading of the text format 0.0.4 (plus our own rule that every
/// family declares its TYPE): line syntax, escapes, names, one TYPE and HELP
/// per family before its samples, families contiguous, no duplicate series,
/// counters non-negative, histograms cumulative with +Inf equal to _count.
fn parse(text: &str) -> Result<Scrape, String> {
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("the last line must end with a line feed".into());
    }
    let mut scrape = Scrape::default();
    let mut helps = BTreeSet::new();
    let mut finished: BTreeSet<String> = BTreeSet::new();
    let mut current: Option<String> = None;
    let mut series = BTreeSet::new();
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut parts = comment.trim_start().splitn(3, ' ');
            let (keyword, name) = (parts.next(), parts.next());
            match (keyword, name) {
                (Some("TYPE"), Some(name)) => {
                    let kind = parts.next().unwrap_or("");
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(at(format!("unknown type {kind:?}")));
                    }
                    if !is_metric_name(name) {
                        return Err(at("bad metric name".into()));
                    }
                    if scrape.types.insert(name.into(), kind.into()).is_some() {
                        return Err(at("second TYPE line".into()));
                    }
                    if finished.contains(name) || current.as_deref() == Some(name) {
                        return Err(at("TYPE after the family's samples".into()));
                    }
                }
                (Some("HELP"), Some(name)) => {
                    if !is_metric_name(name) || !helps.insert(name.to_string()) {
                        return Err(at("bad or repeated HELP".into()));
                    }
                    let doc = parts.next().unwrap_or("");
                    let mut chars = doc.chars();
                    while let Some(c) = chars.next() {
                        if c == '\\' && !matches!(chars.next(), Some('\\' | 'n')) {
                            return Err(at("bad escape in HELP".into()));
                        }
                    }
                }
                _ => {} // any other comment
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| at("no value".into()))?;
        let name = &line[..name_end];
        if !is_metric_name(name) {
            return Err(at("bad metric name".into()));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(at)?
        } else {
            (Labels::new(), &line[name_end..])
        };
        let mut fields = rest.split(' ').filter(|f| !f.is_empty());
        let value = parse_value(fields.next().ok_or_else(|| at("no value".into()))?).map_err(at)?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>().map_err(|_| at("bad timestamp".into()))?;
        }
        if fields.next().is_some() {
            return Err(at("trailing fields".into()));
        }
        let family = family_of(name, &scrape.types).to_string();
        let Some(kind) = scrape.types.get(&family).cloned() else {
            return Err(at(format!("sample of {family} without a TYPE line")));
        };
        if current.as_deref() != Some(family.as_str()) {
            if finished.contains(&family) {
                return Err(at(format!("samples of {family} are not contiguous")));
            }
            if let Some(done) = current.replace(family.clone()) {
                finished.insert(done);
            }
        }
        if !series.insert(format!("{name}{labels:?}")) {
            return Err(at("duplicate series".into()));
        }
        if kind == "counter" && (value.is_nan() || value < 0.0) {
            return Err(at("counter below zero".into()));
        }
        if kind == "histogram" && name.ends_with("_bucket") && !labels.contains_key("le") {
            return Err(at("bucket without le".into()));
        }
        scrape.samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    check_histograms(&scrape)?;
    Ok(scrape)
}

fn check_histograms(scrape: &Scrape) -> Result<(), String> {
    for (family, _) in scrape.types.iter().filter(|(_, t)| *t == "histogram") {
        // Series (labels without le) -> buckets in order of appearance.
        let mut buckets: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
        let bucket_name = format!("{family}_bucket");
        for s in scrape.samples.iter().filter(|s| s.name == bucket_name) {
            let le = parse_value(&s.labels["le"])?;
            let mut key = s.labels.clone();
            key.remove("le");
            buckets.entry(key).or_default().push((le, s.value));
        }
        for (labels, list) in buckets {
            let sorted = list.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1);
            if !sorted {
                return Err(format!("{family}{labels:?}: buckets not cumulative"));
            }
            let last = list.last().copied().unwrap_or((0.0, 0.0));
            if last.0 != f64::INFINITY {
                return Err(format!("{family}{labels:?}: no +Inf bucket"));
            }
            let count = scrape
                .samples
                .iter()
                .find(|s| s.name == format!("{family}_count") && s.labels == labels)
                .map(|s| s.value);
            if count != Some(last.1) {
                return Err(format!(
                    "{family}{labels:?}: _count {count:?} != +Inf bucket"
                ));
            }
        }
    }
    Ok(())
}

pub fn scrape(server: &TestServer) -> Scrape {
    let response = server.request_raw("GET", "/metrics", &[], None);
    assert_eq!(response.status, 200, "{}", response.text());
    let content_type = response.header("content-type").unwrap_or("");
    assert!(
        content_type.starts_with("text/plain") && content_type.contains("version=0.0.4"),
        "{content_type}"
    );
    parse(&response.text()).unwrap_or_else(|e| panic!("{e}\n{}", response.text()))
}

fn role_changed(subject: &str) -> serde_json::Value {
    json!({
        "type": "org.member.role_changed", "recipients": ["mia"], "subjectId": subject,
        "payload": {"newRole": "admin", "before": "member", "orgName": "Acme", "actorName": "Al"}
    })
}

#[test]
fn counters_move_as_events_flow() {
    let mail = FakeResend::start();
    let server = TestServer::builder().mail(&mail).start();
    let token = server.create_user("mia", "mia@acme.test", "Mia");
    let before = scrape(&server);
    // The first email attempt fails with a retryable 500.
    mail.fail_next(1, 500);

    let mut events = Vec::new();
    let post = |events: &mut Vec<String>, event: serde_json::Value| {
        let (status, body) = server.post_event(event);
        assert_eq!(status, 202, "{body}");
        events.push(body["eventId"].as_str().unwrap().to_string());
    };
    for i in 0..2 {
        post(
            &mut events,
            json!({"type": "system.announcement", "recipients": ["mia"],
                    "payload": {"title": format!("t{i}"), "body": "b"}}),
        );
    }
    post(&mut events, role_changed("mem_1"));
    for e in &events {
        server.wait_event_done(e, WAIT);
    }
    // The same change again inside the dedup window, on both channels.
    post(&mut events, role_changed("mem_1"));
    let (status, body) = server.put(
        "/v1/preferences",
        Some(&token),
        json!({"type": "org.member.role_changed", "channel": "email", "enabled": false}),
    );
    assert_eq!(status, 200, "{body}");
    // A different subject: inbox sent, email switched off.
    post(&mut events, role_changed("mem_2"));
    for e in &events {
        server.wait_event_done(e, WAIT);
    }
    assert!(
        mail.wait_for_accepted(1, WAIT),
        "the retried email never arrived"
    );
    let (status, _) = server.get("/no/such/thing", None);
    assert_eq!(status, 404);

    let after_settled = wait_until(WAIT, || {
        scrape(&server).value("herald_email_sends_total", &[("result", "sent")]) >= 1.0
    });
    assert!(after_settled, "the email's outcome was never counted");
    let after = scrape(&server);
    let delta = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };

    assert_eq!(delta("herald_events_accepted_total", &[]), 5.0);
    let sent = "herald_notifications_sent_total";
    let announcement = [("type", "system.announcement"), ("channel", "inbox")];
    assert_eq!(delta(sent, &announcement), 2.0);
    let role = |channel| [("type", "org.member.role_changed"), ("channel", channel)];
    assert_eq!(delta(sent, &role("inbox")), 2.0);
    assert_eq!(delta(sent, &role("email")), 1.0);
    assert_eq!(
        delta("herald_notifications_deduped_total", &role("inbox")),
        1.0
    );
    assert_eq!(
        delta("herald_notifications_deduped_total", &role("email")),
        1.0
    );
    assert_eq!(
        delta("herald_notifications_suppressed_total", &role("email")),
        1.0
    );
    assert_eq!(
        delta("herald_notifications_suppressed_total", &role("inbox")),
        0.0
    );

    assert_eq!(
        delta("herald_email_sends_total", &[("result", "retry")]),
        1.0
    );
    assert_eq!(
        delta("herald_email_sends_total", &[("result", "sent")]),
        1.0
    );
    assert_eq!(delta("herald_delivery_retries_total", &[]), 1.0);
    let delivered = [("channel", "email"), ("status", "sent")];
    assert_eq!(after.value("herald_deliveries", &delivered), 1.0);
    assert_eq!(
        after.value("herald_queue_depth", &[("queue", "retry")]),
        0.0
    );
    assert!(after.has_series("herald_queue_depth", &[("queue", "outbox")]));
    assert!(after.has_series("herald_oldest_pending_age_seconds", &[("queue", "outbox")]));

    // HTTP by route pattern: five 202s on POST /v1/events, the event polls
    // under their pattern, never a raw id; unknown paths share one label.
    let created = [
        ("route", "/v1/events"),
        ("method", "POST"),
        ("status", "202"),
    ];
    assert_eq!(delta("herald_http_requests_total", &created), 5.0);
    assert_eq!(
        after.value("herald_http_request_duration_seconds_count", &created),
        after.value("herald_http_requests_total", &created)
    );
    let polled = [
        ("route", "/v1/events/{id}"),
        ("method", "GET"),
        ("status", "200"),
    ];
    assert!(after.value("herald_http_requests_total", &polled) >= 5.0);
    let unmatched = [("route", "unmatched"), ("method", "GET"), ("status", "404")];
    assert_eq!(after.value("herald_http_requests_total", &unmatched), 1.0);
    for s in &after.samples {
        for value in s.labels.values() {
            assert!(
                !value.contains("evt_") && !value.contains("/no/such"),
                "a raw path leaked into a label: {s:?}"
            );
        }
    }
}

#[test]
fn a_fresh_server_exposes_every_family_with_a_type() {
    let server = TestServer::start();
    let scrape = scrape(&server);
    for (name, kind) in [
        ("herald_events_accepted_total", "counter"),
        ("herald_notifications_sent_total", "counter"),
        ("herald_notifications_deduped_total", "counter"),
        ("herald_notifications_suppressed_total", "counter"),
        ("herald_notifications_throttled_total", "counter"),
        ("herald_email_sends_total", "counter"),
        ("herald_delivery_retries_total", "counter"),
        ("herald_deliveries", "gauge"),
        ("herald_queue_depth", "gauge"),
        ("herald_oldest_pending_age_seconds", "gauge"),
        ("herald_http_requests_total", "counter"),
        ("herald_http_request_duration_seconds", "histogram"),
        ("herald_http_connections", "gauge"),
        ("herald_inbox_streams", "gauge"),
        ("herald_inbox_streams_dropped_total", "counter"),
        ("herald_database_bytes", "gauge"),
    ] {
        assert_eq!(
            scrape.types.get(name).map(String::as_str),
            Some(kind),
            "{name}"
        );
    }
    assert_eq!(scrape.value("herald_events_accepted_total", &[]), 0.0);
}

/// The database and WAL sizes are read at scrape time: read between two
/// looks at the database's size, each gauge lies between them. On SQLite
/// they are the file's and its WAL's sizes; on PostgreSQL the database's
/// size as the server reports it (`pg_database_size`), with no WAL of its
/// own to show (the server's WAL is shared by all its databases).
#[test]
fn database_and_wal_sizes_are_read_at_scrape_time() {
    let server = TestServer::start();
    server.create_user("mia", "mia@example.com", "Mia");
    let (status, body) = server.post_event(role_changed("s1"));
    assert_eq!(status, 202, "{body}");
    let id = body["eventId"].as_str().unwrap().to_string();
    server.wait_event_done(&id, WAIT);
    let wal_path = {
        let mut name = server.db_path().as_os_str().to_owned();
        name.push("-wal");
        std::path::PathBuf::from(name)
    };
    let sizes = || {
        if server.on_postgres() {
            let db = server.count("SELECT pg_database_size(current_database())");
            return (db as f64, 0.0);
        }
        let len = |p: &std::path::Path| std::fs::metadata(p).map_or(0.0, |m| m.len() as f64);
        (len(server.db_path()), len(&wal_path))
    };
    let before = sizes();
    let scrape = scrape(&server);
    let after = sizes();
    let db = scrape.value("herald_database_bytes", &[("file", "db")]);
    let wal = scrape.value("herald_database_bytes", &[("file", "wal")]);
    assert!(db >= 4096.0, "{db}");
    if server.on_postgres() {
        assert_eq!(wal, 0.0, "no WAL of its own on PostgreSQL");
    } else {
        assert!(wal > 0.0, "the event's writes went through the WAL: {wal}");
    }
    let between = |v: f64, a: f64, b: f64| a.min(b) <= v && v <= a.max(b);
    assert!(between(db, before.0, after.0), "{db} {before:?} {after:?}");
    assert!(
        between(wal, before.1, after.1),
        "{wal} {before:?} {after:?}"
    );
}

#[test]
fn the_parser_rejects_what_the_format_forbids() {
    let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"q\\\"\\\\\\n\"} 1\n";
    assert!(parse(good).is_ok(), "{:?}", parse(good));
    let histogram =
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\n";
    assert!(parse(histogram).is_ok(), "{:?}", parse(histogram));
    for bad in [
        "# TYPE a counter\na 1",                     // no final line feed
        "a 1\n",                                     // no TYPE
        "# TYPE a counter\na{x=\"unterminated} 1\n", // unterminated value
        "# TYPE a counter\na{x=\"\\t\"} 1\n",        // bad escape
        "# TYPE a counter\na{0x=\"v\"} 1\n",         // bad label name
        "# TYPE a counter\na{x=v} 1\n",              // unquoted value
        "# TYPE a counter\na one\n",                 // bad value
        "# TYPE a counter\na 1\na 2\n",              // duplicate series
        "# TYPE a counter\na -1\n",                  // negative counter
        "# TYPE a counter\n# TYPE b gauge\na 1\nb 1\na{x=\"y\"} 1\n", // not contiguous
        "# TYPE a counter\n# TYPE a counter\na 1\n", // two TYPE lines
        "# TYPE 1a counter\n",                       // bad metric name
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n", // no +Inf
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n",
    ] {
        assert!(parse(bad).is_err(), "accepted {bad:?}");
    }
}
