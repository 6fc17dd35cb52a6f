//! The routing table: every endpoint in one list of (method, path pattern,
//! handler), so the whole surface reads in one screen. An entry is either an
//! API route, which names its OpenAPI operation, or an HTML page, which the
//! document leaves out; `openapi/` is handed the API routes and never reads
//! this table, so the document and the metrics' route labels cannot drift
//! from what is served. Unknown paths are 404; a known path with the wrong
//! method is 405.

use serde_json::json;

use super::ctx::Ctx;
use super::error::ApiError;
use super::openapi::{self, operations as op, Endpoint, Op};
use super::pages::PageAction;
use super::request::Req;
use super::response::Reply;
use super::{
    credits, deliveries, events, inbox, metrics, orgs, pages, preferences, schedules, stripe,
    topics, users, webhooks,
};

/// A handler gets the request and the values of the pattern's `{params}`,
/// in order.
type Handler = fn(&Ctx, &Req, &[&str]) -> Result<Reply, ApiError>;

pub struct Route {
    pub method: &'static str,
    /// Literal segments and `{name}` parameters, as in the OpenAPI paths.
    pub pattern: &'static str,
    /// The OpenAPI operation; None for the HTML pages, which are
    /// deliberately outside the API document.
    operation: Option<fn() -> Op>,
    handler: Handler,
}

impl Route {
    /// Whether `GET /openapi.json` describes this route.
    pub fn is_documented(&self) -> bool {
        self.operation.is_some()
    }
}

/// An API route and its operation in the document.
const fn api(
    method: &'static str,
    pattern: &'static str,
    operation: fn() -> Op,
    handler: Handler,
) -> Route {
    Route {
        method,
        pattern,
        operation: Some(operation),
        handler,
    }
}

/// A page for people (`pages/`), not in the API document.
const fn html(method: &'static str, pattern: &'static str, handler: Handler) -> Route {
    Route {
        method,
        pattern,
        operation: None,
        handler,
    }
}

/// The API routes with their operations, in table order.
fn endpoints() -> impl Iterator<Item = Endpoint> {
    ROUTES.iter().filter_map(|route| {
        Some(Endpoint {
            method: route.method,
            pattern: route.pattern,
            operation: route.operation?,
        })
    })
}

