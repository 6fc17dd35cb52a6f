//! The mail sender threads, the only callers of the mail provider: each
//! takes a request from the mail queue, waits for its turn under the shared
//! pacer, sends it (one request per lone email or batch) and hands the
//! outcome to the dispatcher thread to record. Invariant: nothing is sent
//! inside a transaction; the one thing a sender writes is a batch it makes
//! of fresh emails waiting together (`coalesce`), committed before it is
//! sent.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use super::deliveries::{merge_fresh, sort_members, EmailJob, MailJob};
use super::mail_queue::MailQueue;
use super::pacer::Pacer;
use super::retry::Outcome;
use crate::mail::{Email, MailProvider, RateHint};
use crate::notify::bus::BusMsg;
use crate::store::Store;

pub(crate) struct SenderContext {
    pub provider: Arc<dyn MailProvider>,
    pub from: String,
    pub queue: Arc<MailQueue>,
    pub outcomes: Sender<BusMsg>,
    pub pacer: Arc<Pacer>,
    /// Where `coalesce` writes the batches it makes.
    pub store: Arc<Store>,
    /// At most this many emails per batch; below 2, no batches.
    pub mail_batch: usize,
    /// This instance: `coalesce` merges only deliveries it still holds.
    pub instance: i64,
    /// Never carries a message: dropping its sender is the stop signal, which
    /// wakes every sender at once, even one waiting for its turn.
    pub stop: Receiver<()>,
}

impl SenderContext {
    /// Whether `job` may still join a bigger batch (`coalesce`): a fresh
    /// lone email or batch with room left, with batches on.
    fn may_batch(&self, job: &MailJob) -> bool {
        self.mail_batch >= 2 && job.fresh && job.emails.len() < self.mail_batch
    }
}

/// One attempt of `job`: one request under its key, a batch or one email.
pub(crate) fn attempt(
    provider: &dyn MailProvider,
    from: &str,
    job: MailJob,
) -> (Outcome, RateHint) {
    // The bodies move into the request: each email's bytes are copied
    // once, when its job was built, not again per attempt.
    let (delivery_ids, emails): (Vec<String>, Vec<Email>) = job
        .emails
        .into_iter()
        .map(|e| {
            let email = Email {
                from: from.to_string(),
                to: vec![e.address],
                subject: e.subject,
                html: e.html,
                text: e.text,
            };
            (e.delivery_id, email)
        })
        .unzip();
    let (result, hint) = match (job.batched, emails.as_slice()) {
        (false, [email]) => {
            let (result, hint) = provider.send_email(email, &job.key);
            (result.map(|sent| vec![sent]), hint)
        }
        _ => provider.send_batch(&emails, &job.key),
    };
    if let Err(e) = &result {
        log::warn!(
            "{} {} ({} emails) attempt {} failed: {e}",
            if job.batched { "batch" } else { "delivery" },
            job.key,
            emails.len(),
            job.attempts + 1
        );
    }
    let outcome = Outcome {
        delivery_ids,
        batched: job.batched,
        attempts_before: job.attempts,
        provider: provider.name(),
        result,
    };
    (outcome, hint)
}

