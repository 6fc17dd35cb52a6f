//! Quiet hours (SPEC 9) against the real binary: a user's `timezone` and
//! `quietHours` (set through `PUT /v1/users/{id}` or `PUT /v1/me/settings`)
//! hold a non-critical email created inside the window until the window
//! ends in the user's zone; the inbox row is immediate and a critical type
//! is never held. Each test stands the server a few seconds before the
//! window's end with `HERALD_TEST_CLOCK_OFFSET_MS` instead of waiting.

use std::time::Duration;

use herald::args;
use herald::time::{rfc3339, system_now_ms};
use jiff::tz::TimeZone;
use serde_json::{json, Value};

use crate::delivery_engine::role_changed;
use crate::escalation::{catalog, mention, settle};
use crate::support::app::emails_to;
use crate::support::{wait_until, FakeResend, TestServer, TestServerBuilder};

const WAIT: Duration = Duration::from_secs(20);
const ZONE: &str = "America/New_York";

/// The next 08:00 in New York at least a minute away, as epoch ms.
fn next_eight_am_in_new_york() -> i64 {
    let zone = TimeZone::get(ZONE).unwrap();
    let now = jiff::Timestamp::now();
    let mut date = now.to_zoned(zone.clone()).date();
    loop {
        let at = date
            .at(8, 0, 0, 0)
            .to_zoned(zone.clone())
            .unwrap()
            .timestamp()
            .as_millisecond();
        if at > now.as_millisecond() + 60_000 {
            return at;
        }
        date = date.tomorrow().unwrap();
    }
}

/// `builder` with herald's clock standing `before_ms` before `end` (the
/// system clock's pace), and `end` on the system clock.
fn standing_before(
    builder: TestServerBuilder,
    end: i64,
    before_ms: i64,
) -> (TestServerBuilder, i64) {
    let offset = end - before_ms - system_now_ms();
    let builder = builder.env("HERALD_TEST_CLOCK_OFFSET_MS", &offset.to_string());
    (builder, end - offset)
}

/// A user with New York quiet hours from 22:00 to 08:00, and their token.
fn quiet_user(server: &TestServer, id: &str) -> String {
    let body = json!({"email": format!("{id}@acme.test"), "name": id, "timezone": ZONE,
                      "quietHours": {"from": "22:00", "to": "08:00"}});
    let (status, user) = server.put(
        &format!("/v1/users/{id}"),
        Some(server.service_key()),
        &body,
    );
    assert_eq!(status, 201, "{user}");
    let (status, token) = server.post(
        &format!("/v1/users/{id}/tokens"),
        Some(server.service_key()),
        json!({}),
    );
    assert_eq!(status, 201, "{token}");
    token["token"].as_str().unwrap().to_string()
}

fn post(server: &TestServer, event: Value) -> Value {
    let (status, body) = server.post_event(event);
    assert_eq!(status, 202, "{body}");
    server.wait_event_done(body["eventId"].as_str().unwrap(), WAIT)
}

