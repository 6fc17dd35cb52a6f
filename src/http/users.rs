//! User management for the service key (upsert, issue a token) and `/v1/me`,
//! with each user's time zone, quiet hours and locale: a field left out of
//! a request stays as it is, `null` clears it.

use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};

use super::auth;
use super::ctx::Ctx;
use super::error::ApiError;
use super::request::Req;
use super::response::Reply;
use super::stream::EndStreams;
use crate::notify::event::is_plausible_email;
use crate::notify::locale;
use crate::notify::quiet_hours::SettingsChange;
use crate::notify::service;
use crate::store::users::User;
use crate::store::StoreError;

/// The settings fields are None when left out, `Some(Null)` when null.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct UpsertUser {
    email: String,
    #[serde(default)]
    name: String,
    #[serde(default, deserialize_with = "present")]
    timezone: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    quiet_hours: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    locale: Option<Value>,
}

/// `PUT /v1/me/settings`, read like the same fields of `UpsertUser`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SettingsBody {
    #[serde(default, deserialize_with = "present")]
    timezone: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    quiet_hours: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    locale: Option<Value>,
}

/// A field that is present, even as null (which `Option` would read as
/// absent).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

fn change(
    timezone: &Option<Value>,
    quiet_hours: &Option<Value>,
    locale: &Option<Value>,
) -> Result<SettingsChange, ApiError> {
    let mut change = SettingsChange::parse(timezone.as_ref(), quiet_hours.as_ref())?;
    change.locale = locale
        .as_ref()
        .map(|v| locale::parse_field("locale", v))
        .transpose()?;
    Ok(change)
}

pub fn upsert(ctx: &Ctx, req: &Req, id: &str) -> Result<Reply, ApiError> {
    auth::service(ctx, req)?;
    if id.len() > 200 || id.chars().any(char::is_control) {
        return Err(ApiError::validation(
            "id",
            "at most 200 printable characters",
        ));
    }
    let body: UpsertUser = req.json()?;
    if !is_plausible_email(&body.email) {
        return Err(ApiError::validation("email", "expected an email address"));
    }
    if body.name.len() > 200 {
        return Err(ApiError::validation("name", "at most 200 characters"));
    }
    let change = change(&body.timezone, &body.quiet_hours, &body.locale)?;
    let user = User {
        id: id.to_string(),
        email: body.email,
        name: body.name,
    };
    let (created, view) = service::save_user(ctx.notifier.store(), &user, &change)?;
    Ok(Reply::json(if created { 201 } else { 200 }, &view))
}

pub fn issue_token(ctx: &Ctx, req: &Req, id: &str) -> Result<Reply, ApiError> {
    auth::service(ctx, req)?;
    let token = service::issue_token(ctx.notifier.store(), id).map_err(|e| no_user(e, id))?;
    Ok(Reply::json(201, &json!({ "token": token })))
}

/// `DELETE /v1/users/{id}/tokens`: revokes every token and session of the
/// user (a lost device, a departing person) and ends their open streams.
pub fn revoke_tokens(ctx: &Ctx, req: &Req, id: &str) -> Result<Reply, ApiError> {
    auth::service(ctx, req)?;
    let (tokens, sessions) =
        service::revoke_access(ctx.notifier.store(), id).map_err(|e| no_user(e, id))?;
    let mut reply = Reply::json(
        200,
        &json!({ "revokedTokens": tokens, "endedSessions": sessions }),
    );
    reply.ends_streams = Some(EndStreams::User(id.to_string()));
    Ok(reply)
}

pub fn me(ctx: &Ctx, req: &Req) -> Result<Reply, ApiError> {
    let user = auth::user(ctx, req)?;
    let view = service::user_view(ctx.notifier.store(), user)?;
    Ok(Reply::json(200, &view))
}

/// `PUT /v1/me/settings`: the caller's time zone, quiet hours and locale.
pub fn put_settings(ctx: &Ctx, req: &Req) -> Result<Reply, ApiError> {
    let user = auth::user(ctx, req)?;
    let body: SettingsBody = req.json()?;
    let change = change(&body.timezone, &body.quiet_hours, &body.locale)?;
    let view = service::change_settings(ctx.notifier.store(), user, &change)?;
    Ok(Reply::json(200, &view))
}

/// `NotFound` from the store names the user the path asked for.
fn no_user(e: StoreError, id: &str) -> ApiError {
    match e {
        StoreError::NotFound => ApiError::not_found(format!("no user {id:?}")),
        other => other.into(),
    }
}
