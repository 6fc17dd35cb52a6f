//! Recurring schedules (SPEC 9) against the real binary: a daily schedule
//! runs once per occurrence in its time zone, and only then; a crash or a
//! restart around a run, runs missed while herald was down, and two
//! instances on one PostgreSQL database all leave exactly one event per
//! occurrence; a daylight-saving day runs once; bad requests are refused
//! naming the field, with nothing stored. Herald's clock is shifted
//! (`HERALD_TEST_CLOCK_OFFSET_MS`) to stand seconds before a chosen run.

use std::sync::Arc;
use std::time::Duration;

use herald::args;
use herald::time::{parse_rfc3339, system_now_ms};
use serde_json::{json, Value};

use crate::support::database::{postgres_or_skip, PgDatabase};
use crate::support::{wait_until, FakeResend, TestServer, TestServerBuilder};

const WAIT: Duration = Duration::from_secs(15);
const OFFSET_ENV: &str = "HERALD_TEST_CLOCK_OFFSET_MS";
/// Each run's event: a type with an inbox and an email channel.
const TYPE: &str = "org.billing.past_due";

fn ms(rfc3339: &str) -> i64 {
    parse_rfc3339(rfc3339).unwrap_or_else(|| panic!("{rfc3339}"))
}

/// A clock offset that makes herald's "now" `before_ms` short of `at`.
fn standing_before(at: i64, before_ms: i64) -> i64 {
    at - before_ms - system_now_ms()
}

/// Sleeps until herald, running `offset` ms off the system clock, is past `at`.
fn sleep_past(at: i64, offset: i64) {
    let left = at + 200 - (system_now_ms() + offset);
    if left > 0 {
        std::thread::sleep(Duration::from_millis(left as u64));
    }
}

fn daily(recipients: Value, hours: u32, minutes: u32, timezone: &str) -> Value {
    json!({
        "type": TYPE, "recipients": recipients, "subjectId": "org_acme",
        "payload": {"orgName": "Acme", "plan": "team"},
        "repeat": {"frequency": "daily", "hours": hours, "minutes": minutes, "timezone": timezone}
    })
}

fn create(server: &TestServer, body: &Value) -> Value {
    let (status, created) = server.post("/v1/schedules", Some(server.service_key()), body);
    if status != 201 {
        server.fail(&format!("POST /v1/schedules answered {status}: {created}"));
    }
    created
}

fn schedule(server: &TestServer, id: &str) -> Value {
    let (status, body) = server.get(&format!("/v1/schedules/{id}"), Some(server.service_key()));
    assert_eq!(status, 200, "{body}");
    body
}

/// The events schedules enqueued, by idempotency key.
fn run_keys(server: &TestServer) -> Vec<String> {
    server.rows(
        "SELECT idempotency_key FROM outbox WHERE idempotency_key LIKE 'schedule:%' ORDER BY seq",
        args![],
        |r| r.get(0),
    )
}

fn wait_runs(server: &TestServer, n: usize) {
    if !wait_until(WAIT, || run_keys(server).len() >= n) {
        server.fail(&format!("{n} runs expected, saw {:?}", run_keys(server)));
    }
}

fn inbox_rows(server: &TestServer, user: &str) -> i64 {
    server.count(&format!(
        "SELECT COUNT(*) FROM notifications WHERE user_id = '{user}'"
    ))
}

fn users(server: &TestServer) {
    server.create_user("alice", "alice@acme.test", "Alice");
    server.create_user("bob", "bob@acme.test", "Bob");
}

