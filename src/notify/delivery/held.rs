//! Held emails (SPEC 9): an email created to wait, for an escalation (sent
//! only if the recipient's inbox row of the same event is still unseen, or
//! unread, when it is due) or for the recipient's quiet hours. A held
//! delivery is only a row (`held`, held by no instance, due at
//! `next_attempt_at`, its condition in `release_unless`), so it survives
//! restarts. The scheduler releases it in one write transaction that claims
//! it (rows another instance is releasing are left to it), reads the
//! condition there, and ends it `skipped` or hands it to this instance's
//! senders as `pending`; they get it only after COMMIT.

use std::collections::HashMap;

use super::deliveries::{insert_body, Batcher, Body, EmailJob, MailJob};
use crate::args;
use crate::ids;
use crate::notify::event::Recipient;
use crate::notify::inbox;
use crate::notify::quiet_hours::QuietHours;
use crate::notify::registry::{Channel, TypeDef, Unless};
use crate::notify::webhooks::Subscriptions;
use crate::store::users::QuietSettings;
use crate::store::{Conn, Row, StoreResult, Tx};

/// Why an email waits: until `due`, and then, with `unless`, only if the
/// recipient's inbox row of the event is not yet seen (or read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    pub due: i64,
    pub unless: Option<Unless>,
}

