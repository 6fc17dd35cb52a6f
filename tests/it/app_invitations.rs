//! sendInvitation and accept (SPEC 4.1, 4.3) against the real binary: the
//! invitee hears exactly once through the seam, conflicts and bad tokens
//! write nothing, and accepting joins the org and tells the inviter.

use herald::args;
use serde_json::json;

use crate::support::app::{
    demo_builder, emails_to, footprint, inbox_rows, settle, start_demo, ORG,
};
use crate::support::FakeResend;

fn invite(
    server: &crate::support::TestServer,
    token: &str,
    email: &str,
    role: &str,
) -> (u16, serde_json::Value) {
    server.post(
        &format!("/v1/orgs/{ORG}/invitations"),
        Some(token),
        json!({ "email": email, "role": role }),
    )
}

fn token_of(accept_url: &serde_json::Value) -> String {
    let url = accept_url.as_str().expect("acceptUrl is a string");
    url.split_once("token=")
        .expect("token in acceptUrl")
        .1
        .to_string()
}

#[test]
fn inviting_an_existing_user_gives_one_inbox_row_and_one_email() {
    let mail = FakeResend::start();
    let (server, demo) = start_demo(demo_builder(&mail));
    let dave = server.create_user("dave", "dave@example.com", "Dave");

    let (status, body) = invite(&server, &demo.alice, "dave@example.com", "admin");
    assert_eq!(status, 201, "{body}");
    let accept_url = body["acceptUrl"].as_str().unwrap().to_string();
    assert!(
        accept_url.starts_with(&format!("{}/invitations/accept?token=", server.base_url())),
        "{accept_url}"
    );
    settle(&server);

    assert_eq!(emails_to(&mail, "dave@example.com"), 1, "exactly one email");
    assert_eq!(inbox_rows(&server, "dave", "org.invitation.sent"), 1);
    assert_eq!(server.count("SELECT COUNT(*) FROM notifications"), 1);
    let email = mail.accepted().pop().unwrap();
    assert!(email.text.unwrap().contains(&accept_url));
    let (_, inbox) = server.get("/v1/inbox", Some(&dave));
    assert_eq!(inbox["items"][0]["actions"][0]["url"], accept_url.as_str());

    // The token is stored hashed, never as itself.
    let token = token_of(&body["acceptUrl"]);
    let stored: String = server.row("SELECT token_hash FROM invitations", args![], |r| r.get(0));
    assert_ne!(stored, token);
    assert_eq!(
        server.count("SELECT COUNT(*) FROM audit_log WHERE action = 'invitation.sent'"),
        1
    );
}

#[test]
fn inviting_a_non_user_sends_one_email_and_no_inbox_row() {
    let mail = FakeResend::start();
    let (server, demo) = start_demo(demo_builder(&mail));
    let (status, body) = invite(&server, &demo.bob, "newbie@example.com", "member");
    assert_eq!(status, 201, "{body}");
    settle(&server);
    assert_eq!(emails_to(&mail, "newbie@example.com"), 1);
    assert_eq!(mail.accepted_count(), 1);
    assert_eq!(server.count("SELECT COUNT(*) FROM notifications"), 0);
}

/// Every `href` of an HTML document, with character references decoded
/// (`.html` templates are autoescaped, which writes `/` as `&#x2f;`).
fn hrefs(html: &str) -> Vec<String> {
    html.split("href=\"")
        .skip(1)
        .filter_map(|rest| rest.split_once('"'))
        .map(|(value, _)| decode_html(value))
        .collect()
}

