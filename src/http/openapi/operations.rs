//! The hand-written part of each API route's operation, one function per
//! route, named after its operationId. The routing table (`routes.rs`) names
//! the function for each of its API routes, so no route can go undescribed.

use serde_json::{json, Value};

use super::op::{Auth::*, Op};
use super::schemas::schema;

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

pub fn health() -> Op {
    Op::new("health", "Liveness check", Public).never_busy().ok(
        200,
        "The server is up",
        schema("Health"),
    )
}

pub fn metrics() -> Op {
    Op::new("metrics", "Prometheus metrics (text format 0.0.4)", Public)
        .media("text/plain")
        .ok(
            200,
            "Metrics in Prometheus text exposition format 0.0.4",
            json!({"type": "string"}),
        )
}

pub fn openapi() -> Op {
    Op::new("openapi", "This document", Public).never_busy().ok(
        200,
        "The OpenAPI 3.1 document",
        json!({"type": "object"}),
    )
}

pub fn upsert_user() -> Op {
    Op::new(
        "upsertUser",
        "Create or update a user (time zone and quiet hours: left out stays, null clears)",
        Service,
    )
    .body(schema("UserInput"))
    .ok(200, "The user was updated", schema("User"))
    .ok(201, "The user was created", schema("User"))
    // The id in the path is validated too, not only the body.
    .errors(&[422])
}

pub fn issue_token() -> Op {
    Op::new(
        "issueToken",
        "Issue an API token for a user (shown once)",
        Service,
    )
    .ok(201, "The new token", schema("Token"))
}

pub fn revoke_tokens() -> Op {
    Op::new(
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
    )
}

pub fn me() -> Op {
    Op::new("me", "The user the token belongs to", User).ok(200, "The calling user", schema("User"))
}

pub fn update_my_settings() -> Op {
    Op::new(
        "updateMySettings",
        "Set the caller's time zone and quiet hours (left out stays, null clears)",
        User,
    )
    .body(schema("SettingsInput"))
    .ok(200, "The calling user as saved", schema("User"))
}

pub fn trigger_event() -> Op {
    Op::new("triggerEvent", "Enqueue a notification event", Service)
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
        )
}

pub fn trigger_events() -> Op {
    Op::new(
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
    )
}

pub fn get_event() -> Op {
    Op::new(
        "getEvent",
        "An event's dispatch result and deliveries",
        Service,
    )
    .ok(200, "The event", schema("EventView"))
}

pub fn create_schedule() -> Op {
    Op::new(
        "createSchedule",
        "Create a recurring schedule: one event per run, in a time zone",
        Service,
    )
    .body(schema("ScheduleInput"))
    .ok(201, "The schedule, with its first run", schema("Schedule"))
}

pub fn list_schedules() -> Op {
    Op::new(
        "listSchedules",
        "Recurring schedules, newest first",
        Service,
    )
    .param(query(
        "limit",
        "Page size (default 50).",
        json!({"type": "integer", "minimum": 1, "maximum": 500}),
    ))
    .param(cursor_param())
    .ok(200, "One page", schema("SchedulePage"))
}

pub fn get_schedule() -> Op {
    Op::new("getSchedule", "A recurring schedule", Service).ok(
        200,
        "The schedule",
        schema("Schedule"),
    )
}

pub fn delete_schedule() -> Op {
    Op::new(
        "deleteSchedule",
        "Delete a recurring schedule (events of past runs stay)",
        Service,
    )
    .no_content("Deleted")
}

pub fn cancel_event() -> Op {
    Op::new(
        "cancelEvent",
        "Cancel an event not yet dispatched (scheduled, or still waiting)",
        Service,
    )
    .ok(
        200,
        "The event, cancelled (also when it already was)",
        schema("EventView"),
    )
    .errors(&[409])
}

pub fn cancel_events() -> Op {
    Op::new(
        "cancelEvents",
        "Cancel every event not yet dispatched that carries a cancellationKey",
        Service,
    )
    .body(schema("CancelInput"))
    .ok(
        200,
        "How many events were cancelled",
        json!({"type": "object", "required": ["cancelled"], "additionalProperties": false,
               "properties": {"cancelled": {"type": "integer", "minimum": 0}}}),
    )
}

