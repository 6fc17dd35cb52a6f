//! The inbox API for a user token: list (keyset pages, newest first, unread
//! and archive filters), unseen count, seen / read / seen-all, archive,
//! unarchive, snooze, bulk actions, delete, and the live stream. Another
//! user's notification is 404, exactly like one that does not exist; in a
//! bulk action it is passed over, like an unknown id.

use serde::Deserialize;
use serde_json::{json, Value};

use super::auth;
use super::ctx::Ctx;
use super::error::ApiError;
use super::request::Req;
use super::response::Reply;
use super::stream::Subscribe;
use crate::notify::inbox::{self, Archived, BulkAction, Cursor};
use crate::notify::service;
use crate::notify::service::BulkTarget;
use crate::time::parse_rfc3339;

pub fn list(ctx: &Ctx, req: &Req) -> Result<Reply, ApiError> {
    let user = auth::user(ctx, req)?;
    let limit = req.limit(20, inbox::MAX_PAGE)?;
    let cursor = match req.query("cursor").filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => Some(Cursor::parse(c).ok_or_else(|| ApiError::bad_request("invalid cursor"))?),
    };
    let unread = match req.query("unread") {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(ApiError::bad_request("unread must be true or false")),
    };
    let archived = match req.query("archived") {
        None => Archived::Exclude,
        Some(a) => Archived::parse(a)
            .ok_or_else(|| ApiError::bad_request("archived must be exclude, include or only"))?,
    };
    let page = service::inbox_page(
        ctx.notifier.store(),
        &user.id,
        cursor,
        limit,
        unread,
        archived,
    )?;
    Ok(Reply::json(200, &page))
}

pub fn unseen_count(ctx: &Ctx, req: &Req) -> Result<Reply, ApiError> {
    let user = auth::user(ctx, req)?;
    let count = service::unseen_count(ctx.notifier.store(), &user.id)?;
    Ok(Reply::json(200, &json!({ "count": count })))
}

pub fn mark(ctx: &Ctx, req: &Req, id: &str, read: bool) -> Result<Reply, ApiError> {
    let user = auth::user(ctx, req)?;
    let id = inbox::parse_id(id)?;
    service::mark(ctx.notifier.store(), &user.id, id, read)?;
    Ok(Reply::no_content())
}

pub fn seen_all(ctx: &Ctx, req: &Req) -> Result<Reply, ApiError> {
    let user = auth::user(ctx, req)?;
    let updated = service::mark_all_seen(ctx.notifier.store(), &user.id)?;
    Ok(Reply::json(200, &json!({ "updated": updated })))
}

/// `POST /v1/inbox/{id}/archive` (`archive` true) and `/unarchive`.
pub fn archive(ctx: &Ctx, req: &Req, id: &str, archive: bool) -> Result<Reply, ApiError> {
    let user = auth::user(ctx, req)?;
    let id = inbox::parse_id(id)?;
    if archive {
        service::archive(ctx.notifier.store(), &user.id, id)?;
    } else {
        service::unarchive(ctx.notifier.store(), &user.id, id)?;
    }
    Ok(Reply::no_content())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnoozeBody {
    until: String,
}

/// `POST /v1/inbox/{id}/snooze {until}`.
pub fn snooze(ctx: &Ctx, req: &Req, id: &str) -> Result<Reply, ApiError> {
    let user = auth::user(ctx, req)?;
    let body: SnoozeBody = req.json()?;
    let until = parse_rfc3339(&body.until)
        .ok_or_else(|| ApiError::validation("until", "must be an RFC 3339 date-time"))?;
    let id = inbox::parse_id(id)?;
    ctx.notifier.snooze_inbox(&user.id, id, until)?;
    Ok(Reply::no_content())
}

/// The most ids one bulk request may name.
pub const MAX_BULK_IDS: usize = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkBody {
    action: String,
    ids: Option<Vec<Value>>,
    all: Option<bool>,
}

/// `POST /v1/inbox/bulk {action, ids | all: true}` -> `{updated}`.
pub fn bulk(ctx: &Ctx, req: &Req) -> Result<Reply, ApiError> {
    let user = auth::user(ctx, req)?;
    let body: BulkBody = req.json()?;
    let action = match body.action.as_str() {
        "seen" => BulkAction::Seen,
        "read" => BulkAction::Read,
        "archive" => BulkAction::Archive,
        _ => {
            return Err(ApiError::validation(
                "action",
                "must be seen, read or archive",
            ))
        }
    };
    let target = match (body.ids, body.all) {
        (Some(ids), None) => BulkTarget::Ids(bulk_ids(&ids)?),
        (None, Some(true)) => BulkTarget::All,
        (None, Some(false)) => return Err(ApiError::validation("all", "must be true")),
        _ => {
            return Err(ApiError::validation(
                "ids",
                "give exactly one of ids and all",
            ))
        }
    };
    let updated = service::bulk(ctx.notifier.store(), &user.id, action, &target)?;
    Ok(Reply::json(200, &json!({ "updated": updated })))
}

/// The notification ids of a bulk request: 1 to `MAX_BULK_IDS` of them,
/// each `ntf_<n>`, repeats counted once.
fn bulk_ids(ids: &[Value]) -> Result<Vec<i64>, ApiError> {
    if ids.is_empty() || ids.len() > MAX_BULK_IDS {
        return Err(ApiError::validation(
            "ids",
            &format!("must hold 1 to {MAX_BULK_IDS} notification ids"),
        ));
    }
    let mut parsed = Vec::with_capacity(ids.len());
    for (i, id) in ids.iter().enumerate() {
        let n = id
            .as_str()
            .and_then(|s| inbox::parse_id(s).ok())
            .ok_or_else(|| {
                ApiError::validation(&format!("ids[{i}]"), "must be a notification id")
            })?;
        parsed.push(n);
    }
    parsed.sort_unstable();
    parsed.dedup();
    Ok(parsed)
}

pub fn delete(ctx: &Ctx, req: &Req, id: &str) -> Result<Reply, ApiError> {
    let user = auth::user(ctx, req)?;
    let id = inbox::parse_id(id)?;
    service::delete_row(ctx.notifier.store(), &user.id, id)?;
    Ok(Reply::no_content())
}

/// `GET /v1/inbox/stream`: authenticates (bearer token or the inbox page's
/// session cookie) and hands the connection to the stream hub. The stream
/// resumes after `Last-Event-ID`, or after `?lastEventId=` for the first
/// connection of a page that already shows rows up to that id.
pub fn stream(ctx: &Ctx, req: &Req) -> Result<Reply, ApiError> {
    let (user, session) = auth::user_or_session(ctx, req)?;
    let after = match req
        .header("last-event-id")
        .or_else(|| req.query("lastEventId"))
        .map(str::trim)
        .filter(|v| !v.is_empty())
    {
        None => None,
        Some(v) => Some(
            v.parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| ApiError::bad_request("Last-Event-ID must be a notification id"))?,
        ),
    };
    Ok(Reply::stream(Subscribe {
        user_id: user.id,
        session,
        after,
    }))
}