fn decode_html(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find('&') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let decoded = after.split_once(';').and_then(|(entity, tail)| {
            let c = match entity {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                _ => {
                    let code = match entity.strip_prefix("#x").or(entity.strip_prefix("#X")) {
                        Some(hex) => u32::from_str_radix(hex, 16).ok(),
                        None => entity.strip_prefix('#').and_then(|d| d.parse().ok()),
                    };
                    code.and_then(char::from_u32)
                }
            };
            c.map(|c| (c, tail))
        });
        match decoded {
            Some((c, tail)) => {
                out.push(c);
                rest = tail;
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[test]
fn herald_public_url_is_the_base_of_the_accept_link_in_the_answer_and_the_email() {
    let base = "https://herald.example.test";
    let mail = FakeResend::start();
    let (server, demo) = start_demo(demo_builder(&mail).env("HERALD_PUBLIC_URL", base));
    let (status, body) = invite(&server, &demo.bob, "newbie@example.com", "member");
    assert_eq!(status, 201, "{body}");
    let accept_url = body["acceptUrl"].as_str().unwrap().to_string();
    let token = token_of(&body["acceptUrl"]);
    assert!(token.starts_with("hinv_"), "{accept_url}");
    assert_eq!(
        accept_url,
        format!("{base}/invitations/accept?token={token}"),
        "the answer's link is on HERALD_PUBLIC_URL, not the bound address"
    );
    settle(&server);

    assert_eq!(emails_to(&mail, "newbie@example.com"), 1);
    let email = mail.accepted().pop().unwrap();
    let text = email.text.unwrap_or_default();
    let text_links: Vec<&str> = text
        .split_whitespace()
        .filter(|w| w.contains("/invitations/accept"))
        .collect();
    assert_eq!(text_links, [accept_url.as_str()], "text part:\n{text}");
    let html = email.html.unwrap_or_default();
    let html_links: Vec<String> = hrefs(&html)
        .into_iter()
        .filter(|h| h.contains("/invitations/accept"))
        .collect();
    assert!(
        !html_links.is_empty(),
        "no accept link in the html:\n{html}"
    );
    for link in &html_links {
        assert_eq!(link, &accept_url, "html part:\n{html}");
    }
    assert!(
        !text.contains(server.base_url()) && !html.contains(server.base_url()),
        "the email points at the bound address, not HERALD_PUBLIC_URL"
    );

    // The token the email carries is the invitation's own: it can be accepted.
    let newbie = server.create_user("newbie", "newbie@example.com", "Newbie");
    let (status, body) = server.post(
        "/v1/invitations/accept",
        Some(&newbie),
        json!({ "token": token_of(&json!(text_links[0])) }),
    );
    assert_eq!(status, 200, "{body}");
}

#[test]
fn inviting_a_member_or_a_pending_invitee_is_409_and_writes_nothing() {
    let mail = FakeResend::start();
    let (server, demo) = start_demo(demo_builder(&mail));
    let (status, _) = invite(&server, &demo.alice, "pending@example.com", "member");
    assert_eq!(status, 201);
    settle(&server);
    let before = footprint(&server);

    let (status, body) = invite(&server, &demo.alice, "CAROL@acme.test", "member");
    assert_eq!(status, 409, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("already a member"));
    let (status, body) = invite(&server, &demo.bob, "Pending@Example.com", "admin");
    assert_eq!(status, 409, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("pending invitation"));
    assert_eq!(footprint(&server), before);

    let (status, body) = invite(&server, &demo.alice, "not-an-address", "member");
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("validation_failed"))
    );
    let (status, _) = invite(&server, &demo.alice, "x@example.com", "emperor");
    assert_eq!(status, 422);
    assert_eq!(footprint(&server), before);
}

#[test]
fn accepting_joins_the_org_writes_an_audit_row_and_notifies_the_inviter() {
    let mail = FakeResend::start();
    let (server, demo) = start_demo(demo_builder(&mail));
    let dave = server.create_user("dave", "dave@example.com", "Dave");
    let (_, sent) = invite(&server, &demo.bob, "dave@example.com", "member");
    let token = token_of(&sent["acceptUrl"]);

    let (status, body) = server.post(
        "/v1/invitations/accept",
        Some(&dave),
        json!({ "token": token }),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["organizationId"], ORG);
    let member_id = body["memberId"].as_str().unwrap().to_string();
    settle(&server);

    let (status, members) = server.get(&format!("/v1/orgs/{ORG}/members"), Some(&dave));
    assert_eq!(status, 200);
    let me = members["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["userId"] == "dave")
        .expect("dave is a member")
        .clone();
    assert_eq!(
        (me["id"].as_str(), me["role"].as_str()),
        (Some(member_id.as_str()), Some("member"))
    );
    assert_eq!(
        server.count("SELECT COUNT(*) FROM audit_log WHERE action = 'invitation.accepted' AND actor_user_id = 'dave'"),
        1
    );
    assert_eq!(inbox_rows(&server, "bob", "org.invitation.accepted"), 1);
    let (_, inbox) = server.get("/v1/inbox", Some(&demo.bob));
    assert_eq!(
        inbox["items"][0]["payload"]["memberEmail"],
        "dave@example.com"
    );
}

#[test]
fn reused_revoked_and_expired_tokens_are_refused_and_write_nothing() {
    let mail = FakeResend::start();
    let (server, demo) = start_demo(demo_builder(&mail));
    let dave = server.create_user("dave", "dave@example.com", "Dave");
    let erin = server.create_user("erin", "erin@example.com", "Erin");
    let frank = server.create_user("frank", "frank@example.com", "Frank");
    let accept = |token: &str, user: &str| {
        server.post(
            "/v1/invitations/accept",
            Some(user),
            json!({ "token": token }),
        )
    };

    // Reused: the second accept of a used link.
    let (_, sent) = invite(&server, &demo.alice, "dave@example.com", "member");
    let dave_token = token_of(&sent["acceptUrl"]);
    assert_eq!(accept(&dave_token, &dave).0, 200);
    // Revoked.
    let (_, sent) = invite(&server, &demo.alice, "erin@example.com", "member");
    let erin_token = token_of(&sent["acceptUrl"]);
    let path = format!(
        "/v1/orgs/{ORG}/invitations/{}",
        sent["invitationId"].as_str().unwrap()
    );
    assert_eq!(server.delete(&path, Some(&demo.bob)).0, 204);
    // Expired: moved into the past, as seven days passing would.
    let (_, sent) = invite(&server, &demo.alice, "frank@example.com", "member");
    let frank_token = token_of(&sent["acceptUrl"]);
    server.execute(
        "UPDATE invitations SET expires_at = 1 WHERE id = ?1",
        args![sent["invitationId"].as_str().unwrap()],
    );
    settle(&server);
    let before = footprint(&server);

    let (status, body) = accept(&dave_token, &dave);
    assert_eq!(status, 409, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("already accepted"));
    let (status, body) = accept(&erin_token, &erin);
    assert_eq!(status, 410, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("revoked"));
    let (status, body) = accept(&frank_token, &frank);
    assert_eq!(status, 410, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("expired"));
    let (status, _) = accept("hinv_not_a_real_token", &frank);
    assert_eq!(status, 404);
    assert_eq!(footprint(&server), before, "nothing written");
}

#[test]
fn a_user_whose_email_does_not_match_gets_403_and_nothing_is_written() {
    let mail = FakeResend::start();
    let (server, demo) = start_demo(demo_builder(&mail));
    let mallory = server.create_user("mallory", "mallory@example.com", "Mallory");
    let (_, sent) = invite(&server, &demo.alice, "dave@example.com", "admin");
    settle(&server);
    let before = footprint(&server);
    let (status, body) = server.post(
        "/v1/invitations/accept",
        Some(&mallory),
        json!({ "token": token_of(&sent["acceptUrl"]) }),
    );
    assert_eq!(status, 403, "{body}");
    assert_eq!(footprint(&server), before);
}
