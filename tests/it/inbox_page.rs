//! The pages a person sees, over plain HTTP: `/login` sessions (HttpOnly,
//! SameSite=Strict cookie; token never in a url or the log), CSRF refusal of
//! cross-origin posts, `/inbox` rendering and marking read, logout revoking
//! the session, the stream accepting the cookie, `/dev/mail` only with
//! `--dev`, and XSS payloads rendered inert everywhere.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::sse::{Frame, SseClient};
use crate::support::{RawResponse, TestServer};

const WAIT: Duration = Duration::from_secs(10);
const EVIL: &str = "<script>window.__xss=1</script><img src=x onerror=alert(1)>";

fn send(server: &TestServer, event: Value) {
    let (status, body) = server.post_event(event);
    assert_eq!(status, 202, "{body}");
    server.wait_event_done(body["eventId"].as_str().unwrap(), WAIT);
}

fn origin(server: &TestServer) -> String {
    server.base_url().to_string()
}

/// POST /login with the token in the form body, from our own origin.
fn login(server: &TestServer, token: &str) -> RawResponse {
    let body = format!("token={token}").into_bytes();
    let origin = origin(server);
    server.request_raw(
        "POST",
        "/login",
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("origin", &origin),
        ],
        Some(body),
    )
}

/// Signs in and returns the `Cookie` header value.
pub fn session(server: &TestServer, token: &str) -> String {
    let response = login(server, token);
    assert_eq!(response.status, 303, "{}", response.text());
    let set_cookie = response.header("set-cookie").expect("a session cookie");
    set_cookie.split(';').next().unwrap().to_string()
}

fn page(server: &TestServer, path: &str, cookie: &str) -> RawResponse {
    server.request_raw("GET", path, &[("cookie", cookie)], None)
}

fn post_form(server: &TestServer, path: &str, cookie: &str, origin: Option<&str>) -> RawResponse {
    let mut headers = vec![("cookie", cookie), ("accept", "application/json")];
    if let Some(origin) = origin {
        headers.push(("origin", origin));
    }
    server.request_raw("POST", path, &headers, Some(Vec::new()))
}

#[test]
fn login_sets_a_strict_http_only_session_and_never_leaks_the_token() {
    let server = TestServer::start();
    let token = server.create_user("ann", "ann@acme.test", "Ann");
    let (status, form) = (
        server.request_raw("GET", "/login", &[], None).status,
        server.request_raw("GET", "/login", &[], None).text(),
    );
    assert_eq!(status, 200);
    assert!(
        form.contains("<form method=\"post\" action=\"/login\""),
        "{form}"
    );

    let response = login(&server, &token);
    assert_eq!(response.status, 303);
    assert_eq!(response.header("location"), Some("/inbox"));
    let cookie = response.header("set-cookie").unwrap();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{attribute} in {cookie}");
    }
    assert!(cookie.starts_with("herald_session=hses_"), "{cookie}");
    assert!(
        !cookie.contains(&token),
        "the cookie is a session, not the token"
    );
    assert!(!server.logs().contains(&token), "the token is never logged");
    let stored = server.count(&format!(
        "SELECT COUNT(*) FROM sessions WHERE id_hash = '{}'",
        &cookie["herald_session=".len()..cookie.find(';').unwrap()]
    ));
    assert_eq!(stored, 0, "the session secret is stored only hashed");
    assert_eq!(server.count("SELECT COUNT(*) FROM sessions"), 1);
}

