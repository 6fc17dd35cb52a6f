//! `GET /openapi.json`: the OpenAPI 3.1 document, built from the routing
//! table so every served route is described and nothing else is. Each route
//! gets its operation from `operation`; the error responses follow from what
//! the operation reads (auth, a JSON body, path parameters), mirroring the
//! checks `Req`, `auth` and `ApiError` make. A unit test fails when a route
//! has no operation.

use std::sync::OnceLock;

use serde_json::{json, Map, Value};

use super::response::Reply;
use super::routes::{Route, ROUTES};
use crate::notify::Registry;

/// Routes deliberately left out of the API document: the HTML pages for
/// people (`pages/`: sign-in, the inbox, the invitation accept page, the
/// dev mailbox), not API clients.
pub const UNDOCUMENTED: &[(&str, &str)] = &[
    ("GET", "/"),
    ("GET", "/login"),
    ("POST", "/login"),
    ("POST", "/logout"),
    ("GET", "/inbox"),
    ("POST", "/inbox/read-all"),
    ("POST", "/inbox/{id}/read"),
    ("GET", "/invitations/accept"),
    ("POST", "/invitations/accept"),
    ("GET", "/assets/{name}"),
    ("GET", "/dev/mail"),
];

/// The document for this server's registry (its types are the enum of an
/// event's `type`), built once: the registry is fixed for the process.
pub fn reply(registry: &Registry) -> Reply {
    static BODY: OnceLock<Vec<u8>> = OnceLock::new();
    let body = BODY.get_or_init(|| {
        let types: Vec<&str> = registry.types().map(|(name, _)| name).collect();
        serde_json::to_vec(&document(&types)).unwrap_or_default()
    });
    Reply::text(200, "application/json", body.clone())
}

/// Who may call an operation.
#[derive(Clone, Copy, PartialEq)]
enum Auth {
    Public,
    Service,
    User,
    Stripe,
}

/// One operation's hand-written part; the rest is derived.
struct Op {
    id: &'static str,
    summary: &'static str,
    auth: Auth,
    /// JSON request body schema; implies 415 and 422.
    body: Option<Value>,
    /// Query and header parameter objects (path parameters are derived).
    params: Vec<Value>,
    /// Success responses: status, description, JSON schema (None: no body).
    ok: Vec<(u16, &'static str, Option<Value>)>,
    /// Error statuses beyond the derived ones.
    errors: &'static [u16],
    /// The success responses' media type.
    media: &'static str,
}

impl Op {
    fn new(id: &'static str, summary: &'static str, auth: Auth) -> Op {
        Op {
            id,
            summary,
            auth,
            body: None,
            params: Vec::new(),
            ok: Vec::new(),
            errors: &[],
            media: "application/json",
        }
    }

    /// Success responses are a server-sent event stream.
    fn event_stream(mut self) -> Op {
        self.media = "text/event-stream";
        self
    }

    fn body(mut self, schema: Value) -> Op {
        self.body = Some(schema);
        self
    }

    fn param(mut self, p: Value) -> Op {
        self.params.push(p);
        self
    }

    fn ok(mut self, status: u16, description: &'static str, schema: Value) -> Op {
        self.ok.push((status, description, Some(schema)));
        self
    }

    fn no_content(mut self, description: &'static str) -> Op {
        self.ok.push((204, description, None));
        self
    }