/// Checks, after a moment for any late duplicate, that exactly the runs
/// `keys` happened, each as one inbox row per user and one email each.
fn assert_exactly(server: &TestServer, mail: &FakeResend, keys: &[String]) {
    let emails = 2 * keys.len();
    if !wait_until(WAIT, || mail.accepted_count() >= emails) {
        server.fail(&format!("{} of {emails} emails", mail.accepted_count()));
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(run_keys(server), keys);
    assert_eq!(
        server.count("SELECT COUNT(*) FROM outbox"),
        keys.len() as i64
    );
    for user in ["alice", "bob"] {
        assert_eq!(inbox_rows(server, user), keys.len() as i64, "{user}");
    }
    assert_eq!(mail.accepted_count(), emails);
}

#[test]
fn a_daily_schedule_runs_once_at_its_local_time_and_moves_to_the_next_day() {
    let mail = FakeResend::start();
    // 09:00 in Paris in summer is 07:00 UTC.
    let run = ms("2027-07-15T09:00:00+02:00");
    let offset = standing_before(run, 4_000);
    let server = TestServer::builder()
        .mail(&mail)
        .env(OFFSET_ENV, &offset.to_string())
        .start();
    users(&server);
    let created = create(
        &server,
        &daily(json!(["alice", "bob"]), 9, 0, "Europe/Paris"),
    );
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(
        created["nextRunAt"], "2027-07-15T07:00:00.000Z",
        "{created}"
    );
    assert_eq!(created["runs"], 0);
    assert!(run_keys(&server).is_empty(), "ran before its time");

    wait_runs(&server, 1);
    let key = format!("schedule:{id}:2027-07-15T07:00:00.000Z");
    assert_exactly(&server, &mail, std::slice::from_ref(&key));
    assert_eq!(
        server.count(&format!(
            "SELECT COUNT(*) FROM outbox WHERE created_at < {run}"
        )),
        0,
        "the event was enqueued before the occurrence"
    );
    let after = schedule(&server, &id);
    assert_eq!(after["runs"], 1, "{after}");
    assert_eq!(after["lastRunAt"], "2027-07-15T07:00:00.000Z");
    assert_eq!(after["nextRunAt"], "2027-07-16T07:00:00.000Z");
    // The run is an ordinary event: dispatched with one sent per recipient.
    let event_id: String = server.row(
        "SELECT id FROM outbox WHERE idempotency_key = ?1",
        args![key],
        |r| r.get(0),
    );
    let event = server.wait_event_done(&event_id, WAIT);
    assert_eq!(event["result"]["sent"], 2, "{event}");
}

#[test]
fn a_crash_before_and_after_a_run_leaves_exactly_one_event_for_it() {
    let mail = FakeResend::start();
    let run = ms("2027-07-15T18:30:00-04:00");
    let offset = standing_before(run, 3_000);
    let mut server = TestServer::builder()
        .mail(&mail)
        .env(OFFSET_ENV, &offset.to_string())
        .start();
    users(&server);
    let created = create(
        &server,
        &daily(json!(["alice", "bob"]), 18, 30, "America/New_York"),
    );
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["nextRunAt"], "2027-07-15T22:30:00.000Z");

    // Down across the occurrence: it runs when herald is back.
    server.kill9();
    sleep_past(run, offset);
    let mut server = server.restart();
    wait_runs(&server, 1);
    // Killed again right after the run: the restart does not repeat it.
    server.kill9();
    let server = server.restart();
    let key = format!("schedule:{id}:2027-07-15T22:30:00.000Z");
    assert_exactly(&server, &mail, &[key]);
    let after = schedule(&server, &id);
    assert_eq!(
        (&after["runs"], &after["nextRunAt"]),
        (&json!(1), &json!("2027-07-16T22:30:00.000Z")),
        "{after}"
    );
}

#[test]
fn runs_missed_while_herald_was_down_run_once_at_start_as_the_latest() {
    let mail = FakeResend::start();
    let first = ms("2027-07-15T09:00:00+02:00");
    let offset = standing_before(first, 60_000);
    let mut server = TestServer::builder()
        .mail(&mail)
        .env(OFFSET_ENV, &offset.to_string())
        .start();
    users(&server);
    let created = create(
        &server,
        &daily(json!(["alice", "bob"]), 9, 0, "Europe/Paris"),
    );
    let id = created["id"].as_str().unwrap().to_string();
    server.stop();

    // Back three days and an hour later: four occurrences were missed.
    let later = offset + (3 * 24 + 1) * 3_600_000;
    let server = server
        .restart_builder()
        .env(OFFSET_ENV, &later.to_string())
        .start();
    wait_runs(&server, 1);
    let key = format!("schedule:{id}:2027-07-18T07:00:00.000Z");
    assert_exactly(&server, &mail, &[key]);
    let after = schedule(&server, &id);
    assert_eq!(after["runs"], 1, "{after}");
    assert_eq!(after["lastRunAt"], "2027-07-18T07:00:00.000Z");
    assert_eq!(after["nextRunAt"], "2027-07-19T07:00:00.000Z");
}

