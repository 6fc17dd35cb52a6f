//! Digests, held in the database: events of one (type, recipient, rendered key)
//! wait from the first event until the window ends, then the scheduler releases
//! them as one outbox row written in the transaction that closes the digest.

use crate::args;
use crate::store::{Conn, Tx};
use serde::Serialize;
use serde_json::{json, Value};

use super::error::NotifyError;
use super::event::{Event, Recipient, Release};
use super::outbox;
use super::registry::{Channel, DigestDef};
use crate::store::{Store, StoreResult};

/// Digests closed per transaction, so a backlog never holds the write lock
/// for long.
const CLOSE_BATCH: usize = 100;

/// Adds event `seq` to the open digest of (type, recipient, key), opening
/// one due `window_secs` from now if none is open. Returns the due time of a
/// newly opened digest, so the scheduler can be told to wake for it.
#[allow(clippy::too_many_arguments)]
pub fn join(
    tx: &Tx<'_>,
    seq: i64,
    event: &Event,
    recipient: &Recipient,
    key: &str,
    digest: &DigestDef,
    channels: &[Channel],
    now: i64,
) -> StoreResult<Option<i64>> {
    let recipient_key = recipient.key();
    // A digest past its due time is closed already or about to be: a late
    // event starts the next one instead of stretching the window.
    let open: Option<(i64, String)> = tx.query_opt(
        "SELECT id, channels FROM digests
             WHERE type = ?1 AND recipient_key = ?2 AND digest_key = ?3 AND status = 'open'
               AND due_at > ?4
             ORDER BY id DESC LIMIT 1",
        args![event.kind, recipient_key, key, now],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let (id, opened) = match open {
        Some((id, stored)) => {
            let mut merged: Vec<Channel> = serde_json::from_str(&stored).unwrap_or_default();
            merged.extend_from_slice(channels);
            merged.sort();
            merged.dedup();
            tx.execute(
                "UPDATE digests SET channels = ?2 WHERE id = ?1",
                args![id, to_json(&merged)],
            )?;
            (id, None)
        }
        None => {
            let due = now.saturating_add(
                i64::try_from(digest.window_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
            );
            let id = tx.insert_one(
                "INSERT INTO digests (type, batch_type, recipient_key, recipient, digest_key,
                                      channels, opened_at, due_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                args![
                    event.kind,
                    digest.batch_type,
                    recipient_key,
                    to_json(recipient),
                    key,
                    to_json(&channels),
                    now,
                    due
                ],
            )?;
            (id, Some(due))
        }
    };
    tx.execute(
        "INSERT INTO digest_events (digest_id, event_seq, subject_id, payload)
         VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT DO NOTHING",
        args![id, seq, event.subject_id, event.payload.to_string()],
    )?;
    Ok(opened)
}

fn to_json(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

/// When the earliest open digest is due.
pub fn next_due_at(conn: &Conn<'_>) -> StoreResult<Option<i64>> {
    conn.query_one(
        "SELECT MIN(due_at) FROM digests WHERE status = 'open'",
        args![],
        |r| r.get(0),
    )
}

/// The scheduler's hook: releases every digest due by now, publishes the
/// outbox rows after commit, and returns when the next one is due.
pub fn flush_due(store: &Store, publish: impl Fn(i64)) -> Option<i64> {
    loop {
        let now = store.clock().now_ms();
        match store.write(|tx| close_due(tx, now)) {
            Ok(seqs) => {
                let full = seqs.len() == CLOSE_BATCH;
                for seq in seqs {
                    publish(seq);
                }
                if !full {
                    break;
                }
            }
            Err(e) => {
                log::error!("cannot release due digests: {e}");
                break;
            }
        }
    }
    match store.read(next_due_at) {
        Ok(at) => at,
        Err(e) => {
            log::error!("cannot read the digest queue: {e}");
            None
        }
    }
}

struct Due {
    id: i64,
    kind: String,
    batch_type: String,
    recipient: String,
    channels: String,
}

/// The status flip and the outbox row commit together, so a crash can
/// neither lose nor repeat a release, and the dispatcher delivers the row
/// through the seam's unique keys like any other event.
/// Closes up to `CLOSE_BATCH` due digests, each into one outbox row;
/// returns the rows' seqs (one digest can yield none if its stored state is
/// unreadable, which is logged and closed rather than retried forever).
fn close_due(tx: &Tx<'_>, now: i64) -> Result<Vec<i64>, NotifyError> {
    // Digests another instance is closing right now are left to it.
    let due: Vec<Due> = tx.query_all(
        &format!(
            "SELECT id, type, batch_type, recipient, channels FROM digests
             WHERE status = 'open' AND due_at <= ?1 ORDER BY due_at LIMIT ?2{}",
            tx.engine().skip_locked("digests")
        ),
        args![now, CLOSE_BATCH as i64],
        |r| {
            Ok(Due {
                id: r.get(0)?,
                kind: r.get(1)?,
                batch_type: r.get(2)?,
                recipient: r.get(3)?,
                channels: r.get(4)?,
            })
        },
    )?;
    let mut seqs = Vec::with_capacity(due.len());
    for d in due {
        let seq = match release(tx, &d)? {
            Some(event) => Some(outbox::enqueue(tx, &event)?.seq),
            None => None,
        };
        tx.execute(
            "UPDATE digests SET status = 'flushed', flushed_seq = ?2, flushed_at = ?3
             WHERE id = ?1",
            args![d.id, seq, now],
        )?;
        seqs.extend(seq);
    }
    Ok(seqs)
}

/// The event a due digest turns into.
fn release(tx: &Tx<'_>, d: &Due) -> StoreResult<Option<Event>> {
    let mut held: Vec<(Option<String>, String)> = tx.query_all(
        "SELECT subject_id, payload FROM digest_events WHERE digest_id = ?1 ORDER BY event_seq",
        args![d.id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let (Ok(recipient), Ok(channels)) = (
        serde_json::from_str::<Recipient>(&d.recipient),
        serde_json::from_str::<Vec<Channel>>(&d.channels),
    ) else {
        log::error!(
            "digest #{} is unreadable; closed without a notification",
            d.id
        );
        return Ok(None);
    };
    let mut event = match held.len() {
        0 => return Ok(None),
        1 => {
            let (subject_id, payload) = held.remove(0);
            let mut event = Event::new(&d.kind, vec![recipient], parse(&payload));
            event.subject_id = subject_id;
            event
        }
        n => {
            let events: Vec<Value> = held.iter().map(|(_, p)| parse(p)).collect();
            Event::new(
                &d.batch_type,
                vec![recipient],
                json!({"events": events, "count": n}),
            )
        }
    };
    // No idempotency key: that column is the callers' namespace, and the
    // digest's own status flip (same transaction) already makes this once.
    event.from_digest = Some(Release {
        digest_id: d.id,
        channels,
    });
    Ok(Some(event))
}

/// A digest an event is held in, for `GET /v1/events/{id}`: where a
/// digested event's notification went.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HeldView {
    pub recipient: String,
    pub status: String,
    pub due_at: String,
    /// The event the digest was released as, once it was.
    pub released_as: Option<String>,
}

/// Whether outbox row `seq` is the notification a digest was released
/// as: it belongs to the digest's events, and is not the caller's to cancel.
pub fn is_release(conn: &Conn<'_>, seq: i64) -> StoreResult<bool> {
    conn.query_one(
        "SELECT COUNT(*) FROM digests WHERE flushed_seq = ?1",
        args![seq],
        |r| Ok(r.get::<i64>(0)? > 0),
    )
}

pub fn held_views(conn: &Conn<'_>, event_seq: i64) -> StoreResult<Vec<HeldView>> {
    let rows = conn.query_all(
        "SELECT d.recipient_key, d.status, d.due_at, o.id
         FROM digest_events e JOIN digests d ON d.id = e.digest_id
         LEFT JOIN outbox o ON o.seq = d.flushed_seq
         WHERE e.event_seq = ?1 ORDER BY d.id",
        args![event_seq],
        |r| {
            Ok(HeldView {
                recipient: r.get(0)?,
                status: r.get(1)?,
                due_at: crate::time::rfc3339(r.get(2)?),
                released_as: r.get(3)?,
            })
        },
    )?;
    Ok(rows)
}

fn parse(payload: &str) -> Value {
    serde_json::from_str(payload).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Store, Synchronous};

    fn spec(window_secs: u64) -> DigestDef {
        DigestDef {
            key: "{{ orderId }}".into(),
            window_secs,
            batch_type: "batch".into(),
        }
    }

    fn upload(tx: &Tx<'_>, n: i64, now: i64) -> StoreResult<Option<i64>> {
        let event = Event::new("up", vec![Recipient::User("u".into())], json!({ "n": n }));
        let seq = outbox::enqueue(tx, &event).map_err(|e| match e {
            NotifyError::Store(e) => e,
            other => panic!("{other}"),
        })?;
        let to = Recipient::User("u".into());
        join(
            tx,
            seq.seq,
            &event,
            &to,
            "o1",
            &spec(10),
            &[Channel::Inbox],
            now,
        )
    }

    #[test]
    fn a_digest_is_released_once_as_one_batch_and_late_events_open_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db"), Synchronous::Normal).unwrap();
        let opened = store
            .write(|tx| {
                let first = upload(tx, 1, 1_000)?;
                assert_eq!(upload(tx, 2, 5_000)?, None, "joins the open digest");
                Ok::<_, crate::store::StoreError>(first)
            })
            .unwrap();
        assert_eq!(
            opened,
            Some(11_000),
            "due from the first event, not the last"
        );

        let early: Vec<i64> = store.write(|tx| close_due(tx, 10_999)).unwrap();
        assert!(early.is_empty());
        let released = store.write(|tx| close_due(tx, 11_000)).unwrap();
        assert_eq!(released.len(), 1);
        assert!(store.write(|tx| close_due(tx, 99_000)).unwrap().is_empty());

        let rows = store.read(|c| outbox::load_pending(c, &released)).unwrap();
        let event = rows[0].event.as_ref().unwrap();
        assert_eq!(event.kind, "batch");
        assert_eq!(
            event.payload,
            json!({"events": [{"n": 1}, {"n": 2}], "count": 2})
        );
        assert_eq!(
            event.from_digest.as_ref().unwrap().channels,
            vec![Channel::Inbox]
        );

        // After the window a new event opens a new digest of its own.
        let reopened = store.write(|tx| upload(tx, 3, 12_000)).unwrap();
        assert_eq!(reopened, Some(22_000));
        let single = store.write(|tx| close_due(tx, 22_000)).unwrap();
        let rows = store.read(|c| outbox::load_pending(c, &single)).unwrap();
        let event = rows[0].event.as_ref().unwrap();
        assert_eq!(
            (event.kind.as_str(), &event.payload),
            ("up", &json!({"n": 3}))
        );
    }
}
