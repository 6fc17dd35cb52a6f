//! Domain-event listeners (SPEC 4.5). A domain event is an outbox row of kind
//! `domain`, written in the action's transaction; after commit the dispatcher
//! routes it here, writing one `listener_runs` row per subscribed listener.
//! Each listener has its own thread: a run executes in one write transaction
//! that also marks it done, so it takes effect at most once and a restart
//! resumes exactly the unfinished runs. Errors and panics are caught, logged
//! with the event id and retried with backoff; they never reach other
//! listeners, the dispatcher or the request thread.

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::args;
use crate::store::{Conn, Tx};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde_json::Value;

use super::error::NotifyError;
use super::outbox::{self, DispatchResult};
use super::publisher::{Outbox, Publisher};
use super::threads;
use crate::store::{Store, StoreError, StoreResult};

/// A committed domain event as a listener sees it.
#[derive(Debug, Clone)]
pub struct DomainEvent {
    /// The public outbox id (`evt_...`), the id logs name.
    pub id: String,
    pub seq: i64,
    /// e.g. `invitation.accepted`.
    pub kind: String,
    pub payload: Value,
}

impl DomainEvent {
    /// A string field of the payload, or an error naming it.
    pub fn str_field(&self, field: &str) -> Result<&str, ListenerError> {
        self.payload[field].as_str().ok_or_else(|| {
            ListenerError::new(format!("{} has no string field {field:?}", self.kind))
        })
    }
}

/// Why a listener run failed; it is logged and the run retried.
#[derive(Debug)]
pub struct ListenerError(String);

impl ListenerError {
    pub fn new(message: impl std::fmt::Display) -> ListenerError {
        ListenerError(message.to_string())
    }
}

impl std::fmt::Display for ListenerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ListenerError {}

impl From<StoreError> for ListenerError {
    fn from(e: StoreError) -> Self {
        ListenerError::new(e)
    }
}

impl From<NotifyError> for ListenerError {
    fn from(e: NotifyError) -> Self {
        ListenerError::new(e)
    }
}

/// An in-process consumer of domain events. `handle` runs inside a write
/// transaction whose outbox it may enqueue notifications on; returning an
/// error rolls its writes back and schedules a retry. Events may arrive
/// more than once (double emission is by design), so handlers are idempotent.
pub trait Listener: Send + Sync {
    /// Unique and stable: progress is stored under it.
    fn name(&self) -> &str;
    fn wants(&self, kind: &str) -> bool;
    fn handle(&self, outbox: &mut Outbox<'_, '_>, event: &DomainEvent)
        -> Result<(), ListenerError>;
}

/// Failure injection for the integration tests, inert unless set:
/// `HERALD_TEST_FAIL_LISTENER=<name>:<times>[:panic]` makes that listener
/// fail (or panic) on its first `times` runs; a name no listener has adds a
/// probe listener of that name for every domain event.
/// `HERALD_TEST_LISTENER_DELAY_MS=<ms>` delays every run, to crash before one.
#[derive(Debug, Clone, Default)]
pub struct ListenerHooks {
    pub fail: Option<FailHook>,
    pub delay: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct FailHook {
    pub listener: String,
    pub times: u32,
    pub panic: bool,
}

impl ListenerHooks {
    pub fn parse(fail: Option<&str>, delay_ms: Option<&str>) -> Result<ListenerHooks, String> {
        let fail = fail
            .map(|spec| {
                let bad = || {
                    format!("HERALD_TEST_FAIL_LISTENER={spec:?}: expected <name>:<times>[:panic]")
                };
                let mut parts = spec.split(':');
                let listener = parts.next().filter(|n| !n.is_empty()).ok_or_else(bad)?;
                let times = parts.next().and_then(|t| t.parse().ok()).ok_or_else(bad)?;
                let panic = match parts.next() {
                    None => false,
                    Some("panic") => true,
                    Some(_) => return Err(bad()),
                };
                Ok(FailHook {
                    listener: listener.to_string(),
                    times,
                    panic,
                })
            })
            .transpose()?;
        let delay = delay_ms
            .map(|ms| {
                ms.parse().map(Duration::from_millis).map_err(|_| {
                    format!("HERALD_TEST_LISTENER_DELAY_MS={ms:?} is not a number of milliseconds")
                })
            })
            .transpose()?;
        Ok(ListenerHooks { fail, delay })
    }

