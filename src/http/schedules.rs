//! Recurring schedules (service key): create, list newest first in keyset
//! pages, read and delete one. Parsing and every check live in
//! `notify::schedules`; a bad field is a 422 naming it, an unknown id 404.

use serde_json::json;

use super::auth;
use super::ctx::Ctx;
use super::error::ApiError;
use super::request::Req;
use super::response::Reply;
use crate::notify::schedules::{self, NewSchedule};
use crate::store::StoreError;

const DEFAULT_PAGE: usize = 50;

/// `POST /v1/schedules` -> 201 with the schedule (`id`, `nextRunAt`, ...).
pub fn create(ctx: &Ctx, req: &Req) -> Result<Reply, ApiError> {
    auth::service(ctx, req)?;
    let new = NewSchedule::from_json(req.json_value()?)?;
    let schedule = ctx.notifier.create_schedule(&new)?;
    Ok(Reply::json(201, &schedule))
}

/// `GET /v1/schedules?limit=50&cursor=` -> `{items, nextCursor}`.
pub fn list(ctx: &Ctx, req: &Req) -> Result<Reply, ApiError> {
    auth::service(ctx, req)?;
    let limit = req.limit(DEFAULT_PAGE, schedules::MAX_PAGE)?;
    let cursor = req.query("cursor").filter(|c| !c.is_empty());
    let items = schedules::list(ctx.notifier.store(), cursor, limit)?;
    let next_cursor = match items.len() == limit {
        true => items.last().map(|s| s.id.clone()),
        false => None,
    };
    Ok(Reply::json(
        200,
        &json!({ "items": items, "nextCursor": next_cursor }),
    ))
}

pub fn get(ctx: &Ctx, req: &Req, id: &str) -> Result<Reply, ApiError> {
    auth::service(ctx, req)?;
    let schedule = schedules::get(ctx.notifier.store(), id).map_err(|e| unknown(id, e))?;
    Ok(Reply::json(200, &schedule))
}

/// `DELETE /v1/schedules/{id}` -> 204; runs already enqueued stay.
pub fn delete(ctx: &Ctx, req: &Req, id: &str) -> Result<Reply, ApiError> {
    auth::service(ctx, req)?;
    schedules::delete(ctx.notifier.store(), id).map_err(|e| unknown(id, e))?;
    Ok(Reply::no_content())
}

/// A 404 that names the schedule.
fn unknown(id: &str, e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound => ApiError::not_found(format!("no schedule {id:?}")),
        other => other.into(),
    }
}
