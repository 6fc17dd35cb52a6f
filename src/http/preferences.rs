//! Preferences for a user token: `GET /v1/preferences` lists `*` and every
//! type with its channels' values; `PUT` sets one (type, channel) switch. An
//! unknown type, or a channel the type does not use, is 422 and changes nothing.

use serde_json::{json, Value};

use super::auth;
use super::ctx::Ctx;
use super::error::ApiError;
use super::request::Req;
use super::response::Reply;
use crate::notify::preferences::ALL_TYPES;
use crate::notify::service;
use crate::notify::Channel;

pub fn list(ctx: &Ctx, req: &Req) -> Result<Reply, ApiError> {
    let user = auth::user(ctx, req)?;
    let registry = ctx.notifier.registry();
    let items = service::preferences(ctx.notifier.store(), &user.id, registry)?;
    Ok(Reply::json(200, &json!({ "items": items })))
}

pub fn put(ctx: &Ctx, req: &Req) -> Result<Reply, ApiError> {
    let user = auth::user(ctx, req)?;
    let body = req.json_value()?;
    let Value::Object(body) = body else {
        return Err(ApiError::validation("body", "expected a JSON object"));
    };
    if let Some(field) = body
        .keys()
        .find(|k| !["type", "channel", "enabled"].contains(&k.as_str()))
    {
        return Err(ApiError::validation(
            field,
            "is not a known preference field",
        ));
    }
    let kind = match body.get("type") {
        Some(Value::String(s)) => s.as_str(),
        _ => {
            return Err(ApiError::validation(
                "type",
                "expected a type name or \"*\"",
            ))
        }
    };
    let channel = match body.get("channel") {
        Some(Value::String(s)) => Channel::parse(s)
            .ok_or_else(|| ApiError::validation("channel", &format!("unknown channel {s:?}")))?,
        _ => {
            return Err(ApiError::validation(
                "channel",
                "expected \"inbox\" or \"email\"",
            ))
        }
    };
    let enabled = match body.get("enabled") {
        Some(Value::Bool(b)) => *b,
        _ => return Err(ApiError::validation("enabled", "expected true or false")),
    };
    let mut critical = false;
    if kind != ALL_TYPES {
        let def = ctx.notifier.registry().get(kind).ok_or_else(|| {
            ApiError::validation("type", &format!("unknown notification type {kind:?}"))
        })?;
        if !def.has(channel) {
            return Err(ApiError::validation(
                "channel",
                &format!("type {kind} is not sent on {}", channel.as_str()),
            ));
        }
        critical = def.critical;
    }
    service::set_preference(ctx.notifier.store(), &user.id, kind, channel, enabled)?;
    // A critical type's switch is kept but has no effect; say so.
    Ok(Reply::json(
        200,
        &json!({"type": kind, "channel": channel.as_str(), "enabled": enabled, "critical": critical}),
    ))
}
