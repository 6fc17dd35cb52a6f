//! Group commit (SPEC 1): single-event requests and application actions
//! arriving together commit in one transaction, each in a savepoint. A
//! caller whose work fails rolls back only its own; every 202 answered
//! before a kill -9 is delivered after restart, and nothing unanswered is
//! left half-written.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{json, Value};

use crate::delivery_engine::{check_one_email_per_delivery, role_changed, WAIT};
use crate::support::app::{demo_builder, start_demo, ORG};
use crate::support::{wait_until, FakeResend, TestServer};

const POSTERS: usize = 8;

/// The `herald_write_group*` counters: (groups, works in them).
fn groups(server: &TestServer) -> (f64, f64) {
    let text = server.request_raw("GET", "/metrics", &[], None).text();
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        value("herald_write_groups_total"),
        value("herald_write_group_works_total"),
    )
}

/// Sets `stop` when dropped, so that a failed assertion inside a scope
/// stops the posters the scope then waits for.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Posts events to `users` in turn until `stop`, from one connection;
/// returns the ids answered 202. A transport error (the server gone) ends it.
fn post_until(
    server: &TestServer,
    poster: usize,
    users: &[String],
    stop: &AtomicBool,
) -> Vec<String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let url = server.url("/v1/events");
    let auth = format!("Bearer {}", server.service_key());
    let mut accepted = Vec::new();
    for i in 0.. {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let user = &users[i % users.len()];
        let event = role_changed(json!([user]), &format!("p{poster}_{i}"));
        let Ok(mut response) = agent
            .post(&url)
            .header("Authorization", &auth)
            .header("Content-Type", "application/json")
            .send(&serde_json::to_vec(&event).unwrap()[..])
        else {
            break;
        };
        let text = response.body_mut().read_to_string().unwrap_or_default();
        assert_eq!(response.status(), 202, "{text}");
        let body: Value = serde_json::from_str(&text).unwrap_or_default();
        accepted.push(body["eventId"].as_str().unwrap_or_default().to_string());
    }
    accepted
}

/// Runs `during` while `POSTERS` clients post events to `users`, then stops
/// them; the ids answered 202.
fn while_posting(server: &TestServer, users: &[String], during: impl FnOnce()) -> Vec<String> {
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let _stopping = StopOnDrop(&stop);
        let posters: Vec<_> = (0..POSTERS)
            .map(|p| {
                let stop = &stop;
                scope.spawn(move || post_until(server, p, users, stop))
            })
            .collect();
        during();
        stop.store(true, Ordering::SeqCst);
        posters
            .into_iter()
            .flat_map(|p| p.join().unwrap())
            .collect()
    })
}

/// Role changes made to fail after their writes (the test hook) commit in
/// groups with the events posted meanwhile: none of their writes stays,
/// every event answered 202 is delivered once.
#[test]
fn a_role_change_failing_inside_a_group_rolls_back_only_its_own_work() {
    let mail = FakeResend::start();
    let (server, demo) = start_demo(demo_builder(&mail).env("HERALD_TEST_FAIL_ROLE_CHANGE", "1"));
    let role_events = "SELECT COUNT(*) FROM outbox WHERE type = 'org.member.role_changed'";
    let before = server.count(role_events);
    let users: Vec<String> = ["alice", "bob", "carol"].map(String::from).to_vec();
    let accepted = while_posting(&server, &users, || {
        for _ in 0..100 {
            let (status, body) = server.patch(
                &format!("/v1/orgs/{ORG}/members/mem_carol"),
                Some(&demo.alice),
                json!({ "role": "admin" }),
            );
            assert_eq!(status, 500, "{body}");
        }
    });
    let (groups, works) = groups(&server);
    assert!(
        works > groups + 100.0,
        "callers' writes did not share groups: {works} works in {groups} groups"
    );
    for id in &accepted {
        server.wait_event_done(id, WAIT);
    }
    let role: String = server.row(
        "SELECT role FROM members WHERE id = 'mem_carol'",
        herald::args![],
        |r| r.get(0),
    );
    assert_eq!(role, "member");
    assert_eq!(
        server.count("SELECT COUNT(*) FROM audit_log WHERE action = 'member.role-changed'"),
        0
    );
    // Every row of the type is a posted event's: the role changes left none.
    let events = accepted.len() as i64;
    assert_eq!(server.count(role_events) - before, events);
    assert!(
        wait_until(WAIT, || server
            .count("SELECT COUNT(*) FROM deliveries WHERE status = 'sent'")
            >= events),
        "{}",
        server.logs()
    );
}

/// Eight clients post single events; the process is killed mid-load. After
/// the restart every event answered 202 has its inbox row and email, and
/// every outbox row, answered or not, is whole: one inbox row, one email.
#[test]
fn kill_9_during_group_commits_delivers_every_202_and_half_writes_nothing() {
    let mail = FakeResend::start();
    let mut server = TestServer::builder().mail(&mail).start();
    let users: Vec<String> = (0..20)
        .map(|i| {
            let id = format!("u{i}");
            server.create_user(&id, &format!("{id}@acme.test"), &id);
            id
        })
        .collect();
    let accepted = while_posting(&server, &users, || {
        assert!(
            wait_until(WAIT, || server.count("SELECT COUNT(*) FROM outbox") >= 400),
            "no load built up"
        );
        let (groups, works) = groups(&server);
        assert!(works > groups, "{works} works in {groups} groups");
        let pid = server.pid().expect("running").to_string();
        let killed = std::process::Command::new("kill")
            .args(["-9", &pid])
            .status();
        assert!(killed.is_ok_and(|s| s.success()), "kill -9 {pid}");
    });
    server.kill9();
    let server = server.restart_builder().start();
    for id in &accepted {
        server.wait_event_done(id, WAIT);
    }
    let outbox = server.count("SELECT COUNT(*) FROM outbox");
    assert!(outbox >= accepted.len() as i64);
    let whole = wait_until(WAIT, || {
        server.count("SELECT COUNT(*) FROM deliveries WHERE status = 'sent'") == outbox
    });
    assert!(
        whole,
        "{} of {outbox} emails sent\n{}",
        server.count("SELECT COUNT(*) FROM deliveries WHERE status = 'sent'"),
        server.logs()
    );
    assert_eq!(
        server.count("SELECT COUNT(*) FROM outbox WHERE status <> 'dispatched'"),
        0
    );
    assert_eq!(server.count("SELECT COUNT(*) FROM notifications"), outbox);
    assert_eq!(
        server.count("SELECT COUNT(DISTINCT event_seq) FROM notifications"),
        outbox
    );
    let answered: BTreeSet<&String> = accepted.iter().collect();
    assert_eq!(answered.len(), accepted.len(), "an event id answered twice");
    for id in &answered {
        assert_eq!(
            server.count(&format!(
                "SELECT COUNT(*) FROM notifications n JOIN outbox o ON o.seq = n.event_seq \
                 WHERE o.id = '{id}'"
            )),
            1,
            "event {id}"
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    check_one_email_per_delivery(&mail, &server).unwrap();
}
