//! The delivery engine across process deaths: kill -9 in the middle of a
//! burst of retries, and SIGTERM under load. Nothing accepted is lost, and
//! no delivery ever reaches the provider under two different keys.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::delivery_engine::{
    assert_identical_bodies, check_one_email_per_delivery, delivery_ids, post_email,
    post_to_addresses, role_changed, send_keys, wait_sent,
};
use crate::delivery_pace::post_trickle;
use crate::support::{wait_until, FakeResend, Mode, RecordedRequest, TestServer};

const WAIT: Duration = Duration::from_secs(60);

/// Each accepted email went to a distinct address (one per event here), and
/// every key the provider saw is a batch or delivery of this database.
/// Acceptance is counted from the provider's request log: a resend after
/// the crash under the same key is answered with the original response and
/// is no second email, while a key accepted as a new email twice would be.
fn assert_each_recipient_once(mail: &FakeResend, server: &TestServer, emails: usize) {
    assert_eq!(delivery_ids(server).len(), emails);
    assert_eq!(mail.accepted_count(), emails, "no email accepted twice");
    assert_eq!(check_one_email_per_delivery(mail, server), Ok(()));
    let recipients: BTreeSet<Vec<String>> = mail.accepted().into_iter().map(|a| a.to).collect();
    assert_eq!(recipients.len(), emails, "no recipient got two emails");
    let keys = send_keys(server);
    for r in mail.requests() {
        let key = r.idempotency_key.unwrap_or_default();
        assert!(keys.contains_key(&key), "a send under unknown key {key:?}");
    }
    assert_identical_bodies(mail);
}

#[test]
fn kill_9_during_a_burst_of_retries_loses_nothing_and_sends_nothing_twice() {
    let mail = FakeResend::start();
    mail.set_retry_after(Some(0));
    mail.set_random_faults(0.5, &[]);
    let mut server = TestServer::builder()
        .mail(&mail)
        .env("HERALD_RETRY_BASE_MS", "20")
        .env("HERALD_RETRY_CAP_MS", "300")
        .env("HERALD_MAX_ATTEMPTS", "100")
        .start();
    let emails = 200;
    // Mostly one email per event, and one event to 50 addresses: a batch
    // request under the same faults and the same crash. The provider is
    // down while they are posted, then slow: lone emails batched late drain
    // the queue so fast that the crash would otherwise come after the end.
    mail.set_mode(Mode::Fail(503));
    for i in 0..150 {
        post_email(&server, i);
    }
    post_to_addresses(&server, 150..emails);
    mail.set_mode(Mode::Delay(Duration::from_millis(100)));
    let in_the_middle = wait_until(WAIT, || {
        mail.accepted_count() >= 20
            && server.count("SELECT COUNT(*) FROM deliveries WHERE status = 'retrying'") > 0
    });
    assert!(in_the_middle, "no retries under way");
    server.kill9();
    let accepted_before = mail.accepted_count();
    assert!(
        accepted_before < emails,
        "the crash came too late to matter"
    );

    let server = server.restart_builder().start();
    let all_sent = wait_until(WAIT, || {
        server.count("SELECT COUNT(*) FROM deliveries WHERE status = 'sent'") == emails as i64
    });
    if !all_sent {
        server.fail("not every email was sent after the restart");
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_each_recipient_once(&mail, &server, emails);
    // The 50 went in one batch, or, cut by its limit of 100, in a full one
    // and the next.
    assert!(
        mail.requests()
            .iter()
            .any(|r| r.path == "/emails/batch" && r.new_email_ids.len() >= 50),
        "no batch of 50 or more went out"
    );
}

#[test]
fn sigterm_under_load_exits_0_in_the_grace_period_and_the_rest_goes_out_after_restart() {
    let mail = FakeResend::start();
    mail.set_mode(Mode::Delay(Duration::from_millis(150)));
    let grace = Duration::from_secs(3);
    let mut server = TestServer::builder()
        .mail(&mail)
        .env("HERALD_RETRY_BASE_MS", "20")
        .env("HERALD_MAIL_SENDERS", "4")
        .env("HERALD_SHUTDOWN_GRACE_MS", "3000")
        .start();

    // A client keeps posting while the server is told to stop; every event
    // it got a 202 for must be delivered in the end.
    let url = server.url("/v1/events");
    let auth = format!("Bearer {}", server.service_key());
    let stop_posting = AtomicBool::new(false);
    let (accepted, stopped_in) = std::thread::scope(|scope| {
        let poster = scope.spawn(|| {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(10)))
                .build()
                .into();
            let mut accepted = Vec::new();
            for i in 0.. {
                if stop_posting.load(Ordering::SeqCst) {
                    break;
                }
                let event = role_changed(
                    json!([{ "email": format!("n{i}@example.com") }]),
                    &format!("s{i}"),
                );
                let sent = agent
                    .post(&url)
                    .header("Authorization", &auth)
                    .header("Content-Type", "application/json")
                    .send(&serde_json::to_vec(&event).unwrap()[..]);
                let Ok(mut response) = sent else {
                    break; // the server stopped listening
                };
                if response.status() == 202 {
                    let text = response.body_mut().read_to_string().unwrap_or_default();
                    let body: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                    accepted.push(body["eventId"].as_str().unwrap_or_default().to_string());
                }
            }
            accepted
        });
        assert!(mail.wait_for_accepted(20, WAIT), "no load built up");
        // The provider stops answering: whatever is in flight or queued when
        // the stop comes is left to the restart, however fast batches drain
        // the queue.
        mail.set_mode(Mode::Hang);
        let started = Instant::now();
        let status = server.stop();
        let stopped_in = started.elapsed();
        stop_posting.store(true, Ordering::SeqCst);
        assert!(
            status.success(),
            "exit status {status:?}:\n{}",
            server.logs()
        );
        (poster.join().unwrap(), stopped_in)
    });
    assert!(
        stopped_in < grace + Duration::from_secs(1),
        "stopping took {stopped_in:?}"
    );
    let unsent = emails_unsent(&server);
    assert!(
        unsent > 0,
        "the load was over before the stop; nothing to re-drive"
    );

    mail.set_mode(Mode::Ok);
    let server = server.restart_builder().start();
    let emails = accepted.len();
    for id in &accepted {
        server.wait_event_done(id, WAIT);
    }
    let all_sent = wait_until(WAIT, || {
        server.count("SELECT COUNT(*) FROM deliveries WHERE status = 'sent'") == emails as i64
    });
    if !all_sent {
        server.fail(&format!("not all {emails} accepted events were delivered"));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_each_recipient_once(&mail, &server, emails);
}

