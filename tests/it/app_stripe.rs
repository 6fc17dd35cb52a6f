//! The Stripe webhook (SPEC 4.4): signatures checked exactly as Stripe
//! documents them, claim-once in the same transaction as the handling, the
//! stale-ordering guard, past_due fanned out to every owner after commit,
//! and a failed handler rolled back so a later redelivery succeeds.

use serde_json::{json, Value};

use crate::support::app::{
    deliver, demo_builder, emails_to, footprint, inbox_rows, now_secs, post_webhook, settle,
    start_demo, stripe_v1, ORG, WAIT, WEBHOOK_SECRET,
};
use crate::support::{wait_until, FakeResend, TestServer};

/// A `customer.subscription.updated` in the current API shape (period end on
/// the items).
fn subscription_updated(id: &str, created: i64, status: &str, price: &str) -> Value {
    json!({
        "id": id,
        "object": "event",
        "api_version": "2025-03-31.basil",
        "created": created,
        "type": "customer.subscription.updated",
        "livemode": false,
        "data": {
            "object": {
                "id": "sub_demo_acme",
                "object": "subscription",
                "customer": "cus_demo_acme",
                "status": status,
                "items": {"object": "list", "data": [{
                    "id": "si_1",
                    "object": "subscription_item",
                    "current_period_end": 1_900_000_000,
                    "price": {"id": price, "object": "price"}
                }]}
            },
            "previous_attributes": {"status": "active"}
        }
    })
}

fn billing(server: &TestServer, token: &str) -> Value {
    let (status, body) = server.get(&format!("/v1/orgs/{ORG}/billing"), Some(token));
    assert_eq!(status, 200, "{body}");
    body
}

#[test]
fn past_due_notifies_every_owner_once_and_a_replay_changes_nothing() {
    let mail = FakeResend::start();
    let (server, demo) = start_demo(demo_builder(&mail));
    // A second owner (whose role-change email is counted before the webhook).
    let (status, _) = server.patch(
        &format!("/v1/orgs/{ORG}/members/mem_bob"),
        Some(&demo.alice),
        json!({"role": "owner"}),
    );
    assert_eq!(status, 200);
    settle(&server);
    let bob_before = emails_to(&mail, "bob@acme.test");

    let event = subscription_updated(
        "evt_past_due_1",
        now_secs(),
        "past_due",
        "price_pro_monthly",
    );
    let (status, body) = deliver(&server, &event);
    assert_eq!(
        (status, body.clone()),
        (200, json!({"received": true, "duplicate": false}))
    );
    settle(&server);

    let view = billing(&server, &demo.carol);
    assert_eq!(view["status"], "past_due");
    assert_eq!(view["plan"], "pro");
    assert_eq!(view["subscriptionId"], "sub_demo_acme");
    assert_eq!(view["currentPeriodEnd"], "2030-03-17T17:46:40.000Z");
    for (user, address, earlier) in [
        ("alice", "alice@acme.test", 0),
        ("bob", "bob@acme.test", bob_before),
    ] {
        assert_eq!(
            inbox_rows(&server, user, "org.billing.past_due"),
            1,
            "{user}"
        );
        assert_eq!(emails_to(&mail, address) - earlier, 1, "{address}");
    }
    assert_eq!(inbox_rows(&server, "carol", "org.billing.past_due"), 0);
    assert_eq!(
        server
            .count("SELECT COUNT(*) FROM audit_log WHERE action = 'billing.subscription.updated'"),
        1
    );

    let before = footprint(&server);
    let emails = mail.accepted_count();
    let (status, body) = deliver(&server, &event);
    assert_eq!(
        (status, body),
        (200, json!({"received": true, "duplicate": true}))
    );
    settle(&server);
    assert_eq!(footprint(&server), before);
    assert_eq!(mail.accepted_count(), emails);
}

#[test]
fn a_stale_update_changes_nothing() {
    let mail = FakeResend::start();
    let (server, demo) = start_demo(demo_builder(&mail));
    let now = now_secs();
    let newer = subscription_updated("evt_newer", now, "active", "price_team_monthly");
    assert_eq!(deliver(&server, &newer).0, 200);
    let older = subscription_updated("evt_older", now - 60, "past_due", "price_pro_monthly");
    let (status, body) = deliver(&server, &older);
    assert_eq!((status, body["duplicate"].clone()), (200, json!(false)));
    settle(&server);
    let view = billing(&server, &demo.alice);
    assert_eq!(
        (view["status"].as_str(), view["plan"].as_str()),
        (Some("active"), Some("team"))
    );
    assert_eq!(
        server.count("SELECT COUNT(*) FROM audit_log WHERE subject_type = 'subscription'"),
        1
    );
    assert_eq!(server.count("SELECT COUNT(*) FROM outbox"), 0);
}

