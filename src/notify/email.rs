//! The email channel: delivery rows (rendered once, at creation, and grouped
//! into batches when created together), the mail sender threads (the only
//! callers of the mail provider; one request per lone email or batch), and
//! the recording of each attempt's outcome with exponential backoff and dead
//! letters. Sending never happens inside a transaction: senders get jobs
//! after commit and hand outcomes back to the dispatcher thread to write;
//! the one thing a sender writes is a batch it makes of emails waiting
//! for their turn, committed before the batch is sent.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::args;
use crate::store::{Conn, Row, Tx};
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use serde::Serialize;

use super::mail_queue::MailQueue;
use super::pacer::Pacer;
use super::templates::EmailContent;
use super::{BusMsg, DeliveryPolicy};
use crate::ids;
use crate::mail::{Email, MailError, MailProvider, RateHint, Sent};
use crate::store::{Store, StoreError, StoreResult};
use crate::time::rfc3339;

/// One email to send: everything the provider needs, as stored.
#[derive(Debug, Clone)]
pub struct EmailJob {
    pub delivery_id: String,
    pub address: String,
    pub subject: String,
    pub html: String,
    pub text: String,
}

/// One request to the mail provider: a delivery alone under its own id as
/// Idempotency-Key, or a batch of deliveries under the batch id. A batch's
/// members are fixed when its deliveries are created and always sent
/// together, in id order, so that every attempt is the identical request
/// under the same key.
#[derive(Debug, Clone)]
pub struct MailJob {
    /// The Idempotency-Key: the batch id, or the lone delivery's id.
    pub key: String,
    /// Sent through the provider's batch request (even with one member).
    pub batched: bool,
    pub emails: Vec<EmailJob>,
    /// Attempts made before this one (the same for every member).
    pub attempts: u32,
    /// Built by this run from deliveries it has just created, and not yet
    /// sent: no request can have carried them, so they may still be put
    /// into a bigger batch (`coalesce`). Jobs read back from the database
    /// never are: a previous run may have sent them.
    pub fresh: bool,
    /// When the mail queue last took it in.
    pub queued_at: Option<Instant>,
}

impl MailJob {
    /// One delivery sent alone, under its own id.
    fn alone(email: EmailJob, attempts: u32) -> MailJob {
        MailJob {
            key: email.delivery_id.clone(),
            batched: false,
            emails: vec![email],
            attempts,
            fresh: false,
            queued_at: None,
        }
    }

    /// A batch of deliveries sent together, under the batch's id.
    fn batch(key: String, emails: Vec<EmailJob>, attempts: u32) -> MailJob {
        MailJob {
            key,
            batched: true,
            emails,
            attempts,
            fresh: false,
            queued_at: None,
        }
    }

    pub fn delivery_ids(&self) -> impl Iterator<Item = &str> {
        self.emails.iter().map(|e| e.delivery_id.as_str())
    }

    /// Groups freshly created deliveries into requests: members of a batch
    /// are adjacent (they were created in a row), the rest go alone. A
    /// batch's members are put in id order, the order every later read of
    /// the batch gives, so the first request is the one any resend repeats.
    pub fn group(created: Vec<(Option<String>, EmailJob)>) -> Vec<MailJob> {
        let mut jobs: Vec<MailJob> = Vec::new();
        for (batch, email) in created {
            match (batch, jobs.last_mut()) {
                (Some(batch), Some(last)) if last.batched && last.key == batch => {
                    last.emails.push(email);
                }
                (Some(batch), _) => jobs.push(MailJob {
                    fresh: true,
                    ..MailJob::batch(batch, vec![email], 0)
                }),
                (None, _) => jobs.push(MailJob {
                    fresh: true,
                    ..MailJob::alone(email, 0)
                }),
            }
        }
        for job in &mut jobs {
            sort_members(&mut job.emails);
        }
        jobs
    }
}

/// A batch's members in the order every read of the batch gives.
fn sort_members(emails: &mut [EmailJob]) {
    emails.sort_unstable_by(|a, b| a.delivery_id.cmp(&b.delivery_id));
}

/// Creates the email delivery for (event, recipient), rendered now and sent
/// identically on every attempt, as a member of `batch` if given. None if
/// it already exists.
pub fn insert_delivery(
    tx: &Tx<'_>,
    event_seq: i64,
    recipient: &str,
    address: &str,
    content: &EmailContent,
    batch: Option<&str>,
) -> StoreResult<Option<EmailJob>> {
    let id = ids::new_id("dlv");
    let now = tx.now_ms();
    // One body per event: its other recipients' deliveries find it there.
    tx.execute(
        "INSERT OR IGNORE INTO email_bodies (event_seq, subject, html, text)
         VALUES (?1, ?2, ?3, ?4)",
        args![event_seq, content.subject, content.html, content.text],
    )?;
    let changed = tx.execute(
        "INSERT OR IGNORE INTO deliveries
                 (id, event_seq, recipient, channel, address, status, created_at, updated_at,
                  batch_id)
             VALUES (?1, ?2, ?3, 'email', ?4, 'pending', ?5, ?5, ?6)",
        args![id, event_seq, recipient, address, now, batch],
    )?;
    Ok((changed == 1).then(|| EmailJob {
        delivery_id: id,
        address: address.to_string(),
        subject: content.subject.clone(),
        html: content.html.clone(),
        text: content.text.clone(),
    }))
}

/// Hands out batch ids to the email deliveries one dispatch transaction
/// creates: up to `max` in a row share one. Off (every delivery alone) when
/// the transaction is expected to create fewer than two emails, so a quiet
/// server sends each email under its own delivery id.
pub struct Batcher {
    max: usize,
    /// Per batch: its id, members so far, and the range of their events.
    batches: Vec<(String, usize, i64, i64)>,
}

