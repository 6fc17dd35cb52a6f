//! The email channel: delivery rows (rendered once, at creation), the mail
//! sender threads (the only callers of the mail provider), and the recording
//! of each attempt's outcome with exponential backoff and dead letters.
//! Sending never happens inside a transaction: senders get jobs after commit
//! and hand outcomes back to the dispatcher thread to write.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::Serialize;

use super::pacer::Pacer;
use super::templates::EmailContent;
use super::{BusMsg, DeliveryPolicy};
use crate::ids;
use crate::mail::{Email, MailError, MailProvider, RateHint, Sent};
use crate::store::{now_ms, StoreError, StoreResult};
use crate::time::rfc3339;

/// One email to send: everything the provider needs, as stored.
#[derive(Debug, Clone)]
pub struct EmailJob {
    pub delivery_id: String,
    pub address: String,
    pub subject: String,
    pub html: String,
    pub text: String,
    /// Attempts made before this one.
    pub attempts: u32,
}

/// Creates the email delivery for (event, recipient), rendered now and sent
/// identically on every attempt. None if it already exists.
pub fn insert_delivery(
    tx: &Transaction<'_>,
    event_seq: i64,
    recipient: &str,
    address: &str,
    content: &EmailContent,
) -> StoreResult<Option<EmailJob>> {
    let id = ids::new_id("dlv");
    let now = now_ms();
    // One body per event: its other recipients' deliveries find it there.
    tx.prepare_cached(
        "INSERT OR IGNORE INTO email_bodies (event_seq, subject, html, text)
         VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![
        event_seq,
        content.subject,
        content.html,
        content.text
    ])?;
    let changed = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO deliveries
                 (id, event_seq, recipient, channel, address, status, created_at, updated_at)
             VALUES (?1, ?2, ?3, 'email', ?4, 'pending', ?5, ?5)",
        )?
        .execute(params![id, event_seq, recipient, address, now])?;
    Ok((changed == 1).then(|| EmailJob {
        delivery_id: id,
        address: address.to_string(),
        subject: content.subject.clone(),
        html: content.html.clone(),
        text: content.text.clone(),
        attempts: 0,
    }))
}

/// A job's columns, from `deliveries d` joined with `email_bodies b`.
const JOB_COLUMNS: &str = "d.id, d.address, b.subject, b.html, b.text, d.attempts";
const JOB_FROM: &str = "deliveries d JOIN email_bodies b ON b.event_seq = d.event_seq";

fn job_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<EmailJob> {
    Ok(EmailJob {
        delivery_id: r.get(0)?,
        address: r.get(1)?,
        subject: r.get(2)?,
        html: r.get(3)?,
        text: r.get(4)?,
        attempts: r.get(5)?,
    })
}

