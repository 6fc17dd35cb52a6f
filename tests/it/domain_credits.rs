//! Referral credits (SPEC 4.5) against the real binary: accepting grants both
//! sides once through the domain-event listener, replays and the double
//! `organization.provisioned` change nothing, `herald reconcile` grants
//! exactly what is missing, and `GET /v1/credits` shows the caller's ledger.

use herald::args;
use serde_json::{json, Value};

use crate::support::app::{demo_builder, inbox_rows, settle, start_demo, ORG, WAIT};
use crate::support::{wait_until, FakeResend, TestServer};

pub const GRANTED: &str = "billing.referral.granted";

/// Alice invites `email` and the user behind `token` accepts; returns the
/// invitation id.
pub fn invite_and_accept(server: &TestServer, inviter: &str, email: &str, token: &str) -> String {
    let (status, sent) = server.post(
        &format!("/v1/orgs/{ORG}/invitations"),
        Some(inviter),
        json!({ "email": email, "role": "member" }),
    );
    assert_eq!(status, 201, "{sent}");
    let url = sent["acceptUrl"].as_str().expect("acceptUrl");
    let accept_token = url.split_once("token=").expect("token in acceptUrl").1;
    let (status, body) = server.post(
        "/v1/invitations/accept",
        Some(token),
        json!({ "token": accept_token }),
    );
    assert_eq!(status, 200, "{body}");
    sent["invitationId"]
        .as_str()
        .expect("invitationId")
        .to_string()
}

pub fn ledger_rows(server: &TestServer) -> i64 {
    server.count("SELECT COUNT(*) FROM credit_ledger")
}

pub fn granted_notifications(server: &TestServer) -> i64 {
    server.count(&format!(
        "SELECT COUNT(*) FROM notifications WHERE type = '{GRANTED}'"
    ))
}

