//! The live inbox stream (`GET /v1/inbox/stream`): new rows reach their owner
//! only, heartbeats keep idle streams alive, `Last-Event-ID` resumes with the
//! missed rows exactly once, and 200 open streams leave the HTTP workers free.

use std::time::Duration;

use serde_json::json;

use crate::inbox_page::session;
use crate::support::sse::{Frame, SseClient};
use crate::support::{TestServer, TestServerBuilder};

const WAIT: Duration = Duration::from_secs(10);

fn server() -> TestServerBuilder {
    TestServer::builder().env("HERALD_STREAM_HEARTBEAT_MS", "150")
}

fn announce(server: &TestServer, user: &str, title: &str) {
    let (status, body) = server.post_event(json!({
        "type": "system.announcement", "recipients": [user],
        "payload": {"title": title, "body": "b"}
    }));
    assert_eq!(status, 202, "{body}");
    server.wait_event_done(body["eventId"].as_str().unwrap(), WAIT);
}

/// Opens a stream with the bearer token: 200, SSE content type, and the
/// `: connected` comment first.
pub fn subscribe(server: &TestServer, token: &str, extra: &[(&str, &str)]) -> SseClient {
    let auth = format!("Bearer {token}");
    let mut headers = vec![("Authorization", auth.as_str())];
    headers.extend_from_slice(extra);
    let mut client = SseClient::open(server.base_url(), "/v1/inbox/stream", &headers);
    assert_eq!(client.status, 200);
    assert_eq!(
        client.header("content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    assert_eq!(
        client.next_frame(WAIT),
        Some(Frame::Comment("connected".into())),
        "the stream opens with a comment"
    );
    client
}

fn titles(frames: &[Frame]) -> Vec<String> {
    frames
        .iter()
        .map(|f| f.json()["title"].as_str().unwrap_or("?").to_string())
        .collect()
}

#[test]
fn a_new_row_reaches_its_owner_and_nobody_else() {
    let server = server().start();
    let ann = server.create_user("ann", "ann@acme.test", "Ann");
    let ben = server.create_user("ben", "ben@acme.test", "Ben");
    let mut ann_stream = subscribe(&server, &ann, &[]);
    let mut ben_stream = subscribe(&server, &ben, &[]);

    announce(&server, "ann", "For Ann");
    let event = ann_stream.next_event(WAIT).expect("Ann's row is pushed");
    let item = event.json();
    assert_eq!(item["title"], "For Ann");
    assert_eq!(item["type"], "system.announcement");
    let (_, page) = server.get("/v1/inbox", Some(&ann));
    assert_eq!(item, page["items"][0], "the event carries the API's item");
    assert_eq!(
        Some(format!("ntf_{}", event.id().unwrap()).as_str()),
        item["id"].as_str(),
        "the event id is the notification's number"
    );
    assert_eq!(
        ben_stream.events_until_heartbeat(WAIT),
        vec![],
        "Ben sees nothing of Ann's"
    );
    announce(&server, "ben", "For Ben");
    assert_eq!(titles(&[ben_stream.next_event(WAIT).unwrap()]), ["For Ben"]);
    assert_eq!(ann_stream.events_until_heartbeat(WAIT), vec![]);
}

#[test]
fn heartbeats_keep_an_idle_stream_alive() {
    let server = server().start();
    let token = server.create_user("h", "h@acme.test", "H");
    let mut stream = subscribe(&server, &token, &[]);
    for _ in 0..3 {
        assert_eq!(
            stream.next_frame(WAIT),
            Some(Frame::Comment("heartbeat".into()))
        );
    }
}

#[test]
fn reconnecting_with_last_event_id_sends_the_missed_rows_exactly_once() {
    let server = server().start();
    let token = server.create_user("r", "r@acme.test", "R");
    let mut stream = subscribe(&server, &token, &[]);
    announce(&server, "r", "seen live");
    let last = stream.next_event(WAIT).unwrap().id().unwrap();
    drop(stream);

    for i in 1..=3 {
        announce(&server, "r", &format!("missed {i}"));
    }
    let last_header = last.to_string();
    let mut stream = subscribe(&server, &token, &[("Last-Event-ID", &last_header)]);
    let mut got = Vec::new();
    while got.len() < 3 {
        got.push(stream.next_event(WAIT).expect("a missed row"));
    }
    assert_eq!(titles(&got), ["missed 1", "missed 2", "missed 3"]);
    let ids: Vec<i64> = got.iter().map(|f| f.id().unwrap()).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]) && ids[0] > last,
        "{ids:?} after {last}"
    );

    announce(&server, "r", "live again");
    assert_eq!(titles(&[stream.next_event(WAIT).unwrap()]), ["live again"]);
    // Nothing is sent twice: two heartbeat periods pass with no more events.
    assert_eq!(stream.events_until_heartbeat(WAIT), vec![]);
    assert_eq!(stream.events_until_heartbeat(WAIT), vec![]);
}