    pub fn any(&self) -> bool {
        self.fail.is_some() || self.delay.is_some()
    }
}

/// The listeners a `Notifier` delivers domain events to. Subscribe before
/// `Notifier::start`; listeners added later get no thread.
#[derive(Default)]
pub struct Listeners {
    registered: RwLock<Vec<Arc<dyn Listener>>>,
    hooks: Mutex<ListenerHooks>,
    /// Wakes each running listener thread when new runs are routed to it.
    wakes: Mutex<Vec<(String, Sender<Wake>)>>,
}

enum Wake {
    Work,
    Stop,
}

impl Listeners {
    pub(super) fn subscribe(&self, listener: Arc<dyn Listener>) {
        let mut registered = self.registered.write().unwrap_or_else(|p| p.into_inner());
        if registered.iter().any(|l| l.name() == listener.name()) {
            log::warn!(
                "listener {:?} is already subscribed; ignoring the second",
                listener.name()
            );
            return;
        }
        registered.push(listener);
    }

    pub(super) fn set_hooks(&self, hooks: ListenerHooks) {
        *self.hooks.lock().unwrap_or_else(|p| p.into_inner()) = hooks;
    }

    fn all(&self) -> Vec<Arc<dyn Listener>> {
        self.registered
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Called by the dispatcher with committed domain-event rows: in one
    /// transaction, claims each, writes a run per subscribed listener and
    /// marks the row dispatched (`sent` = listeners routed to); after COMMIT
    /// wakes those listeners. On failure the rows stay pending and the
    /// scheduler re-drives them.
    pub(super) fn route(&self, store: &Store, seqs: &[i64]) {
        let listeners = self.all();
        let routed = store.write(|tx| {
            let mut woken = BTreeSet::new();
            for &seq in seqs {
                if !outbox::claim(tx, seq)? {
                    continue;
                }
                let kind: String =
                    tx.query_one("SELECT type FROM outbox WHERE seq = ?1", args![seq], |r| {
                        r.get(0)
                    })?;
                let mut routed = 0;
                for listener in listeners.iter().filter(|l| l.wants(&kind)) {
                    insert_run(tx, seq, listener.name())?;
                    woken.insert(listener.name().to_string());
                    routed += 1;
                }
                let result = DispatchResult {
                    sent: routed,
                    ..DispatchResult::default()
                };
                outbox::mark_dispatched(tx, seq, result, false)?;
            }
            Ok::<_, StoreError>(woken)
        });
        match routed {
            Ok(woken) => {
                let wakes = self.wakes.lock().unwrap_or_else(|p| p.into_inner());
                for (name, wake) in wakes.iter() {
                    if woken.contains(name) {
                        let _ = wake.send(Wake::Work);
                    }
                }
            }
            Err(e) => log::error!(
                "cannot route {} domain events to listeners: {e}; they stay pending",
                seqs.len()
            ),
        }
    }

    /// Starts one thread per listener; each first finishes what a previous
    /// run left (its open `listener_runs` rows).
    pub(super) fn start(&self, publisher: &Publisher, backoff: Backoff) -> Threads {
        let hooks = self.hooks.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(fail) = &hooks.fail {
            if !self.all().iter().any(|l| l.name() == fail.listener) {
                self.subscribe(Arc::new(TestProbe {
                    name: fail.listener.clone(),
                }));
            }
        }
        let injected = Arc::new(Injection {
            fail: hooks.fail.clone(),
            remaining: AtomicU32::new(hooks.fail.as_ref().map_or(0, |f| f.times)),
        });
        let stopping = Arc::new(AtomicBool::new(false));
        let mut wakes = self.wakes.lock().unwrap_or_else(|p| p.into_inner());
        let mut handles = Vec::new();
        for listener in self.all() {
            let (tx, rx) = crossbeam_channel::unbounded();
            wakes.push((listener.name().to_string(), tx.clone()));
            let ctx = Runner {
                publisher: publisher.clone(),
                listener: listener.clone(),
                backoff,
                delay: hooks.delay,
                injected: injected.clone(),
                stopping: stopping.clone(),
            };
            handles.push((
                tx,
                threads::spawn(&format!("herald-listener-{}", listener.name()), move || {
                    ctx.run(&rx)
                }),
            ));
        }
        Threads { stopping, handles }
    }
}

/// How long a failed run waits: `base * 2^(attempts - 1)`, at most `cap`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    fn after(&self, attempts: u32) -> Duration {
        let factor = 1u32 << attempts.saturating_sub(1).min(20);
        self.base.saturating_mul(factor).min(self.cap)
    }
}

/// The running listener threads.
pub(super) struct Threads {
    stopping: Arc<AtomicBool>,
    handles: Vec<(Sender<Wake>, JoinHandle<()>)>,
}

impl Threads {
    /// Lets each listener finish the run in progress (until `deadline`);
    /// unfinished runs stay in the table for the next start.
    pub(super) fn stop(self, deadline: Instant) {
        self.stopping.store(true, Ordering::SeqCst);
        for (wake, _) in &self.handles {
            let _ = wake.send(Wake::Stop);
        }
        for (_, handle) in self.handles {
            threads::join_until(Some(handle), deadline);
        }
    }
}

