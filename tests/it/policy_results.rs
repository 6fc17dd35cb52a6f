//! Event results (SPEC 2.3) against the real binary: `sent`, `deduped` and
//! `suppressedByPrefs` count recipients, each at most once, and
//! `result.channels` breaks the same counts down per channel; the served
//! result matches the OpenAPI document, `herald outbox list` shows it, and
//! a database from before the breakdown upgrades with its old results kept.

use herald::args;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::database::sqlite_only;
use crate::support::{result, FakeResend, TestServer};

const WAIT: Duration = Duration::from_secs(10);

fn role_changed(recipients: Value, subject: &str) -> Value {
    json!({
        "type": "org.member.role_changed", "recipients": recipients, "subjectId": subject,
        "payload": {"newRole": "admin", "before": "member", "orgName": "Acme", "actorName": "Alice"}
    })
}

/// Posts `event`, waits for its dispatch, returns the event's view.
fn send(server: &TestServer, event: Value) -> Value {
    let (status, body) = server.post_event(&event);
    assert_eq!(status, 202, "{body}");
    server.wait_event_done(body["eventId"].as_str().unwrap(), WAIT)
}

fn switch_off(server: &TestServer, token: &str, channel: &str) {
    let body = json!({"type": "org.member.role_changed", "channel": channel, "enabled": false});
    let (status, answer) = server.put("/v1/preferences", Some(token), &body);
    assert_eq!(status, 200, "{answer}");
}

#[test]
fn a_recipient_reached_on_both_channels_counts_sent_once() {
    let mail = FakeResend::start();
    let server = TestServer::builder().mail(&mail).start();
    server.create_user("carol", "carol@acme.test", "Carol");
    let event = send(&server, role_changed(json!(["carol"]), "mem_1"));
    assert_eq!(
        event["result"],
        json!({"sent": 1, "deduped": 0, "suppressedByPrefs": 0, "throttled": 0, "channels": {
            "inbox": {"sent": 1, "deduped": 0, "suppressedByPrefs": 0, "throttled": 0},
            "email": {"sent": 1, "deduped": 0, "suppressedByPrefs": 0, "throttled": 0}}}),
        "{event}"
    );
    assert!(mail.wait_for_accepted(1, WAIT), "{}", server.logs());
}

#[test]
fn the_same_event_inside_the_window_counts_the_recipient_deduped_once() {
    let server = TestServer::start();
    server.create_user("carol", "carol@acme.test", "Carol");
    send(&server, role_changed(json!(["carol"]), "mem_1"));
    let again = send(&server, role_changed(json!(["carol"]), "mem_1"));
    // Deduped on each channel it would have got.
    assert_eq!(
        again["result"],
        result([0, 1, 0], [0, 1, 0], [0, 1, 0]),
        "{again}"
    );
}

#[test]
fn email_switched_off_counts_the_recipient_sent_and_the_email_channel_suppressed() {
    let server = TestServer::start();
    let token = server.create_user("carol", "carol@acme.test", "Carol");
    switch_off(&server, &token, "email");
    let event = send(&server, role_changed(json!(["carol"]), "mem_1"));
    assert_eq!(
        event["result"],
        result([1, 0, 0], [1, 0, 0], [0, 0, 1]),
        "{event}"
    );
}

#[test]
fn every_channel_switched_off_counts_the_recipient_suppressed_once() {
    let server = TestServer::start();
    let token = server.create_user("carol", "carol@acme.test", "Carol");
    switch_off(&server, &token, "email");
    switch_off(&server, &token, "inbox");
    let event = send(&server, role_changed(json!(["carol"]), "mem_1"));
    assert_eq!(
        event["result"],
        result([0, 0, 1], [0, 0, 1], [0, 0, 1]),
        "{event}"
    );
}

#[test]
fn two_users_and_an_address_count_three_recipients_sent() {
    let mail = FakeResend::start();
    let server = TestServer::builder().mail(&mail).start();
    server.create_user("carol", "carol@acme.test", "Carol");
    server.create_user("dave", "dave@acme.test", "Dave");
    let recipients = json!(["carol", "dave", {"email": "guest@example.com"}]);
    let event = send(&server, role_changed(recipients, "mem_1"));
    // The address has no inbox: two inbox rows, three emails.
    assert_eq!(
        event["result"],
        result([3, 0, 0], [2, 0, 0], [3, 0, 0]),
        "{event}"
    );
    assert!(mail.wait_for_accepted(3, WAIT), "{}", server.logs());
}