/// The oldest `limit` deliveries waiting to be sent, for the mail queue to
/// page in.
pub fn pending_jobs(conn: &Connection, limit: usize) -> StoreResult<Vec<EmailJob>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {JOB_COLUMNS} FROM {JOB_FROM} WHERE d.status = 'pending'
         ORDER BY d.created_at LIMIT ?1"
    ))?;
    let rows = stmt.query_map([i64::try_from(limit).unwrap_or(i64::MAX)], job_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// How many deliveries wait to be sent.
pub fn pending_count(conn: &Connection) -> StoreResult<i64> {
    Ok(conn
        .prepare_cached("SELECT COUNT(*) FROM deliveries WHERE status = 'pending'")?
        .query_row([], |r| r.get(0))?)
}

/// Moves retries that are due back to pending and returns them as jobs.
pub fn claim_due(tx: &Transaction<'_>, now: i64, limit: usize) -> StoreResult<Vec<EmailJob>> {
    let jobs: Vec<EmailJob> = tx
        .prepare_cached(&format!(
            "SELECT {JOB_COLUMNS} FROM {JOB_FROM}
             WHERE d.status = 'retrying' AND d.next_attempt_at <= ?1
             ORDER BY d.next_attempt_at LIMIT ?2"
        ))?
        .query_map(params![now, limit as i64], job_from_row)?
        .collect::<Result<_, _>>()?;
    let mut claim = tx.prepare_cached(
        "UPDATE deliveries SET status = 'pending', next_attempt_at = NULL, updated_at = ?2
         WHERE id = ?1",
    )?;
    for job in &jobs {
        claim.execute(params![job.delivery_id, now])?;
    }
    Ok(jobs)
}

/// When the earliest waiting retry is due.
pub fn next_retry_at(conn: &Connection) -> StoreResult<Option<i64>> {
    Ok(conn
        .prepare_cached("SELECT MIN(next_attempt_at) FROM deliveries WHERE status = 'retrying'")?
        .query_row([], |r| r.get(0))?)
}

/// The result of one send attempt, on its way to be recorded.
#[derive(Debug)]
pub struct Outcome {
    pub delivery_id: String,
    pub attempts_before: u32,
    pub provider: &'static str,
    pub result: Result<Sent, MailError>,
}

/// Records outcomes in the caller's transaction; returns the earliest retry
/// it scheduled, so the scheduler can be woken for it.
pub fn record(
    tx: &Transaction<'_>,
    outcomes: &[Outcome],
    policy: &DeliveryPolicy,
) -> StoreResult<Option<i64>> {
    let now = now_ms();
    let mut earliest: Option<i64> = None;
    for o in outcomes {
        let attempts = o.attempts_before + 1;
        match &o.result {
            Ok(sent) => {
                tx.prepare_cached(
                    "UPDATE deliveries SET status = 'sent', attempts = ?2, provider = ?3,
                         provider_id = ?4, last_error = NULL, next_attempt_at = NULL, updated_at = ?5
                     WHERE id = ?1",
                )?
                .execute(params![o.delivery_id, attempts, o.provider, sent.provider_id, now])?;
            }
            Err(MailError::Permanent { message }) => {
                set_failed(
                    tx,
                    &o.delivery_id,
                    "failed",
                    attempts,
                    o.provider,
                    message,
                    now,
                )?;
            }
            Err(MailError::Retryable { message, .. }) if attempts >= policy.max_attempts => {
                set_failed(
                    tx,
                    &o.delivery_id,
                    "dead",
                    attempts,
                    o.provider,
                    message,
                    now,
                )?;
            }
            Err(MailError::Retryable {
                message,
                retry_after,
            }) => {
                let at = now + backoff(policy, attempts, *retry_after).as_millis() as i64;
                earliest = Some(earliest.map_or(at, |e| e.min(at)));
                tx.prepare_cached(
                    "UPDATE deliveries SET status = 'retrying', attempts = ?2, provider = ?3,
                         last_error = ?4, next_attempt_at = ?5, updated_at = ?6
                     WHERE id = ?1",
                )?
                .execute(params![
                    o.delivery_id,
                    attempts,
                    o.provider,
                    message,
                    at,
                    now
                ])?;
            }
        }
    }
    Ok(earliest)
}

fn set_failed(
    tx: &Transaction<'_>,
    id: &str,
    status: &str,
    attempts: u32,
    provider: &str,
    message: &str,
    now: i64,
) -> StoreResult<()> {
    tx.prepare_cached(
        "UPDATE deliveries SET status = ?2, attempts = ?3, provider = ?4, last_error = ?5,
             next_attempt_at = NULL, updated_at = ?6
         WHERE id = ?1",
    )?
    .execute(params![id, status, attempts, provider, message, now])?;
    Ok(())
}

/// `base * 2^(attempts-1)` with up to 20% jitter either way so a burst of
/// failures does not retry in lockstep, then capped: the cap is a promise to
/// the operator, so jitter never pushes a delay past it. The provider's
/// `Retry-After` wins when it asks for longer, even beyond the cap.
pub fn backoff(policy: &DeliveryPolicy, attempts: u32, retry_after: Option<Duration>) -> Duration {
    let exp = policy
        .retry_base
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(20))
        .min(policy.retry_cap);
    let jitter = (ids::random_u64() % 401) as f64 / 1000.0 - 0.2;
    let delay = exp.mul_f64(1.0 + jitter).min(policy.retry_cap);
    retry_after.map_or(delay, |ra| ra.max(delay))
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryView {
    pub id: String,
    pub recipient: String,
    pub channel: String,
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at: Option<String>,
    pub last_error: Option<String>,
}

/// An email as the console provider "sent" it, for `/dev/mail`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsoleEmail {
    pub id: String,
    pub to: String,
    pub subject: String,
    pub html: String,
    pub text: String,
    pub created_at: String,
}

