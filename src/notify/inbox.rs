//! The in-app inbox channel: the only code that inserts notification rows,
//! plus the owner-scoped reads and updates behind the inbox API. Every query
//! takes the user id, so one user can never see or change another's rows.
//! Pages are keyset-paginated on (created_at, id), newest first.
//! A row is in the inbox, archived, or snoozed until a time (never two of
//! these): each state change is one function here, run in its caller's
//! write transaction, so other effects (webhooks) can join it.

use serde::Serialize;
use serde_json::Value;

use super::delivery::views::DeliveryView;
use super::links;
use super::templates::InboxContent;
use super::webhooks::Subscriptions;
use crate::args;
use crate::store::{Conn, Row, StoreError, StoreResult, Tx};
use crate::time::rfc3339;

pub const MAX_PAGE: usize = 100;

/// A new inbox row, announced only after the transaction that wrote it
/// committed (the live stream reads the row itself by id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxCommitted {
    pub user_id: String,
    pub id: i64,
    /// A snoozed row back in the inbox, not a new one: its id is below what
    /// open streams have sent, so the hub pushes it to them by id.
    pub returned: bool,
}

/// Which rows a list shows by their archive state (`?archived=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Archived {
    /// The inbox: neither archived nor snoozed.
    #[default]
    Exclude,
    /// The inbox and the archive; snoozed rows stay hidden.
    Include,
    /// The archive alone.
    Only,
}

impl Archived {
    pub fn parse(s: &str) -> Option<Archived> {
        match s {
            "exclude" => Some(Archived::Exclude),
            "include" => Some(Archived::Include),
            "only" => Some(Archived::Only),
            _ => None,
        }
    }
}

/// What a bulk action does to each row it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkAction {
    Seen,
    Read,
    Archive,
}

/// The columns `item_from_row` maps, in its order.
const ITEM_COLUMNS: &str =
    "id, type, title, body, actions, payload, created_at, seen_at, read_at, archived_at, snoozed_until";

