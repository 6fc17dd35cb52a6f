//! Domain-event listeners (SPEC 4.5) against the real binary: a listener that
//! fails or panics is retried with backoff until it succeeds once, without
//! holding up the other listeners or the notification dispatcher, and a crash
//! between the accept's COMMIT and the listener run, or before the dispatcher
//! even routed the domain events to the listeners, neither loses nor repeats
//! the grant.

use crate::domain_credits::{
    expected_ledger, granted_notifications, invite_and_accept, ledger, wait_runs_done,
};
use crate::support::app::{demo_builder, inbox_rows, settle, start_demo, WAIT};
use crate::support::{wait_until, FakeResend, TestServer};
use herald::args;

fn run_stat(server: &TestServer, listener: &str, sql: &str) -> i64 {
    server.count(&format!(
        "SELECT {sql} FROM listener_runs WHERE listener = '{listener}'"
    ))
}

/// After a restart: both billing runs done, each in one attempt, and the
/// invitation's two grants and two notifications there exactly once.
fn granted_once_after_restart(server: &TestServer, inv: &str) {
    wait_runs_done(server, "billing.referral", 2);
    settle(server);
    assert_eq!(ledger(server), expected_ledger(inv, "dave", 500));
    assert_eq!(granted_notifications(server), 2);
    assert_eq!(
        run_stat(server, "billing.referral", "SUM(attempts)"),
        2,
        "each run succeeded once, after the restart"
    );
}

/// `flaky` is the test hook's probe listener, forced to fail (or panic)
/// twice with a 1 s backoff base; `billing.referral` runs beside it.
fn failing_listener_is_retried_while_others_proceed(mode: &str) {
    let mail = FakeResend::start();
    let (server, demo) = start_demo(
        demo_builder(&mail)
            .env("HERALD_REFERRAL_CREDITS", "500")
            .env("HERALD_RETRY_BASE_MS", "1000")
            .env("HERALD_TEST_FAIL_LISTENER", &format!("flaky:2{mode}")),
    );
    let dave = server.create_user("dave", "dave@example.com", "Dave");
    let inv = invite_and_accept(&server, &demo.alice, "dave@example.com", &dave);

    wait_runs_done(&server, "flaky", 2);
    wait_runs_done(&server, "billing.referral", 2);
    settle(&server);
    // The flaky listener: two failed attempts, then each run done once.
    assert_eq!(run_stat(&server, "flaky", "SUM(attempts)"), 4);
    assert_eq!(
        run_stat(&server, "flaky", "COUNT(*)"),
        2,
        "one run per domain event"
    );
    let failures = server
        .logs()
        .lines()
        .filter(|l| l.contains("listener flaky failed on event evt_"))
        .count();
    assert_eq!(failures, 2, "each failure is logged with its event id");
    if mode == ":panic" {
        assert!(server
            .logs()
            .contains("panicked: HERALD_TEST_FAIL_LISTENER"));
    }

    // Meanwhile: billing succeeded first time and before flaky recovered, and
    // the dispatcher delivered the inviter's notification before that too.
    assert_eq!(run_stat(&server, "billing.referral", "SUM(attempts)"), 2);
    let flaky_done = run_stat(&server, "flaky", "MAX(done_at)");
    let billing_done = run_stat(&server, "billing.referral", "MAX(done_at)");
    assert!(billing_done < flaky_done, "{billing_done} < {flaky_done}");
    let notified = server
        .count("SELECT MIN(created_at) FROM notifications WHERE type = 'org.invitation.accepted'");
    assert!(notified < flaky_done, "{notified} < {flaky_done}");
    assert_eq!(inbox_rows(&server, "alice", "org.invitation.accepted"), 1);
    assert_eq!(ledger(&server), expected_ledger(&inv, "dave", 500));
    assert_eq!(granted_notifications(&server), 2);
    let (status, _) = server.get("/healthz", None);
    assert_eq!(status, 200, "the server is still up");
}

#[test]
fn a_failing_listener_is_retried_and_others_are_unaffected() {
    failing_listener_is_retried_while_others_proceed("");
}

#[test]
fn a_panicking_listener_is_caught_retried_and_others_are_unaffected() {
    failing_listener_is_retried_while_others_proceed(":panic");
}

