//! The dispatcher thread: the one writer of delivery state. It drains the
//! bus in batches, renders each committed event once (outside any
//! transaction), then in one transaction claims the outbox rows and writes
//! their inbox rows and email deliveries; only after COMMIT are the emails
//! handed to the senders. It also records the senders' outcomes.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use crossbeam_channel::Sender;
use rusqlite::Transaction;

use super::email::{self, EmailJob, Outcome};
use super::event::{Event, Recipient};
use super::inbox;
use super::outbox::{self, DispatchResult};
use super::scheduler::Wake;
use super::templates::Rendered;
use super::{BusMsg, Shared};
use crate::store::{users, StoreResult};

/// Events per dispatch transaction: large enough to amortise the commit,
/// small enough to keep the write lock short.
const MAX_BATCH: usize = 512;

pub(super) fn run(shared: &Arc<Shared>, jobs: Sender<EmailJob>, wake: Sender<Wake>) {
    let rx = shared.bus_rx.clone();
    while let Ok(first) = rx.recv() {
        let mut seqs = Vec::new();
        let mut outcomes = Vec::new();
        let mut acks = Vec::new();
        let mut stop = false;
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                BusMsg::Dispatch(seq) => seqs.push(seq),
                BusMsg::Outcome(o) => outcomes.push(o),
                BusMsg::Flush(ack) => acks.push(ack),
                BusMsg::Stop => {
                    stop = true;
                    break;
                }
            }
            next = if seqs.len() + outcomes.len() < MAX_BATCH {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        // A bug here must cost one batch (left pending, re-driven by the
        // scheduler), never the dispatcher thread.
        let handled = catch_unwind(AssertUnwindSafe(|| {
            if !seqs.is_empty() {
                dispatch(shared, &seqs, &jobs);
            }
            if !outcomes.is_empty() {
                record_outcomes(shared, &outcomes, &wake);
            }
        }));
        if handled.is_err() {
            log::error!("dispatcher batch panicked; its events stay pending and are re-driven");
        }
        for ack in acks {
            let _ = ack.send(());
        }
        if stop {
            return;
        }
    }
}

/// An event ready to be written: parsed and rendered, or the reason it
/// never can be.
struct Prepared {
    seq: i64,
    ready: Result<(Event, Rendered), String>,
}

fn dispatch(shared: &Shared, seqs: &[i64], jobs: &Sender<EmailJob>) {
    let rows = match shared.store.read(|c| outbox::load_pending(c, seqs)) {
        Ok(rows) => rows,
        Err(e) => {
            log::error!("dispatcher cannot read the outbox: {e}; the scheduler will re-drive");
            return;
        }
    };
    let prepared: Vec<Prepared> =
        rows.into_iter()
            .map(|row| Prepared {
                seq: row.seq,
                ready: row.event.and_then(|event| {
                    let def = shared.registry.get(&event.kind).ok_or_else(|| {
                        format!("type {:?} is no longer in the registry", event.kind)
                    })?;
                    let rendered = shared
                        .templates
                        .render(&event.kind, def, &event.payload)
                        .map_err(|e| e.to_string())?;
                    Ok((event, rendered))
                }),
            })
            .collect();

    let sent = match shared.store.write(|tx| write_all(tx, &prepared)) {
        Ok(sent) => sent,
        Err(e) => {
            // One bad event must not hold the batch hostage: retry one by one.
            log::warn!("dispatch batch failed ({e}); retrying its events one at a time");
            prepared
                .iter()
                .filter_map(|p| {
                    match shared
                        .store
                        .write(|tx| write_all(tx, std::slice::from_ref(p)))
                    {
                        Ok(sent) => Some(sent),
                        Err(e) => {
                            log::error!("event #{} not dispatched: {e}", p.seq);
                            None
                        }
                    }
                })
                .flatten()
                .collect()
        }
    };
    for job in sent {
        let _ = jobs.send(job);
    }
}

fn write_all(tx: &Transaction<'_>, prepared: &[Prepared]) -> StoreResult<Vec<EmailJob>> {
    let mut jobs = Vec::new();
    for p in prepared {
        if !outbox::claim(tx, p.seq)? {
            continue;
        }
        match &p.ready {
            Ok((event, rendered)) => {
                let result = fan_out(tx, p.seq, event, rendered, &mut jobs)?;
                outbox::mark_dispatched(tx, p.seq, result)?;
            }
            Err(reason) => {
                log::error!("event #{} cannot be dispatched: {reason}", p.seq);
                outbox::mark_failed(tx, p.seq, reason)?;
            }
        }
    }
    Ok(jobs)
}

/// One event to each recipient and channel: an inbox row per user, an email
/// delivery per user and per address-only recipient.
fn fan_out(
    tx: &Transaction<'_>,
    seq: i64,
    event: &Event,
    rendered: &Rendered,
    jobs: &mut Vec<EmailJob>,
) -> StoreResult<DispatchResult> {
    let mut result = DispatchResult::default();
    let payload = event.payload.to_string();
    for recipient in &event.recipients {
        let key = recipient.key();
        let address = match recipient {
            Recipient::User(id) => {
                let Some(user) = users::find(tx, id)? else {
                    log::warn!("event #{seq}: user {id:?} no longer exists; skipped");
                    continue;
                };
                if let Some(content) = &rendered.inbox {
                    if inbox::insert(tx, seq, id, &event.kind, content, &payload)?.is_some() {
                        result.sent += 1;
                    }
                }
                user.email
            }
            Recipient::Address { email } => email.clone(),
        };
        if let Some(content) = &rendered.email {
            if let Some(job) = email::insert_delivery(tx, seq, &key, &address, content)? {
                result.sent += 1;
                jobs.push(job);
            }
        }
    }
    Ok(result)
}

fn record_outcomes(shared: &Shared, outcomes: &[Outcome], wake: &Sender<Wake>) {
    // The sends already happened: losing their outcome would leave the
    // deliveries pending until the next start, so insist a little.
    for attempt in 1..=5 {
        match shared
            .store
            .write(|tx| email::record(tx, outcomes, &shared.policy))
        {
            Ok(scheduled) => {
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
