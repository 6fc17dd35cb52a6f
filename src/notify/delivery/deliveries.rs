//! The deliveries table: one row per (event, recipient) email, rendered once
//! at creation (the body stored once per event and locale) and grouped into batches
//! when created together; the requests (`MailJob`) read back from it for
//! the senders, and the claims that move due retries back to pending.
//! A pending delivery is held by one instance (`claimed_by`): only its
//! senders send it, until `take_over` hands a dead instance's to another.
//! Invariant: a batch's members are fixed once written and always read
//! back in id order, so every attempt is the identical request under the
//! same Idempotency-Key.

use std::collections::HashSet;
use std::time::Instant;

use crate::args;
use crate::ids;
use crate::notify::templates::EmailContent;
use crate::store::{Conn, Row, StoreError, StoreResult, Tx};

/// One email to send: everything the provider needs, as stored.
#[derive(Debug, Clone)]
pub struct EmailJob {
    pub delivery_id: String,
    pub address: String,
    pub subject: String,
    pub html: String,
    pub text: String,
}

/// The email one delivery sends: its event's default body, and the
/// translation (locale tag, content) its recipient reads, if any. The
/// default is stored even when only translations are sent, so every
/// delivery finds its event's row in `email_bodies`.
#[derive(Debug, Clone, Copy)]
pub struct Body<'a> {
    pub default: &'a EmailContent,
    pub translated: Option<(&'a str, &'a EmailContent)>,
}

