//! The fake's own bookkeeping, which the delivery tests' "exactly once"
//! checks stand on: a same-key repeat is a replay, not a second email, and a
//! key accepted twice (possible once keys are forgotten) is caught.

use super::*;
use serde_json::json;

use super::validate::MAX_BATCH;

/// `body` as JSON to the fake at `url` + `path` under `key`; `Err` if
/// the connection broke.
fn send(url: &str, path: &str, key: &str, body: &Value) -> Result<(u16, Value), ureq::Error> {
    send_within(Duration::from_secs(10), url, path, key, body)
}

/// `send`, giving up after `timeout` (a request the fake let go of
/// unanswered is only ended by the client's timeout).
fn send_within(
    timeout: Duration,
    url: &str,
    path: &str,
    key: &str,
    body: &Value,
) -> Result<(u16, Value), ureq::Error> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into();
    let mut response = agent
        .post(&format!("{url}{path}"))
        .header("Authorization", "Bearer re_test")
        .header("Idempotency-Key", key)
        .header("Content-Type", "application/json")
        .send(&serde_json::to_vec(body).expect("a JSON value serialises")[..])?;
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    Ok((status, serde_json::from_str(&text).unwrap_or_default()))
}

fn email(to: &str, subject: &str) -> Value {
    json!({
        "from": "herald <noreply@herald.test>",
        "to": [to],
        "subject": subject,
        "text": "hello"
    })
}

fn post(fake: &FakeResend, key: &str, subject: &str) -> (u16, Value) {
    send(
        &fake.url(),
        "/emails",
        key,
        &email("dave@example.com", subject),
    )
    .expect("the fake answers")
}

/// `n` valid emails to user0@example.com, user1@example.com, ...
fn batch(n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| email(&format!("user{i}@example.com"), "Hi"))
            .collect(),
    )
}

fn post_batch(fake: &FakeResend, key: &str, body: &Value) -> (u16, Value) {
    send(&fake.url(), "/emails/batch", key, body).expect("the fake answers")
}

/// The ids of a batch answer, in order.
fn data_ids(answer: &Value) -> Vec<String> {
    answered_ids(answer).into_iter().map(String::from).collect()
}

/// A 422 `validation_error` whose message contains `part`.
fn assert_invalid(answer: (u16, Value), part: &str) {
    let (status, body) = answer;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["name"], "validation_error", "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains(part), "{message:?} lacks {part:?}");
}

#[test]
fn a_repeat_is_a_replay_and_a_key_accepted_twice_is_caught() {
    let fake = FakeResend::start();
    let keys = BTreeSet::from(["dlv_a".to_string(), "dlv_b".to_string()]);
    let (status, first) = post(&fake, "dlv_a", "Hi");
    assert_eq!(status, 200, "{first}");
    // A resend under the same key (the client never saw the answer, or
    // crashed before recording it) gets the original response.
    let (status, again) = post(&fake, "dlv_a", "Hi");
    assert_eq!((status, &again), (200, &first));
    // The same key with another body is refused, not sent.
    let (status, refused) = post(&fake, "dlv_a", "Other");
    assert_eq!(status, 409, "{refused}");
    assert_eq!(post(&fake, "dlv_b", "Hi").0, 200);
    assert_eq!(fake.request_count(), 4);
    assert_eq!(fake.accepted_count(), 2);
    assert_eq!(fake.accepted_keys(), keys);
    assert_eq!(fake.check_one_email_per_key(&keys), Ok(()));
    assert!(fake
        .check_one_email_per_key(&BTreeSet::from(["dlv_a".to_string()]))
        .is_err_and(|e| e.contains("dlv_b")));

    // Once the keys are forgotten, as after Resend's 24 hours, the same
    // request is a second email to the same address, and it is counted.
    fake.forget_idempotency_keys();
    let (status, second) = post(&fake, "dlv_a", "Hi");
    assert_eq!(status, 200);
    assert_ne!(second["id"], first["id"]);
    assert_eq!(fake.new_emails_per_key()["dlv_a"], 2);
    assert_eq!(fake.accepted_count(), 3);
    let err = fake.check_one_email_per_key(&keys).unwrap_err();
    assert!(err.contains("dlv_a (2 requests, 2 emails)"), "{err}");
}