/// Every fate in one event: each recipient counts once at the top, in the
/// first rule that caught it; a user that no longer exists counts nowhere.
#[test]
fn each_recipient_counts_once_whatever_befell_its_channels() {
    let mut server = TestServer::start();
    server.create_user("ann", "ann@acme.test", "Ann");
    let bea = server.create_user("bea", "bea@acme.test", "Bea");
    let cid = server.create_user("cid", "cid@acme.test", "Cid");
    switch_off(&server, &bea, "email");
    switch_off(&server, &bea, "inbox");
    // Cid has email off and was notified already; so was the address.
    switch_off(&server, &cid, "email");
    send(
        &server,
        role_changed(json!(["cid", {"email": "guest@example.com"}]), "mem_1"),
    );

    // The API refuses unknown users: write the event as if "ghost" had
    // existed when it was accepted, then dispatch it at the next start.
    server.stop();
    let everyone = json!(["ann", "bea", "cid", "ghost", {"email": "guest@example.com"}]);
    // Written now: a row from 1970 would be past the log's retention, and
    // pruned as soon as it is dispatched.
    server.execute(
        "INSERT INTO outbox (id, type, body, created_at)
         VALUES ('evt_all', 'org.member.role_changed', ?1, ?2)",
        args![
            role_changed(everyone, "mem_1").to_string(),
            crate::support::app::now_secs() * 1000
        ],
    );
    let server = server.restart();
    let event = server.wait_event_done("evt_all", WAIT);
    assert_eq!(
        event["result"],
        // ann sent; bea suppressed; cid and the address deduped (cid on
        // both channels: dedup comes before preferences); ghost nowhere.
        result([1, 2, 1], [1, 1, 1], [1, 2, 1]),
        "{event}"
    );
    assert!(
        server.logs().contains("\"ghost\" no longer exists"),
        "{}",
        server.logs()
    );
}

#[test]
fn the_served_result_matches_the_openapi_document() {
    let server = TestServer::start();
    let token = server.create_user("carol", "carol@acme.test", "Carol");
    switch_off(&server, &token, "email");
    let event = send(&server, role_changed(json!(["carol"]), "mem_1"));
    let (status, doc) = server.get("/openapi.json", None);
    assert_eq!(status, 200);
    let event_view = json!({"$ref": "#/components/schemas/EventView"});
    assert_eq!(conforms(&doc, &event_view, &event), Ok(()), "{event}");
    let counts = &doc["components"]["schemas"]["ResultCounts"]["required"];
    assert_eq!(
        *counts,
        json!(["sent", "deduped", "suppressedByPrefs", "throttled"])
    );
    let required = &doc["components"]["schemas"]["DispatchResult"]["required"];
    assert!(
        required.as_array().unwrap().contains(&json!("channels")),
        "{required}"
    );
}

/// Whether `value` conforms to `schema`, for the keywords herald's document
/// uses on results: `$ref`, `oneOf`, `type`, `required` and `properties`.
fn conforms(doc: &Value, schema: &Value, value: &Value) -> Result<(), String> {
    if let Some(path) = schema["$ref"].as_str() {
        let name = path.trim_start_matches("#/components/schemas/");
        return conforms(doc, &doc["components"]["schemas"][name], value);
    }
    if let Some(options) = schema["oneOf"].as_array() {
        let matching = options
            .iter()
            .filter(|o| conforms(doc, o, value).is_ok())
            .count();
        return match matching {
            1 => Ok(()),
            n => Err(format!("{value} matches {n} of {schema}")),
        };
    }
    let kind = match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    let allowed = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![kind],
    };
    if !allowed.contains(&kind) {
        return Err(format!("{value} is not {allowed:?}"));
    }
    for field in schema["required"].as_array().into_iter().flatten() {
        let field = field.as_str().unwrap_or_default();
        if value.get(field).is_none() {
            return Err(format!("{value} lacks {field}"));
        }
    }
    for (field, sub) in schema["properties"].as_object().into_iter().flatten() {
        if let Some(v) = value.get(field) {
            conforms(doc, sub, v).map_err(|e| format!("{field}: {e}"))?;
        }
    }
    if let (Some(items), Some(values)) = (schema.get("items"), value.as_array()) {
        for v in values {
            conforms(doc, items, v)?;
        }
    }
    Ok(())
}

