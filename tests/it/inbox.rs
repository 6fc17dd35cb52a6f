//! The inbox API: keyset pagination returns every row once, newest first;
//! unseen count follows seen / seen-all; read and unread filter; delete; and
//! no user can see or touch another user's rows.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::TestServer;

fn announce(server: &TestServer, user: &str, n: usize) -> Vec<String> {
    let mut events = Vec::new();
    for i in 0..n {
        let (status, body) = server.post_event(json!({
            "type": "system.announcement", "recipients": [user],
            "payload": {"title": format!("Note {i}"), "body": "b"}
        }));
        assert_eq!(status, 202, "{body}");
        events.push(body["eventId"].as_str().unwrap().to_string());
    }
    for e in &events {
        server.wait_event_done(e, Duration::from_secs(10));
    }
    events
}

fn all_pages(server: &TestServer, token: &str, query: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let path = match &cursor {
            Some(c) => format!("/v1/inbox?{query}&cursor={c}"),
            None => format!("/v1/inbox?{query}"),
        };
        let (status, page) = server.get(&path, Some(token));
        assert_eq!(status, 200, "{page}");
        items.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return items,
        }
    }
    panic!("pagination did not end");
}

fn id_number(item: &Value) -> i64 {
    item["id"].as_str().unwrap()["ntf_".len()..]
        .parse()
        .unwrap()
}

#[test]
fn pages_return_every_row_exactly_once_newest_first() {
    let server = TestServer::start();
    let token = server.create_user("p", "p@acme.test", "P");
    announce(&server, "p", 23);
    let items = all_pages(&server, &token, "limit=5");
    assert_eq!(items.len(), 23);
    let ids: HashSet<i64> = items.iter().map(id_number).collect();
    assert_eq!(ids.len(), 23, "no row twice");
    for pair in items.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let key = |v: &Value| (v["createdAt"].as_str().unwrap().to_string(), id_number(v));
        assert!(key(a) > key(b), "newest first: {a} before {b}");
    }
    assert_eq!(items[0]["title"], "Note 22");
    assert_eq!(items[22]["title"], "Note 0");
    // A page size that divides the total ends with no dangling cursor.
    assert_eq!(all_pages(&server, &token, "limit=23").len(), 23);
}

#[test]
fn unseen_count_follows_seen_read_and_seen_all() {
    let server = TestServer::start();
    let token = server.create_user("s", "s@acme.test", "S");
    announce(&server, "s", 4);
    let t = Some(token.as_str());
    let count = || {
        server.get("/v1/inbox/unseen-count", t).1["count"]
            .as_i64()
            .unwrap()
    };
    assert_eq!(count(), 4);
    let items = server.get("/v1/inbox", t).1["items"]
        .as_array()
        .unwrap()
        .clone();
    let first = items[0]["id"].as_str().unwrap();
    assert_eq!(
        server
            .post(&format!("/v1/inbox/{first}/seen"), t, json!({}))
            .0,
        204
    );
    assert_eq!(
        server
            .post(&format!("/v1/inbox/{first}/seen"), t, json!({}))
            .0,
        204
    );
    assert_eq!(count(), 3);
    let second = items[1]["id"].as_str().unwrap();
    assert_eq!(
        server
            .post(&format!("/v1/inbox/{second}/read"), t, json!({}))
            .0,
        204
    );
    assert_eq!(count(), 2);
    let unread = all_pages(&server, &token, "unread=true");
    assert_eq!(unread.len(), 3);
    assert!(unread
        .iter()
        .all(|i| i["id"] != second && i["readAt"].is_null()));
    let (status, body) = server.post("/v1/inbox/seen-all", t, json!({}));
    assert_eq!((status, body["updated"].as_i64()), (200, Some(2)));
    assert_eq!(count(), 0);
    let page = server.get("/v1/inbox", t).1;
    assert!(page["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["seenAt"].is_string()));

    assert_eq!(server.delete(&format!("/v1/inbox/{first}"), t).0, 204);
    assert_eq!(server.delete(&format!("/v1/inbox/{first}"), t).0, 404);
    assert_eq!(all_pages(&server, &token, "limit=10").len(), 3);
}

#[test]
fn a_user_never_sees_or_changes_another_users_rows() {
    let server = TestServer::start();
    let alice = server.create_user("alice", "alice@acme.test", "Alice");
    let mallory = server.create_user("mallory", "mallory@evil.test", "Mallory");
    announce(&server, "alice", 2);
    let (_, page) = server.get("/v1/inbox", Some(alice.as_str()));
    let target = page["items"][0]["id"].as_str().unwrap().to_string();

    let m = Some(mallory.as_str());
    assert_eq!(server.get("/v1/inbox", m).1["items"], json!([]));
    assert_eq!(server.get("/v1/inbox/unseen-count", m).1["count"], 0);
    for path in [
        format!("/v1/inbox/{target}/seen"),
        format!("/v1/inbox/{target}/read"),
    ] {
        let (status, body) = server.post(&path, m, json!({}));
        assert_eq!(status, 404, "{path}: {body}");
    }
    assert_eq!(server.delete(&format!("/v1/inbox/{target}"), m).0, 404);
    assert_eq!(
        server.post("/v1/inbox/seen-all", m, json!({})).1["updated"],
        0
    );

    // Alice's rows are untouched.
    assert_eq!(
        server.get("/v1/inbox/unseen-count", Some(alice.as_str())).1["count"],
        2
    );
    assert_eq!(
        server.count("SELECT COUNT(*) FROM notifications WHERE seen_at IS NOT NULL"),
        0
    );
}

#[test]
fn bad_paging_parameters_are_400() {
    let server = TestServer::start();
    let token = server.create_user("q", "q@acme.test", "Q");
    let t = Some(token.as_str());
    for query in [
        "limit=0",
        "limit=101",
        "limit=ten",
        "cursor=nonsense",
        "unread=maybe",
    ] {
        let (status, body) = server.get(&format!("/v1/inbox?{query}"), t);
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body["error"]["message"].is_string());
    }
    for id in ["ntf_999", "ntf_x", "42"] {
        assert_eq!(
            server.post(&format!("/v1/inbox/{id}/seen"), t, json!({})).0,
            404
        );
    }
}
