//! The process's Prometheus metrics: counters and fixed-bucket histograms
//! kept in atomics, rendered as text exposition format 0.0.4 by `render`.
//! An increment is one atomic add; a labelled series takes a read lock to
//! find its atomic and the write lock only the first time it is seen. Label
//! values are bounded by construction (route patterns, registry types,
//! channels, statuses), never raw paths or user input.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The one registry of the process: every Notifier and HTTP server feeds it,
/// as a Prometheus client library's default registry would.
pub static METRICS: Metrics = Metrics::new();

/// Upper bounds of the request duration buckets, in seconds.
const DURATION_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Where a notification went for one recipient and channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fate {
    Sent,
    Deduped,
    Suppressed,
    /// Held back by the type's throttle (SPEC 9).
    Throttled,
}

/// The recorded result of one email send attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SendResult {
    Sent,
    /// A retryable failure with a retry scheduled.
    Retry,
    /// A permanent failure (a 4xx other than 409/429).
    Failed,
    /// A retryable failure that used the last attempt.
    Dead,
}

impl SendResult {
    fn as_str(self) -> &'static str {
        match self {
            SendResult::Sent => "sent",
            SendResult::Retry => "retry",
            SendResult::Failed => "failed",
            SendResult::Dead => "dead",
        }
    }
}

/// The outcome of one webhook request, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum WebhookOutcome {
    /// Answered 2xx: the message is done.
    Accepted,
    /// Any other answer, or none: the message is retried.
    Failed,
}

type HttpKey = (&'static str, &'static str, u16);

pub struct Metrics {
    events_accepted: AtomicU64,
    retries: AtomicU64,
    /// (type, channel, fate) -> count.
    notifications: Family<(String, &'static str, Fate), AtomicU64>,
    /// Held emails skipped at release, by type.
    skipped: Family<String, AtomicU64>,
    email_sends: Family<SendResult, AtomicU64>,
    /// Requests to the mail provider by kind: "single" or "batch".
    mail_requests: Family<&'static str, AtomicU64>,
    /// (route pattern, method, status).
    http: Family<HttpKey, Histogram>,
    http_connections: AtomicU64,
    /// Rows deleted by retention, by kind.
    pruned: Family<&'static str, AtomicU64>,
    streams_open: AtomicU64,
    streams_dropped_behind: AtomicU64,
    webhook_attempts: Family<WebhookOutcome, AtomicU64>,
    webhooks_disabled: AtomicU64,
    write_groups: AtomicU64,
    write_group_works: AtomicU64,
}

impl Metrics {
    const fn new() -> Metrics {
        Metrics {
            events_accepted: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            notifications: Family::new(),
            skipped: Family::new(),
            email_sends: Family::new(),
            mail_requests: Family::new(),
            http: Family::new(),
            http_connections: AtomicU64::new(0),
            pruned: Family::new(),
            streams_open: AtomicU64::new(0),
            streams_dropped_behind: AtomicU64::new(0),
            webhook_attempts: Family::new(),
            webhooks_disabled: AtomicU64::new(0),
            write_groups: AtomicU64::new(0),
            write_group_works: AtomicU64::new(0),
        }
    }

    /// Open HTTP connections, streams included.
    pub fn http_connections(&self, open: usize) {
        self.http_connections.store(open as u64, Ordering::Relaxed);
    }

