//! The emails waiting for a sender thread, bounded in memory. At most
//! `capacity` emails wait here, in requests (a lone email or a batch); past
//! that, a delivery simply stays `pending` in the database and the scheduler
//! pages it in once the senders have drained the queue, so a burst or a
//! start-up backlog costs disk, not memory. Every delivery id in memory
//! (queued, being sent, or sent with its outcome not yet recorded) is held
//! in a set, so no path queues a delivery twice.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use super::deliveries::{self, MailJob};
use crate::store::{Store, StoreResult};

pub(crate) struct MailQueue {
    tx: Sender<MailJob>,
    rx: Receiver<MailJob>,
    /// Emails, not requests: a batch counts for each of its members.
    capacity: usize,
    /// Emails in the requests waiting for a sender.
    queued: AtomicUsize,
    held: Mutex<HashSet<String>>,
    /// How many times a job was left in the database for lack of room.
    spills: AtomicU64,
    /// The spill count the last complete page-in had seen: while `spills`
    /// is ahead of it, pending deliveries may be waiting in the database only.
    caught_up: AtomicU64,
}

impl MailQueue {
    /// A queue of at most `capacity` jobs. It starts behind: deliveries a
    /// previous run left pending are paged in by the first `page_in`.
    pub fn bounded(capacity: usize) -> MailQueue {
        MailQueue::new(capacity.max(1))
    }

    /// A queue that never spills: for one-shot commands, which send only
    /// what they dispatched themselves.
    pub fn unbounded() -> MailQueue {
        let queue = MailQueue::new(usize::MAX);
        queue.caught_up.store(1, Ordering::Release);
        queue
    }

    fn new(capacity: usize) -> MailQueue {
        // The room is counted in emails by `queued`, under the held set's
        // lock; the channel itself need not bound anything.
        let (tx, rx) = crossbeam_channel::unbounded();
        MailQueue {
            tx,
            rx,
            capacity,
            queued: AtomicUsize::new(0),
            held: Mutex::new(HashSet::new()),
            spills: AtomicU64::new(1),
            caught_up: AtomicU64::new(0),
        }
    }

    /// Where the sender threads take their jobs; each job taken must be
    /// reported to `taken`.
    pub fn receiver(&self) -> Receiver<MailJob> {
        self.rx.clone()
    }

    /// A sender took `job`: its emails no longer take up room.
    pub fn taken(&self, job: &MailJob) {
        self.queued.fetch_sub(job.emails.len(), Ordering::AcqRel);
    }

