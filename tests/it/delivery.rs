//! The seam end to end over HTTP: an event becomes exactly one inbox row per
//! user and exactly one email per recipient at the (fake) provider, rendered
//! and authenticated as Resend expects.

use std::time::Duration;

use serde_json::json;

use crate::support::{result, FakeResend, TestServer};

const WAIT: Duration = Duration::from_secs(10);

fn role_changed(recipients: serde_json::Value) -> serde_json::Value {
    json!({
        "type": "org.member.role_changed",
        "recipients": recipients,
        "subjectId": "mem_1",
        "payload": {"newRole": "admin", "before": "member", "orgName": "Acme <Ltd>", "actorName": "Alice"}
    })
}

#[test]
fn an_event_for_a_user_gives_one_inbox_row_and_one_email() {
    let mail = FakeResend::start();
    let server = TestServer::builder().mail(&mail).start();
    let token = server.create_user("carol", "carol@acme.test", "Carol");

    let (status, body) = server.post_event(role_changed(json!(["carol"])));
    assert_eq!(status, 202, "{body}");
    let event_id = body["eventId"].as_str().unwrap().to_string();
    let event = server.wait_event_done(&event_id, WAIT);
    // One recipient, reached on both channels.
    assert_eq!(event["result"], result([1, 0, 0], [1, 0, 0], [1, 0, 0]));

    let (status, inbox) = server.get("/v1/inbox", Some(token.as_str()));
    assert_eq!(status, 200);
    let items = inbox["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{inbox}");
    assert_eq!(items[0]["type"], "org.member.role_changed");
    assert_eq!(items[0]["title"], "Your role in Acme <Ltd> is now admin");
    assert_eq!(items[0]["payload"]["actorName"], "Alice");

    assert!(
        mail.wait_for_accepted(1, WAIT),
        "no email accepted:\n{}",
        server.logs()
    );
    std::thread::sleep(Duration::from_millis(200));
    let sent = mail.accepted();
    assert_eq!(sent.len(), 1, "exactly one email");
    assert_eq!(mail.request_count(), 1, "exactly one POST to the provider");
    let email = &sent[0];
    assert_eq!(email.to, vec!["carol@acme.test".to_string()]);
    assert_eq!(
        email.authorization,
        format!("Bearer {}", crate::support::server::TEST_MAIL_API_KEY)
    );
    assert_eq!(email.subject, "Your role in Acme <Ltd> changed to admin");
    let html = email.html.as_deref().unwrap();
    assert!(html.contains("Acme &lt;Ltd&gt;"), "html is escaped: {html}");
    assert!(email.text.as_deref().unwrap().contains("Acme <Ltd>"));

    let deliveries = server.wait_event_done(&event_id, WAIT)["deliveries"].clone();
    let email_delivery = deliveries
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["channel"] == "email")
        .unwrap()
        .clone();
    assert_eq!(
        email.idempotency_key.as_deref(),
        email_delivery["id"].as_str()
    );
    assert!(crate::support::wait_until(WAIT, || {
        server.count(
            "SELECT COUNT(*) FROM deliveries WHERE status = 'sent' AND provider_id IS NOT NULL",
        ) == 1
    }));
}

