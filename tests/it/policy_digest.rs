//! Digests (SPEC 2.3 rule 3) against the real binary: uploads for one order
//! inside the window become one batch notification with every payload; a
//! lone upload stays its own type; each order has its own digest; a digest
//! is stored, so a restart mid-window still delivers it once, when due.

use herald::args;
use std::time::Duration;

use serde_json::{json, Value};

use crate::policy_catalog::Catalog;
use crate::support::{result, wait_until, FakeResend, TestServer};

const WAIT: Duration = Duration::from_secs(15);

/// The built-in catalog with a short digest window for `document_uploaded`.
pub(crate) fn catalog(window_secs: u64) -> Catalog {
    let mut catalog = Catalog::builtin();
    catalog.set(
        "document_uploaded",
        "digest",
        json!({"key": "{{ orderId }}", "windowSecs": window_secs,
               "batchType": "document_uploaded_batch"}),
    );
    catalog
}

fn upload_payload(order: &str, n: i64) -> Value {
    json!({"orderId": order, "eventName": format!("Concert {n}"), "ticketCount": n})
}

fn upload(server: &TestServer, to: &str, order: &str, n: i64) -> Value {
    let (status, body) = server.post_event(json!({
        "type": "document_uploaded", "recipients": [to], "subjectId": format!("doc_{order}_{n}"),
        "payload": upload_payload(order, n)
    }));
    assert_eq!(status, 202, "{body}");
    let event = server.wait_event_done(body["eventId"].as_str().unwrap(), WAIT);
    // Held in the digest: nothing is sent for the upload itself, the
    // recipient counts nowhere yet, and the event says where it waits.
    for count in ["sent", "deduped", "suppressedByPrefs"] {
        assert_eq!(event["result"][count], 0, "{event}");
    }
    assert_eq!(event["digests"][0]["recipient"], to, "{event}");
    event["result"].clone()
}

fn inbox(server: &TestServer, token: &str) -> Vec<Value> {
    let (status, inbox) = server.get("/v1/inbox", Some(token));
    assert_eq!(status, 200, "{inbox}");
    inbox["items"].as_array().unwrap().clone()
}

fn wait_inbox(server: &TestServer, token: &str, n: usize) -> Vec<Value> {
    if !wait_until(WAIT, || inbox(server, token).len() >= n) {
        server.fail(&format!("inbox never reached {n} items"));
    }
    inbox(server, token)
}

/// Every released digest reached the inbox no earlier than it was due.
fn assert_released_when_due(server: &TestServer) {
    assert_eq!(
        server.count(
            "SELECT COUNT(*) FROM digests d JOIN notifications n ON n.event_seq = d.flushed_seq
             WHERE n.created_at < d.due_at"
        ),
        0
    );
}

#[test]
fn five_uploads_for_one_order_become_one_batch_notification() {
    let mail = FakeResend::start();
    let catalog = catalog(4);
    let server = catalog.serve(TestServer::builder().mail(&mail)).start();
    let token = server.create_user("bob", "bob@acme.test", "Bob");

    for n in 1..=5 {
        // Held, not sent: the recipient counts nowhere yet.
        assert_eq!(
            upload(&server, "bob", "ord_1", n),
            result([0, 0, 0], [0, 0, 0], [0, 0, 0])
        );
    }
    assert_eq!(server.count("SELECT COUNT(*) FROM digests"), 1);
    assert_eq!(server.count("SELECT COUNT(*) FROM digest_events"), 5);

    let items = wait_inbox(&server, &token, 1);
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["type"], "document_uploaded_batch");
    assert_eq!(items[0]["title"], "5 documents uploaded");
    assert_eq!(items[0]["payload"]["count"], 5);
    let expected: Vec<Value> = (1..=5).map(|n| upload_payload("ord_1", n)).collect();
    assert_eq!(items[0]["payload"]["events"], json!(expected));

    assert!(mail.wait_for_accepted(1, WAIT), "{}", server.logs());
    std::thread::sleep(Duration::from_millis(500));
    let sent = mail.accepted();
    assert_eq!(sent.len(), 1, "one email for the batch");
    assert_eq!(sent[0].subject, "5 ticket documents uploaded");
    assert!(sent[0]
        .text
        .as_deref()
        .unwrap()
        .contains("5. Concert 5: 5 tickets"));
    assert_eq!(inbox(&server, &token).len(), 1);
    assert_released_when_due(&server);

    // Each upload points at the batch event it was released as.
    let first = server.count("SELECT MIN(seq) FROM outbox");
    let id: String = server.row("SELECT id FROM outbox WHERE seq = ?1", args![first], |r| {
        r.get(0)
    });
    let (_, event) = server.get(&format!("/v1/events/{id}"), Some(server.service_key()));
    assert_eq!(event["digests"][0]["status"], "flushed", "{event}");
    let released = event["digests"][0]["releasedAs"].as_str().unwrap();
    let (_, batch) = server.get(
        &format!("/v1/events/{released}"),
        Some(server.service_key()),
    );
    assert_eq!(batch["type"], "document_uploaded_batch");
    // The release counts bob, on both channels.
    assert_eq!(
        batch["result"],
        result([1, 0, 0], [1, 0, 0], [1, 0, 0]),
        "{batch}"
    );
}