/// A mail sender thread: blocks until a job or the stop signal arrives,
/// waits for its turn under the shared pacer (a batch is one request),
/// sends, and hands the outcome back to be recorded. A job taken after the
/// stop signal is left pending in the database for the next start.
pub(crate) fn run_sender(ctx: SenderContext) {
    let jobs = ctx.queue.receiver();
    // Jobs this sender took from the queue but has not sent yet.
    let mut taken: VecDeque<MailJob> = VecDeque::new();
    loop {
        let job = match taken.pop_front() {
            Some(job) => job,
            None => {
                let job = crossbeam_channel::select! {
                    recv(ctx.stop) -> _ => return,
                    recv(jobs) -> job => match job {
                        Ok(job) => job,
                        Err(_) => return,
                    },
                };
                ctx.queue.taken(&job);
                job
            }
        };
        if stopped(&ctx.stop) {
            return;
        }
        let (job, waited) = if !ctx.may_batch(&job) {
            if !ctx.pacer.wait_turn(&ctx.stop) {
                return;
            }
            (job, false)
        } else if ctx.pacer.take_turn_now() {
            (job, false)
        } else {
            // Held here through the wait, the job would miss the batch of
            // the sender whose turn comes first: it waits in the queue, and
            // this sender takes whatever waits there when its turn comes.
            ctx.queue.put_back(job);
            if !ctx.pacer.wait_turn(&ctx.stop) {
                return;
            }
            let Ok(job) = jobs.try_recv() else { continue };
            ctx.queue.taken(&job);
            (job, true)
        };
        let backlog = job.queued_at.is_some_and(|at| at.elapsed() >= BACKLOG);
        let job = coalesce(&ctx, &jobs, job, waited || backlog, &mut taken);
        let (outcome, hint) = attempt(ctx.provider.as_ref(), &ctx.from, job);
        ctx.pacer.observe(&hint);
        if ctx.outcomes.send(BusMsg::Outcome(outcome)).is_err() {
            return;
        }
    }
}

/// Emails created one per dispatch (a steady trickle) go out alone, or in
/// batches of a few when the dispatcher took a few events together. When
/// they arrive faster than the provider takes requests (Resend: 2 a
/// second), they wait in the queue, and one request each would never catch
/// up. So a sender about to send a fresh job takes the fresh jobs waiting
/// right behind it into one batch of up to `mail_batch` emails, written
/// down before the send (`merge_fresh`) so that any resend is the same
/// request under the same key. The first job it takes that cannot join is
/// kept in `taken`.
///
/// Merging batches costs the write a row per member, and saves a request
/// per batch: worth it only when requests are `short`, that is when the
/// sender waited for its turn at the provider's rate, or the job waited in
/// the queue for a sender (`BACKLOG`). Lone emails are merged either way.
fn coalesce(
    ctx: &SenderContext,
    jobs: &Receiver<MailJob>,
    first: MailJob,
    short: bool,
    taken: &mut VecDeque<MailJob>,
) -> MailJob {
    let joins = |job: &MailJob| ctx.may_batch(job) && (short || !job.batched);
    if !joins(&first) {
        return first;
    }
    let mut emails = first.emails.len();
    let mut members = vec![first];
    while emails < ctx.mail_batch {
        let Ok(job) = jobs.try_recv() else { break };
        ctx.queue.taken(&job);
        if !joins(&job) || emails + job.emails.len() > ctx.mail_batch {
            taken.push_back(job);
            break;
        }
        emails += job.emails.len();
        members.push(job);
    }
    if members.len() < 2 {
        return members.remove(0);
    }
    match ctx
        .store
        .write(|tx| merge_fresh(tx, &members, ctx.instance))
    {
        Ok(key) => {
            let mut emails: Vec<EmailJob> = members.into_iter().flat_map(|j| j.emails).collect();
            sort_members(&mut emails);
            MailJob::batch(key, emails, 0)
        }
        Err(e) => {
            // Nothing was written: each job goes as it was, in its own
            // turn, and is not offered to a batch again.
            log::warn!("cannot batch {emails} waiting emails: {e}");
            for job in &mut members {
                job.fresh = false;
            }
            let first = members.remove(0);
            taken.extend(members);
            first
        }
    }
}

/// A job that waited this long in the queue found every sender busy: the
/// provider's requests, not herald, are what is short. Far above the few
/// milliseconds a busy machine keeps a sender thread from running.
const BACKLOG: Duration = Duration::from_millis(100);

