//! Status webhooks (service key): create (the one answer with the secret),
//! list, read, delete and re-enable an endpoint. Parsing and every check
//! live in `notify::webhooks`; a bad field is a 422 naming it, an unknown
//! id 404.

use serde_json::json;

use super::auth;
use super::ctx::Ctx;
use super::error::ApiError;
use super::request::Req;
use super::response::Reply;
use crate::notify::webhooks::{endpoints, NewWebhook};
use crate::store::StoreError;

/// `POST /v1/webhooks {url, events}` -> 201 with the endpoint and its
/// `secret`, shown this once.
pub fn create(ctx: &Ctx, req: &Req) -> Result<Reply, ApiError> {
    auth::service(ctx, req)?;
    let new = NewWebhook::from_json(&req.json_value()?)?;
    let webhook = endpoints::create(ctx.notifier.store(), &new)?;
    Ok(Reply::json(201, &webhook))
}

/// `GET /v1/webhooks` -> `{items}`, without secrets.
pub fn list(ctx: &Ctx, req: &Req) -> Result<Reply, ApiError> {
    auth::service(ctx, req)?;
    let items = endpoints::list(ctx.notifier.store())?;
    Ok(Reply::json(200, &json!({ "items": items })))
}

pub fn get(ctx: &Ctx, req: &Req, id: &str) -> Result<Reply, ApiError> {
    auth::service(ctx, req)?;
    let webhook = endpoints::get(ctx.notifier.store(), id).map_err(|e| unknown(id, e))?;
    Ok(Reply::json(200, &webhook))
}

/// `DELETE /v1/webhooks/{id}` -> 204; its pending messages are dropped.
pub fn delete(ctx: &Ctx, req: &Req, id: &str) -> Result<Reply, ApiError> {
    auth::service(ctx, req)?;
    endpoints::delete(ctx.notifier.store(), id).map_err(|e| unknown(id, e))?;
    Ok(Reply::no_content())
}

/// `POST /v1/webhooks/{id}/enable` -> 200 with the endpoint, active again.
pub fn enable(ctx: &Ctx, req: &Req, id: &str) -> Result<Reply, ApiError> {
    auth::service(ctx, req)?;
    let webhook = endpoints::enable(ctx.notifier.store(), id).map_err(|e| unknown(id, e))?;
    Ok(Reply::json(200, &webhook))
}

/// A 404 that names the endpoint.
fn unknown(id: &str, e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound => ApiError::not_found(format!("no webhook {id:?}")),
        other => other.into(),
    }
}
