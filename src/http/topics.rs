//! Topics and their subscribers (service key): create or rename, read,
//! delete, subscribe, unsubscribe and list subscribers in user id order.
//! Parsing and every check live in `notify::topics`; a bad key or field is
//! a 422 naming it, an unknown topic 404.

use serde_json::json;

use super::auth;
use super::ctx::Ctx;
use super::error::ApiError;
use super::request::Req;
use super::response::Reply;
use crate::notify::topics;
use crate::notify::NotifyError;
use crate::store::StoreError;

const DEFAULT_PAGE: usize = 100;

/// `PUT /v1/topics/{key} {name}` -> 201 created, 200 renamed.
pub fn put(ctx: &Ctx, req: &Req, key: &str) -> Result<Reply, ApiError> {
    auth::service(ctx, req)?;
    let name = topics::parse_name(req.json_value()?)?;
    let (topic, created) = topics::put(ctx.notifier.store(), key, name.as_deref())?;
    Ok(Reply::json(if created { 201 } else { 200 }, &topic))
}

pub fn get(ctx: &Ctx, req: &Req, key: &str) -> Result<Reply, ApiError> {
    auth::service(ctx, req)?;
    let topic = topics::get(ctx.notifier.store(), key).map_err(|e| unknown(key, e))?;
    Ok(Reply::json(200, &topic))
}

/// `DELETE /v1/topics/{key}` -> 204, its subscriptions with it.
pub fn delete(ctx: &Ctx, req: &Req, key: &str) -> Result<Reply, ApiError> {
    auth::service(ctx, req)?;
    topics::delete(ctx.notifier.store(), key).map_err(|e| unknown(key, e))?;
    Ok(Reply::no_content())
}

/// `POST /v1/topics/{key}/subscribers {userIds}` -> 200 `{added}`.
pub fn subscribe(ctx: &Ctx, req: &Req, key: &str) -> Result<Reply, ApiError> {
    auth::service(ctx, req)?;
    topics::check_key(key)?;
    let ids = topics::parse_user_ids(req.json_value()?)?;
    let added = topics::subscribe(ctx.notifier.store(), key, &ids).map_err(|e| unknown(key, e))?;
    Ok(Reply::json(200, &json!({ "added": added })))
}

/// `DELETE /v1/topics/{key}/subscribers/{userId}` -> 204, also when the
/// user was not subscribed.
pub fn unsubscribe(ctx: &Ctx, req: &Req, key: &str, user: &str) -> Result<Reply, ApiError> {
    auth::service(ctx, req)?;
    topics::unsubscribe(ctx.notifier.store(), key, user).map_err(|e| unknown(key, e))?;
    Ok(Reply::no_content())
}

/// `GET /v1/topics/{key}/subscribers?limit=&cursor=` -> `{items, nextCursor}`.
pub fn subscribers(ctx: &Ctx, req: &Req, key: &str) -> Result<Reply, ApiError> {
    auth::service(ctx, req)?;
    let limit = req.limit(DEFAULT_PAGE, topics::MAX_PAGE)?;
    let cursor = req.query("cursor").unwrap_or("");
    let items = topics::subscribers(ctx.notifier.store(), key, cursor, limit)
        .map_err(|e| unknown(key, e))?;
    let next_cursor = match items.len() == limit {
        true => items.last().map(|s| s.user_id.clone()),
        false => None,
    };
    Ok(Reply::json(
        200,
        &json!({ "items": items, "nextCursor": next_cursor }),
    ))
}

/// A 404 that names the topic.
fn unknown(key: &str, e: NotifyError) -> ApiError {
    match e {
        NotifyError::Store(StoreError::NotFound) => {
            ApiError::not_found(format!("no topic {key:?}"))
        }
        other => other.into(),
    }
}
