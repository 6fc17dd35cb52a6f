//! Per-recipient dispatch policy in SPEC 2.3 order: the dedup window, then
//! preferences per channel. Dedup marks are written in the dispatcher's
//! transaction, so they commit exactly when the notification they stand for does.

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::event::{Event, Recipient};
use super::preferences;
use super::registry::{Channel, TypeDef};
use crate::store::StoreResult;

/// The identity of "the same notification" for dedup: type, recipient,
/// subject and rendered dedup key.
pub struct DedupKey<'a> {
    pub kind: &'a str,
    pub recipient: &'a str,
    pub subject_id: &'a str,
    pub key: &'a str,
}

impl<'a> DedupKey<'a> {
    pub fn of(event: &'a Event, recipient: &'a str, rendered: Option<&'a str>) -> DedupKey<'a> {
        DedupKey {
            kind: &event.kind,
            recipient,
            subject_id: event.subject_id.as_deref().unwrap_or(""),
            key: rendered.unwrap_or(""),
        }
    }
}

/// True if the same notification went out less than the type's window ago.
/// A window of 0 turns dedup off.
pub fn is_duplicate(
    conn: &Connection,
    def: &TypeDef,
    key: &DedupKey<'_>,
    now: i64,
) -> StoreResult<bool> {
    if def.dedup_window_secs == 0 {
        return Ok(false);
    }
    let last: Option<i64> = conn
        .prepare_cached(
            "SELECT notified_at FROM dedup_marks
             WHERE type = ?1 AND recipient = ?2 AND subject_id = ?3 AND dedup_key = ?4",
        )?
        .query_row(
            params![key.kind, key.recipient, key.subject_id, key.key],
            |r| r.get(0),
        )
        .optional()?;
    let window_ms = i64::try_from(def.dedup_window_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    Ok(last.is_some_and(|at| now.saturating_sub(at) < window_ms))
}

/// Records that the notification went out now: the window runs from the
/// last notification, and duplicates (which send nothing) do not extend it.
pub fn remember(
    tx: &Transaction<'_>,
    def: &TypeDef,
    key: &DedupKey<'_>,
    now: i64,
) -> StoreResult<()> {
    if def.dedup_window_secs == 0 {
        return Ok(());
    }
    tx.prepare_cached(
        "INSERT INTO dedup_marks (type, recipient, subject_id, dedup_key, notified_at)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (type, recipient, subject_id, dedup_key)
         DO UPDATE SET notified_at = excluded.notified_at",
    )?
    .execute(params![
        key.kind,
        key.recipient,
        key.subject_id,
        key.key,
        now
    ])?;
    Ok(())
}

/// The channels a recipient gets this event on, and how many were switched
/// off by preferences. Address-only recipients have no inbox and no
/// preferences. `only` narrows to the channels a digest's events were
/// allowed (a released digest must not reach a channel they were not).
pub fn channels_for(
    conn: &Connection,
    event: &Event,
    def: &TypeDef,
    recipient: &Recipient,
    only: Option<&[Channel]>,
) -> StoreResult<(Vec<Channel>, i64)> {
    let mut allowed = Vec::new();
    let mut suppressed = 0;
    let switches = match recipient {
        Recipient::User(id) if !def.critical => preferences::switches(conn, id, &event.kind)?,
        _ => preferences::Switches::default(),
    };
    for channel in def.channels.iter().copied() {
        if only.is_some_and(|only| !only.contains(&channel)) {
            continue;
        }
        match recipient {
            Recipient::User(_) if switches.allow(def, channel) => allowed.push(channel),
            Recipient::User(_) => suppressed += 1,
            Recipient::Address { .. } if channel == Channel::Email => allowed.push(channel),
            Recipient::Address { .. } => {}
        }
    }
    Ok((allowed, suppressed))
}