/// Whether the email of `def` to `recipient`, created at `now`, waits, and
/// for what. An escalation holds it `afterSecs` (for a user, unless the
/// row is seen or read by then; an address-only recipient has no inbox and
/// gets it then). Otherwise the quiet hours of a user hold a non-critical
/// email until the window ends. With both, the escalation's time wins and
/// the release looks at the quiet hours again.
pub fn hold_for(
    def: &TypeDef,
    recipient: &Recipient,
    quiet: Option<&QuietHours>,
    now: i64,
) -> Option<Hold> {
    if let Some(escalate) = def
        .escalate
        .as_ref()
        .filter(|e| e.channel == Channel::Email)
    {
        let after = i64::try_from(escalate.after_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        return Some(Hold {
            due: now.saturating_add(after),
            unless: matches!(recipient, Recipient::User(_)).then_some(escalate.unless),
        });
    }
    let end = quiet.filter(|_| !def.critical)?.held_until(now)?;
    Some(Hold {
        due: end,
        unless: None,
    })
}

/// Creates the email delivery for (event, recipient) held as `hold` says,
/// rendered now like any other; false if it already exists.
pub fn insert(
    tx: &Tx<'_>,
    event_seq: i64,
    recipient: &str,
    address: &str,
    body: Body<'_>,
    hold: Hold,
) -> StoreResult<bool> {
    insert_body(tx, event_seq, body)?;
    let changed = tx.execute(
        "INSERT INTO deliveries
                 (id, event_seq, recipient, channel, address, status, created_at, updated_at,
                  next_attempt_at, release_unless, locale)
             VALUES (?1, ?2, ?3, 'email', ?4, 'held', ?5, ?5, ?6, ?7, ?8)
             ON CONFLICT DO NOTHING",
        args![
            ids::new_id("dlv"),
            event_seq,
            recipient,
            address,
            tx.now_ms(),
            hold.due,
            hold.unless.map(Unless::as_str),
            body.locale()
        ],
    )?;
    Ok(changed == 1)
}

/// What one release transaction did.
#[derive(Debug, Default)]
pub struct Released {
    /// Emails now pending for this instance's senders, as requests.
    pub jobs: Vec<MailJob>,
    /// The type of each email skipped (its row was seen or read).
    pub skipped: Vec<String>,
    /// Emails held again, to the end of the recipient's quiet hours.
    pub deferred: usize,
    /// As many were due as one call takes: call again.
    pub full: bool,
}

/// A due held delivery, as the release reads it.
struct Due {
    id: String,
    event_seq: i64,
    recipient: String,
    unless: Option<Unless>,
    kind: String,
    quiet: QuietSettings,
    email: EmailJob,
}

/// Up to `?2` held deliveries due by `?1`, earliest first, with what the
/// release needs: the type, the recipient's quiet hours, the email.
const DUE: &str = "SELECT d.id, d.event_seq, d.recipient, d.address, d.release_unless, o.type,
            u.timezone, u.quiet_from, u.quiet_to, COALESCE(l.subject, b.subject),
            COALESCE(l.html, b.html), COALESCE(l.text, b.text)
     FROM deliveries d
     JOIN outbox o ON o.seq = d.event_seq
     JOIN email_bodies b ON b.event_seq = d.event_seq
     LEFT JOIN email_bodies_localized l ON l.event_seq = d.event_seq AND l.locale = d.locale
     LEFT JOIN users u ON u.id = d.recipient
     WHERE d.status = 'held' AND d.next_attempt_at <= ?1
     ORDER BY d.next_attempt_at LIMIT ?2";

fn due_from_row(r: &Row<'_>) -> StoreResult<Due> {
    let id: String = r.get(0)?;
    Ok(Due {
        event_seq: r.get(1)?,
        recipient: r.get(2)?,
        unless: r
            .get::<Option<String>>(4)?
            .as_deref()
            .and_then(Unless::parse),
        kind: r.get(5)?,
        quiet: QuietSettings {
            timezone: r.get(6)?,
            quiet_from: r.get(7)?,
            quiet_to: r.get(8)?,
            locale: None,
        },
        email: EmailJob {
            delivery_id: id.clone(),
            address: r.get(3)?,
            subject: r.get(9)?,
            html: r.get(10)?,
            text: r.get(11)?,
        },
        id,
    })
}

/// Releases up to `limit` held deliveries due by now, in the caller's
/// transaction: each is skipped if its condition says so (read here, in
/// the transaction that decides), held again if its recipient is in quiet
/// hours now (unless `critical(type)`), or else made pending for instance
/// `me`, in batches of up to `mail_batch` like emails created together.
/// "Now" is read inside the transaction, so a run again after a conflict
/// records its own time.
pub fn release_due(
    tx: &Tx<'_>,
    limit: usize,
    me: i64,
    mail_batch: usize,
    critical: &dyn Fn(&str) -> bool,
) -> StoreResult<Released> {
    let now = tx.now_ms();
    let marks = lock_marks(tx, now, limit)?;
    let due: Vec<Due> = tx.query_all(
        &format!("{DUE}{}", tx.engine().skip_locked("d")),
        args![now, limit],
        due_from_row,
    )?;
    let mut released = Released {
        full: due.len() == limit,
        ..Released::default()
    };
    let mut batcher = Batcher::new(mail_batch, due.len(), me);
    let mut created = Vec::new();
    let webhooks = Subscriptions::load(tx)?;
    for row in due {
        if let Some(reason) = spared(tx, &row, &marks)? {
            tx.execute(
                "UPDATE deliveries SET status = 'skipped', next_attempt_at = NULL,
                     last_error = ?2, released_at = ?3, updated_at = ?3
                 WHERE id = ?1 AND status = 'held'",
                args![row.id, reason, now],
            )?;
            webhooks.delivery_changed(tx, &row.id)?;
            released.skipped.push(row.kind);
            continue;
        }
        let quiet_until = QuietHours::of(&row.quiet)
            .filter(|_| !critical(&row.kind))
            .and_then(|quiet| quiet.held_until(now));
        if let Some(end) = quiet_until {
            tx.execute(
                "UPDATE deliveries SET next_attempt_at = ?2, updated_at = ?3
                 WHERE id = ?1 AND status = 'held'",
                args![row.id, end, now],
            )?;
            released.deferred += 1;
            continue;
        }
        let batch = batcher.join(row.event_seq);
        tx.execute(
            "UPDATE deliveries SET status = 'pending', claimed_by = ?2, next_attempt_at = NULL,
                 batch_id = ?3, released_at = ?4, updated_at = ?4
             WHERE id = ?1 AND status = 'held'",
            args![row.id, me, batch, now],
        )?;
        created.push((batch, row.email));
    }
    batcher.write(tx)?;
    released.jobs = MailJob::group(created);
    Ok(released)
}

/// (seen_at, read_at) of an inbox row, by (event, user).
type Marks = HashMap<(i64, String), (Option<i64>, Option<i64>)>;

/// Locks, by writing each to itself, the inbox rows that the escalations
/// due next read, and returns their marks: all in the transaction's first
/// statement. A mark of one of those rows committing after this
/// transaction began makes it fail and run again (PostgreSQL); one coming
/// later waits for its COMMIT and runs again after it. Locked one by one
/// over many round trips instead, a release of many rows would rarely
/// finish while their recipients are marking them.
fn lock_marks(tx: &Tx<'_>, now: i64, limit: usize) -> StoreResult<Marks> {
    let rows = tx.query_all(
        &format!(
            "UPDATE notifications SET seen_at = seen_at WHERE id IN (
                 SELECT n.id FROM deliveries d
                 JOIN notifications n ON n.event_seq = d.event_seq AND n.user_id = d.recipient
                 WHERE d.status = 'held' AND d.next_attempt_at <= ?1
                       AND d.release_unless IS NOT NULL
                 ORDER BY d.next_attempt_at LIMIT ?2{})
             RETURNING event_seq, user_id, seen_at, read_at",
            tx.engine().skip_locked("d")
        ),
        args![now, limit],
        |r| Ok(((r.get(0)?, r.get(1)?), (r.get(2)?, r.get(3)?))),
    )?;
    Ok(rows.into_iter().collect())
}

