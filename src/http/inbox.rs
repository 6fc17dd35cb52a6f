//! The inbox API for a user token: list (keyset pages, newest first, unread
//! filter), unseen count, seen / read / seen-all, delete, and the live
//! stream. Another user's notification is 404, exactly like one that does
//! not exist.

use serde_json::json;

use super::auth;
use super::ctx::Ctx;
use super::error::ApiError;
use super::request::Req;
use super::response::Reply;
use super::stream::Subscribe;
use crate::notify::inbox::{self, Cursor};
use crate::notify::service;

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
    let page = service::inbox_page(ctx.notifier.store(), &user.id, cursor, limit, unread)?;
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
