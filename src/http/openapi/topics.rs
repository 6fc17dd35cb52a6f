//! The topics' operations and shapes (`/v1/topics`), apart from
//! `operations.rs` and `schemas.rs` because they are one feature's:
//! exactly what `notify::topics` accepts and returns.

use serde_json::{json, Map, Value};

use super::op::{Auth::*, Op};
use super::schemas::schema;

/// The 422 of a topic key that is not one (1-200 characters, no control
/// characters), on every operation that names a topic.
const BAD_KEY: &[u16] = &[422];

pub fn put_topic() -> Op {
    Op::new(
        "putTopic",
        "Create a topic, or rename it (a key of 1 to 200 printable characters, e.g. project:42)",
        Service,
    )
    .body(schema("TopicInput"))
    .ok(200, "The topic was renamed", schema("Topic"))
    .ok(201, "The topic was created", schema("Topic"))
}

pub fn get_topic() -> Op {
    Op::new("getTopic", "A topic and its subscriber count", Service)
        .ok(200, "The topic", schema("Topic"))
        .errors(BAD_KEY)
}

pub fn delete_topic() -> Op {
    Op::new(
        "deleteTopic",
        "Delete a topic and its subscriptions (a fan-out under way ends)",
        Service,
    )
    .no_content("Deleted")
    .errors(BAD_KEY)
}

pub fn subscribe() -> Op {
    Op::new(
        "subscribeToTopic",
        "Subscribe users to a topic (idempotent; all or none)",
        Service,
    )
    .body(schema("SubscribeInput"))
    .ok(200, "How many subscriptions are new", schema("Subscribed"))
}

pub fn unsubscribe() -> Op {
    Op::new(
        "unsubscribeFromTopic",
        "Unsubscribe a user from a topic (also when not subscribed)",
        Service,
    )
    .no_content("Unsubscribed")
    .errors(BAD_KEY)
}

pub fn list_subscribers() -> Op {
    Op::new(
        "listTopicSubscribers",
        "A topic's subscribers, in user id order",
        Service,
    )
    .param(json!({"name": "limit", "in": "query", "required": false,
        "description": "Page size (default 100).",
        "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}))
    .param(json!({"name": "cursor", "in": "query", "required": false,
        "description": "The `nextCursor` of the previous page.",
        "schema": {"type": "string"}}))
    .ok(200, "One page", schema("SubscriberPage"))
    .errors(BAD_KEY)
}

/// Adds the topics' schemas.
pub fn add(schemas: &mut Map<String, Value>) {
    let time = json!({"type": "string", "format": "date-time"});
    let mut put = |name: &str, schema: Value| {
        schemas.insert(name.into(), schema);
    };
    put(
        "TopicInput",
        json!({"type": "object", "additionalProperties": false,
            "examples": [{"name": "Project 42"}],
            "properties": {"name": {"type": ["string", "null"], "maxLength": 200,
                "description": "Absent or null keeps the name (empty for a new topic)"}}}),
    );
    put(
        "Topic",
        json!({"type": "object",
            "required": ["key", "name", "subscribers", "createdAt", "updatedAt"],
            "properties": {"key": {"type": "string"}, "name": {"type": "string"},
                "subscribers": {"type": "integer", "minimum": 0},
                "createdAt": time, "updatedAt": time}}),
    );
    put(
        "SubscribeInput",
        json!({"type": "object", "required": ["userIds"], "additionalProperties": false,
            "examples": [{"userIds": ["alice", "bob"]}],
            "properties": {"userIds": {"type": "array", "minItems": 1, "maxItems": 1000,
                "items": {"type": "string", "minLength": 1},
                "description": "Existing user ids; an unknown one is a 422 naming userIds[i]"}}}),
    );
    put(
        "Subscribed",
        json!({"type": "object", "required": ["added"],
            "properties": {"added": {"type": "integer", "minimum": 0}}}),
    );
    put(
        "SubscriberPage",
        json!({"type": "object", "required": ["items", "nextCursor"],
            "properties": {
                "items": {"type": "array", "items": {"type": "object",
                    "required": ["userId", "subscribedAt"],
                    "properties": {"userId": {"type": "string"}, "subscribedAt": time}}},
                "nextCursor": {"type": ["string", "null"]}}}),
    );
}
