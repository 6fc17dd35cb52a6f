//! Idempotency keys as Resend keeps them (held while in flight, then the
//! original answer replayed to the same body), and accepting a send: new
//! ids, the emails recorded, the answer remembered under its key.

use serde_json::{json, Value};
use std::time::Instant;

use super::decide::{PendingSend, Reply};
use super::{AcceptedEmail, State};

/// Resend refuses idempotency keys longer than this.
pub(super) const MAX_IDEMPOTENCY_KEY_LEN: usize = 256;

pub(super) enum IdempotencyEntry {
    InFlight,
    Done { body: Value, response: Value },
}

/// `None` if the key is now held by this request; otherwise the answer Resend
/// gives: the original response, or a 409.
pub(super) fn claim_key(state: &mut State, key: &str, body: &Value) -> Option<Reply> {
    match state.idempotency.get(key) {
        None => {
            state
                .idempotency
                .insert(key.to_string(), IdempotencyEntry::InFlight);
            None
        }
        Some(IdempotencyEntry::InFlight) => Some(Reply::error(
            409,
            "concurrent_idempotent_requests",
            "Same idempotency key used while original request is still in progress.",
        )),
        Some(IdempotencyEntry::Done {
            body: original,
            response,
        }) => {
            if original == body {
                Some(Reply {
                    status: 200,
                    body: response.clone(),
                    headers: Vec::new(),
                })
            } else {
                Some(Reply::error(
                    409,
                    "invalid_idempotent_request",
                    "Same idempotency key used with a different request payload.",
                ))
            }
        }
    }
}

pub(super) fn release_key(state: &mut State, key: Option<&str>) {
    if let Some(key) = key {
        if let Some(IdempotencyEntry::InFlight) = state.idempotency.get(key) {
            state.idempotency.remove(key);
        }
    }
}

/// Accepts every email of the send at once, remembers the answer under the
/// key, and returns it with the new ids in request order.
pub(super) fn accept(state: &mut State, send: PendingSend) -> (Reply, Vec<String>) {
    let ids: Vec<String> = send.emails.iter().map(|_| uuid_v4()).collect();
    let response = match send.batch {
        true => json!({ "data": ids.iter().map(|id| json!({ "id": id })).collect::<Vec<_>>() }),
        false => json!({ "id": ids.first() }),
    };
    if let Some(key) = &send.key {
        state.idempotency.insert(
            key.clone(),
            IdempotencyEntry::Done {
                body: send.body,
                response: response.clone(),
            },
        );
    }
    let accepted_at = Instant::now();
    for (email, id) in send.emails.into_iter().zip(&ids) {
        state.accepted.push(AcceptedEmail {
            id: id.clone(),
            idempotency_key: send.key.clone(),
            from: email.from,
            to: email.to,
            subject: email.subject,
            html: email.html,
            text: email.text,
            authorization: send.authorization.clone(),
            body: email.body,
            accepted_at,
        });
    }
    let reply = Reply {
        status: 200,
        body: response,
        headers: send.rate_headers,
    };
    (reply, ids)
}

/// The email ids in a 2xx answer: `{id}` from `/emails`, `{data: [{id}, ...]}`
/// from `/emails/batch`.
pub(super) fn answered_ids(response: &Value) -> Vec<&str> {
    if let Some(id) = response["id"].as_str() {
        return vec![id];
    }
    response["data"]
        .as_array()
        .map(|data| data.iter().filter_map(|d| d["id"].as_str()).collect())
        .unwrap_or_default()
}

fn uuid_v4() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("fake resend: random id");
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}