pub fn list_deliveries() -> Op {
    Op::new(
        "listDeliveries",
        "The email delivery log, oldest first",
        Service,
    )
    .param(query(
        "status",
        "Only deliveries in this state.",
        json!({"type": "string",
               "enum": ["pending", "retrying", "sent", "failed", "dead", "held", "skipped"]}),
    ))
    .param(query(
        "limit",
        "Page size (default 50).",
        json!({"type": "integer", "minimum": 1, "maximum": 500}),
    ))
    .param(cursor_param())
    .ok(200, "One page", schema("DeliveryPage"))
}

pub fn retry_delivery() -> Op {
    Op::new(
        "retryDelivery",
        "Re-arm a dead or failed delivery for a fresh round of attempts",
        Service,
    )
    .ok(200, "The re-armed delivery", schema("Delivery"))
    .errors(&[409])
}

pub fn credits() -> Op {
    Op::new(
        "credits",
        "The caller's referral credit balance and ledger, newest first",
        User,
    )
    .ok(200, "Balance and ledger", schema("Credits"))
}

pub fn list_inbox() -> Op {
    Op::new("listInbox", "The caller's inbox, newest first", User)
        .param(limit_param())
        .param(cursor_param())
        .param(query(
            "unread",
            "Only notifications not yet read.",
            json!({"type": "boolean"}),
        ))
        .param(query(
            "archived",
            "Archived notifications: left out (`exclude`, the default), listed with the others (`include`) or alone (`only`). Snoozed ones are never listed until their snooze ends.",
            json!({"type": "string", "enum": ["exclude", "include", "only"]}),
        ))
        .ok(200, "One page", schema("InboxPage"))
}