#[test]
fn a_batch_is_accepted_in_order_and_counted_per_email() {
    let fake = FakeResend::start();
    let body = batch(3);
    let (status, answer) = post_batch(&fake, "bat_a", &body);
    assert_eq!(status, 200, "{answer}");
    let ids = data_ids(&answer);
    assert_eq!(ids.len(), 3, "{answer}");
    let accepted = fake.accepted();
    let accepted_ids: Vec<String> = accepted.iter().map(|e| e.id.clone()).collect();
    assert_eq!(accepted_ids, ids, "answered in request order");
    for (i, email) in accepted.iter().enumerate() {
        assert_eq!(email.to, vec![format!("user{i}@example.com")]);
        assert_eq!(email.idempotency_key.as_deref(), Some("bat_a"));
        assert_eq!(email.body, body[i], "each email keeps its own item");
    }
    assert_eq!(fake.requests()[0].new_email_ids, ids);
    assert_eq!(fake.accepted_count(), 3);
    assert_eq!(
        fake.emails_per_key(),
        BTreeMap::from([("bat_a".to_string(), 3)])
    );
    assert_eq!(
        fake.new_emails_per_key(),
        BTreeMap::from([("bat_a".to_string(), 1)])
    );
    // The largest batch Resend takes.
    let (status, answer) = post_batch(&fake, "bat_b", &batch(MAX_BATCH));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(data_ids(&answer).len(), MAX_BATCH);
    assert_eq!(fake.accepted_count(), 3 + MAX_BATCH);
}

#[test]
fn one_invalid_email_refuses_the_whole_batch() {
    let fake = FakeResend::start();
    let mut body = batch(3);
    body[1]["to"] = json!(["not an address"]);
    assert_invalid(post_batch(&fake, "bat_a", &body), "`to` field at index 1");
    assert_eq!(fake.accepted_count(), 0);
    assert!(fake.accepted().is_empty());
    assert!(fake.requests()[0].new_email_ids.is_empty());
    // Nothing was remembered under the key: the corrected batch goes out.
    assert_eq!(post_batch(&fake, "bat_a", &batch(3)).0, 200);
    assert_eq!(fake.accepted_count(), 3);
}

#[test]
fn a_batch_must_hold_1_to_100_emails() {
    let fake = FakeResend::start();
    assert_invalid(post_batch(&fake, "bat_a", &batch(0)), "got 0");
    assert_invalid(post_batch(&fake, "bat_b", &batch(MAX_BATCH + 1)), "got 101");
    assert_invalid(
        post_batch(&fake, "bat_c", &email("dave@example.com", "Hi")),
        "JSON array",
    );
    assert_eq!(fake.accepted_count(), 0);
}

#[test]
fn a_batch_email_may_not_carry_attachments_or_scheduled_at() {
    let fake = FakeResend::start();
    let mut body = batch(2);
    body[1]["attachments"] = json!([{ "filename": "a.txt", "content": "aGk=" }]);
    assert_invalid(
        post_batch(&fake, "bat_a", &body),
        "`attachments` field at index 1",
    );
    let mut body = batch(2);
    body[0]["scheduled_at"] = json!("2030-01-01T00:00:00Z");
    assert_invalid(
        post_batch(&fake, "bat_b", &body),
        "`scheduled_at` field at index 0",
    );
    assert_eq!(fake.accepted_count(), 0);
    // `POST /emails` takes both.
    let mut single = email("dave@example.com", "Hi");
    single["attachments"] = json!([{ "filename": "a.txt", "content": "aGk=" }]);
    single["scheduled_at"] = json!("2030-01-01T00:00:00Z");
    let (status, answer) =
        send(&fake.url(), "/emails", "dlv_a", &single).expect("the fake answers");
    assert_eq!(status, 200, "{answer}");
}

#[test]
fn a_batch_repeat_is_replayed_whole_and_another_body_is_refused() {
    let fake = FakeResend::start();
    let keys = BTreeSet::from(["bat_a".to_string()]);
    let (status, first) = post_batch(&fake, "bat_a", &batch(3));
    assert_eq!(status, 200, "{first}");
    let (status, again) = post_batch(&fake, "bat_a", &batch(3));
    assert_eq!(
        (status, &again),
        (200, &first),
        "the same ids in the same order"
    );
    assert!(fake.requests()[1].new_email_ids.is_empty());
    assert_eq!(fake.accepted_count(), 3);
    assert_eq!(fake.emails_per_key()["bat_a"], 3);
    assert_eq!(fake.check_one_email_per_key(&keys), Ok(()));

    let (status, refused) = post_batch(&fake, "bat_a", &batch(2));
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["name"], "invalid_idempotent_request");
    // A key covers the request, whichever endpoint it was first used on.
    let (status, refused) = post(&fake, "bat_a", "Hi");
    assert_eq!(status, 409, "{refused}");
    assert_eq!(fake.accepted_count(), 3);
    assert_eq!(fake.check_one_email_per_key(&keys), Ok(()));
}

