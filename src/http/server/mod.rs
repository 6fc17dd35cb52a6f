//! herald's HTTP/1.1 server: one I/O thread owns every socket and does all
//! reading and writing without blocking; a fixed pool of workers runs the
//! handlers on complete requests. So a client that sends slowly, reads
//! slowly or not at all, or just holds a connection open costs a buffer and
//! a timer, never a thread: threads are `threads` workers plus one.
//! Requests are framed strictly (`wire`), bounded in size and in time.

mod chunked;
mod io;
mod wire;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

pub use wire::Response;

/// Bounds on what one connection may take, all configurable.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Worker threads running handlers.
    pub threads: usize,
    /// Open connections; past it the oldest idle keep-alive connection is
    /// closed, or the new one is refused with 503.
    pub max_connections: usize,
    /// Bytes of one request head (request line and headers); 431 past it.
    pub max_head: usize,
    /// Bytes of one request body; 413 past it.
    pub max_body: usize,
    /// From a request's first byte to the end of its head; 408 past it.
    pub header_timeout: Duration,
    /// From the end of the head to the end of the body, and for a response
    /// to be taken by the client without progress; 408 or close past it.
    pub body_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request.
    pub idle_timeout: Duration,
}

/// A complete request, as the handler sees it.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// The origin-form target: path and query.
    pub target: String,
    /// Names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// What a handler answers: a response, and for an event stream what to do
/// with the connection once its head is on its way.
pub struct Answer {
    pub response: Response,
    pub stream: Option<Box<dyn FnOnce(StreamWriter) + Send>>,
}

pub type Handler = dyn Fn(Request) -> Answer + Send + Sync;

/// State an open stream shares between its writer and the I/O thread.
#[derive(Debug, Default)]
struct StreamShared {
    /// Bytes handed to the I/O thread and not yet taken by the socket.
    queued: AtomicUsize,
    /// The connection is gone (client left, write failed, closed by us).
    closed: AtomicBool,
}

/// The write side of an event stream. Writing never blocks: bytes are
/// queued for the I/O thread, and `queued` tells how far the client is
/// behind. Dropping the writer closes the connection.
pub struct StreamWriter {
    id: u64,
    shared: Arc<StreamShared>,
    io: io::IoHandle,
}

impl StreamWriter {
    /// Queues `bytes`; false once the connection is closed.
    pub fn send(&self, bytes: Vec<u8>) -> bool {
        if self.is_closed() {
            return false;
        }
        self.shared.queued.fetch_add(bytes.len(), Ordering::SeqCst);
        self.io.send(io::IoMsg::Push { id: self.id, bytes })
    }

    /// Bytes sent and not yet taken by the client's socket.
    pub fn queued(&self) -> usize {
        self.shared.queued.load(Ordering::SeqCst)
    }

    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }
}

impl Drop for StreamWriter {
    fn drop(&mut self) {
        if !self.shared.closed.swap(true, Ordering::SeqCst) {
            self.io.send(io::IoMsg::Close { id: self.id });
        }
    }
}

pub struct Server {
    addr: SocketAddr,
    io: io::IoHandle,
    io_thread: JoinHandle<()>,
    workers: Vec<JoinHandle<()>>,
}

impl Server {
    /// Serves `listener` with `handler` on `limits.threads` workers.
    pub fn start(
        listener: std::net::TcpListener,
        mut limits: Limits,
        handler: Arc<Handler>,
    ) -> Result<Server, String> {
        if let Some(files) = open_file_limit() {
            let most = files.saturating_sub(RESERVED_FILES).max(1);
            if limits.max_connections > most {
                log::warn!("at most {most} open connections: the process may open {files} files");
                limits.max_connections = most;
            }
        }
        let addr = listener
            .local_addr()
            .map_err(|e| format!("cannot read the listening address: {e}"))?;
        let (jobs_tx, jobs_rx) = crossbeam_channel::unbounded();
        let (io_loop, io) = io::IoLoop::new(listener, limits.clone(), jobs_tx)
            .map_err(|e| format!("cannot start the HTTP server: {e}"))?;
        let io_thread = std::thread::Builder::new()
            .name("herald-http-io".into())
            .spawn(move || io_loop.run())
            .map_err(|e| format!("cannot start the HTTP I/O thread: {e}"))?;
        let workers = (0..limits.threads.max(1))
            .map(|i| {
                let (jobs, io, handler) = (jobs_rx.clone(), io.clone(), handler.clone());
                std::thread::Builder::new()
                    .name(format!("herald-http-{i}"))
                    .spawn(move || work(&jobs, &io, &*handler))
                    .map_err(|e| format!("cannot start HTTP worker: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Server {
            addr,
            io,
            io_thread,
            workers,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, answers the requests already taken (up to `grace`),
    /// then closes every connection, streams included.
    pub fn shutdown(self, grace: Duration) {
        let deadline = Instant::now() + grace;
        self.io.send(io::IoMsg::Stop { deadline });
        let _ = self.io_thread.join();
        // The job queue closed with the I/O thread; a handler still running
        // past the grace period is left to the process exit.
        for worker in self.workers {
            while !worker.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if worker.is_finished() {
                let _ = worker.join();
            }
        }
    }
}

/// A worker: runs the handler on each request and hands the bytes back.
fn work(jobs: &Receiver<io::Job>, io: &io::IoHandle, handler: &Handler) {
    for job in jobs.iter() {
        let head_only = job.request.method == "HEAD";
        let Answer { response, stream } = handler(job.request);
        match stream {
            None => {
                let bytes = wire::write_response(
                    &response,
                    wire::BodyLength::Fixed { head_only },
                    job.close,
                );
                io.send(io::IoMsg::Reply {
                    id: job.id,
                    bytes,
                    close: job.close,
                });
            }
            Some(attach) => {
                let bytes = wire::write_response(&response, wire::BodyLength::UntilClose, true);
                let shared = Arc::new(StreamShared::default());
                shared.queued.store(bytes.len(), Ordering::SeqCst);
                io.send(io::IoMsg::Stream {
                    id: job.id,
                    bytes,
                    shared: shared.clone(),
                });
                attach(StreamWriter {
                    id: job.id,
                    shared,
                    io: io.clone(),
                });
            }
        }
    }
}

/// The jobs channel type the I/O loop feeds.
type Jobs = Sender<io::Job>;

/// Descriptors kept for everything but connections: the database and its
/// pool, the mail provider's connections, logs.
const RESERVED_FILES: usize = 128;

/// Raises the soft limit on open files to the hard one (as Go's runtime
/// does: each connection is a descriptor) and returns the limit.
#[cfg(unix)]
fn open_file_limit() -> Option<usize> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: both calls only read and write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    Some(usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX))
}

#[cfg(not(unix))]
fn open_file_limit() -> Option<usize> {
    None
}
