//! The webhook outbox: one `webhook_messages` row per subscribed endpoint,
//! written by `Subscriptions::record` in the transaction of the change it
//! reports (a delivery's status, an inbox mark), so a message exists if and
//! only if its change committed. The senders claim due rows under a lease,
//! delete them once accepted, or push them back with a backoff; an endpoint
//! failing for longer than `disable_after` is disabled and its rows wait.

use std::sync::OnceLock;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use serde_json::{json, Value};

use crate::args;
use crate::ids;
use crate::store::{Conn, StoreResult, Tx};
use crate::time::rfc3339;

/// How webhook messages are sent and retried.
#[derive(Debug, Clone)]
pub struct WebhookPolicy {
    /// Threads sending webhooks, apart from the mail senders.
    pub senders: usize,
    /// Bound on one request, connection included.
    pub timeout: Duration,
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// An endpoint whose every attempt failed for this long is disabled.
    pub disable_after: Duration,
}

impl Default for WebhookPolicy {
    fn default() -> Self {
        WebhookPolicy {
            senders: 4,
            timeout: Duration::from_secs(10),
            retry_base: Duration::from_secs(5),
            retry_cap: Duration::from_secs(3600),
            disable_after: Duration::from_secs(86_400),
        }
    }
}

impl WebhookPolicy {
    /// How long a claim holds a message: a request's timeout and a margin,
    /// so a sender's message falls due again only once it cannot be in
    /// flight any more (or its sender died).
    pub fn lease_ms(&self) -> i64 {
        2 * self.timeout.as_millis() as i64 + 5_000
    }

    /// `base * 2^(attempts-1)`, up to 20% less so failures spread, capped.
    fn backoff_ms(&self, attempts: i64) -> i64 {
        let exp = self
            .retry_base
            .saturating_mul(1u32 << attempts.saturating_sub(1).clamp(0, 20))
            .min(self.retry_cap);
        let jitter = (ids::random_u64() % 201) as f64 / 1000.0;
        exp.mul_f64(1.0 - jitter).as_millis() as i64
    }
}

/// Wakes this process's claiming thread: a message was written (perhaps
/// not yet committed: the thread looks again shortly after), an attempt
/// recorded, an endpoint enabled. An idle server sleeps until then.
pub fn wake() {
    let _ = wake_channel().0.try_send(());
}

pub(super) fn woken() -> &'static Receiver<()> {
    &wake_channel().1
}

fn wake_channel() -> &'static (Sender<()>, Receiver<()>) {
    static WAKE: OnceLock<(Sender<()>, Receiver<()>)> = OnceLock::new();
    WAKE.get_or_init(|| crossbeam_channel::bounded(1))
}

/// The active endpoints and what each subscribes to, as one transaction
/// reads them: one read of a table of a handful of rows, and nothing more
/// when none subscribes to a kind.
pub struct Subscriptions {
    endpoints: Vec<(String, Vec<String>)>,
}

impl Subscriptions {
    pub fn load(tx: &Tx<'_>) -> StoreResult<Subscriptions> {
        let endpoints = tx.query_all(
            "SELECT id, events FROM webhooks WHERE disabled_at IS NULL",
            args![],
            |r| {
                let events: String = r.get(1)?;
                Ok((r.get(0)?, serde_json::from_str(&events).unwrap_or_default()))
            },
        )?;
        Ok(Subscriptions { endpoints })
    }

    /// Whether some active endpoint subscribes to `kind`.
    pub fn wants(&self, kind: &str) -> bool {
        self.endpoints
            .iter()
            .any(|(_, events)| events.iter().any(|e| e == kind))
    }

    /// Writes message `kind` with `data` for every endpoint subscribed to
    /// it, in the caller's transaction. Its body is fixed here: every
    /// attempt sends the same bytes under the same `webhook-id`.
    pub fn record(&self, tx: &Tx<'_>, kind: &str, data: Value) -> StoreResult<()> {
        if !self.wants(kind) {
            return Ok(());
        }
        let now = tx.now_ms();
        let body = json!({"type": kind, "timestamp": rfc3339(now), "data": data}).to_string();
        for (endpoint, events) in &self.endpoints {
            if events.iter().any(|e| e == kind) {
                tx.execute(
                    "INSERT INTO webhook_messages (id, webhook_id, kind, body, next_attempt_at,
                         created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                    args![ids::new_id("msg"), endpoint, kind, body, now],
                )?;
            }
        }
        wake();
        Ok(())
    }

    /// Reports delivery `id`'s status as the caller's transaction just set
    /// it (sent, failed, dead or skipped), to the endpoints subscribed.
    pub fn delivery_changed(&self, tx: &Tx<'_>, id: &str) -> StoreResult<()> {
        if !self
            .endpoints
            .iter()
            .any(|(_, events)| events.iter().any(|e| e.starts_with("delivery.")))
        {
            return Ok(());
        }
        let row = tx.query_opt(
            "SELECT d.status, d.recipient, d.channel, d.attempts, d.provider_id, d.last_error,
                 o.id, o.type
             FROM deliveries d JOIN outbox o ON o.seq = d.event_seq WHERE d.id = ?1",
            args![id],
            |r| {
                let status: String = r.get(0)?;
                let data = json!({
                    "deliveryId": id,
                    "eventId": r.get::<String>(6)?,
                    "type": r.get::<String>(7)?,
                    "recipient": r.get::<String>(1)?,
                    "channel": r.get::<String>(2)?,
                    "status": status,
                    "providerId": r.get::<Option<String>>(4)?,
                    "attempts": r.get::<i64>(3)?,
                    "error": r.get::<Option<String>>(5)?,
                });
                Ok((status, data))
            },
        )?;
        match row {
            Some((status, data)) => self.record(tx, &format!("delivery.{status}"), data),
            None => Ok(()),
        }
    }
}

