//! Preferences (SPEC 2.3 rule 2) against the real binary: per-type and `*`
//! channel switches, registry `defaultOff`, critical types that ignore them,
//! the counters in each event's result, and the `/v1/preferences` API.

use std::time::Duration;

use serde_json::{json, Value};

use crate::policy_catalog::Catalog;
use crate::support::{result, FakeResend, TestServer};

const WAIT: Duration = Duration::from_secs(10);

fn role_changed(to: &str, subject: &str) -> Value {
    json!({
        "type": "org.member.role_changed", "recipients": [to], "subjectId": subject,
        "payload": {"newRole": "admin", "before": "member", "orgName": "Acme", "actorName": "Alice"}
    })
}

fn past_due(to: &str) -> Value {
    json!({
        "type": "org.billing.past_due", "recipients": [to], "subjectId": "org_1",
        "payload": {"orgName": "Acme", "plan": "pro"}
    })
}

fn invitation(to: &str) -> Value {
    json!({
        "type": "org.invitation.sent", "recipients": [to], "subjectId": "inv_1",
        "payload": {"invitedEmail": "carol@acme.test", "role": "member", "orgName": "Acme",
                    "inviterName": "Alice", "acceptUrl": "http://x.test/accept?token=t"}
    })
}

/// Posts `event`, waits for its dispatch, returns its result.
fn send(server: &TestServer, event: Value) -> Value {
    let (status, body) = server.post_event(&event);
    assert_eq!(status, 202, "{body}");
    server.wait_event_done(body["eventId"].as_str().unwrap(), WAIT)["result"].clone()
}

/// One user on a type with both channels, reached on both.
fn both_sent() -> Value {
    result([1, 0, 0], [1, 0, 0], [1, 0, 0])
}

/// One user whose email is switched off: still `sent`, by the inbox.
fn email_suppressed() -> Value {
    result([1, 0, 0], [1, 0, 0], [0, 0, 1])
}

fn set_pref(server: &TestServer, token: &str, ty: &str, channel: &str, enabled: bool) {
    let body = json!({"type": ty, "channel": channel, "enabled": enabled});
    let (status, answer) = server.put("/v1/preferences", Some(token), &body);
    assert_eq!(status, 200, "{answer}");
}

fn inbox_types(server: &TestServer, token: &str) -> Vec<String> {
    let (status, inbox) = server.get("/v1/inbox", Some(token));
    assert_eq!(status, 200, "{inbox}");
    inbox["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["type"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn email_off_for_a_type_gives_an_inbox_row_and_no_email() {
    let mail = FakeResend::start();
    let server = TestServer::builder().mail(&mail).start();
    let token = server.create_user("carol", "carol@acme.test", "Carol");
    set_pref(&server, &token, "org.member.role_changed", "email", false);

    assert_eq!(
        send(&server, role_changed("carol", "mem_1")),
        email_suppressed()
    );
    assert_eq!(inbox_types(&server, &token), ["org.member.role_changed"]);
    assert_eq!(server.count("SELECT COUNT(*) FROM deliveries"), 0);

    // Another type still emails: the switch is per type.
    assert_eq!(send(&server, invitation("carol")), both_sent());
    assert!(mail.wait_for_accepted(1, WAIT), "{}", server.logs());
    std::thread::sleep(Duration::from_millis(300));
    let sent = mail.accepted();
    assert_eq!(sent.len(), 1);
    assert!(sent[0].subject.contains("invited"), "{}", sent[0].subject);
}

#[test]
fn star_email_off_stops_every_non_critical_email_but_a_critical_type_still_emails() {
    let mail = FakeResend::start();
    let server = TestServer::builder().mail(&mail).start();
    let token = server.create_user("carol", "carol@acme.test", "Carol");
    set_pref(&server, &token, "*", "email", false);
    // A critical type ignores even its own switch.
    set_pref(&server, &token, "org.billing.past_due", "email", false);

    assert_eq!(
        send(&server, role_changed("carol", "mem_1")),
        email_suppressed()
    );
    assert_eq!(send(&server, invitation("carol")), email_suppressed());
    assert_eq!(server.count("SELECT COUNT(*) FROM deliveries"), 0);

    assert_eq!(send(&server, past_due("carol")), both_sent());
    assert!(mail.wait_for_accepted(1, WAIT), "{}", server.logs());
    std::thread::sleep(Duration::from_millis(300));
    let sent = mail.accepted();
    assert_eq!(sent.len(), 1, "only the critical type emails");
    assert_eq!(sent[0].to, ["carol@acme.test"]);
    assert_eq!(
        server.count(
            "SELECT COUNT(*) FROM deliveries WHERE event_seq = (SELECT MAX(seq) FROM outbox)"
        ),
        1
    );
    assert_eq!(
        inbox_types(&server, &token).len(),
        3,
        "the inbox is untouched"
    );

    // Inbox off for everything: a non-critical event reaches nobody.
    set_pref(&server, &token, "*", "inbox", false);
    assert_eq!(
        send(&server, role_changed("carol", "mem_2")),
        result([0, 0, 1], [0, 0, 1], [0, 0, 1])
    );
}

#[test]
fn a_registry_default_off_channel_is_off_until_the_user_switches_it_on() {
    let mail = FakeResend::start();
    let mut catalog = Catalog::builtin();
    catalog.set("org.member.role_changed", "defaultOff", json!(["email"]));
    let server = catalog.serve(TestServer::builder().mail(&mail)).start();
    let token = server.create_user("carol", "carol@acme.test", "Carol");

    let (_, prefs) = server.get("/v1/preferences", Some(&token));
    let item = find(&prefs, "org.member.role_changed");
    assert_eq!(item["channels"], json!({"inbox": true, "email": false}));

    assert_eq!(
        send(&server, role_changed("carol", "mem_1")),
        email_suppressed()
    );
    set_pref(&server, &token, "org.member.role_changed", "email", true);
    assert_eq!(send(&server, role_changed("carol", "mem_2")), both_sent());
    assert!(mail.wait_for_accepted(1, WAIT), "{}", server.logs());
}

fn find<'a>(prefs: &'a Value, ty: &str) -> &'a Value {
    prefs["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"] == ty)
        .unwrap_or_else(|| panic!("no {ty} in {prefs}"))
}