/// First match wins, so literal segments come before parameters that could
/// swallow them.
#[rustfmt::skip]
pub const ROUTES: &[Route] = &[
    api("GET", "/healthz", op::health, |_, _, _| Ok(Reply::json(200, &json!({"status": "ok"})))),
    api("GET", "/metrics", op::metrics, |c, _, _| metrics::get(c)),
    api("GET", "/openapi.json", op::openapi, |c, _, _| Ok(openapi::reply(c.notifier.registry(), endpoints()))),
    api("PUT", "/v1/users/{id}", op::upsert_user, |c, r, p| users::upsert(c, r, p[0])),
    api("POST", "/v1/users/{id}/tokens", op::issue_token, |c, r, p| users::issue_token(c, r, p[0])),
    api("DELETE", "/v1/users/{id}/tokens", op::revoke_tokens, |c, r, p| users::revoke_tokens(c, r, p[0])),
    api("GET", "/v1/me", op::me, |c, r, _| users::me(c, r)),
    api("PUT", "/v1/me/settings", op::update_my_settings, |c, r, _| users::put_settings(c, r)),
    api("POST", "/v1/events", op::trigger_event, |c, r, _| events::create(c, r)),
    api("POST", "/v1/events/bulk", op::trigger_events, |c, r, _| events::create_bulk(c, r)),
    api("POST", "/v1/events/cancel", op::cancel_events, |c, r, _| events::cancel_by_key(c, r)),
    api("GET", "/v1/events/{id}", op::get_event, |c, r, p| events::get(c, r, p[0])),
    api("DELETE", "/v1/events/{id}", op::cancel_event, |c, r, p| events::cancel(c, r, p[0])),
    api("POST", "/v1/schedules", op::create_schedule, |c, r, _| schedules::create(c, r)),
    api("GET", "/v1/schedules", op::list_schedules, |c, r, _| schedules::list(c, r)),
    api("GET", "/v1/schedules/{id}", op::get_schedule, |c, r, p| schedules::get(c, r, p[0])),
    api("DELETE", "/v1/schedules/{id}", op::delete_schedule, |c, r, p| schedules::delete(c, r, p[0])),
    api("POST", "/v1/webhooks", op::create_webhook, |c, r, _| webhooks::create(c, r)),
    api("GET", "/v1/webhooks", op::list_webhooks, |c, r, _| webhooks::list(c, r)),
    api("GET", "/v1/webhooks/{id}", op::get_webhook, |c, r, p| webhooks::get(c, r, p[0])),
    api("DELETE", "/v1/webhooks/{id}", op::delete_webhook, |c, r, p| webhooks::delete(c, r, p[0])),
    api("POST", "/v1/webhooks/{id}/enable", op::enable_webhook, |c, r, p| webhooks::enable(c, r, p[0])),
    api("PUT", "/v1/topics/{key}", openapi::topics::put_topic, |c, r, p| topics::put(c, r, p[0])),
    api("GET", "/v1/topics/{key}", openapi::topics::get_topic, |c, r, p| topics::get(c, r, p[0])),
    api("DELETE", "/v1/topics/{key}", openapi::topics::delete_topic, |c, r, p| topics::delete(c, r, p[0])),
    api("POST", "/v1/topics/{key}/subscribers", openapi::topics::subscribe, |c, r, p| topics::subscribe(c, r, p[0])),
    api("GET", "/v1/topics/{key}/subscribers", openapi::topics::list_subscribers, |c, r, p| topics::subscribers(c, r, p[0])),
    api("DELETE", "/v1/topics/{key}/subscribers/{userId}", openapi::topics::unsubscribe, |c, r, p| topics::unsubscribe(c, r, p[0], p[1])),
    api("GET", "/v1/deliveries", op::list_deliveries, |c, r, _| deliveries::list(c, r)),
    api("POST", "/v1/deliveries/{id}/retry", op::retry_delivery, |c, r, p| deliveries::retry(c, r, p[0])),
    api("GET", "/v1/inbox", op::list_inbox, |c, r, _| inbox::list(c, r)),
    api("GET", "/v1/inbox/stream", op::inbox_stream, |c, r, _| inbox::stream(c, r)),
    api("GET", "/v1/inbox/unseen-count", op::unseen_count, |c, r, _| inbox::unseen_count(c, r)),
    api("POST", "/v1/inbox/seen-all", op::mark_all_seen, |c, r, _| inbox::seen_all(c, r)),
    api("POST", "/v1/inbox/bulk", op::inbox_bulk, |c, r, _| inbox::bulk(c, r)),
    api("POST", "/v1/inbox/{id}/archive", op::archive_notification, |c, r, p| inbox::archive(c, r, p[0], true)),
    api("POST", "/v1/inbox/{id}/unarchive", op::unarchive_notification, |c, r, p| inbox::archive(c, r, p[0], false)),
    api("POST", "/v1/inbox/{id}/snooze", op::snooze_notification, |c, r, p| inbox::snooze(c, r, p[0])),
    api("POST", "/v1/inbox/{id}/seen", op::mark_seen, |c, r, p| inbox::mark(c, r, p[0], false)),
    api("POST", "/v1/inbox/{id}/read", op::mark_read, |c, r, p| inbox::mark(c, r, p[0], true)),
    api("DELETE", "/v1/inbox/{id}", op::delete_notification, |c, r, p| inbox::delete(c, r, p[0])),
    api("POST", "/v1/orgs", op::create_org, |c, r, _| orgs::create(c, r)),
    api("GET", "/v1/orgs/{org}/members", op::list_members, |c, r, p| orgs::members(c, r, p[0])),
    api("PATCH", "/v1/orgs/{org}/members/{member}", op::change_member_role, |c, r, p| orgs::change_role(c, r, p[0], p[1])),
    api("POST", "/v1/orgs/{org}/invitations", op::send_invitation, |c, r, p| orgs::invite(c, r, p[0])),
    api("GET", "/v1/orgs/{org}/invitations", op::list_invitations, |c, r, p| orgs::invitations(c, r, p[0])),
    api("DELETE", "/v1/orgs/{org}/invitations/{id}", op::revoke_invitation, |c, r, p| orgs::revoke(c, r, p[0], p[1])),
    api("POST", "/v1/invitations/accept", op::accept_invitation, |c, r, _| orgs::accept(c, r)),
    api("GET", "/v1/orgs/{org}/audit", op::audit_log, |c, r, p| orgs::audit(c, r, p[0])),
    api("GET", "/v1/orgs/{org}/billing", op::billing, |c, r, p| orgs::billing(c, r, p[0])),
    api("POST", "/webhooks/stripe", op::stripe_webhook, |c, r, _| stripe::webhook(c, r)),
    api("GET", "/v1/preferences", op::list_preferences, |c, r, _| preferences::list(c, r)),
    api("PUT", "/v1/preferences", op::set_preference, |c, r, _| preferences::put(c, r)),
    api("GET", "/v1/credits", op::credits, |c, r, _| credits::get(c, r)),
    // The pages a person sees (src/http/pages/).
    html("GET", "/", |c, r, _| page(pages::home(c, r))),
    html("GET", "/login", |c, r, _| page(pages::login_form(c, r))),
    html("POST", "/login", |c, r, _| page(pages::login(c, r))),
    html("POST", "/logout", |c, r, _| page(pages::logout(c, r))),
    html("GET", "/inbox", |c, r, _| page(pages::inbox(c, r))),
    html("POST", "/inbox/read-all", |c, r, _| form_post(r, pages::page_action(c, r, PageAction::Read(None)))),
    html("POST", "/inbox/{id}/read", |c, r, p| form_post(r, pages::page_action(c, r, PageAction::Read(Some(p[0]))))),
    html("POST", "/inbox/{id}/archive", |c, r, p| form_post(r, pages::page_action(c, r, PageAction::Archive(p[0])))),
    html("POST", "/inbox/{id}/snooze/{for}", |c, r, p| form_post(r, pages::page_action(c, r, PageAction::Snooze(p[0], p[1])))),
    html("GET", "/invitations/accept", |c, r, _| page(pages::invitation(c, r))),
    html("POST", "/invitations/accept", |c, r, _| page(pages::accept_invitation(c, r))),
    html("GET", "/assets/{name}", |_, _, p| pages::asset(p[0])),
    html("GET", "/dev/mail", |c, r, _| dev_mail(c, r)),
];