#[test]
fn each_order_has_its_own_digest_and_a_lone_upload_keeps_its_type() {
    let mail = FakeResend::start();
    let catalog = catalog(4);
    let server = catalog.serve(TestServer::builder().mail(&mail)).start();
    let bob = server.create_user("bob", "bob@acme.test", "Bob");
    let dave = server.create_user("dave", "dave@acme.test", "Dave");
    // Dave's uploads join his digest on the inbox only.
    let (status, _) = server.put(
        "/v1/preferences",
        Some(&dave),
        json!({"type": "document_uploaded", "channel": "email", "enabled": false}),
    );
    assert_eq!(status, 200);

    for n in 1..=3 {
        upload(&server, "bob", "ord_1", n);
    }
    upload(&server, "bob", "ord_2", 7);
    for n in 1..=2 {
        // Held for the inbox: dave is not suppressed, his email channel is.
        assert_eq!(
            upload(&server, "dave", "ord_3", n),
            result([0, 0, 0], [0, 0, 0], [0, 0, 1])
        );
    }

    let items = wait_inbox(&server, &bob, 2);
    let batch = items
        .iter()
        .find(|i| i["type"] == "document_uploaded_batch");
    let single = items.iter().find(|i| i["type"] == "document_uploaded");
    let (Some(batch), Some(single)) = (batch, single) else {
        panic!("expected one batch and one single notification: {items:?}");
    };
    assert_eq!(batch["payload"]["count"], 3);
    assert_eq!(single["payload"], upload_payload("ord_2", 7));
    assert_eq!(single["title"], "Your tickets for Concert 7 are ready");

    let dave_items = wait_inbox(&server, &dave, 1);
    assert_eq!(dave_items[0]["payload"]["count"], 2);

    assert!(mail.wait_for_accepted(2, WAIT), "{}", server.logs());
    std::thread::sleep(Duration::from_millis(500));
    let mut to: Vec<String> = mail.accepted().iter().map(|e| e.to[0].clone()).collect();
    to.sort();
    assert_eq!(to, ["bob@acme.test", "bob@acme.test"], "Dave gets no email");
    assert_eq!(inbox(&server, &bob).len(), 2);
    assert_released_when_due(&server);
}

#[test]
fn a_crash_in_the_middle_of_a_window_still_delivers_the_digest_once_when_due() {
    let mail = FakeResend::start();
    let catalog = catalog(4);
    let mut server = catalog.serve(TestServer::builder().mail(&mail)).start();
    let token = server.create_user("bob", "bob@acme.test", "Bob");
    for n in 1..=3 {
        upload(&server, "bob", "ord_1", n);
    }
    assert_eq!(
        server.count("SELECT COUNT(*) FROM digests WHERE status = 'open'"),
        1
    );
    server.kill9();
    let server = server.restart_builder().start();

    let items = wait_inbox(&server, &token, 1);
    assert_eq!(items[0]["type"], "document_uploaded_batch");
    assert_eq!(items[0]["payload"]["count"], 3);
    assert!(mail.wait_for_accepted(1, WAIT), "{}", server.logs());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(mail.accepted_count(), 1);
    assert_eq!(inbox(&server, &token).len(), 1);
    assert_eq!(
        server.count("SELECT COUNT(*) FROM digests WHERE status = 'flushed'"),
        1
    );
    assert_released_when_due(&server);

    // And a second restart finds nothing left to send.
    let server = server.restart();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(inbox(&server, &token).len(), 1);
    assert_eq!(mail.accepted_count(), 1);
}
