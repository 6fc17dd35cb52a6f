//! The delivery engine against a misbehaving provider: random faults,
//! permanent refusals, backoff timing, Retry-After, dead letters and their
//! re-arming (HTTP and CLI), hanging sends, rate limits, and an idle server
//! that really idles. Crash and SIGTERM runs live in `delivery_crash`.

use herald::args;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{wait_until, FakeResend, Fault, Mode, TestServer, TestServerBuilder};

pub const WAIT: Duration = Duration::from_secs(30);

/// An event that makes one email per recipient (and an inbox row per user).
pub fn role_changed(recipients: Value, subject: &str) -> Value {
    json!({
        "type": "org.member.role_changed",
        "recipients": recipients,
        "subjectId": subject,
        "payload": {"newRole": "admin", "before": "member", "orgName": "Acme", "actorName": "Alice"}
    })
}

/// Posts an address-only event to `n{i}@example.com`; returns the event id.
pub fn post_email(server: &TestServer, i: usize) -> String {
    let event = role_changed(
        json!([{ "email": format!("n{i}@example.com") }]),
        &format!("s{i}"),
    );
    let (status, body) = server.post_event(event);
    assert_eq!(status, 202, "{body}");
    body["eventId"].as_str().unwrap().to_string()
}

/// Posts one event to the addresses `n{i}@example.com`: one dispatch, so
/// its emails always make one batch (of up to 100).
pub fn post_to_addresses(server: &TestServer, range: std::ops::Range<usize>) {
    let to: Vec<Value> = range
        .map(|i| json!({ "email": format!("n{i}@example.com") }))
        .collect();
    let (status, body) = server.post_event(role_changed(json!(to), "batch"));
    assert_eq!(status, 202, "{body}");
}

pub fn engine(mail: &FakeResend) -> TestServerBuilder {
    TestServer::builder()
        .mail(mail)
        .env("HERALD_RETRY_BASE_MS", "20")
        .env("HERALD_RETRY_CAP_MS", "400")
}

/// The only email delivery of an event, as `GET /v1/events/{id}` shows it.
fn email_delivery(server: &TestServer, event_id: &str) -> Value {
    let (status, event) = server.get(
        &format!("/v1/events/{event_id}"),
        Some(server.service_key()),
    );
    assert_eq!(status, 200, "{event}");
    event["deliveries"]
        .as_array()
        .and_then(|ds| ds.iter().find(|d| d["channel"] == "email"))
        .cloned()
        .unwrap_or(Value::Null)
}

fn wait_delivery(server: &TestServer, event_id: &str, status: &str, timeout: Duration) -> Value {
    let mut last = Value::Null;
    let done = wait_until(timeout, || {
        last = email_delivery(server, event_id);
        last["status"] == status
    });
    if !done {
        server.fail(&format!(
            "delivery of {event_id} never became {status}: {last}"
        ));
    }
    last
}

pub fn delivery_ids(server: &TestServer) -> BTreeSet<String> {
    let ids = server.rows("SELECT id FROM deliveries", args![], |r| r.get::<String>(0));
    ids.into_iter().collect()
}

/// Per key herald sends under, how many emails it covers: a batch's id
/// covers each of its members, a delivery sent alone is its own key.
pub fn send_keys(server: &TestServer) -> BTreeMap<String, usize> {
    let keys = server.rows(
        "SELECT COALESCE(batch_id, id), COUNT(*) FROM deliveries GROUP BY 1",
        args![],
        |r| Ok((r.get::<String>(0)?, r.get::<usize>(1)?)),
    );
    keys.into_iter().collect()
}

/// The provider accepted each delivery's email exactly once: every key
/// herald sends under was accepted by one request carrying as many emails
/// as the key covers, no key twice, and every replay answered with the
/// original ids (see `FakeResend::check_one_email_per_key`).
pub fn check_one_email_per_delivery(mail: &FakeResend, server: &TestServer) -> Result<(), String> {
    let keys = send_keys(server);
    let accepted = mail.emails_per_key();
    if accepted != keys {
        return Err(format!(
            "emails accepted per key {accepted:?} differ from the deliveries per key {keys:?}"
        ));
    }
    mail.check_one_email_per_key(&keys.into_keys().collect())
}