#[test]
fn the_outbox_command_shows_each_events_counts_and_channels() {
    let server = TestServer::start();
    let token = server.create_user("carol", "carol@acme.test", "Carol");
    server.create_user("dave", "dave@acme.test", "Dave");
    switch_off(&server, &token, "email");
    let event = send(&server, role_changed(json!(["carol", "dave"]), "mem_1"));
    let id = event["id"].as_str().unwrap();

    let out = server.run_cli(&["outbox", "list"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.contains(id))
        .unwrap_or_else(|| panic!("{id} missing from:\n{stdout}"));
    assert!(line.contains("org.member.role_changed"), "{line}");
    assert!(
        line.ends_with(
            "sent 2  deduped 0  suppressed 0  [inbox: sent 2] [email: sent 1, suppressed 1]"
        ),
        "{line}"
    );
}

/// A database as schema version 2 left it: the released steps, one event
/// dispatched under the old counting (per channel) and one still pending.
fn version_2_database(dir: &std::path::Path) {
    let conn = rusqlite::Connection::open(dir.join("herald.db")).unwrap();
    conn.execute_batch(include_str!("../../schema.sql"))
        .unwrap();
    conn.execute_batch(include_str!("../../src/store/schema_v2.sql"))
        .unwrap();
    conn.execute_batch(
        "CREATE TABLE schema_version (version INTEGER NOT NULL);
         INSERT INTO schema_version (version) VALUES (2);
         INSERT INTO users (id, email, name, created_at, updated_at)
             VALUES ('carol', 'carol@acme.test', 'Carol', 0, 0);",
    )
    .unwrap();
    let body = |subject: &str| role_changed(json!(["carol"]), subject).to_string();
    // Recent, so the log retention (30 days) keeps them.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    conn.execute(
        "INSERT INTO outbox (id, type, body, status, created_at, dispatched_at, sent, deduped,
                             suppressed)
         VALUES ('evt_old', 'org.member.role_changed', ?1, 'dispatched', ?2, ?2, 1, 0, 1)",
        rusqlite::params![body("mem_1"), now],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO outbox (id, type, body, created_at)
         VALUES ('evt_pending', 'org.member.role_changed', ?1, ?2)",
        rusqlite::params![body("mem_2"), now],
    )
    .unwrap();
}

#[test]
fn a_database_from_before_the_breakdown_upgrades_and_keeps_its_old_results() {
    if sqlite_only(
        "policy_results::a_database_from_before_the_breakdown_upgrades_and_keeps_its_old_results",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    version_2_database(dir.path());
    let server = TestServer::builder().db_dir(dir.path()).start();

    // Counted per channel when it was dispatched; no split was stored.
    let old = server.wait_event_done("evt_old", WAIT);
    assert_eq!(
        old["result"],
        json!({"sent": 1, "deduped": 0, "suppressedByPrefs": 1, "throttled": 0, "channels": null}),
        "{old}"
    );
    // Pending at the upgrade, dispatched after it: counted the new way.
    let pending = server.wait_event_done("evt_pending", WAIT);
    assert_eq!(
        pending["result"],
        result([1, 0, 0], [1, 0, 0], [1, 0, 0]),
        "{pending}"
    );
    let (_, doc) = server.get("/openapi.json", None);
    let event_view = json!({"$ref": "#/components/schemas/EventView"});
    for event in [&old, &pending] {
        assert_eq!(conforms(&doc, &event_view, event), Ok(()), "{event}");
    }
    let out = server.run_cli(&["outbox", "list"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.lines().any(|l| l.contains("evt_old")
            && l.ends_with("sent 1  deduped 0  suppressed 1  [per channel: not recorded]")),
        "{stdout}"
    );
}