    /// Emails waiting for a sender now.
    pub fn len(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Queues `job`, or leaves it pending in the database for `page_in` and
    /// returns false: when the queue is full, and when the delivery is still
    /// held. A hold outlives its send until the outcome's release, so a
    /// retry claimed in between must wait for the page-in that follows the
    /// release rather than be dropped as a duplicate.
    pub fn offer(&self, job: MailJob) -> bool {
        self.push(&mut self.held(), job)
    }

    /// Holds and queues `job` under the caller's lock of the held set; a job
    /// that is already held or finds no room counts as a spill. A job larger
    /// than the whole queue still goes when the queue is empty.
    fn push(&self, held: &mut HashSet<String>, job: MailJob) -> bool {
        let emails = job.emails.len();
        let waiting = self.len();
        let room = waiting == 0 || waiting.saturating_add(emails) <= self.capacity;
        let free = room && !job.delivery_ids().any(|id| held.contains(id));
        if !free {
            self.spills.fetch_add(1, Ordering::AcqRel);
            return false;
        }
        held.extend(job.delivery_ids().map(str::to_string));
        self.send(job);
        true
    }

    /// Queues again a job a sender took but will not send yet: it stays
    /// held, and any sender may take it.
    pub fn put_back(&self, job: MailJob) {
        self.send(job);
    }

    /// Counts `job`'s emails as waiting and hands it to the senders.
    fn send(&self, mut job: MailJob) {
        job.queued_at = Some(Instant::now());
        self.queued.fetch_add(job.emails.len(), Ordering::AcqRel);
        // Cannot fail: the queue keeps a receiver of its own, and the
        // channel is unbounded (the room is `queued`'s to count).
        let _ = self.tx.send(job);
    }

    /// Forgets deliveries whose outcome is now recorded. True when the
    /// scheduler should page in more: deliveries wait in the database and
    /// the queue is at most half full.
    pub fn release<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> bool {
        let mut held = self.held();
        for id in ids {
            held.remove(id);
        }
        drop(held);
        self.behind() && self.len() <= self.capacity / 2
    }

    /// Deliveries were taken over from another instance: they wait in the
    /// database for the next page-in.
    pub fn fall_behind(&self) {
        self.spills.fetch_add(1, Ordering::AcqRel);
    }

    /// Whether pending deliveries may be waiting in the database only.
    pub fn behind(&self) -> bool {
        self.spills.load(Ordering::Acquire) != self.caught_up.load(Ordering::Acquire)
    }

    /// Fills the free room with the oldest pending deliveries not already in
    /// memory; returns how many requests it queued. A page-in that saw every pending
    /// delivery, with no spill since it began, catches the queue up.
    ///
    /// The set stays locked across the read: a delivery is released only
    /// after its outcome is committed, so a pending row this read sees is
    /// either still held (and skipped) or genuinely unsent.
    /// Only deliveries instance `me` holds are paged in.
    pub fn page_in(&self, store: &Store, me: i64) -> StoreResult<usize> {
        let spills = self.spills.load(Ordering::Acquire);
        let room = self.capacity.saturating_sub(self.len());
        if room == 0 {
            return Ok(0);
        }
        let mut held = self.held();
        // Held deliveries are still pending until their outcome is recorded:
        // read past them.
        let limit = room.saturating_add(held.len());
        let (pending, read) = store.read(|c| deliveries::pending_jobs(c, limit, me))?;
        let everything = read < limit;
        let mut queued = 0;
        for job in pending {
            if job.delivery_ids().any(|id| held.contains(id)) {
                continue;
            }
            if !self.push(&mut held, job) {
                return Ok(queued);
            }
            queued += 1;
        }
        if everything {
            self.caught_up.store(spills, Ordering::Release);
        }
        Ok(queued)
    }

    fn held(&self) -> MutexGuard<'_, HashSet<String>> {
        // The set is consistent after every statement; a panic elsewhere
        // cannot leave it half-updated.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::args;
    use crate::notify::delivery::deliveries::testing::{
        record_sent, store_with_pending, TEST_INSTANCE,
    };

    /// The ids waiting in the queue, taken out as senders would.
    fn drain(queue: &MailQueue) -> BTreeSet<String> {
        let jobs: Vec<MailJob> = queue.receiver().try_iter().collect();
        jobs.iter().for_each(|job| queue.taken(job));
        jobs.iter()
            .flat_map(MailJob::delivery_ids)
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn a_full_queue_leaves_jobs_in_the_database_and_pages_them_in_once() {
        let dir = tempfile::tempdir().unwrap();
        let (store, jobs) = store_with_pending(dir.path(), 10, 1);
        let queue = MailQueue::bounded(4);
        // A fresh queue is behind: a previous run may have left work.
        assert!(queue.behind());
        assert_eq!(queue.page_in(&store, TEST_INSTANCE).unwrap(), 4);
        assert!(queue.behind(), "six deliveries were not seen yet");

        let first = drain(&queue);
        assert_eq!(first.len(), 4);
        // The dispatcher offers a delivery already paged in: though the
        // queue has room again, it is not queued twice.
        let paged = jobs.iter().find(|j| first.contains(&j.key)).unwrap();
        assert!(!queue.offer(paged.clone()));
        assert_eq!(queue.len(), 0);
        // Sent but not recorded: still held, so a page-in skips them.
        assert_eq!(queue.page_in(&store, TEST_INSTANCE).unwrap(), 4);
        let second = drain(&queue);
        assert!(first.is_disjoint(&second));

        // Record the first four as sent, then release them.
        record_sent(&store, &first);
        assert!(queue.release(first.iter().map(String::as_str)));
        assert_eq!(queue.page_in(&store, TEST_INSTANCE).unwrap(), 2);
        let third = drain(&queue);
        let all: BTreeSet<String> = jobs.iter().map(|j| j.key.clone()).collect();
        let seen: BTreeSet<String> = first.iter().chain(&second).chain(&third).cloned().collect();
        assert_eq!(seen, all, "each delivery paged in exactly once");
        assert_eq!(first.len() + second.len() + third.len(), all.len());
        assert!(!queue.behind(), "every pending delivery is in memory");
    }

    #[test]
    fn an_offer_past_capacity_spills_and_a_later_page_in_finds_it() {
        let dir = tempfile::tempdir().unwrap();
        let (store, jobs) = store_with_pending(dir.path(), 3, 1);
        let queue = MailQueue::bounded(2);
        assert_eq!(queue.page_in(&store, TEST_INSTANCE).unwrap(), 2);
        assert!(queue.behind());
        // The dispatcher's offer of the third finds no room: it waits in the
        // database.
        let third = jobs
            .iter()
            .find(|j| !queue.held().contains(&j.key))
            .unwrap();
        assert!(!queue.offer(third.clone()));
        assert_eq!(queue.len(), 2);
        let sent = drain(&queue);
        record_sent(&store, &sent);
        assert!(queue.release(sent.iter().map(String::as_str)));
        assert_eq!(queue.page_in(&store, TEST_INSTANCE).unwrap(), 1);
        assert_eq!(drain(&queue), BTreeSet::from([third.key.clone()]));
        assert!(!queue.behind());
    }

    #[test]
    fn a_job_put_back_waits_again_and_stays_held() {
        let dir = tempfile::tempdir().unwrap();
        let (_store, jobs) = store_with_pending(dir.path(), 1, 1);
        let queue = MailQueue::bounded(4);
        assert!(queue.offer(jobs[0].clone()));
        let rx = queue.receiver();
        let job = rx.try_recv().unwrap();
        queue.taken(&job);
        assert_eq!(queue.len(), 0);
        queue.put_back(job);
        assert_eq!(queue.len(), 1, "it takes up room again");
        assert!(
            !queue.offer(jobs[0].clone()),
            "still held: not queued twice"
        );
        assert_eq!(rx.try_recv().unwrap().key, jobs[0].key);
        assert!(rx.try_recv().is_err());
    }

    /// A failed send's outcome is committed (the delivery is `retrying`) but
    /// not yet released when the scheduler claims the retry: the offer finds
    /// the delivery still held. It must come back through a page-in once
    /// released, not be dropped as a duplicate.
    #[test]
    fn a_retry_claimed_before_its_release_is_paged_in_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = store_with_pending(dir.path(), 1, 1);
        let queue = MailQueue::bounded(4);
        assert_eq!(queue.page_in(&store, TEST_INSTANCE).unwrap(), 1);
        let sent = drain(&queue);
        let job = store
            .read(|c| deliveries::pending_jobs(c, 1, TEST_INSTANCE))
            .unwrap()
            .0
            .remove(0);
        assert!(!queue.offer(job), "still held: left in the database");
        assert!(queue.release(sent.iter().map(String::as_str)));
        assert_eq!(queue.page_in(&store, TEST_INSTANCE).unwrap(), 1);
        assert_eq!(drain(&queue), sent);
        assert!(!queue.behind());
    }

    /// A batch is one request: it pages in whole, members never split
    /// across requests, and it takes room for each of its emails.
    #[test]
    fn batches_page_in_whole_and_count_each_email() {
        let dir = tempfile::tempdir().unwrap();
        // 7 deliveries in batches of 3: two batches of 3 and one of 1.
        let (store, jobs) = store_with_pending(dir.path(), 7, 3);
        let sizes: Vec<usize> = jobs.iter().map(|j| j.emails.len()).collect();
        assert_eq!(sizes, [3, 3, 1]);
        assert!(jobs.iter().all(|j| j.batched && j.key.starts_with("bat_")));
        // Created within one millisecond, the batches would page in in the
        // random order of their ids: make them a millisecond apart.
        store
            .write(|tx| {
                for (at, job) in jobs.iter().enumerate() {
                    tx.execute(
                        "UPDATE deliveries SET created_at = ?1 WHERE batch_id = ?2",
                        args![at as i64, job.key],
                    )?;
                }
                Ok::<_, crate::store::StoreError>(())
            })
            .unwrap();

        let queue = MailQueue::bounded(4);
        assert_eq!(
            queue.page_in(&store, TEST_INSTANCE).unwrap(),
            1,
            "a second batch of 3 does not fit"
        );
        assert_eq!(queue.len(), 3);
        let taken: Vec<MailJob> = queue.receiver().try_iter().collect();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].key, jobs[0].key);
        let members: Vec<&str> = taken[0].delivery_ids().collect();
        assert_eq!(
            members,
            jobs[0].delivery_ids().collect::<Vec<_>>(),
            "in id order"
        );
        queue.taken(&taken[0]);
        assert_eq!(queue.len(), 0);

