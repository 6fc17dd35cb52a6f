//! The dispatcher: turns committed outbox rows into inbox rows and email
//! deliveries, and records the senders' outcomes. One thread drains the bus
//! in batches and renders each event once, outside any transaction (it
//! hands domain events to the listeners, whose routing writes their runs);
//! a second writes each batch in one transaction that claims the outbox
//! rows. Only after COMMIT are the emails handed to the senders, which
//! write nothing but the batches they merge before a send.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::store::{Conn, Tx};
use crossbeam_channel::Sender;

use super::bus::{BusMsg, Wake};
use super::delivery::deliveries::{self, Batcher, EmailJob, MailJob};
use super::delivery::held;
use super::delivery::mail_queue::MailQueue;
use super::delivery::retry::{self, Outcome};
use super::event::{Event, Recipient};
use super::inbox::InboxCommitted;
use super::outbox::{self, ChannelCounts, Claim, DispatchResult};
use super::policy::{self, DedupKey};
use super::preferences::Switches;
use super::quiet_hours::QuietHours;
use super::registry::{Channel, TypeDef};
use super::shared::Shared;
use super::templates::Rendered;
use super::throttle::{self, Budget};
use super::{digest, inbox, peers};
use crate::metrics::{Fate, METRICS};
use crate::store::{users, StoreResult};

/// Events and recorded emails per dispatch transaction: large enough to
/// amortise the commit, small enough to keep the write lock short.
const MAX_ROWS_PER_WRITE: usize = 512;
/// How long the dispatcher gathers messages before writing a batch.
const GATHER: Duration = Duration::from_millis(1);

/// Runs the dispatcher as a two-stage pipeline on two threads: this one
/// gathers bus messages and renders each batch (no transaction of its own), the
/// writer thread writes the previous batch meanwhile. On two cores the
/// write transaction no longer waits for rendering. Batches stay in bus
/// order, so a flush is acknowledged only once everything before it is
/// written.
pub(super) fn run(shared: &Arc<Shared>, queue: &MailQueue, wake: Sender<Wake>) {
    // One batch rendered ahead of the one being written, no more: rendering
    // must not run away from the writer.
    let (to_writer, batches) = crossbeam_channel::bounded::<Batch<'_>>(1);
    std::thread::scope(|scope| {
        let writer = std::thread::Builder::new()
            .name("herald-dispatch-write".into())
            .spawn_scoped(scope, || {
                for batch in batches {
                    write_batch(shared, batch, queue, &wake);
                }
            });
        if let Err(e) = writer {
            log::error!("cannot start the dispatch writer ({e}); dispatching on one thread");
            gather(shared, |batch| write_batch(shared, batch, queue, &wake));
            return;
        }
        gather(shared, |batch| {
            let _ = to_writer.send(batch);
        });
        drop(to_writer);
    });
}

/// One gathered batch, rendered and ready for its write transaction.
struct Batch<'s> {
    prepared: Vec<Prepared<'s>>,
    outcomes: Vec<Outcome>,
    /// Flushes to acknowledge once this batch is written.
    acks: Vec<Sender<()>>,
}