pub fn inbox_stream() -> Op {
    Op::new(
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
    .media("text/event-stream")
    .ok(
        200,
        "`id: <n>` and `data: <inbox item JSON>` per row; a `: heartbeat` comment every 15 s",
        json!({"type": "string"}),
    )
}

pub fn unseen_count() -> Op {
    Op::new("unseenCount", "How many notifications are unseen", User).ok(
        200,
        "The count",
        schema("Count"),
    )
}

pub fn mark_all_seen() -> Op {
    Op::new("markAllSeen", "Mark every notification seen", User).ok(
        200,
        "How many changed",
        schema("Updated"),
    )
}

pub fn mark_seen() -> Op {
    Op::new("markSeen", "Mark a notification seen", User).no_content("Marked")
}

pub fn mark_read() -> Op {
    Op::new("markRead", "Mark a notification read (and seen)", User).no_content("Marked")
}

pub fn archive_notification() -> Op {
    Op::new(
        "archiveNotification",
        "Archive a notification: it leaves the inbox and the unseen count (a snooze ends)",
        User,
    )
    .no_content("Archived")
}

pub fn unarchive_notification() -> Op {
    Op::new(
        "unarchiveNotification",
        "Put an archived notification back in the inbox",
        User,
    )
    .no_content("Back in the inbox")
}

pub fn snooze_notification() -> Op {
    Op::new(
        "snoozeNotification",
        "Hide a notification until `until`; it then comes back unseen and is pushed on the stream",
        User,
    )
    .body(json!({
        "type": "object", "required": ["until"], "additionalProperties": false,
        "properties": {"until": {"type": "string", "format": "date-time",
            "description": "RFC 3339; in the future, at most 366 days ahead (422 otherwise)."}}
    }))
    .no_content("Snoozed")
}

pub fn inbox_bulk() -> Op {
    Op::new(
        "inboxBulk",
        "Mark seen, mark read or archive many notifications at once",
        User,
    )
    .body(json!({
        "type": "object", "required": ["action"], "additionalProperties": false,
        "description": "Exactly one of `ids` and `all`. Ids of another user's notifications are passed over like unknown ones.",
        "properties": {
            "action": {"type": "string", "enum": ["seen", "read", "archive"]},
            "ids": {"type": "array", "minItems": 1, "maxItems": 1000,
                "items": {"type": "string", "pattern": "^ntf_[0-9]{1,18}$"}},
            "all": {"type": "boolean", "enum": [true],
                "description": "Every unseen (seen), unread (read) or inbox (archive) notification."}
        },
        "oneOf": [{"required": ["ids"]}, {"required": ["all"]}]
    }))
    .ok(200, "How many changed", schema("Updated"))
}

pub fn delete_notification() -> Op {
    Op::new("deleteNotification", "Delete a notification", User).no_content("Deleted")
}

pub fn create_org() -> Op {
    Op::new(
        "createOrg",
        "Create an organization (caller is owner)",
        User,
    )
    .body(schema("OrgInput"))
    .ok(201, "The organization", schema("Org"))
}

pub fn list_members() -> Op {
    Op::new("listMembers", "An org's members", User).ok(200, "The members", schema("MemberList"))
}

pub fn change_member_role() -> Op {
    Op::new("changeMemberRole", "Change a member's role (admin)", User)
        .body(schema("RoleInput"))
        .ok(200, "The member's role now", schema("RoleChanged"))
        .errors(&[409])
}

pub fn send_invitation() -> Op {
    Op::new("sendInvitation", "Invite someone by email (admin)", User)
        .body(schema("InvitationInput"))
        .ok(201, "The invitation", schema("InvitationSent"))
        .errors(&[409])
}

pub fn list_invitations() -> Op {
    Op::new("listInvitations", "An org's invitations", User).ok(
        200,
        "The invitations",
        schema("InvitationList"),
    )
}

pub fn revoke_invitation() -> Op {
    Op::new(
        "revokeInvitation",
        "Revoke a pending invitation (admin)",
        User,
    )
    .no_content("Revoked")
    .errors(&[409])
}

pub fn accept_invitation() -> Op {
    Op::new(
        "acceptInvitation",
        "Accept an invitation by its token",
        User,
    )
    .body(schema("AcceptInput"))
    .ok(200, "The new membership", schema("Accepted"))
    .errors(&[404, 409, 410])
}

pub fn audit_log() -> Op {
    Op::new("auditLog", "An org's audit log (admin)", User)
        .param(limit_param())
        .param(cursor_param())
        .ok(200, "One page, newest first", schema("AuditPage"))
}

pub fn billing() -> Op {
    Op::new("billing", "An org's plan and subscription", User).ok(
        200,
        "The entitlement (fields null before any subscription)",
        schema("Billing"),
    )
}

pub fn stripe_webhook() -> Op {
    Op::new(
        "stripeWebhook",
        "Stripe events, verified by their Stripe-Signature",
        Stripe,
    )
    .ok(200, "Processed (or a replay)", schema("StripeReceived"))
}

pub fn list_preferences() -> Op {
    Op::new(
        "listPreferences",
        "The caller's channel switches per type",
        User,
    )
    .ok(200, "Every type and `*`", schema("PreferenceList"))
}

pub fn set_preference() -> Op {
    Op::new("setPreference", "Set one (type, channel) switch", User)
        .body(schema("PreferenceInput"))
        .ok(200, "The switch as stored", schema("Preference"))
}

pub fn create_webhook() -> Op {
    Op::new(
        "createWebhook",
        "Subscribe an endpoint to delivery and inbox status messages, signed per Standard \
         Webhooks; the answer carries the signing secret, shown this once",
        Service,
    )
    .body(schema("WebhookInput"))
    .ok(
        201,
        "The endpoint, with its secret",
        schema("WebhookCreated"),
    )
}

pub fn list_webhooks() -> Op {
    Op::new("listWebhooks", "Webhook endpoints, oldest first", Service).ok(
        200,
        "Every endpoint, without secrets",
        schema("WebhookList"),
    )
}

pub fn get_webhook() -> Op {
    Op::new("getWebhook", "A webhook endpoint", Service).ok(
        200,
        "The endpoint, without its secret",
        schema("Webhook"),
    )
}

pub fn delete_webhook() -> Op {
    Op::new(
        "deleteWebhook",
        "Delete a webhook endpoint and drop its pending messages",
        Service,
    )
    .no_content("Deleted")
}

pub fn enable_webhook() -> Op {
    Op::new(
        "enableWebhook",
        "Re-enable a webhook endpoint (disabled after failing for a day): its pending \
         messages are sent again",
        Service,
    )
    .ok(200, "The endpoint, active", schema("Webhook"))
}
