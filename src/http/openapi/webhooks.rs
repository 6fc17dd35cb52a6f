//! The status webhooks' shapes in `components.schemas` (`/v1/webhooks`),
//! apart from `schemas.rs` because they are one feature's: the request, the
//! endpoint as served (with its secret once, on creation) and the list.

use serde_json::{json, Map, Value};

use super::schemas::schema;
use crate::notify::webhooks::endpoints::{KINDS, MAX_URL};

pub fn add(schemas: &mut Map<String, Value>) {
    let events = json!({"type": "array", "minItems": 1, "uniqueItems": true,
        "items": {"type": "string", "enum": KINDS}});
    schemas.insert(
        "WebhookInput".into(),
        json!({
            "type": "object", "required": ["url", "events"], "additionalProperties": false,
            "examples": [{"url": "https://app.example.com/herald-webhooks",
                          "events": ["delivery.sent", "delivery.dead", "inbox.read"]}],
            "properties": {
                "url": {"type": "string", "minLength": 8, "maxLength": MAX_URL,
                        "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://[^@/?#\\s]+([/?#]\\S*)?$",
                        "description": "An http(s) URL, without credentials"},
                "events": events
            }
        }),
    );
    let time = |description: &str| json!({"type": ["string", "null"], "format": "date-time", "description": description});
    let properties = json!({
        "id": {"type": "string"},
        "url": {"type": "string"},
        "events": events,
        "createdAt": {"type": "string", "format": "date-time"},
        "failingSince": time("Since when every attempt failed; null after a success"),
        "disabledAt": time("When herald disabled the endpoint, after failing for the whole period"),
        "disabledReason": {"type": ["string", "null"]},
        "pending": {"type": "integer", "minimum": 0,
                    "description": "Messages not yet accepted by the endpoint"}
    });
    let required = [
        "id",
        "url",
        "events",
        "createdAt",
        "failingSince",
        "disabledAt",
        "disabledReason",
        "pending",
    ];
    schemas.insert(
        "Webhook".into(),
        json!({"type": "object", "required": required, "properties": properties}),
    );
    let mut created = properties.clone();
    created["secret"] = json!({"type": "string", "pattern": "^whsec_",
        "description": "whsec_<base64 of 32 bytes>: the key of every signature (Standard \
                        Webhooks). Shown only in this answer."});
    let mut all: Vec<&str> = required.to_vec();
    all.push("secret");
    schemas.insert(
        "WebhookCreated".into(),
        json!({"type": "object", "required": all, "properties": created}),
    );
    schemas.insert(
        "WebhookList".into(),
        json!({"type": "object", "required": ["items"],
               "properties": {"items": {"type": "array", "items": schema("Webhook")}}}),
    );
}
