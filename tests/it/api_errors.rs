//! Bad input gets a clear 4xx JSON error and changes nothing: every case
//! below is followed by a count of every table an event could touch.

use serde_json::{json, Value};

use crate::support::TestServer;

fn assert_nothing_stored(server: &TestServer) {
    for table in ["outbox", "notifications", "deliveries"] {
        assert_eq!(
            server.count(&format!("SELECT COUNT(*) FROM {table}")),
            0,
            "{table} is empty"
        );
    }
}

fn assert_error(status: u16, body: &Value, expected: u16, mentions: &str) {
    assert_eq!(status, expected, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(body["error"]["code"].is_string(), "{body}");
    assert!(
        message.contains(mentions),
        "{message:?} should mention {mentions:?}"
    );
}

#[test]
fn invalid_events_are_rejected_with_the_field_named_and_nothing_stored() {
    let server = TestServer::start();
    server.create_user("u1", "u1@acme.test", "U1");
    let role = json!({"newRole": "admin", "before": "member", "orgName": "Acme", "actorName": "A"});
    let cases = [
        (
            json!({"type": "no.such.type", "recipients": ["u1"]}),
            422,
            "no.such.type",
        ),
        (
            json!({"type": "org.member.role_changed", "recipients": ["u1"], "payload": {"newRole": "admin"}}),
            422,
            "payload.before",
        ),
        (
            json!({"type": "org.member.role_changed", "recipients": ["ghost"], "payload": role}),
            422,
            "ghost",
        ),
        (
            json!({"type": "org.member.role_changed", "recipients": [{"email": "not-an-address"}], "payload": role}),
            422,
            "recipients[0].email",
        ),
        (
            json!({"type": "org.member.role_changed", "recipients": "u1", "payload": role}),
            422,
            "recipients",
        ),
        (json!({"recipients": ["u1"]}), 422, "type"),
        (json!(["not", "an", "object"]), 422, "body"),
    ];
    for (event, expected, mentions) in cases {
        let (status, body) = server.post_event(&event);
        assert_error(status, &body, expected, mentions);
    }
    assert_nothing_stored(&server);
}

#[test]
fn malformed_oversized_and_mistyped_bodies_are_4xx() {
    let server = TestServer::start();
    let key = server.service_key().to_string();
    let (status, body) = server.post_raw(
        "/v1/events",
        Some(key.as_str()),
        "application/json",
        b"{\"type\": ",
    );
    assert_error(status, &body, 400, "JSON");
    let (status, body) = server.post_raw("/v1/events", Some(key.as_str()), "text/plain", b"{}");
    assert_error(status, &body, 415, "application/json");
    let mut big = b"{\"type\": \"system.announcement\", \"payload\": {\"title\": \"".to_vec();
    big.extend(std::iter::repeat_n(b'x', 1024 * 1024 + 10));
    big.extend(b"\", \"body\": \"b\"}}");
    let (status, body) =
        server.post_raw("/v1/events", Some(key.as_str()), "application/json", &big);
    assert_error(status, &body, 413, "exceeds");
    let (status, body) = server.put("/v1/users/x", Some(key.as_str()), json!({"email": "nope"}));
    assert_error(status, &body, 422, "email");
    let (status, body) = server.put(
        "/v1/users/x",
        Some(key.as_str()),
        json!({"name": "no email"}),
    );
    assert_error(status, &body, 422, "email");
    assert_eq!(server.count("SELECT COUNT(*) FROM users"), 0);
    assert_nothing_stored(&server);
}

#[test]
fn missing_wrong_and_misused_tokens_are_401_and_403() {
    let server = TestServer::start();
    let user_token = server.create_user("u1", "u1@acme.test", "U1");
    let event = json!({"type": "system.announcement", "recipients": ["u1"], "payload": {"title": "t", "body": "b"}});

    let (status, body) = server.post("/v1/events", None, &event);
    assert_error(status, &body, 401, "Authorization");
    let (status, body) = server.post("/v1/events", Some("hrld_wrong"), &event);
    assert_error(status, &body, 401, "invalid token");
    let (status, body) = server.post("/v1/events", Some(user_token.as_str()), &event);
    assert_error(status, &body, 403, "service key");
    let (status, body) = server.post("/v1/users/u1/tokens", Some(user_token.as_str()), json!({}));
    assert_error(status, &body, 403, "service key");
    let key = server.service_key().to_string();
    let (status, body) = server.get("/v1/inbox", Some(key.as_str()));
    assert_error(status, &body, 403, "user token");
    let (status, body) = server.get("/v1/inbox", Some("hrld_wrong"));
    assert_error(status, &body, 401, "invalid token");
    assert_nothing_stored(&server);

    let (status, me) = server.get("/v1/me", Some(user_token.as_str()));
    assert_eq!((status, me["id"].as_str()), (200, Some("u1")));
}

#[test]
fn unknown_routes_and_methods_and_ids() {
    let server = TestServer::start();
    let key = server.service_key().to_string();
    let k = Some(key.as_str());
    assert_error(
        server.get("/v1/nothing", k).0,
        &server.get("/v1/nothing", k).1,
        404,
        "no such endpoint",
    );
    let (status, body) = server.delete("/v1/events", k);
    assert_error(status, &body, 405, "not allowed");
    let (status, body) = server.get("/v1/events/evt_missing", k);
    assert_error(status, &body, 404, "not found");
    let (status, body) = server.post("/v1/users/nobody/tokens", k, json!({}));
    assert_error(status, &body, 404, "nobody");
    let (status, body) = server.request(
        "GET",
        "/v1/events/%ff",
        &[("Authorization", &format!("Bearer {key}"))],
        None,
    );
    assert_error(status, &body, 400, "percent-encoded");
}