        // The first batch is held (sent, not recorded): the next page-in
        // brings the other two requests and none of its members again.
        assert_eq!(queue.page_in(&store, TEST_INSTANCE).unwrap(), 2);
        let rest = drain(&queue);
        assert_eq!(rest.len(), 4);
        assert!(rest.iter().all(|id| !members.contains(&id.as_str())));
        // A batch offered again while held is not queued twice.
        assert!(!queue.offer(jobs[1].clone()));
    }

    /// One-shot commands (`dispatch_now`) send exactly the jobs the queue
    /// took, and no scheduler runs to page in what it left in the database:
    /// however many emails are offered, more than the server's queue holds,
    /// each is queued once and the queue never counts itself behind.
    #[test]
    fn an_unbounded_queue_takes_every_job_offered() {
        let dir = tempfile::tempdir().unwrap();
        let n = crate::notify::DeliveryPolicy::default().queue_capacity + 100;
        let (_store, jobs) = store_with_pending(dir.path(), n, 1);
        let queue = MailQueue::unbounded();
        assert!(!queue.behind(), "nothing of an earlier run to page in");
        let refused = jobs
            .iter()
            .filter(|job| !queue.offer((*job).clone()))
            .count();
        assert_eq!(refused, 0, "of {n} jobs");
        assert_eq!(queue.len(), n);
        assert!(!queue.behind());
        let all: BTreeSet<String> = jobs.iter().map(|j| j.key.clone()).collect();
        assert_eq!(drain(&queue), all);
    }
}