impl Batcher {
    pub fn new(max: usize, expected_emails: usize) -> Batcher {
        let max = if expected_emails >= 2 { max } else { 1 };
        Batcher {
            max,
            batches: Vec::new(),
        }
    }

    /// The batch the next delivery (of event `seq`) joins, or None to send
    /// it alone.
    pub fn join(&mut self, seq: i64) -> Option<String> {
        if self.max < 2 {
            return None;
        }
        match self.batches.last_mut() {
            Some((id, members, first, last)) if *members < self.max => {
                *members += 1;
                (*first, *last) = ((*first).min(seq), (*last).max(seq));
                Some(id.clone())
            }
            _ => {
                let id = ids::new_id("bat");
                self.batches.push((id.clone(), 1, seq, seq));
                Some(id)
            }
        }
    }

    /// Records the batches handed out, in the transaction that created
    /// their members: where to find them again without an index entry per
    /// delivery (one per batch instead).
    pub fn write(self, tx: &Tx<'_>) -> StoreResult<()> {
        for (id, _, first, last) in &self.batches {
            tx.execute(INSERT_BATCH, args![id, first, last])?;
        }
        Ok(())
    }
}

const INSERT_BATCH: &str = "INSERT INTO mail_batches (id, first_seq, last_seq) VALUES (?1, ?2, ?3)";

/// Puts the deliveries of `jobs` (lone ones and batches, created apart but
/// waiting together) into one new batch, and returns its id; the batches
/// merged into it are gone. Only for jobs no request has carried (see
/// `MailJob::fresh`): once this commits, every attempt, after a crash too,
/// is the new batch's request. A member that is no longer pending in the
/// request its job names fails the whole call (`NotFound`), which rolls it
/// back.
pub fn merge_fresh(tx: &Tx<'_>, jobs: &[MailJob]) -> StoreResult<String> {
    let id = ids::new_id("bat");
    let (mut first, mut last) = (i64::MAX, i64::MIN);
    for job in jobs {
        let was = job.batched.then_some(&job.key);
        for email in &job.emails {
            let seq: i64 = tx
                .query_opt(
                    "UPDATE deliveries SET batch_id = ?2
         WHERE id = ?1 AND status = 'pending' AND batch_id IS ?3
         RETURNING event_seq",
                    args![email.delivery_id, id, was],
                    |r| r.get(0),
                )?
                .ok_or(StoreError::NotFound)?;
            (first, last) = (first.min(seq), last.max(seq));
        }
        if let Some(was) = was {
            tx.execute("DELETE FROM mail_batches WHERE id = ?1", args![was])?;
        }
    }
    tx.execute(INSERT_BATCH, args![id, first, last])?;
    Ok(id)
}

/// The deliveries of batch `?1`: those of its events' range that name it,
/// found through the (event, recipient, channel) key.
const IN_BATCH: &str = "d.event_seq BETWEEN (SELECT first_seq FROM mail_batches WHERE id = ?1)
         AND (SELECT last_seq FROM mail_batches WHERE id = ?1)
     AND d.batch_id = ?1";

/// A job's columns, from `deliveries d` joined with `email_bodies b`.
const JOB_COLUMNS: &str = "d.id, d.address, b.subject, b.html, b.text, d.attempts, d.batch_id";
const JOB_FROM: &str = "deliveries d JOIN email_bodies b ON b.event_seq = d.event_seq";

/// A delivery row as read: its email, attempts and batch.
type JobRow = (EmailJob, u32, Option<String>);

fn job_from_row(r: &Row<'_>) -> StoreResult<JobRow> {
    let email = EmailJob {
        delivery_id: r.get(0)?,
        address: r.get(1)?,
        subject: r.get(2)?,
        html: r.get(3)?,
        text: r.get(4)?,
    };
    Ok((email, r.get(5)?, r.get(6)?))
}

/// Turns rows into requests: a lone delivery as it is, a batch member as
/// its whole batch, read by batch id (once however many of its members the
/// rows hold).
fn jobs_from_rows(conn: &Conn<'_>, rows: Vec<JobRow>) -> StoreResult<Vec<MailJob>> {
    let mut seen = std::collections::HashSet::new();
    let mut jobs = Vec::with_capacity(rows.len());
    for (email, attempts, batch) in rows {
        match batch {
            None => jobs.push(MailJob::alone(email, attempts)),
            Some(batch) if seen.insert(batch.clone()) => {
                jobs.push(batch_job(conn, batch, attempts)?);
            }
            Some(_) => {}
        }
    }
    Ok(jobs)
}

/// Every member of a batch, in id order: the identical request each time.
fn batch_job(conn: &Conn<'_>, batch: String, attempts: u32) -> StoreResult<MailJob> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM {JOB_FROM} WHERE {IN_BATCH} ORDER BY d.id");
    let emails = conn.query_all(&sql, args![batch], |r| Ok(job_from_row(r)?.0))?;
    Ok(MailJob::batch(batch, emails, attempts))
}

/// The oldest deliveries waiting to be sent, at most `limit` rows read, as
/// requests for the mail queue to page in; also how many rows were read.
pub fn pending_jobs(conn: &Conn<'_>, limit: usize) -> StoreResult<(Vec<MailJob>, usize)> {
    let rows: Vec<JobRow> = conn.query_all(
        &format!(
            "SELECT {JOB_COLUMNS} FROM {JOB_FROM} WHERE d.status = 'pending'
             ORDER BY d.created_at LIMIT ?1"
        ),
        args![i64::try_from(limit).unwrap_or(i64::MAX)],
        job_from_row,
    )?;
    let read = rows.len();
    Ok((jobs_from_rows(conn, rows)?, read))
}