#[test]
fn bad_tokens_and_cross_origin_logins_are_refused() {
    let server = TestServer::start();
    let token = server.create_user("ann", "ann@acme.test", "Ann");
    let wrong = login(&server, "hrld_wrong");
    assert_eq!(wrong.status, 401);
    assert!(wrong.text().contains("That token is not valid"));
    assert!(wrong.header("set-cookie").is_none());
    let service = login(&server, server.service_key());
    assert_eq!(service.status, 403);
    assert!(service.header("set-cookie").is_none());

    let body = format!("token={token}").into_bytes();
    for origin in [Some("http://evil.test"), None] {
        let mut headers = vec![("content-type", "application/x-www-form-urlencoded")];
        if let Some(origin) = origin {
            headers.push(("origin", origin));
        }
        let response = server.request_raw("POST", "/login", &headers, Some(body.clone()));
        assert_eq!(response.status, 403, "origin {origin:?}");
        assert!(response.header("set-cookie").is_none());
    }
    assert_eq!(server.count("SELECT COUNT(*) FROM sessions"), 0);
}

#[test]
fn the_inbox_page_lists_newest_first_with_badge_actions_and_safe_headers() {
    let server = TestServer::start();
    let token = server.create_user("ann", "ann@acme.test", "Ann");
    let signed_out = server.request_raw("GET", "/inbox", &[], None);
    assert_eq!(signed_out.status, 303);
    assert_eq!(signed_out.header("location"), Some("/login"));

    send(
        &server,
        json!({"type": "system.announcement", "recipients": ["ann"],
               "payload": {"title": "Older note", "body": "first"}}),
    );
    send(
        &server,
        json!({"type": "org.invitation.sent", "recipients": ["ann"],
               "payload": {"invitedEmail": "ann@acme.test", "role": "admin", "orgName": "Acme",
                           "inviterName": "Grace", "acceptUrl": "https://app.test/accept?t=1&x=2"}}),
    );
    let cookie = session(&server, &token);
    let response = page(&server, "/inbox", &cookie);
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let csp = response.header("content-security-policy").unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(response.header("x-frame-options"), Some("DENY"));
    let html = response.text();
    let newer = html
        .find("Grace invited you to join Acme")
        .expect("newest item");
    let older = html.find("Older note").expect("older item");
    assert!(newer < older, "newest first");
    assert!(html.contains("data-count=\"2\""), "two unseen");
    assert!(
        html.contains("href=\"https:&#x2f;&#x2f;app.test&#x2f;accept?t=1&amp;x=2\""),
        "the action is a link"
    );
    assert!(html.contains(">Accept invitation</a>"));
    assert!(html.contains("<script src=\"/assets/inbox.js\" defer></script>"));
    let js = server.request_raw("GET", "/assets/inbox.js", &[], None);
    assert_eq!(js.status, 200);
    assert!(js.text().contains("EventSource"));
}

#[test]
fn marking_read_drops_the_unseen_count_and_needs_our_origin() {
    let server = TestServer::start();
    let token = server.create_user("ann", "ann@acme.test", "Ann");
    for title in ["one", "two", "three"] {
        send(
            &server,
            json!({"type": "system.announcement", "recipients": ["ann"],
                   "payload": {"title": title, "body": "b"}}),
        );
    }
    let cookie = session(&server, &token);
    let (_, list) = server.get("/v1/inbox", Some(&token));
    let newest = list["items"][0]["id"].as_str().unwrap().to_string();
    let path = format!("/inbox/{newest}/read");

    for bad in [Some("http://evil.test"), None] {
        let refused = post_form(&server, &path, &cookie, bad);
        assert_eq!(refused.status, 403, "origin {bad:?}");
    }
    let unread = "SELECT COUNT(*) FROM notifications WHERE read_at IS NULL";
    assert_eq!(server.count(unread), 3, "a refused post changes nothing");

    let origin = origin(&server);
    let done = post_form(&server, &path, &cookie, Some(&origin));
    assert_eq!(done.status, 200, "{}", done.text());
    assert_eq!(done.json(), json!({"unseenCount": 2}));
    assert_eq!(server.count(unread), 2);
    // Without script the browser is sent back to the page.
    let plain = server.request_raw(
        "POST",
        "/inbox/read-all",
        &[("cookie", &cookie), ("origin", &origin)],
        Some(Vec::new()),
    );
    assert_eq!(plain.status, 303);
    assert_eq!(plain.header("location"), Some("/inbox"));
    assert_eq!(server.count(unread), 0);
    let (_, count) = server.get("/v1/inbox/unseen-count", Some(&token));
    assert_eq!(count["count"], 0);
    // Another user's row is not found, exactly like a missing one.
    let other = server.create_user("ben", "ben@acme.test", "Ben");
    let ben = session(&server, &other);
    assert_eq!(post_form(&server, &path, &ben, Some(&origin)).status, 404);
}