/// The newest `limit` emails the console provider recorded as sent.
pub fn console_sent(conn: &Connection, limit: usize) -> StoreResult<Vec<ConsoleEmail>> {
    let mut stmt = conn.prepare_cached(
        "SELECT d.id, d.address, b.subject, b.html, b.text, d.created_at
         FROM deliveries d JOIN email_bodies b ON b.event_seq = d.event_seq
         WHERE d.provider = 'console' AND d.status = 'sent'
         ORDER BY d.created_at DESC, d.id DESC LIMIT ?1",
    )?;
    let rows = stmt.query_map([limit as i64], |r| {
        Ok(ConsoleEmail {
            id: r.get(0)?,
            to: r.get(1)?,
            subject: r.get(2)?,
            html: r.get(3)?,
            text: r.get(4)?,
            created_at: rfc3339(r.get(5)?),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn deliveries_of(conn: &Connection, event_seq: i64) -> StoreResult<Vec<DeliveryView>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {VIEW_COLUMNS} FROM deliveries WHERE event_seq = ?1 ORDER BY id"
    ))?;
    let rows = stmt.query_map([event_seq], view_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

const VIEW_COLUMNS: &str = "id, recipient, channel, status, attempts, next_attempt_at, last_error";

fn view_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeliveryView> {
    Ok(DeliveryView {
        id: r.get(0)?,
        recipient: r.get(1)?,
        channel: r.get(2)?,
        status: r.get(3)?,
        attempts: r.get(4)?,
        next_attempt_at: r.get::<_, Option<i64>>(5)?.map(rfc3339),
        last_error: r.get(6)?,
    })
}

/// The states a delivery can be in, as stored.
pub const STATUSES: &[&str] = &["pending", "retrying", "sent", "failed", "dead"];

/// A delivery as the operator sees it (`herald outbox`, `/v1/deliveries`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryRecord {
    #[serde(flatten)]
    pub delivery: DeliveryView,
    pub event_id: String,
    pub created_at: String,
    pub updated_at: String,
}

/// Deliveries oldest first (ids are time ordered), optionally of one status,
/// after the cursor id; one page of at most `limit`.
pub fn list(
    conn: &Connection,
    status: Option<&str>,
    after: Option<&str>,
    limit: usize,
) -> StoreResult<Vec<DeliveryRecord>> {
    let mut stmt = conn.prepare_cached(
        "SELECT d.id, d.recipient, d.channel, d.status, d.attempts, d.next_attempt_at,
                d.last_error, o.id, d.created_at, d.updated_at
         FROM deliveries d JOIN outbox o ON o.seq = d.event_seq
         WHERE (?1 IS NULL OR d.status = ?1) AND d.id > ?2
         ORDER BY d.id LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![status, after.unwrap_or(""), limit as i64], |r| {
        Ok(DeliveryRecord {
            delivery: view_from_row(r)?,
            event_id: r.get(7)?,
            created_at: rfc3339(r.get(8)?),
            updated_at: rfc3339(r.get(9)?),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// How many deliveries are in each status (every status listed, zeros
/// too). One pass over the table: sent deliveries are not indexed by status.
pub fn counts(conn: &Connection) -> StoreResult<Vec<(&'static str, i64)>> {
    let mut stmt =
        conn.prepare_cached("SELECT status, COUNT(*) FROM deliveries GROUP BY status")?;
    let found: std::collections::HashMap<String, i64> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    Ok(STATUSES
        .iter()
        .map(|status| (*status, found.get(*status).copied().unwrap_or(0)))
        .collect())
}

/// Gives a dead or failed delivery a fresh round of attempts, due now, under
/// the same id (so the same Idempotency-Key) and the same stored body. The
/// last error stays visible until the next attempt. `Err(status)` if the
/// delivery is in any other state.
pub fn rearm(tx: &Transaction<'_>, id: &str) -> StoreResult<Result<DeliveryView, String>> {
    let status: String = tx
        .prepare_cached("SELECT status FROM deliveries WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?
        .ok_or(StoreError::NotFound)?;
    if status != "dead" && status != "failed" {
        return Ok(Err(status));
    }
    tx.prepare_cached(
        "UPDATE deliveries SET status = 'retrying', attempts = 0, next_attempt_at = ?2,
             updated_at = ?2
         WHERE id = ?1",
    )?
    .execute(params![id, now_ms()])?;
    let view = tx
        .prepare_cached(&format!(
            "SELECT {VIEW_COLUMNS} FROM deliveries WHERE id = ?1"
        ))?
        .query_row([id], view_from_row)?;
    Ok(Ok(view))
}

/// Re-arms every dead delivery (see `rearm`); returns how many.
pub fn rearm_dead(tx: &Transaction<'_>) -> StoreResult<usize> {
    Ok(tx
        .prepare_cached(
            "UPDATE deliveries SET status = 'retrying', attempts = 0, next_attempt_at = ?1,
                 updated_at = ?1
             WHERE status = 'dead'",
        )?
        .execute([now_ms()])?)
}

pub(super) struct SenderContext {
    pub provider: Arc<dyn MailProvider>,
    pub from: String,
    pub jobs: Receiver<EmailJob>,
    pub outcomes: Sender<BusMsg>,
    pub pacer: Arc<Pacer>,
    /// Never carries a message: dropping its sender is the stop signal, which
    /// wakes every sender at once, even one waiting for its turn.
    pub stop: Receiver<()>,
}

/// A mail sender thread: blocks until a job or the stop signal arrives,
/// waits for its turn under the shared pacer, sends under the delivery id as
/// Idempotency-Key, and hands the outcome back to be recorded. A job taken
/// after the stop signal is left pending in the database for the next start.
/// One send attempt of `job`, under its delivery id as Idempotency-Key.
pub(super) fn attempt(
    provider: &dyn MailProvider,
    from: &str,
    job: EmailJob,
) -> (Outcome, RateHint) {
    let email = Email {
        from: from.to_string(),
        to: vec![job.address],
        subject: job.subject,
        html: job.html,
        text: job.text,
    };
    let (result, hint) = provider.send_email(&email, &job.delivery_id);
    if let Err(e) = &result {
        log::warn!(
            "delivery {} attempt {} failed: {e}",
            job.delivery_id,
            job.attempts + 1
        );
    }
    let outcome = Outcome {
        delivery_id: job.delivery_id,
        attempts_before: job.attempts,
        provider: provider.name(),
        result,
    };
    (outcome, hint)
}

pub(super) fn run_sender(ctx: SenderContext) {
    loop {
        let job = crossbeam_channel::select! {
            recv(ctx.stop) -> _ => return,
            recv(ctx.jobs) -> job => match job {
                Ok(job) => job,
                Err(_) => return,
            },
        };
        if stopped(&ctx.stop) || !ctx.pacer.wait_turn(&ctx.stop) {
            return;
        }
        let (outcome, hint) = attempt(ctx.provider.as_ref(), &ctx.from, job);
        ctx.pacer.observe(&hint);
        if ctx.outcomes.send(BusMsg::Outcome(outcome)).is_err() {
            return;
        }
    }
}

fn stopped(stop: &Receiver<()>) -> bool {
    matches!(stop.try_recv(), Err(TryRecvError::Disconnected) | Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_honours_longer_retry_after() {
        let policy = DeliveryPolicy {
            retry_base: Duration::from_millis(1000),
            retry_cap: Duration::from_secs(10),
            ..DeliveryPolicy::default()
        };
        let within = |d: Duration, ms: u64| {
            let ms = ms as f64;
            (d.as_millis() as f64) >= ms * 0.8 - 1.0 && (d.as_millis() as f64) <= ms * 1.2 + 1.0
        };
        assert!(within(backoff(&policy, 1, None), 1000));
        assert!(within(backoff(&policy, 3, None), 4000));
        assert!(within(backoff(&policy, 30, None), 10_000));
        assert_eq!(
            backoff(&policy, 1, Some(Duration::from_secs(60))),
            Duration::from_secs(60)
        );
        assert!(within(
            backoff(&policy, 3, Some(Duration::from_millis(1))),
            4000
        ));
        // Jitter never lifts a delay over the cap: not where the doubling
        // reaches it (attempt 4: 8 s +-20%), nor once it is capped.
        for attempts in [4, 5, 30] {
            for _ in 0..200 {
                let delay = backoff(&policy, attempts, None);
                assert!(
                    delay <= policy.retry_cap,
                    "attempt {attempts}: {delay:?} is over the 10 s cap"
                );
            }
        }
        // A provider asking for longer than the cap still gets its wait.
        assert_eq!(
            backoff(&policy, 30, Some(Duration::from_secs(30))),
            Duration::from_secs(30)
        );
    }
}