impl<'a> Body<'a> {
    /// The content this delivery sends.
    pub fn sent(&self) -> &'a EmailContent {
        self.translated.map_or(self.default, |(_, content)| content)
    }

    /// The locale whose body this delivery sends; None for the default.
    pub fn locale(&self) -> Option<&'a str> {
        self.translated.map(|(tag, _)| tag)
    }
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
    pub(crate) fn batch(key: String, emails: Vec<EmailJob>, attempts: u32) -> MailJob {
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
pub(crate) fn sort_members(emails: &mut [EmailJob]) {
    emails.sort_unstable_by(|a, b| a.delivery_id.cmp(&b.delivery_id));
}

/// Creates the email delivery for (event, recipient), rendered now and sent
/// identically on every attempt, as a member of `batch` if given, held by
/// instance `claimed_by`. None if it already exists.
pub fn insert_delivery(
    tx: &Tx<'_>,
    event_seq: i64,
    recipient: &str,
    address: &str,
    body: Body<'_>,
    batch: Option<&str>,
    claimed_by: i64,
) -> StoreResult<Option<EmailJob>> {
    let id = ids::new_id("dlv");
    let now = tx.now_ms();
    insert_body(tx, event_seq, body)?;
    let changed = tx.execute(
        "INSERT INTO deliveries
                 (id, event_seq, recipient, channel, address, status, created_at, updated_at,
                  batch_id, claimed_by, locale)
             VALUES (?1, ?2, ?3, 'email', ?4, 'pending', ?5, ?5, ?6, ?7, ?8)
             ON CONFLICT DO NOTHING",
        args![
            id,
            event_seq,
            recipient,
            address,
            now,
            batch,
            claimed_by,
            body.locale()
        ],
    )?;
    let content = body.sent();
    Ok((changed == 1).then(|| EmailJob {
        delivery_id: id,
        address: address.to_string(),
        subject: content.subject.clone(),
        html: content.html.clone(),
        text: content.text.clone(),
    }))
}

/// Stores the email of event `event_seq` once per locale: its other
/// recipients' deliveries find it there.
pub(crate) fn insert_body(tx: &Tx<'_>, event_seq: i64, body: Body<'_>) -> StoreResult<()> {
    let content = body.default;
    tx.execute(
        "INSERT INTO email_bodies (event_seq, subject, html, text)
         VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT DO NOTHING",
        args![event_seq, content.subject, content.html, content.text],
    )?;
    if let Some((tag, content)) = body.translated {
        tx.execute(
            "INSERT INTO email_bodies_localized (event_seq, locale, subject, html, text)
             VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT DO NOTHING",
            args![event_seq, tag, content.subject, content.html, content.text],
        )?;
    }
    Ok(())
}

/// Hands out batch ids to the email deliveries one dispatch transaction
/// creates: up to `max` in a row share one. Off (every delivery alone) when
/// the transaction is expected to create fewer than two emails, so a quiet
/// server sends each email under its own delivery id. The deliveries are
/// held by instance `holder`.
pub struct Batcher {
    max: usize,
    holder: i64,
    /// Per batch: its id, members so far, and the range of their events.
    batches: Vec<(String, usize, i64, i64)>,
}

impl Batcher {
    pub fn new(max: usize, expected_emails: usize, holder: i64) -> Batcher {
        let max = if expected_emails >= 2 { max } else { 1 };
        Batcher {
            max,
            holder,
            batches: Vec::new(),
        }
    }

    /// The instance whose senders hold the deliveries created.
    pub fn holder(&self) -> i64 {
        self.holder
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
/// request its job names, or no longer held by instance `me`, fails the
/// whole call (`NotFound`), which rolls it back.
pub fn merge_fresh(tx: &Tx<'_>, jobs: &[MailJob], me: i64) -> StoreResult<String> {
    let id = ids::new_id("bat");
    let (mut first, mut last) = (i64::MAX, i64::MIN);
    for job in jobs {
        let was = job.batched.then_some(&job.key);
        for email in &job.emails {
            let seq: i64 = tx
                .query_opt(
                    "UPDATE deliveries SET batch_id = ?2
         WHERE id = ?1 AND status = 'pending' AND batch_id IS NOT DISTINCT FROM ?3
               AND claimed_by = ?4
         RETURNING event_seq",
                    args![email.delivery_id, id, was, me],
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
pub(crate) const IN_BATCH: &str =
    "d.event_seq BETWEEN (SELECT first_seq FROM mail_batches WHERE id = ?1)
         AND (SELECT last_seq FROM mail_batches WHERE id = ?1)
     AND d.batch_id = ?1";

/// A job's columns, from `deliveries d` joined with its body: the event's
/// body `b` in the delivery's locale `l`, else the default (the same join
/// in `held::DUE` and `views::console_sent`).
const JOB_COLUMNS: &str = "d.id, d.address, COALESCE(l.subject, b.subject),
     COALESCE(l.html, b.html), COALESCE(l.text, b.text), d.attempts, d.batch_id";
const JOB_FROM: &str = "deliveries d JOIN email_bodies b ON b.event_seq = d.event_seq
     LEFT JOIN email_bodies_localized l ON l.event_seq = d.event_seq AND l.locale = d.locale";

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
    let mut seen = HashSet::new();
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

/// The oldest deliveries instance `me` holds waiting to be sent, at most
/// `limit` rows read, as requests for the mail queue to page in; also how
/// many rows were read.
pub fn pending_jobs(conn: &Conn<'_>, limit: usize, me: i64) -> StoreResult<(Vec<MailJob>, usize)> {
    let rows: Vec<JobRow> = conn.query_all(
        &format!(
            "SELECT {JOB_COLUMNS} FROM {JOB_FROM} WHERE d.status = 'pending' AND d.claimed_by = ?2
             ORDER BY d.created_at LIMIT ?1"
        ),
        args![i64::try_from(limit).unwrap_or(i64::MAX), me],
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

/// Moves retries that are due back to pending (a batch whole), held by
/// instance `me`, and returns them as requests. Rows another instance is
/// claiming at the same moment are left to it.
pub fn claim_due(tx: &Tx<'_>, now: i64, limit: usize, me: i64) -> StoreResult<Vec<MailJob>> {
    let rows: Vec<JobRow> = tx.query_all(
        &format!(
            "SELECT {JOB_COLUMNS} FROM {JOB_FROM}
             WHERE d.status = 'retrying' AND d.next_attempt_at <= ?1
             ORDER BY d.next_attempt_at LIMIT ?2{}",
            tx.engine().skip_locked("d")
        ),
        args![now, limit],
        job_from_row,
    )?;
    let jobs = jobs_from_rows(tx, rows)?;
    for id in jobs.iter().flat_map(MailJob::delivery_ids) {
        tx.execute(
            "UPDATE deliveries
             SET status = 'pending', next_attempt_at = NULL, updated_at = ?2, claimed_by = ?3
             WHERE id = ?1 AND status = 'retrying'",
            args![id, now, me],
        )?;
    }
    Ok(jobs)
}

/// Hands instance `me` up to `limit` pending deliveries held by no
/// instance alive (a heartbeat at or after `alive_since`), or by none at
/// all; how many. The mail queue then pages them in like its own.
pub fn take_over(tx: &Tx<'_>, me: i64, alive_since: i64, limit: usize) -> StoreResult<usize> {
    tx.execute(
        &format!(
            "UPDATE deliveries SET claimed_by = ?1
             WHERE id IN (
                 SELECT d.id FROM deliveries d
                 WHERE d.status = 'pending' AND (d.claimed_by IS NULL OR (d.claimed_by <> ?1
                     AND d.claimed_by NOT IN (SELECT id FROM instances WHERE heartbeat_at >= ?2)))
                 LIMIT ?3{})",
            tx.engine().skip_locked("d")
        ),
        args![me, alive_since, limit],
    )
}

/// When the earliest waiting retry is due.
pub fn next_retry_at(conn: &Conn<'_>) -> StoreResult<Option<i64>> {
    conn.query_one(
        "SELECT MIN(next_attempt_at) FROM deliveries WHERE status = 'retrying'",
        args![],
        |r| r.get(0),
    )
}

/// Deliveries for the delivery engine's unit tests: a store with pending
/// emails made the way the dispatcher makes them, and reads of their state.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// The instance that holds the deliveries tests make.
    pub(crate) const TEST_INSTANCE: i64 = 1;
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
                let mut batcher = Batcher::new(per_batch, n, TEST_INSTANCE);
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
                            Body {
                                default: &content,
                                translated: None,
                            },
                            batch.as_deref(),
                            TEST_INSTANCE,
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
    pub fn record_sent<'a>(store: &Store, ids: impl IntoIterator<Item = &'a String> + Clone) {
        store
            .write(|tx| {
                for id in ids.clone() {
                    tx.execute(
                        "UPDATE deliveries SET status = 'sent' WHERE id = ?1",
                        args![id],
                    )?;
                }
                Ok::<_, StoreError>(())
            })
            .unwrap();
    }

    /// (status, attempts, next_attempt_at, batch_id) of each delivery.
    pub fn states(
        store: &Store,
        ids: &[String],
    ) -> Vec<(String, u32, Option<i64>, Option<String>)> {
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

    /// The delivery ids a request carries, in order.
    pub fn ids(job: &MailJob) -> Vec<String> {
        job.delivery_ids().map(str::to_string).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::store_with_pending;
    use super::*;

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
}
