//! What herald instances sharing one database tell each other, through the
//! store's notifications (PostgreSQL's NOTIFY, sent only if the transaction
//! commits; nothing on SQLite, whose one server has no peers): which inbox
//! rows a dispatch committed, so every instance's live streams carry them,
//! and a wake for the schedulers when work became due (a re-armed
//! delivery), and which snoozed rows came back (`announce_returned`).
//! Inbox ids of one dispatch are consecutive: dispatches that
//! write inbox rows run one at a time (`INBOX_ORDER`), so ids also follow
//! commit order, which the live stream's resume relies on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::bus::Wake;
use super::inbox::{self, InboxCommitted};
use super::shared::Shared;
use super::threads;
use crate::store::{Heard, StoreResult, Tx};

const INBOX_CHANNEL: &str = "herald_inbox";
const WAKE_CHANNEL: &str = "herald_wake";
const RETURNED_CHANNEL: &str = "herald_inbox_returned";

/// The advisory lock dispatches writing inbox rows take (see above).
const INBOX_ORDER: i64 = 0x6865_7261_6c64_0001;

/// Called before a transaction writes inbox rows: it waits for any other
/// instance's inbox-writing transaction to commit first.
pub fn order_inbox(tx: &Tx<'_>) -> StoreResult<()> {
    tx.exclusive(INBOX_ORDER)
}

/// Tells the other instances, on commit, about `rows` (one dispatch's).
pub fn announce_inbox(tx: &Tx<'_>, me: i64, rows: &[InboxCommitted]) -> StoreResult<()> {
    let ids = rows.iter().map(|r| r.id);
    match (ids.clone().min(), ids.max()) {
        (Some(first), Some(last)) => tx.notify(INBOX_CHANNEL, &format!("{me} {first} {last}")),
        _ => Ok(()),
    }
}

/// Tells the other instances, on commit, which snoozed rows came back
/// (ids, not a range: they are anyone's, from any time). A page of them
/// fits in one NOTIFY payload (8000 bytes).
pub fn announce_returned(tx: &Tx<'_>, me: i64, rows: &[InboxCommitted]) -> StoreResult<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut payload = me.to_string();
    for row in rows {
        payload.push(' ');
        payload.push_str(&row.id.to_string());
    }
    tx.notify(RETURNED_CHANNEL, &payload)
}

/// Wakes every instance's scheduler on commit.
pub fn wake_all(tx: &Tx<'_>) -> StoreResult<()> {
    tx.notify(WAKE_CHANNEL, "")
}

/// Hears the other instances until `stop` is set; None on an engine where
/// there are none.
pub(super) fn start(
    shared: &Arc<Shared>,
    me: i64,
    stop: Arc<AtomicBool>,
) -> Option<std::thread::JoinHandle<()>> {
    let store = shared.store();
    if !store.engine().is_shared() {
        return None;
    }
    let (heard_tx, heard) = crossbeam_channel::unbounded();
    if let Err(e) = store.listen(
        &[INBOX_CHANNEL, WAKE_CHANNEL, RETURNED_CHANNEL],
        heard_tx,
        stop.clone(),
    ) {
        log::error!("cannot hear the other instances: {e}; streams show this instance's rows only");
        return None;
    }
    let shared = shared.clone();
    Some(threads::spawn("herald-peers", move || {
        for message in heard {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            hear(&shared, me, message);
        }
    }))
}

/// Stops the thread `start` returned: sets `stop`, then wakes the listener
/// with a message, since it waits for one.
pub(super) fn stop(
    shared: &Shared,
    thread: Option<std::thread::JoinHandle<()>>,
    stop: &AtomicBool,
    deadline: std::time::Instant,
) {
    if thread.is_none() {
        return;
    }
    stop.store(true, Ordering::Relaxed);
    if let Err(e) = shared.store().write(wake_all) {
        log::warn!("cannot wake the listening thread to stop it: {e}");
    }
    threads::join_until(thread, deadline);
}

fn hear(shared: &Shared, me: i64, message: Heard) {
    match message {
        Heard::Message { channel, payload } if channel == INBOX_CHANNEL => {
            let Some((from, first, last)) = parse_inbox(&payload) else {
                log::warn!("unreadable inbox announcement {payload:?}");
                return;
            };
            // This instance announced its own rows already, at commit.
            if from == me {
                return;
            }
            match shared
                .store()
                .read(|c| inbox::committed_between(c, first, last))
            {
                Ok(rows) => shared.announce_inbox(&rows),
                Err(e) => log::warn!("cannot read inbox rows {first}..={last}: {e}"),
            }
        }
        Heard::Message { channel, payload } if channel == RETURNED_CHANNEL => {
            let Some((from, ids)) = parse_returned(&payload) else {
                log::warn!("unreadable inbox announcement {payload:?}");
                return;
            };
            if from == me {
                return;
            }
            match shared.store().read(|c| inbox::returned_rows(c, &ids)) {
                Ok(rows) => shared.announce_inbox(&rows),
                Err(e) => log::warn!("cannot read returned inbox rows: {e}"),
            }
        }
        Heard::Message { .. } => {
            let _ = shared.wake.send(Wake::Retry);
        }
        Heard::Gap => {
            log::warn!("missed what other instances announced while reconnecting");
            let _ = shared.wake.send(Wake::Retry);
        }
    }
}

fn parse_inbox(payload: &str) -> Option<(i64, i64, i64)> {
    let mut parts = payload.split(' ').map(str::parse::<i64>);
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(Ok(from)), Some(Ok(first)), Some(Ok(last)), None) => Some((from, first, last)),
        _ => None,
    }
}

fn parse_returned(payload: &str) -> Option<(i64, Vec<i64>)> {
    let mut parts = payload.split(' ').map(str::parse::<i64>);
    let from = parts.next()?.ok()?;
    let ids = parts.collect::<Result<Vec<i64>, _>>().ok()?;
    Some((from, ids))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returned_announcements_read_back() {
        assert_eq!(parse_returned("3 10 14 12"), Some((3, vec![10, 14, 12])));
        assert_eq!(parse_returned("3 x"), None);
        assert_eq!(parse_returned("x 1"), None);
    }

    #[test]
    fn inbox_announcements_read_back() {
        assert_eq!(parse_inbox("3 10 12"), Some((3, 10, 12)));
        assert_eq!(parse_inbox("3 10"), None);
        assert_eq!(parse_inbox("3 x 12"), None);
        assert_eq!(parse_inbox("3 10 12 1"), None);
    }
}