#[test]
fn a_stream_opened_after_a_page_load_starts_after_the_rows_it_showed() {
    let server = server().start();
    let token = server.create_user("q", "q@acme.test", "Q");
    announce(&server, "q", "already shown");
    let (_, page) = server.get("/v1/inbox", Some(&token));
    let shown = page["items"][0]["id"].as_str().unwrap()["ntf_".len()..].to_string();
    announce(&server, "q", "arrived before the stream");
    let path = format!("/v1/inbox/stream?lastEventId={shown}");
    let auth = format!("Bearer {token}");
    let mut stream = SseClient::open(server.base_url(), &path, &[("Authorization", &auth)]);
    assert_eq!(stream.status, 200);
    assert_eq!(
        titles(&[stream.next_event(WAIT).unwrap()]),
        ["arrived before the stream"]
    );
    // Without any id, only rows from now on.
    let mut fresh = subscribe(&server, &token, &[]);
    assert_eq!(fresh.events_until_heartbeat(WAIT), vec![]);
}

#[test]
fn two_hundred_streams_leave_the_workers_serving_other_requests() {
    // Fewer workers than the default make the point sharper: 200 streams on
    // 4 workers would starve everything if a stream held its worker.
    let server = server()
        .env("HERALD_HTTP_THREADS", "4")
        .env("HERALD_STREAM_MAX_PER_USER", "200")
        .start();
    let listener = server.create_user("many", "many@acme.test", "Many");
    let other = server.create_user("other", "other@acme.test", "Other");
    let mut streams: Vec<SseClient> = (0..200)
        .map(|_| subscribe(&server, &listener, &[]))
        .collect();

    for _ in 0..20 {
        let (status, body) = server.get("/v1/inbox", Some(&other));
        assert_eq!(status, 200, "{body}");
        let (status, _) = server.get("/v1/inbox/unseen-count", Some(&other));
        assert_eq!(status, 200);
    }
    announce(&server, "many", "to all 200");
    for (i, stream) in streams.iter_mut().enumerate() {
        let event = stream
            .next_event(WAIT)
            .unwrap_or_else(|| panic!("stream {i} got nothing"));
        assert_eq!(event.json()["title"], "to all 200");
    }
    let (status, _) = server.get("/v1/inbox", Some(&other));
    assert_eq!(status, 200);
}

#[test]
fn the_stream_needs_a_user_and_a_valid_last_event_id() {
    let server = server().start();
    let token = server.create_user("v", "v@acme.test", "V");
    let (status, body) = server.get("/v1/inbox/stream", None);
    assert_eq!(status, 401, "{body}");
    let (status, body) = server.get("/v1/inbox/stream", Some(server.service_key()));
    assert_eq!(status, 403, "{body}");
    let (status, body) = server.get("/v1/inbox/stream", Some("hrld_nope"));
    assert_eq!(status, 401, "{body}");
    let auth = format!("Bearer {token}");
    let (status, body) = server.request(
        "GET",
        "/v1/inbox/stream",
        &[("authorization", &auth), ("last-event-id", "ntf_x")],
        None,
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "bad_request");
}

#[test]
fn shutdown_closes_open_streams_and_exits_cleanly() {
    let mut server = server().start();
    let token = server.create_user("s", "s@acme.test", "S");
    let mut streams: Vec<SseClient> = (0..3).map(|_| subscribe(&server, &token, &[])).collect();
    let status = server.stop();
    assert!(status.success(), "exit status {status}");
    for stream in &mut streams {
        assert!(stream.closed_within(WAIT), "the stream was closed");
    }
}