fn stopped(stop: &Receiver<()>) -> bool {
    matches!(stop.try_recv(), Err(TryRecvError::Disconnected) | Ok(()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::args;
    use crate::notify::delivery::deliveries::pending_jobs;
    use crate::notify::delivery::deliveries::testing::{
        ids, record_sent, states, store_with_pending, TEST_INSTANCE,
    };

    fn batch_rows(store: &Store) -> i64 {
        store
            .read(|c| c.query_one("SELECT COUNT(*) FROM mail_batches", args![], |r| r.get(0)))
            .unwrap()
    }

    /// never sends, so the provider and the channels are placeholders.
    fn sender_context(store: Store, queue: Arc<MailQueue>) -> SenderContext {
        SenderContext {
            provider: Arc::new(crate::mail::Console),
            from: "herald@x.io".into(),
            queue,
            outcomes: crossbeam_channel::unbounded().0,
            pacer: Arc::new(Pacer::new(None)),
            store: Arc::new(store),
            mail_batch: 100,
            instance: TEST_INSTANCE,
            stop: crossbeam_channel::never(),
        }
    }

    /// Queues `jobs` and takes the first, as a sender would.
    fn queued(jobs: &[MailJob]) -> (Arc<MailQueue>, Receiver<MailJob>, MailJob) {
        let queue = Arc::new(MailQueue::bounded(100));
        for job in jobs {
            assert!(queue.offer(job.clone()));
        }
        let rx = queue.receiver();
        let first = rx.try_recv().unwrap();
        queue.taken(&first);
        (queue, rx, first)
    }

    #[test]
    fn a_sender_batches_the_fresh_lone_emails_waiting_behind_it() {
        let dir = tempfile::tempdir().unwrap();
        let (store, mut jobs) = store_with_pending(dir.path(), 5, 1);
        // Read back from the database: a previous run may have sent it.
        jobs[3].fresh = false;
        let (queue, rx, first) = queued(&jobs);
        let ctx = sender_context(store, queue.clone());
        let may_batch: Vec<bool> = jobs.iter().map(|j| ctx.may_batch(j)).collect();
        assert_eq!(may_batch, [true, true, true, false, true]);
        let mut taken = VecDeque::new();
        let batch = coalesce(&ctx, &rx, first, false, &mut taken);

        let mut expected: Vec<String> = jobs[..3].iter().flat_map(ids).collect();
        expected.sort();
        assert!(batch.batched, "{batch:?}");
        assert_eq!(ids(&batch), expected, "the three in front, in id order");
        assert_eq!(
            taken.iter().flat_map(ids).collect::<Vec<_>>(),
            ids(&jobs[3])
        );
        assert_eq!(queue.len(), 1, "the job behind it waits for any sender");

        let (pending, _) = ctx
            .store
            .read(|c| pending_jobs(c, 10, TEST_INSTANCE))
            .unwrap();
        let read = pending
            .iter()
            .find(|j| j.batched)
            .expect("the batch is stored");
        assert_eq!(
            (&read.key, ids(read), read.fresh),
            (&batch.key, ids(&batch), false),
            "a restart sends the identical request under the same key"
        );
        assert_eq!(pending.len(), 3, "the batch and the two lone ones");
        let off = SenderContext {
            mail_batch: 1,
            ..ctx
        };
        assert!(
            !off.may_batch(&jobs[0]),
            "HERALD_MAIL_BATCH=1: never batched"
        );
    }

    #[test]
    fn a_sender_merges_fresh_batches_waiting_behind_it_up_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        // Batches of 2, 2, 2 and 1, as four dispatches of two events make.
        let (store, jobs) = store_with_pending(dir.path(), 7, 2);
        let sizes: Vec<usize> = jobs.iter().map(|j| j.emails.len()).collect();
        assert_eq!(sizes, [2, 2, 2, 1]);
        let (queue, rx, first) = queued(&jobs);
        let ctx = SenderContext {
            mail_batch: 5,
            ..sender_context(store, queue.clone())
        };
        let mut taken = VecDeque::new();
        let batch = coalesce(&ctx, &rx, first, true, &mut taken);

        let mut expected: Vec<String> = jobs[..2].iter().flat_map(ids).collect();
        expected.sort();
        assert_eq!(ids(&batch), expected, "2 + 2: the third would make 6");
        assert!(batch.batched && !batch.fresh);
        assert_eq!(
            taken.iter().map(|j| &j.key).collect::<Vec<_>>(),
            [&jobs[2].key]
        );
        assert_eq!(queue.len(), 1);

        let (pending, _) = ctx
            .store
            .read(|c| pending_jobs(c, 10, TEST_INSTANCE))
            .unwrap();
        let requests: BTreeSet<(&String, Vec<String>)> =
            pending.iter().map(|j| (&j.key, ids(j))).collect();
        let expected = BTreeSet::from([
            (&batch.key, ids(&batch)),
            (&jobs[2].key, ids(&jobs[2])),
            (&jobs[3].key, ids(&jobs[3])),
        ]);
        assert_eq!(
            requests, expected,
            "a restart sends the merged batch, identical, and the rest as they were"
        );
        let batches = batch_rows(&ctx.store);
        assert_eq!(batches, 3, "the two merged batches are gone");
    }

    #[test]
    fn with_a_free_turn_a_fresh_batch_goes_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let (store, jobs) = store_with_pending(dir.path(), 4, 2);
        let (queue, rx, first) = queued(&jobs);
        let ctx = sender_context(store, queue);
        let mut taken = VecDeque::new();
        let job = coalesce(&ctx, &rx, first, false, &mut taken);

        assert_eq!((&job.key, ids(&job)), (&jobs[0].key, ids(&jobs[0])));
        assert!(taken.is_empty(), "{taken:?}");
        let behind = rx.try_recv().expect("the batch behind still waits");
        assert_eq!(behind.key, jobs[1].key);
    }

    #[test]
    fn a_batch_that_cannot_merge_goes_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let (store, jobs) = store_with_pending(dir.path(), 4, 2);
        record_sent(&store, &ids(&jobs[1])[..1]);
        let (queue, rx, first) = queued(&jobs);
        let ctx = sender_context(store, queue);
        let mut taken = VecDeque::new();
        let job = coalesce(&ctx, &rx, first, true, &mut taken);

        let as_they_were: Vec<(&String, Vec<String>, bool)> = [&job]
            .into_iter()
            .chain(&taken)
            .map(|j| (&j.key, ids(j), j.fresh))
            .collect();
        assert_eq!(
            as_they_were,
            [
                (&jobs[0].key, ids(&jobs[0]), false),
                (&jobs[1].key, ids(&jobs[1]), false)
            ]
        );
        let all: Vec<String> = jobs.iter().flat_map(ids).collect();
        let kept: Vec<Option<String>> = states(&ctx.store, &all).into_iter().map(|s| s.3).collect();
        let before: Vec<Option<String>> = jobs
            .iter()
            .flat_map(|j| j.emails.iter().map(|_| Some(j.key.clone())))
            .collect();
        assert_eq!(kept, before, "nothing written");
    }

    #[test]
    fn a_member_no_longer_waiting_leaves_every_email_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (store, jobs) = store_with_pending(dir.path(), 3, 1);
        record_sent(&store, &ids(&jobs[2]));
        let (queue, rx, first) = queued(&jobs);
        let ctx = sender_context(store, queue);
        let mut taken = VecDeque::new();
        let job = coalesce(&ctx, &rx, first, false, &mut taken);

        assert!(!job.batched, "{job:?}");
        assert_eq!(job.emails.len() + taken.len(), 3, "every email still goes");
        assert!(taken.iter().all(|j| !j.batched && j.emails.len() == 1));
        let all: Vec<String> = jobs.iter().flat_map(ids).collect();
        let states = states(&ctx.store, &all);
        assert!(
            states.iter().all(|s| s.3.is_none()),
            "nothing written: {states:?}"
        );
        let batches = batch_rows(&ctx.store);
        assert_eq!(batches, 0);
    }
}
