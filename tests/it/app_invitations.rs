//! sendInvitation and accept (SPEC 4.1, 4.3) against the real binary: the
//! invitee hears exactly once through the seam, conflicts and bad tokens
//! write nothing, and accepting joins the org and tells the inviter.

use serde_json::json;

use crate::support::app::{
    demo_builder, emails_to, footprint, inbox_rows, settle, start_demo, writable_db, ORG,
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
    let stored: String = server
        .db()
        .query_row("SELECT token_hash FROM invitations", [], |r| r.get(0))
        .unwrap();
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
    writable_db(&server)
        .execute(
            "UPDATE invitations SET expires_at = 1 WHERE id = ?1",
            [sent["invitationId"].as_str().unwrap()],
        )
        .unwrap();
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
