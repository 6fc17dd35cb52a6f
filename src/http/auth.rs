//! Who is calling: the service key (operators and the embedding application)
//! or a user token. Tokens are compared by hash; an unknown or missing token
//! is 401, a valid token on an endpoint it may not use is 403. The inbox page
//! signs in with a session cookie instead; cookie-authenticated POSTs must
//! also come from our own origin (CSRF).

use super::ctx::Ctx;
use super::error::ApiError;
use super::request::Req;
use crate::ids;
use crate::notify::service;
use crate::store::users::User;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "herald_session";

pub enum Caller {
    Service,
    User(User),
}

pub fn caller(ctx: &Ctx, req: &Req) -> Result<Caller, ApiError> {
    let token = req
        .bearer()
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <token>"))?;
    if let Some(key) = &ctx.service_key {
        if ids::secrets_equal(token, key) {
            return Ok(Caller::Service);
        }
    }
    match service::user_by_token(ctx.notifier.store(), token)? {
        Some(user) => Ok(Caller::User(user)),
        None => Err(ApiError::unauthorized("invalid token")),
    }
}

pub fn service(ctx: &Ctx, req: &Req) -> Result<(), ApiError> {
    match caller(ctx, req)? {
        Caller::Service => Ok(()),
        Caller::User(_) => Err(ApiError::forbidden("this endpoint needs the service key")),
    }
}

pub fn user(ctx: &Ctx, req: &Req) -> Result<User, ApiError> {
    match caller(ctx, req)? {
        Caller::User(user) => Ok(user),
        Caller::Service => Err(ApiError::forbidden("this endpoint needs a user token")),
    }
}

/// The signed-in user of the session cookie, if any.
pub fn session_user(ctx: &Ctx, req: &Req) -> Result<Option<User>, ApiError> {
    match session_secret(req) {
        Some(secret) => Ok(service::session_user(ctx.notifier.store(), secret)?),
        None => Ok(None),
    }
}

pub fn session_secret(req: &Req) -> Option<&str> {
    req.cookie(SESSION_COOKIE).filter(|s| !s.is_empty())
}

/// A user by bearer token, else by session cookie: what the stream accepts,
/// because EventSource cannot set headers but sends same-origin cookies.
/// With the cookie, also the session's key (`session_key`), so signing out
/// can end the streams it opened.
pub fn user_or_session(ctx: &Ctx, req: &Req) -> Result<(User, Option<String>), ApiError> {
    if req.header("authorization").is_some() {
        return Ok((user(ctx, req)?, None));
    }
    let user = session_user(ctx, req)?
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <token>"))?;
    Ok((user, session_secret(req).map(session_key)))
}

/// What names a session outside the database: a digest of its secret, so
/// the secret itself is held nowhere but in the browser.
pub fn session_key(secret: &str) -> String {
    ids::hash_secret(secret)
}

/// CSRF defence for cookie-authenticated POSTs, on top of SameSite=Strict:
/// the browser's `Origin` (or, failing that, `Referer`) must name the host
/// the request was sent to. A request with neither is refused: every browser
/// that supports SameSite sends `Origin` on POST.
pub fn same_origin(req: &Req) -> Result<(), ApiError> {
    let host = req
        .header("host")
        .ok_or_else(|| ApiError::forbidden("cross-origin request refused"))?;
    let source = req
        .header("origin")
        .filter(|o| *o != "null")
        .or_else(|| req.header("referer"))
        .ok_or_else(|| ApiError::forbidden("cross-origin request refused (no Origin)"))?;
    let authority = source
        .split_once("://")
        .map(|(_, rest)| rest.split('/').next().unwrap_or(""))
        .unwrap_or("");
    if authority.eq_ignore_ascii_case(host.trim()) {
        Ok(())
    } else {
        Err(ApiError::forbidden("cross-origin request refused"))
    }
}