/// Every request under one key carried the identical body. A request cut
/// short by a kill -9 mid-write arrives truncated (not JSON): that is a
/// broken request, not a retry with another body, and is left out.
pub fn assert_identical_bodies(mail: &FakeResend) {
    let mut bodies: BTreeMap<String, String> = BTreeMap::new();
    let complete = |raw: &str| serde_json::from_str::<serde_json::Value>(raw).is_ok();
    for r in mail
        .requests()
        .into_iter()
        .filter(|r| complete(&r.raw_body))
    {
        let key = r.idempotency_key.clone().expect("every send has a key");
        let first = bodies.entry(key.clone()).or_insert(r.raw_body.clone());
        assert_eq!(*first, r.raw_body, "retry of {key} sent a different body");
    }
}

#[test]
fn random_faults_deliver_every_email_exactly_once_and_never_hold_up_the_inbox() {
    let mail = FakeResend::start();
    // The provider is down while the events are processed...
    mail.set_mode(Mode::Fail(503));
    // ...and later throttles with `retry-after: 0`, so 429s mix in without
    // pausing the run for a second each (Retry-After timing has its own test).
    mail.set_retry_after(Some(0));
    // Batches of at most 5: emails still go out in batches, alone and
    // batched late, but in enough requests (100 or more) that every kind
    // of fault turns up.
    let server = engine(&mail)
        .env("HERALD_MAX_ATTEMPTS", "100")
        .env("HERALD_MAIL_BATCH", "5")
        .start();
    let users = 5;
    for u in 0..users {
        server.create_user(&format!("u{u}"), &format!("u{u}@acme.test"), "U");
    }
    let events = 500;
    for i in 0..events {
        let (status, body) = server.post_event(role_changed(
            json!([format!("u{}", i % users)]),
            &format!("s{i}"),
        ));
        assert_eq!(status, 202, "{body}");
    }

    // Every inbox row is there as soon as its event is processed, with not
    // one email out.
    assert!(wait_until(WAIT, || server.count(
        "SELECT COUNT(*) FROM outbox WHERE status = 'dispatched'"
    ) == events));
    assert_eq!(server.count("SELECT COUNT(*) FROM notifications"), events);
    let token = server.create_user("u0", "u0@acme.test", "U");
    let (status, unseen) = server.get("/v1/inbox/unseen-count", Some(token.as_str()));
    assert_eq!(
        (status, unseen["count"].as_i64()),
        (200, Some(events / users))
    );
    assert_eq!(mail.accepted_count(), 0);
    assert!(server.count("SELECT COUNT(*) FROM deliveries WHERE status = 'sent'") == 0);

    // Now 30% of requests fail: 500, 503, 429, broken connections, and
    // accepted-but-unanswered sends.
    mail.set_random_faults(0.3, &[]);
    mail.set_mode(Mode::Ok);
    let all_sent = wait_until(Duration::from_secs(120), || {
        server.count("SELECT COUNT(*) FROM deliveries WHERE status = 'sent'") == events
    });
    if !all_sent {
        server.fail(&format!(
            "not every email was sent: {} sent, {} accepted by the provider",
            server.count("SELECT COUNT(*) FROM deliveries WHERE status = 'sent'"),
            mail.accepted_count()
        ));
    }
    std::thread::sleep(Duration::from_millis(300));

    assert_eq!(delivery_ids(&server).len() as i64, events);
    assert_eq!(
        mail.accepted_count() as i64,
        events,
        "no email accepted twice"
    );
    // From the request log: resends after an accepted-but-unanswered send
    // got the original response, and no key became a second email.
    assert_eq!(check_one_email_per_delivery(&mail, &server), Ok(()));
    assert_identical_bodies(&mail);
    let faults: Vec<Fault> = mail.requests().iter().filter_map(|r| r.fault).collect();
    for kind in Fault::ALL {
        assert!(
            faults.contains(&kind),
            "no {kind:?} among {} faults",
            faults.len()
        );
    }
    assert_eq!(server.count("SELECT COUNT(*) FROM notifications"), events);
}

