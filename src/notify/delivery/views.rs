//! The operator's views of deliveries: what an event's deliveries look like
//! (`GET /v1/events/{id}`), the paged list and counts by status (`herald
//! outbox`, `/v1/deliveries`), the emails the console provider "sent"
//! (`/dev/mail`), and re-arming dead or failed deliveries. Reads, but for
//! `rearm`: a batch is one request, so a member is re-armed with its batch.
//! A held email shows when it is due (`releaseAt`), not a next attempt.

use serde::Serialize;

use super::deliveries::IN_BATCH;
use crate::args;
use crate::store::{Conn, Row, StoreError, StoreResult, Tx};
use crate::time::rfc3339;

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
    #[serde(flatten)]
    pub hold: HoldView,
}

/// What a held email waits for (escalation, quiet hours), and when it was
/// released or skipped; every field absent for an email never held.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HoldView {
    /// When a held email is due for release.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release_at: Option<String>,
    /// What spares the recipient this email: its inbox row `seen` (or
    /// `read`) by `releaseAt`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release_unless: Option<String>,
    /// When it was released to the senders, or skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub released_at: Option<String>,
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
        "SELECT d.id, d.address, COALESCE(l.subject, b.subject), COALESCE(l.html, b.html),
                COALESCE(l.text, b.text), d.created_at
         FROM deliveries d JOIN email_bodies b ON b.event_seq = d.event_seq
         LEFT JOIN email_bodies_localized l ON l.event_seq = d.event_seq AND l.locale = d.locale
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
    "id, recipient, channel, status, attempts, next_attempt_at, last_error, \
     batch_id, release_unless, released_at";

/// A held email's due time is its release, not an attempt.
fn view_from_row(r: &Row<'_>) -> StoreResult<DeliveryView> {
    let status: String = r.get(3)?;
    let due = r.get::<Option<i64>>(5)?.map(rfc3339);
    let (next_attempt_at, release_at) = match status.as_str() {
        "held" => (None, due),
        _ => (due, None),
    };
    Ok(DeliveryView {
        id: r.get(0)?,
        recipient: r.get(1)?,
        channel: r.get(2)?,
        attempts: r.get(4)?,
        next_attempt_at,
        last_error: r.get(6)?,
        batch_id: r.get(7)?,
        hold: HoldView {
            release_at,
            release_unless: r.get::<Option<String>>(8)?.filter(|_| status == "held"),
            released_at: r.get::<Option<i64>>(9)?.map(rfc3339),
        },
        status,
    })
}

/// The states a delivery can be in, as stored.
pub const STATUSES: &[&str] = &[
    "pending", "retrying", "sent", "failed", "dead", "held", "skipped",
];

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
    // CAST: a parameter only tested for NULL has no type PostgreSQL can infer.
    let rows = conn.query_all(
        "SELECT d.id, d.recipient, d.channel, d.status, d.attempts, d.next_attempt_at,
                d.last_error, d.batch_id, d.release_unless, d.released_at,
                o.id, d.created_at, d.updated_at
         FROM deliveries d JOIN outbox o ON o.seq = d.event_seq
         WHERE (CAST(?1 AS TEXT) IS NULL OR d.status = ?1) AND d.id > ?2
         ORDER BY d.id LIMIT ?3",
        args![status, after.unwrap_or(""), limit],
        |r| {
            Ok(DeliveryRecord {
                delivery: view_from_row(r)?,
                event_id: r.get(10)?,
                created_at: rfc3339(r.get(11)?),
                updated_at: rfc3339(r.get(12)?),
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
