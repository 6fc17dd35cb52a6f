//! Topics, their subscribers and the fan-out cursors (SPEC 10): the one
//! owner of `topics`, `topic_subscribers` and `topic_fanouts`. The API's
//! operations each state their own transaction; the dispatcher's and the
//! fan-out's helpers run in the caller's. A subscription is unique per
//! (topic, user), so adding one twice is harmless.

use serde::Serialize;
use serde_json::Value;

use super::error::{invalid, NotifyError};
use super::event::{is_topic_key, Recipient, TOPIC_KEY_RULE};
use crate::args;
use crate::store::{users, Conn, Store, StoreError, StoreResult, Tx};
use crate::time::rfc3339;

/// Most user ids one `POST .../subscribers` may add.
pub const MAX_SUBSCRIBE: usize = 1000;
/// Largest page of `GET .../subscribers`.
pub const MAX_PAGE: usize = 1000;
const MAX_NAME_LEN: usize = 200;

/// A topic as the API shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Topic {
    pub key: String,
    pub name: String,
    pub subscribers: i64,
    pub created_at: String,
    pub updated_at: String,
}

/// One subscriber, as listed.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscriber {
    pub user_id: String,
    pub subscribed_at: String,
}

/// A key from a request path: 422 naming `key` when it is not one.
pub fn check_key(key: &str) -> Result<(), NotifyError> {
    match is_topic_key(key) {
        true => Ok(()),
        false => Err(invalid("key", TOPIC_KEY_RULE)),
    }
}

/// The body of `PUT /v1/topics/{key}`: `{name}` (optional, at most 200
/// characters; null or absent keeps the name, or leaves a new topic's empty).
pub fn parse_name(body: Value) -> Result<Option<String>, NotifyError> {
    let Value::Object(mut obj) = body else {
        return Err(invalid("body", "expected a JSON object"));
    };
    let name = match obj.remove("name") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.chars().count() <= MAX_NAME_LEN => Some(s),
        Some(_) => {
            return Err(invalid(
                "name",
                "expected a string of at most 200 characters",
            ))
        }
    };
    if let Some(field) = obj.keys().next() {
        return Err(invalid(field, "is not a known topic field"));
    }
    Ok(name)
}

/// The body of `POST .../subscribers`: `{userIds: [...]}`, 1 to 1000 ids.
pub fn parse_user_ids(body: Value) -> Result<Vec<String>, NotifyError> {
    let Value::Object(mut obj) = body else {
        return Err(invalid("body", "expected a JSON object"));
    };
    let ids = match obj.remove("userIds") {
        Some(Value::Array(items)) => items,
        Some(_) => return Err(invalid("userIds", "expected an array of user ids")),
        None => return Err(invalid("userIds", "is required")),
    };
    if let Some(field) = obj.keys().next() {
        return Err(invalid(field, "is not a known field"));
    }
    if ids.is_empty() || ids.len() > MAX_SUBSCRIBE {
        return Err(invalid(
            "userIds",
            &format!("expected 1 to {MAX_SUBSCRIBE} user ids"),
        ));
    }
    ids.into_iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::String(id) if !id.is_empty() => Ok(id),
            _ => Err(invalid(&format!("userIds[{i}]"), "expected a user id")),
        })
        .collect()
}

/// Creates the topic or renames it, in one transaction; true when created.
pub fn put(store: &Store, key: &str, name: Option<&str>) -> Result<(Topic, bool), NotifyError> {
    check_key(key)?;
    Ok(store.write(|tx| {
        let now = tx.now_ms();
        let created = tx.execute(
            "INSERT INTO topics (key, name, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)
             ON CONFLICT (key) DO NOTHING",
            args![key, name.unwrap_or(""), now],
        )? == 1;
        if !created {
            if let Some(name) = name {
                tx.execute(
                    "UPDATE topics SET name = ?2, updated_at = ?3 WHERE key = ?1",
                    args![key, name, now],
                )?;
            }
        }
        Ok::<_, StoreError>((read(tx, key)?, created))
    })?)
}