/// How many deliveries wait to be sent.
pub fn pending_count(conn: &Conn<'_>) -> StoreResult<i64> {
    conn.query_one(
        "SELECT COUNT(*) FROM deliveries WHERE status = 'pending'",
        args![],
        |r| r.get(0),
    )
}

/// Moves retries that are due back to pending (a batch whole) and returns
/// them as requests.
pub fn claim_due(tx: &Tx<'_>, now: i64, limit: usize) -> StoreResult<Vec<MailJob>> {
    let rows: Vec<JobRow> = tx.query_all(
        &format!(
            "SELECT {JOB_COLUMNS} FROM {JOB_FROM}
             WHERE d.status = 'retrying' AND d.next_attempt_at <= ?1
             ORDER BY d.next_attempt_at LIMIT ?2"
        ),
        args![now, limit],
        job_from_row,
    )?;
    let jobs = jobs_from_rows(tx, rows)?;
    for id in jobs.iter().flat_map(MailJob::delivery_ids) {
        tx.execute(
            "UPDATE deliveries SET status = 'pending', next_attempt_at = NULL, updated_at = ?2
         WHERE id = ?1 AND status = 'retrying'",
            args![id, now],
        )?;
    }
    Ok(jobs)
}

/// When the earliest waiting retry is due.
pub fn next_retry_at(conn: &Conn<'_>) -> StoreResult<Option<i64>> {
    conn.query_one(
        "SELECT MIN(next_attempt_at) FROM deliveries WHERE status = 'retrying'",
        args![],
        |r| r.get(0),
    )
}

/// The result of one request's attempt, on its way to be recorded.
#[derive(Debug)]
pub struct Outcome {
    /// The deliveries the request carried, in order.
    pub delivery_ids: Vec<String>,
    /// Whether they went as a batch, which a refusal breaks up.
    pub batched: bool,
    pub attempts_before: u32,
    pub provider: &'static str,
    /// One `Sent` per delivery, in order.
    pub result: Result<Vec<Sent>, MailError>,
}

