//! The outbox table: one row per accepted event, written in the caller's
//! transaction, claimed by the dispatcher exactly once (pending -> dispatched
//! in the same transaction as its inbox rows and deliveries), and read back
//! with its result for `GET /v1/events/{id}`. A row with a `due_at` ahead
//! (`sendAt`) cannot be claimed before then; a pending row may instead be
//! cancelled, and the claim and the cancel both require `pending`, so an
//! event ends one way or the other, never both.

use serde::Serialize;

use super::error::NotifyError;
use super::event::Event;
use super::registry::Channel;
use crate::args;
use crate::ids;
use crate::store::{Conn, Row, StoreResult, Tx};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    /// Dispatch order; what travels on the bus.
    pub seq: i64,
    /// The public event id.
    pub id: String,
    /// False when an earlier event with the same idempotency key was found.
    pub created: bool,
    /// When the event is due (`sendAt`, or now for a time past); None for an
    /// event without `sendAt`.
    pub due_at: Option<i64>,
    /// Due later than its commit: the scheduler publishes it when due, and
    /// nothing must publish it before.
    pub scheduled: bool,
}

/// Writes `event` (already validated) as a pending outbox row, unless its
/// idempotency key names an earlier event.
pub fn enqueue(tx: &Tx<'_>, event: &Event) -> Result<Enqueued, NotifyError> {
    if let Some(key) = &event.idempotency_key {
        let existing = tx.query_opt(
            "SELECT seq, id, due_at FROM outbox WHERE idempotency_key = ?1",
            args![key],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        if let Some((seq, id, due_at)) = existing {
            return Ok(Enqueued {
                seq,
                id,
                created: false,
                due_at,
                scheduled: false,
            });
        }
    }
    let body = serde_json::to_string(event)
        .map_err(|e| NotifyError::Render(format!("cannot encode event: {e}")))?;
    let row = NewRow {
        kind: &event.kind,
        body: &body,
        row_kind: KIND_NOTIFICATION,
        idempotency_key: event.idempotency_key.as_deref(),
        // A time past means now: due at once, published on commit.
        due_at: event.send_at.map(|at| at.max(tx.now_ms())),
        cancellation_key: event.cancellation_key.as_deref(),
    };
    Ok(insert(tx, &row)?)
}

/// The `outbox.kind` of a notification event.
const KIND_NOTIFICATION: &str = "notification";

/// The `outbox.kind` of a domain event (`notification` for the rest).
pub const KIND_DOMAIN: &str = "domain";

/// Writes a committed-with-the-caller domain event (no registry type, no
/// recipients) as a pending outbox row of kind `domain`; the dispatcher
/// hands it to the listeners.
pub fn enqueue_domain(
    tx: &Tx<'_>,
    kind: &str,
    payload: &serde_json::Value,
) -> Result<Enqueued, NotifyError> {
    let body = serde_json::json!({ "type": kind, "payload": payload }).to_string();
    let row = NewRow {
        kind,
        body: &body,
        row_kind: KIND_DOMAIN,
        idempotency_key: None,
        due_at: None,
        cancellation_key: None,
    };
    Ok(insert(tx, &row)?)
}

/// The columns of a new outbox row.
struct NewRow<'a> {
    kind: &'a str,
    body: &'a str,
    row_kind: &'a str,
    idempotency_key: Option<&'a str>,
    due_at: Option<i64>,
    cancellation_key: Option<&'a str>,
}

/// Writes one pending outbox row under a new public id.
fn insert(tx: &Tx<'_>, row: &NewRow<'_>) -> StoreResult<Enqueued> {
    let id = ids::new_id("evt");
    let now = tx.now_ms();
    let seq = tx.insert_one(
        "INSERT INTO outbox (id, type, body, kind, idempotency_key, created_at, due_at,
                             cancellation_key)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        args![
            id,
            row.kind,
            row.body,
            row.row_kind,
            row.idempotency_key,
            now,
            row.due_at,
            row.cancellation_key
        ],
    )?;
    Ok(Enqueued {
        seq,
        id,
        created: true,
        due_at: row.due_at,
        scheduled: row.due_at.is_some_and(|at| at > now),
    })
}