#[test]
fn the_billing_listener_failing_twice_still_grants_exactly_once() {
    let mail = FakeResend::start();
    let (server, demo) = start_demo(
        demo_builder(&mail)
            .env("HERALD_REFERRAL_CREDITS", "500")
            .env("HERALD_TEST_FAIL_LISTENER", "billing.referral:2"),
    );
    let dave = server.create_user("dave", "dave@example.com", "Dave");
    let inv = invite_and_accept(&server, &demo.alice, "dave@example.com", &dave);
    wait_runs_done(&server, "billing.referral", 2);
    settle(&server);
    assert_eq!(run_stat(&server, "billing.referral", "SUM(attempts)"), 4);
    assert_eq!(ledger(&server), expected_ledger(&inv, "dave", 500));
    assert_eq!(granted_notifications(&server), 2);
}

#[test]
fn a_crash_before_the_listener_runs_grants_exactly_once_after_restart() {
    let mail = FakeResend::start();
    let (mut server, demo) = start_demo(
        demo_builder(&mail)
            .env("HERALD_REFERRAL_CREDITS", "500")
            .env("HERALD_TEST_LISTENER_DELAY_MS", "600000"),
    );
    let dave = server.create_user("dave", "dave@example.com", "Dave");
    let inv = invite_and_accept(&server, &demo.alice, "dave@example.com", &dave);
    // The accept committed and its events were routed; the listener has not run.
    let routed = wait_until(WAIT, || {
        server.count("SELECT COUNT(*) FROM listener_runs WHERE listener = 'billing.referral'") == 2
    });
    assert!(routed, "both domain events routed to the billing listener");
    assert_eq!(server.count("SELECT COUNT(*) FROM credit_ledger"), 0);

    server.kill9();
    let server = server
        .restart_builder()
        .env_remove("HERALD_TEST_LISTENER_DELAY_MS")
        .start();
    granted_once_after_restart(&server, &inv);

    // A further restart replays nothing: the runs are done.
    let server = server.restart();
    settle(&server);
    assert_eq!(run_stat(&server, "billing.referral", "SUM(attempts)"), 2);
    assert_eq!(granted_notifications(&server), 2);
}

#[test]
fn a_crash_before_the_domain_events_are_routed_grants_exactly_once_after_restart() {
    let mail = FakeResend::start();
    let (mut server, demo) = start_demo(demo_builder(&mail).env("HERALD_REFERRAL_CREDITS", "500"));
    let dave = server.create_user("dave", "dave@example.com", "Dave");
    // Routing writes the listener runs and marks the domain rows dispatched
    // in one transaction; a trigger that refuses every run rolls it back, so
    // the dispatcher cannot route however long the test takes to kill it,
    // while the accept itself (which writes no run) commits as usual.
    if server.on_postgres() {
        server.execute(
            "CREATE FUNCTION test_no_routing() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN RAISE EXCEPTION 'test: routing held off'; END; $$",
            args![],
        );
        server.execute(
            "CREATE TRIGGER test_no_routing BEFORE INSERT ON listener_runs
             FOR EACH ROW EXECUTE FUNCTION test_no_routing()",
            args![],
        );
    } else {
        server.execute(
            "CREATE TRIGGER test_no_routing BEFORE INSERT ON listener_runs
             BEGIN SELECT RAISE(ABORT, 'test: routing held off'); END;",
            args![],
        );
    }
    let inv = invite_and_accept(&server, &demo.alice, "dave@example.com", &dave);
    let tried = wait_until(WAIT, || {
        server.logs().contains("cannot route") && server.logs().contains("routing held off")
    });
    assert!(
        tried,
        "the dispatcher never tried to route:\n{}",
        server.logs()
    );

    server.kill9();
    // On disk: the accept committed (member and both domain events), nothing
    // routed, nothing granted.
    assert_eq!(
        server.count("SELECT COUNT(*) FROM members WHERE user_id = 'dave'"),
        1
    );
    assert_eq!(
        server.count(
            "SELECT COUNT(*) FROM outbox WHERE kind = 'domain' AND status = 'pending'
             AND type IN ('invitation.accepted', 'organization.provisioned')"
        ),
        2
    );
    assert_eq!(server.count("SELECT COUNT(*) FROM listener_runs"), 0);
    assert_eq!(server.count("SELECT COUNT(*) FROM credit_ledger"), 0);
    let drop = if server.on_postgres() {
        "DROP TRIGGER test_no_routing ON listener_runs"
    } else {
        "DROP TRIGGER test_no_routing"
    };
    server.execute(drop, args![]);

    let server = server.restart();
    granted_once_after_restart(&server, &inv);
    assert_eq!(inbox_rows(&server, "alice", "org.invitation.accepted"), 1);
    assert_eq!(
        server.count("SELECT COUNT(*) FROM outbox WHERE kind = 'domain' AND status = 'pending'"),
        0
    );
}
