//! changeMemberRole (SPEC 4.2), authorization at the action boundary and the
//! append-only audit log: the role update, its audit row and its
//! notification commit together or not at all.

use herald::args;
use serde_json::json;

use crate::support::app::{
    demo_builder, emails_to, footprint, inbox_rows, settle, start_demo, ORG,
};
use crate::support::FakeResend;

fn patch_role(
    server: &crate::support::TestServer,
    token: &str,
    member: &str,
    role: &str,
) -> (u16, serde_json::Value) {
    server.patch(
        &format!("/v1/orgs/{ORG}/members/{member}"),
        Some(token),
        json!({ "role": role }),
    )
}

fn role_of(server: &crate::support::TestServer, member: &str) -> String {
    server.row(
        "SELECT role FROM members WHERE id = ?1",
        args![member],
        |r| r.get(0),
    )
}

#[test]
fn a_role_change_writes_its_audit_row_and_notifies_the_member() {
    let mail = FakeResend::start();
    let (server, demo) = start_demo(demo_builder(&mail));
    let (status, body) = patch_role(&server, &demo.bob, "mem_carol", "admin");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({ "memberId": "mem_carol", "role": "admin" }));
    settle(&server);

    assert_eq!(role_of(&server, "mem_carol"), "admin");
    let (_, audit) = server.get(&format!("/v1/orgs/{ORG}/audit"), Some(&demo.alice));
    let entry = &audit["items"][0];
    assert_eq!(entry["action"], "member.role-changed");
    assert_eq!(entry["actorUserId"], "bob");
    assert_eq!(entry["subjectId"], "mem_carol");
    assert_eq!(
        entry["payload"],
        json!({ "before": "member", "after": "admin" })
    );
    assert_eq!(inbox_rows(&server, "carol", "org.member.role_changed"), 1);
    assert_eq!(emails_to(&mail, "carol@acme.test"), 1);
}

#[test]
fn the_same_role_is_200_and_writes_and_notifies_nothing() {
    let mail = FakeResend::start();
    let (server, demo) = start_demo(demo_builder(&mail));
    let before = footprint(&server);
    let (status, body) = patch_role(&server, &demo.alice, "mem_carol", "member");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["role"], "member");
    settle(&server);
    assert_eq!(footprint(&server), before);
    assert_eq!(mail.request_count(), 0);
}

#[test]
fn the_last_owner_cannot_be_demoted() {
    let mail = FakeResend::start();
    let (server, demo) = start_demo(demo_builder(&mail));
    let before = footprint(&server);
    let (status, body) = patch_role(&server, &demo.alice, "mem_alice", "admin");
    assert_eq!(status, 409, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("last owner"));
    assert_eq!(footprint(&server), before);
    // With a second owner, the first may step down.
    assert_eq!(patch_role(&server, &demo.alice, "mem_bob", "owner").0, 200);
    assert_eq!(
        patch_role(&server, &demo.alice, "mem_alice", "admin").0,
        200
    );
    assert_eq!(role_of(&server, "mem_alice"), "admin");
}

#[test]
fn a_failure_after_the_update_leaves_no_role_change_no_audit_row_and_no_notification() {
    let mail = FakeResend::start();
    let (server, demo) = start_demo(demo_builder(&mail).env("HERALD_TEST_FAIL_ROLE_CHANGE", "1"));
    let before = footprint(&server);
    let (status, body) = patch_role(&server, &demo.alice, "mem_carol", "admin");
    assert_eq!(status, 500, "{body}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(role_of(&server, "mem_carol"), "member");
    assert_eq!(
        server.count("SELECT COUNT(*) FROM audit_log WHERE action = 'member.role-changed'"),
        0
    );
    assert_eq!(
        footprint(&server),
        before,
        "no outbox row, inbox row or delivery"
    );
    assert_eq!(mail.request_count(), 0);
}

#[test]
fn audit_rows_cannot_be_updated_or_deleted_even_with_raw_sql() {
    let mail = FakeResend::start();
    let (server, demo) = start_demo(demo_builder(&mail));
    assert_eq!(
        patch_role(&server, &demo.alice, "mem_carol", "admin").0,
        200
    );
    let raw = |sql: &str| server.store().write(|tx| tx.execute(sql, args![]));
    let update = raw("UPDATE audit_log SET action = 'nothing.happened'").unwrap_err();
    assert!(update.to_string().contains("append-only"), "{update}");
    let delete = raw("DELETE FROM audit_log").unwrap_err();
    assert!(delete.to_string().contains("append-only"), "{delete}");
    assert_eq!(
        server.count("SELECT COUNT(*) FROM audit_log WHERE action = 'member.role-changed'"),
        1
    );
}

#[test]
fn a_member_gets_403_for_admin_actions_and_nothing_is_written() {
    let mail = FakeResend::start();
    let (server, demo) = start_demo(demo_builder(&mail));
    let before = footprint(&server);
    let (status, body) = server.post(
        &format!("/v1/orgs/{ORG}/invitations"),
        Some(&demo.carol),
        json!({ "email": "friend@example.com", "role": "member" }),
    );
    assert_eq!(status, 403, "{body}");
    assert_eq!(patch_role(&server, &demo.carol, "mem_bob", "member").0, 403);
    assert_eq!(
        patch_role(&server, &demo.carol, "mem_carol", "owner").0,
        403
    );
    assert_eq!(
        server
            .get(&format!("/v1/orgs/{ORG}/audit"), Some(&demo.carol))
            .0,
        403
    );
    assert_eq!(
        server
            .get(&format!("/v1/orgs/{ORG}/invitations"), Some(&demo.carol))
            .0,
        403
    );
    // An admin cannot hand out or take away ownership.
    assert_eq!(patch_role(&server, &demo.bob, "mem_carol", "owner").0, 403);
    assert_eq!(patch_role(&server, &demo.bob, "mem_alice", "member").0, 403);
    settle(&server);
    assert_eq!(footprint(&server), before);
    // Members may read the member list and billing.
    assert_eq!(
        server
            .get(&format!("/v1/orgs/{ORG}/members"), Some(&demo.carol))
            .0,
        200
    );
    assert_eq!(
        server
            .get(&format!("/v1/orgs/{ORG}/billing"), Some(&demo.carol))
            .0,
        200
    );
}
