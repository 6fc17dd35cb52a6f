//! Who is calling: the service key (operators and the embedding application)
//! or a user token. Tokens are compared by hash; an unknown or missing token
//! is 401, a valid token on an endpoint it may not use is 403.

use super::error::ApiError;
use super::request::Req;
use super::Ctx;
use crate::ids;
use crate::store::users::{self, User};

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
    match ctx.notifier.store().read(|c| users::by_token(c, token))? {
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
