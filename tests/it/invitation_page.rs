//! The invitation email's accept link, over plain HTTP: herald serves
//! `GET /invitations/accept?token=...`; signed out it goes to /login and
//! back, signed in it shows the invitation with an Accept button (a
//! same-origin form post) that joins the org and lands on /inbox. Links
//! that can no longer be used say why; the token stays out of the log, and
//! signing in never redirects off-site.

use herald::args;
use serde_json::{json, Value};

use crate::support::app::{demo_builder, inbox_rows, settle, start_demo, Demo, ORG};
use crate::support::{FakeResend, RawResponse, TestServer};

/// Percent-encodes all but RFC 3986's unreserved characters.
fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `application/x-www-form-urlencoded` for a form body.
fn form_encode(pairs: &[(&str, &str)]) -> Vec<u8> {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", percent(k), percent(v)))
        .collect::<Vec<_>>()
        .join("&")
        .into_bytes()
}

fn post_form(
    server: &TestServer,
    path: &str,
    cookie: Option<&str>,
    origin: Option<&str>,
    pairs: &[(&str, &str)],
) -> RawResponse {
    let mut headers = vec![("content-type", "application/x-www-form-urlencoded")];
    if let Some(cookie) = cookie {
        headers.push(("cookie", cookie));
    }
    if let Some(origin) = origin {
        headers.push(("origin", origin));
    }
    server.request_raw("POST", path, &headers, Some(form_encode(pairs)))
}

/// Signs in (optionally with a `next`) and returns the answer and the
/// `Cookie` header value.
fn sign_in(server: &TestServer, token: &str, next: Option<&str>) -> (RawResponse, String) {
    let mut pairs = vec![("token", token)];
    if let Some(next) = next {
        pairs.push(("next", next));
    }
    let response = post_form(server, "/login", None, Some(server.base_url()), &pairs);
    assert_eq!(response.status, 303, "{}", response.text());
    let cookie = response
        .header("set-cookie")
        .expect("a session cookie")
        .split(';')
        .next()
        .unwrap()
        .to_string();
    (response, cookie)
}

fn page(server: &TestServer, path: &str, cookie: Option<&str>) -> RawResponse {
    let headers: Vec<(&str, &str)> = cookie.map(|c| ("cookie", c)).into_iter().collect();
    server.request_raw("GET", path, &headers, None)
}

/// Alice invites `email`; returns the accept link's path and query, read
/// from the email the fake provider received.
fn invite(server: &TestServer, mail: &FakeResend, demo: &Demo, email: &str) -> String {
    let (status, body) = server.post(
        &format!("/v1/orgs/{ORG}/invitations"),
        Some(&demo.alice),
        json!({"email": email, "role": "admin"}),
    );
    assert_eq!(status, 201, "{body}");
    settle(server);
    let text = mail
        .accepted()
        .into_iter()
        .rev()
        .find(|e| e.to.iter().any(|t| t == email))
        .and_then(|e| e.text)
        .expect("the invitation email");
    let link = text
        .lines()
        .find(|l| l.contains("/invitations/accept?token="))
        .expect("an accept link in the email")
        .trim();
    assert_eq!(link, body["acceptUrl"].as_str().unwrap());
    link.strip_prefix(server.base_url())
        .unwrap_or_else(|| panic!("{link} is on this server"))
        .to_string()
}

fn members(server: &TestServer, token: &str) -> Value {
    server
        .get(&format!("/v1/orgs/{ORG}/members"), Some(token))
        .1
}

#[test]
fn the_accept_link_signs_in_accepts_and_lands_on_the_inbox() {
    let mail = FakeResend::start();
    let (server, demo) = start_demo(demo_builder(&mail));
    let dave = server.create_user("dave", "dave@example.com", "Dave");
    let accept = invite(&server, &mail, &demo, "dave@example.com");
    let token = accept.split_once("token=").unwrap().1.to_string();

    // Signed out (or a SameSite=Strict cookie left behind by a click from
    // another site): on to /login from this origin, which brings the person
    // back here.
    let signed_out = page(&server, &accept, None);
    assert_eq!(signed_out.status, 200);
    let bounce = signed_out.text();
    let login = format!("/login?next={}", percent(&accept));
    let escaped = login.replace('/', "&#x2f;");
    assert!(
        bounce.contains(&format!(
            "<meta http-equiv=\"refresh\" content=\"0; url={escaped}\">"
        )),
        "{bounce}"
    );
    assert!(bounce.contains(&format!("href=\"{escaped}\"")), "{bounce}");
    let form = page(&server, &login, None);
    assert_eq!(form.status, 200);
    assert!(form.text().contains("name=\"next\""), "{}", form.text());
    let (signed_in, cookie) = sign_in(&server, &dave, Some(&accept));
    assert_eq!(signed_in.header("location"), Some(accept.as_str()));
    // Already signed in, /login goes straight back.
    let back = page(&server, &login, Some(&cookie));
    assert_eq!(back.status, 303);
    assert_eq!(back.header("location"), Some(accept.as_str()));

    // Signed in: the invitation and its Accept button.
    let shown = page(&server, &accept, Some(&cookie));
    assert_eq!(shown.status, 200, "{}", shown.text());
    assert_eq!(shown.header("referrer-policy"), Some("same-origin"));
    let html = shown.text();
    assert!(html.contains("Join Acme"), "{html}");
    assert!(html.contains("as admin"), "{html}");
    assert!(
        html.contains("<form method=\"post\" action=\"/invitations/accept\""),
        "{html}"
    );
    assert!(html.contains("id=\"accept\""), "{html}");
    assert_eq!(
        server.count("SELECT COUNT(*) FROM members WHERE user_id = 'dave'"),
        0
    );

    // Another site cannot accept on the person's behalf.
    for origin in [Some("http://evil.test"), None] {
        let refused = post_form(
            &server,
            "/invitations/accept",
            Some(&cookie),
            origin,
            &[("token", &token)],
        );
        assert_eq!(refused.status, 403, "origin {origin:?}");
    }
    assert_eq!(
        server.count("SELECT COUNT(*) FROM members WHERE user_id = 'dave'"),
        0
    );

    let accepted = post_form(
        &server,
        "/invitations/accept",
        Some(&cookie),
        Some(server.base_url()),
        &[("token", &token)],
    );
    assert_eq!(accepted.status, 303, "{}", accepted.text());
    let landing = accepted.header("location").unwrap().to_string();
    assert_eq!(landing, format!("/inbox?joined={ORG}"));
    let inbox = page(&server, &landing, Some(&cookie));
    assert_eq!(inbox.status, 200);
    assert!(
        inbox.text().contains("You joined <strong>Acme</strong>"),
        "{}",
        inbox.text()
    );

    let list = members(&server, &dave);
    let me = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["userId"] == "dave")
        .unwrap_or_else(|| panic!("dave is a member: {list}"));
    assert_eq!(me["role"], "admin");
    settle(&server);
    assert_eq!(inbox_rows(&server, "alice", "org.invitation.accepted"), 1);

    // The link works once.
    let again = page(&server, &accept, Some(&cookie));
    assert_eq!(again.status, 409);
    assert!(
        again.text().contains("already accepted"),
        "{}",
        again.text()
    );
    assert!(!server.logs().contains(&token), "the token is never logged");
}

