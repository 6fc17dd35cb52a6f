//! The live inbox's bounds (SPEC 8): a client that stops reading never
//! delays anyone else, falls behind by at most its buffer, is disconnected
//! and catches up from the database with `Last-Event-ID`, losing nothing
//! and receiving nothing twice; open streams are bounded per user and in all.

use herald::args;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::inbox_stream::subscribe;
use crate::support::sse::SseClient;
use crate::support::{TestServer, TestServerBuilder};

const WAIT: Duration = Duration::from_secs(10);

fn server() -> TestServerBuilder {
    TestServer::builder().env("HERALD_STREAM_HEARTBEAT_MS", "150")
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// `count` announcements to `user` with a body of `body_len` bytes, in bulk
/// requests, waiting until every inbox row is written.
fn announce_many(server: &TestServer, user: &str, count: usize, body_len: usize) {
    let body = "x".repeat(body_len);
    let per_request = (900 * 1024 / (body_len + 200)).clamp(1, 100);
    let mut sent = 0;
    while sent < count {
        let n = per_request.min(count - sent);
        let events: Vec<_> = (sent..sent + n)
            .map(|i| {
                json!({"type": "system.announcement", "recipients": [user],
                       "payload": {"title": format!("row {i}"), "body": body}})
            })
            .collect();
        let (status, answer) = server.post(
            "/v1/events/bulk",
            Some(server.service_key()),
            json!({"events": events}),
        );
        assert_eq!(status, 202, "{answer}");
        sent += n;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let sql = format!("SELECT COUNT(*) FROM notifications WHERE user_id = '{user}'");
    while server.count(&sql) < count as i64 {
        assert!(
            Instant::now() < deadline,
            "{count} rows for {user} were not written in 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn row_ids(server: &TestServer, user: &str) -> Vec<i64> {
    server.rows(
        "SELECT id FROM notifications WHERE user_id = ?1 ORDER BY id",
        args![user],
        |r| r.get(0),
    )
}

#[test]
fn a_stalled_stream_never_delays_others_and_resumes_losing_nothing() {
    let server = server().start();
    let stalled = server.create_user("stalled", "stalled@acme.test", "Stalled");
    let other = server.create_user("other", "other@acme.test", "Other");
    // Never read from here on. Resuming after 0 makes the stream owe every
    // row, whenever the hub registers it.
    let auth = bearer(&stalled);
    let socket = SseClient::send_request(
        server.base_url(),
        "/v1/inbox/stream",
        &[("Authorization", &auth), ("Last-Event-ID", "0")],
    );
    // About 32 MB of events: each frame carries the 4 KB body twice.
    announce_many(&server, "stalled", 4000, 4000);

    let started = Instant::now();
    let mut fresh = subscribe(&server, &other, &[]);
    let head_took = started.elapsed();
    let (status, posted) = server.post_event(json!({
        "type": "system.announcement", "recipients": ["other"],
        "payload": {"title": "for other", "body": "b"}
    }));
    assert_eq!(status, 202, "{posted}");
    server.wait_event_done(posted["eventId"].as_str().unwrap(), WAIT);
    let committed = Instant::now();
    let event = fresh
        .next_event(WAIT)
        .expect("the other user's row is pushed");
    let push_took = committed.elapsed();
    assert_eq!(event.json()["title"], "for other");
    eprintln!(
        "while a stream is stalled: head in {head_took:?}, row pushed {push_took:?} after commit"
    );
    assert!(
        head_took < Duration::from_millis(100),
        "head took {head_took:?}"
    );
    assert!(
        push_took < Duration::from_millis(100),
        "push took {push_took:?}"
    );

    // The stalled client now reads: what its socket held, then the end.
    let mut stalled_stream = SseClient::read_head(socket);
    assert_eq!(stalled_stream.status, 200);
    let first = stalled_stream.event_ids_until_silent(Duration::from_secs(3));
    assert!(
        stalled_stream.closed_within(WAIT),
        "the stalled stream was disconnected"
    );
    let all = row_ids(&server, "stalled");
    assert!(
        !first.is_empty() && first.len() < all.len(),
        "the stalled stream got {} of {} rows before it was cut off",
        first.len(),
        all.len()
    );

    let metrics = crate::metrics::scrape(&server);
    assert_eq!(
        metrics.value("herald_inbox_streams_dropped_total", &[]),
        1.0
    );
    assert_eq!(
        metrics.value("herald_inbox_streams", &[]),
        1.0,
        "the other user's"
    );

    let last = first.last().unwrap().to_string();
    let mut resumed = subscribe(&server, &stalled, &[("Last-Event-ID", &last)]);
    let rest = resumed.event_ids_until_silent(Duration::from_secs(3));
    let got: Vec<i64> = first.iter().chain(&rest).copied().collect();
    assert_eq!(
        got, all,
        "every row exactly once, in order, across the reconnect"
    );
}

#[test]
fn streams_are_bounded_per_user_and_in_all() {
    let server = server()
        .env("HERALD_STREAM_MAX_PER_USER", "2")
        .env("HERALD_STREAM_MAX", "3")
        .start();
    let ann = server.create_user("ann", "ann@acme.test", "Ann");
    let ben = server.create_user("ben", "ben@acme.test", "Ben");
    let cat = server.create_user("cat", "cat@acme.test", "Cat");
    // Each stream is known to the hub once it has received a row.
    let registered = |stream: &mut SseClient, user: &str, title: &str| {
        let (status, posted) = server.post_event(json!({
            "type": "system.announcement", "recipients": [user],
            "payload": {"title": title, "body": "b"}
        }));
        assert_eq!(status, 202, "{posted}");
        let event = stream.next_event(WAIT).expect("a row on the new stream");
        assert_eq!(event.json()["title"], title);
    };
    let mut oldest = subscribe(&server, &ann, &[]);
    registered(&mut oldest, "ann", "one");
    let mut second = subscribe(&server, &ann, &[]);
    registered(&mut second, "ann", "two");
    let mut third = subscribe(&server, &ann, &[]);
    registered(&mut third, "ann", "three");
    assert!(
        oldest.closed_within(WAIT),
        "a third stream of Ann closes her oldest"
    );
    assert_eq!(second.next_event(WAIT).unwrap().json()["title"], "three");

    let mut bens = subscribe(&server, &ben, &[]);
    registered(&mut bens, "ben", "for ben");
    let auth = bearer(&cat);
    let refused = server.request_raw("GET", "/v1/inbox/stream", &[("Authorization", &auth)], None);
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(
        refused.header("retry-after").is_some(),
        "503 says when to retry"
    );
    assert_eq!(refused.json()["error"]["code"], "too_many_streams");

    drop(bens);
    let deadline = Instant::now() + WAIT;
    loop {
        let attempt = SseClient::open(
            server.base_url(),
            "/v1/inbox/stream",
            &[("Authorization", &auth)],
        );
        if attempt.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "a closed stream never made room");
        std::thread::sleep(Duration::from_millis(100));
    }
}
