//! The emails waiting for a sender thread, bounded in memory. At most
//! `capacity` jobs wait here; past that, a delivery simply stays `pending` in
//! the database and the scheduler pages it in once the senders have drained
//! the queue, so a burst or a start-up backlog costs disk, not memory. Every
//! delivery id in memory (queued, being sent, or sent with its outcome not
//! yet recorded) is held in a set, so no path queues a delivery twice.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::email::{self, EmailJob};
use crate::store::{Store, StoreResult};

pub(crate) struct MailQueue {
    tx: Sender<EmailJob>,
    rx: Receiver<EmailJob>,
    capacity: usize,
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
        let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
        MailQueue::new(tx, rx, capacity.max(1))
    }

    /// A queue that never spills: for one-shot commands, which send only
    /// what they dispatched themselves.
    pub fn unbounded() -> MailQueue {
        let (tx, rx) = crossbeam_channel::unbounded();
        let queue = MailQueue::new(tx, rx, usize::MAX);
        queue.caught_up.store(1, Ordering::Release);
        queue
    }

    fn new(tx: Sender<EmailJob>, rx: Receiver<EmailJob>, capacity: usize) -> MailQueue {
        MailQueue {
            tx,
            rx,
            capacity,
            held: Mutex::new(HashSet::new()),
            spills: AtomicU64::new(1),
            caught_up: AtomicU64::new(0),
        }
    }

    /// Where the sender threads take their jobs.
    pub fn receiver(&self) -> Receiver<EmailJob> {
        self.rx.clone()
    }

    /// Jobs waiting for a sender now.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// Queues `job`, or leaves it pending in the database for `page_in` and
    /// returns false: when the queue is full, and when the delivery is still
    /// held. A hold outlives its send until the outcome's release, so a
    /// retry claimed in between must wait for the page-in that follows the
    /// release rather than be dropped as a duplicate.
    pub fn offer(&self, job: EmailJob) -> bool {
        self.push(&mut self.held(), job)
    }

    /// Holds and queues `job` under the caller's lock of the held set; a job
    /// that is already held or finds no room counts as a spill.
    fn push(&self, held: &mut HashSet<String>, job: EmailJob) -> bool {
        let id = job.delivery_id.clone();
        let queued = held.insert(id.clone())
            && match self.tx.try_send(job) {
                Ok(()) => true,
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                    held.remove(&id);
                    false
                }
            };
        if !queued {
            self.spills.fetch_add(1, Ordering::AcqRel);
        }
        queued
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

    /// Whether pending deliveries may be waiting in the database only.
    pub fn behind(&self) -> bool {
        self.spills.load(Ordering::Acquire) != self.caught_up.load(Ordering::Acquire)
    }

    /// Fills the free room with the oldest pending deliveries not already in
    /// memory; returns how many it queued. A page-in that saw every pending
    /// delivery, with no spill since it began, catches the queue up.
    ///
    /// The set stays locked across the read: a delivery is released only
    /// after its outcome is committed, so a pending row this read sees is
    /// either still held (and skipped) or genuinely unsent.
    pub fn page_in(&self, store: &Store) -> StoreResult<usize> {
        let spills = self.spills.load(Ordering::Acquire);
        let room = self.capacity.saturating_sub(self.len());
        if room == 0 {
            return Ok(0);
        }
        let mut held = self.held();
        // Held deliveries are still pending until their outcome is recorded:
        // read past them.
        let limit = room.saturating_add(held.len());
        let pending = store.read(|c| email::pending_jobs(c, limit))?;
        let everything = pending.len() < limit;
        let mut queued = 0;
        for job in pending {
            if held.contains(&job.delivery_id) {
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
    use crate::notify::templates::EmailContent;
    use crate::store::Synchronous;

    /// A store with `n` pending email deliveries, oldest first.
    fn store_with_pending(dir: &std::path::Path, n: usize) -> (Store, Vec<EmailJob>) {
        let store = Store::open(&dir.join("q.db"), Synchronous::Normal).unwrap();
        let content = EmailContent {
            subject: "s".into(),
            html: "<p>h</p>".into(),
            text: "t".into(),
        };
        let jobs = store
            .write(|tx| {
                (0..n)
                    .map(|i| {
                        tx.execute(
                            "INSERT INTO outbox (seq, id, type, body, created_at)
                             VALUES (?1, ?2, 't', '{}', 0)",
                            rusqlite::params![i as i64 + 1, format!("evt_{i}")],
                        )?;
                        let job = email::insert_delivery(
                            tx,
                            i as i64 + 1,
                            &format!("email:{i}@x.io"),
                            &format!("{i}@x.io"),
                            &content,
                        )?;
                        Ok(job.unwrap())
                    })
                    .collect::<StoreResult<Vec<_>>>()
            })
            .unwrap();
        (store, jobs)
    }

    /// Records deliveries as sent, as the dispatcher does with outcomes.
    fn record_sent(store: &Store, ids: &BTreeSet<String>) {
        store
            .write(|tx| {
                for id in ids {
                    tx.execute("UPDATE deliveries SET status = 'sent' WHERE id = ?1", [id])?;
                }
                Ok::<_, crate::store::StoreError>(())
            })
            .unwrap();
    }

    /// The ids waiting in the queue, taken out as senders would.
    fn drain(queue: &MailQueue) -> BTreeSet<String> {
        queue.receiver().try_iter().map(|j| j.delivery_id).collect()
    }

    #[test]
    fn a_full_queue_leaves_jobs_in_the_database_and_pages_them_in_once() {
        let dir = tempfile::tempdir().unwrap();
        let (store, jobs) = store_with_pending(dir.path(), 10);
        let queue = MailQueue::bounded(4);
        // A fresh queue is behind: a previous run may have left work.
        assert!(queue.behind());
        assert_eq!(queue.page_in(&store).unwrap(), 4);
        assert!(queue.behind(), "six deliveries were not seen yet");
        // The dispatcher offers a delivery already paged in: not queued twice.
        let paged = jobs
            .iter()
            .find(|j| queue.held().contains(&j.delivery_id))
            .unwrap();
        assert!(!queue.offer(paged.clone()));
        assert_eq!(queue.len(), 4);

        let first = drain(&queue);
        assert_eq!(first.len(), 4);
        // Sent but not recorded: still held, so a page-in skips them.
        assert_eq!(queue.page_in(&store).unwrap(), 4);
        let second = drain(&queue);
        assert!(first.is_disjoint(&second));

        // Record the first four as sent, then release them.
        record_sent(&store, &first);
        assert!(queue.release(first.iter().map(String::as_str)));
        assert_eq!(queue.page_in(&store).unwrap(), 2);
        let third = drain(&queue);
        let all: BTreeSet<String> = jobs.iter().map(|j| j.delivery_id.clone()).collect();
        let seen: BTreeSet<String> = first.iter().chain(&second).chain(&third).cloned().collect();
        assert_eq!(seen, all, "each delivery paged in exactly once");
        assert_eq!(first.len() + second.len() + third.len(), all.len());
        assert!(!queue.behind(), "every pending delivery is in memory");
    }

    #[test]
    fn an_offer_past_capacity_spills_and_a_later_page_in_finds_it() {
        let dir = tempfile::tempdir().unwrap();
        let (store, jobs) = store_with_pending(dir.path(), 3);
        let queue = MailQueue::bounded(2);
        assert_eq!(queue.page_in(&store).unwrap(), 2);
        assert!(queue.behind());
        // The dispatcher's offer of the third finds no room: it waits in the
        // database.
        let third = jobs
            .iter()
            .find(|j| !queue.held().contains(&j.delivery_id))
            .unwrap();
        assert!(!queue.offer(third.clone()));
        assert_eq!(queue.len(), 2);
        let sent = drain(&queue);
        record_sent(&store, &sent);
        assert!(queue.release(sent.iter().map(String::as_str)));
        assert_eq!(queue.page_in(&store).unwrap(), 1);
        assert_eq!(drain(&queue), BTreeSet::from([third.delivery_id.clone()]));
        assert!(!queue.behind());
    }

    /// A failed send's outcome is committed (the delivery is `retrying`) but
    /// not yet released when the scheduler claims the retry: the offer finds
    /// the delivery still held. It must come back through a page-in once
    /// released, not be dropped as a duplicate.
    #[test]
    fn a_retry_claimed_before_its_release_is_paged_in_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = store_with_pending(dir.path(), 1);
        let queue = MailQueue::bounded(4);
        assert_eq!(queue.page_in(&store).unwrap(), 1);
        let sent = drain(&queue);
        let job = store.read(|c| email::pending_jobs(c, 1)).unwrap().remove(0);
        assert!(!queue.offer(job), "still held: left in the database");
        assert!(queue.release(sent.iter().map(String::as_str)));
        assert_eq!(queue.page_in(&store).unwrap(), 1);
        assert_eq!(drain(&queue), sent);
        assert!(!queue.behind());
    }

    #[test]
    fn an_unbounded_queue_never_spills() {
        let queue = MailQueue::unbounded();
        assert!(!queue.behind());
    }
}
