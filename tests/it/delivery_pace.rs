//! Pacing and batching against the fake provider: a client-side rate and
//! the provider's own limits keep herald under them, and emails waiting
//! for their turn (trickles, bursts, slow providers) go out in batches, each
//! email once; refused batches fall back to single emails or fail whole.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::delivery_engine::{
    check_one_email_per_delivery, delivery_ids, engine, post_email, post_to_addresses,
    role_changed, wait_sent, WAIT,
};
use serde_json::{json, Value};

use crate::support::{wait_until, FakeResend, Mode, TestServer};

/// Posts events to `n{i}@example.com` for every `i`, `per_event` addresses
/// an event, each once the one before is dispatched: every dispatch
/// creates its event's emails, alone (one address) or as a small batch.
pub fn post_trickle(server: &TestServer, range: std::ops::Range<usize>, per_event: usize) {
    for first in range.clone().step_by(per_event) {
        let end = (first + per_event).min(range.end);
        post_to_addresses(server, first..end);
        let created = || server.count("SELECT COUNT(*) FROM deliveries WHERE address LIKE 'n%'");
        if !wait_until(WAIT, || created() >= end as i64) {
            server.fail(&format!("event {first} was never dispatched"));
        }
    }
}

/// Posts address-only events to `n{i}@example.com` for every `i` in one
/// bulk request, so they commit, and are dispatched, together.
pub fn post_bulk_emails(server: &TestServer, range: std::ops::Range<usize>) {
    let events: Vec<Value> = range
        .map(|i| {
            role_changed(
                json!([{ "email": format!("n{i}@example.com") }]),
                &format!("s{i}"),
            )
        })
        .collect();
    let (status, body) = server.post(
        "/v1/events/bulk",
        Some(server.service_key()),
        json!({ "events": events }),
    );
    assert_eq!(status, 202, "{body}");
}

