//! The routing table: every endpoint in one list of (method, path pattern,
//! handler), so the whole surface reads in one screen. The OpenAPI document
//! (`openapi.rs`) and the metrics' route labels are derived from this list,
//! so neither can drift from what is served. Unknown paths are 404; a known
//! path with the wrong method is 405.

use serde_json::json;

use super::error::ApiError;
use super::request::Req;
use super::response::Reply;
use super::{
    credits, deliveries, events, inbox, openapi, orgs, pages, preferences, stripe, users, Ctx,
};

/// A handler gets the request and the values of the pattern's `{params}`,
/// in order.
type Handler = fn(&Ctx, &Req, &[&str]) -> Result<Reply, ApiError>;

pub struct Route {
    pub method: &'static str,
    /// Literal segments and `{name}` parameters, as in the OpenAPI paths.
    pub pattern: &'static str,
    handler: Handler,
}

const fn route(method: &'static str, pattern: &'static str, handler: Handler) -> Route {
    Route {
        method,
        pattern,
        handler,
    }
}

/// First match wins, so literal segments come before parameters that could
/// swallow them.
pub const ROUTES: &[Route] = &[
    route("GET", "/healthz", |_, _, _| {
        Ok(Reply::json(200, &json!({"status": "ok"})))
    }),
    route("GET", "/metrics", |c, _, _| super::metrics(c)),
    route("GET", "/openapi.json", |c, _, _| {
        Ok(openapi::reply(c.notifier.registry()))
    }),
    route("PUT", "/v1/users/{id}", |c, r, p| users::upsert(c, r, p[0])),
    route("POST", "/v1/users/{id}/tokens", |c, r, p| {
        users::issue_token(c, r, p[0])
    }),
    route("DELETE", "/v1/users/{id}/tokens", |c, r, p| {
        users::revoke_tokens(c, r, p[0])
    }),
    route("GET", "/v1/me", |c, r, _| users::me(c, r)),
    route("POST", "/v1/events", |c, r, _| events::create(c, r)),
    route("POST", "/v1/events/bulk", |c, r, _| {
        events::create_bulk(c, r)
    }),
    route("GET", "/v1/events/{id}", |c, r, p| events::get(c, r, p[0])),
    route("GET", "/v1/deliveries", |c, r, _| deliveries::list(c, r)),
    route("POST", "/v1/deliveries/{id}/retry", |c, r, p| {
        deliveries::retry(c, r, p[0])
    }),
    route("GET", "/v1/inbox", |c, r, _| inbox::list(c, r)),
    route("GET", "/v1/inbox/stream", |c, r, _| inbox::stream(c, r)),
    route("GET", "/v1/inbox/unseen-count", |c, r, _| {
        inbox::unseen_count(c, r)
    }),
    route("POST", "/v1/inbox/seen-all", |c, r, _| {
        inbox::seen_all(c, r)
    }),
    route("POST", "/v1/inbox/{id}/seen", |c, r, p| {
        inbox::mark(c, r, p[0], false)
    }),
    route("POST", "/v1/inbox/{id}/read", |c, r, p| {
        inbox::mark(c, r, p[0], true)
    }),
    route("DELETE", "/v1/inbox/{id}", |c, r, p| {
        inbox::delete(c, r, p[0])
    }),
    route("POST", "/v1/orgs", |c, r, _| orgs::create(c, r)),
    route("GET", "/v1/orgs/{org}/members", |c, r, p| {
        orgs::members(c, r, p[0])
    }),
    route("PATCH", "/v1/orgs/{org}/members/{member}", |c, r, p| {
        orgs::change_role(c, r, p[0], p[1])
    }),
    route("POST", "/v1/orgs/{org}/invitations", |c, r, p| {
        orgs::invite(c, r, p[0])
    }),
    route("GET", "/v1/orgs/{org}/invitations", |c, r, p| {
        orgs::invitations(c, r, p[0])
    }),
    route("DELETE", "/v1/orgs/{org}/invitations/{id}", |c, r, p| {
        orgs::revoke(c, r, p[0], p[1])
    }),
    route("POST", "/v1/invitations/accept", |c, r, _| {
        orgs::accept(c, r)
    }),
    route("GET", "/v1/orgs/{org}/audit", |c, r, p| {
        orgs::audit(c, r, p[0])
    }),
    route("GET", "/v1/orgs/{org}/billing", |c, r, p| {
        orgs::billing(c, r, p[0])
    }),
    route("POST", "/webhooks/stripe", |c, r, _| stripe::webhook(c, r)),
    route("GET", "/v1/preferences", |c, r, _| preferences::list(c, r)),
    route("PUT", "/v1/preferences", |c, r, _| preferences::put(c, r)),
    route("GET", "/v1/credits", |c, r, _| credits::get(c, r)),
    // The pages a person sees (src/http/pages/): HTML, not in the API document.
    route("GET", "/", |c, r, _| page(pages::home(c, r))),
    route("GET", "/login", |c, r, _| page(pages::login_form(c, r))),
    route("POST", "/login", |c, r, _| page(pages::login(c, r))),
    route("POST", "/logout", |c, r, _| page(pages::logout(c, r))),
    route("GET", "/inbox", |c, r, _| page(pages::inbox(c, r))),
    route("POST", "/inbox/read-all", |c, r, _| {
        form_post(r, pages::mark_read(c, r, None))
    }),
    route("POST", "/inbox/{id}/read", |c, r, p| {
        form_post(r, pages::mark_read(c, r, Some(p[0])))
    }),
    route("GET", "/invitations/accept", |c, r, _| {
        page(pages::invitation(c, r))
    }),
    route("POST", "/invitations/accept", |c, r, _| {
        page(pages::accept_invitation(c, r))
    }),
    route("GET", "/assets/{name}", |_, _, p| pages::asset(p[0])),
    route("GET", "/dev/mail", |c, r, _| match c.dev {
        true => page(pages::dev_mail(c, r)),
        false => Err(ApiError::not_found(
            "no such endpoint: /dev/mail (start with --dev)",
        )),
    }),
];

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
    use super::match_path;

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
}
