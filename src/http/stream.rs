//! The live inbox (`GET /v1/inbox/stream`, server-sent events). One hub
//! thread owns every subscriber connection, so an idle stream holds no HTTP
//! worker: the worker authenticates, hands the raw writer over and is free.
//! Each subscriber has a cursor, the last notification id sent; the hub only
//! ever sends rows above it, in id order, so nothing is sent twice on one
//! connection and a reconnect with `Last-Event-ID` gets exactly what it missed.

use std::collections::HashMap;
use std::io::Write;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::notify::{inbox, InboxCommitted, Notifier};

/// Rows read per query while catching a subscriber up.
const PAGE: usize = 100;

/// What the SSE response starts with: the head (written by us, because the
/// connection leaves tiny_http here), a reconnect delay for EventSource, and
/// a comment so the client sees the stream open at once.
const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\n\
Content-Type: text/event-stream; charset=utf-8\r\n\
Cache-Control: no-store\r\n\
Connection: close\r\n\
X-Accel-Buffering: no\r\n\
X-Content-Type-Options: nosniff\r\n\
\r\n\
retry: 2000\n\
: connected\n\n";

/// A stream to open: who it belongs to and where it resumes.
#[derive(Debug, Clone)]
pub struct Subscribe {
    pub user_id: String,
    /// The last id the client saw (`Last-Event-ID`); None starts with the
    /// next new row.
    pub after: Option<i64>,
}

enum HubMsg {
    Open(Subscribe, Box<dyn Write + Send>),
    Stop,
}

/// The handle the HTTP workers hold.
pub struct Hub {
    tx: Sender<HubMsg>,
    thread: Option<JoinHandle<()>>,
}

struct Subscriber {
    writer: Box<dyn Write + Send>,
    /// The id of the last row sent on this connection.
    cursor: i64,
}

struct HubState {
    notifier: Notifier,
    /// Open connections by user id.
    users: HashMap<String, Vec<Subscriber>>,
}

impl Hub {
    pub fn start(notifier: Notifier, heartbeat: Duration) -> Result<Hub, String> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let rows = notifier.subscribe_inbox();
        let mut state = HubState {
            notifier,
            users: HashMap::new(),
        };
        let thread = std::thread::Builder::new()
            .name("herald-stream-hub".into())
            .spawn(move || state.run(&rx, &rows, heartbeat))
            .map_err(|e| format!("cannot start the stream hub: {e}"))?;
        Ok(Hub {
            tx,
            thread: Some(thread),
        })
    }

    pub fn sender(&self) -> HubSender {
        HubSender(self.tx.clone())
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
pub struct HubSender(Sender<HubMsg>);

impl HubSender {
    pub fn open(&self, subscribe: Subscribe, writer: Box<dyn Write + Send>) {
        // After `stop` the writer is dropped here, which closes the connection.
        let _ = self.0.send(HubMsg::Open(subscribe, writer));
    }
}

impl HubState {
    fn run(&mut self, control: &Receiver<HubMsg>, rows: &Receiver<InboxCommitted>, beat: Duration) {
        let mut next_beat = Instant::now() + beat;
        loop {
            let timeout = next_beat.saturating_duration_since(Instant::now());
            crossbeam_channel::select! {
                recv(control) -> msg => match msg {
                    Ok(HubMsg::Open(subscribe, writer)) => self.open(subscribe, writer),
                    Ok(HubMsg::Stop) | Err(_) => return,
                },
                recv(rows) -> row => {
                    let Ok(row) = row else { return };
                    // Take everything committed so far in one go: one query
                    // per user however many rows arrived.
                    let mut users = vec![row.user_id];
                    users.extend(rows.try_iter().map(|r| r.user_id));
                    users.sort();
                    users.dedup();
                    for user in users {
                        self.push(&user);
                    }
                },
                default(timeout) => {
                    self.heartbeat();
                    next_beat = Instant::now() + beat;
                },
            }
        }
    }

    fn open(&mut self, subscribe: Subscribe, mut writer: Box<dyn Write + Send>) {
        if write_now(&mut writer, HEAD).is_err() {
            return;
        }
        let start = match subscribe.after {
            Some(id) => Ok(id),
            None => self
                .notifier
                .store()
                .read(|c| inbox::newest_id(c, &subscribe.user_id)),
        };
        let cursor = match start {
            Ok(id) => id,
            Err(e) => {
                log::error!("stream: cannot read the inbox: {e}");
                return;
            }
        };
        let subscriber = Subscriber { writer, cursor };
        self.users
            .entry(subscribe.user_id.clone())
            .or_default()
            .push(subscriber);
        // Rows committed while the client was away (or between its page load
        // and now) go out before anything new.
        self.push(&subscribe.user_id);
    }

    /// Sends each of `user`'s connections the rows above its cursor.
    fn push(&mut self, user: &str) {
        let Some(subscribers) = self.users.get_mut(user) else {
            return;
        };
        loop {
            let from = subscribers.iter().map(|s| s.cursor).min().unwrap_or(0);
            let rows = match self
                .notifier
                .store()
                .read(|c| inbox::after(c, user, from, PAGE))
            {
                Ok(rows) => rows,
                Err(e) => {
                    // The rows stay above the cursors: the next push or a
                    // reconnect delivers them.
                    log::error!("stream: cannot read new inbox rows: {e}");
                    return;
                }
            };
            let full_page = rows.len() == PAGE;
            let frames: Vec<(i64, Vec<u8>)> = rows
                .iter()
                .map(|(id, item)| (*id, frame(*id, item)))
                .collect();
            subscribers.retain_mut(|s| {
                for (id, bytes) in &frames {
                    if *id <= s.cursor {
                        continue;
                    }
                    if write_now(&mut s.writer, bytes).is_err() {
                        return false;
                    }
                    s.cursor = *id;
                }
                true
            });
            if !full_page || subscribers.is_empty() {
                break;
            }
        }
        if subscribers.is_empty() {
            self.users.remove(user);
        }
    }

    /// A comment line keeps proxies from timing the stream out and finds
    /// connections whose client has gone.
    fn heartbeat(&mut self) {
        for subscribers in self.users.values_mut() {
            subscribers.retain_mut(|s| write_now(&mut s.writer, b": heartbeat\n\n").is_ok());
        }
        self.users.retain(|_, subscribers| !subscribers.is_empty());
    }
}

/// One SSE event: the notification id as event id, the API's item as data
/// (compact JSON has no newlines, so one `data:` line).
fn frame(id: i64, item: &inbox::Item) -> Vec<u8> {
    let json = serde_json::to_string(item).unwrap_or_else(|_| "{}".into());
    format!("id: {id}\ndata: {json}\n\n").into_bytes()
}

/// Writes and flushes at once: the writer is buffered, and an event that
/// waits for the buffer to fill is not live.
fn write_now(writer: &mut Box<dyn Write + Send>, bytes: &[u8]) -> std::io::Result<()> {
    writer.write_all(bytes)?;
    writer.flush()
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