fn emails_unsent(server: &TestServer) -> i64 {
    let db_events = server.count("SELECT COUNT(*) FROM outbox WHERE status = 'pending'");
    db_events + server.count("SELECT COUNT(*) FROM deliveries WHERE status != 'sent'")
}

/// A kill -9 while a batch request is in flight: after the restart the
/// identical batch (same members, same order, same bytes) goes again under
/// the same key, and each of its emails is accepted once.
#[test]
fn kill_9_with_a_batch_in_flight_resends_the_identical_batch_under_its_key() {
    let mail = FakeResend::start();
    mail.set_mode(Mode::Hang);
    let mut server = TestServer::builder().mail(&mail).start();
    let emails = 10;
    post_to_addresses(&server, 0..emails);
    assert!(
        mail.wait_for_requests(1, WAIT),
        "the batch never reached the provider"
    );
    let first = mail.requests().remove(0);
    assert_eq!(first.path, "/emails/batch");
    assert_eq!(first.body.as_array().map(Vec::len), Some(emails));
    server.kill9();
    restart_and_check_resent(&mail, &server, &first, emails);
    assert_eq!(mail.request_count(), 2);
}

/// After a kill -9 with `batch` hanging at the provider: the provider lets
/// go of it (nothing went out), and the restart sends it once more, the
/// identical request under its key; each of the `emails` recipients gets
/// one email.
fn restart_and_check_resent(
    mail: &FakeResend,
    killed: &TestServer,
    batch: &RecordedRequest,
    emails: usize,
) {
    mail.set_mode(Mode::Ok);
    let server = killed.restart_builder().start();
    wait_sent(&server, emails as i64);
    let key = batch.idempotency_key.clone().expect("a batch has a key");
    let under_key = mail.requests_with_key(&key);
    assert_eq!(
        under_key.len(),
        2,
        "the batch, and once more after the restart"
    );
    assert_eq!(
        under_key[1].raw_body, batch.raw_body,
        "the identical request"
    );
    assert_each_recipient_once(mail, &server, emails);
}

/// A batch a sender made of waiting lone emails is written down before it
/// is sent: after a kill -9 with it in flight, the restart resends that
/// batch, byte for byte under its key, and none of its emails alone.
#[test]
fn kill_9_with_a_batch_of_lone_emails_in_flight_resends_that_batch() {
    kill_9_with_a_merged_batch_in_flight(1);
}

/// The same with emails created two at a time: the small batches merged
/// into the sender's batch are gone, and none of them is sent as it was.
#[test]
fn kill_9_with_merged_small_batches_in_flight_resends_the_merged_batch() {
    kill_9_with_a_merged_batch_in_flight(2);
}

/// Events of `per_event` addresses each, posted one by one, while one
/// sender takes a request a second: those queued behind the first request
/// are merged into one batch, which hangs at the provider when herald is
/// killed; the restart must send it, and only it, again.
fn kill_9_with_a_merged_batch_in_flight(per_event: usize) {
    let mail = FakeResend::start();
    let mut server = TestServer::builder()
        .mail(&mail)
        .env("HERALD_MAIL_SENDERS", "1")
        .env("HERALD_MAIL_RATE_PER_SEC", "1")
        .start();
    post_trickle(&server, 0..per_event, per_event);
    assert!(
        mail.wait_for_requests(1, WAIT),
        "the first email never left"
    );
    // The next ones wait a second for their turn: long enough to queue up
    // behind the first of them, which takes them into its batch.
    mail.set_mode(Mode::Hang);
    let emails = 11;
    post_trickle(&server, per_event..emails, per_event);
    assert!(
        mail.wait_for_requests(2, WAIT),
        "the batch never reached the provider"
    );
    let batch = mail.requests().remove(1);
    assert_eq!(batch.path, "/emails/batch");
    let members = batch.body.as_array().map_or(0, Vec::len);
    assert!(members > per_event, "nothing merged: {}", batch.raw_body);
    server.kill9();
    restart_and_check_resent(&mail, &server, &batch, emails);
}