#[test]
fn a_422_fails_the_delivery_at_once_with_the_providers_message() {
    let mail = FakeResend::start();
    mail.fail_next(1, 422);
    let server = engine(&mail).start();
    let event_id = post_email(&server, 1);
    let delivery = wait_delivery(&server, &event_id, "failed", WAIT);
    assert_eq!(delivery["attempts"], 1);
    let error = delivery["lastError"].as_str().unwrap_or_default();
    assert!(
        error.contains("validation_error") && error.contains("Injected failure: validation error."),
        "{delivery}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        mail.request_count(),
        1,
        "a permanent failure is not retried"
    );
}

#[test]
fn retries_back_off_exponentially_then_die_and_a_retry_rearms_them() {
    let mail = FakeResend::start();
    mail.set_mode(Mode::Fail(500));
    let base = 100.0;
    let server = TestServer::builder()
        .mail(&mail)
        .env("HERALD_RETRY_BASE_MS", "100")
        .env("HERALD_MAX_ATTEMPTS", "5")
        .start();
    let event_id = post_email(&server, 1);
    let dead = wait_delivery(&server, &event_id, "dead", WAIT);
    assert_eq!(dead["attempts"], 5);
    assert_eq!(dead["nextAttemptAt"], Value::Null);
    assert!(
        dead["lastError"]
            .as_str()
            .unwrap_or_default()
            .contains("HTTP 500"),
        "{dead}"
    );
    let id = dead["id"].as_str().unwrap().to_string();

    // base * 2^(n-1) between attempt n and n+1, within the 20% jitter; the
    // upper bound has room for a busy machine.
    let times: Vec<Instant> = mail
        .requests_with_key(&id)
        .iter()
        .map(|r| r.received_at)
        .collect();
    assert_eq!(times.len(), 5);
    for (n, pair) in times.windows(2).enumerate() {
        let gap = (pair[1] - pair[0]).as_secs_f64() * 1000.0;
        let expected = base * 2f64.powi(n as i32);
        assert!(
            gap >= expected * 0.8 - 5.0 && gap <= expected * 1.2 + 300.0,
            "gap {n} was {gap:.0} ms, expected {expected} ms +-20%"
        );
    }

    // Visible to the operator, then re-armed over HTTP: same key, sent.
    let key = server.service_key().to_string();
    let (status, list) = server.get("/v1/deliveries?status=dead", Some(&key));
    assert_eq!(status, 200, "{list}");
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{list}");
    assert_eq!(
        (items[0]["id"].as_str(), items[0]["eventId"].as_str()),
        (Some(id.as_str()), Some(event_id.as_str()))
    );
    mail.set_mode(Mode::Ok);
    let (status, rearmed) =
        server.post(&format!("/v1/deliveries/{id}/retry"), Some(&key), json!({}));
    assert_eq!(status, 200, "{rearmed}");
    assert_eq!(rearmed["status"], "retrying");
    let sent = wait_delivery(&server, &event_id, "sent", WAIT);
    assert_eq!(sent["attempts"], 1, "a retry starts a fresh round");
    assert_eq!(mail.accepted_keys(), BTreeSet::from([id.clone()]));
    assert_eq!(
        mail.check_one_email_per_key(&BTreeSet::from([id.clone()])),
        Ok(())
    );
    assert_eq!(mail.requests_with_key(&id).len(), 6);
    assert_identical_bodies(&mail);

    // Only dead or failed deliveries can be re-armed.
    let (status, body) = server.post(&format!("/v1/deliveries/{id}/retry"), Some(&key), json!({}));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{body}"
    );
    let (status, list) = server.get("/v1/deliveries?status=dead", Some(&key));
    assert_eq!(
        (status, list["items"].as_array().map(Vec::len)),
        (200, Some(0))
    );
    let (status, list) = server.get("/v1/deliveries?status=sent", Some(&key));
    assert_eq!(
        (status, list["items"][0]["id"].as_str()),
        (200, Some(id.as_str()))
    );
}