#[test]
fn a_spring_forward_day_runs_a_skipped_local_time_once() {
    // 2026-03-08 in New York: 02:00 EST jumps to 03:00 EDT, so 02:30 does
    // not exist; it runs at 03:30 EDT (07:30 UTC), the next day at 02:30 EDT.
    let run = ms("2026-03-08T07:30:00Z");
    let offset = standing_before(run, 4_000);
    let server = TestServer::builder()
        .env(OFFSET_ENV, &offset.to_string())
        .start();
    server.create_user("alice", "alice@acme.test", "Alice");
    let mut body = daily(json!(["alice"]), 2, 30, "America/New_York");
    body["type"] = json!("system.announcement");
    body["payload"] = json!({"title": "Nightly", "body": "Report"});
    let created = create(&server, &body);
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(
        created["nextRunAt"], "2026-03-08T07:30:00.000Z",
        "{created}"
    );

    wait_runs(&server, 1);
    if !wait_until(WAIT, || inbox_rows(&server, "alice") == 1) {
        server.fail("the run never reached the inbox");
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(run_keys(&server).len(), 1);
    assert_eq!(inbox_rows(&server, "alice"), 1);
    let after = schedule(&server, &id);
    assert_eq!(after["nextRunAt"], "2026-03-09T06:30:00.000Z", "{after}");
}

/// Two instances' settings on one fresh PostgreSQL database; None without
/// PostgreSQL.
fn pair(
    test: &str,
    mail: &FakeResend,
    offset: i64,
) -> Option<(Arc<PgDatabase>, TestServerBuilder)> {
    let server = postgres_or_skip(test)?;
    let db = Arc::new(PgDatabase::create(&server));
    let builder = TestServer::builder()
        .mail(mail)
        .postgres(&db)
        .env("HERALD_LEASE_MS", "2000")
        .env(OFFSET_ENV, &offset.to_string());
    Some((db, builder))
}

#[test]
fn two_instances_run_each_occurrence_of_twenty_schedules_once() {
    let mail = FakeResend::start();
    let run = ms("2027-07-15T09:00:00+02:00");
    let offset = standing_before(run, 10_000);
    let Some((_db, builder)) = pair("two_instances_run_each_occurrence_once", &mail, offset) else {
        return;
    };
    let a = builder.clone().start();
    let b = builder.start();
    users(&a);
    let mut keys = Vec::new();
    for i in 0..20 {
        // Created on both: each instance hears of the other's schedules.
        let on = if i % 2 == 0 { &a } else { &b };
        let mut body = daily(json!(["alice", "bob"]), 9, 0, "Europe/Paris");
        body["subjectId"] = json!(format!("org_{i}"));
        let created = create(on, &body);
        assert_eq!(
            created["nextRunAt"], "2027-07-15T07:00:00.000Z",
            "{created}"
        );
        keys.push(format!(
            "schedule:{}:2027-07-15T07:00:00.000Z",
            created["id"].as_str().unwrap()
        ));
    }
    wait_runs(&a, 20);
    keys.sort();
    let mut seen = run_keys(&a);
    seen.sort();
    assert_eq!(seen, keys);
    // 40 inbox rows and 40 emails, none twice.
    if !wait_until(WAIT, || mail.accepted_count() >= 40) {
        a.fail(&format!(
            "{} of 40 emails\n{}",
            mail.accepted_count(),
            b.logs()
        ));
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(a.count("SELECT COUNT(*) FROM outbox"), 20);
    assert_eq!(a.count("SELECT COUNT(*) FROM notifications"), 40);
    assert_eq!(mail.accepted_count(), 40);
    assert_eq!(a.count("SELECT SUM(runs) FROM schedules"), 20);
}

#[test]
fn bad_schedules_are_refused_naming_the_field_and_nothing_is_stored() {
    let server = TestServer::start();
    server.create_user("alice", "alice@acme.test", "Alice");
    let key = server.service_key().to_string();
    let ok = daily(json!(["alice"]), 9, 0, "Europe/Paris");
    let with = |path: &[&str], value: Value| {
        let mut body = ok.clone();
        let (last, parents) = path.split_last().unwrap();
        let mut at = &mut body;
        for p in parents {
            at = &mut at[*p];
        }
        at[*last] = value;
        body
    };
    let cases = [
        (with(&["type"], json!("no.such.type")), "type"),
        (
            with(&["payload"], json!({"orgName": "Acme"})),
            "payload.plan",
        ),
        (with(&["recipients"], json!(["ghost"])), "recipients[0]"),
        (
            with(&["repeat", "timezone"], json!("Europe/Atlantis")),
            "repeat.timezone",
        ),
        (with(&["repeat", "hours"], json!(24)), "repeat.hours"),
        (with(&["repeat", "minutes"], json!(1.5)), "repeat.minutes"),
        (
            with(&["repeat", "frequency"], json!("hourly")),
            "repeat.frequency",
        ),
        (
            with(
                &["repeat"],
                json!({"frequency": "weekly", "days": [], "hours": 9, "minutes": 0,
                                     "timezone": "UTC"}),
            ),
            "repeat.days",
        ),
        (
            with(
                &["repeat"],
                json!({"frequency": "weekly", "days": ["mon", "someday"],
                                     "hours": 9, "minutes": 0, "timezone": "UTC"}),
            ),
            "repeat.days[1]",
        ),
        (
            with(
                &["repeat"],
                json!({"frequency": "monthly", "dayOfMonth": 32, "hours": 9,
                                     "minutes": 0, "timezone": "UTC"}),
            ),
            "repeat.dayOfMonth",
        ),
        (with(&["repeat"], Value::Null), "repeat"),
        (with(&["endsAt"], json!("2001-01-01T00:00:00Z")), "endsAt"),
        (with(&["startsAt"], json!("next tuesday")), "startsAt"),
        (with(&["idempotencyKey"], json!("k1")), "idempotencyKey"),
    ];
    let mut starts_and_ends = with(&["startsAt"], json!("2030-01-02T00:00:00Z"));
    starts_and_ends["endsAt"] = json!("2030-01-01T00:00:00Z");
    for (body, field) in cases.into_iter().chain([(starts_and_ends, "endsAt")]) {
        let (status, answer) = server.post("/v1/schedules", Some(&key), &body);
        assert_eq!(status, 422, "{body} -> {answer}");
        assert_eq!(answer["error"]["code"], "validation_failed");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with(&format!("{field}: ")),
            "{field}: {message}"
        );
    }
    assert_eq!(server.count("SELECT COUNT(*) FROM schedules"), 0);

    let (status, _) = server.post("/v1/schedules", None, &ok);
    assert_eq!(status, 401);
    for (method, status) in [("GET", 404), ("DELETE", 404)] {
        let (got, body) = server.request(
            method,
            "/v1/schedules/sch_nope",
            &[("authorization", &format!("Bearer {key}"))],
            None,
        );
        assert_eq!(got, status, "{method}: {body}");
    }
}

#[test]
fn schedules_are_listed_newest_first_in_pages_and_a_deleted_one_never_runs() {
    let run = ms("2027-07-15T09:00:00+02:00");
    let offset = standing_before(run, 4_000);
    let server = TestServer::builder()
        .env(OFFSET_ENV, &offset.to_string())
        .start();
    server.create_user("alice", "alice@acme.test", "Alice");
    let key = server.service_key().to_string();
    let mut ids = Vec::new();
    for repeat in [
        json!({"frequency": "daily", "hours": 9, "minutes": 0, "timezone": "Europe/Paris"}),
        json!({"frequency": "weekly", "days": ["thu"], "hours": 9, "minutes": 0,
               "timezone": "Europe/Paris"}),
        json!({"frequency": "monthly", "dayOfMonth": 15, "hours": 9, "minutes": 0,
               "timezone": "Europe/Paris"}),
    ] {
        let mut body = daily(json!(["alice"]), 0, 0, "UTC");
        body["type"] = json!("system.announcement");
        body["payload"] = json!({"title": "Standup", "body": "in 5"});
        body["repeat"] = repeat.clone();
        let created = create(&server, &body);
        // 2027-07-15 is a Thursday: all three run at the same instant.
        assert_eq!(
            created["nextRunAt"], "2027-07-15T07:00:00.000Z",
            "{created}"
        );
        assert_eq!(created["repeat"], repeat);
        ids.push(created["id"].as_str().unwrap().to_string());
    }
    let (status, page) = server.get("/v1/schedules?limit=2", Some(&key));
    assert_eq!(status, 200, "{page}");
    let listed: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [ids[2].as_str(), ids[1].as_str()]);
    let cursor = page["nextCursor"]
        .as_str()
        .expect("a second page")
        .to_string();
    let (_, rest) = server.get(
        &format!("/v1/schedules?limit=2&cursor={cursor}"),
        Some(&key),
    );
    assert_eq!(rest["items"][0]["id"], ids[0].as_str(), "{rest}");
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    assert_eq!(rest["nextCursor"], Value::Null);

    let (status, _) = server.delete(&format!("/v1/schedules/{}", ids[1]), Some(&key));
    assert_eq!(status, 204);
    let (status, _) = server.get(&format!("/v1/schedules/{}", ids[1]), Some(&key));
    assert_eq!(status, 404);
    wait_runs(&server, 2);
    std::thread::sleep(Duration::from_millis(1500));
    let mut ran: Vec<String> = run_keys(&server)
        .iter()
        .map(|k| k.split(':').nth(1).unwrap().to_string())
        .collect();
    ran.sort();
    assert_eq!(ran, [ids[0].clone(), ids[2].clone()], "the deleted one ran");
}
