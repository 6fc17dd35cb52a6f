//! Reference-application endpoints for signed-in users: orgs, members,
//! invitations, role changes, the audit log and billing. Handlers parse and
//! authenticate; `app` authorizes (tenant membership and role) and acts.

use serde::Deserialize;
use serde_json::json;

use super::auth;
use super::ctx::Ctx;
use super::error::ApiError;
use super::request::Req;
use super::response::Reply;
use crate::app::tenant::{self, Access, Role};
use crate::app::{audit, billing, invitations, members, orgs};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateOrg {
    name: String,
}

pub fn create(ctx: &Ctx, req: &Req) -> Result<Reply, ApiError> {
    let user = auth::user(ctx, req)?;
    let body: CreateOrg = req.json()?;
    let org = orgs::create(&ctx.notifier, &user, &body.name)?;
    Ok(Reply::json(201, &json!({ "id": org.id, "name": org.name })))
}

pub fn members(ctx: &Ctx, req: &Req, org: &str) -> Result<Reply, ApiError> {
    let user = auth::user(ctx, req)?;
    let items = members::list(ctx.notifier.store(), &user, org)?;
    Ok(Reply::json(200, &json!({ "items": items })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangeRole {
    role: String,
}

pub fn change_role(ctx: &Ctx, req: &Req, org: &str, member: &str) -> Result<Reply, ApiError> {
    let user = auth::user(ctx, req)?;
    let body: ChangeRole = req.json()?;
    let role = Role::from_field("role", &body.role)?;
    let role = members::change_role(&ctx.notifier, &ctx.app.hooks, &user, org, member, role)?;
    Ok(Reply::json(
        200,
        &json!({ "memberId": member, "role": role.as_str() }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Invite {
    email: String,
    #[serde(default = "default_role")]
    role: String,
}

fn default_role() -> String {
    "member".into()
}

pub fn invite(ctx: &Ctx, req: &Req, org: &str) -> Result<Reply, ApiError> {
    let user = auth::user(ctx, req)?;
    let body: Invite = req.json()?;
    let role = Role::from_field("role", &body.role)?;
    let sent = invitations::send(
        &ctx.notifier,
        &ctx.public_url,
        &user,
        org,
        &body.email,
        role,
    )?;
    Ok(Reply::json(
        201,
        &json!({ "invitationId": sent.invitation_id, "acceptUrl": sent.accept_url }),
    ))
}

pub fn invitations(ctx: &Ctx, req: &Req, org: &str) -> Result<Reply, ApiError> {
    let user = auth::user(ctx, req)?;
    let items = invitations::list(ctx.notifier.store(), &user, org)?;
    Ok(Reply::json(200, &json!({ "items": items })))
}

pub fn revoke(ctx: &Ctx, req: &Req, org: &str, invitation: &str) -> Result<Reply, ApiError> {
    let user = auth::user(ctx, req)?;
    invitations::revoke(&ctx.notifier, &user, org, invitation)?;
    Ok(Reply::no_content())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Accept {
    token: String,
}

pub fn accept(ctx: &Ctx, req: &Req) -> Result<Reply, ApiError> {
    let user = auth::user(ctx, req)?;
    let body: Accept = req.json()?;
    let accepted = invitations::accept(&ctx.notifier, &user, &body.token)?;
    Ok(Reply::json(
        200,
        &json!({ "organizationId": accepted.organization_id, "memberId": accepted.member_id }),
    ))
}

pub fn audit(ctx: &Ctx, req: &Req, org: &str) -> Result<Reply, ApiError> {
    let user = auth::user(ctx, req)?;
    let limit = req.limit(50, audit::MAX_PAGE)?;
    let cursor = req.query("cursor").filter(|c| !c.is_empty());
    let access = Access {
        user: &user,
        org_id: org,
        min_role: Role::Admin,
    };
    let page = tenant::read(ctx.notifier.store(), access, |scope, _| {
        audit::list(scope, cursor, limit)
    })?;
    Ok(Reply::json(200, &page))
}

pub fn billing(ctx: &Ctx, req: &Req, org: &str) -> Result<Reply, ApiError> {
    let user = auth::user(ctx, req)?;
    let view = billing::get(ctx.notifier.store(), &user, org)?;
    Ok(Reply::json(200, &view))
}