/// Drains the bus into batches, prepares each and hands it to `write`,
/// until the bus closes or says stop.
fn gather<'s>(shared: &'s Shared, mut write: impl FnMut(Batch<'s>)) {
    let rx = shared.bus_rx.clone();
    while let Ok(first) = rx.recv() {
        let mut seqs = Vec::new();
        let mut outcomes: Vec<Outcome> = Vec::new();
        // Rows the batch will write: an outcome of a batch request records
        // each of its emails, and the write lock is held for all of them.
        let mut rows = 0;
        let mut acks = Vec::new();
        let mut stop = false;
        // Gather what arrives within a short window: under load, taking the
        // write lock for every single event ping-pongs it with the callers
        // committing those events, one commit each; a millisecond of patience
        // turns that into one commit per batch. Idle, it costs one event a
        // millisecond of latency.
        let gather_until = Instant::now() + GATHER;
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                BusMsg::Dispatch(seq, event) => {
                    rows += 1;
                    seqs.push((seq, event));
                }
                BusMsg::Outcome(o) => {
                    rows += o.delivery_ids.len();
                    outcomes.push(o);
                }
                BusMsg::Flush(ack) => acks.push(ack),
                BusMsg::Stop => {
                    stop = true;
                    break;
                }
            }
            let room = rows < MAX_ROWS_PER_WRITE;
            next = match (room, acks.is_empty()) {
                (false, _) => None,
                // Someone waits for a flush: no lingering.
                (true, false) => rx.try_recv().ok(),
                (true, true) => rx
                    .recv_timeout(gather_until.saturating_duration_since(Instant::now()))
                    .ok(),
            };
        }
        // A bug in rendering must cost one batch (left pending, re-driven
        // by the scheduler), never the dispatcher thread.
        let prepared = catch_unwind(AssertUnwindSafe(|| prepare_batch(shared, &seqs)))
            .unwrap_or_else(|_| {
                log::error!(
                    "rendering a batch panicked; its events stay pending and are re-driven"
                );
                Vec::new()
            });
        write(Batch {
            prepared,
            outcomes,
            acks,
        });
        if stop {
            return;
        }
    }
}

/// Writes one batch, then acknowledges its flushes.
fn write_batch(shared: &Shared, batch: Batch<'_>, queue: &MailQueue, wake: &Sender<Wake>) {
    // A bug here must cost one batch, never the writer thread.
    let handled = catch_unwind(AssertUnwindSafe(|| {
        handle_batch(shared, &batch.prepared, &batch.outcomes, queue, wake);
    }));
    if handled.is_err() {
        log::error!("dispatcher batch panicked; its events stay pending and are re-driven");
    }
    for ack in batch.acks {
        let _ = ack.send(());
    }
}

/// A committed outbox row as it came off the bus: its seq, and the event
/// itself when the publisher still held it.
pub(super) type Published = (i64, Option<Arc<Event>>);

/// An event ready to be written: parsed and rendered, or the reason it
/// never can be.
struct Prepared<'r> {
    seq: i64,
    ready: Result<Ready<'r>, String>,
}

/// Everything rendering produces for one event, done outside the write
/// transaction.
struct Ready<'r> {
    event: Arc<Event>,
    def: &'r TypeDef,
    rendered: Rendered,
    /// The payload as stored on inbox rows.
    payload: String,
    /// Per recipient, in order: its address and preference switches, read
    /// before the write transaction; None for a user that no longer exists.
    reach: Vec<Option<Reach>>,
}

/// Where a recipient is reached and what it allows, as read while the
/// batch was prepared. A preference changed in between applies from the
/// next batch, as if it had been changed a moment later.
struct Reach {
    address: String,
    switches: Switches,
    /// The user's quiet hours, when they could hold this event's email.
    quiet: Option<QuietHours>,
}

/// What a dispatch transaction hands on after COMMIT.
#[derive(Default)]
struct Written {
    /// Email deliveries created, each with the batch it joined.
    emails: Vec<(Option<String>, EmailJob)>,
    /// Inbox rows written, announced to the live stream after COMMIT.
    inbox: Vec<InboxCommitted>,
    /// A digest was opened, or an event came before its `sendAt`: the
    /// scheduler must look at its due time.
    wake_scheduler: bool,
    /// When the earliest email held by this transaction is due.
    held_due: Option<i64>,
    /// (type, channel, fate) per recipient, counted in the metrics only
    /// once the transaction has committed.
    fates: Vec<(String, Channel, Fate)>,
}