struct Injection {
    fail: Option<FailHook>,
    remaining: AtomicU32,
}

impl Injection {
    fn check(&self, listener: &str) -> Result<(), ListenerError> {
        let Some(fail) = self.fail.as_ref().filter(|f| f.listener == listener) else {
            return Ok(());
        };
        let left = self
            .remaining
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        match left {
            Ok(n) if fail.panic => {
                panic!("HERALD_TEST_FAIL_LISTENER: forced panic in {listener} ({n} left)")
            }
            Ok(n) => Err(ListenerError::new(format!(
                "HERALD_TEST_FAIL_LISTENER: forced failure ({n} left)"
            ))),
            Err(_) => Ok(()),
        }
    }
}

/// The test hook's stand-in when it names no real listener: takes every
/// domain event and does nothing, so its failures can be watched beside
/// the real listeners.
struct TestProbe {
    name: String,
}

impl Listener for TestProbe {
    fn name(&self) -> &str {
        &self.name
    }
    fn wants(&self, _kind: &str) -> bool {
        true
    }
    fn handle(&self, _: &mut Outbox<'_, '_>, event: &DomainEvent) -> Result<(), ListenerError> {
        log::info!("test probe listener {} handled {}", self.name, event.id);
        Ok(())
    }
}

/// Runs per listener thread in a batch before looking at the clock again.
const BATCH: usize = 100;

struct Runner {
    publisher: Publisher,
    listener: Arc<dyn Listener>,
    backoff: Backoff,
    delay: Option<Duration>,
    injected: Arc<Injection>,
    stopping: Arc<AtomicBool>,
}

impl Runner {
    fn run(&self, wake: &Receiver<Wake>) {
        let store = self.publisher.store();
        let name = self.listener.name();
        loop {
            let due = store.read(|c| due_runs(c, name, c.now_ms(), BATCH));
            match due {
                Ok(due) => {
                    for seq in due {
                        if self.stopping.load(Ordering::SeqCst) {
                            return;
                        }
                        self.execute(seq);
                    }
                }
                Err(e) => log::error!("listener {name} cannot read its runs: {e}"),
            }
            // Idle means blocked on the channel: no polling.
            let next = match store.read(|c| next_due_at(c, name)) {
                Ok(next) => next,
                Err(e) => {
                    log::error!("listener {name} cannot read its runs: {e}");
                    Some(store.clock().now_ms() + 1_000)
                }
            };
            let woke = match next {
                Some(at) => {
                    let wait = Duration::from_millis((at - store.clock().now_ms()).max(0) as u64);
                    match wake.recv_timeout(wait) {
                        Err(RecvTimeoutError::Timeout) => Ok(Wake::Work),
                        other => other.map_err(|_| ()),
                    }
                }
                None => wake.recv().map_err(|_| ()),
            };
            if matches!(woke, Ok(Wake::Stop) | Err(())) {
                return;
            }
        }
    }