    fn errors(mut self, errors: &'static [u16]) -> Op {
        self.errors = errors;
        self
    }
}

fn schema(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn query(name: &str, description: &str, schema: Value) -> Value {
    json!({"name": name, "in": "query", "required": false, "description": description, "schema": schema})
}

fn limit_param() -> Value {
    query(
        "limit",
        "Page size (default 20 for the inbox, 50 for the audit log).",
        json!({"type": "integer", "minimum": 1, "maximum": 100}),
    )
}

fn cursor_param() -> Value {
    query(
        "cursor",
        "The `nextCursor` of the previous page.",
        json!({"type": "string"}),
    )
}

/// The hand-written part of each route's operation.
fn operation(method: &str, pattern: &str) -> Option<Op> {
    use Auth::*;
    let op = match (method, pattern) {
        ("GET", "/healthz") => Op::new("health", "Liveness check", Public).ok(
            200,
            "The server is up",
            schema("Health"),
        ),
        ("GET", "/metrics") => Op::new("metrics", "Prometheus metrics (text format 0.0.4)", Public),
        ("GET", "/openapi.json") => Op::new("openapi", "This document", Public).ok(
            200,
            "The OpenAPI 3.1 document",
            json!({"type": "object"}),
        ),
        ("PUT", "/v1/users/{id}") => Op::new("upsertUser", "Create or update a user", Service)
            .body(schema("UserInput"))
            .ok(200, "The user was updated", schema("User"))
            .ok(201, "The user was created", schema("User")),
        ("POST", "/v1/users/{id}/tokens") => Op::new(
            "issueToken",
            "Issue an API token for a user (shown once)",
            Service,
        )
        .ok(201, "The new token", schema("Token")),
        ("DELETE", "/v1/users/{id}/tokens") => Op::new(
            "revokeTokens",
            "Revoke every token and session of a user and end their open streams",
            Service,
        )
        .ok(
            200,
            "How many tokens and sessions ended",
            json!({"type": "object", "required": ["revokedTokens", "endedSessions"],
                   "additionalProperties": false,
                   "properties": {"revokedTokens": {"type": "integer", "minimum": 0},
                                  "endedSessions": {"type": "integer", "minimum": 0}}}),
        ),
        ("GET", "/v1/me") => Op::new("me", "The user the token belongs to", User).ok(
            200,
            "The calling user",
            schema("User"),
        ),
        ("POST", "/v1/events") => Op::new("triggerEvent", "Enqueue a notification event", Service)
            .body(schema("EventInput"))
            .param(json!({
                "name": "Idempotency-Key", "in": "header", "required": false,
                "description": "A repeat returns the first event's id with 200.",
                "schema": {"type": "string", "minLength": 1, "maxLength": 200}
            }))
            .ok(202, "The event was committed", schema("EventAccepted"))
            .ok(
                200,
                "A repeat of an idempotency key: the first event",
                schema("EventAccepted"),
            ),
        ("POST", "/v1/events/bulk") => Op::new(
            "triggerEvents",
            "Enqueue up to 1,000 events in one transaction (all or nothing)",
            Service,
        )
        .body(schema("BulkEventInput"))
        .ok(202, "The events were committed", schema("BulkAccepted"))
        .ok(
            200,
            "Every event repeated an idempotency key: the first events",
            schema("BulkAccepted"),
        ),
        ("GET", "/v1/events/{id}") => Op::new(
            "getEvent",
            "An event's dispatch result and deliveries",
            Service,
        )
        .ok(200, "The event", schema("EventView")),
        ("GET", "/v1/deliveries") => Op::new(
            "listDeliveries",
            "The email delivery log, oldest first",
            Service,
        )
        .param(query(
            "status",
            "Only deliveries in this state.",
            json!({"type": "string", "enum": ["pending", "retrying", "sent", "failed", "dead"]}),
        ))
        .param(query(
            "limit",
            "Page size (default 50).",
            json!({"type": "integer", "minimum": 1, "maximum": 500}),
        ))
        .param(cursor_param())
        .ok(200, "One page", schema("DeliveryPage")),
        ("POST", "/v1/deliveries/{id}/retry") => Op::new(
            "retryDelivery",
            "Re-arm a dead or failed delivery for a fresh round of attempts",
            Service,
        )
        .ok(200, "The re-armed delivery", schema("Delivery"))
        .errors(&[409]),
        ("GET", "/v1/credits") => Op::new(
            "credits",
            "The caller's referral credit balance and ledger, newest first",
            User,
        )
        .ok(200, "Balance and ledger", schema("Credits")),
        ("GET", "/v1/inbox") => Op::new("listInbox", "The caller's inbox, newest first", User)
            .param(limit_param())
            .param(cursor_param())
            .param(query(
                "unread",
                "Only notifications not yet read.",
                json!({"type": "boolean"}),
            ))
            .ok(200, "One page", schema("InboxPage")),
        ("GET", "/v1/inbox/stream") => Op::new(
            "inboxStream",
            "Server-sent events: each new inbox row of the caller as it is committed",
            User,
        )
        .param(json!({
            "name": "Last-Event-ID", "in": "header", "required": false,
            "description": "Resume after this notification id: missed rows are sent first, once each.",
            "schema": {"type": "string", "pattern": "^[0-9]+$"}
        }))
        .param(query(
            "lastEventId",
            "Like the Last-Event-ID header, for clients that cannot set it.",
            json!({"type": "string", "pattern": "^[0-9]+$"}),
        ))
        .event_stream()
        .ok(
            200,
            "`id: <n>` and `data: <inbox item JSON>` per row; a `: heartbeat` comment every 15 s",
            json!({"type": "string"}),
        ),
        ("GET", "/v1/inbox/unseen-count") => Op::new(
            "unseenCount",
            "How many notifications are unseen",
            User,
        )
        .ok(200, "The count", schema("Count")),
        ("POST", "/v1/inbox/seen-all") => Op::new(
            "markAllSeen",
            "Mark every notification seen",
            User,
        )
        .ok(200, "How many changed", schema("Updated")),
        ("POST", "/v1/inbox/{id}/seen") => {
            Op::new("markSeen", "Mark a notification seen", User).no_content("Marked")
        }
        ("POST", "/v1/inbox/{id}/read") => {
            Op::new("markRead", "Mark a notification read (and seen)", User).no_content("Marked")
        }
        ("DELETE", "/v1/inbox/{id}") => {
            Op::new("deleteNotification", "Delete a notification", User).no_content("Deleted")
        }
        ("POST", "/v1/orgs") => Op::new(
            "createOrg",
            "Create an organization (caller is owner)",
            User,
        )
        .body(schema("OrgInput"))
        .ok(201, "The organization", schema("Org")),
        ("GET", "/v1/orgs/{org}/members") => Op::new("listMembers", "An org's members", User).ok(
            200,
            "The members",
            schema("MemberList"),
        ),
        ("PATCH", "/v1/orgs/{org}/members/{member}") => {
            Op::new("changeMemberRole", "Change a member's role (admin)", User)
                .body(schema("RoleInput"))
                .ok(200, "The member's role now", schema("RoleChanged"))
                .errors(&[409])
        }
        ("POST", "/v1/orgs/{org}/invitations") => {
            Op::new("sendInvitation", "Invite someone by email (admin)", User)
                .body(schema("InvitationInput"))
                .ok(201, "The invitation", schema("InvitationSent"))
                .errors(&[409])
        }
        ("GET", "/v1/orgs/{org}/invitations") => Op::new(
            "listInvitations",
            "An org's invitations",
            User,
        )
        .ok(200, "The invitations", schema("InvitationList")),
        ("DELETE", "/v1/orgs/{org}/invitations/{id}") => Op::new(
            "revokeInvitation",
            "Revoke a pending invitation (admin)",
            User,
        )
        .no_content("Revoked")
        .errors(&[409]),
        ("POST", "/v1/invitations/accept") => Op::new(
            "acceptInvitation",
            "Accept an invitation by its token",
            User,
        )
        .body(schema("AcceptInput"))
        .ok(200, "The new membership", schema("Accepted"))
        .errors(&[404, 409, 410]),
        ("GET", "/v1/orgs/{org}/audit") => Op::new("auditLog", "An org's audit log (admin)", User)
            .param(limit_param())
            .param(cursor_param())
            .ok(200, "One page, newest first", schema("AuditPage")),
        ("GET", "/v1/orgs/{org}/billing") => {
            Op::new("billing", "An org's plan and subscription", User).ok(
                200,
                "The entitlement (fields null before any subscription)",
                schema("Billing"),
            )
        }
        ("POST", "/webhooks/stripe") => Op::new(
            "stripeWebhook",
            "Stripe events, verified by their Stripe-Signature",
            Stripe,
        )
        .ok(200, "Processed (or a replay)", schema("StripeReceived")),
        ("GET", "/v1/preferences") => Op::new(
            "listPreferences",
            "The caller's channel switches per type",
            User,
        )
        .ok(200, "Every type and `*`", schema("PreferenceList")),
        ("PUT", "/v1/preferences") => {
            Op::new("setPreference", "Set one (type, channel) switch", User)
                .body(schema("PreferenceInput"))
                .ok(200, "The switch as stored", schema("Preference"))
        }
        _ => return None,
    };
    Some(op)
}

fn path_params(pattern: &str) -> Vec<Value> {
    pattern
        .split('/')
        .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| {
            json!({"name": name, "in": "path", "required": true,
                   "schema": {"type": "string", "minLength": 1}})
        })
        .collect()
}

fn error_response(status: u16) -> Value {
    let description = match status {
        400 => "Malformed request: bad JSON, path, query or parameter",
        401 => "Missing or unknown token",
        403 => "The token may not use this endpoint or act on this resource",
        404 => "No such resource (or not visible to the caller)",
        409 => "Conflicts with the current state",
        410 => "Expired or revoked",
        413 => "Request body over 1 MiB",
        415 => "Request body is not application/json",
        422 => "Validation failed; the message names the field",
        503 => "Busy (the database, or too many open streams) or not configured; nothing was changed, retry later",
        _ => "Error",
    };
    let mut response = json!({
        "description": description,
        "content": {"application/json": {"schema": schema("Error")}}
    });
    if status == 401 {
        response["headers"] = json!({
            "WWW-Authenticate": {"required": true, "schema": {"type": "string"}}
        });
    }
    response
}

fn build(route: &Route, op: Op) -> Value {
    let mut params = path_params(route.pattern);
    params.extend(op.params);
    let mut errors = vec![400, 413];
    if matches!(op.auth, Auth::Service | Auth::User) {
        errors.extend([401, 403]);
    }
    if op.body.is_some() {
        errors.extend([415, 422]);
    }
    if route.pattern.contains('{') {
        errors.push(404);
    }
    // Routes that read the database, and the webhook without its secret.
    if !matches!(route.pattern, "/healthz" | "/openapi.json") {
        errors.push(503);
    }
    // PUT /v1/users/{id} validates the id itself.
    if route.pattern == "/v1/users/{id}" {
        errors.push(422);
    }
    errors.extend(op.errors);
    errors.sort_unstable();
    errors.dedup();

    let mut responses = Map::new();
    for (status, description, body) in op.ok {
        let mut r = json!({"description": description});
        if let Some(body) = body {
            let mut content = Map::new();
            content.insert(op.media.to_string(), json!({"schema": body}));
            r["content"] = Value::Object(content);
        }
        responses.insert(status.to_string(), r);
    }
    if route.pattern == "/metrics" {
        responses.insert(
            "200".into(),
            json!({"description": "Metrics in Prometheus text exposition format 0.0.4",
                   "content": {"text/plain": {"schema": {"type": "string"}}}}),
        );
    }
    for status in errors {
        responses.insert(status.to_string(), error_response(status));
    }

    let mut operation = json!({
        "operationId": op.id,
        "summary": op.summary,
        "responses": responses,
    });
    if !params.is_empty() {
        operation["parameters"] = Value::Array(params);
    }
    if let Some(body) = op.body {
        operation["requestBody"] = json!({
            "required": true,
            "content": {"application/json": {"schema": body}}
        });
    }
    operation["security"] = match op.auth {
        Auth::Public => json!([]),
        Auth::Service => json!([{"serviceKey": []}]),
        Auth::User => json!([{"userToken": []}]),
        Auth::Stripe => json!([{"stripeSignature": []}]),
    };
    if op.auth == Auth::Stripe {
        operation["requestBody"] = json!({
            "required": true,
            "content": {"application/json": {"schema": {"type": "object"}}}
        });
    }
    operation
}

/// The whole document. Routes without an operation are skipped here and
/// caught by the unit test below.
pub fn document(event_types: &[&str]) -> Value {
    let mut paths = Map::new();
    for route in ROUTES {
        if UNDOCUMENTED.contains(&(route.method, route.pattern)) {
            continue;
        }
        let Some(op) = operation(route.method, route.pattern) else {
            continue;
        };
        let item = paths
            .entry(route.pattern.to_string())
            .or_insert_with(|| json!({}));
        item[route.method.to_ascii_lowercase()] = build(route, op);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "herald",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Self-hosted notification service: events in, inbox rows and emails out."
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "serviceKey": {"type": "http", "scheme": "bearer",
                    "description": "HERALD_SERVICE_KEY: triggers events and manages users."},
                "userToken": {"type": "http", "scheme": "bearer",
                    "description": "A user token from POST /v1/users/{id}/tokens: acts as that user."},
                "stripeSignature": {"type": "apiKey", "in": "header", "name": "Stripe-Signature",
                    "description": "t=<unix time>,v1=<HMAC-SHA256 of \"{t}.{raw body}\" with STRIPE_WEBHOOK_SECRET>"}
            },
            "schemas": schemas(event_types)
        }
    })
}