/// Dispatches `prepared` and records `outcomes` in one write transaction:
/// the commit, not the rows, is what costs, so a batch shares one.
fn handle_batch(
    shared: &Shared,
    prepared: &[Prepared<'_>],
    outcomes: &[Outcome],
    queue: &MailQueue,
    wake: &Sender<Wake>,
) {
    if prepared.is_empty() && outcomes.is_empty() {
        return;
    }
    let me = match shared.instance() {
        Ok(me) => me,
        Err(e) => {
            log::error!(
                "dispatcher cannot register this instance: {e}; the scheduler will re-drive"
            );
            return;
        }
    };
    let batch = shared.store().write(|tx| {
        let written = write_all(tx, prepared, shared.policy.mail_batch, me)?;
        let retry_scheduled = retry::record(tx, outcomes, &shared.policy)?.is_some();
        Ok::<_, crate::store::StoreError>((written, retry_scheduled))
    });
    match batch {
        Ok((written, retry_scheduled)) => {
            retry::count(outcomes, shared.policy.max_attempts);
            after_commit(shared, written, queue, wake);
            let page_in = release(queue, outcomes);
            if retry_scheduled || page_in {
                let _ = wake.send(Wake::Retry);
            }
        }
        Err(e) => {
            // One bad event must not hold the batch hostage: retry one by one.
            log::warn!("dispatch batch failed ({e}); retrying its parts one at a time");
            for p in prepared {
                match shared.store().write(|tx| {
                    write_all(tx, std::slice::from_ref(p), shared.policy.mail_batch, me)
                }) {
                    Ok(written) => after_commit(shared, written, queue, wake),
                    Err(e) => log::error!("event #{} not dispatched: {e}", p.seq),
                }
            }
            if !outcomes.is_empty() {
                record_outcomes(shared, outcomes, wake);
                if release(queue, outcomes) {
                    let _ = wake.send(Wake::Retry);
                }
            }
        }
    }
}

/// Dispatches `seqs` on the calling thread and returns the emails to send:
/// for one-shot commands that run no dispatcher thread.
pub(super) fn dispatch_now(shared: &Shared, seqs: &[Published]) -> Vec<MailJob> {
    let queue = MailQueue::unbounded();
    let (wake, _) = crossbeam_channel::unbounded();
    handle_batch(shared, &prepare_batch(shared, seqs), &[], &queue, &wake);
    queue.receiver().try_iter().collect()
}

/// Records send outcomes on the calling thread (see `dispatch_now`).
pub(super) fn record_now(shared: &Shared, outcomes: &[Outcome]) {
    let (wake, _) = crossbeam_channel::unbounded();
    handle_batch(shared, &[], outcomes, &MailQueue::unbounded(), &wake);
}

/// Reads the still-pending rows among `seqs` and renders them, outside any
/// transaction.
fn prepare_batch<'s>(shared: &'s Shared, seqs: &[Published]) -> Vec<Prepared<'s>> {
    let unknown: Vec<i64> = seqs
        .iter()
        .filter(|(_, event)| event.is_none())
        .map(|(seq, _)| *seq)
        .collect();
    let mut loaded = std::collections::HashMap::new();
    if !unknown.is_empty() {
        match shared
            .store()
            .read(|c| outbox::load_pending_split(c, &unknown))
        {
            // Domain events have no registry type: they go to the listeners.
            Ok((rows, domain)) => {
                if !domain.is_empty() {
                    shared.listeners.route(shared.store(), &domain);
                }
                loaded.extend(rows.into_iter().map(|row| (row.seq, row.event)));
            }
            Err(e) => {
                log::error!("dispatcher cannot read the outbox: {e}; the scheduler will re-drive");
            }
        }
    }
    // In publication order, so inbox rows keep the order of their events.
    let prepared = shared.store().read(|c| {
        let mut prepared = Vec::with_capacity(seqs.len());
        for (seq, event) in seqs {
            let event = match event {
                Some(event) => Ok(event.clone()),
                // No longer pending, or a domain event routed above.
                None => match loaded.remove(seq) {
                    Some(event) => event.map(Arc::new),
                    None => continue,
                },
            };
            let ready = match event {
                Ok(event) => prepare(shared, c, event)?,
                Err(reason) => Err(reason),
            };
            prepared.push(Prepared { seq: *seq, ready });
        }
        Ok::<_, crate::store::StoreError>(prepared)
    });
    prepared.unwrap_or_else(|e| {
        // Not the events' fault: they stay pending for the re-drive.
        log::error!("dispatcher cannot read recipients: {e}; the scheduler will re-drive");
        Vec::new()
    })
}

