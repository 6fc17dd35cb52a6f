//! The routing table: every endpoint of the API in one match, so the whole
//! surface reads in one screen. Unknown paths are 404; a known path with the
//! wrong method is 405.

use serde_json::json;

use super::error::ApiError;
use super::request::Req;
use super::response::Reply;
use super::{events, inbox, orgs, pages, preferences, stripe, users, Ctx};

pub fn route(ctx: &Ctx, req: &Req) -> Result<Reply, ApiError> {
    let segs: Vec<&str> = req.segments.iter().map(String::as_str).collect();
    match (req.method.as_str(), segs.as_slice()) {
        ("GET", ["healthz"]) => Ok(Reply::json(200, &json!({"status": "ok"}))),

        ("PUT", ["v1", "users", id]) => users::upsert(ctx, req, id),
        ("POST", ["v1", "users", id, "tokens"]) => users::issue_token(ctx, req, id),
        ("GET", ["v1", "me"]) => users::me(ctx, req),

        ("POST", ["v1", "events"]) => events::create(ctx, req),
        ("GET", ["v1", "events", id]) => events::get(ctx, req, id),

        ("GET", ["v1", "inbox"]) => inbox::list(ctx, req),
        ("GET", ["v1", "inbox", "unseen-count"]) => inbox::unseen_count(ctx, req),
        ("GET", ["v1", "inbox", "stream"]) => inbox::stream(ctx, req),
        ("POST", ["v1", "inbox", "seen-all"]) => inbox::seen_all(ctx, req),
        ("POST", ["v1", "inbox", id, "seen"]) => inbox::mark(ctx, req, id, false),
        ("POST", ["v1", "inbox", id, "read"]) => inbox::mark(ctx, req, id, true),
        ("DELETE", ["v1", "inbox", id]) => inbox::delete(ctx, req, id),

        ("POST", ["v1", "orgs"]) => orgs::create(ctx, req),
        ("GET", ["v1", "orgs", org, "members"]) => orgs::members(ctx, req, org),
        ("PATCH", ["v1", "orgs", org, "members", member]) => {
            orgs::change_role(ctx, req, org, member)
        }
        ("POST", ["v1", "orgs", org, "invitations"]) => orgs::invite(ctx, req, org),
        ("GET", ["v1", "orgs", org, "invitations"]) => orgs::invitations(ctx, req, org),
        ("DELETE", ["v1", "orgs", org, "invitations", id]) => orgs::revoke(ctx, req, org, id),
        ("POST", ["v1", "invitations", "accept"]) => orgs::accept(ctx, req),
        ("GET", ["v1", "orgs", org, "audit"]) => orgs::audit(ctx, req, org),
        ("GET", ["v1", "orgs", org, "billing"]) => orgs::billing(ctx, req, org),
        ("POST", ["webhooks", "stripe"]) => stripe::webhook(ctx, req),
        ("GET", ["v1", "preferences"]) => preferences::list(ctx, req),
        ("PUT", ["v1", "preferences"]) => preferences::put(ctx, req),

        // The pages a person sees (src/http/pages/).
        ("GET", []) => page(pages::home(ctx, req)),
        ("GET", ["login"]) => page(pages::login_form(ctx, req)),
        ("POST", ["login"]) => page(pages::login(ctx, req)),
        ("POST", ["logout"]) => page(pages::logout(ctx, req)),
        ("GET", ["inbox"]) => page(pages::inbox(ctx, req)),
        ("POST", ["inbox", "read-all"]) => form_post(req, pages::mark_read(ctx, req, None)),
        ("POST", ["inbox", id, "read"]) => form_post(req, pages::mark_read(ctx, req, Some(id))),
        ("GET", ["assets", name]) => pages::asset(name),
        ("GET", ["dev", "mail"]) if ctx.dev => page(pages::dev_mail(ctx)),

        (_, path) if is_known(path) => Err(ApiError::new(
            405,
            "method_not_allowed",
            format!("{} is not allowed on {}", req.method, req.path),
        )),
        _ => Err(ApiError::not_found(format!(
            "no such endpoint: {}",
            req.path
        ))),
    }
}

/// A page's error is shown as a page.
fn page(result: Result<Reply, ApiError>) -> Result<Reply, ApiError> {
    Ok(result.unwrap_or_else(pages::error_page))
}

/// The inbox page's forms: JSON errors for its script, pages for a browser
/// without one.
fn form_post(req: &Req, result: Result<Reply, ApiError>) -> Result<Reply, ApiError> {
    let wants_json = req
        .header("accept")
        .is_some_and(|a| a.contains("application/json"));
    if wants_json {
        result
    } else {
        page(result)
    }
}

fn is_known(path: &[&str]) -> bool {
    matches!(
        path,
        ["healthz"]
            | ["v1", "users", _]
            | ["v1", "users", _, "tokens"]
            | ["v1", "me"]
            | ["v1", "events"]
            | ["v1", "events", _]
            | ["v1", "inbox"]
            | ["v1", "inbox", _]
            | ["v1", "inbox", _, "seen" | "read"]
            | ["v1", "orgs"]
            | [
                "v1",
                "orgs",
                _,
                "members" | "invitations" | "audit" | "billing"
            ]
            | ["v1", "orgs", _, "members" | "invitations", _]
            | ["v1", "invitations", "accept"]
            | ["webhooks", "stripe"]
            | ["v1", "preferences"]
            | []
            | ["login" | "logout" | "inbox"]
            | ["inbox", _, "read"]
    )
}