fn email_of(event: &Value) -> Value {
    event["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["channel"] == "email")
        .cloned()
        .unwrap_or(Value::Null)
}

fn sleep_until(system_ms: i64) {
    std::thread::sleep(Duration::from_millis(
        (system_ms - system_now_ms()).max(0) as u64
    ));
}

#[test]
fn an_email_created_in_quiet_hours_waits_for_their_end_and_the_inbox_row_does_not() {
    let mail = FakeResend::start();
    let end = next_eight_am_in_new_york();
    let (builder, end_on_system_clock) =
        standing_before(TestServer::builder().mail(&mail), end, 4_000);
    let server = builder.start();
    let token = quiet_user(&server, "nina");

    let held = post(&server, role_changed(json!(["nina"]), "mem_1"));
    let critical = post(
        &server,
        json!({"type": "org.billing.past_due", "recipients": ["nina"],
               "payload": {"orgName": "Acme", "plan": "pro"}}),
    );
    // The inbox rows are there at once, and the email counts sent.
    let (_, inbox) = server.get("/v1/inbox", Some(&token));
    assert_eq!(inbox["items"].as_array().unwrap().len(), 2, "{inbox}");
    assert_eq!(held["result"]["channels"]["email"]["sent"], 1, "{held}");
    let email = email_of(&held);
    assert_eq!(email["status"], "held", "{held}");
    assert_eq!(email["releaseAt"], rfc3339(end), "{held}");
    assert!(email.get("releaseUnless").is_none(), "{email}");
    // A critical type is never held.
    assert_ne!(email_of(&critical)["status"], "held", "{critical}");
    assert!(mail.wait_for_accepted(1, WAIT));
    assert!(
        system_now_ms() < end_on_system_clock,
        "the critical email came at once"
    );
    let first = &mail.accepted()[0].subject;
    assert!(first.contains("past due"), "{first:?}");

    sleep_until(end_on_system_clock - 300);
    assert_eq!(
        mail.accepted_count(),
        1,
        "nothing more before the window ends"
    );
    settle(&server);
    assert_eq!(emails_to(&mail, "nina@acme.test"), 2);
    let released: i64 = server.row(
        "SELECT released_at FROM deliveries WHERE status = 'sent' AND released_at IS NOT NULL",
        args![],
        |r| r.get(0),
    );
    assert!(
        released >= end,
        "released at {released}, before the end {end}"
    );
}

#[test]
fn an_escalation_due_in_quiet_hours_waits_for_their_end_and_is_checked_again_then() {
    let mail = FakeResend::start();
    let catalog = catalog(2, "seen");
    let end = next_eight_am_in_new_york();
    let (builder, end_on_system_clock) =
        standing_before(catalog.serve(TestServer::builder().mail(&mail)), end, 6_000);
    let server = builder.start();
    quiet_user(&server, "ann");
    let ben = quiet_user(&server, "ben");
    post(&server, mention(json!(["ann", "ben"]), 1));
    let escalation_due: i64 = server.count("SELECT MIN(next_attempt_at) FROM deliveries");
    assert!(
        escalation_due < end - 1_000,
        "the setup took too long: the escalation is due at {escalation_due}, the window ends at {end}"
    );

    // Due in quiet hours: held again until they end, not sent.
    let deferred = || {
        server.count(&format!(
            "SELECT COUNT(*) FROM deliveries WHERE status = 'held' AND next_attempt_at = {end}"
        ))
    };
    assert!(wait_until(WAIT, || deferred() == 2), "{}", server.logs());
    assert_eq!(mail.accepted_count(), 0);
    // Ben sees the row while the email waits: the release reads it then.
    let row: i64 = server.row(
        "SELECT id FROM notifications WHERE user_id = 'ben'",
        args![],
        |r| r.get(0),
    );
    let (status, body) = server.post(&format!("/v1/inbox/ntf_{row}/seen"), Some(&ben), json!({}));
    assert_eq!(status, 204, "{body}");
    sleep_until(end_on_system_clock - 300);
    assert_eq!(mail.accepted_count(), 0);
    settle(&server);

    assert_eq!(emails_to(&mail, "ann@acme.test"), 1);
    assert_eq!(emails_to(&mail, "ben@acme.test"), 0);
    let outcomes: Vec<(String, String, i64)> = server.rows(
        "SELECT recipient, status, released_at FROM deliveries ORDER BY recipient",
        args![],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    );
    assert_eq!(outcomes.len(), 2);
    assert_eq!(
        (outcomes[0].0.as_str(), outcomes[0].1.as_str()),
        ("ann", "sent")
    );
    assert_eq!(
        (outcomes[1].0.as_str(), outcomes[1].1.as_str()),
        ("ben", "skipped")
    );
    assert!(outcomes.iter().all(|o| o.2 >= end), "{outcomes:?}");
}

/// The user as `GET /v1/me` shows it.
fn me(server: &TestServer, token: &str) -> Value {
    let (status, me) = server.get("/v1/me", Some(token));
    assert_eq!(status, 200, "{me}");
    me
}

fn assert_invalid(status: u16, answer: &Value, field: &str) {
    assert_eq!(status, 422, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with(&format!("{field}: ")),
        "{field}: {answer}"
    );
}

#[test]
fn settings_are_validated_a_left_out_field_stays_and_null_clears() {
    let server = TestServer::start();
    let key = server.service_key().to_string();
    let paris = json!({"email": "bob@acme.test", "name": "Bob", "timezone": "europe/paris",
                       "quietHours": {"from": "22:00", "to": "07:30"}});
    let (status, bob) = server.put("/v1/users/bob", Some(&key), &paris);
    assert_eq!(status, 201, "{bob}");
    let expected = json!({"id": "bob", "email": "bob@acme.test", "name": "Bob",
                          "timezone": "Europe/Paris", "quietHours": {"from": "22:00", "to": "07:30"},
                          "locale": null});
    assert_eq!(bob, expected);
    // An existing caller sends only email and name: the settings stay.
    let (status, bob) = server.put(
        "/v1/users/bob",
        Some(&key),
        json!({"email": "bob@acme.test", "name": "Robert"}),
    );
    assert_eq!(status, 200, "{bob}");
    assert_eq!(bob["timezone"], "Europe/Paris");
    assert_eq!(bob["quietHours"], expected["quietHours"]);
    let (_, token) = server.post("/v1/users/bob/tokens", Some(&key), json!({}));
    let token = token["token"].as_str().unwrap().to_string();
    let saved = me(&server, &token);
    assert_eq!(saved["name"], "Robert");
    assert_eq!(saved["quietHours"], expected["quietHours"]);

    // Bad input names the field and changes nothing, not even the email.
    for (settings, field) in [
        (json!({"timezone": "Mars/Olympus_Mons"}), "timezone"),
        (json!({"timezone": 5}), "timezone"),
        (
            json!({"quietHours": {"from": "22:00", "to": "22:00"}}),
            "quietHours",
        ),
        (json!({"quietHours": "22:00-08:00"}), "quietHours"),
        (
            json!({"quietHours": {"from": "7:00", "to": "08:00"}}),
            "quietHours.from",
        ),
        (
            json!({"quietHours": {"from": "22:00", "to": "24:00"}}),
            "quietHours.to",
        ),
        (json!({"quietHours": {"from": "22:00"}}), "quietHours.to"),
    ] {
        let mut body = json!({"email": "robert@elsewhere.test", "name": "Robert"});
        body.as_object_mut()
            .unwrap()
            .extend(settings.as_object().unwrap().clone());
        let (status, answer) = server.put("/v1/users/bob", Some(&key), &body);
        assert_invalid(status, &answer, field);
        let (status, answer) = server.put("/v1/me/settings", Some(&token), &settings);
        assert_invalid(status, &answer, field);
        assert_eq!(me(&server, &token), saved, "{settings}");
    }

    // The user's own settings: left out stays, null clears.
    let put = |body: Value| {
        let (status, answer) = server.put("/v1/me/settings", Some(&token), &body);
        assert_eq!(status, 200, "{body}: {answer}");
        assert_eq!(answer, me(&server, &token));
        answer
    };
    assert_eq!(put(json!({})), saved);
    let cleared = put(json!({"timezone": null}));
    assert_eq!(cleared["timezone"], Value::Null);
    assert_eq!(cleared["quietHours"], expected["quietHours"]);
    let tokyo =
        put(json!({"timezone": "Asia/Tokyo", "quietHours": {"from": "01:00", "to": "06:00"}}));
    assert_eq!(tokyo["timezone"], "Asia/Tokyo");
    assert_eq!(tokyo["quietHours"], json!({"from": "01:00", "to": "06:00"}));
    let stored: (String, i64, i64) = server.row(
        "SELECT timezone, quiet_from, quiet_to FROM users WHERE id = 'bob'",
        args![],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    );
    assert_eq!(stored, ("Asia/Tokyo".to_string(), 60, 360));
    let off = put(json!({"quietHours": null}));
    assert_eq!(off["quietHours"], Value::Null);
    assert_eq!(off["timezone"], "Asia/Tokyo");

    // Only the user's own token, and only these two fields.
    let (status, answer) = server.put("/v1/me/settings", Some(&key), json!({}));
    assert_eq!(status, 403, "{answer}");
    let (status, answer) = server.put("/v1/me/settings", Some(&token), json!({"email": "x@y.z"}));
    assert_eq!(status, 422, "{answer}");
    assert_eq!(me(&server, &token), off);
}