/// Records outcomes in the caller's transaction; returns the earliest retry
/// it scheduled, so the scheduler can be woken for it. A batch's members
/// share every outcome but an invalid batch's: nothing of it went out, so
/// its members leave the batch and are retried at once, each alone under
/// its own id, where only a bad one fails.
pub fn record(
    tx: &Tx<'_>,
    outcomes: &[Outcome],
    policy: &DeliveryPolicy,
) -> StoreResult<Option<i64>> {
    let now = tx.now_ms();
    let mut earliest: Option<i64> = None;
    for o in outcomes {
        let attempts = o.attempts_before + 1;
        let ids = o.delivery_ids.iter();
        match &o.result {
            Ok(sent) => {
                for (i, id) in ids.enumerate() {
                    let provider_id = sent.get(i).map_or("", |s| s.provider_id.as_str());
                    tx.execute("UPDATE deliveries SET status = 'sent', attempts = ?2, provider = ?3,
                         provider_id = ?4, last_error = NULL, next_attempt_at = NULL, updated_at = ?5
                     WHERE id = ?1", args![id, attempts, o.provider, provider_id, now])?;
                }
            }
            // Invalid bytes were refused before anything was sent, on every
            // attempt alike; other refusals (a revoked key) may be checked
            // before a replay and prove nothing, so they fail the batch whole.
            Err(MailError::Invalid { message }) if o.batched => {
                earliest = Some(now);
                for id in ids {
                    tx.execute(
                        "UPDATE deliveries SET status = 'retrying', batch_id = NULL, attempts = ?2,
                         provider = ?3, last_error = ?4, next_attempt_at = ?5, updated_at = ?5
                     WHERE id = ?1",
                        args![id, attempts, o.provider, message, now],
                    )?;
                }
            }
            Err(
                MailError::Invalid { message }
                | MailError::Permanent { message }
                | MailError::KeyConflict { message },
            ) => {
                for id in ids {
                    set_failed(tx, id, "failed", attempts, o.provider, message, now)?;
                }
            }
            Err(MailError::Retryable { message, .. }) if attempts >= policy.max_attempts => {
                for id in ids {
                    set_failed(tx, id, "dead", attempts, o.provider, message, now)?;
                }
            }
            Err(MailError::Retryable {
                message,
                retry_after,
            }) => {
                // One time for the whole batch: it goes out again together.
                let at = now + backoff(policy, attempts, *retry_after).as_millis() as i64;
                earliest = Some(earliest.map_or(at, |e| e.min(at)));
                for id in ids {
                    tx.execute(
                        "UPDATE deliveries SET status = 'retrying', attempts = ?2, provider = ?3,
                         last_error = ?4, next_attempt_at = ?5, updated_at = ?6
                     WHERE id = ?1",
                        args![id, attempts, o.provider, message, at, now],
                    )?;
                }
            }
        }
    }
    Ok(earliest)
}

fn set_failed(
    tx: &Tx<'_>,
    id: &str,
    status: &str,
    attempts: u32,
    provider: &str,
    message: &str,
    now: i64,
) -> StoreResult<()> {
    tx.execute(
        "UPDATE deliveries SET status = ?2, attempts = ?3, provider = ?4, last_error = ?5,
             next_attempt_at = NULL, updated_at = ?6
         WHERE id = ?1",
        args![id, status, attempts, provider, message, now],
    )?;
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
    /// The batch the email goes out in (its Idempotency-Key); None alone.
    pub batch_id: Option<String>,
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
pub fn console_sent(conn: &Conn<'_>, limit: usize) -> StoreResult<Vec<ConsoleEmail>> {
    let rows = conn.query_all(
        "SELECT d.id, d.address, b.subject, b.html, b.text, d.created_at
         FROM deliveries d JOIN email_bodies b ON b.event_seq = d.event_seq
         WHERE d.provider = 'console' AND d.status = 'sent'
         ORDER BY d.created_at DESC, d.id DESC LIMIT ?1",
        args![limit],
        |r| {
            Ok(ConsoleEmail {
                id: r.get(0)?,
                to: r.get(1)?,
                subject: r.get(2)?,
                html: r.get(3)?,
                text: r.get(4)?,
                created_at: rfc3339(r.get(5)?),
            })
        },
    )?;
    Ok(rows)
}

pub fn deliveries_of(conn: &Conn<'_>, event_seq: i64) -> StoreResult<Vec<DeliveryView>> {
    let rows = conn.query_all(
        &format!("SELECT {VIEW_COLUMNS} FROM deliveries WHERE event_seq = ?1 ORDER BY id"),
        args![event_seq],
        view_from_row,
    )?;
    Ok(rows)
}

const VIEW_COLUMNS: &str =
    "id, recipient, channel, status, attempts, next_attempt_at, last_error, batch_id";

fn view_from_row(r: &Row<'_>) -> StoreResult<DeliveryView> {
    Ok(DeliveryView {
        id: r.get(0)?,
        recipient: r.get(1)?,
        channel: r.get(2)?,
        status: r.get(3)?,
        attempts: r.get(4)?,
        next_attempt_at: r.get::<Option<i64>>(5)?.map(rfc3339),
        last_error: r.get(6)?,
        batch_id: r.get(7)?,
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
    conn: &Conn<'_>,
    status: Option<&str>,
    after: Option<&str>,
    limit: usize,
) -> StoreResult<Vec<DeliveryRecord>> {
    let rows = conn.query_all(
        "SELECT d.id, d.recipient, d.channel, d.status, d.attempts, d.next_attempt_at,
                d.last_error, d.batch_id, o.id, d.created_at, d.updated_at
         FROM deliveries d JOIN outbox o ON o.seq = d.event_seq
         WHERE (?1 IS NULL OR d.status = ?1) AND d.id > ?2
         ORDER BY d.id LIMIT ?3",
        args![status, after.unwrap_or(""), limit],
        |r| {
            Ok(DeliveryRecord {
                delivery: view_from_row(r)?,
                event_id: r.get(8)?,
                created_at: rfc3339(r.get(9)?),
                updated_at: rfc3339(r.get(10)?),
            })
        },
    )?;
    Ok(rows)
}

/// How many deliveries are in each status (every status listed, zeros
/// too). One pass over the table: sent deliveries are not indexed by status.
pub fn counts(conn: &Conn<'_>) -> StoreResult<Vec<(&'static str, i64)>> {
    let found: std::collections::HashMap<String, i64> = conn
        .query_all(
            "SELECT status, COUNT(*) FROM deliveries GROUP BY status",
            args![],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?
        .into_iter()
        .collect();
    Ok(STATUSES
        .iter()
        .map(|status| (*status, found.get(*status).copied().unwrap_or(0)))
        .collect())
}

/// Gives a dead or failed delivery a fresh round of attempts, due now, under
/// the same id (so the same Idempotency-Key) and the same stored body; a
/// batch member takes its whole batch along, as the batch is one request.
/// The last error stays visible until the next attempt. `Err(status)` if
/// the delivery is in any other state.
pub fn rearm(tx: &Tx<'_>, id: &str) -> StoreResult<Result<DeliveryView, String>> {
    let (status, batch): (String, Option<String>) = tx
        .query_opt(
            "SELECT status, batch_id FROM deliveries WHERE id = ?1",
            args![id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?
        .ok_or(StoreError::NotFound)?;
    if status != "dead" && status != "failed" {
        return Ok(Err(status));
    }
    let ids: Vec<String> = match &batch {
        None => vec![id.to_string()],
        Some(batch) => tx.query_all(
            &format!("SELECT d.id FROM deliveries d WHERE {IN_BATCH}"),
            args![batch],
            |r| r.get(0),
        )?,
    };
    let now = tx.now_ms();
    for id in &ids {
        tx.execute(
            "UPDATE deliveries SET status = 'retrying', attempts = 0, next_attempt_at = ?2,
             updated_at = ?2
         WHERE id = ?1 AND (status = 'dead' OR status = 'failed')",
            args![id, now],
        )?;
    }
    let view = tx.query_one(
        &format!("SELECT {VIEW_COLUMNS} FROM deliveries WHERE id = ?1"),
        args![id],
        view_from_row,
    )?;
    Ok(Ok(view))
}

/// Re-arms every dead delivery (see `rearm`); returns how many.
pub fn rearm_dead(tx: &Tx<'_>) -> StoreResult<usize> {
    tx.execute(
        "UPDATE deliveries SET status = 'retrying', attempts = 0, next_attempt_at = ?1,
                 updated_at = ?1
             WHERE status = 'dead'",
        args![tx.now_ms()],
    )
}

pub(super) struct SenderContext {
    pub provider: Arc<dyn MailProvider>,
    pub from: String,
    pub queue: Arc<MailQueue>,
    pub outcomes: Sender<BusMsg>,
    pub pacer: Arc<Pacer>,
    /// Where `coalesce` writes the batches it makes.
    pub store: Arc<Store>,
    /// At most this many emails per batch; below 2, no batches.
    pub mail_batch: usize,
    /// Never carries a message: dropping its sender is the stop signal, which
    /// wakes every sender at once, even one waiting for its turn.
    pub stop: Receiver<()>,
}

impl SenderContext {
    /// Whether `job` may still join a bigger batch (`coalesce`): a fresh
    /// lone email or batch with room left, with batches on.
    fn may_batch(&self, job: &MailJob) -> bool {
        self.mail_batch >= 2 && job.fresh && job.emails.len() < self.mail_batch
    }
}

/// One attempt of `job`: one request under its key, a batch or one email.
pub(super) fn attempt(
    provider: &dyn MailProvider,
    from: &str,
    job: MailJob,
) -> (Outcome, RateHint) {
    // The bodies move into the request: each email's bytes are copied
    // once, when its job was built, not again per attempt.
    let (delivery_ids, emails): (Vec<String>, Vec<Email>) = job
        .emails
        .into_iter()
        .map(|e| {
            let email = Email {
                from: from.to_string(),
                to: vec![e.address],
                subject: e.subject,
                html: e.html,
                text: e.text,
            };
            (e.delivery_id, email)
        })
        .unzip();
    let (result, hint) = match (job.batched, emails.as_slice()) {
        (false, [email]) => {
            let (result, hint) = provider.send_email(email, &job.key);
            (result.map(|sent| vec![sent]), hint)
        }
        _ => provider.send_batch(&emails, &job.key),
    };
    if let Err(e) = &result {
        log::warn!(
            "{} {} ({} emails) attempt {} failed: {e}",
            if job.batched { "batch" } else { "delivery" },
            job.key,
            emails.len(),
            job.attempts + 1
        );
    }
    let outcome = Outcome {
        delivery_ids,
        batched: job.batched,
        attempts_before: job.attempts,
        provider: provider.name(),
        result,
    };
    (outcome, hint)
}

/// A mail sender thread: blocks until a job or the stop signal arrives,
/// waits for its turn under the shared pacer (a batch is one request),
/// sends, and hands the outcome back to be recorded. A job taken after the
/// stop signal is left pending in the database for the next start.
pub(super) fn run_sender(ctx: SenderContext) {
    let jobs = ctx.queue.receiver();
    // Jobs this sender took from the queue but has not sent yet.
    let mut taken: VecDeque<MailJob> = VecDeque::new();
    loop {
        let job = match taken.pop_front() {
            Some(job) => job,
            None => {
                let job = crossbeam_channel::select! {
                    recv(ctx.stop) -> _ => return,
                    recv(jobs) -> job => match job {
                        Ok(job) => job,
                        Err(_) => return,
                    },
                };
                ctx.queue.taken(&job);
                job
            }
        };
        if stopped(&ctx.stop) {
            return;
        }
        let (job, waited) = if !ctx.may_batch(&job) {
            if !ctx.pacer.wait_turn(&ctx.stop) {
                return;
            }
            (job, false)
        } else if ctx.pacer.take_turn_now() {
            (job, false)
        } else {
            // Held here through the wait, the job would miss the batch of
            // the sender whose turn comes first: it waits in the queue, and
            // this sender takes whatever waits there when its turn comes.
            ctx.queue.put_back(job);
            if !ctx.pacer.wait_turn(&ctx.stop) {
                return;
            }
            let Ok(job) = jobs.try_recv() else { continue };
            ctx.queue.taken(&job);
            (job, true)
        };
        let backlog = job.queued_at.is_some_and(|at| at.elapsed() >= BACKLOG);
        let job = coalesce(&ctx, &jobs, job, waited || backlog, &mut taken);
        let (outcome, hint) = attempt(ctx.provider.as_ref(), &ctx.from, job);
        ctx.pacer.observe(&hint);
        if ctx.outcomes.send(BusMsg::Outcome(outcome)).is_err() {
            return;
        }
    }
}

/// Emails created one per dispatch (a steady trickle) go out alone, or in
/// batches of a few when the dispatcher took a few events together. When
/// they arrive faster than the provider takes requests (Resend: 2 a
/// second), they wait in the queue, and one request each would never catch
/// up. So a sender about to send a fresh job takes the fresh jobs waiting
/// right behind it into one batch of up to `mail_batch` emails, written
/// down before the send (`merge_fresh`) so that any resend is the same
/// request under the same key. The first job it takes that cannot join is
/// kept in `taken`.
///
/// Merging batches costs the write a row per member, and saves a request
/// per batch: worth it only when requests are `short`, that is when the
/// sender waited for its turn at the provider's rate, or the job waited in
/// the queue for a sender (`BACKLOG`). Lone emails are merged either way.
fn coalesce(
    ctx: &SenderContext,
    jobs: &Receiver<MailJob>,
    first: MailJob,
    short: bool,
    taken: &mut VecDeque<MailJob>,
) -> MailJob {
    let joins = |job: &MailJob| ctx.may_batch(job) && (short || !job.batched);
    if !joins(&first) {
        return first;
    }
    let mut emails = first.emails.len();
    let mut members = vec![first];
    while emails < ctx.mail_batch {
        let Ok(job) = jobs.try_recv() else { break };
        ctx.queue.taken(&job);
        if !joins(&job) || emails + job.emails.len() > ctx.mail_batch {
            taken.push_back(job);
            break;
        }
        emails += job.emails.len();
        members.push(job);
    }
    if members.len() < 2 {
        return members.remove(0);
    }
    match ctx.store.write(|tx| merge_fresh(tx, &members)) {
        Ok(key) => {
            let mut emails: Vec<EmailJob> = members.into_iter().flat_map(|j| j.emails).collect();
            sort_members(&mut emails);
            MailJob::batch(key, emails, 0)
        }
        Err(e) => {
            // Nothing was written: each job goes as it was, in its own
            // turn, and is not offered to a batch again.
            log::warn!("cannot batch {emails} waiting emails: {e}");
            for job in &mut members {
                job.fresh = false;
            }
            let first = members.remove(0);
            taken.extend(members);
            first
        }
    }
}

/// A job that waited this long in the queue found every sender busy: the
/// provider's requests, not herald, are what is short. Far above the few
/// milliseconds a busy machine keeps a sender thread from running.
const BACKLOG: Duration = Duration::from_millis(100);

fn stopped(stop: &Receiver<()>) -> bool {
    matches!(stop.try_recv(), Err(TryRecvError::Disconnected) | Ok(()))
}

/// Deliveries for the email and mail queue tests.
#[cfg(test)]
pub(super) mod testing {
    use super::*;
    use crate::notify::templates::EmailContent;
    use crate::store::{Store, Synchronous};

    /// A store with `n` pending email deliveries, oldest first, in batches
    /// of `per_batch` (1: each alone), as the requests they make.
    pub fn store_with_pending(
        dir: &std::path::Path,
        n: usize,
        per_batch: usize,
    ) -> (Store, Vec<MailJob>) {
        let store = Store::open(&dir.join("q.db"), Synchronous::Normal).unwrap();
        let content = EmailContent {
            subject: "s".into(),
            html: "<p>h</p>".into(),
            text: "t".into(),
        };
        let created = store
            .write(|tx| {
                let mut batcher = Batcher::new(per_batch, n);
                let created = (0..n)
                    .map(|i| {
                        tx.execute(
                            "INSERT INTO outbox (seq, id, type, body, created_at)
                             VALUES (?1, ?2, 't', '{}', 0)",
                            args![i as i64 + 1, format!("evt_{i}")],
                        )?;
                        let batch = batcher.join(i as i64 + 1);
                        let job = insert_delivery(
                            tx,
                            i as i64 + 1,
                            &format!("email:{i}@x.io"),
                            &format!("{i}@x.io"),
                            &content,
                            batch.as_deref(),
                        )?;
                        Ok((batch, job.unwrap()))
                    })
                    .collect::<StoreResult<Vec<_>>>()?;
                batcher.write(tx)?;
                Ok::<_, StoreError>(created)
            })
            .unwrap();
        (store, MailJob::group(created))
    }

    /// Records deliveries as sent, as the dispatcher does with outcomes.
    pub fn record_sent<'a>(store: &Store, ids: impl IntoIterator<Item = &'a String>) {
        store
            .write(|tx| {
                for id in ids {
                    tx.execute(
                        "UPDATE deliveries SET status = 'sent' WHERE id = ?1",
                        args![id],
                    )?;
                }
                Ok::<_, StoreError>(())
            })
            .unwrap();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::testing::{record_sent, store_with_pending};
    use super::*;
    use crate::store::Store;

    /// (status, attempts, next_attempt_at, batch_id) of each delivery.
    fn states(store: &Store, ids: &[String]) -> Vec<(String, u32, Option<i64>, Option<String>)> {
        store
            .read(|c| {
                ids.iter()
                    .map(|id| {
                        c.query_one(
                            "SELECT status, attempts, next_attempt_at, batch_id
                             FROM deliveries WHERE id = ?1",
                            args![id],
                            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                        )
                    })
                    .collect::<StoreResult<Vec<_>>>()
            })
            .unwrap()
    }

    fn outcome(job: &MailJob, result: Result<Vec<Sent>, MailError>) -> Outcome {
        Outcome {
            delivery_ids: job.delivery_ids().map(str::to_string).collect(),
            batched: job.batched,
            attempts_before: job.attempts,
            provider: "test",
            result,
        }
    }

    fn record_one(store: &Store, o: Outcome) -> Option<i64> {
        store
            .write(|tx| record(tx, &[o], &DeliveryPolicy::default()))
            .unwrap()
    }

    fn batch_rows(store: &Store) -> i64 {
        store
            .read(|c| c.query_one("SELECT COUNT(*) FROM mail_batches", args![], |r| r.get(0)))
            .unwrap()
    }

    fn ids(job: &MailJob) -> Vec<String> {
        job.delivery_ids().map(str::to_string).collect()
    }

    #[test]
    fn a_batch_is_retried_whole_at_one_time_and_claimed_as_one_request() {
        let dir = tempfile::tempdir().unwrap();
        let (store, jobs) = store_with_pending(dir.path(), 3, 100);
        let [job] = &jobs[..] else {
            panic!("one batch expected, got {jobs:?}")
        };
        let retry_after = Some(Duration::from_millis(1));
        let error = MailError::Retryable {
            message: "HTTP 503".into(),
            retry_after,
        };
        let at = record_one(&store, outcome(job, Err(error))).expect("a retry is scheduled");
        let states = states(&store, &ids(job));
        for state in &states {
            assert_eq!(
                (state.0.as_str(), state.1, state.2, state.3.as_deref()),
                ("retrying", 1, Some(at), Some(job.key.as_str())),
                "every member shares the batch's one retry time"
            );
        }
        let due = store.write(|tx| claim_due(tx, at, 500)).unwrap();
        assert_eq!(due.len(), 1, "the batch is claimed as one request");
        assert_eq!(
            (due[0].key.as_str(), due[0].batched),
            (job.key.as_str(), true)
        );
        assert_eq!(ids(&due[0]), ids(job), "the same members in the same order");
        assert_eq!(due[0].attempts, 1);
    }

    #[test]
    fn a_refused_batch_breaks_up_and_its_members_go_alone_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (store, jobs) = store_with_pending(dir.path(), 2, 100);
        let job = &jobs[0];
        let refused = MailError::Invalid {
            message: "HTTP 422 validation_error: Invalid `to` field at index 1".into(),
        };
        let before = store.clock().now_ms();
        let at = record_one(&store, outcome(job, Err(refused))).expect("due again");
        assert!(at >= before && at <= store.clock().now_ms());
        let due = store.write(|tx| claim_due(tx, at, 500)).unwrap();
        let mut alone: Vec<(String, bool)> =
            due.iter().map(|j| (j.key.clone(), j.batched)).collect();
        alone.sort();
        let expected: Vec<(String, bool)> = ids(job).into_iter().map(|id| (id, false)).collect();
        assert_eq!(alone, expected, "each member alone, under its own id");
    }

    /// Records `refusal` for a fresh batch of `n` and checks that every
    /// member failed and kept its batch.
    fn assert_fails_whole(n: usize, refusal: MailError) -> (tempfile::TempDir, Store, MailJob) {
        let dir = tempfile::tempdir().unwrap();
        let (store, mut jobs) = store_with_pending(dir.path(), n, 100);
        let job = jobs.remove(0);
        assert_eq!(record_one(&store, outcome(&job, Err(refusal))), None);
        assert!(states(&store, &ids(&job))
            .iter()
            .all(|s| s.0 == "failed" && s.3.as_deref() == Some(job.key.as_str())));
        (dir, store, job)
    }

    /// A refusal that is not about the request's bytes (a revoked key) may
    /// come before the provider would replay an earlier attempt that went
    /// out: the batch stays whole, and its members fail together.
    #[test]
    fn a_batch_refused_for_another_reason_fails_whole() {
        assert_fails_whole(
            2,
            MailError::Permanent {
                message: "HTTP 403 invalid_api_key: API key is invalid".into(),
            },
        );
    }

    #[test]
    fn a_key_conflict_fails_the_whole_batch_and_a_retry_rearms_it_whole() {
        let conflict = MailError::KeyConflict {
            message: "HTTP 409 invalid_idempotent_request".into(),
        };
        let (_dir, store, job) = assert_fails_whole(3, conflict);
        let members = ids(&job);
        // Re-arming one member re-arms the batch: it is one request.
        let view = store.write(|tx| rearm(tx, &members[1])).unwrap().unwrap();
        assert_eq!(view.status, "retrying");
        assert!(states(&store, &members)
            .iter()
            .all(|s| s.0 == "retrying" && s.1 == 0));
        let due = store
            .write(|tx| claim_due(tx, store.clock().now_ms(), 500))
            .unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(ids(&due[0]), members);
    }

    /// Members are found through the deliveries' event key within the
    /// batch's range of events: no index entry per delivery, and no scan.
    #[test]
    fn a_batchs_members_are_found_by_its_events_not_by_a_scan() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = store_with_pending(dir.path(), 2, 100);
        let plan: Vec<String> = store
            .read(|c| {
                let sql = format!(
                    "EXPLAIN QUERY PLAN SELECT {JOB_COLUMNS} FROM {JOB_FROM}
                     WHERE {IN_BATCH} ORDER BY d.id"
                );
                c.query_all(&sql, args!["bat_x"], |r| r.get::<String>(3))
            })
            .unwrap();
        let plan = plan.join("\n");
        assert!(plan.contains("SEARCH d USING INDEX"), "{plan}");
        assert!(!plan.contains("SCAN d"), "{plan}");
    }

    #[test]
    fn a_sent_batch_stores_each_members_provider_id() {
        let dir = tempfile::tempdir().unwrap();
        let (store, jobs) = store_with_pending(dir.path(), 3, 100);
        let job = &jobs[0];
        let sent = (0..3)
            .map(|i| Sent {
                provider_id: format!("re_{i}"),
            })
            .collect();
        assert_eq!(record_one(&store, outcome(job, Ok(sent))), None);
        let provider_ids: Vec<String> = store
            .read(|c| {
                ids(job)
                    .iter()
                    .map(|id| {
                        c.query_one(
                            "SELECT provider_id FROM deliveries WHERE id = ?1 AND status = 'sent'",
                            args![id],
                            |r| r.get(0),
                        )
                    })
                    .collect::<StoreResult<Vec<_>>>()
            })
            .unwrap();
        assert_eq!(provider_ids, ["re_0", "re_1", "re_2"]);
    }

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

    /// A sender's context over `store` and `queue`, for `coalesce`: it
    /// never sends, so the provider and the channels are placeholders.
    fn sender_context(store: Store, queue: Arc<MailQueue>) -> SenderContext {
        SenderContext {
            provider: Arc::new(crate::mail::Console),
            from: "herald@x.io".into(),
            queue,
            outcomes: crossbeam_channel::unbounded().0,
            pacer: Arc::new(Pacer::new(None)),
            store: Arc::new(store),
            mail_batch: 100,
            stop: crossbeam_channel::never(),
        }
    }

    /// Queues `jobs` and takes the first, as a sender would.
    fn queued(jobs: &[MailJob]) -> (Arc<MailQueue>, Receiver<MailJob>, MailJob) {
        let queue = Arc::new(MailQueue::bounded(100));
        for job in jobs {
            assert!(queue.offer(job.clone()));
        }
        let rx = queue.receiver();
        let first = rx.try_recv().unwrap();
        queue.taken(&first);
        (queue, rx, first)
    }

    #[test]
    fn a_sender_batches_the_fresh_lone_emails_waiting_behind_it() {
        let dir = tempfile::tempdir().unwrap();
        let (store, mut jobs) = store_with_pending(dir.path(), 5, 1);
        // Read back from the database: a previous run may have sent it.
        jobs[3].fresh = false;
        let (queue, rx, first) = queued(&jobs);
        let ctx = sender_context(store, queue.clone());
        let may_batch: Vec<bool> = jobs.iter().map(|j| ctx.may_batch(j)).collect();
        assert_eq!(may_batch, [true, true, true, false, true]);
        let mut taken = VecDeque::new();
        let batch = coalesce(&ctx, &rx, first, false, &mut taken);

        let mut expected: Vec<String> = jobs[..3].iter().flat_map(ids).collect();
        expected.sort();
        assert!(batch.batched, "{batch:?}");
        assert_eq!(ids(&batch), expected, "the three in front, in id order");
        assert_eq!(
            taken.iter().flat_map(ids).collect::<Vec<_>>(),
            ids(&jobs[3])
        );
        assert_eq!(queue.len(), 1, "the job behind it waits for any sender");

        let (pending, _) = ctx.store.read(|c| pending_jobs(c, 10)).unwrap();
        let read = pending
            .iter()
            .find(|j| j.batched)
            .expect("the batch is stored");
        assert_eq!(
            (&read.key, ids(read), read.fresh),
            (&batch.key, ids(&batch), false),
            "a restart sends the identical request under the same key"
        );
        assert_eq!(pending.len(), 3, "the batch and the two lone ones");
        let off = SenderContext {
            mail_batch: 1,
            ..ctx
        };
        assert!(
            !off.may_batch(&jobs[0]),
            "HERALD_MAIL_BATCH=1: never batched"
        );
    }

    #[test]
    fn a_sender_merges_fresh_batches_waiting_behind_it_up_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        // Batches of 2, 2, 2 and 1, as four dispatches of two events make.
        let (store, jobs) = store_with_pending(dir.path(), 7, 2);
        let sizes: Vec<usize> = jobs.iter().map(|j| j.emails.len()).collect();
        assert_eq!(sizes, [2, 2, 2, 1]);
        let (queue, rx, first) = queued(&jobs);
        let ctx = SenderContext {
            mail_batch: 5,
            ..sender_context(store, queue.clone())
        };
        let mut taken = VecDeque::new();
        let batch = coalesce(&ctx, &rx, first, true, &mut taken);

        let mut expected: Vec<String> = jobs[..2].iter().flat_map(ids).collect();
        expected.sort();
        assert_eq!(ids(&batch), expected, "2 + 2: the third would make 6");
        assert!(batch.batched && !batch.fresh);
        assert_eq!(
            taken.iter().map(|j| &j.key).collect::<Vec<_>>(),
            [&jobs[2].key]
        );
        assert_eq!(queue.len(), 1);

        let (pending, _) = ctx.store.read(|c| pending_jobs(c, 10)).unwrap();
        let requests: BTreeSet<(&String, Vec<String>)> =
            pending.iter().map(|j| (&j.key, ids(j))).collect();
        let expected = BTreeSet::from([
            (&batch.key, ids(&batch)),
            (&jobs[2].key, ids(&jobs[2])),
            (&jobs[3].key, ids(&jobs[3])),
        ]);
        assert_eq!(
            requests, expected,
            "a restart sends the merged batch, identical, and the rest as they were"
        );
        let batches = batch_rows(&ctx.store);
        assert_eq!(batches, 3, "the two merged batches are gone");
    }

    #[test]
    fn with_a_free_turn_a_fresh_batch_goes_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let (store, jobs) = store_with_pending(dir.path(), 4, 2);
        let (queue, rx, first) = queued(&jobs);
        let ctx = sender_context(store, queue);
        let mut taken = VecDeque::new();
        let job = coalesce(&ctx, &rx, first, false, &mut taken);

        assert_eq!((&job.key, ids(&job)), (&jobs[0].key, ids(&jobs[0])));
        assert!(taken.is_empty(), "{taken:?}");
        let behind = rx.try_recv().expect("the batch behind still waits");
        assert_eq!(behind.key, jobs[1].key);
    }

    #[test]
    fn a_batch_that_cannot_merge_goes_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let (store, jobs) = store_with_pending(dir.path(), 4, 2);
        record_sent(&store, &ids(&jobs[1])[..1]);
        let (queue, rx, first) = queued(&jobs);
        let ctx = sender_context(store, queue);
        let mut taken = VecDeque::new();
        let job = coalesce(&ctx, &rx, first, true, &mut taken);

        let as_they_were: Vec<(&String, Vec<String>, bool)> = [&job]
            .into_iter()
            .chain(&taken)
            .map(|j| (&j.key, ids(j), j.fresh))
            .collect();
        assert_eq!(
            as_they_were,
            [
                (&jobs[0].key, ids(&jobs[0]), false),
                (&jobs[1].key, ids(&jobs[1]), false)
            ]
        );
        let all: Vec<String> = jobs.iter().flat_map(ids).collect();
        let kept: Vec<Option<String>> = states(&ctx.store, &all).into_iter().map(|s| s.3).collect();
        let before: Vec<Option<String>> = jobs
            .iter()
            .flat_map(|j| j.emails.iter().map(|_| Some(j.key.clone())))
            .collect();
        assert_eq!(kept, before, "nothing written");
    }

    #[test]
    fn a_member_no_longer_waiting_leaves_every_email_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (store, jobs) = store_with_pending(dir.path(), 3, 1);
        record_sent(&store, &ids(&jobs[2]));
        let (queue, rx, first) = queued(&jobs);
        let ctx = sender_context(store, queue);
        let mut taken = VecDeque::new();
        let job = coalesce(&ctx, &rx, first, false, &mut taken);

        assert!(!job.batched, "{job:?}");
        assert_eq!(job.emails.len() + taken.len(), 3, "every email still goes");
        assert!(taken.iter().all(|j| !j.batched && j.emails.len() == 1));
        let all: Vec<String> = jobs.iter().flat_map(ids).collect();
        let states = states(&ctx.store, &all);
        assert!(
            states.iter().all(|s| s.3.is_none()),
            "nothing written: {states:?}"
        );
        let batches = batch_rows(&ctx.store);
        assert_eq!(batches, 0);
    }
}