#[test]
fn the_delivery_log_endpoints_are_for_the_service_key_and_check_their_input() {
    let server = TestServer::start();
    let key = server.service_key().to_string();
    let token = server.create_user("carol", "carol@acme.test", "Carol");
    let (status, _) = server.get("/v1/deliveries", Some(token.as_str()));
    assert_eq!(status, 403);
    let (status, _) = server.get("/v1/deliveries", None);
    assert_eq!(status, 401);
    let (status, body) = server.get("/v1/deliveries?status=lost", Some(&key));
    assert_eq!(status, 400, "{body}");
    let (status, body) = server.get("/v1/deliveries?limit=0", Some(&key));
    assert_eq!(status, 400, "{body}");
    let (status, body) = server.post("/v1/deliveries/dlv_nope/retry", Some(&key), json!({}));
    assert_eq!(status, 404, "{body}");
    let (status, _) = server.post(
        "/v1/deliveries/dlv_nope/retry",
        Some(token.as_str()),
        json!({}),
    );
    assert_eq!(status, 403);

    // Pages of the whole log, oldest first.
    for i in 0..3 {
        let id = post_email(&server, i);
        server.wait_event_done(&id, WAIT);
    }
    let (status, page) = server.get("/v1/deliveries?limit=2", Some(&key));
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let cursor = page["nextCursor"]
        .as_str()
        .expect("a next page")
        .to_string();
    let (_, rest) = server.get(
        &format!("/v1/deliveries?limit=2&cursor={cursor}"),
        Some(&key),
    );
    assert_eq!(rest["items"].as_array().unwrap().len(), 1, "{rest}");
    assert_eq!(rest["nextCursor"], Value::Null);
}

#[test]
fn retry_after_is_honoured_and_pauses_every_sender() {
    let mail = FakeResend::start();
    mail.set_retry_after(Some(2));
    mail.fail_next(1, 429);
    let server = engine(&mail).start();
    let first = post_email(&server, 1);
    assert!(mail.wait_for_requests(1, WAIT));
    // Sent while the provider's 2 s pause is on: it waits too.
    let second = post_email(&server, 2);
    wait_delivery(&server, &first, "sent", WAIT);
    wait_delivery(&server, &second, "sent", WAIT);

    let requests = mail.requests();
    assert_eq!(requests.len(), 3, "one 429, then one send each");
    assert_eq!(requests[0].status, Some(429));
    let throttled_at = requests[0].received_at;
    for later in &requests[1..] {
        let waited = later.received_at - throttled_at;
        assert!(
            waited >= Duration::from_millis(1950),
            "a request went out {waited:?} after a 429 asking for 2 s"
        );
    }
    let retried = email_delivery(&server, &first);
    assert_eq!(retried["attempts"], 2);
}

#[test]
fn a_hanging_provider_never_slows_the_inbox_or_the_api_and_sends_time_out_and_retry() {
    let mail = FakeResend::start();
    mail.set_mode(Mode::Hang);
    // One email per request: the test follows single sends through the
    // hang. (Batched, all twenty would share one request, and its retries,
    // answered 409 while the first still hangs, overwrite the transport
    // error this test looks for.)
    let server = engine(&mail)
        .env("HERALD_MAIL_SENDERS", "2")
        .env("HERALD_MAIL_TIMEOUT_MS", "1000")
        .env("HERALD_MAIL_BATCH", "1")
        .start();
    let token = server.create_user("carol", "carol@acme.test", "Carol");
    let events = 20;
    for i in 0..events {
        let (status, body) = server.post_event(role_changed(json!(["carol"]), &format!("s{i}")));
        assert_eq!(status, 202, "{body}");
    }
    assert!(mail.wait_for_requests(2, WAIT), "both senders are stuck");

    // While both senders hang on the provider, the inbox fills and reads
    // answer promptly: well inside one send timeout each.
    assert!(wait_until(WAIT, || server
        .count("SELECT COUNT(*) FROM notifications")
        == events));
    for _ in 0..20 {
        assert!(mail.in_flight() >= 1, "a send is hanging during the read");
        let started = Instant::now();
        let (status, inbox) = server.get("/v1/inbox?limit=50", Some(token.as_str()));
        let took = started.elapsed();
        assert_eq!(status, 200);
        assert_eq!(inbox["items"].as_array().unwrap().len(), events as usize);
        assert!(
            took < Duration::from_millis(900),
            "an inbox read took {took:?}"
        );
    }

    // The hanging sends time out (the client gives up; the fake never
    // answered) and are retried under the same key.
    let retried = wait_until(WAIT, || {
        let requests = mail.requests();
        requests.iter().any(|first| {
            first.status.is_none()
                && requests
                    .iter()
                    .filter(|r| r.idempotency_key == first.idempotency_key)
                    .count()
                    >= 2
        })
    });
    assert!(retried, "no hanging send was retried:\n{}", server.logs());
    // Recorded as a failed attempt with the transport error; the status
    // itself flips back to pending within the short backoff, so it is not
    // what is checked.
    assert!(wait_until(WAIT, || {
        server.count(
            "SELECT COUNT(*) FROM deliveries
             WHERE attempts >= 1 AND last_error LIKE '%mail API failed%'",
        ) >= 1
    }));
    mail.set_mode(Mode::Ok);
    assert!(wait_until(WAIT, || server
        .count("SELECT COUNT(*) FROM deliveries WHERE status = 'sent'")
        == events));
    assert_eq!(mail.accepted_count() as i64, events);
    assert_eq!(check_one_email_per_delivery(&mail, &server), Ok(()));
}