pub struct PendingRow {
    pub seq: i64,
    pub event: Result<Event, String>,
}

/// The notification rows among `seqs` still pending, in dispatch order.
pub fn load_pending(conn: &Conn<'_>, seqs: &[i64]) -> StoreResult<Vec<PendingRow>> {
    Ok(load_pending_split(conn, seqs)?.0)
}

/// Like `load_pending`, also returning the pending domain-event rows among
/// `seqs` (by seq), which go to the listeners rather than the registry.
pub fn load_pending_split(
    conn: &Conn<'_>,
    seqs: &[i64],
) -> StoreResult<(Vec<PendingRow>, Vec<i64>)> {
    let mut rows = Vec::with_capacity(seqs.len());
    let mut domain = Vec::new();
    for &seq in seqs {
        let found = conn.query_opt(
            "SELECT body, kind FROM outbox WHERE seq = ?1 AND status = 'pending'",
            args![seq],
            |r| Ok((r.get::<String>(0)?, r.get::<String>(1)?)),
        )?;
        match found {
            Some((_, kind)) if kind == KIND_DOMAIN => domain.push(seq),
            Some((body, _)) => {
                let event = serde_json::from_str(&body)
                    .map_err(|e| format!("stored event unreadable: {e}"));
                rows.push(PendingRow { seq, event });
            }
            None => {}
        }
    }
    Ok((rows, domain))
}

/// What claiming an outbox row found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Pending and due: this transaction dispatches it.
    Taken,
    /// Dispatched, failed or cancelled already, or, on a shared database,
    /// being dispatched by another transaction right now.
    Gone,
    /// Pending but due later (`sendAt`): the scheduler publishes it then.
    NotDue,
}

/// Claims a pending row for dispatch inside the dispatcher's transaction.
/// `Gone` if another dispatcher (or an earlier run) already took it, it was
/// cancelled, or, on a shared database, another transaction is dispatching
/// or cancelling it right now (its lock is skipped, not waited for: it
/// commits the row or leaves it pending for a sweep). `NotDue` before its
/// `due_at`.
pub fn claim_due(tx: &Tx<'_>, seq: i64) -> StoreResult<Claim> {
    let row: Option<(String, Option<i64>)> = tx.query_opt(
        &format!(
            "SELECT status, due_at FROM outbox WHERE seq = ?1{}",
            tx.engine().skip_locked("outbox")
        ),
        args![seq],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok(match row {
        Some((status, _)) if status != "pending" => Claim::Gone,
        Some((_, Some(due))) if due > tx.now_ms() => Claim::NotDue,
        Some(_) => Claim::Taken,
        None => Claim::Gone,
    })
}

/// `claim_due` for rows that are never scheduled (domain events): true
/// when taken.
pub fn claim(tx: &Tx<'_>, seq: i64) -> StoreResult<bool> {
    Ok(claim_due(tx, seq)? == Claim::Taken)
}

/// One set of counts of an event's result: `sent`, `deduped`,
/// `suppressedByPrefs` (SPEC 2.3) and `throttled` (SPEC 9).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResultCounts {
    pub sent: i64,
    pub deduped: i64,
    pub suppressed_by_prefs: i64,
    pub throttled: i64,
}

/// The counts of each channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ChannelCounts {
    pub inbox: ResultCounts,
    pub email: ResultCounts,
}

impl ChannelCounts {
    /// The counts of `channel`.
    pub fn of(&mut self, channel: Channel) -> &mut ResultCounts {
        match channel {
            Channel::Inbox => &mut self.inbox,
            Channel::Email => &mut self.email,
        }
    }
}

