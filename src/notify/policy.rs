//! Per-recipient dispatch policy in SPEC 2.3 order: the dedup window, then
//! preferences per channel. Dedup marks are written in the dispatcher's
//! transaction, so they commit exactly when the notification they stand for does.

use crate::args;
use crate::store::{Conn, Tx};

use super::event::{Event, Recipient};
use super::preferences::{self, Switches};
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
    conn: &Conn<'_>,
    def: &TypeDef,
    key: &DedupKey<'_>,
    now: i64,
) -> StoreResult<bool> {
    if def.dedup_window_secs == 0 {
        return Ok(false);
    }
    let last: Option<i64> = conn.query_opt(
        "SELECT notified_at FROM dedup_marks
             WHERE type = ?1 AND recipient = ?2 AND subject_id = ?3 AND dedup_key = ?4",
        args![key.kind, key.recipient, key.subject_id, key.key],
        |r| r.get(0),
    )?;
    Ok(last.is_some_and(|at| now.saturating_sub(at) < window_ms(def)))
}

fn window_ms(def: &TypeDef) -> i64 {
    i64::try_from(def.dedup_window_secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// A dedup mark's key columns, as stored.
type MarkKey = (String, String, String, String);

/// Up to `limit` marks last notified before `before`, read without the write
/// lock (the scan is the expensive part of pruning).
pub fn expired_marks(conn: &Conn<'_>, before: i64, limit: usize) -> StoreResult<Vec<MarkKey>> {
    let rows = conn.query_all(
        "SELECT type, recipient, subject_id, dedup_key FROM dedup_marks
         WHERE notified_at < ?1 LIMIT ?2",
        args![before, limit],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    Ok(rows)
}

/// Deletes the given marks if they are still older than `before` (one may
/// have been renewed since it was read). A mark older than the longest
/// dedup window can no longer make any event a duplicate.
pub fn delete_marks(tx: &Tx<'_>, marks: &[MarkKey], before: i64) -> StoreResult<usize> {
    let mut deleted = 0;
    for (kind, recipient, subject_id, key) in marks {
        deleted += tx.execute(
            "DELETE FROM dedup_marks WHERE type = ?1 AND recipient = ?2 AND subject_id = ?3
         AND dedup_key = ?4 AND notified_at < ?5",
            args![kind, recipient, subject_id, key, before],
        )?;
    }
    Ok(deleted)
}

/// Records that the notification goes out now, unless the same one went
/// out less than the type's window ago: false for such a duplicate, which
/// writes nothing. The window runs from the last notification, and
/// duplicates do not extend it. One upsert does both, because this runs
/// for every notification.
pub fn mark_unless_duplicate(
    tx: &Tx<'_>,
    def: &TypeDef,
    key: &DedupKey<'_>,
    now: i64,
) -> StoreResult<bool> {
    if def.dedup_window_secs == 0 {
        return Ok(true);
    }
    let changed = tx.execute(
        "INSERT INTO dedup_marks (type, recipient, subject_id, dedup_key, notified_at)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (type, recipient, subject_id, dedup_key)
             DO UPDATE SET notified_at = excluded.notified_at
             WHERE dedup_marks.notified_at <= ?6",
        args![
            key.kind,
            key.recipient,
            key.subject_id,
            key.key,
            now,
            now.saturating_sub(window_ms(def))
        ],
    )?;
    Ok(changed == 1)
}

/// A recipient's preference switches for an event's type; none for
/// address-only recipients (they have no preferences) and critical types
/// (they ignore them).
pub fn switches_for(
    conn: &Conn<'_>,
    event: &Event,
    def: &TypeDef,
    recipient: &Recipient,
) -> StoreResult<Switches> {
    match recipient {
        Recipient::User(id) if !def.critical => preferences::switches(conn, id, &event.kind),
        _ => Ok(Switches::default()),
    }
}

/// The channels a recipient gets this event on, and how many were switched
/// off by preferences. Address-only recipients have no inbox and no
/// preferences. `only` narrows to the channels a digest's events were
/// allowed (a released digest must not reach a channel they were not).
pub fn channels_for(
    switches: &Switches,
    def: &TypeDef,
    recipient: &Recipient,
    only: Option<&[Channel]>,
) -> (Vec<Channel>, i64) {
    let mut allowed = Vec::new();
    let mut suppressed = 0;
    for channel in def.channels.iter().copied() {
        if only.is_some_and(|only| !only.contains(&channel)) {
            continue;
        }
        match recipient {
            Recipient::User(_) if switches.allow(def, channel) => allowed.push(channel),
            Recipient::User(_) => suppressed += 1,
            Recipient::Address { .. } if channel == Channel::Email => allowed.push(channel),
            // A topic is never written to: its subscribers are, as users.
            Recipient::Address { .. } | Recipient::Topic { .. } => {}
        }
    }
    (allowed, suppressed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::registry::Registry;
    use crate::store::{Store, Synchronous};

    /// A fresh database and a registry of `types` (the registry's JSON
    /// `types` object).
    fn setup(types: &str) -> (tempfile::TempDir, Store, Registry) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("p.db"), Synchronous::Normal).unwrap();
        let registry = Registry::parse("r", &format!(r#"{{"types": {types}}}"#)).unwrap();
        (dir, store, registry)
    }

    #[test]
    fn expired_marks_are_pruned_and_a_renewed_one_survives() {
        let (_dir, store, registry) =
            setup(r#"{"t": {"channels": ["inbox"], "dedupWindowSecs": 1}}"#);
        let def = registry.get("t").unwrap();
        let mark = |recipient: &'static str, at: i64| {
            let key = DedupKey {
                kind: "t",
                recipient,
                subject_id: "s",
                key: "",
            };
            store
                .write(|tx| mark_unless_duplicate(tx, def, &key, at))
                .unwrap();
        };
        mark("old", 1_000);
        mark("renewed", 1_000);
        mark("fresh", 9_000);
        let expired = store.read(|c| expired_marks(c, 5_000, 10)).unwrap();
        assert_eq!(expired.len(), 2);
        // Notified again between the read and the delete: kept.
        mark("renewed", 8_000);
        let deleted = store.write(|tx| delete_marks(tx, &expired, 5_000)).unwrap();
        assert_eq!(deleted, 1);
        let left: Vec<String> = store
            .read(|c| {
                c.query_all(
                    "SELECT recipient FROM dedup_marks ORDER BY recipient",
                    args![],
                    |r| r.get(0),
                )
            })
            .unwrap();
        assert_eq!(left, ["fresh", "renewed"]);
    }

    #[test]
    fn a_mark_within_the_window_is_a_duplicate_and_does_not_extend_it() {
        let (_dir, store, registry) = setup(
            r#"{"t": {"channels": ["inbox"], "dedupWindowSecs": 10},
                "off": {"channels": ["inbox"], "dedupWindowSecs": 0}}"#,
        );
        let key = DedupKey {
            kind: "t",
            recipient: "u",
            subject_id: "s",
            key: "k",
        };
        let goes_out = |kind: &str, at: i64| {
            let def = registry.get(kind).unwrap();
            store
                .write(|tx| mark_unless_duplicate(tx, def, &key, at))
                .unwrap()
        };
        let duplicate = |at: i64| {
            let def = registry.get("t").unwrap();
            store.read(|c| is_duplicate(c, def, &key, at)).unwrap()
        };
        assert!(goes_out("t", 100_000));
        assert!(duplicate(105_000));
        assert!(!goes_out("t", 105_000), "5 s into a 10 s window");
        // The duplicate did not extend the window: it still ends at 110 s.
        assert!(!duplicate(110_000));
        assert!(goes_out("t", 110_000));
        assert!(duplicate(119_999));
        assert!(goes_out("off", 110_001), "a window of 0 turns dedup off");
        assert!(goes_out("off", 110_002));
    }
}