/// A claimed message, with what its request needs.
#[derive(Debug, Clone)]
pub struct Message {
    pub id: String,
    pub webhook_id: String,
    pub url: String,
    pub secret: String,
    pub body: String,
    pub attempts: i64,
}

/// Claims up to `limit` due messages of active endpoints for instance
/// `me`, earliest first, leaving those another transaction holds: each is
/// due again only after the lease, so one instance sends it at a time.
pub fn claim_due(
    tx: &Tx<'_>,
    me: i64,
    limit: usize,
    policy: &WebhookPolicy,
) -> StoreResult<Vec<Message>> {
    let now = tx.now_ms();
    let due = tx.query_all(
        &format!(
            "SELECT m.id, m.webhook_id, w.url, w.secret, m.body, m.attempts
             FROM webhook_messages m JOIN webhooks w ON w.id = m.webhook_id
             WHERE m.next_attempt_at <= ?1 AND w.disabled_at IS NULL
             ORDER BY m.next_attempt_at LIMIT ?2{}",
            tx.engine().skip_locked("m")
        ),
        args![now, limit],
        |r| {
            Ok(Message {
                id: r.get(0)?,
                webhook_id: r.get(1)?,
                url: r.get(2)?,
                secret: r.get(3)?,
                body: r.get(4)?,
                attempts: r.get(5)?,
            })
        },
    )?;
    for m in &due {
        tx.execute(
            "UPDATE webhook_messages SET next_attempt_at = ?2, claimed_by = ?3 WHERE id = ?1",
            args![m.id, now + policy.lease_ms(), me],
        )?;
    }
    Ok(due)
}

/// Makes every claimed message due now: at the start of the one process
/// of an SQLite file, whatever was claimed belonged to a process now gone.
pub fn release_claims(tx: &Tx<'_>) -> StoreResult<usize> {
    tx.execute(
        "UPDATE webhook_messages SET next_attempt_at = ?1, claimed_by = NULL
         WHERE claimed_by IS NOT NULL",
        args![tx.now_ms()],
    )
}

/// Records one attempt at `message` in the caller's transaction: accepted,
/// it is deleted and its endpoint's run of failures ends; refused, it is
/// due again after a backoff, and an endpoint failing since longer than
/// the policy allows is disabled. Returns whether this disabled it.
pub fn record_attempt(
    tx: &Tx<'_>,
    message: &Message,
    result: &Result<(), String>,
    policy: &WebhookPolicy,
) -> StoreResult<bool> {
    let now = tx.now_ms();
    let error = match result {
        Ok(()) => {
            tx.execute(
                "DELETE FROM webhook_messages WHERE id = ?1",
                args![message.id],
            )?;
            // Written only when it changes: every message reads this table.
            tx.execute(
                "UPDATE webhooks SET failing_since = NULL
                 WHERE id = ?1 AND failing_since IS NOT NULL",
                args![message.webhook_id],
            )?;
            return Ok(false);
        }
        Err(error) => error,
    };
    let attempts = message.attempts + 1;
    tx.execute(
        "UPDATE webhook_messages SET attempts = ?2, next_attempt_at = ?3, claimed_by = NULL,
             last_error = ?4
         WHERE id = ?1",
        args![
            message.id,
            attempts,
            now + policy.backoff_ms(attempts),
            error
        ],
    )?;
    tx.execute(
        "UPDATE webhooks SET failing_since = ?2 WHERE id = ?1 AND failing_since IS NULL",
        args![message.webhook_id, now],
    )?;
    let since = now - policy.disable_after.as_millis() as i64;
    let reason = format!(
        "every attempt failed for {} s; last: {error}",
        policy.disable_after.as_secs()
    );
    let disabled = tx.execute(
        "UPDATE webhooks SET disabled_at = ?2, disabled_reason = ?3
         WHERE id = ?1 AND disabled_at IS NULL AND failing_since <= ?4",
        args![message.webhook_id, now, reason, since],
    )?;
    Ok(disabled > 0)
}

/// When the earliest message of an active endpoint is due.
pub fn next_due_at(conn: &Conn<'_>) -> StoreResult<Option<i64>> {
    conn.query_one(
        "SELECT MIN(m.next_attempt_at) FROM webhook_messages m
         JOIN webhooks w ON w.id = m.webhook_id WHERE w.disabled_at IS NULL",
        args![],
        |r| r.get(0),
    )
}

/// (messages pending for active endpoints, messages stopped with their
/// disabled endpoint, endpoints active, endpoints disabled), for `/metrics`.
pub fn gauges(conn: &Conn<'_>) -> StoreResult<[i64; 4]> {
    conn.query_one(
        "SELECT
             (SELECT COUNT(*) FROM webhook_messages m JOIN webhooks w ON w.id = m.webhook_id
              WHERE w.disabled_at IS NULL),
             (SELECT COUNT(*) FROM webhook_messages m JOIN webhooks w ON w.id = m.webhook_id
              WHERE w.disabled_at IS NOT NULL),
             (SELECT COUNT(*) FROM webhooks WHERE disabled_at IS NULL),
             (SELECT COUNT(*) FROM webhooks WHERE disabled_at IS NOT NULL)",
        args![],
        |r| Ok([r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?]),
    )
}