#[test]
fn logout_revokes_the_session() {
    let server = TestServer::start();
    let token = server.create_user("ann", "ann@acme.test", "Ann");
    let cookie = session(&server, &token);
    assert_eq!(page(&server, "/inbox", &cookie).status, 200);
    let origin = origin(&server);
    let cross = server.request_raw(
        "POST",
        "/logout",
        &[("cookie", &cookie), ("origin", "http://evil.test")],
        Some(Vec::new()),
    );
    assert_eq!(cross.status, 403, "no logout CSRF");
    let out = server.request_raw(
        "POST",
        "/logout",
        &[("cookie", &cookie), ("origin", &origin)],
        Some(Vec::new()),
    );
    assert_eq!(out.status, 303);
    assert_eq!(out.header("location"), Some("/login"));
    assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));
    // A copy of the old cookie no longer signs anyone in.
    let after = page(&server, "/inbox", &cookie);
    assert_eq!(after.status, 303);
    assert_eq!(server.count("SELECT COUNT(*) FROM sessions"), 0);
}

#[test]
fn the_stream_accepts_the_session_cookie() {
    let server = TestServer::builder()
        .env("HERALD_STREAM_HEARTBEAT_MS", "150")
        .start();
    let token = server.create_user("ann", "ann@acme.test", "Ann");
    let cookie = session(&server, &token);
    let mut stream = SseClient::open(
        server.base_url(),
        "/v1/inbox/stream",
        &[("Cookie", &cookie)],
    );
    assert_eq!(stream.status, 200);
    assert_eq!(
        stream.next_frame(WAIT),
        Some(Frame::Comment("connected".into()))
    );
    send(
        &server,
        json!({"type": "system.announcement", "recipients": ["ann"],
               "payload": {"title": "via cookie", "body": "b"}}),
    );
    let event = stream.next_event(WAIT).expect("pushed");
    assert_eq!(event.json()["title"], "via cookie");
    let forged = SseClient::open(
        server.base_url(),
        "/v1/inbox/stream",
        &[("Cookie", "herald_session=hses_forged")],
    );
    assert_eq!(forged.status, 401);
}

#[test]
fn xss_payloads_in_names_and_payloads_are_inert_on_the_inbox_page() {
    let server = TestServer::start();
    let token = server.create_user("ann", "ann@acme.test", EVIL);
    send(
        &server,
        json!({"type": "system.announcement", "recipients": ["ann"],
               "payload": {"title": EVIL, "body": format!("\"'>{EVIL}")}}),
    );
    send(
        &server,
        json!({"type": "org.invitation.sent", "recipients": ["ann"],
               "payload": {"invitedEmail": "ann@acme.test", "role": EVIL, "orgName": EVIL,
                           "inviterName": EVIL, "acceptUrl": "javascript:alert(document.cookie)"}}),
    );
    let cookie = session(&server, &token);
    let html = page(&server, "/inbox", &cookie).text();
    assert!(!html.contains("<script>window"), "{html}");
    assert!(!html.contains("<img src=x"), "{html}");
    assert!(!html.to_ascii_lowercase().contains("javascript:"), "{html}");
    assert!(html.contains("&lt;script&gt;window.__xss=1&lt;&#x2f;script&gt;"));
    // The only scripts on the page are our own file.
    assert_eq!(html.matches("<script").count(), 1, "{html}");
}