/// Most requests in any window of `width` starting at a request.
fn context_switches(pid: u32) -> std::collections::HashMap<String, u64> {
    let mut by_thread = std::collections::HashMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap();
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let switches: u64 = status
            .lines()
            .filter(|l| {
                l.starts_with("voluntary_ctxt_switches")
                    || l.starts_with("nonvoluntary_ctxt_switches")
            })
            .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
            .sum();
        by_thread.insert(task.file_name().to_string_lossy().into_owned(), switches);
    }
    by_thread
}

/// Context switches since `before`, over the threads alive now: a thread
/// that exited in between (tiny_http retires idle connection threads)
/// takes its count with it, and must not make the total go backwards.
fn switches_since(pid: u32, before: &std::collections::HashMap<String, u64>) -> u64 {
    context_switches(pid)
        .iter()
        .map(|(tid, now)| now.saturating_sub(before.get(tid).copied().unwrap_or(0)))
        .sum()
}

/// utime + stime of `pid`, in clock ticks (fields 14 and 15 of stat).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn an_idle_server_sleeps() {
    let mail = FakeResend::start();
    // On PostgreSQL the scheduler wakes every fifth of the lease to tell
    // the other instances this one lives (about 15 statements, 30 context
    // switches); a long lease leaves at most one such beat in the window.
    let server = engine(&mail)
        .env("HERALD_MAIL_SENDERS", "8")
        .env("HERALD_LEASE_MS", "60000")
        .start();
    let heartbeat = if server.on_postgres() { 35 } else { 0 };
    let event = post_email(&server, 1);
    wait_delivery(&server, &event, "sent", WAIT);
    std::thread::sleep(Duration::from_millis(500));
    let pid = server.pid().unwrap();

    let (switches, ticks) = (context_switches(pid), cpu_ticks(pid));
    std::thread::sleep(Duration::from_secs(10));
    let (switches, ticks) = (switches_since(pid, &switches), cpu_ticks(pid) - ticks);
    eprintln!("idle for 10 s: {ticks} CPU ticks, {switches} context switches");
    // Eight senders polling every 200 ms would be 400 wakeups here.
    assert!(
        switches <= 20 + heartbeat,
        "{switches} thread wakeups in 10 idle seconds"
    );
    assert!(ticks <= 2, "{ticks} clock ticks of CPU in 10 idle seconds");
}

