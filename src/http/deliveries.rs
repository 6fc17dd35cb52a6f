//! The delivery log for operators (service key): list deliveries by status,
//! oldest first in keyset pages, and re-arm a dead or failed one. The same
//! operations as `herald outbox`, for a server that is running.

use serde_json::json;

use super::auth;
use super::ctx::Ctx;
use super::error::ApiError;
use super::request::Req;
use super::response::Reply;
use crate::notify::delivery::views;
use crate::notify::service;

const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 500;

/// `GET /v1/deliveries?status=dead&limit=50&cursor=` -> `{items, nextCursor}`.
pub fn list(ctx: &Ctx, req: &Req) -> Result<Reply, ApiError> {
    auth::service(ctx, req)?;
    let status = match req.query("status").filter(|s| !s.is_empty()) {
        None => None,
        Some(s) if views::STATUSES.contains(&s) => Some(s),
        Some(s) => {
            return Err(ApiError::bad_request(format!(
                "status {s:?} is not one of {}",
                views::STATUSES.join(", ")
            )))
        }
    };
    let limit = req.limit(DEFAULT_PAGE, MAX_PAGE)?;
    let cursor = req.query("cursor").filter(|c| !c.is_empty());
    let items = service::deliveries(ctx.notifier.store(), status, cursor, limit)?;
    let next_cursor = match items.len() == limit {
        true => items.last().map(|d| d.delivery.id.clone()),
        false => None,
    };
    Ok(Reply::json(
        200,
        &json!({ "items": items, "nextCursor": next_cursor }),
    ))
}

/// `POST /v1/deliveries/{id}/retry`: 200 with the re-armed delivery; 409 if
/// it is not dead or failed.
pub fn retry(ctx: &Ctx, req: &Req, id: &str) -> Result<Reply, ApiError> {
    auth::service(ctx, req)?;
    let view = ctx.notifier.retry_delivery(id)?;
    Ok(Reply::json(200, &view))
}