/// An event's result: the top-level counts are per recipient (each
/// recipient counts at most once), `channels` per channel (SPEC 2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DispatchResult {
    pub sent: i64,
    pub deduped: i64,
    pub suppressed_by_prefs: i64,
    /// Recipients held back by the type's throttle (0 for events
    /// dispatched before there were throttles).
    pub throttled: i64,
    /// None only for events dispatched before schema version 3: their three
    /// counts counted channels, and no split of them was stored.
    pub channels: Option<ChannelCounts>,
}

impl Default for DispatchResult {
    /// Nothing counted yet, with an (empty) channel breakdown.
    fn default() -> Self {
        DispatchResult {
            sent: 0,
            deduped: 0,
            suppressed_by_prefs: 0,
            throttled: 0,
            channels: Some(ChannelCounts::default()),
        }
    }
}

/// The result columns of `outbox`, in this order after the row's own.
const RESULT_COLUMNS: &str = "sent, deduped, suppressed, inbox_sent, inbox_deduped, \
                              inbox_suppressed, email_sent, email_deduped, email_suppressed, \
                              throttled, inbox_throttled, email_throttled";

/// Reads the result columns starting at `first` (see `RESULT_COLUMNS`);
/// None while the event is not dispatched.
fn read_result(r: &Row<'_>, first: usize) -> StoreResult<Option<DispatchResult>> {
    let count = |i: usize| r.get::<Option<i64>>(first + i);
    let Some(sent) = count(0)? else {
        return Ok(None);
    };
    // `throttled` columns are NULL for events dispatched before version 6.
    let channel = |at: usize, throttled: usize| -> StoreResult<Option<ResultCounts>> {
        Ok(match (count(at)?, count(at + 1)?, count(at + 2)?) {
            (Some(sent), Some(deduped), Some(suppressed_by_prefs)) => Some(ResultCounts {
                sent,
                deduped,
                suppressed_by_prefs,
                throttled: count(throttled)?.unwrap_or(0),
            }),
            _ => None,
        })
    };
    let channels = match (channel(3, 10)?, channel(6, 11)?) {
        (Some(inbox), Some(email)) => Some(ChannelCounts { inbox, email }),
        _ => None,
    };
    Ok(Some(DispatchResult {
        sent,
        deduped: count(1)?.unwrap_or(0),
        suppressed_by_prefs: count(2)?.unwrap_or(0),
        throttled: count(9)?.unwrap_or(0),
        channels,
    }))
}

/// Records the result. A notification's body (recipients and payload) is
/// dropped here: the inbox rows and stored emails carry what is needed from
/// now on. A domain event keeps it for its listeners' retries, and so does
/// an event with topics (`keep_body`) until its fan-out's last page
/// (`finish_fan_out`).
pub fn mark_dispatched(
    tx: &Tx<'_>,
    seq: i64,
    result: DispatchResult,
    keep_body: bool,
) -> StoreResult<()> {
    let inbox = result.channels.map(|c| c.inbox);
    let email = result.channels.map(|c| c.email);
    tx.execute(
        "UPDATE outbox SET status = 'dispatched', dispatched_at = ?2, sent = ?3, deduped = ?4,
                           body = CASE WHEN kind = 'domain' OR ?15 THEN body ELSE '' END,
                           suppressed = ?5, inbox_sent = ?6, inbox_deduped = ?7,
                           inbox_suppressed = ?8, email_sent = ?9, email_deduped = ?10,
                           email_suppressed = ?11, throttled = ?12, inbox_throttled = ?13,
                           email_throttled = ?14
         WHERE seq = ?1",
        args![
            seq,
            tx.now_ms(),
            result.sent,
            result.deduped,
            result.suppressed_by_prefs,
            inbox.map(|c| c.sent),
            inbox.map(|c| c.deduped),
            inbox.map(|c| c.suppressed_by_prefs),
            email.map(|c| c.sent),
            email.map(|c| c.deduped),
            email.map(|c| c.suppressed_by_prefs),
            result.throttled,
            inbox.map(|c| c.throttled),
            email.map(|c| c.throttled),
            keep_body,
        ],
    )?;
    Ok(())
}