/// A topic with its subscriber count; `NotFound` when there is none.
pub fn get(store: &Store, key: &str) -> Result<Topic, NotifyError> {
    check_key(key)?;
    Ok(store.read(|c| read(c, key))?)
}

fn read(conn: &Conn<'_>, key: &str) -> StoreResult<Topic> {
    conn.query_one(
        "SELECT key, name, created_at, updated_at,
                (SELECT COUNT(*) FROM topic_subscribers WHERE topic_key = ?1)
         FROM topics WHERE key = ?1",
        args![key],
        |r| {
            Ok(Topic {
                key: r.get(0)?,
                name: r.get(1)?,
                created_at: rfc3339(r.get(2)?),
                updated_at: rfc3339(r.get(3)?),
                subscribers: r.get(4)?,
            })
        },
    )
}

/// Deletes the topic and its subscriptions (one transaction). A fan-out
/// under way finds no more subscribers and ends.
pub fn delete(store: &Store, key: &str) -> Result<(), NotifyError> {
    check_key(key)?;
    Ok(store.write(
        |tx| match tx.execute("DELETE FROM topics WHERE key = ?1", args![key])? {
            0 => Err(StoreError::NotFound),
            _ => Ok(()),
        },
    )?)
}

/// Subscribes `user_ids` (idempotent), all or none in one transaction:
/// an unknown user is a 422 naming `userIds[i]`. Returns how many
/// subscriptions are new.
pub fn subscribe(store: &Store, key: &str, user_ids: &[String]) -> Result<usize, NotifyError> {
    check_key(key)?;
    store.write(|tx| {
        if !exists(tx, key)? {
            return Err(StoreError::NotFound.into());
        }
        let now = tx.now_ms();
        let mut added = 0;
        for (i, id) in user_ids.iter().enumerate() {
            if !users::exists(tx, id)? {
                return Err(invalid(
                    &format!("userIds[{i}]"),
                    &format!("unknown user {id:?}"),
                ));
            }
            added += tx.execute(
                "INSERT INTO topic_subscribers (topic_key, user_id, created_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (topic_key, user_id) DO NOTHING",
                args![key, id, now],
            )?;
        }
        Ok(added)
    })
}

/// Removes one subscription; removing one that is not there is no error,
/// an unknown topic is `NotFound`.
pub fn unsubscribe(store: &Store, key: &str, user_id: &str) -> Result<(), NotifyError> {
    check_key(key)?;
    Ok(store.write(|tx| {
        if !exists(tx, key)? {
            return Err(StoreError::NotFound);
        }
        tx.execute(
            "DELETE FROM topic_subscribers WHERE topic_key = ?1 AND user_id = ?2",
            args![key, user_id],
        )?;
        Ok(())
    })?)
}

/// A page of subscribers after `cursor` (a user id), in user id order.
pub fn subscribers(
    store: &Store,
    key: &str,
    cursor: &str,
    limit: usize,
) -> Result<Vec<Subscriber>, NotifyError> {
    check_key(key)?;
    Ok(store.read(|c| {
        if !exists(c, key)? {
            return Err(StoreError::NotFound);
        }
        c.query_all(
            "SELECT user_id, created_at FROM topic_subscribers
             WHERE topic_key = ?1 AND user_id > ?2 ORDER BY user_id LIMIT ?3",
            args![key, cursor, limit],
            |r| {
                Ok(Subscriber {
                    user_id: r.get(0)?,
                    subscribed_at: rfc3339(r.get(1)?),
                })
            },
        )
    })?)
}

fn exists(conn: &Conn<'_>, key: &str) -> StoreResult<bool> {
    Ok(conn
        .query_opt(
            "SELECT 1 FROM topics WHERE key = ?1",
            args![key],
            |_| Ok(()),
        )?
        .is_some())
}

