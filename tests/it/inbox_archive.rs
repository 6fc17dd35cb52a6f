//! Inbox archive, snooze and bulk actions (SPEC 10): archived rows leave the
//! default list and the unseen count and come back on request; a snoozed row
//! hides, then returns unseen, counted, and pushed once on an open stream;
//! bulk actions change the caller's rows only, and a bad body changes none.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::sse::Frame;
use crate::support::{TestServer, TestServerBuilder};

const WAIT: Duration = Duration::from_secs(10);

fn server() -> TestServerBuilder {
    TestServer::builder().env("HERALD_STREAM_HEARTBEAT_MS", "150")
}

/// One announcement to `user`; returns its inbox row's id (`ntf_<n>`).
fn announce(server: &TestServer, token: &str, user: &str, title: &str) -> String {
    let (status, body) = server.post_event(json!({
        "type": "system.announcement", "recipients": [user],
        "payload": {"title": title, "body": "b"}
    }));
    assert_eq!(status, 202, "{body}");
    server.wait_event_done(body["eventId"].as_str().unwrap(), WAIT);
    let (_, page) = server.get("/v1/inbox?limit=1", Some(token));
    assert_eq!(page["items"][0]["title"], title);
    page["items"][0]["id"].as_str().unwrap().to_string()
}

fn titles(server: &TestServer, token: &str, query: &str) -> Vec<String> {
    let (status, page) = server.get(&format!("/v1/inbox{query}"), Some(token));
    assert_eq!(status, 200, "{page}");
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["title"].as_str().unwrap().to_string())
        .collect()
}

fn unseen(server: &TestServer, token: &str) -> i64 {
    let (status, body) = server.get("/v1/inbox/unseen-count", Some(token));
    assert_eq!(status, 200, "{body}");
    body["count"].as_i64().unwrap()
}

fn post(server: &TestServer, token: &str, path: &str, body: Value) -> (u16, Value) {
    server.post(path, Some(token), body)
}

#[test]
fn archived_rows_leave_the_list_and_the_count_and_come_back_on_request() {
    let server = server().start();
    let ann = server.create_user("ann", "ann@acme.test", "Ann");
    let ben = server.create_user("ben", "ben@acme.test", "Ben");
    let _one = announce(&server, &ann, "ann", "one");
    let two = announce(&server, &ann, "ann", "two");
    let _three = announce(&server, &ann, "ann", "three");
    assert_eq!(unseen(&server, &ann), 3);

    let (status, body) = post(
        &server,
        &ann,
        &format!("/v1/inbox/{two}/archive"),
        json!({}),
    );
    assert_eq!(status, 204, "{body}");
    assert_eq!(titles(&server, &ann, ""), ["three", "one"]);
    assert_eq!(titles(&server, &ann, "?archived=exclude"), ["three", "one"]);
    assert_eq!(unseen(&server, &ann), 2, "an archived row is not counted");
    assert_eq!(
        titles(&server, &ann, "?archived=include"),
        ["three", "two", "one"]
    );
    assert_eq!(titles(&server, &ann, "?archived=only"), ["two"]);
    assert_eq!(titles(&server, &ann, "?archived=only&unread=true"), ["two"]);
    let (_, page) = server.get("/v1/inbox?archived=only", Some(&ann));
    assert!(page["items"][0]["archivedAt"].is_string(), "{page}");
    assert!(page["items"][0]["snoozedUntil"].is_null(), "{page}");

    // Another user's row is 404 like an unknown one, and stays as it was.
    let (status, _) = post(
        &server,
        &ben,
        &format!("/v1/inbox/{two}/unarchive"),
        json!({}),
    );
    assert_eq!(status, 404);
    let (status, _) = post(&server, &ben, "/v1/inbox/ntf_999999/archive", json!({}));
    assert_eq!(status, 404);
    assert_eq!(titles(&server, &ann, "?archived=only"), ["two"]);
    let (status, _) = server.get("/v1/inbox?archived=all", Some(&ann));
    assert_eq!(status, 400, "an unknown filter is refused");

    let (status, _) = post(
        &server,
        &ann,
        &format!("/v1/inbox/{two}/unarchive"),
        json!({}),
    );
    assert_eq!(status, 204);
    assert_eq!(titles(&server, &ann, ""), ["three", "two", "one"]);
    assert_eq!(
        titles(&server, &ann, "?archived=only"),
        Vec::<String>::new()
    );
    assert_eq!(unseen(&server, &ann), 3);
}