fn nullable(kind: &str) -> Value {
    json!({"type": [kind, "null"]})
}

fn schemas(event_types: &[&str]) -> Value {
    let role = json!({"type": "string", "enum": ["owner", "admin", "member"]});
    let mut schemas = Map::new();
    schemas.insert(
        "Error".into(),
        json!({
            "type": "object", "required": ["error"],
            "properties": {"error": {
                "type": "object", "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}}
            }}
        }),
    );
    schemas.insert(
        "Health".into(),
        json!({"type": "object", "required": ["status"],
            "properties": {"status": {"const": "ok"}}}),
    );
    schemas.insert(
        "UserInput".into(),
        json!({
            "type": "object", "required": ["email"], "additionalProperties": false,
            "properties": {"email": {"type": "string", "format": "email"},
                           "name": {"type": "string", "maxLength": 200}}
        }),
    );
    schemas.insert(
        "User".into(),
        json!({"type": "object", "required": ["id", "email", "name"],
            "properties": {"id": {"type": "string"}, "email": {"type": "string"},
                           "name": {"type": "string"}}}),
    );
    schemas.insert(
        "Token".into(),
        json!({"type": "object", "required": ["token"],
            "properties": {"token": {"type": "string"}}}),
    );
    schemas.insert(
        "EventInput".into(),
        json!({
            "type": "object", "required": ["type"], "additionalProperties": false,
            "properties": {
                "type": {"type": "string", "enum": event_types,
                         "description": "A notification type of the registry"},
                "recipients": {"type": ["array", "null"], "maxItems": 1000, "items": {
                    "oneOf": [
                        {"type": "string", "description": "A user id"},
                        {"type": "object", "required": ["email"],
                         "properties": {"email": {"type": "string", "format": "email"}},
                         "description": "An address-only recipient (email channel only)"}
                    ]}},
                "subjectId": {"type": ["string", "null"]},
                "payload": {"type": ["object", "null"]},
                "idempotencyKey": {"type": ["string", "null"]}
            }
        }),
    );
    schemas.insert(
        "EventAccepted".into(),
        json!({"type": "object", "required": ["eventId"],
            "properties": {"eventId": {"type": "string"}, "duplicate": {"type": "boolean"}}}),
    );
    schemas.insert(
        "ResultCounts".into(),
        json!({"type": "object", "required": ["sent", "deduped", "suppressedByPrefs"],
            "properties": {"sent": {"type": "integer"}, "deduped": {"type": "integer"},
                           "suppressedByPrefs": {"type": "integer"}}}),
    );
    schemas.insert(
        "DispatchResult".into(),
        json!({"type": "object", "required": ["sent", "deduped", "suppressedByPrefs", "channels"],
            "description": "sent, deduped and suppressedByPrefs count recipients: sent those who got at least one channel, suppressedByPrefs those whose every channel was switched off.",
            "properties": {
                "sent": {"type": "integer"}, "deduped": {"type": "integer"},
                "suppressedByPrefs": {"type": "integer"},
                "channels": {"oneOf": [
                    {"type": "null"},
                    {"type": "object", "required": ["inbox", "email"],
                     "properties": {"inbox": schema("ResultCounts"), "email": schema("ResultCounts")}}
                ], "description": "The same counts per channel; null for events dispatched before herald kept them (their counts above counted channels)."}
            }}),
    );
    schemas.insert("Delivery".into(), json!({
            "type": "object",
            "required": ["id", "recipient", "channel", "status", "attempts", "nextAttemptAt", "lastError",
                         "batchId"],
            "properties": {
                "id": {"type": "string"}, "recipient": {"type": "string"},
                "channel": {"type": "string"},
                "status": {"type": "string", "enum": ["pending", "retrying", "sent", "failed", "dead", "delivered"],
                    "description": "Email: pending, retrying, sent, failed or dead; inbox rows read delivered."},
                "attempts": {"type": "integer"},
                "nextAttemptAt": nullable("string"), "lastError": nullable("string"),
                "batchId": {"type": ["string", "null"],
                    "description": "The batch this email goes out in, under the batch id as Idempotency-Key; null when it goes alone, under its own id."}
            }
        }));
    schemas.insert(
        "BulkEventInput".into(),
        json!({
            "type": "object", "required": ["events"], "additionalProperties": false,
            "properties": {"events": {"type": "array", "minItems": 1, "maxItems": 1000,
                                      "items": schema("EventInput")}}
        }),
    );
    schemas.insert(
        "BulkAccepted".into(),
        json!({
            "type": "object", "required": ["events"],
            "properties": {"events": {"type": "array", "items": {
                "type": "object", "required": ["eventId", "duplicate"],
                "properties": {"eventId": {"type": "string"}, "duplicate": {"type": "boolean"}}
            }}}
        }),
    );
    schemas.insert(
        "DeliveryPage".into(),
        json!({
            "type": "object",
            "required": ["items", "nextCursor"],
            "properties": {
                "items": {"type": "array", "items": {"allOf": [
                    {"$ref": "#/components/schemas/Delivery"},
                    {"type": "object", "required": ["eventId", "createdAt", "updatedAt"],
                     "properties": {"eventId": {"type": "string"},
                                    "createdAt": {"type": "string"},
                                    "updatedAt": {"type": "string"}}}
                ]}},
                "nextCursor": nullable("string")
            }
        }),
    );
    schemas.insert(
        "Credits".into(),
        json!({
            "type": "object",
            "required": ["balance", "items"],
            "properties": {
                "balance": {"type": "integer"},
                "items": {"type": "array", "items": {
                    "type": "object",
                    "required": ["id", "refId", "amount", "reason", "createdAt"],
                    "properties": {"id": {"type": "integer"}, "refId": {"type": "string"},
                                   "amount": {"type": "integer"}, "reason": {"type": "string"},
                                   "createdAt": {"type": "string"}}
                }}
            }
        }),
    );
    schemas.insert(
        "HeldDigest".into(),
        json!({"type": "object", "required": ["recipient", "status", "dueAt", "releasedAs"],
            "properties": {"recipient": {"type": "string"}, "status": {"type": "string"},
                           "dueAt": {"type": "string"}, "releasedAs": nullable("string")}}),
    );
    schemas.insert(
        "EventView".into(),
        json!({
            "type": "object",
            "required": ["id", "type", "status", "createdAt", "result", "error", "deliveries"],
            "properties": {
                "id": {"type": "string"}, "type": {"type": "string"},
                "status": {"type": "string", "enum": ["pending", "dispatched", "failed"]},
                "createdAt": {"type": "string"},
                "result": {"oneOf": [{"type": "null"}, schema("DispatchResult")]},
                "error": nullable("string"),
                "deliveries": {"type": "array", "items": schema("Delivery")},
                "digests": {"type": "array", "items": schema("HeldDigest")}
            }
        }),
    );
    schemas.insert("InboxItem".into(), json!({
            "type": "object",
            "required": ["id", "type", "title", "body", "actions", "payload", "createdAt", "seenAt", "readAt"],
            "properties": {
                "id": {"type": "string"}, "type": {"type": "string"},
                "title": {"type": "string"}, "body": {"type": "string"},
                "actions": {"type": "array", "items": {"type": "object",
                    "properties": {"label": {"type": "string"}, "url": {"type": "string"}}}},
                "payload": {"type": "object"},
                "createdAt": {"type": "string"},
                "seenAt": nullable("string"), "readAt": nullable("string")
            }
        }));
    schemas.insert(
        "InboxPage".into(),
        json!({"type": "object", "required": ["items", "nextCursor"],
            "properties": {"items": {"type": "array", "items": schema("InboxItem")},
                           "nextCursor": nullable("string")}}),
    );
    schemas.insert(
        "Count".into(),
        json!({"type": "object", "required": ["count"],
            "properties": {"count": {"type": "integer", "minimum": 0}}}),
    );
    schemas.insert(
        "Updated".into(),
        json!({"type": "object", "required": ["updated"],
            "properties": {"updated": {"type": "integer", "minimum": 0}}}),
    );
    schemas.insert(
        "OrgInput".into(),
        json!({"type": "object", "required": ["name"], "additionalProperties": false,
            "properties": {"name": {"type": "string"}}}),
    );
    schemas.insert(
        "Org".into(),
        json!({"type": "object", "required": ["id", "name"],
            "properties": {"id": {"type": "string"}, "name": {"type": "string"}}}),
    );
    schemas.insert(
        "Member".into(),
        json!({
            "type": "object", "required": ["id", "userId", "email", "name", "role", "createdAt"],
            "properties": {"id": {"type": "string"}, "userId": {"type": "string"},
                "email": {"type": "string"}, "name": {"type": "string"},
                "role": role, "createdAt": {"type": "string"}}
        }),
    );
    schemas.insert(
        "MemberList".into(),
        json!({"type": "object", "required": ["items"],
            "properties": {"items": {"type": "array", "items": schema("Member")}}}),
    );
    schemas.insert(
        "RoleInput".into(),
        json!({"type": "object", "required": ["role"], "additionalProperties": false,
            "properties": {"role": role}}),
    );
    schemas.insert(
        "RoleChanged".into(),
        json!({"type": "object", "required": ["memberId", "role"],
            "properties": {"memberId": {"type": "string"}, "role": role}}),
    );
    schemas.insert(
        "InvitationInput".into(),
        json!({"type": "object", "required": ["email"], "additionalProperties": false,
            "properties": {"email": {"type": "string", "format": "email"}, "role": role}}),
    );
    schemas.insert(
        "InvitationSent".into(),
        json!({"type": "object", "required": ["invitationId", "acceptUrl"],
            "properties": {"invitationId": {"type": "string"}, "acceptUrl": {"type": "string"}}}),
    );
    schemas.insert("Invitation".into(), json!({
            "type": "object",
            "required": ["id", "email", "role", "status", "inviterUserId", "createdAt", "expiresAt"],
            "properties": {"id": {"type": "string"}, "email": {"type": "string"}, "role": role,
                "status": {"type": "string", "enum": ["pending", "accepted", "revoked", "expired"]},
                "inviterUserId": {"type": "string"}, "createdAt": {"type": "string"},
                "expiresAt": {"type": "string"}}
        }));
    schemas.insert(
        "InvitationList".into(),
        json!({"type": "object", "required": ["items"],
            "properties": {"items": {"type": "array", "items": schema("Invitation")}}}),
    );
    schemas.insert(
        "AcceptInput".into(),
        json!({"type": "object", "required": ["token"], "additionalProperties": false,
            "properties": {"token": {"type": "string"}}}),
    );
    schemas.insert(
        "Accepted".into(),
        json!({"type": "object", "required": ["organizationId", "memberId"],
            "properties": {"organizationId": {"type": "string"}, "memberId": {"type": "string"}}}),
    );
    schemas.insert("AuditEntry".into(), json!({
            "type": "object",
            "required": ["id", "action", "actorUserId", "subjectType", "subjectId", "payload", "createdAt"],
            "properties": {"id": {"type": "string"}, "action": {"type": "string"},
                "actorUserId": nullable("string"), "subjectType": {"type": "string"},
                "subjectId": {"type": "string"}, "payload": {}, "createdAt": {"type": "string"}}
        }));
    schemas.insert(
        "AuditPage".into(),
        json!({"type": "object", "required": ["items", "nextCursor"],
            "properties": {"items": {"type": "array", "items": schema("AuditEntry")},
                           "nextCursor": nullable("string")}}),
    );
    schemas.insert(
        "Billing".into(),
        json!({
            "type": "object",
            "required": ["plan", "status", "subscriptionId", "customerId", "currentPeriodEnd"],
            "properties": {"plan": nullable("string"), "status": nullable("string"),
                "subscriptionId": nullable("string"), "customerId": nullable("string"),
                "currentPeriodEnd": nullable("string")}
        }),
    );
    schemas.insert(
        "StripeReceived".into(),
        json!({"type": "object", "required": ["received", "duplicate"],
            "properties": {"received": {"const": true}, "duplicate": {"type": "boolean"}}}),
    );
    schemas.insert(
        "PreferenceTypes".into(),
        json!({
            "type": "object", "required": ["type", "critical", "channels"],
            "properties": {"type": {"type": "string"}, "description": {"type": "string"},
                "critical": {"type": "boolean"},
                "channels": {"type": "object", "additionalProperties": {"type": "boolean"}}}
        }),
    );
    schemas.insert(
        "PreferenceList".into(),
        json!({"type": "object", "required": ["items"],
            "properties": {"items": {"type": "array", "items": schema("PreferenceTypes")}}}),
    );
    schemas.insert("PreferenceInput".into(), json!({
            "type": "object", "required": ["type", "channel", "enabled"], "additionalProperties": false,
            "properties": {"type": {"type": "string", "description": "A registry type or \"*\""},
                "channel": {"type": "string", "enum": ["inbox", "email"]},
                "enabled": {"type": "boolean"}}
        }));
    schemas.insert(
        "Preference".into(),
        json!({
            "type": "object", "required": ["type", "channel", "enabled", "critical"],
            "properties": {"type": {"type": "string"},
                "channel": {"type": "string", "enum": ["inbox", "email"]},
                "enabled": {"type": "boolean"}, "critical": {"type": "boolean"}}
        }),
    );
    Value::Object(schemas)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn documented() -> BTreeSet<(String, String)> {
        let doc = document(&["system.announcement"]);
        let mut ops = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().into_iter().flatten() {
            for method in item.as_object().into_iter().flatten().map(|(m, _)| m) {
                ops.insert((method.to_ascii_uppercase(), path.clone()));
            }
        }
        ops
    }

    #[test]
    fn every_route_is_documented_and_nothing_else() {
        let served: BTreeSet<(String, String)> = ROUTES
            .iter()
            .filter(|r| !UNDOCUMENTED.contains(&(r.method, r.pattern)))
            .map(|r| (r.method.to_string(), r.pattern.to_string()))
            .collect();
        let documented = documented();
        let missing: Vec<_> = served.difference(&documented).collect();
        assert!(
            missing.is_empty(),
            "routes without an OpenAPI operation (add one in openapi::operation): {missing:?}"
        );
        assert_eq!(documented, served);
    }

    #[test]
    fn every_schema_reference_resolves() {
        let doc = document(&["system.announcement"]);
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for part in text.split("#/components/schemas/").skip(1) {
            let name = part.split('"').next().unwrap_or_default();
            assert!(schemas.contains_key(name), "dangling $ref to {name}");
        }
    }

    #[test]
    fn operation_ids_are_unique() {
        let doc = document(&["system.announcement"]);
        let mut ids = BTreeSet::new();
        for item in doc["paths"].as_object().unwrap().values() {
            for op in item.as_object().unwrap().values() {
                let id = op["operationId"].as_str().unwrap().to_string();
                assert!(ids.insert(id.clone()), "duplicate operationId {id}");
            }
        }
    }
}