/// Every user and topic an event or schedule names must exist when it is
/// accepted: a 422 naming `recipients[i]` otherwise.
pub fn check_recipients(tx: &Tx<'_>, recipients: &[Recipient]) -> Result<(), NotifyError> {
    for (i, recipient) in recipients.iter().enumerate() {
        let unknown = match recipient {
            Recipient::User(id) if !users::exists(tx, id)? => format!("unknown user {id:?}"),
            Recipient::Topic { topic } if !exists(tx, topic)? => format!("unknown topic {topic:?}"),
            _ => continue,
        };
        return Err(invalid(&format!("recipients[{i}]"), &unknown));
    }
    Ok(())
}

/// Records that event `seq` has topics to fan out to, in the dispatch
/// transaction: from now on the row is the fan-out's only trigger.
pub fn start_fanout(tx: &Tx<'_>, seq: i64) -> StoreResult<()> {
    tx.execute(
        "INSERT INTO topic_fanouts (event_seq, created_at) VALUES (?1, ?2)
         ON CONFLICT (event_seq) DO NOTHING",
        args![seq, tx.now_ms()],
    )?;
    Ok(())
}

/// The oldest fan-outs under way, for the page runner to pick from.
pub fn fanouts_under_way(conn: &Conn<'_>, limit: usize) -> StoreResult<Vec<i64>> {
    conn.query_all(
        "SELECT event_seq FROM topic_fanouts ORDER BY event_seq LIMIT ?1",
        args![limit],
        |r| r.get(0),
    )
}

/// Whether event `seq`'s fan-out is still under way.
pub fn fanout_pending(conn: &Conn<'_>, seq: i64) -> StoreResult<bool> {
    Ok(conn
        .query_opt(
            "SELECT 1 FROM topic_fanouts WHERE event_seq = ?1",
            args![seq],
            |_| Ok(()),
        )?
        .is_some())
}

/// Claims fan-out `seq` for one page: its cursor, or None when it is done
/// or (PostgreSQL) another instance's transaction holds it.
pub fn claim_fanout(tx: &Tx<'_>, seq: i64) -> StoreResult<Option<String>> {
    tx.query_opt(
        &format!(
            "SELECT f.after_user FROM topic_fanouts f WHERE f.event_seq = ?1{}",
            tx.engine().skip_locked("f")
        ),
        args![seq],
        |r| r.get(0),
    )
}

/// The next `limit` distinct subscribers of any of `topics` after user id
/// `after`, in user id order. Each topic gives at most `limit` (read in
/// its key's order), and the union's first `limit` are exactly the page:
/// no user is read twice, however many topics name it.
pub fn page(
    conn: &Conn<'_>,
    topics: &[&str],
    after: &str,
    limit: usize,
) -> StoreResult<Vec<String>> {
    if topics.is_empty() {
        return Ok(Vec::new());
    }
    let parts: Vec<String> = (0..topics.len())
        .map(|i| {
            format!(
                "SELECT user_id FROM (SELECT user_id FROM topic_subscribers
                  WHERE topic_key = ?{} AND user_id > ?1 ORDER BY user_id LIMIT ?2) AS t{i}",
                i + 3
            )
        })
        .collect();
    let sql = format!("{} ORDER BY user_id LIMIT ?2", parts.join(" UNION "));
    let limit = limit as i64;
    let mut values: Vec<&dyn crate::store::Arg> = vec![&after, &limit];
    values.extend(topics.iter().map(|t| t as &dyn crate::store::Arg));
    conn.query_all(&sql, &values, |r| r.get(0))
}

/// Moves fan-out `seq`'s cursor past `after`, with the page it committed.
pub fn advance(tx: &Tx<'_>, seq: i64, after: &str) -> StoreResult<()> {
    tx.execute(
        "UPDATE topic_fanouts SET after_user = ?2, pages = pages + 1 WHERE event_seq = ?1",
        args![seq, after],
    )?;
    Ok(())
}

/// Ends fan-out `seq` with its last page.
pub fn finish(tx: &Tx<'_>, seq: i64) -> StoreResult<()> {
    tx.execute("DELETE FROM topic_fanouts WHERE event_seq = ?1", args![seq])?;
    Ok(())
}