/// Writes the inbox row for (event, user); false if it already exists, which
/// is what makes a re-driven dispatch harmless.
pub fn insert(
    tx: &Tx<'_>,
    event_seq: i64,
    user_id: &str,
    kind: &str,
    content: &InboxContent,
    payload: &str,
) -> StoreResult<Option<i64>> {
    let actions = serde_json::to_string(&content.actions).unwrap_or_else(|_| "[]".into());
    tx.insert(
        "INSERT INTO notifications
                 (event_seq, user_id, type, title, body, actions, payload, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT DO NOTHING",
        args![
            event_seq,
            user_id,
            kind,
            content.title,
            content.body,
            actions,
            payload,
            tx.now_ms()
        ],
    )
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Item {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub body: String,
    pub actions: Value,
    pub payload: Value,
    pub created_at: String,
    pub seen_at: Option<String>,
    pub read_at: Option<String>,
    pub archived_at: Option<String>,
    pub snoozed_until: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Page {
    pub items: Vec<Item>,
    pub next_cursor: Option<String>,
}

/// Where a page starts: strictly older than this (created_at, id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    created_at: i64,
    id: i64,
}

impl Cursor {
    pub fn parse(s: &str) -> Option<Cursor> {
        let (created_at, id) = s.split_once('.')?;
        Some(Cursor {
            created_at: created_at.parse().ok()?,
            id: id.parse().ok()?,
        })
    }

    fn encode(&self) -> String {
        format!("{}.{}", self.created_at, self.id)
    }
}

pub fn public_id(id: i64) -> String {
    format!("ntf_{id}")
}

/// `ntf_42` -> 42; anything else is simply not found.
pub fn parse_id(s: &str) -> StoreResult<i64> {
    s.strip_prefix("ntf_")
        .and_then(|n| n.parse().ok())
        .ok_or(StoreError::NotFound)
}

pub fn list(
    conn: &Conn<'_>,
    user_id: &str,
    cursor: Option<Cursor>,
    limit: usize,
    unread_only: bool,
    archived: Archived,
) -> StoreResult<Page> {
    let limit = limit.clamp(1, MAX_PAGE);
    let (before_at, before_id) = cursor.map_or((i64::MAX, i64::MAX), |c| (c.created_at, c.id));
    // One statement per filter rather than one with ORs, so each is a range
    // of its own (partial) index.
    let (index, filter) = match (unread_only, archived) {
        (false, Archived::Exclude) => (
            "notifications_user_inbox",
            "archived_at IS NULL AND snoozed_until IS NULL",
        ),
        (false, Archived::Include) => ("notifications_user_created", "snoozed_until IS NULL"),
        (false, Archived::Only) => ("notifications_user_archived", "archived_at IS NOT NULL"),
        (true, Archived::Exclude) => (
            "notifications_user_unread",
            "read_at IS NULL AND snoozed_until IS NULL AND archived_at IS NULL",
        ),
        (true, Archived::Include) => (
            "notifications_user_unread",
            "read_at IS NULL AND snoozed_until IS NULL",
        ),
        (true, Archived::Only) => (
            "notifications_user_archived",
            "archived_at IS NOT NULL AND read_at IS NULL",
        ),
    };
    let sql = format!(
        "SELECT {ITEM_COLUMNS} FROM notifications INDEXED BY {index}
         WHERE user_id = ?1 AND {filter} AND (created_at, id) < (?2, ?3)
         ORDER BY created_at DESC, id DESC LIMIT ?4"
    );
    let mut keys = Vec::new();
    let mut items = conn.query_all(&sql, args![user_id, before_at, before_id, limit + 1], |r| {
        keys.push(Cursor {
            created_at: r.get(6)?,
            id: r.get(0)?,
        });
        item_from_row(r)
    })?;
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        keys.get(limit - 1).map(Cursor::encode)
    } else {
        None
    };
    Ok(Page { items, next_cursor })
}

/// Maps `SELECT {ITEM_COLUMNS}`.
fn item_from_row(r: &Row<'_>) -> StoreResult<Item> {
    Ok(Item {
        id: public_id(r.get(0)?),
        kind: r.get(1)?,
        title: r.get(2)?,
        body: r.get(3)?,
        actions: web_actions(json_column(r.text(4)?.unwrap_or("[]"))),
        payload: json_column(r.text(5)?.unwrap_or("{}")),
        created_at: rfc3339(r.get(6)?),
        seen_at: r.get::<Option<i64>>(7)?.map(rfc3339),
        read_at: r.get::<Option<i64>>(8)?.map(rfc3339),
        archived_at: r.get::<Option<i64>>(9)?.map(rfc3339),
        snoozed_until: r.get::<Option<i64>>(10)?.map(rfc3339),
    })
}

/// The user's rows with an id above `after`, oldest first, at most `limit`:
/// what the live stream sends, in the order it sends it. Ids only grow
/// (AUTOINCREMENT) and commit in id order (one writer), so "above the last
/// id sent" is exactly "not sent yet". Rows out of the inbox (archived,
/// snoozed) are passed over: a snoozed one is pushed when it returns.
pub fn after(
    conn: &Conn<'_>,
    user_id: &str,
    after: i64,
    limit: usize,
) -> StoreResult<Vec<(i64, Item)>> {
    conn.query_all(
        &format!(
            "SELECT {ITEM_COLUMNS} FROM notifications
             WHERE user_id = ?1 AND id > ?2 AND archived_at IS NULL AND snoozed_until IS NULL
             ORDER BY id LIMIT ?3"
        ),
        args![user_id, after, limit],
        |r| Ok((r.get::<i64>(0)?, item_from_row(r)?)),
    )
}

/// One of the user's rows if it is in the inbox now: a returned row, as
/// the live stream pushes it.
pub fn in_inbox(conn: &Conn<'_>, user_id: &str, id: i64) -> StoreResult<Option<Item>> {
    conn.query_opt(
        &format!(
            "SELECT {ITEM_COLUMNS} FROM notifications
             WHERE id = ?1 AND user_id = ?2 AND archived_at IS NULL AND snoozed_until IS NULL"
        ),
        args![id, user_id],
        item_from_row,
    )
}

/// The rows with ids `first..=last` (one dispatch's), as committed: what
/// another instance announced.
pub fn committed_between(
    conn: &Conn<'_>,
    first: i64,
    last: i64,
) -> StoreResult<Vec<InboxCommitted>> {
    conn.query_all(
        "SELECT user_id, id FROM notifications WHERE id BETWEEN ?1 AND ?2 ORDER BY id",
        args![first, last],
        |r| {
            Ok(InboxCommitted {
                user_id: r.get(0)?,
                id: r.get(1)?,
                returned: false,
            })
        },
    )
}

/// The rows `ids` (returned from a snooze, as another instance announced),
/// those that still exist.
pub fn returned_rows(conn: &Conn<'_>, ids: &[i64]) -> StoreResult<Vec<InboxCommitted>> {
    let mut rows = Vec::with_capacity(ids.len());
    for &id in ids {
        let user = conn.query_opt(
            "SELECT user_id FROM notifications WHERE id = ?1",
            args![id],
            |r| r.get::<String>(0),
        )?;
        rows.extend(user.map(|user_id| InboxCommitted {
            user_id,
            id,
            returned: true,
        }));
    }
    Ok(rows)
}

/// The id of the user's newest row (0 for an empty inbox): where a stream
/// opened without `Last-Event-ID` starts.
pub fn newest_id(conn: &Conn<'_>, user_id: &str) -> StoreResult<i64> {
    conn.query_one(
        "SELECT COALESCE(MAX(id), 0) FROM notifications WHERE user_id = ?1",
        args![user_id],
        |r| r.get(0),
    )
}

/// The stored actions whose url may be a link (`links::web_link`). Rows
/// rendered before that rule applied at render time may hold any url, and
/// every reader (the API, the live stream, the inbox page) gets them from
/// here.
fn web_actions(actions: Value) -> Value {
    let Value::Array(actions) = actions else {
        return Value::Array(Vec::new());
    };
    actions
        .into_iter()
        .filter(|a| {
            a.get("url")
                .and_then(Value::as_str)
                .and_then(links::web_link)
                .is_some()
        })
        .collect()
}

fn json_column(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

pub fn unseen_count(conn: &Conn<'_>, user_id: &str) -> StoreResult<i64> {
    conn.query_one(
        "SELECT COUNT(*) FROM notifications INDEXED BY notifications_user_unseen
             WHERE user_id = ?1 AND seen_at IS NULL AND archived_at IS NULL
               AND snoozed_until IS NULL",
        args![user_id],
        |r| r.get(0),
    )
}

/// Marks one of the user's rows seen (and, with `read`, read as well).
/// Already-marked rows keep their first timestamp. NotFound if the row is
/// not the user's. A mark that changes the row is reported to the webhooks
/// subscribed (`inbox.seen`, `inbox.read`), in the same transaction.
pub fn mark(tx: &Tx<'_>, user_id: &str, id: i64, read: bool) -> StoreResult<()> {
    let (seen_at, read_at) = tx
        .query_opt(
            "SELECT seen_at, read_at FROM notifications WHERE id = ?1 AND user_id = ?2",
            args![id, user_id],
            |r| Ok((r.get::<Option<i64>>(0)?, r.get::<Option<i64>>(1)?)),
        )?
        .ok_or(StoreError::NotFound)?;
    let sql = if read {
        "UPDATE notifications SET seen_at = COALESCE(seen_at, ?3), read_at = COALESCE(read_at, ?3)
         WHERE id = ?1 AND user_id = ?2"
    } else {
        "UPDATE notifications SET seen_at = COALESCE(seen_at, ?3) WHERE id = ?1 AND user_id = ?2"
    };
    tx.execute(sql, args![id, user_id, tx.now_ms()])?;
    let marks = [
        ("inbox.seen", seen_at.is_none()),
        ("inbox.read", read && read_at.is_none()),
    ];
    report_marks(tx, user_id, &[id], &marks)
}

/// Reports marks of the user's rows `ids` to the webhooks subscribed: each
/// `(kind, changed)` with `changed` true, for every row.
fn report_marks(
    tx: &Tx<'_>,
    user_id: &str,
    ids: &[i64],
    marks: &[(&str, bool)],
) -> StoreResult<()> {
    let webhooks = Subscriptions::load(tx)?;
    let kinds: Vec<&str> = marks
        .iter()
        .filter(|(kind, changed)| *changed && webhooks.wants(kind))
        .map(|(kind, _)| *kind)
        .collect();
    if kinds.is_empty() {
        return Ok(());
    }
    for &id in ids {
        let data = tx.query_one(
            "SELECT o.id, n.type FROM notifications n JOIN outbox o ON o.seq = n.event_seq
             WHERE n.id = ?1",
            args![id],
            |r| {
                Ok(serde_json::json!({
                    "notificationId": public_id(id),
                    "userId": user_id,
                    "eventId": r.get::<String>(0)?,
                    "type": r.get::<String>(1)?,
                }))
            },
        )?;
        for kind in &kinds {
            webhooks.record(tx, kind, data.clone())?;
        }
    }
    Ok(())
}

/// When the user's row of an event was seen and read, for the release of
/// a held email (None: there is no row, it was never written or is gone).
/// The row is written (to itself) so that, on PostgreSQL too, a mark
/// committing at the same moment either comes first and is read here, or
/// waits for this transaction and runs again after it: never both a mark
/// missed here and a `seen_at` before the release.
pub fn marks_for_release(
    tx: &Tx<'_>,
    event_seq: i64,
    user_id: &str,
) -> StoreResult<Option<(Option<i64>, Option<i64>)>> {
    tx.query_opt(
        "UPDATE notifications SET seen_at = seen_at WHERE event_seq = ?1 AND user_id = ?2
         RETURNING seen_at, read_at",
        args![event_seq, user_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

/// Marks every unseen row of the user seen; returns how many changed
/// (each reported as `inbox.seen`).
pub fn mark_all_seen(tx: &Tx<'_>, user_id: &str) -> StoreResult<usize> {
    let ids = tx.query_all(
        "UPDATE notifications SET seen_at = ?2 WHERE user_id = ?1 AND seen_at IS NULL
         RETURNING id",
        args![user_id, tx.now_ms()],
        |r| r.get::<i64>(0),
    )?;
    report_marks(tx, user_id, &ids, &[("inbox.seen", true)])?;
    Ok(ids.len())
}

/// Marks every unread row of the user read (and seen); returns how many
/// changed (each reported as `inbox.read`, and as `inbox.seen` if unseen).
pub fn mark_all_read(tx: &Tx<'_>, user_id: &str) -> StoreResult<usize> {
    let now = tx.now_ms();
    // RETURNING gives the new values: a row seen by this mark has `now`.
    let rows = tx.query_all(
        "UPDATE notifications SET seen_at = COALESCE(seen_at, ?2), read_at = ?2
             WHERE user_id = ?1 AND read_at IS NULL
         RETURNING id, seen_at",
        args![user_id, now],
        |r| Ok((r.get::<i64>(0)?, r.get::<Option<i64>>(1)? == Some(now))),
    )?;
    let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
    let newly_seen: Vec<i64> = rows.iter().filter(|r| r.1).map(|r| r.0).collect();
    report_marks(tx, user_id, &newly_seen, &[("inbox.seen", true)])?;
    report_marks(tx, user_id, &ids, &[("inbox.read", true)])?;
    Ok(ids.len())
}

/// Archives one of the user's rows (the first time is kept) and ends its
/// snooze. NotFound if the row is not the user's.
pub fn archive(tx: &Tx<'_>, user_id: &str, id: i64) -> StoreResult<()> {
    let was: Option<Option<i64>> = tx.query_opt(
        "SELECT archived_at FROM notifications WHERE id = ?1 AND user_id = ?2",
        args![id, user_id],
        |r| r.get(0),
    )?;
    let was = was.ok_or(StoreError::NotFound)?;
    tx.execute(
        "UPDATE notifications SET archived_at = COALESCE(archived_at, ?3), snoozed_until = NULL
         WHERE id = ?1 AND user_id = ?2",
        args![id, user_id, tx.now_ms()],
    )?;
    report_marks(tx, user_id, &[id], &[("inbox.archived", was.is_none())])
}

/// Puts one of the user's archived rows back in the inbox (a no-op for a
/// row already there). NotFound if the row is not the user's.
pub fn unarchive(tx: &Tx<'_>, user_id: &str, id: i64) -> StoreResult<()> {
    found(tx.execute(
        "UPDATE notifications SET archived_at = NULL WHERE id = ?1 AND user_id = ?2",
        args![id, user_id],
    )?)
}

/// Hides one of the user's rows until `until` (taking it out of the
/// archive): nothing else changes now; `return_snoozed` brings it back.
/// NotFound if the row is not the user's.
pub fn snooze(tx: &Tx<'_>, user_id: &str, id: i64, until: i64) -> StoreResult<()> {
    found(tx.execute(
        "UPDATE notifications SET snoozed_until = ?3, archived_at = NULL
         WHERE id = ?1 AND user_id = ?2",
        args![id, user_id, until],
    )?)
}

/// Applies `action` to those of `ids` that are the user's and not already
/// so; returns how many changed. Another user's ids are passed over like
/// unknown ones, so the count tells nothing about them.
pub fn bulk_ids(tx: &Tx<'_>, user_id: &str, action: BulkAction, ids: &[i64]) -> StoreResult<usize> {
    let sql = match action {
        BulkAction::Seen => {
            "UPDATE notifications SET seen_at = ?3
             WHERE id = ?1 AND user_id = ?2 AND seen_at IS NULL"
        }
        BulkAction::Read => {
            "UPDATE notifications SET seen_at = COALESCE(seen_at, ?3), read_at = ?3
             WHERE id = ?1 AND user_id = ?2 AND read_at IS NULL"
        }
        BulkAction::Archive => {
            "UPDATE notifications SET archived_at = ?3, snoozed_until = NULL
             WHERE id = ?1 AND user_id = ?2 AND archived_at IS NULL"
        }
    };
    let now = tx.now_ms();
    let mut changed = Vec::new();
    for id in ids {
        if tx.execute(sql, args![*id, user_id, now])? == 1 {
            changed.push(*id);
        }
    }
    let kind = match action {
        BulkAction::Seen => "inbox.seen",
        BulkAction::Read => "inbox.read",
        BulkAction::Archive => "inbox.archived",
    };
    report_marks(tx, user_id, &changed, &[(kind, true)])?;
    Ok(changed.len())
}

/// Archives every row in the user's inbox (snoozed rows stay snoozed);
/// returns how many.
pub fn archive_all(tx: &Tx<'_>, user_id: &str) -> StoreResult<usize> {
    let ids: Vec<i64> = tx.query_all(
        "UPDATE notifications SET archived_at = ?2
         WHERE user_id = ?1 AND archived_at IS NULL AND snoozed_until IS NULL
         RETURNING id",
        args![user_id, tx.now_ms()],
        |r| r.get(0),
    )?;
    report_marks(tx, user_id, &ids, &[("inbox.archived", true)])?;
    Ok(ids.len())
}

/// Brings back up to `limit` rows whose snooze ended by `now`, unseen:
/// the scheduler's timer. What they were is announced after commit.
pub fn return_snoozed(tx: &Tx<'_>, now: i64, limit: usize) -> StoreResult<Vec<InboxCommitted>> {
    tx.query_all(
        "UPDATE notifications SET snoozed_until = NULL, seen_at = NULL
         WHERE id IN (SELECT id FROM notifications INDEXED BY notifications_snoozed
                      WHERE snoozed_until <= ?1 ORDER BY snoozed_until LIMIT ?2)
         RETURNING user_id, id",
        args![now, limit],
        |r| {
            Ok(InboxCommitted {
                user_id: r.get(0)?,
                id: r.get(1)?,
                returned: true,
            })
        },
    )
}

/// When the next snooze ends, if any row is snoozed.
pub fn next_snooze_end(conn: &Conn<'_>) -> StoreResult<Option<i64>> {
    conn.query_one(
        "SELECT MIN(snoozed_until) FROM notifications INDEXED BY notifications_snoozed
         WHERE snoozed_until IS NOT NULL",
        args![],
        |r| r.get(0),
    )
}

fn found(changed: usize) -> StoreResult<()> {
    if changed == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

pub fn delete(tx: &Tx<'_>, user_id: &str, id: i64) -> StoreResult<()> {
    let changed = tx.execute(
        "DELETE FROM notifications WHERE id = ?1 AND user_id = ?2",
        args![id, user_id],
    )?;
    if changed == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

/// The inbox rows of one event, shown as delivered deliveries.
pub fn deliveries_of(conn: &Conn<'_>, event_seq: i64) -> StoreResult<Vec<DeliveryView>> {
    conn.query_all(
        "SELECT id, user_id FROM notifications WHERE event_seq = ?1 ORDER BY id",
        args![event_seq],
        |r| {
            Ok(DeliveryView {
                id: public_id(r.get(0)?),
                recipient: r.get(1)?,
                channel: "inbox".into(),
                status: "delivered".into(),
                attempts: 1,
                next_attempt_at: None,
                last_error: None,
                batch_id: None,
                hold: Default::default(),
            })
        },
    )
}