    /// Rows retention deleted in one step, by kind.
    pub fn pruned(&self, by_kind: &[(&'static str, usize)]) {
        for &(kind, n) in by_kind {
            if n > 0 {
                self.pruned
                    .get_or_insert(&kind)
                    .fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }

    /// Open live inbox streams.
    pub fn streams_open(&self, open: usize) {
        self.streams_open.store(open as u64, Ordering::Relaxed);
    }

    /// A stream closed because its client stopped taking rows.
    pub fn stream_dropped_behind(&self) {
        self.streams_dropped_behind.fetch_add(1, Ordering::Relaxed);
    }

    /// Events committed to the outbox by a call site (not digest releases).
    pub fn events_accepted(&self, n: u64) {
        self.events_accepted.fetch_add(n, Ordering::Relaxed);
    }

    pub fn notification(&self, kind: &str, channel: &'static str, fate: Fate) {
        self.notifications
            .get_or_insert(&(kind.to_string(), channel, fate))
            .fetch_add(1, Ordering::Relaxed);
    }

    /// A held email not sent: its inbox row was seen (or read) in time.
    pub fn skipped(&self, kind: &str) {
        self.skipped
            .get_or_insert(&kind.to_string())
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn email_send(&self, result: SendResult) {
        self.email_sends
            .get_or_insert(&result)
            .fetch_add(1, Ordering::Relaxed);
        if result == SendResult::Retry {
            self.retries.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One request to the mail provider whose outcome was recorded: one
    /// email alone, or a batch of them.
    pub fn mail_request(&self, batched: bool) {
        let kind = if batched { "batch" } else { "single" };
        self.mail_requests
            .get_or_insert(&kind)
            .fetch_add(1, Ordering::Relaxed);
    }

    /// One webhook request whose outcome was recorded.
    pub fn webhook_attempt(&self, outcome: WebhookOutcome) {
        self.webhook_attempts
            .get_or_insert(&outcome)
            .fetch_add(1, Ordering::Relaxed);
    }

    /// An endpoint disabled after failing for the whole period.
    pub fn webhook_disabled(&self) {
        self.webhooks_disabled.fetch_add(1, Ordering::Relaxed);
    }

    /// A group commit of `works` callers' writes.
    pub fn write_group(&self, works: usize) {
        self.write_groups.fetch_add(1, Ordering::Relaxed);
        self.write_group_works
            .fetch_add(works as u64, Ordering::Relaxed);
    }

    /// One answered HTTP request, labelled by its route pattern.
    pub fn http_request(
        &self,
        route: &'static str,
        method: &'static str,
        status: u16,
        took: Duration,
    ) {
        self.http
            .get_or_insert(&(route, method, status))
            .observe(took.as_secs_f64());
    }

    /// The exposition text; `queues` are gauges read from the database at
    /// scrape time, so they are right even after a restart.
    pub fn render(&self, queues: &QueueGauges) -> String {
        let mut out = String::with_capacity(8 * 1024);

        for (fate, name, help) in [
            (
                Fate::Sent,
                "herald_notifications_sent_total",
                "Inbox rows and email deliveries created, by type and channel.",
            ),
            (
                Fate::Deduped,
                "herald_notifications_deduped_total",
                "Notifications dropped by the dedup window, per channel they would have used.",
            ),
            (
                Fate::Suppressed,
                "herald_notifications_suppressed_total",
                "Notifications switched off by the recipient's preferences.",
            ),
            (
                Fate::Throttled,
                "herald_notifications_throttled_total",
                "Notifications held back by their type's throttle, per channel they would have used.",
            ),
        ] {
            header(&mut out, name, "counter", help);
            self.notifications.for_each(|(kind, channel, f), count| {
                if *f == fate {
                    let value = count.load(Ordering::Relaxed) as f64;
                    sample(
                        &mut out,
                        name,
                        &[("type", kind), ("channel", channel)],
                        value,
                    );
                }
            });
        }

        one_label_counter(
            &mut out,
            "herald_notifications_skipped_total",
            "Escalated emails not sent, by type: the recipient saw (or read) the inbox row \
             before they were due. They counted sent when created, held.",
            "type",
            &self.skipped,
            String::as_str,
        );
        one_label_counter(
            &mut out,
            "herald_email_sends_total",
            "Email send attempts recorded, by result.",
            "result",
            &self.email_sends,
            |result| result.as_str(),
        );
        one_label_counter(
            &mut out,
            "herald_mail_requests_total",
            "Requests to the mail provider with a recorded outcome: one email alone, or a batch.",
            "kind",
            &self.mail_requests,
            |kind| kind,
        );

        queues.render(&mut out);
        one_label_counter(
            &mut out,
            "herald_webhook_attempts_total",
            "Webhook requests recorded, by outcome: accepted (2xx) or failed (retried).",
            "outcome",
            &self.webhook_attempts,
            |outcome| match outcome {
                WebhookOutcome::Accepted => "accepted",
                WebhookOutcome::Failed => "failed",
            },
        );
        one_label_counter(
            &mut out,
            "herald_pruned_rows_total",
            "Rows deleted by retention: stored email bodies, deliveries, outbox rows, inbox rows, \
             others (batches, listener runs, digests, expired sessions).",
            "kind",
            &self.pruned,
            |kind| kind,
        );

        for (name, kind, help, value) in [
            (
                "herald_events_accepted_total",
                "counter",
                "Events committed to the outbox by API calls and application actions.",
                &self.events_accepted,
            ),
            (
                "herald_delivery_retries_total",
                "counter",
                "Email retries scheduled after a retryable failure.",
                &self.retries,
            ),
            (
                "herald_webhooks_disabled_total",
                "counter",
                "Webhook endpoints disabled by this process after failing for the whole period.",
                &self.webhooks_disabled,
            ),
            (
                "herald_write_groups_total",
                "counter",
                "Group commits: transactions that committed the small writes of several \
                 concurrent callers (single-event requests, application actions) together.",
                &self.write_groups,
            ),
            (
                "herald_write_group_works_total",
                "counter",
                "Callers' writes committed in group commits; divided by the groups, the \
                 mean group.",
                &self.write_group_works,
            ),
            (
                "herald_http_connections",
                "gauge",
                "Open HTTP connections, inbox streams included.",
                &self.http_connections,
            ),
            (
                "herald_inbox_streams",
                "gauge",
                "Open live inbox streams.",
                &self.streams_open,
            ),
            (
                "herald_inbox_streams_dropped_total",
                "counter",
                "Inbox streams closed because their client took nothing while behind; \
                 each resumes with Last-Event-ID.",
                &self.streams_dropped_behind,
            ),
        ] {
            header(&mut out, name, kind, help);
            sample(&mut out, name, &[], value.load(Ordering::Relaxed) as f64);
        }

        header(
            &mut out,
            "herald_http_requests_total",
            "counter",
            "HTTP requests answered, by route pattern, method and status.",
        );
        self.http.for_each(|(route, method, status), h| {
            let status = status.to_string();
            let labels = [
                ("route", *route),
                ("method", *method),
                ("status", status.as_str()),
            ];
            sample(
                &mut out,
                "herald_http_requests_total",
                &labels,
                h.count() as f64,
            );
        });
        let name = "herald_http_request_duration_seconds";
        header(
            &mut out,
            name,
            "histogram",
            "Time from reading a request to handing over its response.",
        );
        self.http.for_each(|(route, method, status), h| {
            let status = status.to_string();
            h.render(
                &mut out,
                name,
                &[
                    ("route", *route),
                    ("method", *method),
                    ("status", status.as_str()),
                ],
            );
        });
        out
    }
}

/// Gauges computed from the database when `/metrics` is scraped.
#[derive(Debug, Default, Clone)]
pub struct QueueGauges {
    /// (channel, status) -> deliveries.
    pub deliveries: Vec<(String, String, i64)>,
    /// Outbox rows due and not yet dispatched.
    pub outbox_pending: i64,
    /// Outbox rows due later (`sendAt`): waiting by design, not behind.
    pub outbox_scheduled: i64,
    /// Email deliveries waiting to be sent now.
    pub email_pending: i64,
    /// Email deliveries waiting for a retry.
    pub retry_queue: i64,
    /// Email deliveries held (escalation, quiet hours) until they are due.
    pub held: i64,
    /// Age of the oldest pending outbox row and email delivery, if any.
    pub oldest_outbox_pending_secs: Option<f64>,
    pub oldest_email_pending_secs: Option<f64>,
    /// Messages on the in-process bus not yet taken by the dispatcher.
    pub bus_len: usize,
    /// Emails held in memory for the mail senders (at most
    /// `HERALD_MAIL_QUEUE`; the rest of `email` waits in the database).
    pub senders_len: usize,
    /// Bytes on disk of the database file and of its write-ahead log.
    pub database_bytes: u64,
    pub wal_bytes: u64,
    /// Webhook messages waiting for active endpoints, and stopped with
    /// their disabled endpoint; endpoints active and disabled.
    pub webhook_messages: [i64; 2],
    pub webhook_endpoints: [i64; 2],
}

impl QueueGauges {
    fn render(&self, out: &mut String) {
        header(
            out,
            "herald_deliveries",
            "gauge",
            "Email deliveries in the database, by channel and status.",
        );
        for (channel, status, n) in &self.deliveries {
            sample(
                out,
                "herald_deliveries",
                &[("channel", channel), ("status", status)],
                *n as f64,
            );
        }
        header(
            out,
            "herald_queue_depth",
            "gauge",
            "Work waiting: outbox rows to dispatch, events scheduled for later, emails to send, \
             emails to retry, bus messages, emails queued in memory for the senders, emails \
             held until they are due.",
        );
        for (queue, n) in [
            ("outbox", self.outbox_pending),
            ("scheduled", self.outbox_scheduled),
            ("email", self.email_pending),
            ("retry", self.retry_queue),
            ("bus", self.bus_len as i64),
            ("senders", self.senders_len as i64),
            ("held", self.held),
        ] {
            sample(out, "herald_queue_depth", &[("queue", queue)], n as f64);
        }
        header(
            out,
            "herald_oldest_pending_age_seconds",
            "gauge",
            "Age of the oldest item waiting in a queue (0 when it is empty).",
        );
        for (queue, age) in [
            ("outbox", self.oldest_outbox_pending_secs),
            ("email", self.oldest_email_pending_secs),
        ] {
            sample(
                out,
                "herald_oldest_pending_age_seconds",
                &[("queue", queue)],
                age.unwrap_or(0.0).max(0.0),
            );
        }
        for (name, help, states, counts) in [
            (
                "herald_webhook_messages",
                "Webhook messages not yet accepted: pending for active endpoints, stopped with \
                 a disabled one.",
                ["pending", "stopped"],
                self.webhook_messages,
            ),
            (
                "herald_webhook_endpoints",
                "Webhook endpoints, active or disabled (after failing for the whole period).",
                ["active", "disabled"],
                self.webhook_endpoints,
            ),
        ] {
            header(out, name, "gauge", help);
            for (state, n) in states.iter().zip(counts) {
                sample(out, name, &[("state", state)], n as f64);
            }
        }
        header(
            out,
            "herald_database_bytes",
            "gauge",
            "Size on disk of the database: the SQLite file and its write-ahead log; \
             on PostgreSQL, the database as the server reports it (no WAL of its own).",
        );
        for (file, bytes) in [("db", self.database_bytes), ("wal", self.wal_bytes)] {
            sample(
                out,
                "herald_database_bytes",
                &[("file", file)],
                bytes as f64,
            );
        }
    }
}

/// Series of one metric keyed by their label values.
struct Family<K, V> {
    series: RwLock<BTreeMap<K, Arc<V>>>,
}

impl<K: Ord + Clone, V: Default> Family<K, V> {
    const fn new() -> Family<K, V> {
        Family {
            series: RwLock::new(BTreeMap::new()),
        }
    }

    fn get_or_insert(&self, key: &K) -> Arc<V> {
        // A poisoned lock only means a panic elsewhere; the map is intact.
        let found = self
            .series
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned();
        found.unwrap_or_else(|| {
            self.series
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .entry(key.clone())
                .or_default()
                .clone()
        })
    }

    fn for_each(&self, mut f: impl FnMut(&K, &V)) {
        let series = self.series.read().unwrap_or_else(|e| e.into_inner());
        for (k, v) in series.iter() {
            f(k, v);
        }
    }
}

/// Counts per bucket (not cumulative; summed when rendered), the sum in
/// nanoseconds and the count.
#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; DURATION_BUCKETS.len()],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn observe(&self, secs: f64) {
        if let Some(i) = DURATION_BUCKETS.iter().position(|le| secs <= *le) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_nanos
            .fetch_add((secs * 1e9) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, labels: &[(&str, &str)]) {
        // Read the count first: concurrent observations can then only make
        // buckets larger, and +Inf (= count) stays >= every bucket below it.
        let count = self.count();
        let mut cumulative = 0;
        let bucket = format!("{name}_bucket");
        for (le, n) in DURATION_BUCKETS.iter().zip(&self.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let le = le.to_string();
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            sample(out, &bucket, &with_le, cumulative.min(count) as f64);
        }
        let mut with_le = labels.to_vec();
        with_le.push(("le", "+Inf"));
        sample(out, &bucket, &with_le, count as f64);
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        sample(out, &format!("{name}_sum"), labels, sum);
        sample(out, &format!("{name}_count"), labels, count as f64);
    }
}

/// A counter with one label: every series seen so far.
fn one_label_counter<K: Ord + Clone>(
    out: &mut String,
    name: &str,
    help: &str,
    label: &str,
    family: &Family<K, AtomicU64>,
    value_of: fn(&K) -> &str,
) {
    header(out, name, "counter", help);
    family.for_each(|key, count| {
        let value = count.load(Ordering::Relaxed) as f64;
        sample(out, name, &[(label, value_of(key))], value);
    });
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{}\"", escape_label(v));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// Label values escape backslash, double quote and line feed (format 0.0.4).
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_the_count() {
        let h = Histogram::default();
        for secs in [0.0001, 0.003, 0.003, 0.2, 30.0] {
            h.observe(secs);
        }
        let mut out = String::new();
        h.render(&mut out, "x", &[("route", "/a")]);
        assert!(
            out.contains("x_bucket{route=\"/a\",le=\"0.0005\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{route=\"/a\",le=\"0.005\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{route=\"/a\",le=\"10\"} 4\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{route=\"/a\",le=\"+Inf\"} 5\n"),
            "{out}"
        );
        assert!(out.contains("x_count{route=\"/a\"} 5\n"), "{out}");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        sample(&mut out, "m", &[("type", "a\"b\\c\nd")], 1.0);
        assert_eq!(out, "m{type=\"a\\\"b\\\\c\\nd\"} 1\n");
    }
}
