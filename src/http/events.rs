//! Triggering events (service key), one or in bulk: validate, write the
//! outbox rows in one transaction, publish after commit (or, with
//! `sendAt`, when due); reading an event's result with every delivery; and
//! cancelling events not yet dispatched, by id or by `cancellationKey`.

use serde_json::{json, Value};

use super::auth;
use super::ctx::Ctx;
use super::error::ApiError;
use super::request::Req;
use super::response::Reply;
use crate::notify::{event, service};
use crate::notify::{Enqueued, Event, NotifyError};

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
        .transaction_grouped(move |outbox| outbox.enqueue(&event).map_err(ApiError::from))?;
    let mut body = accepted(&enqueued);
    if enqueued.created {
        Ok(Reply::json(202, &body))
    } else {
        body["duplicate"] = json!(true);
        Ok(Reply::json(200, &body))
    }
}

/// What an accepted event is answered with: its id and, for an event given
/// `sendAt`, when it is due.
fn accepted(enqueued: &Enqueued) -> Value {
    let mut body = json!({ "eventId": enqueued.id });
    if let Some(at) = enqueued.due_at {
        body["sendAt"] = json!(crate::time::rfc3339(at));
    }
    body
}

/// Events in one bulk request at most.
pub const MAX_BULK: usize = 1000;

/// `POST /v1/events/bulk {events: [...]}`: every event validated, then all
/// written in one transaction (all or nothing) and published after commit.
/// An error names the event by its index. Each event may carry its own
/// `idempotencyKey`; a repeat reports the first event's id as a duplicate.
pub fn create_bulk(ctx: &Ctx, req: &Req) -> Result<Reply, ApiError> {
    auth::service(ctx, req)?;
    if req.header("idempotency-key").is_some() {
        return Err(ApiError::bad_request(
            "a bulk request takes idempotencyKey per event, not an Idempotency-Key header",
        ));
    }
    let mut body = req.json_value()?;
    let items = match body.get_mut("events").map(serde_json::Value::take) {
        Some(serde_json::Value::Array(items)) => items,
        _ => {
            return Err(ApiError::validation(
                "events",
                "expected an array of events",
            ))
        }
    };
    if let Some(field) = body
        .as_object()
        .and_then(|o| o.keys().find(|k| *k != "events"))
    {
        return Err(ApiError::validation(field, "is not a known field"));
    }
    if items.is_empty() || items.len() > MAX_BULK {
        return Err(ApiError::validation(
            "events",
            &format!("expected 1 to {MAX_BULK} events"),
        ));
    }
    let events = items
        .into_iter()
        .enumerate()
        .map(|(i, item)| Event::from_json(item).map_err(|e| at_index(i, e)))
        .collect::<Result<Vec<_>, _>>()?;
    let enqueued = ctx.notifier.transaction(|outbox| {
        events
            .iter()
            .enumerate()
            .map(|(i, event)| outbox.enqueue(event).map_err(|e| at_index(i, e)))
            .collect::<Result<Vec<_>, ApiError>>()
    })?;
    let created = enqueued.iter().any(|e| e.created);
    let items: Vec<_> = enqueued
        .iter()
        .map(|e| {
            let mut item = accepted(e);
            item["duplicate"] = json!(!e.created);
            item
        })
        .collect();
    Ok(Reply::json(
        if created { 202 } else { 200 },
        &json!({ "events": items }),
    ))
}

/// An event's error, named by its place in the bulk request.
fn at_index(i: usize, e: NotifyError) -> ApiError {
    match e {
        NotifyError::Invalid { field, message } => {
            ApiError::validation(&format!("events[{i}].{field}"), &message)
        }
        NotifyError::UnknownType(t) => ApiError::validation(
            &format!("events[{i}].type"),
            &format!("unknown notification type {t:?}"),
        ),
        other => other.into(),
    }
}

pub fn get(ctx: &Ctx, req: &Req, id: &str) -> Result<Reply, ApiError> {
    auth::service(ctx, req)?;
    let view = service::event(ctx.notifier.store(), id)?;
    Ok(Reply::json(200, &view))
}

/// `DELETE /v1/events/{id}`: cancels an event not yet dispatched; 409 once
/// it was, 200 again for one already cancelled.
pub fn cancel(ctx: &Ctx, req: &Req, id: &str) -> Result<Reply, ApiError> {
    auth::service(ctx, req)?;
    let view = service::cancel_event(ctx.notifier.store(), id)?;
    Ok(Reply::json(200, &view))
}

/// `POST /v1/events/cancel {cancellationKey}`: cancels every event not yet
/// dispatched that carries the key; how many.
pub fn cancel_by_key(ctx: &Ctx, req: &Req) -> Result<Reply, ApiError> {
    auth::service(ctx, req)?;
    let body = req.json_value()?;
    let Value::Object(mut fields) = body else {
        return Err(ApiError::validation("body", "expected a JSON object"));
    };
    if let Some(field) = fields.keys().find(|k| *k != "cancellationKey") {
        return Err(ApiError::validation(field, "is not a known field"));
    }
    let Some(key) = fields.remove("cancellationKey") else {
        return Err(ApiError::validation("cancellationKey", "is required"));
    };
    let key = event::cancellation_key(key)?;
    let cancelled = service::cancel_by_key(ctx.notifier.store(), &key)?;
    Ok(Reply::json(200, &json!({ "cancelled": cancelled })))
}
