//! The application's webhook endpoints (`/v1/webhooks`, SPEC 10): parsing
//! and checking a new one, and the operations on the `webhooks` table, each
//! in its own transaction. The secret is returned once, by `create`; every
//! other view leaves it out. Deleting an endpoint drops its pending messages.

use serde::Serialize;
use serde_json::Value;

use super::signing;
use crate::args;
use crate::ids;
use crate::notify::error::{invalid, NotifyError};
use crate::store::{Conn, Row, Store, StoreError, StoreResult};
use crate::time::rfc3339;

/// Every kind of message an endpoint may subscribe to.
pub const KINDS: [&str; 7] = [
    "delivery.sent",
    "delivery.failed",
    "delivery.dead",
    "delivery.skipped",
    "inbox.seen",
    "inbox.read",
    "inbox.archived",
];
pub const MAX_URL: usize = 2000;

/// An endpoint as `POST /v1/webhooks` asks for it, checked.
#[derive(Debug, PartialEq, Eq)]
pub struct NewWebhook {
    pub url: String,
    pub events: Vec<String>,
}

impl NewWebhook {
    /// Parses a request body, naming the first wrong field.
    pub fn from_json(value: &Value) -> Result<NewWebhook, NotifyError> {
        let Value::Object(obj) = value else {
            return Err(invalid("body", "expected a JSON object"));
        };
        if let Some(field) = obj.keys().find(|k| *k != "url" && *k != "events") {
            return Err(invalid(field, "is not a field of a webhook"));
        }
        let url = match obj.get("url") {
            Some(Value::String(url)) => check_url(url)?,
            Some(_) => return Err(invalid("url", "must be a string")),
            None => return Err(invalid("url", "is required")),
        };
        let Some(Value::Array(items)) = obj.get("events") else {
            return Err(invalid("events", "is required: an array of event names"));
        };
        if items.is_empty() {
            return Err(invalid("events", "must name at least one event"));
        }
        let mut events = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let field = format!("events[{i}]");
            let Some(kind) = item.as_str().filter(|k| KINDS.contains(k)) else {
                return Err(invalid(
                    &field,
                    &format!("must be one of {}", KINDS.join(", ")),
                ));
            };
            if events.iter().any(|e| e == kind) {
                return Err(invalid(&field, "is named twice"));
            }
            events.push(kind.to_string());
        }
        Ok(NewWebhook { url, events })
    }
}

/// An absolute http(s) URL with a host and no credentials: a secret in the
/// URL would be shown by every view of the endpoint.
fn check_url(url: &str) -> Result<String, NotifyError> {
    let bad = |why: &str| Err(invalid("url", why));
    if url.len() > MAX_URL {
        return bad("is longer than 2000 characters");
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("must not contain spaces or control characters");
    }
    let rest = match url.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => rest,
        _ => return bad("must be an http:// or https:// URL"),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return bad("must not carry credentials (user:password@)");
    }
    // An IPv6 literal is bracketed; a port follows the host after ':'.
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((host, "")) => (host, None),
            Some((host, rest)) => match rest.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return bad("has an invalid port"),
            },
            None => return bad("has an unclosed IPv6 address"),
        },
        None => match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if port.is_some_and(|p| p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit())) {
        return bad("has an invalid port");
    }
    if host.is_empty() {
        return bad("must name a host");
    }
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b))
    {
        return bad("has an invalid host");
    }
    Ok(url.to_string())
}

/// An endpoint as the API shows it; `secret` only in `create`'s answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Webhook {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    pub created_at: String,
    /// Since when every attempt failed; null after a success.
    pub failing_since: Option<String>,
    pub disabled_at: Option<String>,
    pub disabled_reason: Option<String>,
    /// Messages not yet accepted by the endpoint.
    pub pending: i64,
}

const COLUMNS: &str = "w.id, w.url, w.events, w.created_at, w.failing_since, w.disabled_at,
     w.disabled_reason, (SELECT COUNT(*) FROM webhook_messages m WHERE m.webhook_id = w.id)";

fn from_row(r: &Row<'_>) -> StoreResult<Webhook> {
    let events: String = r.get(2)?;
    Ok(Webhook {
        id: r.get(0)?,
        url: r.get(1)?,
        events: serde_json::from_str(&events).unwrap_or_default(),
        secret: None,
        created_at: rfc3339(r.get(3)?),
        failing_since: r.get::<Option<i64>>(4)?.map(rfc3339),
        disabled_at: r.get::<Option<i64>>(5)?.map(rfc3339),
        disabled_reason: r.get(6)?,
        pending: r.get(7)?,
    })
}

