//! The live inbox (`GET /v1/inbox/stream`, server-sent events). One hub
//! thread keeps every subscriber's cursor, the last notification id sent;
//! it only ever sends rows above it, in id order, so nothing is sent twice
//! on one connection and a reconnect with `Last-Event-ID` gets exactly what
//! it missed. The hub never blocks on a client: it queues bytes for the
//! HTTP I/O thread, and a client more than `max_buffer` behind gets no more
//! until it takes some; one that takes nothing for two heartbeat periods
//! while behind is disconnected, to catch up from the database later.
//! A snoozed row that comes back keeps its id, below the cursors of the
//! streams that were open: it is pushed to those by id, once, as an event
//! without an `id:` line, so the client's Last-Event-ID stays where it was
//! (a client reconnecting later finds the row in the list, not the stream).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::server::StreamWriter;
use crate::metrics::METRICS;
use crate::notify::service;
use crate::notify::{inbox, InboxCommitted, Notifier};

/// Rows read per query while catching a subscriber up.
const PAGE: usize = 100;

/// How often subscribers that are behind are looked at again.
const CATCH_UP_TICK: Duration = Duration::from_millis(20);

/// What an event stream's body starts with: a reconnect delay for
/// EventSource, and a comment so the client sees the stream open at once.
pub const PREAMBLE: &[u8] = b"retry: 2000\n: connected\n\n";

/// Bounds on the live inbox (SPEC 8).
#[derive(Debug, Clone)]
pub struct StreamLimits {
    /// The heartbeat comment period of idle streams.
    pub heartbeat: Duration,
    /// Bytes a subscriber may have queued and not yet taken.
    pub max_buffer: usize,
    /// Open streams per user; a new one past it closes the user's oldest.
    pub max_per_user: usize,
    /// Open streams in all; past it a new stream is answered 503.
    pub max_total: usize,
}

/// A stream to open: who it belongs to and where it resumes.
#[derive(Debug, Clone)]
pub struct Subscribe {
    pub user_id: String,
    /// The session (`auth::session_key`) that opened it, if a cookie did:
    /// signing out ends the stream.
    pub session: Option<String>,
    /// The last id the client saw (`Last-Event-ID`); None starts with the
    /// next new row.
    pub after: Option<i64>,
}

enum HubMsg {
    Open(Subscribe, StreamWriter),
    End(EndStreams),
    Stop,
}

/// Streams whose credentials ended.
#[derive(Debug, Clone)]
pub enum EndStreams {
    /// The streams a session opened (`auth::session_key`): signing out.
    Session(String),
    /// Every stream of a user: their tokens and sessions were revoked.
    User(String),
}

/// The handle the HTTP layer holds.
pub struct Hub {
    tx: Sender<HubMsg>,
    open: Arc<AtomicUsize>,
    max_total: usize,
    thread: Option<JoinHandle<()>>,
}

struct Subscriber {
    writer: StreamWriter,
    session: Option<String>,
    /// The id of the last row sent on this connection.
    cursor: i64,
    /// Bytes ever queued on this connection.
    sent: usize,
    /// Since when it has had rows that did not fit, and how much it had
    /// taken then: no progress for two heartbeats and it is closed.
    behind: Option<(Instant, usize)>,
}

impl Subscriber {
    /// Bytes the client's socket has taken.
    fn taken(&self) -> usize {
        self.sent.saturating_sub(self.writer.queued())
    }

    fn send(&mut self, bytes: Vec<u8>) -> bool {
        self.sent += bytes.len();
        self.writer.send(bytes)
    }
}

struct HubState {
    notifier: Notifier,
    limits: StreamLimits,
    /// Open connections by user id, oldest first.
    users: HashMap<String, Vec<Subscriber>>,
    /// Users with a subscriber that is behind.
    behind: HashSet<String>,
    open: Arc<AtomicUsize>,
}

