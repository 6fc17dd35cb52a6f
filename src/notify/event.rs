//! The event a call site hands to herald (SPEC 2.1), parsed from JSON with an
//! error that names the offending field, and validated against the registry
//! before anything is stored.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::{invalid, NotifyError};
use super::registry::{Channel, Registry};

const MAX_RECIPIENTS: usize = 1000;
const MAX_ID_LEN: usize = 200;
const MAX_EMAIL_LEN: usize = 320;
/// How far ahead `sendAt` may be: a year, leap day included. Further is
/// more likely a unit mistake (seconds for milliseconds) than a plan.
pub const MAX_SEND_AHEAD_MS: i64 = 366 * 86_400 * 1000;

/// What a released digest's event carries (see `Event::from_digest`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Release {
    pub digest_id: i64,
    /// The channels its events were allowed on when they joined.
    pub channels: Vec<Channel>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Recipient {
    /// A user id: every channel of the type.
    User(String),
    /// An address-only recipient: the email channel only, no inbox.
    Address { email: String },
    /// Every subscriber of a topic at dispatch time, each as a user
    /// (expanded in pages by `notify::topic_fanout`).
    Topic { topic: String },
}

impl Recipient {
    /// The key a delivery is unique on: the user id, or `email:<address>`.
    pub fn key(&self) -> String {
        match self {
            Recipient::User(id) => id.clone(),
            Recipient::Address { email } => format!("email:{}", email.to_lowercase()),
            Recipient::Topic { topic } => format!("topic:{topic}"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: String,
    pub recipients: Vec<Recipient>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_id: Option<String>,
    /// `actorId`: the user whose action this event reports; never notified
    /// by it, whether named directly or through a topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor_id: Option<String>,
    pub payload: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Set only on the notification a closed digest releases, never from the
    /// API (`from_json` does not read it): it is dispatched without dedup or
    /// digest, on the channels its events were allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_digest: Option<Release>,
    /// `sendAt`, epoch ms: dispatched then, not at commit (SPEC 9). Kept in
    /// the outbox row's `due_at`, not in its body.
    #[serde(skip)]
    pub send_at: Option<i64>,
    /// `cancellationKey`: `POST /v1/events/cancel` cancels every event
    /// not yet dispatched that carries it. Kept in its own outbox column.
    #[serde(skip)]
    pub cancellation_key: Option<String>,
    /// `locale`: a canonical BCP 47 tag every recipient reads the event in,
    /// over their own locale (SPEC 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
}

impl Event {
    pub fn new(kind: &str, recipients: Vec<Recipient>, payload: Value) -> Event {
        Event {
            kind: kind.to_string(),
            recipients,
            subject_id: None,
            actor_id: None,
            payload,
            idempotency_key: None,
            from_digest: None,
            send_at: None,
            cancellation_key: None,
            locale: None,
        }
    }

    /// Parses an API request body, naming the first field that is wrong.
    pub fn from_json(value: Value) -> Result<Event, NotifyError> {
        let Value::Object(mut obj) = value else {
            return Err(invalid("body", "expected a JSON object"));
        };
        let kind = match obj.remove("type") {
            Some(Value::String(s)) if !s.is_empty() => s,
            Some(_) => return Err(invalid("type", "expected a non-empty string")),
            None => return Err(invalid("type", "is required")),
        };
        let recipients = match obj.remove("recipients") {
            Some(Value::Array(items)) => items
                .into_iter()
                .enumerate()
                .map(|(i, v)| parse_recipient(i, v))
                .collect::<Result<Vec<_>, _>>()?,
            None | Some(Value::Null) => Vec::new(),
            Some(_) => return Err(invalid("recipients", "expected an array")),
        };
        if recipients.len() > MAX_RECIPIENTS {
            return Err(invalid(
                "recipients",
                &format!("at most {MAX_RECIPIENTS} recipients per event"),
            ));
        }
        let subject_id = optional_string(&mut obj, "subjectId")?;
        let actor_id = optional_string(&mut obj, "actorId")?;
        let idempotency_key = optional_string(&mut obj, "idempotencyKey")?;
        let cancellation_key = match obj.remove("cancellationKey") {
            None | Some(Value::Null) => None,
            Some(value) => Some(cancellation_key(value)?),
        };
        let send_at = match obj.remove("sendAt") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(crate::time::parse_rfc3339(&s).ok_or_else(|| {
                invalid("sendAt", "expected an RFC 3339 timestamp with an offset")
            })?),
            Some(_) => return Err(invalid("sendAt", "expected an RFC 3339 timestamp string")),
        };
        let locale = match obj.remove("locale") {
            None => None,
            Some(value) => super::locale::parse_field("locale", &value)?,
        };
        let payload = match obj.remove("payload") {
            Some(Value::Object(map)) => Value::Object(map),
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(_) => return Err(invalid("payload", "expected an object")),
        };
        if let Some(field) = obj.keys().next() {
            return Err(invalid(field, "is not a known event field"));
        }
        let mut event = Event {
            kind,
            recipients,
            subject_id,
            actor_id,
            payload,
            idempotency_key,
            from_digest: None,
            send_at,
            cancellation_key,
            locale,
        };
        event.dedupe_recipients();
        Ok(event)
    }

    /// Checks `sendAt` against `now`: at most `MAX_SEND_AHEAD_MS` ahead (a
    /// time past means now).
    pub fn validate_send_at(&self, now: i64) -> Result<(), NotifyError> {
        match self.send_at {
            Some(at) if at > now.saturating_add(MAX_SEND_AHEAD_MS) => {
                Err(invalid("sendAt", "must be at most 366 days ahead"))
            }
            _ => Ok(()),
        }
    }

    /// Checks the event against the registry: the type exists and the
    /// payload carries every required field.
    pub fn validate(&self, registry: &Registry) -> Result<(), NotifyError> {
        let def = registry
            .get(&self.kind)
            .ok_or_else(|| NotifyError::UnknownType(self.kind.clone()))?;
        if !self.payload.is_object() {
            return Err(invalid("payload", "expected an object"));
        }
        for field in &def.required {
            match self.payload.get(field) {
                None | Some(Value::Null) => {
                    return Err(invalid(&format!("payload.{field}"), "is required"))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// The topics among the recipients, in order.
    pub fn topics(&self) -> impl Iterator<Item = &str> {
        self.recipients.iter().filter_map(|r| match r {
            Recipient::Topic { topic } => Some(topic.as_str()),
            _ => None,
        })
    }

    /// Whether `user` is reached directly, not through a topic: a topic's
    /// pages skip such users, who were notified with the event itself.
    pub fn names_user(&self, user: &str) -> bool {
        self.recipients
            .iter()
            .any(|r| matches!(r, Recipient::User(id) if id == user))
    }

    /// Whether `user` is the event's actor, who is never notified by it.
    pub fn is_actor(&self, user: &str) -> bool {
        self.actor_id.as_deref() == Some(user)
    }

    /// The same recipient twice in one event is notified once.
    fn dedupe_recipients(&mut self) {
        let mut seen = std::collections::HashSet::new();
        self.recipients.retain(|r| seen.insert(r.key()));
    }
}

fn parse_recipient(i: usize, value: Value) -> Result<Recipient, NotifyError> {
    let field = format!("recipients[{i}]");
    match value {
        Value::String(id) if !id.is_empty() && id.len() <= MAX_ID_LEN => Ok(Recipient::User(id)),
        Value::Object(obj) if obj.len() == 1 && obj.contains_key("topic") => {
            match obj.get("topic") {
                Some(Value::String(key)) if is_topic_key(key) => {
                    Ok(Recipient::Topic { topic: key.clone() })
                }
                _ => Err(invalid(&format!("{field}.topic"), TOPIC_KEY_RULE)),
            }
        }
        Value::Object(mut obj) if obj.len() == 1 => match obj.remove("email") {
            Some(Value::String(email)) if is_plausible_email(&email) => {
                Ok(Recipient::Address { email })
            }
            _ => Err(invalid(
                &format!("{field}.email"),
                "expected an email address",
            )),
        },
        _ => Err(invalid(
            &field,
            "expected a user id string, {\"email\": \"address\"} or {\"topic\": \"key\"}",
        )),
    }
}

/// What a topic key must be, as a message.
pub const TOPIC_KEY_RULE: &str = "expected a topic key of 1 to 200 printable characters";

/// A topic key: 1 to 200 characters (as JSON Schema counts them), none of
/// them a control character or whitespace other than a plain space, so a
/// key reads the same in a URL path, a log line and a JSON document.
pub fn is_topic_key(key: &str) -> bool {
    let n = key.chars().count();
    (1..=MAX_ID_LEN).contains(&n)
        && !key
            .chars()
            .any(|c| c.is_control() || (c.is_whitespace() && c != ' '))
}

/// A `cancellationKey`: 1 to 200 characters (as JSON Schema counts them).
pub fn cancellation_key(value: Value) -> Result<String, NotifyError> {
    match value {
        Value::String(s) if !s.is_empty() && s.chars().count() <= MAX_ID_LEN => Ok(s),
        _ => Err(invalid(
            "cancellationKey",
            &format!("expected a string of 1 to {MAX_ID_LEN} characters"),
        )),
    }
}

fn optional_string(
    obj: &mut Map<String, Value>,
    field: &str,
) -> Result<Option<String>, NotifyError> {
    match obj.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() <= MAX_ID_LEN => Ok(Some(s)),
        Some(_) => Err(invalid(
            field,
            &format!("expected a string of at most {MAX_ID_LEN} characters"),
        )),
    }
}

/// Enough to catch typos and garbage; the provider has the final word.
pub fn is_plausible_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    s.len() <= MAX_EMAIL_LEN
        && !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !s
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>')
        && !domain.contains('@')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field_of(v: Value) -> String {
        match Event::from_json(v) {
            Err(NotifyError::Invalid { field, .. }) => field,
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn parses_users_and_addresses_and_dedupes() {
        let e = Event::from_json(json!({
            "type": "t", "recipients": ["u1", {"email": "a@b.co"}, "u1"],
            "subjectId": "s", "payload": {"x": 1}, "idempotencyKey": "k"
        }))
        .unwrap();
        assert_eq!(
            e.recipients,
            vec![
                Recipient::User("u1".into()),
                Recipient::Address {
                    email: "a@b.co".into()
                }
            ]
        );
        assert_eq!(e.idempotency_key.as_deref(), Some("k"));
    }

    #[test]
    fn names_the_wrong_field() {
        assert_eq!(field_of(json!([])), "body");
        assert_eq!(field_of(json!({"recipients": []})), "type");
        assert_eq!(
            field_of(json!({"type": "t", "recipients": [1]})),
            "recipients[0]"
        );
        assert_eq!(
            field_of(json!({"type": "t", "recipients": ["u", {"email": "nope"}]})),
            "recipients[1].email"
        );
        assert_eq!(field_of(json!({"type": "t", "payload": []})), "payload");
        assert_eq!(field_of(json!({"type": "t", "color": "red"})), "color");
    }

    #[test]
    fn send_at_and_cancellation_keys_are_checked() {
        let e = Event::from_json(json!({
            "type": "t", "sendAt": "2026-03-01T09:00:00+01:00", "cancellationKey": "cart_7"
        }))
        .unwrap();
        assert_eq!(
            e.send_at,
            crate::time::parse_rfc3339("2026-03-01T08:00:00Z")
        );
        assert_eq!(e.cancellation_key.as_deref(), Some("cart_7"));
        for bad in [
            json!("tomorrow"),
            json!("2026-03-01 09:00"),
            json!(1_772_352_000),
        ] {
            assert_eq!(field_of(json!({"type": "t", "sendAt": bad})), "sendAt");
        }
        for bad in [json!(""), json!("é".repeat(201)), json!(7)] {
            assert_eq!(
                field_of(json!({"type": "t", "cancellationKey": bad})),
                "cancellationKey"
            );
        }
        // 200 characters is the limit, however many bytes they take.
        let key = "é".repeat(200);
        let e = Event::from_json(json!({"type": "t", "cancellationKey": key})).unwrap();
        assert_eq!(e.cancellation_key, Some(key));
        // Neither goes into the stored body: each has its own column.
        let body = serde_json::to_value(&e).unwrap();
        assert!(body.get("cancellationKey").is_none() && body.get("sendAt").is_none());
    }

    #[test]
    fn send_at_may_be_a_year_ahead_and_no_more() {
        let now = 1_000_000;
        let at = |send_at: i64| {
            let mut e = Event::new("t", vec![], json!({}));
            e.send_at = Some(send_at);
            e.validate_send_at(now)
        };
        assert!(at(now - 5_000).is_ok(), "a time past means now");
        assert!(at(now + MAX_SEND_AHEAD_MS).is_ok());
        assert!(
            matches!(at(now + MAX_SEND_AHEAD_MS + 1), Err(NotifyError::Invalid { field, .. }) if field == "sendAt")
        );
    }

    #[test]
    fn validation_names_unknown_types_and_missing_fields() {
        let r = Registry::parse(
            "r",
            r#"{"types": {"t": {"channels": ["inbox"], "required": ["a"], "sample": {"a": 1}}}}"#,
        )
        .unwrap();
        let e = Event::new("nope", vec![], json!({}));
        assert!(matches!(e.validate(&r), Err(NotifyError::UnknownType(t)) if t == "nope"));
        let e = Event::new("t", vec![], json!({"a": null}));
        assert!(
            matches!(e.validate(&r), Err(NotifyError::Invalid { field, .. }) if field == "payload.a")
        );
        assert!(Event::new("t", vec![], json!({"a": 0}))
            .validate(&r)
            .is_ok());
    }
}