/// Adds a fan-out page's result to the event's (each user counts in one
/// page only, so the sums count each once), and on the last page drops
/// the body the pages read.
pub fn add_page_result(
    tx: &Tx<'_>,
    seq: i64,
    result: &DispatchResult,
    last: bool,
) -> StoreResult<()> {
    let channels = result.channels.unwrap_or_default();
    let (i, e) = (channels.inbox, channels.email);
    tx.execute(
        "UPDATE outbox SET sent = sent + ?2, deduped = deduped + ?3, suppressed = suppressed + ?4,
                           throttled = COALESCE(throttled, 0) + ?5,
                           inbox_sent = inbox_sent + ?6, inbox_deduped = inbox_deduped + ?7,
                           inbox_suppressed = inbox_suppressed + ?8,
                           inbox_throttled = COALESCE(inbox_throttled, 0) + ?9,
                           email_sent = email_sent + ?10, email_deduped = email_deduped + ?11,
                           email_suppressed = email_suppressed + ?12,
                           email_throttled = COALESCE(email_throttled, 0) + ?13,
                           body = CASE WHEN ?14 THEN '' ELSE body END
         WHERE seq = ?1",
        args![
            seq,
            result.sent,
            result.deduped,
            result.suppressed_by_prefs,
            result.throttled,
            i.sent,
            i.deduped,
            i.suppressed_by_prefs,
            i.throttled,
            e.sent,
            e.deduped,
            e.suppressed_by_prefs,
            e.throttled,
            last,
        ],
    )?;
    Ok(())
}

/// The body of a dispatched event whose fan-out is under way.
pub fn fanning_event(conn: &Conn<'_>, seq: i64) -> StoreResult<Option<Result<Event, String>>> {
    conn.query_opt(
        "SELECT body FROM outbox WHERE seq = ?1 AND status = 'dispatched' AND body <> ''",
        args![seq],
        |r| {
            let body: String = r.get(0)?;
            Ok(serde_json::from_str::<Event>(&body).map_err(|e| e.to_string()))
        },
    )
}

/// A dispatched event and its result, for `herald outbox list`.
#[derive(Debug)]
pub struct ResultRow {
    pub id: String,
    pub kind: String,
    pub dispatched_at: i64,
    pub result: Option<DispatchResult>,
}

/// The `limit` notification events dispatched last, newest first.
pub fn latest_results(conn: &Conn<'_>, limit: usize) -> StoreResult<Vec<ResultRow>> {
    let sql = format!(
        "SELECT id, type, dispatched_at, {RESULT_COLUMNS} FROM outbox
         WHERE status = 'dispatched' AND kind = 'notification' ORDER BY seq DESC LIMIT ?1"
    );
    conn.query_all(&sql, args![limit], |r| {
        Ok(ResultRow {
            id: r.get(0)?,
            kind: r.get(1)?,
            dispatched_at: r.get::<Option<i64>>(2)?.unwrap_or(0),
            result: read_result(r, 3)?,
        })
    })
}

/// An event that can never be dispatched (its type left the registry, a
/// template no longer renders) is parked with the reason, visible in the API.
pub fn mark_failed(tx: &Tx<'_>, seq: i64, error: &str) -> StoreResult<()> {
    tx.execute(
        "UPDATE outbox SET status = 'failed', dispatched_at = ?2, error = ?3 WHERE seq = ?1",
        args![seq, tx.now_ms(), error],
    )?;
    Ok(())
}

/// Pending rows due (created, or for a `sendAt`, due) before `before_ms`
/// and due by `now`, oldest first: work whose bus message was lost (a
/// crash, another process writing the database). Rows not yet due are the
/// scheduler's timer's (`due`), not lost.
pub fn stale_pending(
    conn: &Conn<'_>,
    before_ms: i64,
    now: i64,
    after_seq: i64,
    limit: usize,
) -> StoreResult<Vec<i64>> {
    conn.query_all(
        "SELECT seq FROM outbox WHERE status = 'pending' AND seq > ?2
             AND COALESCE(due_at, created_at) < ?1 AND (due_at IS NULL OR due_at <= ?4)
         ORDER BY seq LIMIT ?3",
        args![before_ms, after_seq, limit, now],
        |r| r.get(0),
    )
}