/// Why the recipient no longer needs this email (its inbox row of the
/// event seen, or read), or None. A row switched off by preference, or
/// never written, was not seen. A row `lock_marks` did not reach (there
/// is none, or it was not among the first due) is read on its own.
fn spared(tx: &Tx<'_>, row: &Due, locked: &Marks) -> StoreResult<Option<&'static str>> {
    let Some(unless) = row.unless else {
        return Ok(None);
    };
    let marks = match locked.get(&(row.event_seq, row.recipient.clone())) {
        Some(marks) => Some(*marks),
        None => inbox::marks_for_release(tx, row.event_seq, &row.recipient)?,
    };
    Ok(match (unless, marks) {
        (Unless::Seen, Some((Some(_), _))) => Some("seen before the escalation was due"),
        (Unless::Read, Some((_, Some(_)))) => Some("read before the escalation was due"),
        _ => None,
    })
}

/// When the earliest held delivery is due.
pub fn next_due_at(conn: &Conn<'_>) -> StoreResult<Option<i64>> {
    conn.query_one(
        "SELECT MIN(next_attempt_at) FROM deliveries WHERE status = 'held'",
        args![],
        |r| r.get(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::registry::Registry;
    use crate::notify::templates::{EmailContent, InboxContent};
    use crate::store::users::{self, User};
    use crate::store::{Store, StoreError, Synchronous};
    use crate::time::Clock;

    /// A store at a manual clock with one event (seq 1) of type `t`, users
    /// u0..u3, each with an inbox row of it, and one held email per
    /// recipient: u0 and u1 unless seen, u2 unless read, u3 with quiet hours
    /// 22:00-08:00 UTC, and an address-only one; all due at 1_000.
    fn store_with_held(dir: &std::path::Path, now: i64) -> Store {
        let store =
            Store::open_with_clock(&dir.join("h.db"), Synchronous::Normal, Clock::manual(0))
                .unwrap();
        let email = EmailContent {
            subject: "s".into(),
            html: "<p>h</p>".into(),
            text: "t".into(),
        };
        let body = Body {
            default: &email,
            translated: None,
        };
        let row = InboxContent {
            title: "t".into(),
            body: "b".into(),
            actions: Vec::new(),
        };
        store
            .write(|tx| {
                tx.execute(
                    "INSERT INTO outbox (seq, id, type, body, created_at)
                     VALUES (1, 'evt_1', 't', '{}', 0)",
                    args![],
                )?;
                for (u, unless) in [
                    ("u0", Some(Unless::Seen)),
                    ("u1", Some(Unless::Seen)),
                    ("u2", Some(Unless::Read)),
                    ("u3", None),
                ] {
                    let user = User {
                        id: u.into(),
                        email: format!("{u}@x.io"),
                        name: String::new(),
                    };
                    users::upsert(tx, &user)?;
                    inbox::insert(tx, 1, u, "t", &row, "{}")?;
                    insert(tx, 1, u, &user.email, body, Hold { due: 1_000, unless })?;
                }
                users::set_timezone(tx, "u3", Some("UTC"))?;
                users::set_quiet_hours(tx, "u3", Some((22 * 60, 8 * 60)))?;
                insert(
                    tx,
                    1,
                    "email:a@x.io",
                    "a@x.io",
                    body,
                    Hold {
                        due: 1_000,
                        unless: None,
                    },
                )?;
                // u0 saw the row, u2 saw it but did not read it.
                inbox::mark(tx, "u0", 1, false)?;
                inbox::mark(tx, "u2", 3, false)?;
                Ok::<_, StoreError>(())
            })
            .unwrap();
        store.clock().set(now);
        store
    }

    fn statuses(store: &Store) -> Vec<(String, String, Option<i64>, Option<i64>)> {
        store
            .read(|c| {
                c.query_all(
                    "SELECT recipient, status, next_attempt_at, released_at FROM deliveries
                     ORDER BY recipient",
                    args![],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
            })
            .unwrap()
    }

    #[test]
    fn the_release_skips_seen_rows_defers_quiet_hours_and_hands_on_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        // 1970-01-01T23:00Z: inside u3's quiet hours, which end at 08:00.
        let now = 23 * 3_600_000;
        let store = store_with_held(dir.path(), now);
        let released = store
            .write(|tx| release_due(tx, 10, 7, 100, &|_| false))
            .unwrap();
        assert_eq!(released.skipped, vec!["t".to_string()]);
        assert_eq!(released.deferred, 1);
        assert!(!released.full);
        let sent: Vec<&str> = released
            .jobs
            .iter()
            .flat_map(|j| j.emails.iter().map(|e| e.address.as_str()))
            .collect();
        assert_eq!(sent.len(), 3, "{sent:?}");
        for address in ["a@x.io", "u1@x.io", "u2@x.io"] {
            assert!(sent.contains(&address), "{sent:?}");
        }
        let end = 32 * 3_600_000;
        assert_eq!(
            statuses(&store),
            vec![
                ("email:a@x.io".into(), "pending".into(), None, Some(now)),
                ("u0".into(), "skipped".into(), None, Some(now)),
                ("u1".into(), "pending".into(), None, Some(now)),
                ("u2".into(), "pending".into(), None, Some(now)),
                ("u3".into(), "held".into(), Some(end), None),
            ]
        );
        // Released together: one batch, held by the releasing instance.
        assert_eq!(released.jobs.len(), 1);
        assert!(released.jobs[0].batched && released.jobs[0].fresh);
        assert_eq!(
            store
                .read(|c| c.query_one(
                    "SELECT COUNT(*) FROM deliveries WHERE claimed_by = 7",
                    args![],
                    |r| r.get::<i64>(0)
                ))
                .unwrap(),
            3
        );
        assert_eq!(store.read(next_due_at).unwrap(), Some(end));

        // Nothing more is due until the quiet hours end; then u3 goes.
        let again = store
            .write(|tx| release_due(tx, 10, 7, 100, &|_| false))
            .unwrap();
        assert!(again.jobs.is_empty() && again.skipped.is_empty() && again.deferred == 0);
        store.clock().set(end);
        let last = store
            .write(|tx| release_due(tx, 10, 7, 100, &|_| false))
            .unwrap();
        assert_eq!(last.jobs.len(), 1);
        assert_eq!(last.jobs[0].emails[0].address, "u3@x.io");
        assert_eq!(store.read(next_due_at).unwrap(), None);
    }

    #[test]
    fn a_critical_type_is_not_deferred_by_quiet_hours() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_held(dir.path(), 23 * 3_600_000);
        let released = store
            .write(|tx| release_due(tx, 10, 7, 100, &|kind| kind == "t"))
            .unwrap();
        assert_eq!(released.deferred, 0);
        assert_eq!(
            released.jobs.iter().map(|j| j.emails.len()).sum::<usize>(),
            4
        );
    }

    #[test]
    fn due_held_emails_are_found_by_the_held_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_held(dir.path(), 0);
        let plan: Vec<String> = store
            .read(|c| {
                c.query_all(&format!("EXPLAIN QUERY PLAN {DUE}"), args![0, 10], |r| {
                    r.get::<String>(3)
                })
            })
            .unwrap();
        let plan = plan.join("\n");
        assert!(plan.contains("USING INDEX deliveries_held"), "{plan}");
    }

    fn def(json: &str) -> TypeDef {
        let registry =
            Registry::parse("t.json", &format!(r#"{{"types": {{"t": {json}}}}}"#)).unwrap();
        registry.get("t").unwrap().clone()
    }

    #[test]
    fn escalations_and_quiet_hours_decide_the_hold() {
        let escalated = def(r#"{"channels": ["inbox", "email"],
                "escalate": {"channel": "email", "afterSecs": 60, "unless": "read"}}"#);
        let plain = def(r#"{"channels": ["inbox", "email"]}"#);
        let critical = def(r#"{"channels": ["inbox", "email"], "critical": true}"#);
        let user = Recipient::User("u".into());
        let address = Recipient::Address {
            email: "a@x.io".into(),
        };
        // 2025-01-15T23:00:00Z, inside 22:00-08:00 UTC, which ends in 9 hours.
        let now = 1_736_982_000_000;
        let quiet = QuietHours::new("UTC", 22 * 60, 8 * 60).unwrap();
        let end = now + 9 * 3_600_000;

        let held = |d: &TypeDef, r: &Recipient, q: Option<&QuietHours>| hold_for(d, r, q, now);
        assert_eq!(
            held(&escalated, &user, None),
            Some(Hold {
                due: now + 60_000,
                unless: Some(Unless::Read)
            })
        );
        assert_eq!(
            held(&escalated, &address, None),
            Some(Hold {
                due: now + 60_000,
                unless: None
            })
        );
        // Both: the escalation's time; the release looks at quiet hours.
        assert_eq!(
            held(&escalated, &user, Some(&quiet)).unwrap().due,
            now + 60_000
        );
        assert_eq!(
            held(&plain, &user, Some(&quiet)),
            Some(Hold {
                due: end,
                unless: None
            })
        );
        assert_eq!(held(&plain, &user, None), None);
        assert_eq!(held(&critical, &user, Some(&quiet)), None);
        let outside = QuietHours::new("UTC", 8 * 60, 9 * 60).unwrap();
        assert_eq!(held(&plain, &user, Some(&outside)), None);
    }
}