/// (ref_id, user_id, amount) of every ledger row, by ref id.
pub fn ledger(server: &TestServer) -> Vec<(String, String, i64)> {
    server.rows(
        "SELECT ref_id, user_id, amount FROM credit_ledger ORDER BY ref_id",
        args![],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
}

pub fn expected_ledger(invitation: &str, referee: &str, amount: i64) -> Vec<(String, String, i64)> {
    vec![
        (
            format!("referral:{invitation}:referee"),
            referee.into(),
            amount,
        ),
        (
            format!("referral:{invitation}:referrer"),
            "alice".into(),
            amount,
        ),
    ]
}

/// Waits until `n` listener runs are done.
pub fn wait_runs_done(server: &TestServer, listener: &str, n: i64) {
    let sql = format!(
        "SELECT COUNT(*) FROM listener_runs WHERE listener = '{listener}' AND status = 'done'"
    );
    if !wait_until(WAIT, || server.count(&sql) >= n) {
        server.fail(&format!("{listener} did not finish {n} runs"));
    }
}

#[test]
fn accepting_grants_both_sides_once_and_replays_change_nothing() {
    let mail = FakeResend::start();
    let (server, demo) = start_demo(demo_builder(&mail).env("HERALD_REFERRAL_CREDITS", "500"));
    let dave = server.create_user("dave", "dave@example.com", "Dave");
    let inv = invite_and_accept(&server, &demo.alice, "dave@example.com", &dave);

    // Both domain events went through the outbox; the listener handled both
    // (the second one finds both grants already made).
    assert_eq!(
        server.count(
            "SELECT COUNT(*) FROM outbox WHERE kind = 'domain'
             AND type IN ('invitation.accepted', 'organization.provisioned')"
        ),
        2
    );
    wait_runs_done(&server, "billing.referral", 2);
    settle(&server);
    assert_eq!(ledger(&server), expected_ledger(&inv, "dave", 500));
    assert_eq!(inbox_rows(&server, "alice", GRANTED), 1);
    assert_eq!(inbox_rows(&server, "dave", GRANTED), 1);
    assert!(
        server.logs().contains("duplicate_grant"),
        "the second event's grant attempt is reported as a duplicate"
    );
    assert!(!server.logs().contains("reconcile"), "no reconcile ran");

    let (status, credits) = server.get("/v1/credits", Some(&dave));
    assert_eq!(status, 200, "{credits}");
    assert_eq!(credits["balance"], 500);
    assert_eq!(credits["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        credits["items"][0]["refId"],
        format!("referral:{inv}:referee")
    );
    let (_, inbox) = server.get("/v1/inbox", Some(&dave));
    let item = inbox["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"] == GRANTED)
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(item["payload"]["amount"], 500, "{inbox}");
    assert_eq!(item["payload"]["balance"], 500, "{inbox}");

    // A second organization.provisioned (dave creates an org) grants nothing.
    let (status, body) = server.post("/v1/orgs", Some(&dave), json!({ "name": "Dave Co" }));
    assert_eq!(status, 201, "{body}");
    wait_runs_done(&server, "billing.referral", 3);

    // Replay every domain event to the listener, across a restart.
    server.execute(
        "UPDATE listener_runs SET status = 'pending', done_at = NULL, next_attempt_at = 0",
        args![],
    );
    let server = server.restart();
    let replayed = wait_until(WAIT, || {
        server.count("SELECT COUNT(*) FROM listener_runs WHERE status = 'done' AND attempts = 2")
            == 3
    });
    assert!(replayed, "every run was replayed");
    settle(&server);
    assert_eq!(ledger(&server), expected_ledger(&inv, "dave", 500));
    assert_eq!(granted_notifications(&server), 2);
    let (_, credits) = server.get("/v1/credits", Some(&dave));
    assert_eq!(credits["balance"], 500);
}

#[test]
fn with_credits_off_nothing_is_granted_until_reconcile_grants_exactly_the_missing() {
    let mail = FakeResend::start();
    let (server, demo) = start_demo(demo_builder(&mail));
    let dave = server.create_user("dave", "dave@example.com", "Dave");
    let erin = server.create_user("erin", "erin@example.com", "Erin");
    let missed = invite_and_accept(&server, &demo.alice, "dave@example.com", &dave);
    settle(&server);
    assert_eq!(ledger_rows(&server), 0);
    assert_eq!(server.count("SELECT COUNT(*) FROM listener_runs"), 0);
    assert_eq!(granted_notifications(&server), 0);
    // Without the setting, reconcile refuses rather than silently doing nothing.
    let out = server.run_cli(&["reconcile"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("HERALD_REFERRAL_CREDITS"));

    // Enabled later: a new accept is granted by the listener; the earlier
    // one only by reconcile.
    let mut server = server;
    server.stop();
    let server = server
        .restart_builder()
        .env("HERALD_REFERRAL_CREDITS", "100")
        .start();
    let live = invite_and_accept(&server, &demo.alice, "erin@example.com", &erin);
    wait_runs_done(&server, "billing.referral", 2);
    assert_eq!(ledger_rows(&server), 2);

    let out = server.run_cli(&["reconcile"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout} {:?}", out.stderr);
    assert!(
        stdout.contains("granted 2 missing referral credits for 1 accepted invitations"),
        "{stdout}"
    );
    let mut expected = expected_ledger(&missed, "dave", 100);
    expected.extend(expected_ledger(&live, "erin", 100));
    expected.sort();
    assert_eq!(ledger(&server), expected);

    let out = server.run_cli(&["reconcile"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("granted 0 missing referral credits for 0 accepted invitations"),
        "{stdout}"
    );
    assert_eq!(ledger_rows(&server), 4);
    // reconcile delivered the notifications it enqueued itself.
    settle(&server);
    let delivered = wait_until(WAIT, || granted_notifications(&server) == 4);
    assert!(delivered, "four grant notifications");
    let (_, credits) = server.get("/v1/credits", Some(&demo.alice));
    assert_eq!(credits["balance"], 200);
}

#[test]
fn the_serve_sweep_grants_what_a_lost_event_missed() {
    let (server, demo) = start_demo(TestServer::builder().arg("--demo"));
    let dave = server.create_user("dave", "dave@example.com", "Dave");
    let inv = invite_and_accept(&server, &demo.alice, "dave@example.com", &dave);
    let mut server = server;
    server.stop();
    let server = server
        .restart_builder()
        .env("HERALD_REFERRAL_CREDITS", "7")
        .env("HERALD_RECONCILE_INTERVAL_SECS", "1")
        .start();
    let swept = wait_until(WAIT, || ledger_rows(&server) == 2);
    assert!(swept, "the periodic sweep granted the missing credits");
    assert_eq!(ledger(&server), expected_ledger(&inv, "dave", 7));
    // The sweep logs once its transaction has committed, a moment after
    // the rows became visible.
    let logged = wait_until(WAIT, || server.logs().contains("reconcile sweep granted 2"));
    assert!(logged, "{}", server.logs());
}

#[test]
fn credits_need_a_user_token() {
    let server = TestServer::start();
    let (status, _) = server.get("/v1/credits", None);
    assert_eq!(status, 401);
    let key = server.service_key().to_string();
    let (status, _) = server.get("/v1/credits", Some(&key));
    assert_eq!(status, 403);
    let token = server.create_user("zed", "zed@example.com", "Zed");
    let (status, body) = server.get("/v1/credits", Some(&token));
    assert_eq!(status, 200);
    assert_eq!(body, json!({ "balance": 0, "items": [] }));
}