/// Stores a new endpoint in one write transaction; the answer carries its
/// secret, which no later view shows.
pub fn create(store: &Store, new: &NewWebhook) -> StoreResult<Webhook> {
    let id = ids::new_id("wh");
    let secret = signing::new_secret();
    let events = serde_json::to_string(&new.events).unwrap_or_else(|_| "[]".into());
    store.write(|tx| {
        let now = tx.now_ms();
        tx.execute(
            "INSERT INTO webhooks (id, url, events, secret, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            args![id, new.url, events, secret, now],
        )?;
        Ok(Webhook {
            id: id.clone(),
            url: new.url.clone(),
            events: new.events.clone(),
            secret: Some(secret.clone()),
            created_at: rfc3339(now),
            failing_since: None,
            disabled_at: None,
            disabled_reason: None,
            pending: 0,
        })
    })
}

/// Every endpoint, oldest first (an application has a handful).
pub fn list(store: &Store) -> StoreResult<Vec<Webhook>> {
    store.read(|c| {
        c.query_all(
            &format!("SELECT {COLUMNS} FROM webhooks w ORDER BY w.id LIMIT 1000"),
            args![],
            from_row,
        )
    })
}

/// One endpoint; `NotFound` for an unknown id.
pub fn get(store: &Store, id: &str) -> StoreResult<Webhook> {
    store.read(|c| get_in(c, id))
}

fn get_in(c: &Conn<'_>, id: &str) -> StoreResult<Webhook> {
    c.query_one(
        &format!("SELECT {COLUMNS} FROM webhooks w WHERE w.id = ?1"),
        args![id],
        from_row,
    )
}

/// Deletes an endpoint and its pending messages in one write transaction.
pub fn delete(store: &Store, id: &str) -> StoreResult<()> {
    store.write(|tx| {
        tx.execute(
            "DELETE FROM webhook_messages WHERE webhook_id = ?1",
            args![id],
        )?;
        match tx.execute("DELETE FROM webhooks WHERE id = ?1", args![id])? {
            0 => Err(StoreError::NotFound),
            _ => Ok(()),
        }
    })
}

/// Re-enables an endpoint (disabled or not) in one write transaction: its
/// run of failures starts again, and its pending messages are due now.
pub fn enable(store: &Store, id: &str) -> StoreResult<Webhook> {
    let webhook = store.write(|tx| {
        let now = tx.now_ms();
        let changed = tx.execute(
            "UPDATE webhooks SET disabled_at = NULL, disabled_reason = NULL, failing_since = NULL
             WHERE id = ?1",
            args![id],
        )?;
        if changed == 0 {
            return Err(StoreError::NotFound);
        }
        tx.execute(
            "UPDATE webhook_messages SET next_attempt_at = ?2, claimed_by = NULL
             WHERE webhook_id = ?1 AND claimed_by IS NULL",
            args![id, now],
        )?;
        get_in(tx, id)
    })?;
    super::outbox::wake();
    Ok(webhook)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field_of(body: Value) -> String {
        match NewWebhook::from_json(&body) {
            Err(NotifyError::Invalid { field, .. }) => field,
            other => panic!("{body}: expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_webhook_names_its_first_wrong_field() {
        let events = json!(["delivery.sent"]);
        for (body, field) in [
            (json!([]), "body"),
            (json!({"events": events}), "url"),
            (json!({"url": 3, "events": events}), "url"),
            (json!({"url": "ftp://x.example", "events": events}), "url"),
            (
                json!({"url": "https://u:p@x.example/h", "events": events}),
                "url",
            ),
            (json!({"url": "https://", "events": events}), "url"),
            (
                json!({"url": "https://x.example:99999999/", "events": events}),
                "url",
            ),
            (
                json!({"url": "https://x .example/", "events": events}),
                "url",
            ),
            (json!({"url": "https://x.example"}), "events"),
            (json!({"url": "https://x.example", "events": []}), "events"),
            (
                json!({"url": "https://x.example", "events": ["delivery.sent", "nope"]}),
                "events[1]",
            ),
            (
                json!({"url": "https://x.example", "events": ["inbox.read", "inbox.read"]}),
                "events[1]",
            ),
            (
                json!({"url": "https://x.example", "events": events, "secret": "x"}),
                "secret",
            ),
        ] {
            assert_eq!(field_of(body), field);
        }
    }

    #[test]
    fn http_and_https_urls_with_ports_and_paths_are_accepted() {
        for url in [
            "http://127.0.0.1:8080/hooks?x=1",
            "HTTPS://app.example.com/herald",
            "http://[::1]:9000/",
            "http://[::1]/",
            "https://app.example.com",
        ] {
            let new = NewWebhook::from_json(&json!({"url": url, "events": KINDS})).unwrap();
            assert_eq!((new.url.as_str(), new.events.len()), (url, KINDS.len()));
        }
    }
}