#[test]
fn ids_are_not_reused_after_the_newest_row_is_deleted() {
    // SQLite would hand a deleted max rowid out again; AUTOINCREMENT does
    // not, so a stream whose cursor is that id still gets the next row.
    let server = server().start();
    let token = server.create_user("d", "d@acme.test", "D");
    let mut stream = subscribe(&server, &token, &[]);
    announce(&server, "d", "first");
    let first = stream.next_event(WAIT).unwrap().id().unwrap();
    let (status, _) = server.delete(&format!("/v1/inbox/ntf_{first}"), Some(&token));
    assert_eq!(status, 204);
    announce(&server, "d", "second");
    let second = stream
        .next_event(WAIT)
        .expect("the next row is still pushed");
    assert_eq!(second.json()["title"], "second");
    assert!(second.id().unwrap() > first);
}

#[test]
fn signing_out_ends_the_streams_of_that_session_only() {
    let server = server().start();
    let token = server.create_user("ann", "ann@acme.test", "Ann");
    let (leaving, staying) = (session(&server, &token), session(&server, &token));
    let open = |cookie: &str| {
        let mut stream =
            SseClient::open(server.base_url(), "/v1/inbox/stream", &[("Cookie", cookie)]);
        assert_eq!(stream.status, 200);
        assert!(stream.next_frame(WAIT).is_some());
        stream
    };
    let mut leaving_stream = open(&leaving);
    let mut staying_stream = open(&staying);
    let mut token_stream = subscribe(&server, &token, &[]);
    announce(&server, "ann", "before");
    for stream in [&mut leaving_stream, &mut staying_stream, &mut token_stream] {
        assert_eq!(titles(&[stream.next_event(WAIT).unwrap()]), ["before"]);
    }

    let origin = server.base_url().to_string();
    let out = server.request_raw(
        "POST",
        "/logout",
        &[("cookie", &leaving), ("origin", &origin)],
        Some(Vec::new()),
    );
    assert_eq!(out.status, 303);
    announce(&server, "ann", "after");
    assert_eq!(
        leaving_stream.next_event(WAIT),
        None,
        "the signed-out session's stream gets nothing more"
    );
    assert!(leaving_stream.closed_within(WAIT), "and is closed");
    assert_eq!(
        titles(&[staying_stream.next_event(WAIT).unwrap()]),
        ["after"]
    );
    assert_eq!(titles(&[token_stream.next_event(WAIT).unwrap()]), ["after"]);
}

#[test]
fn revoking_a_users_tokens_ends_their_streams_and_sessions() {
    let server = server().start();
    let token = server.create_user("ann", "ann@acme.test", "Ann");
    let ben = server.create_user("ben", "ben@acme.test", "Ben");
    let cookie = session(&server, &token);
    let mut by_token = subscribe(&server, &token, &[]);
    let mut by_cookie = SseClient::open(
        server.base_url(),
        "/v1/inbox/stream",
        &[("Cookie", &cookie)],
    );
    assert_eq!(by_cookie.status, 200);
    let mut bens = subscribe(&server, &ben, &[]);
    announce(&server, "ann", "before");
    assert_eq!(titles(&[by_token.next_event(WAIT).unwrap()]), ["before"]);
    assert_eq!(titles(&[by_cookie.next_event(WAIT).unwrap()]), ["before"]);

    let key = format!("Bearer {}", server.service_key());
    let (status, body) = server.request(
        "DELETE",
        "/v1/users/ann/tokens",
        &[("Authorization", &key)],
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"revokedTokens": 1, "endedSessions": 1}));
    announce(&server, "ann", "after");
    announce(&server, "ben", "for ben");
    for stream in [&mut by_token, &mut by_cookie] {
        assert_eq!(
            stream.next_event(WAIT),
            None,
            "nothing after the revocation"
        );
        assert!(stream.closed_within(WAIT));
    }
    assert_eq!(titles(&[bens.next_event(WAIT).unwrap()]), ["for ben"]);
    let (status, _) = server.get("/v1/inbox", Some(&token));
    assert_eq!(status, 401, "the token no longer works");
    let (status, _) = server.request(
        "DELETE",
        "/v1/users/nobody/tokens",
        &[("Authorization", &key)],
        None,
    );
    assert_eq!(status, 404);
    let (status, _) = server.request(
        "DELETE",
        "/v1/users/ben/tokens",
        &[("Authorization", &format!("Bearer {ben}"))],
        None,
    );
    assert_eq!(status, 403, "a user token cannot revoke");
}
