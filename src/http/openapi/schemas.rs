//! The document's `components.schemas`: the JSON shapes of request and
//! response bodies, hand-written to match the handlers' types. Operations
//! refer to them by name through `schema`.

use serde_json::{json, Map, Value};

/// A reference to the named schema of `components.schemas`.
pub fn schema(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// An event's recipients, as events and schedules take them.
pub fn recipients() -> Value {
    json!({"type": ["array", "null"], "maxItems": 1000, "items": {
    "oneOf": [
        {"type": "string", "description": "A user id"},
        {"type": "object", "required": ["email"],
         "properties": {"email": {"type": "string", "format": "email"}},
         "description": "An address-only recipient (email channel only)"},
        {"type": "object", "required": ["topic"], "additionalProperties": false,
         "properties": {"topic": {"type": "string", "minLength": 1, "maxLength": 200}},
         "description": "Every subscriber of an existing topic at dispatch, each user once"}
    ]}})
}

fn nullable(kind: &str) -> Value {
    json!({"type": [kind, "null"]})
}

/// A local time of day, as quiet hours take it.
fn clock() -> Value {
    json!({"type": "string", "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$"})
}

/// A quiet-hours window.
fn window() -> Value {
    json!({"type": "object", "required": ["from", "to"], "additionalProperties": false,
           "properties": {"from": clock(), "to": clock()},
           "description": "Local times in the user's time zone; from after to spans midnight."})
}

/// The `timezone` and `quietHours` fields of a request: left out, the
/// setting stays; null clears it.
fn settings_fields() -> (Value, Value) {
    (
        json!({"type": ["string", "null"], "examples": ["Europe/Paris"],
               "description": "An IANA time zone name, e.g. Europe/Paris (422 if unknown)."}),
        json!({"oneOf": [{"type": "null"}, window()],
               "examples": [{"from": "22:00", "to": "08:00"}],
               "description": "Holds non-critical emails created inside the window until it ends (needs a timezone); from and to must differ (422)."}),
    )
}

/// A `locale` field: exactly the BCP 47 tags `notify::locale` accepts
/// (language, script, region, variants; any case), or null.
fn locale(description: &str) -> Value {
    json!({"type": ["string", "null"], "maxLength": 35,
           "pattern": "^[A-Za-z]{2,3}(-[A-Za-z]{4})?(-([A-Za-z]{2}|[0-9]{3}))?(-([A-Za-z0-9]{5,8}|[0-9][A-Za-z0-9]{3}))*$",
           "examples": ["fr-BE"], "description": description})
}

/// Every schema; the registry's types are the enum of an event's `type`.
pub fn all(event_types: &[&str]) -> Value {
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
    let (timezone, quiet_hours) = settings_fields();
    let user_locale = locale(
        "A BCP 47 tag, e.g. fr-BE: the user's notifications use templates/<type>/fr-BE/, \
         else fr/, else the default files (422 if not a tag).",
    );
    schemas.insert(
        "UserInput".into(),
        json!({
            "type": "object", "required": ["email"], "additionalProperties": false,
            "properties": {"email": {"type": "string", "format": "email"},
                           "name": {"type": "string", "maxLength": 200},
                           "timezone": timezone, "quietHours": quiet_hours,
                           "locale": user_locale}
        }),
    );
    schemas.insert(
        "SettingsInput".into(),
        json!({
            "type": "object", "additionalProperties": false,
            "properties": {"timezone": timezone, "quietHours": quiet_hours,
                           "locale": user_locale}
        }),
    );
    schemas.insert(
        "User".into(),
        json!({"type": "object",
            "required": ["id", "email", "name", "timezone", "quietHours", "locale"],
            "properties": {"id": {"type": "string"}, "email": {"type": "string"},
                           "name": {"type": "string"}, "timezone": nullable("string"),
                           "quietHours": {"oneOf": [{"type": "null"}, window()]},
                           "locale": nullable("string")}}),
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
                "recipients": recipients(),
                "subjectId": {"type": ["string", "null"]},
                "actorId": {"type": ["string", "null"], "maxLength": 200,
                    "description": "The user whose action this is: never notified by this event, directly or through a topic."},
                "payload": {"type": ["object", "null"]},
                "idempotencyKey": {"type": ["string", "null"]},
                "sendAt": {"type": ["string", "null"], "format": "date-time",
                    "examples": ["2027-01-04T09:00:00+01:00"],
                    "description": "Dispatch at this time (RFC 3339) rather than now; a time past means now; at most 366 days ahead."},
                "cancellationKey": {"type": ["string", "null"], "minLength": 1, "maxLength": 200,
                    "examples": ["onboarding-reminder:usr_123"],
                    "description": "POST /v1/events/cancel with this key cancels the event while it is not yet dispatched."},
                "locale": locale("Every recipient reads the event in this locale (BCP 47), over their own.")
            }
        }),
    );
    schemas.insert(
        "EventAccepted".into(),
        json!({"type": "object", "required": ["eventId"],
            "properties": {"eventId": {"type": "string"}, "duplicate": {"type": "boolean"},
                           "sendAt": {"type": "string",
                                      "description": "When the event is due, for one given sendAt."}}}),
    );
    schemas.insert(
        "CancelInput".into(),
        json!({"type": "object", "required": ["cancellationKey"], "additionalProperties": false,
            "properties": {"cancellationKey": {"type": "string", "minLength": 1, "maxLength": 200}}}),
    );
    schemas.insert(
        "ResultCounts".into(),
        json!({"type": "object", "required": ["sent", "deduped", "suppressedByPrefs", "throttled"],
            "properties": {"sent": {"type": "integer"}, "deduped": {"type": "integer"},
                           "suppressedByPrefs": {"type": "integer"},
                           "throttled": {"type": "integer"}}}),
    );
    schemas.insert(
        "DispatchResult".into(),
        json!({"type": "object", "required": ["sent", "deduped", "suppressedByPrefs", "throttled", "channels"],
            "description": "sent, deduped, suppressedByPrefs and throttled count recipients: sent those who got at least one channel, suppressedByPrefs those whose every channel was switched off, throttled those over the type's throttle.",
            "properties": {
                "sent": {"type": "integer"}, "deduped": {"type": "integer"},
                "suppressedByPrefs": {"type": "integer"}, "throttled": {"type": "integer"},
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
                "status": {"type": "string",
                    "enum": ["pending", "retrying", "sent", "failed", "dead", "held", "skipped", "delivered"],
                    "description": "Email: pending, retrying, sent, failed or dead; held until releaseAt (escalation, quiet hours), then sent on or skipped (the inbox row was seen or read in time); inbox rows read delivered."},
                "attempts": {"type": "integer"},
                "nextAttemptAt": nullable("string"), "lastError": nullable("string"),
                "batchId": {"type": ["string", "null"],
                    "description": "The batch this email goes out in, under the batch id as Idempotency-Key; null when it goes alone, under its own id."},
                "releaseAt": {"type": "string", "description": "A held email: when it is due for release."},
                "releaseUnless": {"type": "string", "enum": ["seen", "read"],
                    "description": "A held escalation: it is skipped if the recipient's inbox row is seen (or read) by releaseAt."},
                "releasedAt": {"type": "string", "description": "A once-held email: when it was released to be sent, or skipped."}
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
                "properties": {"eventId": {"type": "string"}, "duplicate": {"type": "boolean"},
                               "sendAt": {"type": "string"}}
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
            "required": ["id", "type", "status", "createdAt", "sendAt", "cancellationKey", "result",
                         "error", "deliveries"],
            "properties": {
                "id": {"type": "string"}, "type": {"type": "string"},
                "status": {"type": "string",
                    "enum": ["pending", "scheduled", "dispatched", "failed", "cancelled"],
                    "description": "scheduled: pending, due at sendAt; pending: due, waiting for the dispatcher."},
                "createdAt": {"type": "string"},
                "sendAt": nullable("string"), "cancellationKey": nullable("string"),
                "result": {"oneOf": [{"type": "null"}, schema("DispatchResult")]},
                "error": nullable("string"),
                "deliveries": {"type": "array", "items": schema("Delivery")},
                "digests": {"type": "array", "items": schema("HeldDigest")},
                "fanOutPending": {"type": "boolean", "const": true,
                    "description": "Present while the event's topic recipients are still being expanded a page at a time; its result grows until then."}
            }
        }),
    );
    schemas.insert("InboxItem".into(), json!({
            "type": "object",
            "required": ["id", "type", "title", "body", "actions", "payload", "createdAt", "seenAt", "readAt",
                         "archivedAt", "snoozedUntil"],
            "properties": {
                "id": {"type": "string"}, "type": {"type": "string"},
                "title": {"type": "string"}, "body": {"type": "string"},
                "actions": {"type": "array", "items": {"type": "object",
                    "properties": {"label": {"type": "string"}, "url": {"type": "string"}}}},
                "payload": {"type": "object"},
                "createdAt": {"type": "string"},
                "seenAt": nullable("string"), "readAt": nullable("string"),
                "archivedAt": nullable("string"), "snoozedUntil": nullable("string")
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
