//! The events the bench sends: user `u{i % users}`'s role changed, as a
//! library `Event` (dispatch) or as the JSON bodies of `POST /v1/events` and
//! `POST /v1/events/bulk` (the HTTP scenarios).

use herald::notify::{Event, Recipient};
use serde_json::json;

/// Event `i` for the library, its subject `bench_{i}`.
pub fn role_changed(i: usize, users: usize) -> Event {
    let mut event = Event::new(
        "org.member.role_changed",
        vec![Recipient::User(format!("u{}", i % users))],
        json!({"newRole": "admin", "before": "member", "orgName": "Acme", "actorName": "Alice"}),
    );
    event.subject_id = Some(format!("bench_{i}"));
    event
}

/// Event `i` as a `POST /v1/events` body, its subject `bench_{i}`.
pub fn event_json(i: usize, users: usize) -> String {
    event_to(&format!("bench_{i}"), &[format!("u{}", i % users)])
}

/// An event about `subject` to the users `to`.
pub fn event_to(subject: &str, to: &[String]) -> String {
    format!(
        r#"{{"type":"org.member.role_changed","recipients":{},"subjectId":"{subject}","payload":{{"newRole":"admin","before":"member","orgName":"Acme","actorName":"Alice"}}}}"#,
        json!(to)
    )
}

/// Events `first..end` as one `POST /v1/events/bulk` body.
pub fn bulk_json(first: usize, end: usize, users: usize) -> String {
    let events: Vec<String> = (first..end).map(|i| event_json(i, users)).collect();
    format!(r#"{{"events":[{}]}}"#, events.join(","))
}