#[test]
fn dev_mail_exists_only_with_dev_and_shows_email_html_inertly() {
    let plain = TestServer::start();
    let (status, _) = plain.get("/dev/mail", None);
    assert_eq!(status, 404, "without --dev there is no mailbox");

    let server = TestServer::builder().arg("--dev").start();
    server.create_user("ann", "ann@acme.test", EVIL);
    for (org, role) in [("First Org", "member"), (EVIL, "admin")] {
        send(
            &server,
            json!({"type": "org.member.role_changed", "recipients": ["ann"],
                   "payload": {"newRole": role, "before": "viewer", "orgName": org,
                               "actorName": EVIL}}),
        );
    }
    let sent = "SELECT COUNT(*) FROM deliveries WHERE status = 'sent' AND provider = 'console'";
    assert!(crate::support::wait_until(WAIT, || server.count(sent) == 2));
    let response = server.request_raw("GET", "/dev/mail", &[], None);
    assert_eq!(response.status, 200);
    let csp = response.header("content-security-policy").unwrap();
    assert!(csp.contains("script-src 'none'"), "{csp}");
    let html = response.text();
    let newer = html.find("changed to admin").expect("the newer email");
    let older = html.find("changed to member").expect("the older email");
    assert!(newer < older, "newest first");
    assert!(html.contains("ann@acme.test"));
    assert!(html.contains("<iframe class=\"mail-html\" sandbox=\"\""));
    assert!(!html.contains("<script>window"), "{html}");
    assert!(!html.contains("<img src=x"), "{html}");
    assert_eq!(html.matches("<script").count(), 0, "no script at all");
}

/// GET `path` over a raw connection naming `host` in the Host header, as a
/// browser does for a page whose host name resolves to this server.
fn get_with_host(server: &TestServer, path: &str, host: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = server.base_url().trim_start_matches("http://");
    let mut socket = std::net::TcpStream::connect(addr).expect("connect");
    socket.set_read_timeout(Some(WAIT)).expect("read timeout");
    socket
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .expect("send");
    let mut answer = String::new();
    socket.read_to_string(&mut answer).expect("read the answer");
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"));
    (status, answer)
}

#[test]
fn dev_mail_answers_only_at_its_own_host_names() {
    let server = TestServer::builder()
        .arg("--dev")
        .env("HERALD_PUBLIC_URL", "https://Herald.Example.test")
        .start();
    send(
        &server,
        json!({"type": "org.invitation.sent", "recipients": [{"email": "dave@acme.test"}],
               "payload": {"invitedEmail": "dave@acme.test", "role": "admin", "orgName": "Acme",
                           "inviterName": "Grace",
                           "acceptUrl": "https://herald.example.test/invitations/accept?token=hinv_secret"}}),
    );
    let sent = "SELECT COUNT(*) FROM deliveries WHERE status = 'sent'";
    assert!(crate::support::wait_until(WAIT, || server.count(sent) == 1));
    let port = server.base_url().rsplit(':').next().unwrap().to_string();

    // A page of another site whose name now resolves here (DNS rebinding).
    for host in [
        format!("evil.test:{port}"),
        "evil.test".to_string(),
        format!("127.0.0.1.evil.test:{port}"),
        format!("localhost.evil.test:{port}"),
    ] {
        let (status, answer) = get_with_host(&server, "/dev/mail", &host);
        assert_eq!(status, 421, "Host: {host}\n{answer}");
        assert!(answer.contains("answers only at localhost"), "{answer}");
        assert!(!answer.contains("hinv_secret"), "{answer}");
        assert!(!answer.contains("dave@acme.test"), "{answer}");
    }
    // The names of this server: localhost, its loopback addresses with any
    // port, and the host of HERALD_PUBLIC_URL.
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        "[::1]:8025".to_string(),
        "LOCALHOST".to_string(),
        "herald.example.test".to_string(),
        "herald.example.test:443".to_string(),
    ] {
        let (status, answer) = get_with_host(&server, "/dev/mail", &host);
        assert_eq!(status, 200, "Host: {host}\n{answer}");
        assert!(answer.contains("hinv_secret"), "{answer}");
    }
}