    fn execute(&self, seq: i64) {
        let name = self.listener.name();
        if let Some(delay) = self.delay {
            let until = Instant::now() + delay;
            while Instant::now() < until {
                if self.stopping.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let event = match self.publisher.store().read(|c| load_event(c, seq)) {
            Ok(event) => event,
            Err(e) => return self.failed(seq, &format!("#{seq}"), &e.to_string()),
        };
        let attempt = catch_unwind(AssertUnwindSafe(|| {
            self.publisher.transaction(|outbox| {
                if !is_open(outbox.tx(), seq, name)? {
                    return Ok(());
                }
                self.injected.check(name)?;
                self.listener.handle(outbox, &event)?;
                mark_done(outbox.tx(), seq, name)?;
                Ok::<_, ListenerError>(())
            })
        }));
        let error = match attempt {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(panic) => format!("panicked: {}", panic_message(&*panic)),
        };
        self.failed(seq, &event.id, &error);
    }

    fn failed(&self, seq: i64, event_id: &str, error: &str) {
        let name = self.listener.name();
        let scheduled = self.publisher.store().write(|tx| {
            let attempts: u32 = tx.query_one(
                "SELECT attempts FROM listener_runs WHERE event_seq = ?1 AND listener = ?2",
                args![seq, name],
                |r| r.get(0),
            )?;
            let attempts = attempts + 1;
            let wait = self.backoff.after(attempts);
            tx.execute(
                "UPDATE listener_runs SET status = 'retrying', attempts = ?3,
                        next_attempt_at = ?4, last_error = ?5
                 WHERE event_seq = ?1 AND listener = ?2",
                args![
                    seq,
                    name,
                    attempts,
                    tx.now_ms() + wait.as_millis() as i64,
                    error
                ],
            )?;
            Ok::<_, StoreError>((attempts, wait))
        });
        match scheduled {
            Ok((attempts, wait)) => log::error!(
                "listener {name} failed on event {event_id} (attempt {attempts}): {error}; \
                 retrying in {} ms",
                wait.as_millis()
            ),
            Err(e) => log::error!(
                "listener {name} failed on event {event_id}: {error}; \
                 and cannot record the failure ({e}); retrying at the next wake"
            ),
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

fn insert_run(tx: &Tx<'_>, seq: i64, listener: &str) -> StoreResult<()> {
    let now = tx.now_ms();
    tx.execute(
        "INSERT INTO listener_runs (event_seq, listener, next_attempt_at, created_at)
         VALUES (?1, ?2, ?3, ?3)
             ON CONFLICT DO NOTHING",
        args![seq, listener, now],
    )?;
    Ok(())
}

fn due_runs(conn: &Conn<'_>, listener: &str, now: i64, limit: usize) -> StoreResult<Vec<i64>> {
    let rows = conn.query_all(
        "SELECT event_seq FROM listener_runs
         WHERE listener = ?1 AND status != 'done' AND next_attempt_at <= ?2
         ORDER BY next_attempt_at, event_seq LIMIT ?3",
        args![listener, now, limit],
        |r| r.get(0),
    )?;
    Ok(rows)
}

fn next_due_at(conn: &Conn<'_>, listener: &str) -> StoreResult<Option<i64>> {
    conn.query_one(
        "SELECT MIN(next_attempt_at) FROM listener_runs
             WHERE listener = ?1 AND status != 'done'",
        args![listener],
        |r| r.get(0),
    )
}

/// Whether the run is still to do; on a shared database, a run another
/// instance is doing right now is left to it.
fn is_open(tx: &Tx<'_>, seq: i64, listener: &str) -> StoreResult<bool> {
    let status: Option<String> = tx.query_opt(
        &format!(
            "SELECT status FROM listener_runs WHERE event_seq = ?1 AND listener = ?2{}",
            tx.engine().skip_locked("listener_runs")
        ),
        args![seq, listener],
        |r| r.get(0),
    )?;
    Ok(status.is_some_and(|s| s != "done"))
}

fn mark_done(tx: &Tx<'_>, seq: i64, listener: &str) -> StoreResult<()> {
    tx.execute(
        "UPDATE listener_runs SET status = 'done', attempts = attempts + 1, done_at = ?3,
                last_error = NULL
         WHERE event_seq = ?1 AND listener = ?2",
        args![seq, listener, tx.now_ms()],
    )?;
    Ok(())
}

fn load_event(conn: &Conn<'_>, seq: i64) -> StoreResult<DomainEvent> {
    let (id, kind, body): (String, String, String) = conn.query_one(
        "SELECT id, type, body FROM outbox WHERE seq = ?1",
        args![seq],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    Ok(DomainEvent {
        id,
        seq,
        kind,
        payload: body["payload"].clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let b = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_millis(1000),
        };
        let waits: Vec<u128> = (1..=6).map(|n| b.after(n).as_millis()).collect();
        assert_eq!(waits, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.after(1000), Duration::from_millis(1000));
    }

    #[test]
    fn hooks_parse_and_reject_garbage() {
        let h = ListenerHooks::parse(Some("billing.referral:2"), Some("150")).unwrap();
        let fail = h.fail.unwrap();
        assert_eq!(
            (fail.listener.as_str(), fail.times, fail.panic),
            ("billing.referral", 2, false)
        );
        assert_eq!(h.delay, Some(Duration::from_millis(150)));
        assert!(
            ListenerHooks::parse(Some("x:1:panic"), None)
                .unwrap()
                .fail
                .unwrap()
                .panic
        );
        assert!(!ListenerHooks::parse(None, None).unwrap().any());
        for bad in ["x", "x:two", ":1", "x:1:boom"] {
            assert!(ListenerHooks::parse(Some(bad), None).is_err(), "{bad}");
        }
        assert!(ListenerHooks::parse(None, Some("soon")).is_err());
    }

    #[test]
    fn injection_fails_exactly_the_given_times_for_that_listener_only() {
        let inj = Injection {
            fail: Some(FailHook {
                listener: "a".into(),
                times: 2,
                panic: false,
            }),
            remaining: AtomicU32::new(2),
        };
        assert!(inj.check("b").is_ok());
        assert!(inj.check("a").is_err());
        assert!(inj.check("a").is_err());
        assert!(inj.check("a").is_ok());
    }
}