/// Up to `limit` pending rows with a `sendAt` due by `now`, soonest first.
pub fn due(conn: &Conn<'_>, now: i64, limit: usize) -> StoreResult<Vec<i64>> {
    conn.query_all(
        "SELECT seq FROM outbox WHERE status = 'pending' AND due_at IS NOT NULL AND due_at <= ?1
         ORDER BY due_at LIMIT ?2",
        args![now, limit],
        |r| r.get(0),
    )
}

/// When the next pending row with a `sendAt` after `now` is due.
pub fn next_due_at(conn: &Conn<'_>, now: i64) -> StoreResult<Option<i64>> {
    conn.query_one(
        "SELECT MIN(due_at) FROM outbox
         WHERE status = 'pending' AND due_at IS NOT NULL AND due_at > ?1",
        args![now],
        |r| r.get(0),
    )
}

/// Why an event could not be cancelled.
#[derive(Debug, PartialEq, Eq)]
pub enum NotCancelled {
    /// Dispatched or failed: its status.
    Finished(String),
    /// A domain event: it belongs to the listeners, not to the caller.
    Domain,
    /// A released digest: it carries events already accepted (see
    /// `digest::is_release`).
    Digest,
}

/// Cancels the notification event `id` if it is still pending (scheduled or
/// not yet dispatched); an event already cancelled stays so. The body goes,
/// as at dispatch. `NotFound` for an unknown id.
pub fn cancel(tx: &Tx<'_>, id: &str) -> StoreResult<Result<(), NotCancelled>> {
    let (seq, status, kind): (i64, String, String) = tx.query_one(
        "SELECT seq, status, kind FROM outbox WHERE id = ?1",
        args![id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    Ok(match (status.as_str(), kind.as_str()) {
        (_, KIND_DOMAIN) => Err(NotCancelled::Domain),
        ("cancelled", _) => Ok(()),
        ("pending", _) => {
            // On PostgreSQL the update waits for a dispatcher holding the
            // row, and its commit makes this transaction run again.
            tx.execute(
                "UPDATE outbox SET status = 'cancelled', body = '' WHERE seq = ?1
                 AND status = 'pending'",
                args![seq],
            )?;
            Ok(())
        }
        _ => Err(NotCancelled::Finished(status)),
    })
}

/// Cancels every pending notification event carrying `key`; how many.
pub fn cancel_by_key(tx: &Tx<'_>, key: &str) -> StoreResult<usize> {
    tx.execute(
        "UPDATE outbox SET status = 'cancelled', body = ''
         WHERE cancellation_key = ?1 AND status = 'pending' AND kind = 'notification'",
        args![key],
    )
}

/// An outbox row as `GET /v1/events/{id}` shows it (see `event_view`).
pub struct EventRow {
    pub seq: i64,
    pub kind: String,
    pub status: String,
    pub created_at: i64,
    pub result: Option<DispatchResult>,
    pub error: Option<String>,
    pub due_at: Option<i64>,
    pub cancellation_key: Option<String>,
}

/// The outbox row of public event id `id`; `NotFound` if there is none.
pub fn by_id(conn: &Conn<'_>, id: &str) -> StoreResult<EventRow> {
    conn.query_one(
        &format!(
            "SELECT seq, type, status, created_at, error, due_at, cancellation_key,
                    {RESULT_COLUMNS}
             FROM outbox WHERE id = ?1"
        ),
        args![id],
        |r| {
            Ok(EventRow {
                seq: r.get(0)?,
                kind: r.get(1)?,
                status: r.get(2)?,
                created_at: r.get(3)?,
                result: read_result(r, 7)?,
                error: r.get(4)?,
                due_at: r.get(5)?,
                cancellation_key: r.get(6)?,
            })
        },
    )
}
