//! The reference app's command line: `herald seed` fills an empty database
//! with the demo org (and refuses to touch one with data), and
//! `herald stripe sign` prints a header the webhook accepts.

use serde_json::json;

use crate::support::app::{post_webhook, ORG, WEBHOOK_SECRET};
use crate::support::TestServer;

fn stdout(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn seed_creates_acme_with_three_roles_and_a_subscription_once() {
    let server = TestServer::builder().start();
    let printed = stdout(&server.run_cli(&["seed"]));
    let token = |user: &str| {
        let prefix = format!("demo user {user} token: ");
        printed
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no token for {user} in:\n{printed}"))
            .to_string()
    };
    let (status, members) = server.get(&format!("/v1/orgs/{ORG}/members"), Some(&token("carol")));
    assert_eq!(status, 200, "{members}");
    let roles: Vec<(String, String)> = members["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["userId"].as_str().unwrap().into(),
                m["role"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        roles,
        [("alice", "owner"), ("bob", "admin"), ("carol", "member")]
            .map(|(u, r)| (u.to_string(), r.to_string()))
    );
    let (_, billing) = server.get(&format!("/v1/orgs/{ORG}/billing"), Some(&token("alice")));
    assert_eq!(
        (billing["plan"].as_str(), billing["status"].as_str()),
        (Some("pro"), Some("active"))
    );
    assert_eq!(billing["subscriptionId"], "sub_demo_acme");

    let again = stdout(&server.run_cli(&["seed"]));
    assert!(again.contains("not seeding"), "{again}");
    assert_eq!(server.count("SELECT COUNT(*) FROM users"), 3);
}

#[test]
fn stripe_sign_prints_a_header_the_webhook_accepts() {
    let server = TestServer::builder()
        .env("STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET)
        .start();
    let event = json!({
        "id": "evt_cli", "object": "event", "created": 1, "type": "invoice.paid",
        "data": {"object": {"id": "in_1", "object": "invoice"}}
    });
    let file = server.dir().join("event.json");
    std::fs::write(&file, serde_json::to_vec(&event).unwrap()).unwrap();
    let header = stdout(&server.run_cli(&["stripe", "sign", file.to_str().unwrap()]));
    let header = header.trim();
    assert!(
        header.starts_with("t=") && header.contains(",v1="),
        "{header}"
    );
    let body = std::fs::read(&file).unwrap();
    let (status, answer) = post_webhook(&server, &body, Some(header));
    assert_eq!(status, 200, "{answer}");
}