/// Hands a committed batch's emails to the senders (those the queue has no
/// room for wait in the database) and its inbox rows to the live stream.
fn after_commit(shared: &Shared, written: Written, queue: &MailQueue, wake: &Sender<Wake>) {
    shared.announce_inbox(&written.inbox);
    for (kind, channel, fate) in &written.fates {
        METRICS.notification(kind, channel.as_str(), *fate);
    }
    let held_sooner = written
        .held_due
        .is_some_and(|due| shared.next_wake.misses(due));
    if written.wake_scheduler || held_sooner {
        let _ = wake.send(Wake::Retry);
    }
    for job in MailJob::group(written.emails) {
        queue.offer(job);
    }
}

/// Frees the queue's hold on deliveries whose outcome is recorded; true
/// when the scheduler should page in deliveries waiting in the database.
fn release(queue: &MailQueue, outcomes: &[Outcome]) -> bool {
    !outcomes.is_empty()
        && queue.release(
            outcomes
                .iter()
                .flat_map(|o| o.delivery_ids.iter().map(String::as_str)),
        )
}

/// Renders one event and looks up its recipients. The outer error is the
/// database's (the batch is retried later); the inner one is the event's
/// own, and fails it for good.
fn prepare<'s>(
    shared: &'s Shared,
    conn: &Conn<'_>,
    event: Arc<Event>,
) -> StoreResult<Result<Ready<'s>, String>> {
    let Some(def) = shared.registry().get(&event.kind) else {
        return Ok(Err(format!(
            "type {:?} is no longer in the registry",
            event.kind
        )));
    };
    let rendered = match shared.templates.render(&event.kind, def, &event.payload) {
        Ok(rendered) => rendered,
        Err(e) => return Ok(Err(e.to_string())),
    };
    // Quiet hours only ever hold a non-critical email.
    let may_be_quiet = !def.critical && def.has(Channel::Email);
    let reach = event
        .recipients
        .iter()
        .map(|recipient| {
            let (address, quiet) = match recipient {
                Recipient::User(id) => match users::reach_of(conn, id)? {
                    Some((email, settings)) => {
                        (email, QuietHours::of(&settings).filter(|_| may_be_quiet))
                    }
                    None => return Ok(None),
                },
                Recipient::Address { email } => (email.clone(), None),
            };
            let switches = policy::switches_for(conn, &event, def, recipient)?;
            Ok(Some(Reach {
                address,
                switches,
                quiet,
            }))
        })
        .collect::<StoreResult<_>>()?;
    Ok(Ok(Ready {
        payload: event.payload.to_string(),
        event,
        def,
        rendered,
        reach,
    }))
}

