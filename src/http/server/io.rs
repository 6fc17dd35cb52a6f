//! The I/O thread: accepts, reads requests into per-connection buffers,
//! hands complete ones to the workers and writes what they answer, all on
//! non-blocking sockets under one poll. Every connection is in exactly one
//! phase, and every phase but `Busy` and `Stream` has a deadline, so a
//! connection that stops moving is closed rather than held.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use super::chunked::Dechunker;
use super::handoff::{IoHandle, IoMsg, Job, Jobs, StreamShared};
use super::limits::Limits;
use super::wire::{self, Framing, Refusal, Request};
use crate::metrics::METRICS;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST_ID: u64 = 2;

/// Deadlines are checked at most this often (and only when one is due, so
/// an idle server sleeps).
const SWEEP: Duration = Duration::from_millis(100);
/// The longest sleep when no deadline is set.
const NAP: Duration = Duration::from_secs(3600);
/// How long a closing connection is drained so the client reads our last
/// answer instead of a reset.
const LINGER: Duration = Duration::from_secs(2);
/// Bytes read per call.
const READ_CHUNK: usize = 16 * 1024;

enum Phase {
    /// Waiting for the first byte of a request.
    Idle,
    /// Part of a head has arrived.
    Head,
    /// The head is parsed; the body is arriving.
    Body { head: wire::Head, body: BodyState },
    /// A worker has the request.
    Busy,
    /// An answer is being written.
    Writing { close: bool },
    /// An open event stream: written to by its writer, read only to notice
    /// the client leaving.
    Stream,
    /// Our last answer is written and our side shut: reading until the
    /// client closes too.
    Draining,
}

enum BodyState {
    Length(usize),
    Chunked(Dechunker),
}

struct Conn {
    stream: TcpStream,
    phase: Phase,
    input: Vec<u8>,
    out: Vec<u8>,
    /// How much of `out` the socket has taken.
    written: usize,
    deadline: Option<Instant>,
    /// For idle connections: since when, to find the oldest.
    idle_since: Instant,
    shared: Option<Arc<StreamShared>>,
}

pub struct IoLoop {
    poll: Poll,
    listener: Option<TcpListener>,
    conns: HashMap<u64, Conn>,
    next_id: u64,
    limits: Limits,
    jobs: Option<Jobs>,
    inbox: Receiver<IoMsg>,
    /// Connections that went idle, oldest first (entries go stale).
    idle: VecDeque<(u64, Instant)>,
    /// Set by `Stop`: answer what is in flight, then end.
    stopping: Option<Instant>,
    /// An accept failed for want of descriptors: try again at the sweep.
    accept_again: bool,
    /// When the next deadline falls (no earlier than a sweep period away).
    next_sweep: Instant,
}

/// Sets a connection's deadline, and wakes the loop by then.
fn arm(conn: &mut Conn, next_sweep: &mut Instant, at: Instant) {
    conn.deadline = Some(at);
    *next_sweep = (*next_sweep).min(at);
}

