//! The library entry point (SPEC 2.1): an event enqueued in a transaction
//! that rolls back delivers nothing; committed, it delivers once; and the bus
//! is only pushed after COMMIT (for an event due later, not even then).
//! Runs herald in-process against a real
//! database (the suite's engine), with a recording mail provider at the one
//! faked edge.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald::mail::{Email, MailError, MailProvider, RateHint, Sent};
use herald::notify::{DeliveryPolicy, Event, Notifier, Recipient, Registry, Templates};
use herald::store::{users, StoreError};
use serde_json::json;

use crate::support::database::TestDatabase;
use crate::support::wait_until;

#[derive(Default)]
struct Recorder {
    sent: Mutex<Vec<(String, Email)>>,
}

impl MailProvider for Recorder {
    fn name(&self) -> &'static str {
        "recorder"
    }

    fn send_email(&self, email: &Email, key: &str) -> (Result<Sent, MailError>, RateHint) {
        self.sent
            .lock()
            .unwrap()
            .push((key.to_string(), email.clone()));
        let sent = Sent {
            provider_id: format!("rec-{key}"),
        };
        (Ok(sent), RateHint::default())
    }

    fn send_batch(&self, emails: &[Email], key: &str) -> (Result<Vec<Sent>, MailError>, RateHint) {
        let sent = emails
            .iter()
            .enumerate()
            .map(|(i, email)| self.send_email(email, &format!("{key}.{i}")).0)
            .collect();
        (sent, RateHint::default())
    }
}

fn setup() -> (TestDatabase, Notifier) {
    let db = TestDatabase::new();
    let store = Arc::new(db.open());
    store
        .write(|tx| {
            users::upsert(
                tx,
                &users::User {
                    id: "u1".into(),
                    email: "u1@acme.test".into(),
                    name: "U".into(),
                },
            )
        })
        .unwrap();
    let registry = Registry::embedded().unwrap();
    let templates = Templates::load(&registry, None).unwrap();
    (
        db,
        Notifier::new(store, registry, templates, DeliveryPolicy::default()),
    )
}

fn event() -> Event {
    Event::new(
        "org.billing.past_due",
        vec![Recipient::User("u1".into())],
        json!({"orgName": "Acme", "plan": "pro"}),
    )
}

fn count(notifier: &Notifier, sql: &str) -> i64 {
    notifier
        .store()
        .read(|c| c.query_one(sql, herald::args![], |r| r.get(0)))
        .unwrap()
}

#[test]
fn the_bus_is_pushed_only_after_commit() {
    let (_db, notifier) = setup();
    // Not started: the bus is observable.
    notifier
        .transaction(|outbox| {
            outbox.enqueue(&event())?;
            assert_eq!(
                notifier.bus_len(),
                0,
                "nothing published inside the transaction"
            );
            Ok::<_, herald::notify::NotifyError>(())
        })
        .unwrap();
    assert_eq!(notifier.bus_len(), 1, "published once committed");

    let rolled_back: Result<(), StoreError> = notifier.transaction(|outbox| {
        outbox.enqueue(&event()).map_err(|_| StoreError::NotFound)?;
        Err(StoreError::NotFound)
    });
    assert!(rolled_back.is_err());
    assert_eq!(
        notifier.bus_len(),
        1,
        "a rolled-back transaction publishes nothing"
    );
    assert_eq!(count(&notifier, "SELECT COUNT(*) FROM outbox"), 1);
}