/// Writes `prepared` in the caller's transaction. Email deliveries created
/// together go out together: up to `mail_batch` of them share one request.
/// The deliveries it creates are held by instance `me`; the inbox rows are
/// announced to the other instances on commit.
fn write_all(
    tx: &Tx<'_>,
    prepared: &[Prepared<'_>],
    mail_batch: usize,
    me: i64,
) -> StoreResult<Written> {
    let mut written = Written::default();
    if prepared.is_empty() {
        return Ok(written);
    }
    peers::order_inbox(tx)?;
    let mut batcher = Batcher::new(mail_batch, expected_emails(prepared), me);
    for p in prepared {
        match outbox::claim_due(tx, p.seq)? {
            Claim::Taken => {}
            Claim::Gone => continue,
            // Published early (`Notifier::publish` of a scheduled event):
            // the scheduler's timer is its way out, told here of its time.
            Claim::NotDue => {
                written.wake_scheduler = true;
                continue;
            }
        }
        match &p.ready {
            Ok(ready) => {
                let result = fan_out(tx, p.seq, ready, &mut batcher, &mut written)?;
                outbox::mark_dispatched(tx, p.seq, result)?;
            }
            Err(reason) => {
                log::error!("event #{} cannot be dispatched: {reason}", p.seq);
                outbox::mark_failed(tx, p.seq, reason)?;
            }
        }
    }
    batcher.write(tx)?;
    peers::announce_inbox(tx, me, &written.inbox)?;
    Ok(written)
}

/// One event to each recipient, applying SPEC 2.3 in order: the dedup
/// window, preferences, the throttle (SPEC 9), the digest (the event is
/// held, nothing is sent now), else an inbox row per user and an email
/// delivery per user and per address-only recipient. A released digest
/// skips dedup, throttle and digest: it was checked on the way in.
///
/// The result counts each recipient once at the top, and each of its
/// channels in `channels`:
/// - sent: a recipient counts `sent` if at least one channel was written
///   (email switched off, inbox on: `sent`), and each written channel
///   counts `sent` in its own breakdown;
/// - deduped: a recipient caught by the window counts `deduped`, and so
///   does every channel it would have got;
/// - suppressedByPrefs: a recipient counts it only when every channel it
///   would have got is switched off; each switched-off channel counts it;
/// - throttled: a recipient over its type's throttle counts `throttled`,
///   and so does every channel its preferences left it.
///
/// An address-only recipient has no inbox and no preferences: it counts on
/// the email channel alone. An email held for an escalation or quiet hours
/// counts `sent` now, as it is created: a later skip (the row was seen in
/// time) shows on the delivery and in the metrics, never in this result,
/// so a recipient is never counted twice. Some recipients count nowhere at
/// the top:
/// - a user that no longer exists: nothing was attempted (it is logged);
///   counting it `suppressedByPrefs` would blame a preference nobody set;
/// - a recipient whose event joins a digest: nothing goes out yet. The
///   event's `digests` says where it waits, and the released digest is an
///   event of its own whose result counts the recipient `sent` then. The
///   channels switched off at join count `suppressedByPrefs` here, as the
///   metrics count them: the digest never reaches those channels.
///
/// The per-channel counts and the Prometheus counters come from the same
/// place (`tally`), so they always agree.
fn fan_out(
    tx: &Tx<'_>,
    seq: i64,
    ready: &Ready<'_>,
    batcher: &mut Batcher,
    written: &mut Written,
) -> StoreResult<DispatchResult> {
    let Ready {
        event,
        def,
        rendered,
        payload,
        reach,
    } = ready;
    let mut result = DispatchResult::default();
    let mut by_channel = ChannelCounts::default();
    let mut tally = |channel: Channel, fate: Fate| {
        let counts = by_channel.of(channel);
        match fate {
            Fate::Sent => counts.sent += 1,
            Fate::Deduped => counts.deduped += 1,
            Fate::Suppressed => counts.suppressed_by_prefs += 1,
            Fate::Throttled => counts.throttled += 1,
        }
        written.fates.push((event.kind.clone(), channel, fate));
    };
    let now = tx.now_ms();
    let release = event.from_digest.as_ref();
    for (recipient, reach) in event.recipients.iter().zip(reach) {
        let key = recipient.key();
        let Some(Reach {
            address,
            switches,
            quiet,
        }) = reach
        else {
            log::warn!("event #{seq}: user {key:?} no longer exists; skipped");
            continue;
        };
        let dedup = DedupKey::of(event, &key, rendered.dedup_key.as_deref());
        let only = release.map(|r| r.channels.as_slice());
        let (channels, suppressed) = policy::channels_for(switches, def, recipient, only);
        let throttle = def.throttle.as_ref().filter(|_| release.is_none());
        // Dedup comes first in SPEC 2.3, but the preferences are already
        // known: when something goes out, one upsert both checks the window
        // and marks it; when nothing does, only the check runs. A throttled
        // type is only checked here, and marked once the throttle lets it
        // through: a throttled notification must leave no mark.
        let duplicate = match (release, channels.is_empty(), throttle) {
            (Some(_), _, _) => false,
            (None, true, _) | (None, false, Some(_)) => policy::is_duplicate(tx, def, &dedup, now)?,
            (None, false, None) => !policy::mark_unless_duplicate(tx, def, &dedup, now)?,
        };
        if duplicate {
            result.deduped += 1;
            for channel in reachable(def, recipient) {
                tally(channel, Fate::Deduped);
            }
            continue;
        }
        if suppressed > 0 {
            let off = reachable(def, recipient)
                .filter(|c| only.is_none_or(|only| only.contains(c)) && !channels.contains(c));
            for channel in off {
                tally(channel, Fate::Suppressed);
            }
        }
        if channels.is_empty() {
            result.suppressed_by_prefs += i64::from(suppressed > 0);
            continue;
        }
        if let Some(throttle) = throttle {
            let budget = Budget {
                kind: &event.kind,
                recipient: &key,
                key: rendered.throttle_key.as_deref().unwrap_or(""),
            };
            if !throttle::admit(tx, throttle, &budget, seq, now)? {
                result.throttled += 1;
                for &channel in &channels {
                    tally(channel, Fate::Throttled);
                }
                continue;
            }
            policy::mark_unless_duplicate(tx, def, &dedup, now)?;
        }
        if let (Some(spec), Some(digest_key), None) = (&def.digest, &rendered.digest_key, release) {
            let opened = digest::join(tx, seq, event, recipient, digest_key, spec, &channels, now)?;
            written.wake_scheduler |= opened.is_some();
            continue;
        }
        let mut reached = false;
        for channel in channels {
            let wrote = match (channel, recipient, &rendered.inbox, &rendered.email) {
                (Channel::Inbox, Recipient::User(id), Some(content), _) => {
                    let row = inbox::insert(tx, seq, id, &event.kind, content, payload)?;
                    written.inbox.extend(row.map(|row_id| InboxCommitted {
                        user_id: id.clone(),
                        id: row_id,
                        returned: false,
                    }));
                    row.is_some()
                }
                (Channel::Email, _, _, Some(content)) => {
                    // A held email is not handed to the senders: the
                    // scheduler releases it when due.
                    if let Some(hold) = held::hold_for(def, recipient, quiet.as_ref(), now) {
                        let wrote = held::insert(tx, seq, &key, address, content, hold)?;
                        if wrote {
                            let sooner = written.held_due.map_or(hold.due, |d| d.min(hold.due));
                            written.held_due = Some(sooner);
                        }
                        wrote
                    } else {
                        let batch = batcher.join(seq);
                        let job = deliveries::insert_delivery(
                            tx,
                            seq,
                            &key,
                            address,
                            content,
                            batch.as_deref(),
                            batcher.holder(),
                        )?;
                        let wrote = job.is_some();
                        written.emails.extend(job.map(|job| (batch, job)));
                        wrote
                    }
                }
                _ => false,
            };
            if wrote {
                tally(channel, Fate::Sent);
                reached = true;
            }
        }
        result.sent += i64::from(reached);
    }
    result.channels = Some(by_channel);
    Ok(result)
}

/// At most how many emails `prepared` creates: before preferences, dedup
/// and digests, which only ever take some away.
fn expected_emails(prepared: &[Prepared<'_>]) -> usize {
    prepared
        .iter()
        .filter_map(|p| p.ready.as_ref().ok())
        .filter(|ready| {
            ready.rendered.email.is_some() && ready.def.channels.contains(&Channel::Email)
        })
        .map(|ready| ready.reach.iter().flatten().count())
        .sum()
}

/// The channels of `def` a recipient can receive at all: an address-only
/// recipient has no inbox.
fn reachable<'d>(def: &'d TypeDef, recipient: &'d Recipient) -> impl Iterator<Item = Channel> + 'd {
    def.channels
        .iter()
        .copied()
        .filter(move |c| matches!(recipient, Recipient::User(_)) || *c == Channel::Email)
}

fn record_outcomes(shared: &Shared, outcomes: &[Outcome], wake: &Sender<Wake>) {
    // The sends already happened: losing their outcome would leave the
    // deliveries pending until the next start, so insist a little.
    for attempt in 1..=5 {
        match shared
            .store()
            .write(|tx| retry::record(tx, outcomes, &shared.policy))
        {
            Ok(scheduled) => {
                retry::count(outcomes, shared.policy.max_attempts);
                if scheduled.is_some() {
                    let _ = wake.send(Wake::Retry);
                }
                return;
            }
            Err(e) => {
                log::error!(
                    "cannot record {} send outcomes (attempt {attempt}): {e}",
                    outcomes.len()
                );
                std::thread::sleep(std::time::Duration::from_millis(200 * attempt));
            }
        }
    }
}