#[test]
fn the_outbox_command_lists_dead_deliveries_and_rearms_them() {
    let mail = FakeResend::start();
    mail.set_mode(Mode::Fail(500));
    let server = engine(&mail).env("HERALD_MAX_ATTEMPTS", "2").start();
    let events: Vec<String> = (0..3).map(|i| post_email(&server, i)).collect();
    let dead: Vec<String> = events
        .iter()
        .map(|e| {
            wait_delivery(&server, e, "dead", WAIT)["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();

    let out = server.run_cli(&["outbox", "list"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["dead", "3"]),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["pending", "0"]),
        "{stdout}"
    );
    for id in &dead {
        assert!(stdout.contains(id.as_str()), "{id} missing from:\n{stdout}");
    }

    let out = server.run_cli(&["outbox", "retry", "dlv_nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no delivery"));

    let mut server = server;
    server.stop();
    // Events dispatched together had their emails batched: re-arming one
    // re-arms its batch, which goes out as one request again.
    let with_first = server.count(&format!(
        "SELECT COUNT(*) FROM deliveries WHERE COALESCE(batch_id, id) =
             (SELECT COALESCE(batch_id, id) FROM deliveries WHERE id = '{}')",
        dead[0]
    ));
    let out = server.run_cli(&["outbox", "retry", &dead[0]]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let batched = server.count(&format!(
        "SELECT COUNT(*) FROM deliveries WHERE id = '{}' AND batch_id IS NOT NULL",
        dead[0]
    ));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).contains("with the rest of batch bat_"),
        batched == 1,
        "the operator is told when a batch comes along"
    );
    let out = server.run_cli(&["outbox", "retry-dead"]);
    let rest = format!("re-armed {} dead deliveries", 3 - with_first);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&rest));
    let out = server.run_cli(&["outbox", "retry", &dead[0]]);
    assert!(
        !out.status.success(),
        "a re-armed delivery is not dead any more"
    );

    mail.set_mode(Mode::Ok);
    let server = server.restart();
    for event in &events {
        wait_delivery(&server, event, "sent", WAIT);
    }
    assert_eq!(mail.accepted_count(), 3);
    assert_eq!(check_one_email_per_delivery(&mail, &server), Ok(()));
}

/// The mail queue holds 4 emails in memory; a backlog of many more waits in
/// the database as pending deliveries and is paged in as the senders drain
/// it. Every email goes out exactly once, also when a kill -9 leaves most of
/// the backlog unsent and the restarted server pages it in. Each email goes
/// alone, so the count of emails in memory is exact whatever the timing
/// (batches page in whole: `mail_queue`'s unit tests).
#[test]
fn a_backlog_larger_than_the_mail_queue_waits_in_the_database_and_goes_out_once() {
    let mail = FakeResend::start();
    mail.set_mode(Mode::Delay(Duration::from_millis(5)));
    let mut server = engine(&mail)
        .env("HERALD_MAIL_QUEUE", "4")
        .env("HERALD_MAIL_SENDERS", "2")
        .env("HERALD_MAIL_BATCH", "1")
        .start();
    for i in 0..60 {
        post_email(&server, i);
    }
    all_sent_once(&server, &mail, 60);

    // Sends hang: the queue fills, the rest of a new burst stays pending in
    // the database, and the process dies with it there.
    mail.set_mode(Mode::Hang);
    for i in 60..100 {
        post_email(&server, i);
    }
    assert!(
        wait_until(WAIT, || server.count("SELECT COUNT(*) FROM deliveries")
            == 100),
        "the burst was not dispatched"
    );
    // Two sends hang and four emails wait in memory; the other 34 wait
    // only in the database.
    assert_eq!(
        server.count("SELECT COUNT(*) FROM deliveries WHERE status = 'pending'"),
        40
    );
    let in_memory =
        || crate::metrics::scrape(&server).value("herald_queue_depth", &[("queue", "senders")]);
    assert!(
        wait_until(WAIT, || in_memory() == 4.0),
        "the senders' queue never filled: {}",
        in_memory()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(in_memory(), 4.0, "the queue never holds more than 4");
    server.kill9();
    mail.set_mode(Mode::Ok);
    let server = server.restart();
    all_sent_once(&server, &mail, 100);
}

/// Waits until `n` deliveries are recorded sent, then checks the provider
/// accepted each delivery's email exactly once.
pub fn all_sent_once(server: &TestServer, mail: &FakeResend, n: i64) {
    wait_sent(server, n);
    check_one_email_per_delivery(mail, server).unwrap_or_else(|e| server.fail(&e));
}

/// Waits until `n` deliveries are recorded sent.
pub fn wait_sent(server: &TestServer, n: i64) {
    let sent = || server.count("SELECT COUNT(*) FROM deliveries WHERE status = 'sent'");
    if !wait_until(WAIT, || sent() == n) {
        server.fail(&format!("only {} of {n} sent", sent()));
    }
}