#[test]
fn rolled_back_delivers_nothing_and_committed_delivers_once() {
    let (_db, notifier) = setup();
    let recorder = Arc::new(Recorder::default());
    let running = notifier.start(recorder.clone()).unwrap();

    // The raw entry point: enqueue in the caller's transaction, which fails.
    let rolled_back: Result<i64, StoreError> = notifier.store().write(|tx| {
        let enqueued = notifier
            .enqueue(tx, &event())
            .map_err(|_| StoreError::NotFound)?;
        let _ = enqueued;
        Err(StoreError::NotFound)
    });
    assert!(rolled_back.is_err());

    // Committed: the caller publishes after commit.
    let seq = notifier
        .store()
        .write(|tx| {
            notifier
                .enqueue(tx, &event())
                .map(|e| e.seq)
                .map_err(|_| StoreError::NotFound)
        })
        .unwrap();
    notifier.publish(seq);
    // Publishing again (or publishing a rolled-back id) is harmless.
    notifier.publish(seq);
    notifier.publish(seq + 1000);
    assert!(running.flush(Duration::from_secs(5)));
    assert!(wait_until(Duration::from_secs(5), || recorder
        .sent
        .lock()
        .unwrap()
        .len()
        == 1));
    std::thread::sleep(Duration::from_millis(200));
    running.shutdown(Duration::from_secs(5));

    let sent = recorder.sent.lock().unwrap();
    assert_eq!(sent.len(), 1, "exactly one email");
    assert_eq!(sent[0].1.to, vec!["u1@acme.test".to_string()]);
    assert_eq!(count(&notifier, "SELECT COUNT(*) FROM outbox"), 1);
    assert_eq!(count(&notifier, "SELECT COUNT(*) FROM notifications"), 1);
    assert_eq!(
        count(
            &notifier,
            "SELECT COUNT(*) FROM deliveries WHERE status = 'sent'"
        ),
        1
    );
}

/// The bus may carry a seq twice (a re-drive racing its first publish):
/// dispatched in one batch, the event is still claimed once, so its stored
/// result counts what its first dispatch sent rather than a second, empty
/// one.
#[test]
fn a_seq_published_twice_in_one_batch_is_dispatched_once() {
    let (_db, notifier) = setup();
    // Published with its event at COMMIT, then again by seq alone.
    let seq = notifier
        .transaction(|outbox| outbox.enqueue(&event()).map(|e| e.seq))
        .unwrap();
    notifier.publish(seq);
    let recorder = Recorder::default();
    assert_eq!(notifier.deliver_published(&recorder), 2);
    assert_eq!(recorder.sent.lock().unwrap().len(), 1, "exactly one email");
    assert_eq!(count(&notifier, "SELECT COUNT(*) FROM notifications"), 1);
    let dispatched = |column: &str| {
        count(
            &notifier,
            &format!("SELECT {column} FROM outbox WHERE status = 'dispatched'"),
        )
    };
    assert_eq!(
        [
            dispatched("sent"),
            dispatched("inbox_sent"),
            dispatched("email_sent")
        ],
        [1, 1, 1],
        "one recipient, its inbox row and its email"
    );
}

/// An event due later (`send_at`) is not published at COMMIT; published by
/// its caller anyway, the dispatcher leaves it to the scheduler. Either way
/// it goes out once, when due.
#[test]
fn an_event_due_later_waits_for_the_scheduler_whoever_publishes_it() {
    let (_db, notifier) = setup();
    let due = herald::time::system_now_ms() + 1_500;
    let later = |subject: &str| {
        let mut event = event();
        event.subject_id = Some(subject.to_string());
        event.send_at = Some(due);
        event
    };
    let first = notifier
        .transaction(|outbox| outbox.enqueue(&later("s1")))
        .unwrap();
    assert!(first.scheduled);
    assert_eq!(notifier.bus_len(), 0, "not published at COMMIT");

    let recorder = Arc::new(Recorder::default());
    let running = notifier.start(recorder.clone()).unwrap();
    let second = notifier
        .store()
        .write(|tx| {
            notifier
                .enqueue(tx, &later("s2"))
                .map_err(|_| StoreError::NotFound)
        })
        .unwrap();
    notifier.publish(second.seq);
    assert!(running.flush(Duration::from_secs(5)));
    if herald::time::system_now_ms() < due - 300 {
        assert_eq!(count(&notifier, "SELECT COUNT(*) FROM notifications"), 0);
    }
    let sent = || recorder.sent.lock().unwrap().len();
    assert!(wait_until(Duration::from_secs(10), || sent() == 2));
    std::thread::sleep(Duration::from_millis(200));
    running.shutdown(Duration::from_secs(5));
    assert_eq!(sent(), 2, "one email each");
    assert_eq!(
        count(
            &notifier,
            "SELECT COUNT(*) FROM notifications n JOIN outbox o ON o.seq = n.event_seq
             WHERE n.created_at >= o.due_at"
        ),
        2,
        "each inbox row written once, when due"
    );
}