impl IoLoop {
    pub fn new(
        listener: std::net::TcpListener,
        limits: Limits,
        jobs: Jobs,
    ) -> std::io::Result<(IoLoop, IoHandle)> {
        listener.set_nonblocking(true)?;
        let mut listener = TcpListener::from_std(listener);
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, inbox) = crossbeam_channel::unbounded();
        let io = IoLoop {
            poll,
            listener: Some(listener),
            conns: HashMap::new(),
            next_id: FIRST_ID,
            limits,
            jobs: Some(jobs),
            inbox,
            idle: VecDeque::new(),
            stopping: None,
            accept_again: false,
            next_sweep: Instant::now() + NAP,
        };
        Ok((io, IoHandle::new(tx, waker)))
    }

    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            let mut timeout = self.next_sweep.saturating_duration_since(Instant::now());
            if self.stopping.is_some() {
                timeout = timeout.min(Duration::from_millis(10));
            }
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != ErrorKind::Interrupted {
                    log::error!("http: poll failed: {e}");
                    return;
                }
            }
            for event in &events {
                match event.token() {
                    LISTENER => self.accept(),
                    WAKER => {}
                    Token(id) => {
                        let id = id as u64;
                        if event.is_writable() {
                            self.flush(id);
                        }
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.on_readable(id);
                        }
                    }
                }
            }
            while let Ok(msg) = self.inbox.try_recv() {
                self.on_msg(msg);
            }
            let now = Instant::now();
            if now >= self.next_sweep {
                self.sweep(now);
            }
            if let Some(deadline) = self.stopping {
                let in_flight = self
                    .conns
                    .values()
                    .any(|c| matches!(c.phase, Phase::Busy | Phase::Writing { .. }));
                if !in_flight || now >= deadline {
                    return;
                }
            }
        }
    }

    fn accept(&mut self) {
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            let (mut stream, _) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of descriptors, most likely: the connections stay
                    // in the backlog until the next sweep.
                    log::warn!("http: accept failed: {e}");
                    self.accept_again = true;
                    self.next_sweep = self.next_sweep.min(Instant::now() + SWEEP);
                    return;
                }
            };
            if self.conns.len() >= self.limits.max_connections && !self.evict_idle() {
                let busy = wire::refuse(503, "too many open connections");
                let _ = stream.write(&wire::refusal_response(&busy));
                continue;
            }
            let _ = stream.set_nodelay(true);
            let id = self.next_id;
            self.next_id += 1;
            if let Err(e) = self.poll.registry().register(
                &mut stream,
                Token(id as usize),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                log::warn!("http: cannot watch a new connection: {e}");
                continue;
            }
            let now = Instant::now();
            self.conns.insert(
                id,
                Conn {
                    stream,
                    phase: Phase::Idle,
                    input: Vec::new(),
                    out: Vec::new(),
                    written: 0,
                    deadline: None,
                    idle_since: now,
                    shared: None,
                },
            );
            if let Some(conn) = self.conns.get_mut(&id) {
                arm(conn, &mut self.next_sweep, now + self.limits.header_timeout);
            }
            self.idle.push_back((id, now));
            METRICS.http_connections(self.conns.len());
        }
    }

    /// Closes the longest-idle keep-alive connection; false if none is idle.
    fn evict_idle(&mut self) -> bool {
        while let Some((id, since)) = self.idle.pop_front() {
            let idle = self
                .conns
                .get(&id)
                .is_some_and(|c| matches!(c.phase, Phase::Idle) && c.idle_since == since);
            if idle {
                self.close(id);
                return true;
            }
        }
        false
    }

    fn on_msg(&mut self, msg: IoMsg) {
        match msg {
            IoMsg::Reply { id, bytes, close } => {
                let stopping = self.stopping.is_some();
                let deadline = Instant::now() + self.limits.body_timeout;
                let Some(conn) = self.conns.get_mut(&id) else {
                    return;
                };
                if !matches!(conn.phase, Phase::Busy) {
                    return;
                }
                conn.out.extend_from_slice(&bytes);
                conn.phase = Phase::Writing {
                    close: close || stopping,
                };
                arm(conn, &mut self.next_sweep, deadline);
                self.flush(id);
            }
            IoMsg::Stream { id, bytes, shared } => {
                let Some(conn) = self.conns.get_mut(&id) else {
                    shared.closed.store(true, Ordering::SeqCst);
                    return;
                };
                conn.out.extend_from_slice(&bytes);
                conn.phase = Phase::Stream;
                conn.deadline = None;
                conn.shared = Some(shared);
                self.flush(id);
            }
            IoMsg::Push { id, bytes } => {
                if let Some(conn) = self.conns.get_mut(&id) {
                    if matches!(conn.phase, Phase::Stream) {
                        conn.out.extend_from_slice(&bytes);
                        self.flush(id);
                    }
                }
            }
            IoMsg::Close { id } => {
                if self
                    .conns
                    .get(&id)
                    .is_some_and(|c| matches!(c.phase, Phase::Stream))
                {
                    self.close(id);
                }
            }
            IoMsg::Stop { deadline } => self.stop(deadline),
        }
    }

    /// No new connections or requests; idle and half-read ones close now.
    fn stop(&mut self, deadline: Instant) {
        self.stopping = Some(deadline);
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        let waiting: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.phase, Phase::Idle | Phase::Head | Phase::Body { .. }))
            .map(|(id, _)| *id)
            .collect();
        for id in waiting {
            self.close(id);
        }
    }

    /// Reads what the socket has, as far as the phase wants it, and moves
    /// the connection on.
    fn on_readable(&mut self, id: u64) {
        loop {
            let Some(conn) = self.conns.get_mut(&id) else {
                return;
            };
            let cap = match &conn.phase {
                Phase::Idle | Phase::Head => self.limits.max_head + READ_CHUNK,
                // The next request's head may follow the body.
                Phase::Body {
                    body: BodyState::Length(n),
                    ..
                } => n + self.limits.max_head + READ_CHUNK,
                // The decoder takes what arrives as it goes.
                Phase::Body {
                    body: BodyState::Chunked(_),
                    ..
                } => self.limits.max_head + READ_CHUNK,
                Phase::Stream | Phase::Draining => return self.discard_input(id),
                // Read again once the answer is written.
                Phase::Busy | Phase::Writing { .. } => return,
            };
            let outcome = read_some(&mut conn.stream, &mut conn.input, cap);
            match outcome {
                Ok(Filled::Drained) | Ok(Filled::Full) => self.advance(id),
                // The client left: whatever it half-sent is void.
                Ok(Filled::Closed) | Err(_) => return self.close(id),
            }
            // A full buffer may hide more: the parser has taken its part.
            if !matches!(outcome, Ok(Filled::Full)) {
                return;
            }
        }
    }

    /// Reads and drops what a stream's client or a closing connection
    /// sends, to notice when it closes.
    fn discard_input(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let mut sink = Vec::with_capacity(READ_CHUNK);
        loop {
            sink.clear();
            match read_some(&mut conn.stream, &mut sink, READ_CHUNK) {
                Ok(Filled::Full) => continue,
                Ok(Filled::Drained) => return,
                Ok(Filled::Closed) | Err(_) => return self.close(id),
            }
        }
    }

    /// Parses as far as the buffered input allows: a head, a body, and
    /// once complete the request goes to a worker.
    fn advance(&mut self, id: u64) {
        let limits = &self.limits;
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        loop {
            match &mut conn.phase {
                Phase::Idle | Phase::Head => {
                    if conn.input.is_empty() {
                        return;
                    }
                    if matches!(conn.phase, Phase::Idle) {
                        conn.phase = Phase::Head;
                        let at = Instant::now() + limits.header_timeout;
                        arm(conn, &mut self.next_sweep, at);
                    }
                    let parsed = match wire::parse_head(&conn.input, limits.max_body) {
                        Ok(Some((_, len))) if len > limits.max_head => Err(too_large_head()),
                        Ok(None) if conn.input.len() > limits.max_head => Err(too_large_head()),
                        other => other,
                    };
                    let (head, len) = match parsed {
                        Ok(Some(parsed)) => parsed,
                        Ok(None) => return,
                        Err(refusal) => return self.refuse(id, &refusal),
                    };
                    conn.input.drain(..len);
                    let body = match head.framing {
                        Framing::Length(n) => BodyState::Length(n),
                        Framing::Chunked => BodyState::Chunked(Dechunker::new(limits.max_body)),
                    };
                    if head.expect_continue {
                        conn.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                    }
                    conn.phase = Phase::Body { head, body };
                    let at = Instant::now() + limits.body_timeout;
                    arm(conn, &mut self.next_sweep, at);
                }
                Phase::Body { body, .. } => {
                    let complete = match body {
                        BodyState::Length(n) => conn.input.len() >= *n,
                        BodyState::Chunked(decoder) => match decoder.feed(&conn.input) {
                            Ok(taken) => {
                                conn.input.drain(..taken);
                                decoder.done()
                            }
                            Err(refusal) => return self.refuse(id, &refusal),
                        },
                    };
                    if !complete {
                        // A `100 Continue` may be waiting.
                        return self.flush(id);
                    }
                    let Phase::Body { head, body } =
                        std::mem::replace(&mut conn.phase, Phase::Busy)
                    else {
                        return;
                    };
                    let body = match body {
                        BodyState::Length(n) => conn.input.drain(..n).collect(),
                        BodyState::Chunked(decoder) => decoder.into_body(),
                    };
                    conn.deadline = None;
                    // A 100 Continue not yet written is moot now.
                    conn.out.clear();
                    conn.written = 0;
                    let job = Job {
                        id,
                        close: head.close,
                        request: Request {
                            method: head.method,
                            target: head.target,
                            headers: head.headers,
                            body,
                        },
                    };
                    if let Some(jobs) = &self.jobs {
                        let _ = jobs.send(job);
                    }
                    return;
                }
                _ => return,
            }
        }
    }

    /// Answers a request we will not serve and closes the connection.
    fn refuse(&mut self, id: u64, refusal: &Refusal) {
        let deadline = Instant::now() + self.limits.body_timeout;
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.input.clear();
        conn.out.clear();
        conn.written = 0;
        conn.out.extend_from_slice(&wire::refusal_response(refusal));
        conn.phase = Phase::Writing { close: true };
        arm(conn, &mut self.next_sweep, deadline);
        self.flush(id);
    }

    /// Writes what is pending; at the end of an answer the connection goes
    /// back to idle (or drains and closes).
    fn flush(&mut self, id: u64) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        while conn.written < conn.out.len() {
            match conn.stream.write(&conn.out[conn.written..]) {
                Ok(0) => return self.close(id),
                Ok(n) => {
                    conn.written += n;
                    if let Some(shared) = &conn.shared {
                        shared.queued.fetch_sub(n, Ordering::SeqCst);
                    }
                    if matches!(conn.phase, Phase::Writing { .. }) {
                        conn.deadline = Some(Instant::now() + self.limits.body_timeout);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    // Keep the buffer from growing at the front forever.
                    if conn.written > conn.out.len() / 2 {
                        conn.out.drain(..conn.written);
                        conn.written = 0;
                    }
                    return;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return self.close(id),
            }
        }
        conn.out.clear();
        conn.written = 0;
        if let Phase::Writing { close } = conn.phase {
            if close {
                let _ = conn.stream.shutdown(Shutdown::Write);
                conn.phase = Phase::Draining;
                arm(conn, &mut self.next_sweep, Instant::now() + LINGER);
                // The client may have closed already.
                return self.on_readable(id);
            }
            let now = Instant::now();
            conn.phase = Phase::Idle;
            arm(conn, &mut self.next_sweep, now + self.limits.idle_timeout);
            conn.idle_since = now;
            self.idle.push_back((id, now));
            // Edge-triggered: bytes that came while we were busy raised no
            // new event, so look now. A pipelined request may be buffered.
            self.on_readable(id);
        }
    }

    fn close(&mut self, id: u64) {
        if let Some(mut conn) = self.conns.remove(&id) {
            METRICS.http_connections(self.conns.len());
            let _ = self.poll.registry().deregister(&mut conn.stream);
            if let Some(shared) = conn.shared {
                shared.closed.store(true, Ordering::SeqCst);
            }
        }
    }

    /// Closes what missed its deadline (408 for a half-read request) and
    /// sets when to look next.
    fn sweep(&mut self, now: Instant) {
        let mut late = Vec::new();
        let mut next = now + NAP;
        for (id, conn) in &self.conns {
            match conn.deadline {
                Some(d) if d <= now => {
                    late.push((*id, matches!(conn.phase, Phase::Head | Phase::Body { .. })))
                }
                Some(d) => next = next.min(d),
                None => {}
            }
        }
        self.next_sweep = next.max(now + SWEEP);
        for (id, half_read) in late {
            if half_read {
                let timeout = wire::refuse(408, "the request was not received in time");
                self.refuse(id, &timeout);
            } else {
                self.close(id);
            }
        }
        if self.idle.len() > 2 * self.conns.len() + 64 {
            let conns = &self.conns;
            self.idle.retain(|(id, since)| {
                conns
                    .get(id)
                    .is_some_and(|c| matches!(c.phase, Phase::Idle) && c.idle_since == *since)
            });
        }
        if std::mem::take(&mut self.accept_again) {
            self.accept();
        }
    }
}

fn too_large_head() -> Refusal {
    wire::refuse(431, "request head too large")
}

/// How a read ended.
enum Filled {
    /// The socket has nothing more for now.
    Drained,
    /// `into` reached its cap; the socket may hold more.
    Full,
    /// The peer closed its side.
    Closed,
}

/// Reads until the socket has no more or `into` holds `cap` bytes.
fn read_some(stream: &mut TcpStream, into: &mut Vec<u8>, cap: usize) -> std::io::Result<Filled> {
    let mut chunk = [0u8; READ_CHUNK];
    while into.len() < cap {
        let want = READ_CHUNK.min(cap - into.len());
        match stream.read(&mut chunk[..want]) {
            Ok(0) => return Ok(Filled::Closed),
            Ok(n) => into.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(Filled::Drained),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(Filled::Full)
}
