//! Triggering events (service key), one or in bulk: validate, write the
//! outbox rows in one transaction, publish after commit; and reading an
//! event's result with every delivery.

use serde_json::json;

use super::auth;
use super::ctx::Ctx;
use super::error::ApiError;
use super::request::Req;
use super::response::Reply;
use crate::notify::service;
use crate::notify::{Event, NotifyError};

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
        .map(|e| json!({ "eventId": e.id, "duplicate": !e.created }))
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