#[test]
fn bad_signatures_are_400_and_write_nothing() {
    let mail = FakeResend::start();
    let (server, _demo) = start_demo(demo_builder(&mail));
    let before = footprint(&server);
    let event = subscription_updated("evt_sig", now_secs(), "past_due", "price_pro_monthly");
    let body = serde_json::to_vec(&event).unwrap();
    let t = now_secs();
    let good = stripe_v1(&body, t, WEBHOOK_SECRET);

    let wrong_secret = format!("t={t},v1={}", stripe_v1(&body, t, "whsec_someone_else"));
    // A minute past the 300 s tolerance either way: a slow run must not
    // bring a case back inside it.
    let old = t - 360;
    let too_old = format!("t={old},v1={}", stripe_v1(&body, old, WEBHOOK_SECRET));
    let future = t + 360;
    let too_new = format!("t={future},v1={}", stripe_v1(&body, future, WEBHOOK_SECRET));
    let mut tampered = event.clone();
    tampered["data"]["object"]["status"] = json!("active");
    let tampered = serde_json::to_vec(&tampered).unwrap();
    let cases: Vec<(&str, &[u8], Option<String>)> = vec![
        ("missing header", &body, None),
        ("empty header", &body, Some(String::new())),
        ("wrong secret", &body, Some(wrong_secret)),
        ("timestamp too old", &body, Some(too_old)),
        ("timestamp in the future", &body, Some(too_new)),
        ("tampered body", &tampered, Some(format!("t={t},v1={good}"))),
        ("garbage", &body, Some("nonsense".into())),
    ];
    for (case, payload, header) in cases {
        let (status, answer) = post_webhook(&server, payload, header.as_deref());
        assert_eq!(status, 400, "{case}: {answer}");
        assert_eq!(answer["error"]["code"], "invalid_signature", "{case}");
    }
    assert_eq!(footprint(&server), before, "no row written anywhere");
}

/// Stripe's docs: `Stripe-Signature: t=...,v1=...,v0=...`, possibly with
/// several v1 entries (one per active secret while rotating); only v1 counts.
#[test]
fn the_signature_check_follows_stripes_documented_scheme() {
    let mail = FakeResend::start();
    let (server, _demo) = start_demo(demo_builder(&mail));
    let mut n = 0;
    let mut check = |header: &dyn Fn(&[u8], i64) -> String, expected: u16| {
        n += 1;
        let mut event = subscription_updated(
            &format!("evt_scheme_{n}"),
            now_secs(),
            "active",
            "price_pro_monthly",
        );
        event["type"] = json!("invoice.created");
        let body = serde_json::to_vec(&event).unwrap();
        let h = header(&body, now_secs());
        let (status, answer) = post_webhook(&server, &body, Some(&h));
        assert_eq!(status, expected, "case {n} `{h}`: {answer}");
    };
    let sig = |b: &[u8], t: i64, secret: &str| stripe_v1(b, t, secret);
    // Several v1 entries, the valid one last, plus a v0 entry.
    check(
        &|b, t| {
            format!(
                "t={t},v1={},v1={},v0={}",
                sig(b, t, "whsec_old"),
                sig(b, t, WEBHOOK_SECRET),
                sig(b, t, "v0")
            )
        },
        200,
    );
    // The valid one first.
    check(
        &|b, t| {
            format!(
                "t={t},v1={},v1={}",
                sig(b, t, WEBHOOK_SECRET),
                sig(b, t, "whsec_old")
            )
        },
        200,
    );
    // The right HMAC under the v0 scheme only: v0 is never trusted.
    check(
        &|b, t| {
            format!(
                "t={t},v1={},v0={}",
                sig(b, t, "whsec_old"),
                sig(b, t, WEBHOOK_SECRET)
            )
        },
        400,
    );
    // Only v0.
    check(
        &|b, t| format!("t={t},v0={}", sig(b, t, WEBHOOK_SECRET)),
        400,
    );
    // Every v1 wrong.
    check(
        &|b, t| format!("t={t},v1={},v1={}", sig(b, t, "a"), sig(b, t, "b")),
        400,
    );
    // The signed timestamp is part of the MAC: a different t fails.
    check(
        &|b, t| format!("t={},v1={}", t - 1, sig(b, t, WEBHOOK_SECRET)),
        400,
    );
    // Uppercase hex is the same bytes.
    check(
        &|b, t| format!("t={t},v1={}", sig(b, t, WEBHOOK_SECRET).to_uppercase()),
        200,
    );
    assert_eq!(server.count("SELECT COUNT(*) FROM processed_events"), 3);
}