#[test]
fn an_address_only_recipient_gets_an_email_and_no_inbox_row() {
    let mail = FakeResend::start();
    let server = TestServer::builder().mail(&mail).start();
    let (status, body) = server.post_event(role_changed(json!([{"email": "new@example.com"}])));
    assert_eq!(status, 202, "{body}");
    let event_id = body["eventId"].as_str().unwrap().to_string();
    let event = server.wait_event_done(&event_id, WAIT);
    // Counted on the email channel alone: it has no inbox to count.
    assert_eq!(event["result"], result([1, 0, 0], [0, 0, 0], [1, 0, 0]));
    assert!(mail.wait_for_accepted(1, WAIT));
    assert_eq!(mail.accepted()[0].to, vec!["new@example.com".to_string()]);

    // Wait until the send's outcome is recorded on the event: then the
    // event is fully dispatched and nothing else is on its way, so the
    // counts below are final rather than early.
    let mut event = serde_json::Value::Null;
    let recorded = crate::support::wait_until(WAIT, || {
        event = server.wait_event_done(&event_id, WAIT);
        event["deliveries"]
            .as_array()
            .is_some_and(|ds| !ds.is_empty() && ds.iter().all(|d| d["status"] == "sent"))
    });
    assert!(recorded, "the email's outcome was never recorded: {event}");
    let deliveries = event["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 1, "one delivery, no inbox: {event}");
    assert_eq!(
        (
            deliveries[0]["channel"].as_str(),
            deliveries[0]["recipient"].as_str(),
            deliveries[0]["attempts"].as_i64()
        ),
        (Some("email"), Some("email:new@example.com"), Some(1)),
        "{event}"
    );
    assert_eq!(mail.request_count(), 1, "exactly one POST to the provider");
    assert_eq!(server.count("SELECT COUNT(*) FROM notifications"), 0);
}

#[test]
fn an_empty_recipient_list_is_a_clean_no_op() {
    let mail = FakeResend::start();
    let server = TestServer::builder().mail(&mail).start();
    let (status, body) = server.post_event(role_changed(json!([])));
    assert_eq!(status, 202, "{body}");
    let event = server.wait_event_done(body["eventId"].as_str().unwrap(), WAIT);
    assert_eq!(event["result"], result([0, 0, 0], [0, 0, 0], [0, 0, 0]));
    assert_eq!(event["deliveries"], json!([]));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(mail.request_count(), 0);
    assert_eq!(server.count("SELECT COUNT(*) FROM notifications"), 0);
    assert_eq!(server.count("SELECT COUNT(*) FROM deliveries"), 0);
}

#[test]
fn a_repeated_idempotency_key_returns_the_first_event() {
    let mail = FakeResend::start();
    let server = TestServer::builder().mail(&mail).start();
    server.create_user("dave", "dave@acme.test", "Dave");
    let mut event = role_changed(json!(["dave"]));
    event["idempotencyKey"] = json!("role-change-42");
    let (first_status, first) = server.post_event(&event);
    let (second_status, second) = server.post_event(&event);
    assert_eq!((first_status, second_status), (202, 200));
    assert_eq!(first["eventId"], second["eventId"]);
    assert_eq!(second["duplicate"], true);
    server.wait_event_done(first["eventId"].as_str().unwrap(), WAIT);
    assert_eq!(server.count("SELECT COUNT(*) FROM outbox"), 1);
    assert!(mail.wait_for_accepted(1, WAIT));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(mail.accepted_count(), 1);
}

#[test]
fn an_in_app_only_type_writes_no_email() {
    let mail = FakeResend::start();
    let server = TestServer::builder().mail(&mail).start();
    let token = server.create_user("erin", "erin@acme.test", "Erin");
    let (status, body) = server.post_event(json!({
        "type": "system.announcement", "recipients": ["erin"],
        "payload": {"title": "Maintenance", "body": "Tonight at 22:00"}
    }));
    assert_eq!(status, 202);
    server.wait_event_done(body["eventId"].as_str().unwrap(), WAIT);
    let (_, inbox) = server.get("/v1/inbox", Some(token.as_str()));
    assert_eq!(inbox["items"].as_array().unwrap().len(), 1);
    assert_eq!(server.count("SELECT COUNT(*) FROM deliveries"), 0);
    assert_eq!(mail.request_count(), 0);
}

#[test]
fn herald_send_delivers_from_the_command_line_beside_a_running_server() {
    let mail = FakeResend::start();
    let server = TestServer::builder().mail(&mail).start();
    let token = server.create_user("frank", "frank@acme.test", "Frank");
    let out = server.run_cli(&[
        "send",
        "org.billing.past_due",
        "--to",
        "frank",
        "--to",
        "billing@example.com",
        "--payload",
        r#"{"orgName": "Acme", "plan": "pro"}"#,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let view: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(view["status"], "dispatched");
    // Two recipients: frank on both channels, the address by email.
    assert_eq!(
        view["result"],
        result([2, 0, 0], [1, 0, 0], [2, 0, 0]),
        "{view}"
    );
    // The command sent the emails itself, before exiting: created together,
    // they went out in one batch request.
    assert_eq!(mail.accepted_count(), 2);
    let requests = mail.requests();
    assert_eq!(
        (requests.len(), requests[0].path.as_str()),
        (1, "/emails/batch")
    );
    let (_, inbox) = server.get("/v1/inbox", Some(token.as_str()));
    assert_eq!(inbox["items"].as_array().unwrap().len(), 1);
    // The running server neither dispatches nor sends any of it again.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(mail.request_count(), 1);
    // The command left as it came: only the server is registered.
    assert_eq!(server.count("SELECT COUNT(*) FROM instances"), 1);
    assert_eq!(server.count("SELECT COUNT(*) FROM notifications"), 1);

    let out = server.run_cli(&["send", "no.such.type", "--to", "frank"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no.such.type"));
    assert_eq!(server.count("SELECT COUNT(*) FROM outbox"), 1);
}

#[test]
fn a_bulk_request_commits_all_its_events_or_none() {
    let mail = FakeResend::start();
    let server = TestServer::builder().mail(&mail).start();
    let token = server.create_user("gina", "gina@acme.test", "Gina");
    let key = server.service_key().to_string();
    let announce = |i: usize| {
        json!({"type": "system.announcement", "recipients": ["gina"],
               "payload": {"title": format!("Note {i}"), "body": "b"}})
    };

    // One bad event refuses the whole request, naming it by index.
    let bad = json!({"events": [announce(0), role_changed(json!(["nobody"]))]});
    let (status, body) = server.post("/v1/events/bulk", Some(key.as_str()), &bad);
    assert_eq!(status, 422, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("events[1].recipients[0]"));
    assert_eq!(server.count("SELECT COUNT(*) FROM outbox"), 0);

    let mut keyed = announce(2);
    keyed["idempotencyKey"] = json!("note-2");
    let good = json!({"events": [announce(0), announce(1), keyed,
                                 role_changed(json!(["gina", {"email": "g@example.com"}]))]});
    let (status, body) = server.post("/v1/events/bulk", Some(key.as_str()), &good);
    assert_eq!(status, 202, "{body}");
    let ids: Vec<String> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["eventId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 4);
    for id in &ids {
        server.wait_event_done(id, WAIT);
    }
    let (_, inbox) = server.get("/v1/inbox?limit=10", Some(token.as_str()));
    let titles: Vec<&str> = inbox["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles.len(), 4);
    assert_eq!(
        &titles[1..],
        ["Note 2", "Note 1", "Note 0"],
        "in request order"
    );
    assert!(mail.wait_for_accepted(2, WAIT));

    // A repeat of a keyed event reports the first one as a duplicate.
    let (status, body) = server.post(
        "/v1/events/bulk",
        Some(key.as_str()),
        json!({"events": [keyed_again()]}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["events"][0]["eventId"], ids[2].as_str());
    assert_eq!(body["events"][0]["duplicate"], true);

    for (body, mentions) in [
        (json!({"events": []}), "events"),
        (json!({"events": "x"}), "events"),
        (json!({"events": [announce(0)], "extra": 1}), "extra"),
    ] {
        let (status, reply) = server.post("/v1/events/bulk", Some(key.as_str()), &body);
        assert_eq!(status, 422, "{reply}");
        assert!(reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains(mentions));
    }
    assert_eq!(server.count("SELECT COUNT(*) FROM outbox"), 4);
}

fn keyed_again() -> serde_json::Value {
    json!({"type": "system.announcement", "recipients": ["gina"], "idempotencyKey": "note-2",
           "payload": {"title": "Note 2", "body": "b"}})
}