fn busiest_window(times: &[Instant], width: Duration) -> usize {
    let mut sorted = times.to_vec();
    sorted.sort();
    (0..sorted.len())
        .map(|i| {
            sorted[i..]
                .iter()
                .take_while(|t| **t - sorted[i] < width)
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// Posts one email to each of `emails` addresses and waits until the
/// provider has accepted them all.
fn post_and_wait_accepted(server: &TestServer, mail: &FakeResend, emails: usize) {
    for i in 0..emails {
        post_email(server, i);
    }
    assert!(
        mail.wait_for_accepted(emails, Duration::from_secs(60)),
        "{} of {emails} accepted",
        mail.accepted_count()
    );
}

#[test]
fn a_client_side_rate_keeps_herald_under_the_providers_limit() {
    let mail = FakeResend::start();
    mail.set_rate_limit(20);
    let server = engine(&mail).env("HERALD_MAIL_RATE_PER_SEC", "20").start();
    let emails = 200;
    post_and_wait_accepted(&server, &mail, emails);
    let times: Vec<Instant> = mail.requests().iter().map(|r| r.received_at).collect();
    let busiest = busiest_window(&times, Duration::from_secs(1));
    assert!(
        busiest <= 21,
        "the provider saw {busiest} requests in one second"
    );
    assert_eq!(
        server.count("SELECT COUNT(*) FROM deliveries WHERE status IN ('dead', 'failed')"),
        0
    );
    assert!(wait_until(WAIT, || server
        .count("SELECT COUNT(*) FROM deliveries WHERE status = 'sent'")
        == emails as i64));
    assert_eq!(check_one_email_per_delivery(&mail, &server), Ok(()));
}

#[test]
fn the_providers_ratelimit_headers_pace_the_senders_without_a_client_side_rate() {
    let mail = FakeResend::start();
    mail.set_rate_limit(20);
    let server = engine(&mail).env("HERALD_MAIL_SENDERS", "8").start();
    let emails = 100;
    post_and_wait_accepted(&server, &mail, emails);
    // Unpaced, eight senders would hit the limit hundreds of times a second;
    // paced by `ratelimit-remaining: 0` and `retry-after`, only the sends
    // already in flight when the budget runs out are refused.
    let refused = mail
        .requests()
        .iter()
        .filter(|r| r.status == Some(429))
        .count();
    assert!(refused < 60, "{refused} requests were refused with 429");
    assert_eq!(
        server.count("SELECT COUNT(*) FROM deliveries WHERE status IN ('dead', 'failed')"),
        0
    );
}

/// Voluntary plus involuntary context switches of each thread of `pid`, by
/// thread id: each wakeup of a sleeping thread counts one, so a polling
/// loop shows up here long before it shows up as CPU ticks.
/// Sends a trickle of 40 emails, `per_event` to an event, through
/// `server`, and checks that each went out exactly once; returns each
/// request's (new emails, status).
fn send_trickle(
    mail: &FakeResend,
    server: &TestServer,
    per_event: usize,
) -> Vec<(usize, Option<u16>)> {
    let emails = 40;
    post_trickle(server, 0..emails, per_event);
    wait_sent(server, emails as i64);
    assert_eq!(mail.accepted_count(), emails);
    assert_eq!(check_one_email_per_delivery(mail, server), Ok(()));
    let to: BTreeSet<String> = mail.accepted().into_iter().flat_map(|a| a.to).collect();
    assert_eq!(to.len(), emails, "each address got its own email");
    mail.requests()
        .iter()
        .map(|r| (r.new_email_ids.len(), r.status))
        .collect()
}

/// A server whose senders take a request every two seconds, from a
/// provider that takes two a second.
fn paced_engine(mail: &FakeResend) -> TestServer {
    mail.set_rate_limit(2);
    engine(mail).env("HERALD_MAIL_RATE_PER_SEC", "0.5").start()
}

/// Emails created one at a time (a steady trickle of events) catch up with
/// the provider's rate too: while they wait for it, the sender whose turn
/// comes takes all that wait into one batch. No sender keeps one to itself
/// through the wait, so 40 lone emails at one request every two seconds
/// take the first request alone and then one batch a turn (3 requests
/// here), not one per sender that happened to take one, nor 40.
#[test]
fn a_trickle_above_the_rate_limit_goes_out_in_batches_each_email_once() {
    let mail = FakeResend::start();
    let server = paced_engine(&mail);
    let sizes = send_trickle(&mail, &server, 1);
    assert!(sizes.len() <= 5, "{sizes:?}");
    assert!(
        sizes.iter().all(|(_, status)| *status == Some(200)),
        "none refused or throttled: {sizes:?}"
    );
    assert!(
        mail.requests().iter().any(|r| r.path == "/emails/batch"),
        "{sizes:?}"
    );
}

/// A trickle of events with two recipients each: every dispatch makes a
/// batch of two, and at one request every two seconds one request per
/// batch would never catch up. Batches still waiting, never sent, merge
/// into the batch of the sender whose turn comes: 2 requests here (the
/// first batch alone, then the other 19 as one), not 20.
#[test]
fn a_trickle_of_small_batches_above_the_rate_limit_merges_them_each_email_once() {
    let mail = FakeResend::start();
    let server = paced_engine(&mail);
    let sizes = send_trickle(&mail, &server, 2);
    assert!(sizes.len() <= 5, "{sizes:?}");
    assert!(
        sizes.iter().all(|(_, status)| *status == Some(200)),
        "{sizes:?}"
    );
    assert_eq!(
        server.count("SELECT COUNT(*) FROM mail_batches WHERE id NOT IN (SELECT batch_id FROM deliveries WHERE batch_id IS NOT NULL)"),
        0,
        "no batch is left without members"
    );
}

/// The same trickle to a slow provider with no rate limit: the one sender
/// is busy for 300 ms a request, and the batches that wait for it meanwhile
/// are merged too (about 3 requests, not 20).
#[test]
fn a_trickle_of_small_batches_to_a_slow_provider_merges_them_each_email_once() {
    let mail = FakeResend::start();
    mail.set_mode(Mode::Delay(Duration::from_millis(300)));
    let server = engine(&mail).env("HERALD_MAIL_SENDERS", "1").start();
    let sizes = send_trickle(&mail, &server, 2);
    assert!(sizes.len() <= 8, "{sizes:?}");
}

/// The same trickle with herald's default configuration (no client-side
/// rate): the provider's `ratelimit-remaining: 0` and 429s pause every
/// sender, the lone emails wait in the queue meanwhile, and the first
/// sender after the pause takes them into one batch.
#[test]
fn a_trickle_against_the_providers_own_limit_is_batched_too() {
    let mail = FakeResend::start();
    mail.set_rate_limit(2);
    let server = engine(&mail).start();
    let sizes = send_trickle(&mail, &server, 1);
    assert!(sizes.len() <= 10, "{sizes:?}");
}

/// Emails dispatched together go out together: a burst of 150 takes two
/// batch requests (100 + 50) instead of 150, so at Resend's default limit of
/// 2 requests a second it leaves at once instead of over 75 seconds.
#[test]
fn a_burst_goes_out_in_batch_requests_each_email_once() {
    let mail = FakeResend::start();
    mail.set_rate_limit(2);
    let server = engine(&mail).env("HERALD_MAIL_RATE_PER_SEC", "2").start();
    let emails = 150;
    post_bulk_emails(&server, 0..emails);
    wait_sent(&server, emails as i64);
    let requests = mail.requests();
    let sizes: Vec<usize> = requests.iter().map(|r| r.new_email_ids.len()).collect();
    assert!(
        requests
            .iter()
            .all(|r| r.path == "/emails/batch" && r.status == Some(200)),
        "every request a batch, none refused: {:?}",
        requests
            .iter()
            .map(|r| (&r.path, r.status))
            .collect::<Vec<_>>()
    );
    // The dispatcher may take the burst in more than one transaction, but
    // never more than a few, and no batch is over Resend's 100.
    assert!(
        requests.len() <= 4,
        "{} requests for {emails} emails: {sizes:?}",
        requests.len()
    );
    assert!(sizes.iter().all(|&n| n <= 100), "{sizes:?}");
    assert_eq!(mail.accepted_count(), emails);
    assert_eq!(check_one_email_per_delivery(&mail, &server), Ok(()));
    // The metrics count requests and emails apart (counted just after the
    // outcomes commit).
    let counted = || {
        let metrics = crate::metrics::scrape(&server);
        (
            metrics.value("herald_mail_requests_total", &[("kind", "batch")]),
            metrics.value("herald_email_sends_total", &[("result", "sent")]),
        )
    };
    let expected = (requests.len() as f64, emails as f64);
    assert!(
        wait_until(WAIT, || counted() == expected),
        "{:?} counted, {expected:?} expected",
        counted()
    );
    // The operator sees each email's batch, which is its key at the provider.
    let (status, page) = server.get("/v1/deliveries?limit=100", Some(server.service_key()));
    assert_eq!(status, 200, "{page}");
    let batch_keys: BTreeSet<String> = requests
        .iter()
        .filter_map(|r| r.idempotency_key.clone())
        .collect();
    for item in page["items"].as_array().unwrap() {
        let batch = item["batchId"].as_str().unwrap_or_default();
        assert!(batch_keys.contains(batch), "{item}");
    }
    let to: BTreeSet<String> = mail.accepted().into_iter().flat_map(|a| a.to).collect();
    let expected: BTreeSet<String> = (0..emails).map(|i| format!("n{i}@example.com")).collect();
    assert_eq!(to, expected, "each address got its own email");
    // Every email of a batch is a complete `SendEmailRequest`.
    for email in mail.accepted() {
        for field in ["from", "subject", "html", "text"] {
            assert!(
                email.body[field].is_string(),
                "{field} missing in {}",
                email.body
            );
        }
    }
}

/// A batch the provider refuses (422: nothing of it went out) is broken
/// up: each email goes again alone, under its own delivery id, at once.
#[test]
fn a_refused_batch_sends_each_email_alone_under_its_own_id() {
    let mail = FakeResend::start();
    mail.fail_next(1, 422);
    let server = engine(&mail).start();
    post_to_addresses(&server, 0..5);
    wait_sent(&server, 5);
    let requests = mail.requests();
    assert_eq!(
        (requests[0].path.as_str(), requests[0].status),
        ("/emails/batch", Some(422))
    );
    let alone: BTreeSet<String> = requests[1..]
        .iter()
        .filter(|r| r.path == "/emails")
        .filter_map(|r| r.idempotency_key.clone())
        .collect();
    assert_eq!(
        alone,
        delivery_ids(&server),
        "each email alone, under its own id"
    );
    assert_eq!(requests.len(), 6);
    assert_eq!(
        server.count("SELECT COUNT(*) FROM deliveries WHERE batch_id IS NOT NULL"),
        0
    );
    let (_, page) = server.get("/v1/deliveries", Some(server.service_key()));
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 5);
    assert!(items.iter().all(|d| d["batchId"].is_null()), "{page}");
    assert_eq!(check_one_email_per_delivery(&mail, &server), Ok(()));
}

/// A batch refused for a reason that is not its content (here a 403, as
/// for a revoked key) is not broken up: the provider may check that before
/// it would replay an earlier attempt that went out. The batch fails whole
/// and nothing goes out under any other key.
#[test]
fn a_batch_refused_by_the_account_fails_whole_and_sends_nothing_alone() {
    let mail = FakeResend::start();
    mail.fail_next(1, 403);
    let server = engine(&mail).start();
    post_to_addresses(&server, 0..3);
    let failed = || server.count("SELECT COUNT(*) FROM deliveries WHERE status = 'failed'");
    assert!(
        wait_until(WAIT, || failed() == 3),
        "{} of 3 failed",
        failed()
    );
    std::thread::sleep(Duration::from_millis(300));
    let requests = mail.requests();
    assert_eq!(requests.len(), 1, "no email went again alone");
    assert_eq!(
        (requests[0].path.as_str(), requests[0].status),
        ("/emails/batch", Some(403))
    );
    assert_eq!(
        server.count("SELECT COUNT(DISTINCT batch_id) FROM deliveries WHERE batch_id IS NOT NULL"),
        1
    );
}
