//! Group commit: concurrent callers' small write transactions run one after
//! another inside one database transaction, each in a savepoint of its own,
//! and commit together. A caller is answered only after that COMMIT; work
//! that fails has only its own savepoint rolled back. The first caller to
//! find nobody leading leads: it runs every job queued so far, its own among
//! them, so a caller alone pays nothing for the grouping.

use std::sync::Mutex;

use crossbeam_channel::{Receiver, Sender};

use super::error::{StoreError, StoreResult};
use super::sql::Tx;

/// Most jobs in one group, so that no caller waits behind an unbounded
/// line of others' work; the rest lead the next group.
const MOST_JOBS: usize = 64;

/// The queue of jobs waiting for a group, and whether a caller leads one.
#[derive(Default)]
pub(super) struct Group {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    queue: Vec<Box<dyn Job>>,
    leading: bool,
}

/// One caller's work, seen by whoever leads its group.
trait Job: Send {
    /// Runs the work in `tx`; false when it failed, so that its savepoint
    /// is rolled back. May run again when PostgreSQL retries the group.
    fn run(&mut self, tx: &Tx<'_>) -> bool;
    /// Answers the caller once the group's COMMIT has returned.
    fn finish(self: Box<Self>, committed: &StoreResult<()>);
    /// Tells the caller to lead the next group.
    fn lead(&self);
}

enum Reply<T, E> {
    Done(Result<T, E>),
    Lead,
}

struct Work<T, E, F> {
    f: F,
    result: Option<Result<T, E>>,
    reply: Sender<Reply<T, E>>,
}

impl<T, E, F> Job for Work<T, E, F>
where
    T: Send,
    E: From<StoreError> + Send,
    F: FnMut(&Tx<'_>) -> Result<T, E> + Send,
{
    fn run(&mut self, tx: &Tx<'_>) -> bool {
        let result = (self.f)(tx);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn finish(self: Box<Self>, committed: &StoreResult<()>) {
        let result = match (self.result, committed) {
            // Its own failure, whatever became of the others' work.
            (Some(Err(e)), _) => Err(e),
            (Some(Ok(value)), Ok(())) => Ok(value),
            (_, Err(e)) => Err(E::from(e.clone())),
            (None, Ok(())) => Err(E::from(StoreError::Database(
                "the group committed without running this work".into(),
            ))),
        };
        // A caller gone (its thread died) has nobody to answer.
        let _ = self.reply.send(Reply::Done(result));
    }

    fn lead(&self) {
        let _ = self.reply.send(Reply::Lead);
    }
}

/// How a group's transaction is run: `Store::write`.
pub(super) type Commit<'a> =
    dyn Fn(&mut dyn FnMut(&Tx<'_>) -> StoreResult<()>) -> StoreResult<()> + 'a;

impl Group {
    /// See `Store::write_grouped`: queues `f`, leads a group if nobody
    /// does, and waits for `f`'s outcome.
    pub(super) fn write<T, E, F>(&self, f: F, commit: &Commit<'_>) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnMut(&Tx<'_>) -> Result<T, E> + Send + 'static,
    {
        let (reply, answer) = crossbeam_channel::bounded(2);
        let job = Box::new(Work {
            f,
            result: None,
            reply,
        });
        let lead_now = {
            let mut state = self.lock();
            state.queue.push(job);
            !std::mem::replace(&mut state.leading, true)
        };
        if lead_now {
            self.lead(commit);
        }
        self.wait(&answer, commit)
    }

    /// Runs the queued jobs as one transaction, answers them, and hands
    /// the lead to the first caller still waiting, if any.
    fn lead(&self, commit: &Commit<'_>) {
        let mut jobs = {
            let mut state = self.lock();
            let n = state.queue.len().min(MOST_JOBS);
            state.queue.drain(..n).collect::<Vec<_>>()
        };
        // Hands the lead over even if a job panics, so that nobody waits
        // for a leader that is gone.
        let _handover = Handover(self);
        let committed = commit(&mut |tx| run_all(tx, &mut jobs));
        if committed.is_ok() {
            crate::metrics::METRICS.write_group(jobs.len());
        }
        for job in jobs {
            job.finish(&committed);
        }
    }

    /// Waits for the answer, leading a group when told to.
    fn wait<T, E: From<StoreError>>(
        &self,
        answer: &Receiver<Reply<T, E>>,
        commit: &Commit<'_>,
    ) -> Result<T, E> {
        loop {
            match answer.recv() {
                Ok(Reply::Done(result)) => return result,
                Ok(Reply::Lead) => self.lead(commit),
                Err(_) => {
                    return Err(E::from(StoreError::Database(
                        "the group this work was in failed before COMMIT".into(),
                    )))
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a queue and a flag, sound whatever a panicking
        // holder was doing.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn run_all(tx: &Tx<'_>, jobs: &mut [Box<dyn Job>]) -> StoreResult<()> {
    if let [job] = jobs {
        // Alone: the transaction itself rolls back what fails.
        return match job.run(tx) {
            true => Ok(()),
            false => Err(StoreError::Database(
                "the only work of the group failed".into(),
            )),
        };
    }
    for job in jobs.iter_mut() {
        tx.savepoint()?;
        match job.run(tx) {
            true => tx.release_savepoint()?,
            false => tx.rollback_to_savepoint()?,
        }
    }
    Ok(())
}

struct Handover<'a>(&'a Group);

impl Drop for Handover<'_> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        match state.queue.first() {
            Some(next) => next.lead(),
            None => state.leading = false,
        }
    }
}

#[cfg(test)]
impl Group {
    fn queued(&self) -> usize {
        self.lock().queue.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::args;
    use crate::store::postgres::testing::TestDb;
    use crate::store::Store;
    use crate::store::Synchronous;

    fn insert_user(tx: &Tx<'_>, id: &str) -> StoreResult<()> {
        tx.execute(
            "INSERT INTO users (id, email, created_at, updated_at) VALUES (?1, 'a@b.c', 0, 0)",
            args![id],
        )?;
        Ok(())
    }

    fn user_ids(store: &Store) -> Vec<String> {
        let mut ids: Vec<String> = store
            .read(|c| c.query_all("SELECT id FROM users", args![], |r| r.get(0)))
            .unwrap();
        ids.sort();
        ids
    }

    /// A first caller leads alone and waits, inside its transaction, until
    /// eleven others have queued; they then commit as one group in which
    /// every odd caller inserts its row and fails. Only the odd callers'
    /// rows are gone, and each caller hears its own outcome.
    fn a_failing_caller_rolls_back_only_its_own_work(store: &Store) {
        let others = 11;
        let (started, running) = crossbeam_channel::bounded(1);
        let (go, proceed) = crossbeam_channel::bounded::<()>(1);
        let outcomes = std::thread::scope(|scope| {
            let first = scope.spawn(move || {
                store.write_grouped(move |tx| {
                    insert_user(tx, "u00")?;
                    let _ = started.try_send(());
                    let _ = proceed.recv_timeout(Duration::from_secs(10));
                    Ok::<_, StoreError>(0)
                })
            });
            running.recv_timeout(Duration::from_secs(10)).unwrap();
            let callers: Vec<_> = (1..=others)
                .map(|i| {
                    scope.spawn(move || {
                        let id = format!("u{i:02}");
                        store.write_grouped(move |tx| {
                            insert_user(tx, &id)?;
                            match i % 2 {
                                1 => Err(StoreError::NotFound),
                                _ => Ok(i),
                            }
                        })
                    })
                })
                .collect();
            let deadline = Instant::now() + Duration::from_secs(10);
            while store.group.queued() < others && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            assert_eq!(
                store.group.queued(),
                others,
                "the others wait for one group"
            );
            go.send(()).unwrap();
            let mut outcomes = vec![first.join().unwrap()];
            outcomes.extend(callers.into_iter().map(|c| c.join().unwrap()));
            outcomes
        });
        for (i, outcome) in outcomes.iter().enumerate() {
            match i % 2 {
                1 => assert!(
                    matches!(outcome, Err(StoreError::NotFound)),
                    "{i}: {outcome:?}"
                ),
                _ => assert_eq!(outcome.as_ref().ok(), Some(&i), "{i}"),
            }
        }
        let expected: Vec<String> = (0..=others)
            .filter(|i| i % 2 == 0)
            .map(|i| format!("u{i:02}"))
            .collect();
        assert_eq!(user_ids(store), expected);
    }

    #[test]
    fn sqlite_a_failing_caller_rolls_back_only_its_own_work() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db"), Synchronous::Normal).unwrap();
        a_failing_caller_rolls_back_only_its_own_work(&store);
    }

    #[test]
    fn postgres_a_failing_caller_rolls_back_only_its_own_work() {
        if let Some(db) = TestDb::create("group_isolation") {
            a_failing_caller_rolls_back_only_its_own_work(db.store());
        }
    }
}