#[test]
fn a_snoozed_row_returns_unseen_counted_and_pushed_once_on_an_open_stream() {
    let server = server().start();
    let token = server.create_user("sam", "sam@acme.test", "Sam");
    let other = server.create_user("oz", "oz@acme.test", "Oz");
    let early = announce(&server, &token, "sam", "snooze me");
    announce(&server, &token, "sam", "stays");
    let (status, _) = post(
        &server,
        &token,
        &format!("/v1/inbox/{early}/seen"),
        json!({}),
    );
    assert_eq!(status, 204);
    assert_eq!(unseen(&server, &token), 1);
    let mut stream = crate::inbox_stream::subscribe(&server, &token, &[]);

    // Refused snoozes change nothing.
    let path = format!("/v1/inbox/{early}/snooze");
    for bad in [
        json!({"until": "2001-01-01T00:00:00Z"}),
        json!({"until": "2999-01-01T00:00:00Z"}),
        json!({"until": "tomorrow"}),
        json!({}),
        json!({"until": "2999-01-01T00:00:00Z", "extra": 1}),
    ] {
        let (status, body) = post(&server, &token, &path, bad.clone());
        assert_eq!(status, 422, "{bad} -> {body}");
    }
    let (status, _) = post(&server, &other, &path, json!({"until": in_ms(60_000)}));
    assert_eq!(status, 404, "another user's row");
    assert_eq!(titles(&server, &token, ""), ["stays", "snooze me"]);

    let (status, body) = post(&server, &token, &path, json!({"until": in_ms(2_000)}));
    assert_eq!(status, 204, "{body}");
    assert_eq!(titles(&server, &token, ""), ["stays"]);
    assert_eq!(titles(&server, &token, "?archived=include"), ["stays"]);
    assert_eq!(unseen(&server, &token), 1);

    let event = stream
        .next_event(WAIT)
        .expect("the row comes back on the stream");
    let item = event.json();
    assert_eq!(item["id"], early.as_str());
    assert_eq!(item["seenAt"], Value::Null, "it comes back unseen");
    assert_eq!(item["snoozedUntil"], Value::Null);
    assert!(
        matches!(&event, Frame::Event { id: None, .. }),
        "no id line: the client's Last-Event-ID stays at its newest row: {event:?}"
    );
    assert_eq!(titles(&server, &token, ""), ["stays", "snooze me"]);
    assert_eq!(unseen(&server, &token), 2);
    let more: Vec<Frame> = (0..3)
        .flat_map(|_| stream.events_until_heartbeat(WAIT))
        .collect();
    assert_eq!(more, vec![], "pushed once");
}

/// RFC 3339 for `ms` from now.
fn in_ms(ms: u64) -> String {
    let at = std::time::SystemTime::now() + Duration::from_millis(ms);
    let secs = at
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    jiff::Timestamp::from_millisecond(secs).unwrap().to_string()
}

#[test]
fn bulk_actions_change_the_callers_rows_and_bad_bodies_change_nothing() {
    let server = server().start();
    let ann = server.create_user("ann", "ann@acme.test", "Ann");
    let ben = server.create_user("ben", "ben@acme.test", "Ben");
    let a: Vec<String> = (1..=4)
        .map(|i| announce(&server, &ann, "ann", &format!("a{i}")))
        .collect();
    let b1 = announce(&server, &ben, "ben", "b1");

    let too_many: Vec<String> = (1..=1001).map(|i| format!("ntf_{i}")).collect();
    for bad in [
        json!({"action": "seen"}),
        json!({"action": "seen", "ids": [&a[0]], "all": true}),
        json!({"action": "seen", "ids": []}),
        json!({"action": "seen", "ids": too_many}),
        json!({"action": "seen", "ids": ["x1"]}),
        json!({"action": "seen", "ids": [1]}),
        json!({"action": "seen", "all": false}),
        json!({"action": "delete", "all": true}),
        json!({"ids": [&a[0]]}),
        json!({"action": "seen", "all": true, "more": 1}),
    ] {
        let (status, body) = post(&server, &ann, "/v1/inbox/bulk", bad.clone());
        assert_eq!(status, 422, "{bad} -> {body}");
    }
    assert_eq!(unseen(&server, &ann), 4, "nothing changed");

    // Ben's id among Ann's is passed over: not counted, not changed.
    let (status, body) = post(
        &server,
        &ann,
        "/v1/inbox/bulk",
        json!({"action": "seen", "ids": [&a[0], &a[1], &a[1], &b1]}),
    );
    assert_eq!((status, body), (200, json!({"updated": 2})));
    assert_eq!(unseen(&server, &ann), 2);
    assert_eq!(unseen(&server, &ben), 1, "Ben's row is untouched");

    let (_, body) = post(
        &server,
        &ann,
        "/v1/inbox/bulk",
        json!({"action": "read", "ids": [&a[0]]}),
    );
    assert_eq!(body, json!({"updated": 1}));
    assert_eq!(titles(&server, &ann, "?unread=true"), ["a4", "a3", "a2"]);
    let (_, body) = post(
        &server,
        &ann,
        "/v1/inbox/bulk",
        json!({"action": "read", "all": true}),
    );
    assert_eq!(body, json!({"updated": 3}));
    assert_eq!(titles(&server, &ann, "?unread=true"), Vec::<String>::new());

    let (_, body) = post(
        &server,
        &ann,
        "/v1/inbox/bulk",
        json!({"action": "archive", "ids": [&a[3], &b1]}),
    );
    assert_eq!(body, json!({"updated": 1}));
    assert_eq!(titles(&server, &ann, "?archived=only"), ["a4"]);
    assert_eq!(titles(&server, &ben, ""), ["b1"]);
    let (_, body) = post(
        &server,
        &ann,
        "/v1/inbox/bulk",
        json!({"action": "archive", "all": true}),
    );
    assert_eq!(body, json!({"updated": 3}));
    assert_eq!(titles(&server, &ann, ""), Vec::<String>::new());
    assert_eq!(titles(&server, &ann, "?archived=only").len(), 4);

    let c = announce(&server, &ann, "ann", "c");
    let (_, body) = post(
        &server,
        &ann,
        "/v1/inbox/bulk",
        json!({"action": "seen", "all": true}),
    );
    assert_eq!(body, json!({"updated": 1}));
    assert_eq!(unseen(&server, &ann), 0);
    assert_eq!(titles(&server, &ann, ""), ["c"], "{c}");
    assert_eq!(unseen(&server, &ben), 1);
}
