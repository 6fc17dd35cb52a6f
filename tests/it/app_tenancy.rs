//! Tenancy (SPEC 4): a user of one org gets 404, never 403, for every
//! org-scoped endpoint of another org, exactly as for an org that does not
//! exist, and nothing is written. Also org creation and the audit listing.

use serde_json::{json, Value};

use crate::support::app::{demo_builder, footprint, settle, start_demo, ORG};
use crate::support::{FakeResend, TestServer};

/// Every org-scoped endpoint, with a body where it takes one.
fn org_endpoints(
    org: &str,
    member: &str,
    invitation: &str,
) -> Vec<(&'static str, String, Option<Value>)> {
    vec![
        ("GET", format!("/v1/orgs/{org}/members"), None),
        (
            "PATCH",
            format!("/v1/orgs/{org}/members/{member}"),
            Some(json!({"role": "admin"})),
        ),
        (
            "POST",
            format!("/v1/orgs/{org}/invitations"),
            Some(json!({"email": "someone@example.com", "role": "member"})),
        ),
        ("GET", format!("/v1/orgs/{org}/invitations"), None),
        (
            "DELETE",
            format!("/v1/orgs/{org}/invitations/{invitation}"),
            None,
        ),
        ("GET", format!("/v1/orgs/{org}/audit"), None),
        ("GET", format!("/v1/orgs/{org}/billing"), None),
    ]
}

fn call(
    server: &TestServer,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let auth = format!("Bearer {token}");
    let mut headers = vec![("authorization", auth.as_str())];
    if body.is_some() {
        headers.push(("content-type", "application/json"));
    }
    server.request(
        method,
        path,
        &headers,
        body.map(|b| serde_json::to_vec(&b).unwrap()),
    )
}

#[test]
fn a_user_of_another_org_gets_404_on_every_org_scoped_endpoint() {
    let mail = FakeResend::start();
    let (server, demo) = start_demo(demo_builder(&mail));
    let zed = server.create_user("zed", "zed@globex.test", "Zed");
    let (status, globex) = server.post("/v1/orgs", Some(&zed), json!({ "name": "Globex" }));
    assert_eq!(status, 201, "{globex}");
    assert_eq!(globex["name"], "Globex");
    let globex_id = globex["id"].as_str().unwrap().to_string();
    let (_, members) = server.get(&format!("/v1/orgs/{globex_id}/members"), Some(&zed));
    assert_eq!(members["items"][0]["role"], "owner");
    let zed_member = members["items"][0]["id"].as_str().unwrap().to_string();
    let (status, inv) = server.post(
        &format!("/v1/orgs/{globex_id}/invitations"),
        Some(&zed),
        json!({ "email": "x@globex.test" }),
    );
    assert_eq!(status, 201);
    let globex_inv = inv["invitationId"].as_str().unwrap().to_string();
    let (_, inv) = server.post(
        &format!("/v1/orgs/{ORG}/invitations"),
        Some(&demo.alice),
        json!({ "email": "y@acme.test" }),
    );
    let acme_inv = inv["invitationId"].as_str().unwrap().to_string();
    settle(&server);
    let before = footprint(&server);

    // Zed on Acme, Alice on Globex, anyone on an org that does not exist,
    // and Alice reaching Globex's rows through Acme's path.
    let cases = [
        (&zed, org_endpoints(ORG, "mem_carol", &acme_inv)),
        (
            &demo.alice,
            org_endpoints(&globex_id, &zed_member, &globex_inv),
        ),
        (
            &demo.carol,
            org_endpoints("org_nope", "mem_carol", &acme_inv),
        ),
    ];
    for (token, endpoints) in cases {
        for (method, path, body) in endpoints {
            let (status, answer) = call(&server, token, method, &path, body);
            assert_eq!(status, 404, "{method} {path}: {answer}");
            assert_eq!(
                answer["error"]["message"], "no such organization",
                "{method} {path}"
            );
        }
    }
    let (status, _) = call(
        &server,
        &demo.alice,
        "PATCH",
        &format!("/v1/orgs/{ORG}/members/{zed_member}"),
        Some(json!({"role": "admin"})),
    );
    assert_eq!(status, 404);
    let (status, _) = call(
        &server,
        &demo.alice,
        "DELETE",
        &format!("/v1/orgs/{ORG}/invitations/{globex_inv}"),
        None,
    );
    assert_eq!(status, 404);
    assert_eq!(footprint(&server), before, "nothing written");
}

#[test]
fn org_endpoints_need_a_user_token() {
    let server = TestServer::builder().arg("--demo").start();
    let key = server.service_key().to_string();
    assert_eq!(server.get(&format!("/v1/orgs/{ORG}/members"), None).0, 401);
    assert_eq!(
        server.get(&format!("/v1/orgs/{ORG}/members"), Some(&key)).0,
        403
    );
    assert_eq!(
        server
            .post("/v1/orgs", Some("hrld_wrong"), json!({"name": "X"}))
            .0,
        401
    );
    let (status, body) = server.post(
        "/v1/orgs",
        Some(&crate::support::app::demo_token(&server, "carol")),
        json!({"name": " "}),
    );
    assert_eq!(status, 422, "{body}");
}

#[test]
fn the_audit_log_lists_newest_first_with_a_cursor() {
    let mail = FakeResend::start();
    let (server, demo) = start_demo(demo_builder(&mail));
    for email in ["a@example.com", "b@example.com", "c@example.com"] {
        let (status, _) = server.post(
            &format!("/v1/orgs/{ORG}/invitations"),
            Some(&demo.alice),
            json!({ "email": email }),
        );
        assert_eq!(status, 201);
    }
    let path = format!("/v1/orgs/{ORG}/audit?limit=2");
    let (status, page) = server.get(&path, Some(&demo.bob));
    assert_eq!(status, 200, "{page}");
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["payload"]["email"], "c@example.com");
    assert_eq!(items[1]["payload"]["email"], "b@example.com");
    let cursor = page["nextCursor"].as_str().unwrap();
    let (_, rest) = server.get(&format!("{path}&cursor={cursor}"), Some(&demo.bob));
    let rest = rest["items"].as_array().unwrap();
    assert_eq!(rest[0]["payload"]["email"], "a@example.com");
    assert_eq!(rest[1]["action"], "org.created");
    assert_eq!(
        server.get(&format!("{path}&cursor=zz"), Some(&demo.bob)).0,
        400
    );
}