#[test]
fn links_that_can_no_longer_be_used_say_why_and_change_nothing() {
    let mail = FakeResend::start();
    let (server, demo) = start_demo(demo_builder(&mail));
    let dave = server.create_user("dave", "dave@example.com", "Dave");
    let (_, dave_cookie) = sign_in(&server, &dave, None);
    let (_, carol_cookie) = sign_in(&server, &demo.carol, None);
    let members_before = server.count("SELECT COUNT(*) FROM members");

    let accept = invite(&server, &mail, &demo, "dave@example.com");
    let token = accept.split_once("token=").unwrap().1.to_string();
    let wrong_person = page(&server, &accept, Some(&carol_cookie));
    assert_eq!(wrong_person.status, 403);
    assert!(
        wrong_person.text().contains("signed in as carol@"),
        "{}",
        wrong_person.text()
    );
    let unknown = page(
        &server,
        "/invitations/accept?token=hinv_nope",
        Some(&dave_cookie),
    );
    assert_eq!(unknown.status, 404);
    assert!(unknown.text().contains("not valid"), "{}", unknown.text());
    let no_token = page(&server, "/invitations/accept", Some(&dave_cookie));
    assert_eq!(no_token.status, 400);
    assert!(
        no_token.text().contains("no invitation token"),
        "{}",
        no_token.text()
    );

    server.execute("UPDATE invitations SET expires_at = 0", args![]);
    let expired = page(&server, &accept, Some(&dave_cookie));
    assert_eq!(expired.status, 410);
    assert!(expired.text().contains("expired"), "{}", expired.text());
    let post = post_form(
        &server,
        "/invitations/accept",
        Some(&dave_cookie),
        Some(server.base_url()),
        &[("token", &token)],
    );
    assert_eq!(post.status, 410);

    let (status, list) = server.get(&format!("/v1/orgs/{ORG}/invitations"), Some(&demo.alice));
    assert_eq!(status, 200);
    let id = list["items"][0]["id"].as_str().unwrap().to_string();
    server.execute("UPDATE invitations SET expires_at = 9999999999999", args![]);
    let (status, _) = server.delete(
        &format!("/v1/orgs/{ORG}/invitations/{id}"),
        Some(&demo.alice),
    );
    assert_eq!(status, 204);
    let revoked = page(&server, &accept, Some(&dave_cookie));
    assert_eq!(revoked.status, 410);
    assert!(revoked.text().contains("revoked"), "{}", revoked.text());

    assert_eq!(server.count("SELECT COUNT(*) FROM members"), members_before);
    assert!(!server.logs().contains(&token), "the token is never logged");
}

#[test]
fn signing_in_returns_only_to_paths_on_this_site() {
    let server = TestServer::start();
    let token = server.create_user("ann", "ann@acme.test", "Ann");
    for next in [
        "//evil.test/x",
        "https://evil.test/",
        "/\\evil.test",
        "/\t/evil.test",
    ] {
        let (response, cookie) = sign_in(&server, &token, Some(next));
        assert_eq!(response.header("location"), Some("/inbox"), "next {next:?}");
        let login = page(
            &server,
            &format!("/login?next={}", percent(next)),
            Some(&cookie),
        );
        assert_eq!(login.header("location"), Some("/inbox"), "next {next:?}");
    }
    let (response, cookie) = sign_in(&server, &token, Some("/inbox?before=1.1"));
    assert_eq!(response.header("location"), Some("/inbox?before=1.1"));
    let signed_in = page(
        &server,
        "/login?next=%2Finvitations%2Faccept%3Ftoken%3Dx",
        Some(&cookie),
    );
    assert_eq!(
        signed_in.header("location"),
        Some("/invitations/accept?token=x")
    );
}
