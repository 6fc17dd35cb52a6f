//! The retry policy: what each send attempt's outcome does to its
//! deliveries (sent, retried after an exponential backoff, failed, or dead
//! once out of attempts), recorded by the dispatcher thread. Invariant: one
//! classification (`Verdict`) decides both the stored state and the
//! metrics, so the two always agree.

use std::time::Duration;

use super::policy::DeliveryPolicy;
use crate::args;
use crate::ids;
use crate::mail::{MailError, Sent};
use crate::metrics::{SendResult, METRICS};
use crate::notify::webhooks::Subscriptions;
use crate::store::{StoreResult, Tx};

/// The result of one request's attempt, on its way to be recorded.
#[derive(Debug)]
pub struct Outcome {
    /// The deliveries the request carried, in order.
    pub delivery_ids: Vec<String>,
    /// Whether they went as a batch, which a refusal breaks up.
    pub batched: bool,
    pub attempts_before: u32,
    pub provider: &'static str,
    /// One `Sent` per delivery, in order.
    pub result: Result<Vec<Sent>, MailError>,
}

/// What an outcome does to every delivery its request carried.
#[derive(Debug, Clone, Copy)]
pub enum Verdict<'o> {
    /// Sent: each delivery keeps its provider id.
    Sent(&'o [Sent]),
    /// A batch refused for its bytes: nothing of it went out, so it breaks
    /// up and each member is retried at once, alone under its own id.
    BreakUp { message: &'o str },
    /// Refused for good.
    Failed { message: &'o str },
    /// A retryable failure that used the last attempt.
    Dead { message: &'o str },
    /// Tried again after a backoff, a batch whole.
    Retry {
        message: &'o str,
        retry_after: Option<Duration>,
    },
}

impl Outcome {
    /// How this outcome is recorded (`record`) and counted (`count`).
    pub fn verdict(&self, max_attempts: u32) -> Verdict<'_> {
        match &self.result {
            Ok(sent) => Verdict::Sent(sent),
            // Invalid bytes were refused before anything was sent, on every
            // attempt alike; other refusals (a revoked key) may be checked
            // before a replay and prove nothing, so they fail the batch whole.
            Err(MailError::Invalid { message }) if self.batched => Verdict::BreakUp { message },
            Err(
                MailError::Invalid { message }
                | MailError::Permanent { message }
                | MailError::KeyConflict { message },
            ) => Verdict::Failed { message },
            Err(MailError::Retryable { message, .. })
                if self.attempts_before + 1 >= max_attempts =>
            {
                Verdict::Dead { message }
            }
            Err(MailError::Retryable {
                message,
                retry_after,
            }) => Verdict::Retry {
                message,
                retry_after: *retry_after,
            },
        }
    }
}

impl Verdict<'_> {
    /// How the metrics count each email of the request.
    pub fn send_result(&self) -> SendResult {
        match self {
            Verdict::Sent(_) => SendResult::Sent,
            Verdict::BreakUp { .. } | Verdict::Retry { .. } => SendResult::Retry,
            Verdict::Failed { .. } => SendResult::Failed,
            Verdict::Dead { .. } => SendResult::Dead,
        }
    }
}

/// Records outcomes in the caller's transaction; returns the earliest retry
/// it scheduled, so the scheduler can be woken for it. A batch's members
/// share every outcome but an invalid batch's: nothing of it went out, so
/// its members leave the batch and are retried at once, each alone under
/// its own id, where only a bad one fails. Each delivery sent, failed or
/// dead is reported to the webhooks subscribed, in the same transaction.
pub fn record(
    tx: &Tx<'_>,
    outcomes: &[Outcome],
    policy: &DeliveryPolicy,
) -> StoreResult<Option<i64>> {
    let now = tx.now_ms();
    let mut earliest: Option<i64> = None;
    let webhooks = Subscriptions::load(tx)?;
    for o in outcomes {
        let attempts = o.attempts_before + 1;
        let ids = o.delivery_ids.iter();
        let verdict = o.verdict(policy.max_attempts);
        match verdict {
            Verdict::Sent(sent) => {
                for (i, id) in ids.enumerate() {
                    let provider_id = sent.get(i).map_or("", |s| s.provider_id.as_str());
                    tx.execute("UPDATE deliveries SET status = 'sent', attempts = ?2, provider = ?3,
                         provider_id = ?4, last_error = NULL, next_attempt_at = NULL, updated_at = ?5
                     WHERE id = ?1", args![id, attempts, o.provider, provider_id, now])?;
                }
            }
            Verdict::BreakUp { message } => {
                earliest = Some(now);
                for id in ids {
                    tx.execute(
                        "UPDATE deliveries SET status = 'retrying', batch_id = NULL, attempts = ?2,
                         provider = ?3, last_error = ?4, next_attempt_at = ?5, updated_at = ?5
                     WHERE id = ?1",
                        args![id, attempts, o.provider, message, now],
                    )?;
                }
            }
            Verdict::Failed { message } => {
                for id in ids {
                    set_failed(tx, id, "failed", attempts, o.provider, message, now)?;
                }
            }
            Verdict::Dead { message } => {
                for id in ids {
                    set_failed(tx, id, "dead", attempts, o.provider, message, now)?;
                }
            }
            Verdict::Retry {
                message,
                retry_after,
            } => {
                // One time for the whole batch: it goes out again together.
                let at = now + backoff(policy, attempts, retry_after).as_millis() as i64;
                earliest = Some(earliest.map_or(at, |e| e.min(at)));
                for id in ids {
                    tx.execute(
                        "UPDATE deliveries SET status = 'retrying', attempts = ?2, provider = ?3,
                         last_error = ?4, next_attempt_at = ?5, updated_at = ?6
                     WHERE id = ?1",
                        args![id, attempts, o.provider, message, at, now],
                    )?;
                }
            }
        }
        if let Verdict::Sent(_) | Verdict::Failed { .. } | Verdict::Dead { .. } = verdict {
            for id in &o.delivery_ids {
                webhooks.delivery_changed(tx, id)?;
            }
        }
    }
    Ok(earliest)
}

/// Counts each request of `outcomes`, and each of its emails as `record`
/// recorded it. Called once the transaction that recorded them committed.
pub fn count(outcomes: &[Outcome], max_attempts: u32) {
    for o in outcomes {
        METRICS.mail_request(o.batched);
        let result = o.verdict(max_attempts).send_result();
        for _ in &o.delivery_ids {
            METRICS.email_send(result);
        }
    }
}
fn set_failed(
    tx: &Tx<'_>,
    id: &str,
    status: &str,
    attempts: u32,
    provider: &str,
    message: &str,
    now: i64,
) -> StoreResult<()> {
    tx.execute(
        "UPDATE deliveries SET status = ?2, attempts = ?3, provider = ?4, last_error = ?5,
             next_attempt_at = NULL, updated_at = ?6
         WHERE id = ?1",
        args![id, status, attempts, provider, message, now],
    )?;
    Ok(())
}

/// `base * 2^(attempts-1)` with up to 20% jitter either way so a burst of
/// failures does not retry in lockstep, then capped: the cap is a promise to
/// the operator, so jitter never pushes a delay past it. The provider's
/// `Retry-After` wins when it asks for longer, even beyond the cap.
pub fn backoff(policy: &DeliveryPolicy, attempts: u32, retry_after: Option<Duration>) -> Duration {
    let exp = policy
        .retry_base
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(20))
        .min(policy.retry_cap);
    let jitter = (ids::random_u64() % 401) as f64 / 1000.0 - 0.2;
    let delay = exp.mul_f64(1.0 + jitter).min(policy.retry_cap);
    retry_after.map_or(delay, |ra| ra.max(delay))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::delivery::deliveries::testing::TEST_INSTANCE;
    use crate::notify::delivery::deliveries::testing::{ids, states, store_with_pending};
    use crate::notify::delivery::deliveries::{claim_due, MailJob};
    use crate::notify::delivery::views::rearm;
    use crate::store::Store;

    fn outcome(job: &MailJob, result: Result<Vec<Sent>, MailError>) -> Outcome {
        Outcome {
            delivery_ids: job.delivery_ids().map(str::to_string).collect(),
            batched: job.batched,
            attempts_before: job.attempts,
            provider: "test",
            result,
        }
    }

    fn record_one(store: &Store, o: Outcome) -> Option<i64> {
        store
            .write(|tx| record(tx, std::slice::from_ref(&o), &DeliveryPolicy::default()))
            .unwrap()
    }

    #[test]
    fn a_batch_is_retried_whole_at_one_time_and_claimed_as_one_request() {
        let dir = tempfile::tempdir().unwrap();
        let (store, jobs) = store_with_pending(dir.path(), 3, 100);
        let [job] = &jobs[..] else {
            panic!("one batch expected, got {jobs:?}")
        };
        let retry_after = Some(Duration::from_millis(1));
        let error = MailError::Retryable {
            message: "HTTP 503".into(),
            retry_after,
        };
        let at = record_one(&store, outcome(job, Err(error))).expect("a retry is scheduled");
        let states = states(&store, &ids(job));
        for state in &states {
            assert_eq!(
                (state.0.as_str(), state.1, state.2, state.3.as_deref()),
                ("retrying", 1, Some(at), Some(job.key.as_str())),
                "every member shares the batch's one retry time"
            );
        }
        let due = store
            .write(|tx| claim_due(tx, at, 500, TEST_INSTANCE))
            .unwrap();
        assert_eq!(due.len(), 1, "the batch is claimed as one request");
        assert_eq!(
            (due[0].key.as_str(), due[0].batched),
            (job.key.as_str(), true)
        );
        assert_eq!(ids(&due[0]), ids(job), "the same members in the same order");
        assert_eq!(due[0].attempts, 1);
    }

    #[test]
    fn a_refused_batch_breaks_up_and_its_members_go_alone_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (store, jobs) = store_with_pending(dir.path(), 2, 100);
        let job = &jobs[0];
        let refused = MailError::Invalid {
            message: "HTTP 422 validation_error: Invalid `to` field at index 1".into(),
        };
        let before = store.clock().now_ms();
        let at = record_one(&store, outcome(job, Err(refused))).expect("due again");
        assert!(at >= before && at <= store.clock().now_ms());
        let due = store
            .write(|tx| claim_due(tx, at, 500, TEST_INSTANCE))
            .unwrap();
        let mut alone: Vec<(String, bool)> =
            due.iter().map(|j| (j.key.clone(), j.batched)).collect();
        alone.sort();
        let expected: Vec<(String, bool)> = ids(job).into_iter().map(|id| (id, false)).collect();
        assert_eq!(alone, expected, "each member alone, under its own id");
    }

    /// Records `refusal` for a fresh batch of `n` and checks that every
    /// member failed and kept its batch.
    fn assert_fails_whole(n: usize, refusal: MailError) -> (tempfile::TempDir, Store, MailJob) {
        let dir = tempfile::tempdir().unwrap();
        let (store, mut jobs) = store_with_pending(dir.path(), n, 100);
        let job = jobs.remove(0);
        assert_eq!(record_one(&store, outcome(&job, Err(refusal))), None);
        assert!(states(&store, &ids(&job))
            .iter()
            .all(|s| s.0 == "failed" && s.3.as_deref() == Some(job.key.as_str())));
        (dir, store, job)
    }

    /// A refusal that is not about the request's bytes (a revoked key) may
    /// come before the provider would replay an earlier attempt that went
    /// out: the batch stays whole, and its members fail together.
    #[test]
    fn a_batch_refused_for_another_reason_fails_whole() {
        assert_fails_whole(
            2,
            MailError::Permanent {
                message: "HTTP 403 invalid_api_key: API key is invalid".into(),
            },
        );
    }

    #[test]
    fn a_key_conflict_fails_the_whole_batch_and_a_retry_rearms_it_whole() {
        let conflict = MailError::KeyConflict {
            message: "HTTP 409 invalid_idempotent_request".into(),
        };
        let (_dir, store, job) = assert_fails_whole(3, conflict);
        let members = ids(&job);
        // Re-arming one member re-arms the batch: it is one request.
        let view = store.write(|tx| rearm(tx, &members[1])).unwrap().unwrap();
        assert_eq!(view.status, "retrying");
        assert!(states(&store, &members)
            .iter()
            .all(|s| s.0 == "retrying" && s.1 == 0));
        let due = store
            .write(|tx| claim_due(tx, store.clock().now_ms(), 500, TEST_INSTANCE))
            .unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(ids(&due[0]), members);
    }

    /// Members are found through the deliveries' event key within the

    #[test]
    fn a_sent_batch_stores_each_members_provider_id() {
        let dir = tempfile::tempdir().unwrap();
        let (store, jobs) = store_with_pending(dir.path(), 3, 100);
        let job = &jobs[0];
        let sent = (0..3)
            .map(|i| Sent {
                provider_id: format!("re_{i}"),
            })
            .collect();
        assert_eq!(record_one(&store, outcome(job, Ok(sent))), None);
        let provider_ids: Vec<String> = store
            .read(|c| {
                ids(job)
                    .iter()
                    .map(|id| {
                        c.query_one(
                            "SELECT provider_id FROM deliveries WHERE id = ?1 AND status = 'sent'",
                            args![id],
                            |r| r.get(0),
                        )
                    })
                    .collect::<StoreResult<Vec<_>>>()
            })
            .unwrap();
        assert_eq!(provider_ids, ["re_0", "re_1", "re_2"]);
    }

    #[test]
    fn backoff_doubles_caps_and_honours_longer_retry_after() {
        let policy = DeliveryPolicy {
            retry_base: Duration::from_millis(1000),
            retry_cap: Duration::from_secs(10),
            ..DeliveryPolicy::default()
        };
        let within = |d: Duration, ms: u64| {
            let ms = ms as f64;
            (d.as_millis() as f64) >= ms * 0.8 - 1.0 && (d.as_millis() as f64) <= ms * 1.2 + 1.0
        };
        assert!(within(backoff(&policy, 1, None), 1000));
        assert!(within(backoff(&policy, 3, None), 4000));
        assert!(within(backoff(&policy, 30, None), 10_000));
        assert_eq!(
            backoff(&policy, 1, Some(Duration::from_secs(60))),
            Duration::from_secs(60)
        );
        assert!(within(
            backoff(&policy, 3, Some(Duration::from_millis(1))),
            4000
        ));
        // Jitter never lifts a delay over the cap: not where the doubling
        // reaches it (attempt 4: 8 s +-20%), nor once it is capped.
        for attempts in [4, 5, 30] {
            for _ in 0..200 {
                let delay = backoff(&policy, attempts, None);
                assert!(
                    delay <= policy.retry_cap,
                    "attempt {attempts}: {delay:?} is over the 10 s cap"
                );
            }
        }
        // A provider asking for longer than the cap still gets its wait.
        assert_eq!(
            backoff(&policy, 30, Some(Duration::from_secs(30))),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn the_stored_state_and_the_metrics_follow_one_verdict() {
        let job = |batched: bool, attempts_before: u32, result| Outcome {
            delivery_ids: vec!["dlv_1".into()],
            batched,
            attempts_before,
            provider: "test",
            result,
        };
        let retryable = || {
            Err(MailError::Retryable {
                message: "HTTP 503".into(),
                retry_after: None,
            })
        };
        let invalid = || {
            Err(MailError::Invalid {
                message: "HTTP 422".into(),
            })
        };
        let cases = [
            (job(false, 0, Ok(vec![])), SendResult::Sent),
            (job(true, 0, invalid()), SendResult::Retry),
            (job(false, 0, invalid()), SendResult::Failed),
            (job(false, 0, retryable()), SendResult::Retry),
            (job(false, 7, retryable()), SendResult::Dead),
        ];
        for (outcome, expected) in cases {
            let verdict = outcome.verdict(8);
            assert_eq!(verdict.send_result(), expected, "{verdict:?}");
        }
    }
}
