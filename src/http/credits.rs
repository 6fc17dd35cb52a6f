//! `GET /v1/credits` (user token): the caller's referral-credit balance and
//! ledger, newest first. Only the caller's own rows are ever read.

use super::auth;
use super::ctx::Ctx;
use super::error::ApiError;
use super::request::Req;
use super::response::Reply;
use crate::app::credits;

pub fn get(ctx: &Ctx, req: &Req) -> Result<Reply, ApiError> {
    let user = auth::user(ctx, req)?;
    let view = credits::view(ctx.notifier.store(), &user.id)?;
    Ok(Reply::json(200, &view))
}
