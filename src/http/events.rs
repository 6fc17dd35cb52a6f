//! Triggering events (service key): validate, write the outbox row in one
//! transaction, publish after commit; and reading an event's result with
//! every delivery.

use serde_json::json;

use super::auth;
use super::error::ApiError;
use super::request::Req;
use super::response::Reply;
use super::Ctx;
use crate::notify::{outbox, Event};

pub fn create(ctx: &Ctx, req: &Req) -> Result<Reply, ApiError> {
    auth::service(ctx, req)?;
    let mut event = Event::from_json(req.json_value()?)?;
    if let Some(key) = req.header("idempotency-key") {
        if key.is_empty() || key.len() > 200 {
            return Err(ApiError::bad_request(
                "Idempotency-Key must be 1 to 200 characters",
            ));
        }
        event.idempotency_key = Some(key.to_string());
    }
    let enqueued = ctx
        .notifier
        .transaction(|outbox| outbox.enqueue(&event).map_err(ApiError::from))?;
    if enqueued.created {
        Ok(Reply::json(202, &json!({ "eventId": enqueued.id })))
    } else {
        Ok(Reply::json(
            200,
            &json!({ "eventId": enqueued.id, "duplicate": true }),
        ))
    }
}

pub fn get(ctx: &Ctx, req: &Req, id: &str) -> Result<Reply, ApiError> {
    auth::service(ctx, req)?;
    let view = ctx.notifier.store().read(|c| outbox::view(c, id))?;
    Ok(Reply::json(200, &view))
}