/// The console provider's mailbox, served only with `--dev`.
fn dev_mail(c: &Ctx, r: &Req) -> Result<Reply, ApiError> {
    match c.dev {
        true => page(pages::dev_mail(c, r)),
        false => Err(ApiError::not_found(
            "no such endpoint: /dev/mail (start with --dev)",
        )),
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

/// The metrics label of a request that matched no route.
pub const UNMATCHED: &str = "unmatched";

/// What a request's path and method select.
pub enum Matched<'r> {
    Route(&'static Route, Vec<&'r str>),
    /// The path exists, with another method; the pattern is its label.
    WrongMethod(&'static str),
    NotFound,
}

impl Matched<'_> {
    /// The bounded label for metrics: the pattern, never the raw path.
    pub fn label(&self) -> &'static str {
        match self {
            Matched::Route(route, _) => route.pattern,
            Matched::WrongMethod(pattern) => pattern,
            Matched::NotFound => UNMATCHED,
        }
    }
}

pub fn find(req: &Req) -> Matched<'_> {
    let mut other_method = None;
    for route in ROUTES {
        if let Some(params) = match_path(route.pattern, &req.segments) {
            if route.method == req.method {
                return Matched::Route(route, params);
            }
            other_method.get_or_insert(route.pattern);
        }
    }
    other_method.map_or(Matched::NotFound, Matched::WrongMethod)
}

pub fn dispatch(ctx: &Ctx, req: &Req, found: &Matched<'_>) -> Result<Reply, ApiError> {
    match found {
        Matched::Route(route, params) => (route.handler)(ctx, req, params),
        Matched::WrongMethod(_) => Err(ApiError::new(
            405,
            "method_not_allowed",
            format!("{} is not allowed on {}", req.method, req.path),
        )),
        Matched::NotFound => Err(ApiError::not_found(format!(
            "no such endpoint: {}",
            req.path
        ))),
    }
}

/// The parameter values if `segments` fit `pattern`.
fn match_path<'r>(pattern: &str, segments: &'r [String]) -> Option<Vec<&'r str>> {
    let parts: Vec<&str> = pattern.split('/').filter(|s| !s.is_empty()).collect();
    if parts.len() != segments.len() {
        return None;
    }
    let mut params = Vec::new();
    for (part, seg) in parts.iter().zip(segments) {
        if part.starts_with('{') {
            params.push(seg.as_str());
        } else if part != seg {
            return None;
        }
    }
    Some(params)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::{endpoints, match_path, openapi, ROUTES};

    /// The document of this table, as `GET /openapi.json` serves it.
    fn document() -> Value {
        openapi::document(&["system.announcement"], endpoints())
    }

    fn segs(path: &str) -> Vec<String> {
        path.split('/')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    }

    #[test]
    fn patterns_bind_parameters_in_order() {
        let s = segs("/v1/orgs/org_1/members/mem_2");
        assert_eq!(
            match_path("/v1/orgs/{org}/members/{member}", &s),
            Some(vec!["org_1", "mem_2"])
        );
        assert_eq!(match_path("/v1/orgs/{org}/members", &s), None);
        assert_eq!(match_path("/v1/orgs/{org}/audit/{x}", &s), None);
        assert_eq!(match_path("/healthz", &segs("/healthz")), Some(vec![]));
    }

    #[test]
    fn the_document_has_one_operation_per_api_route_and_no_page() {
        let doc = document();
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().into_iter().flatten() {
            for method in item.as_object().into_iter().flatten().map(|(m, _)| m) {
                documented.insert((method.to_ascii_uppercase(), path.clone()));
            }
        }
        let api: Vec<(String, String)> = ROUTES
            .iter()
            .filter(|r| r.is_documented())
            .map(|r| (r.method.to_string(), r.pattern.to_string()))
            .collect();
        // Equal sets of equal size: no two API routes share a method and path.
        assert_eq!(documented.len(), api.len(), "a (method, path) twice");
        assert_eq!(documented, api.into_iter().collect());
    }

    #[test]
    fn every_schema_reference_resolves() {
        let doc = document();
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for part in text.split("#/components/schemas/").skip(1) {
            let name = part.split('"').next().unwrap_or_default();
            assert!(schemas.contains_key(name), "dangling $ref to {name}");
        }
    }

    #[test]
    fn operation_ids_are_unique() {
        let doc = document();
        let mut ids = BTreeSet::new();
        for item in doc["paths"].as_object().unwrap().values() {
            for op in item.as_object().unwrap().values() {
                let id = op["operationId"].as_str().unwrap().to_string();
                assert!(ids.insert(id.clone()), "duplicate operationId {id}");
            }
        }
    }
}