#[test]
fn a_batch_repeat_while_the_first_is_held_is_a_409() {
    let fake = FakeResend::start();
    fake.set_mode(Mode::Hang);
    let url = fake.url();
    let held = thread::spawn(move || {
        send_within(
            Duration::from_millis(500),
            &url,
            "/emails/batch",
            "bat_a",
            &batch(2),
        )
    });
    assert!(crate::support::wait_until(Duration::from_secs(5), || {
        fake.in_flight() == 1
    }));
    let (status, refused) = post_batch(&fake, "bat_a", &batch(2));
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["name"], "concurrent_idempotent_requests");
    // Let go of the held request unanswered: nothing was accepted, and
    // the key is free again.
    fake.set_mode(Mode::Ok);
    assert!(crate::support::wait_until(Duration::from_secs(5), || {
        !fake.shared.lock().idempotency.contains_key("bat_a")
    }));
    assert!(
        held.join().is_ok_and(|sent| sent.is_err()),
        "never answered"
    );
    assert_eq!(fake.accepted_count(), 0);
    assert_eq!(post_batch(&fake, "bat_a", &batch(2)).0, 200);
    assert_eq!(fake.accepted_count(), 2);
}

#[test]
fn a_batch_key_accepted_twice_is_caught() {
    let fake = FakeResend::start();
    let keys = BTreeSet::from(["bat_a".to_string(), "dlv_b".to_string()]);
    let (status, first) = post_batch(&fake, "bat_a", &batch(3));
    assert_eq!(status, 200, "{first}");
    assert_eq!(post(&fake, "dlv_b", "Hi").0, 200);
    assert_eq!(post_batch(&fake, "bat_a", &batch(3)).0, 200);
    assert_eq!(fake.check_one_email_per_key(&keys), Ok(()));
    let err = fake
        .check_one_email_per_key(&BTreeSet::from(["dlv_b".to_string()]))
        .unwrap_err();
    assert!(err.contains("bat_a"), "{err}");

    fake.forget_idempotency_keys();
    let (status, second) = post_batch(&fake, "bat_a", &batch(3));
    assert_eq!(status, 200, "{second}");
    assert_ne!(data_ids(&second), data_ids(&first));
    assert_eq!(fake.new_emails_per_key()["bat_a"], 2);
    assert_eq!(fake.emails_per_key()["bat_a"], 6);
    assert_eq!(fake.accepted_count(), 7);
    let err = fake.check_one_email_per_key(&keys).unwrap_err();
    assert!(err.contains("bat_a (2 requests, 6 emails)"), "{err}");
}

#[test]
fn accept_then_close_on_a_batch_accepts_every_email() {
    let fake = FakeResend::start();
    let keys = BTreeSet::from(["bat_a".to_string()]);
    fake.set_random_faults(1.0, &[Fault::AcceptThenClose]);
    assert!(
        send(&fake.url(), "/emails/batch", "bat_a", &batch(3)).is_err(),
        "the connection breaks instead of answering"
    );
    let requests = fake.requests();
    let broken = &requests[0];
    assert!(broken.closed && broken.status.is_none(), "{broken:?}");
    assert_eq!(broken.new_email_ids.len(), 3);
    assert_eq!(fake.accepted_count(), 3);
    assert_eq!(fake.check_one_email_per_key(&keys), Ok(()));

    // The client's retry under the same key learns the original ids.
    fake.set_random_faults(0.0, &[]);
    let (status, answer) = post_batch(&fake, "bat_a", &batch(3));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(data_ids(&answer), broken.new_email_ids);
    assert_eq!(fake.accepted_count(), 3);
    assert_eq!(fake.check_one_email_per_key(&keys), Ok(()));
}

#[test]
fn a_replay_with_other_ids_is_caught() {
    let fake = FakeResend::start();
    let keys = BTreeSet::from(["bat_a".to_string()]);
    assert_eq!(post_batch(&fake, "bat_a", &batch(2)).0, 200);
    assert_eq!(post_batch(&fake, "bat_a", &batch(2)).0, 200);
    // Doctor the replay's answer: the ids in another order are not the
    // original response.
    {
        let mut state = fake.shared.lock();
        if let Some(data) = state.requests[1].response["data"].as_array_mut() {
            data.reverse();
        }
    }
    let err = fake.check_one_email_per_key(&keys).unwrap_err();
    assert!(err.contains("original ids"), "{err}");
}
