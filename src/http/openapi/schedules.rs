//! The schedules' shapes in `components.schemas` (`/v1/schedules`), apart
//! from `schemas.rs` because they are one feature's: the request, the
//! `repeat` rule (one variant per frequency, exactly the fields
//! `notify::recurrence` accepts for it) and the schedule as served.

use serde_json::{json, Map, Value};

use super::schemas::{recipients, schema};

/// Adds the schedules' schemas; the registry's types are the enum of `type`.
pub fn add(schemas: &mut Map<String, Value>, event_types: &[&str]) {
    let time = |description: &str| json!({"type": ["string", "null"], "format": "date-time", "description": description});
    schemas.insert(
        "ScheduleInput".into(),
        json!({
            "type": "object", "required": ["type", "repeat"], "additionalProperties": false,
            "properties": {
                "type": {"type": "string", "enum": event_types,
                         "description": "A notification type of the registry"},
                "recipients": recipients(),
                "subjectId": {"type": ["string", "null"], "maxLength": 200},
                "payload": {"type": ["object", "null"],
                            "description": "Every run's payload; must carry the type's required fields"},
                "repeat": schema("Repeat"),
                "startsAt": time("No run before this instant (default: now)"),
                "endsAt": time("No run after this instant; must be after startsAt")
            }
        }),
    );
    let at = |frequency: &str, extra: Value, required: &[&str]| {
        let mut properties = json!({
            "frequency": {"const": frequency},
            "hours": {"type": "integer", "minimum": 0, "maximum": 23,
                      "description": "Local hour of the run"},
            "minutes": {"type": "integer", "minimum": 0, "maximum": 59},
            "timezone": {"type": "string", "minLength": 1, "maxLength": 100,
                         "description": "An IANA time zone name, e.g. Europe/Paris"}
        });
        for (name, schema) in extra.as_object().into_iter().flatten() {
            properties[name] = schema.clone();
        }
        let mut all = vec!["frequency", "hours", "minutes", "timezone"];
        all.extend_from_slice(required);
        json!({"type": "object", "required": all, "additionalProperties": false,
               "properties": properties})
    };
    schemas.insert(
        "Repeat".into(),
        json!({
            "description": "When a schedule runs, in its time zone's local time. A time a \
                daylight-saving gap skips runs as far after the gap as it was into it \
                (02:30 at 03:30); one a fold repeats runs once, the first time.",
            "examples": [{"frequency": "weekly", "days": ["mon", "tue", "wed", "thu", "fri"],
                          "hours": 9, "minutes": 25, "timezone": "Europe/Paris"}],
            "oneOf": [
                at("daily", json!({}), &[]),
                at("weekly", json!({"days": {"type": "array", "minItems": 1, "maxItems": 7,
                    "uniqueItems": true, "items": {"type": "string",
                    "enum": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]}}}), &["days"]),
                at("monthly", json!({"dayOfMonth": {"type": "integer", "minimum": 1,
                    "maximum": 31, "description": "A month without this day runs on its last"}}),
                    &["dayOfMonth"])
            ]
        }),
    );
    schemas.insert(
        "Schedule".into(),
        json!({
            "type": "object",
            "required": ["id", "type", "recipients", "subjectId", "payload", "repeat",
                         "startsAt", "endsAt", "nextRunAt", "lastRunAt", "runs", "createdAt"],
            "properties": {
                "id": {"type": "string"}, "type": {"type": "string"},
                "recipients": recipients(),
                "subjectId": {"type": ["string", "null"]},
                "payload": {"type": "object"},
                "repeat": schema("Repeat"),
                "startsAt": {"type": ["string", "null"]},
                "endsAt": {"type": ["string", "null"]},
                "nextRunAt": {"type": ["string", "null"],
                    "description": "The next run; null once the schedule has ended"},
                "lastRunAt": {"type": ["string", "null"],
                    "description": "The occurrence the latest run stood for"},
                "runs": {"type": "integer", "minimum": 0},
                "createdAt": {"type": "string"}
            }
        }),
    );
    schemas.insert(
        "SchedulePage".into(),
        json!({"type": "object", "required": ["items", "nextCursor"],
            "properties": {"items": {"type": "array", "items": schema("Schedule")},
                           "nextCursor": {"type": ["string", "null"]}}}),
    );
}
