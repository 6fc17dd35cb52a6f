//! Everything a request goes through before it is accepted, in order: route,
//! auth, rate limit, injected failures, key format, validation, idempotency;
//! and the answer or the send it comes to.

use serde_json::json;
use serde_json::Value;

use super::faults::{check_rate_limit, draw_fault, failure, injected_failure};
use super::idempotency::{claim_key, MAX_IDEMPOTENCY_KEY_LEN};
use super::server::Incoming;
use super::validate::{validate, validate_batch, ValidEmail};
use super::{Fault, Mode, State};

/// What the fake answers, before it is written out.
pub(super) struct Reply {
    pub(super) status: u16,
    pub(super) body: Value,
    pub(super) headers: Vec<(String, String)>,
}

impl Reply {
    pub(super) fn error(status: u16, name: &str, message: &str) -> Reply {
        Reply {
            status,
            body: json!({ "statusCode": status, "name": name, "message": message }),
            headers: Vec::new(),
        }
    }

    pub(super) fn with_headers(mut self, headers: &[(String, String)]) -> Reply {
        self.headers.extend_from_slice(headers);
        self
    }
}

/// A valid send that passed every check and holds its idempotency key (if any).
pub(super) struct PendingSend {
    pub(super) key: Option<String>,
    /// The one email of `/emails`, or a batch's emails in request order.
    pub(super) emails: Vec<ValidEmail>,
    /// Answer `{data: [{id}, ...]}` instead of `{id}`.
    pub(super) batch: bool,
    pub(super) authorization: String,
    /// The request body as a whole, what the key's replays are compared with.
    pub(super) body: Value,
    pub(super) rate_headers: Vec<(String, String)>,
    pub(super) mode: Mode,
    pub(super) mode_generation: u64,
    /// Accept, then break the connection instead of answering.
    pub(super) close_after_accept: bool,
}

pub(super) enum Decision {
    Reply(Reply),
    Send(PendingSend),
    /// Break the connection without accepting anything.
    Close,
}

/// Everything up to the point of accepting, in this order: route, auth, rate
/// limit, injected failures, key format, validation, idempotency. So a held
/// (hanging or delayed) request owns its key, and a repeat meanwhile gets 409.
/// A repeat of a key already answered is replayed even in `Hang`/`Delay`.
/// `fault` is set to the random fault drawn for this request, if any.
pub(super) fn decide(
    state: &mut State,
    incoming: &Incoming,
    fault: &mut Option<Fault>,
) -> Decision {
    let batch = match incoming.path.as_str() {
        "/emails" => false,
        "/emails/batch" => true,
        _ => {
            return Decision::Reply(Reply::error(
                404,
                "not_found",
                "The requested endpoint does not exist.",
            ))
        }
    };
    if incoming.method != "POST" {
        return Decision::Reply(Reply::error(
            405,
            "method_not_allowed",
            "Method Not Allowed",
        ));
    }
    let authorization = incoming
        .headers
        .get("authorization")
        .cloned()
        .unwrap_or_default();
    if !has_bearer_token(&authorization) {
        return Decision::Reply(Reply::error(
            401,
            "missing_api_key",
            "Missing API key in the authorization header. Include the following header \
             in the request: Authorization: Bearer YOUR_API_KEY",
        ));
    }

    let rate_headers = match check_rate_limit(state, incoming.received_at) {
        Ok(headers) => headers,
        Err(reply) => return Decision::Reply(reply),
    };
    if let Some(status) = injected_failure(state) {
        return Decision::Reply(failure(state, status).with_headers(&rate_headers));
    }
    if state.mode == Mode::Close {
        return Decision::Close;
    }
    *fault = draw_fault(state);
    let status = match *fault {
        Some(Fault::Status500) => Some(500),
        Some(Fault::Status503) => Some(503),
        Some(Fault::RateLimited) => Some(429),
        Some(Fault::Close) => return Decision::Close,
        Some(Fault::AcceptThenClose) | None => None,
    };
    if let Some(status) = status {
        return Decision::Reply(failure(state, status).with_headers(&rate_headers));
    }
    if let Some(key) = &incoming.key {
        if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
            return Decision::Reply(
                Reply::error(
                    400,
                    "invalid_idempotency_key",
                    "The key must be between 1-256 chars.",
                )
                .with_headers(&rate_headers),
            );
        }
    }
    let emails = match batch {
        true => validate_batch(&incoming.body),
        false => validate(&incoming.body, None).map(|email| vec![email]),
    };
    let emails = match emails {
        Ok(emails) => emails,
        Err(reply) => return Decision::Reply(reply.with_headers(&rate_headers)),
    };
    if let Some(key) = &incoming.key {
        if let Some(reply) = claim_key(state, key, &incoming.body) {
            return Decision::Reply(reply.with_headers(&rate_headers));
        }
    }
    Decision::Send(PendingSend {
        key: incoming.key.clone(),
        emails,
        batch,
        authorization,
        body: incoming.body.clone(),
        rate_headers,
        mode: state.mode,
        mode_generation: state.mode_generation,
        close_after_accept: *fault == Some(Fault::AcceptThenClose),
    })
}

fn has_bearer_token(authorization: &str) -> bool {
    let mut parts = authorization.trim().splitn(2, ' ');
    let scheme = parts.next().unwrap_or("");
    let token = parts.next().unwrap_or("").trim();
    scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()
}
