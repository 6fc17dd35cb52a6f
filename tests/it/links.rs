//! Links and headers built from payloads: a url that a browser would take
//! off-site or into script (`/\t/evil.test`, ` javascript:`, `//host`, a
//! backslash) becomes a link nowhere: not on the inbox page, not in what
//! the inbox API and the live stream hand to `inbox.js`, not in email HTML.
//! And a payload's CR/LF never reaches an email subject.

use herald::args;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::sse::SseClient;
use crate::support::{FakeResend, TestServer};

const WAIT: Duration = Duration::from_secs(10);

/// Urls each of which a browser resolves off-site or runs as script.
const HOSTILE: &[&str] = &[
    "/\t/evil.test/phish",
    " javascript:alert(1)",
    "//evil.test/phish",
    "/\\evil.test/phish",
    "\n//evil.test/phish",
    "java\tscript:alert(1)",
];
/// Urls that stay links.
const FINE: &[&str] = &[
    "/invitations/accept?token=fine",
    "https://app.test/accept?t=1",
];

fn invite(server: &TestServer, n: usize, url: &str) {
    let (status, body) = server.post_event(json!({
        "type": "org.invitation.sent",
        "recipients": ["ann", {"email": "guest@acme.test"}],
        // One subject per event, or the dedup window would hold them back.
        "subjectId": format!("inv_{n}"),
        "payload": {"invitedEmail": "ann@acme.test", "role": "admin", "orgName": "Acme",
                    "inviterName": "Grace", "acceptUrl": url}}));
    assert_eq!(status, 202, "{body}");
    server.wait_event_done(body["eventId"].as_str().unwrap(), WAIT);
}

/// What every reader of the inbox got as action urls, by the item's body
/// order (oldest first).
fn action_urls(items: &[Value]) -> Vec<Vec<String>> {
    items
        .iter()
        .map(|item| {
            item["actions"]
                .as_array()
                .unwrap_or_else(|| panic!("actions is a list: {item}"))
                .iter()
                .map(|a| a["url"].as_str().unwrap().to_string())
                .collect()
        })
        .collect()
}

fn expected_urls() -> Vec<Vec<String>> {
    HOSTILE
        .iter()
        .map(|_| Vec::new())
        .chain(FINE.iter().map(|u| vec![u.to_string()]))
        .collect()
}

/// Every `href="..."` value of `html`, as written.
fn hrefs(html: &str) -> Vec<&str> {
    html.split("href=\"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap_or(""))
        .collect()
}

/// A server whose user `ann` (token returned) and address guest@acme.test
/// got one invitation per url of `HOSTILE` then `FINE`, all dispatched.
fn invited_with_every_url(mail: &FakeResend) -> (TestServer, String) {
    let server = TestServer::builder().mail(mail).start();
    let token = server.create_user("ann", "ann@acme.test", "Ann");
    for (n, url) in HOSTILE.iter().chain(FINE).enumerate() {
        invite(&server, n, url);
    }
    (server, token)
}

#[test]
fn what_the_inbox_api_and_stream_hand_to_inbox_js_holds_only_web_links() {
    let mail = FakeResend::start();
    let (server, token) = invited_with_every_url(&mail);

    // The inbox API, newest first.
    let (status, page) = server.get("/v1/inbox?limit=100", Some(&token));
    assert_eq!(status, 200, "{page}");
    let mut items = page["items"].as_array().unwrap().clone();
    items.reverse();
    assert_eq!(action_urls(&items), expected_urls(), "GET /v1/inbox");

    // The live stream, which inbox.js renders from, replaying every row.
    let mut stream = SseClient::open(
        server.base_url(),
        "/v1/inbox/stream?lastEventId=0",
        &[("Authorization", &format!("Bearer {token}"))],
    );
    assert_eq!(stream.status, 200);
    let streamed: Vec<Value> = (0..items.len())
        .map(|_| stream.next_event(WAIT).expect("a replayed row").json())
        .collect();
    assert_eq!(action_urls(&streamed), expected_urls(), "the stream");
}

#[test]
fn the_inbox_page_links_only_web_links() {
    let mail = FakeResend::start();
    let (server, token) = invited_with_every_url(&mail);
    let login = server.request_raw(
        "POST",
        "/login",
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("origin", server.base_url()),
        ],
        Some(format!("token={token}").into_bytes()),
    );
    let cookie = login
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap();
    let html = server
        .request_raw("GET", "/inbox", &[("cookie", cookie)], None)
        .text();
    let page_links: Vec<&str> = hrefs(&html)
        .into_iter()
        .filter(|h| h.contains("accept"))
        .collect();
    assert_eq!(page_links.len(), FINE.len(), "{html}");
    assert!(!html.contains("evil.test"), "{html}");
    assert!(!html.to_ascii_lowercase().contains("javascript"), "{html}");
}

#[test]
fn email_html_links_only_web_links() {
    let mail = FakeResend::start();
    let (_server, _) = invited_with_every_url(&mail);
    // Two emails per event (ann and the guest address): the hostile urls
    // lose their href, the fine ones keep theirs, and the button's text
    // stays either way.
    assert!(mail.wait_for_accepted(2 * (HOSTILE.len() + FINE.len()), WAIT));
    for email in mail.accepted() {
        let html = email.html.unwrap();
        let links = hrefs(&html);
        let decoded = html.replace("&#x2f;", "/");
        if decoded.contains("token=fine") || decoded.contains("https://app.test/accept") {
            assert_eq!(links.len(), 2, "{html}");
        } else {
            assert_eq!(links, Vec::<&str>::new(), "{html}");
        }
        assert!(html.contains("Accept invitation</a>"), "{html}");
    }
}

#[test]
fn rows_stored_with_a_hostile_action_url_are_served_without_it() {
    let server = TestServer::start();
    let token = server.create_user("ann", "ann@acme.test", "Ann");
    invite(&server, 0, FINE[0]);
    // A row written before herald checked action urls at render time.
    server.execute(
        "UPDATE notifications SET actions = ?1",
        args![json!([{"label": "Open", "url": "/\t/evil.test/phish"},
                     {"label": "Fine", "url": "/inbox"}])
        .to_string()],
    );
    let (_, page) = server.get("/v1/inbox", Some(&token));
    assert_eq!(
        page["items"][0]["actions"],
        json!([{"label": "Fine", "url": "/inbox"}])
    );
}

#[test]
fn crlf_in_a_payload_never_reaches_an_email_subject() {
    let mail = FakeResend::start();
    let server = TestServer::builder().mail(&mail).start();
    let (status, body) = server.post_event(json!({
        "type": "org.member.role_changed",
        "recipients": [{"email": "ann@acme.test"}],
        "payload": {"newRole": "admin\r\nBcc: victim@evil.test", "before": "member",
                    "orgName": "Acme\r\n\tX-Extra: 1", "actorName": "Grace"}}));
    assert_eq!(status, 202, "{body}");
    assert!(mail.wait_for_accepted(1, WAIT));
    let email = mail.accepted().pop().unwrap();
    assert_eq!(
        email.subject,
        "Your role in Acme X-Extra: 1 changed to admin Bcc: victim@evil.test"
    );
    assert_eq!(email.to, vec!["ann@acme.test".to_string()]);
}