#[test]
fn the_preferences_api_lists_every_type_and_refuses_unknown_types_and_channels() {
    let server = TestServer::start();
    let token = server.create_user("carol", "carol@acme.test", "Carol");

    let (status, prefs) = server.get("/v1/preferences", Some(&token));
    assert_eq!(status, 200, "{prefs}");
    assert_eq!(prefs["items"][0]["type"], "*");
    assert_eq!(
        prefs["items"][0]["channels"],
        json!({"inbox": true, "email": true})
    );
    assert_eq!(
        find(&prefs, "system.announcement")["channels"],
        json!({"inbox": true})
    );
    assert_eq!(find(&prefs, "org.billing.past_due")["critical"], true);
    assert_eq!(
        prefs["items"].as_array().unwrap().len(),
        10,
        "* plus the 9 built-in types: {prefs}"
    );

    for (body, field) in [
        (
            json!({"type": "no.such.type", "channel": "email", "enabled": false}),
            "type",
        ),
        (
            json!({"type": "org.member.role_changed", "channel": "sms", "enabled": false}),
            "channel",
        ),
        (
            json!({"type": "*", "channel": "push", "enabled": false}),
            "channel",
        ),
        (
            json!({"type": "system.announcement", "channel": "email", "enabled": false}),
            "channel",
        ),
        (
            json!({"type": "org.member.role_changed", "channel": "email"}),
            "enabled",
        ),
        (
            json!({"type": "org.member.role_changed", "channel": "email", "enabled": "no"}),
            "enabled",
        ),
    ] {
        let (status, answer) = server.put("/v1/preferences", Some(&token), &body);
        assert_eq!(status, 422, "{body} -> {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(field), "{body} -> {message}");
    }
    assert_eq!(
        server.count("SELECT COUNT(*) FROM preferences"),
        0,
        "nothing stored"
    );

    let body = json!({"type": "org.member.role_changed", "channel": "email", "enabled": false});
    let (status, _) = server.put("/v1/preferences", Some(server.service_key()), &body);
    assert_eq!(status, 403, "the service key is not a user");
    let (status, _) = server.put("/v1/preferences", None, &body);
    assert_eq!(status, 401);

    let (status, answer) = server.put("/v1/preferences", Some(&token), &body);
    assert_eq!(status, 200, "{answer}");
    let (_, prefs) = server.get("/v1/preferences", Some(&token));
    assert_eq!(
        find(&prefs, "org.member.role_changed")["channels"],
        json!({"inbox": true, "email": false})
    );
    // Another user's preferences are their own.
    let other = server.create_user("dave", "dave@acme.test", "Dave");
    let (_, prefs) = server.get("/v1/preferences", Some(&other));
    assert_eq!(
        find(&prefs, "org.member.role_changed")["channels"],
        json!({"inbox": true, "email": true})
    );
}