#[test]
fn a_handler_failure_is_500_writes_nothing_and_a_later_redelivery_succeeds_once() {
    let mail = FakeResend::start();
    let (server, demo) =
        start_demo(demo_builder(&mail).env("HERALD_TEST_FAIL_STRIPE_EVENT", "evt_fails_first"));
    let before = footprint(&server);
    let event = subscription_updated(
        "evt_fails_first",
        now_secs(),
        "past_due",
        "price_pro_monthly",
    );
    let (status, body) = deliver(&server, &event);
    assert_eq!(status, 500, "{body}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        footprint(&server),
        before,
        "claim, entitlement, audit and outbox rolled back"
    );
    assert_eq!(billing(&server, &demo.alice)["status"], "active");
    assert_eq!(mail.request_count(), 0);

    // The fix is deployed (the hook gone); Stripe redelivers the same event.
    let mut server = server;
    server.stop();
    let server = server
        .restart_builder()
        .env_remove("HERALD_TEST_FAIL_STRIPE_EVENT")
        .start();
    let (status, body) = deliver(&server, &event);
    assert_eq!(
        (status, body["duplicate"].clone()),
        (200, json!(false)),
        "{body}"
    );
    let (status, body) = deliver(&server, &event);
    assert_eq!(
        (status, body["duplicate"].clone()),
        (200, json!(true)),
        "{body}"
    );
    settle(&server);
    assert_eq!(billing(&server, &demo.alice)["status"], "past_due");
    assert_eq!(inbox_rows(&server, "alice", "org.billing.past_due"), 1);
    assert!(wait_until(WAIT, || emails_to(&mail, "alice@acme.test") == 1));
}

#[test]
fn checkout_creates_the_entitlement_and_unknown_prices_keep_the_plan() {
    let mail = FakeResend::start();
    let (server, _demo) = start_demo(demo_builder(&mail));
    let zed = server.create_user("zed", "zed@globex.test", "Zed");
    let (_, org) = server.post("/v1/orgs", Some(&zed), json!({"name": "Globex"}));
    let org_id = org["id"].as_str().unwrap().to_string();
    let now = now_secs();
    let checkout = json!({
        "id": "evt_checkout", "object": "event", "created": now - 10,
        "type": "checkout.session.completed",
        "data": {"object": {
            "id": "cs_test_1", "object": "checkout.session", "mode": "subscription",
            "client_reference_id": org_id, "customer": "cus_globex",
            "subscription": "sub_globex"
        }}
    });
    assert_eq!(deliver(&server, &checkout).0, 200);
    let path = format!("/v1/orgs/{org_id}/billing");
    let (_, view) = server.get(&path, Some(&zed));
    assert_eq!(view["subscriptionId"], "sub_globex");
    assert_eq!(view["customerId"], "cus_globex");
    assert_eq!(view["status"], "active");

    // An older API version: the period end on the subscription itself.
    let mut update =
        subscription_updated("evt_globex_1", now - 5, "active", "price_starter_monthly");
    update["data"]["object"]["id"] = json!("sub_globex");
    update["data"]["object"]["items"]["data"][0]
        .as_object_mut()
        .unwrap()
        .remove("current_period_end");
    update["data"]["object"]["current_period_end"] = json!(1_800_000_000);
    assert_eq!(deliver(&server, &update).0, 200);
    let (_, view) = server.get(&path, Some(&zed));
    assert_eq!(
        (view["plan"].as_str(), view["currentPeriodEnd"].as_str()),
        (Some("starter"), Some("2027-01-15T08:00:00.000Z"))
    );

    // A price herald does not know: status applies, plan stays, and Stripe
    // gets a 200 so it does not retry forever.
    let mut unknown =
        subscription_updated("evt_globex_2", now, "trialing", "price_from_the_future");
    unknown["data"]["object"]["id"] = json!("sub_globex");
    assert_eq!(deliver(&server, &unknown).0, 200);
    let (_, view) = server.get(&path, Some(&zed));
    assert_eq!(
        (view["plan"].as_str(), view["status"].as_str()),
        (Some("starter"), Some("trialing"))
    );
    assert!(
        server.logs().contains("price_from_the_future"),
        "a warning names the price"
    );

    let deleted = json!({
        "id": "evt_globex_3", "object": "event", "created": now + 1,
        "type": "customer.subscription.deleted",
        "data": {"object": {"id": "sub_globex", "object": "subscription", "status": "canceled"}}
    });
    assert_eq!(deliver(&server, &deleted).0, 200);
    let (_, view) = server.get(&path, Some(&zed));
    assert_eq!(view["status"], "canceled");
}

#[test]
fn without_a_secret_the_webhook_answers_503_and_writes_nothing() {
    let server = TestServer::builder().arg("--demo").start();
    let before = footprint(&server);
    let (status, body) = post_webhook(&server, b"{}", Some("t=1,v1=00"));
    assert_eq!(status, 503, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("STRIPE_WEBHOOK_SECRET"));
    assert_eq!(footprint(&server), before);
}