impl Hub {
    pub fn start(notifier: Notifier, limits: StreamLimits) -> Result<Hub, String> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let rows = notifier.subscribe_inbox();
        let open = Arc::new(AtomicUsize::new(0));
        let max_total = limits.max_total;
        let mut state = HubState {
            notifier,
            limits,
            users: HashMap::new(),
            behind: HashSet::new(),
            open: open.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("herald-stream-hub".into())
            .spawn(move || state.run(&rx, &rows))
            .map_err(|e| format!("cannot start the stream hub: {e}"))?;
        Ok(Hub {
            tx,
            open,
            max_total,
            thread: Some(thread),
        })
    }

    pub fn sender(&self) -> HubSender {
        HubSender {
            tx: self.tx.clone(),
            open: self.open.clone(),
            max_total: self.max_total,
        }
    }

    /// Closes every stream and stops the thread.
    pub fn stop(mut self) {
        let _ = self.tx.send(HubMsg::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What a worker uses to hand a connection over.
#[derive(Clone)]
pub struct HubSender {
    tx: Sender<HubMsg>,
    open: Arc<AtomicUsize>,
    max_total: usize,
}

impl HubSender {
    /// Whether a new stream may open (the bound on all streams).
    pub fn has_room(&self) -> bool {
        self.open.load(Ordering::SeqCst) < self.max_total
    }

    pub fn open(&self, subscribe: Subscribe, writer: StreamWriter) {
        // After `stop` the writer is dropped here, which closes the connection.
        let _ = self.tx.send(HubMsg::Open(subscribe, writer));
    }

    /// Closes the streams `end` names. Sent before the sign-out or the
    /// revocation is answered, and the hub takes it before any row
    /// committed later, so no such row is written on them.
    pub fn end_streams(&self, end: EndStreams) {
        let _ = self.tx.send(HubMsg::End(end));
    }
}

impl HubState {
    fn run(&mut self, control: &Receiver<HubMsg>, rows: &Receiver<InboxCommitted>) {
        let beat = self.limits.heartbeat;
        let mut next_beat = Instant::now() + beat;
        loop {
            let wake = if self.behind.is_empty() {
                next_beat
            } else {
                next_beat.min(Instant::now() + CATCH_UP_TICK)
            };
            let timeout = wake.saturating_duration_since(Instant::now());
            crossbeam_channel::select! {
                recv(control) -> msg => {
                    if !msg.is_ok_and(|msg| self.control(msg)) {
                        return;
                    }
                },
                recv(rows) -> row => {
                    let Ok(row) = row else { return };
                    // A sign-out answered before this row committed must
                    // hold: its streams end before any push.
                    for msg in control.try_iter() {
                        if !self.control(msg) {
                            return;
                        }
                    }
                    // Take everything committed so far in one go: one query
                    // per user however many rows arrived. Returned rows go
                    // first, to the streams already past them; the push
                    // then sends them to the others, below whose cursor
                    // they are, as new.
                    let mut users = Vec::new();
                    for row in std::iter::once(row).chain(rows.try_iter()) {
                        if row.returned {
                            self.push_returned(&row.user_id, row.id);
                        }
                        users.push(row.user_id);
                    }
                    users.sort();
                    users.dedup();
                    for user in users {
                        self.push(&user);
                    }
                },
                default(timeout) => {},
            }
            if !self.behind.is_empty() {
                self.catch_up();
            }
            if Instant::now() >= next_beat {
                self.heartbeat();
                next_beat = Instant::now() + beat;
            }
        }
    }

    /// Acts on a message from the HTTP side; false to stop.
    fn control(&mut self, msg: HubMsg) -> bool {
        match msg {
            HubMsg::Open(subscribe, writer) => self.open(subscribe, writer),
            HubMsg::End(end) => self.end_streams(&end),
            HubMsg::Stop => return false,
        }
        true
    }

    fn open(&mut self, subscribe: Subscribe, writer: StreamWriter) {
        if self.open.load(Ordering::SeqCst) >= self.limits.max_total {
            log::warn!(
                "stream: {} streams open; refused one",
                self.limits.max_total
            );
            return;
        }
        let start = match subscribe.after {
            Some(id) => Ok(id),
            None => service::newest_inbox_id(self.notifier.store(), &subscribe.user_id),
        };
        let cursor = match start {
            Ok(id) => id,
            Err(e) => {
                log::error!("stream: cannot read the inbox: {e}");
                return;
            }
        };
        let subscribers = self.users.entry(subscribe.user_id.clone()).or_default();
        subscribers.retain(|s| !s.writer.is_closed());
        if subscribers.len() >= self.limits.max_per_user {
            // A user reopening tabs keeps the newest; the oldest closes.
            subscribers.remove(0);
        }
        subscribers.push(Subscriber {
            writer,
            session: subscribe.session,
            cursor,
            sent: 0,
            behind: None,
        });
        self.count_open();
        // Rows committed while the client was away (or between its page load
        // and now) go out before anything new.
        self.push(&subscribe.user_id);
    }

    /// Sends each of `user`'s connections the rows above its cursor, as far
    /// as its buffer allows.
    fn push(&mut self, user: &str) {
        let Some(subscribers) = self.users.get_mut(user) else {
            return;
        };
        let max = self.limits.max_buffer;
        let now = Instant::now();
        // Those with room get rows; the others wait for the catch-up tick.
        let mut waiting: Vec<bool> = subscribers
            .iter()
            .map(|s| s.writer.queued() >= max)
            .collect();
        loop {
            let from = subscribers
                .iter()
                .zip(&waiting)
                .filter(|(_, w)| !**w)
                .map(|(s, _)| s.cursor)
                .min();
            let Some(from) = from else { break };
            let rows = match service::inbox_after(self.notifier.store(), user, from, PAGE) {
                Ok(rows) => rows,
                Err(e) => {
                    // The rows stay above the cursors: the next push or a
                    // reconnect delivers them.
                    log::error!("stream: cannot read new inbox rows: {e}");
                    break;
                }
            };
            let full_page = rows.len() == PAGE;
            let frames: Vec<(i64, Vec<u8>)> = rows
                .iter()
                .map(|(id, item)| (*id, frame(*id, item)))
                .collect();
            for (s, waiting) in subscribers.iter_mut().zip(waiting.iter_mut()) {
                if *waiting {
                    continue;
                }
                let mut room = max.saturating_sub(s.writer.queued());
                let mut bytes = Vec::new();
                let cursor = s.cursor;
                for (id, frame) in frames.iter().filter(|(id, _)| *id > cursor) {
                    // One frame larger than the whole buffer still goes
                    // alone, or that row would block the stream for ever.
                    if frame.len() > room && !(bytes.is_empty() && room == max) {
                        *waiting = true;
                        break;
                    }
                    room -= frame.len().min(room);
                    bytes.extend_from_slice(frame);
                    s.cursor = *id;
                }
                if !bytes.is_empty() && !s.send(bytes) {
                    *waiting = true;
                }
            }
            if !full_page {
                break;
            }
        }
        for (s, waiting) in subscribers.iter_mut().zip(&waiting) {
            match (waiting, s.behind) {
                (false, _) => s.behind = None,
                (true, None) => s.behind = Some((now, s.taken())),
                (true, Some(_)) => {}
            }
        }
        subscribers.retain(|s| !s.writer.is_closed());
        if subscribers.iter().any(|s| s.behind.is_some()) {
            self.behind.insert(user.to_string());
        } else {
            self.behind.remove(user);
        }
        if subscribers.is_empty() {
            self.users.remove(user);
        }
        self.count_open();
    }

    /// Sends the returned row `id` to `user`'s connections already past it
    /// (see the module comment); the others get it from `push`.
    fn push_returned(&mut self, user: &str, id: i64) {
        let Some(subscribers) = self.users.get_mut(user) else {
            return;
        };
        if subscribers.iter().all(|s| s.cursor < id) {
            return;
        }
        let item = match service::inbox_returned(self.notifier.store(), user, id) {
            Ok(Some(item)) => item,
            // Snoozed or archived again, or deleted, since it came back.
            Ok(None) => return,
            Err(e) => {
                log::error!("stream: cannot read a returned inbox row: {e}");
                return;
            }
        };
        let json = serde_json::to_string(&item).unwrap_or_else(|_| "{}".into());
        let frame = format!("data: {json}\n\n").into_bytes();
        for s in subscribers.iter_mut().filter(|s| s.cursor >= id) {
            // Bounded by the snoozes ending, so it goes even to a stream
            // that is behind: it could not catch this row up later.
            s.send(frame.clone());
        }
    }

    /// Subscribers that are behind: closed if their client took nothing
    /// for two heartbeat periods, else sent more if they have room.
    fn catch_up(&mut self) {
        let stall = 2 * self.limits.heartbeat;
        let now = Instant::now();
        let users: Vec<String> = self.behind.iter().cloned().collect();
        for user in users {
            if let Some(subscribers) = self.users.get_mut(&user) {
                subscribers.retain_mut(|s| {
                    let Some((since, taken)) = s.behind else {
                        return true;
                    };
                    if s.taken() > taken {
                        s.behind = Some((now, s.taken()));
                        return true;
                    }
                    if now.duration_since(since) < stall {
                        return true;
                    }
                    log::info!(
                        "stream: a client of {user} took nothing for {stall:?} while \
                         {} bytes behind; closed (it resumes with Last-Event-ID)",
                        s.writer.queued()
                    );
                    METRICS.stream_dropped_behind();
                    false
                });
            }
            self.push(&user);
        }
    }

    fn end_streams(&mut self, end: &EndStreams) {
        match end {
            EndStreams::Session(session) => {
                for subscribers in self.users.values_mut() {
                    subscribers.retain(|s| s.session.as_ref() != Some(session));
                }
                self.users.retain(|_, subscribers| !subscribers.is_empty());
            }
            EndStreams::User(user) => {
                self.users.remove(user);
                self.behind.remove(user);
            }
        }
        self.count_open();
    }

    /// A comment line keeps proxies from timing the stream out; a client
    /// that left is already closed by the I/O thread and dropped here.
    fn heartbeat(&mut self) {
        let max = self.limits.max_buffer;
        for subscribers in self.users.values_mut() {
            subscribers
                .retain_mut(|s| s.writer.queued() >= max || s.send(b": heartbeat\n\n".to_vec()));
        }
        self.users.retain(|_, subscribers| !subscribers.is_empty());
        self.count_open();
    }

    fn count_open(&self) {
        let open = self.users.values().map(Vec::len).sum();
        self.open.store(open, Ordering::SeqCst);
        METRICS.streams_open(open);
    }
}

/// One SSE event: the notification id as event id, the API's item as data
/// (compact JSON has no newlines, so one `data:` line).
fn frame(id: i64, item: &inbox::Item) -> Vec<u8> {
    let json = serde_json::to_string(item).unwrap_or_else(|_| "{}".into());
    format!("id: {id}\ndata: {json}\n\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_one_event_with_the_row_id() {
        let item = inbox::Item {
            id: "ntf_7".into(),
            kind: "system.announcement".into(),
            title: "line one\nline two".into(),
            body: "b".into(),
            actions: serde_json::json!([]),
            payload: serde_json::json!({}),
            created_at: "2026-01-01T00:00:00.000Z".into(),
            seen_at: None,
            read_at: None,
            archived_at: None,
            snoozed_until: None,
        };
        let text = String::from_utf8(frame(7, &item)).unwrap();
        assert!(text.starts_with("id: 7\ndata: {"), "{text}");
        assert!(text.ends_with("}\n\n"));
        assert_eq!(
            text.matches('\n').count(),
            3,
            "newlines in fields stay escaped"
        );
    }
}
