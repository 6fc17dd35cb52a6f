//! herald's HTTP/1.1 server: one I/O thread owns every socket and does all
//! reading and writing without blocking; a fixed pool of workers runs the
//! handlers on complete requests. So a client that sends slowly, reads
//! slowly or not at all, or just holds a connection open costs a buffer and
//! a timer, never a thread: threads are `threads` workers plus one.
//! Requests are framed strictly (`wire`), bounded in size and in time.

mod chunked;
mod handler;
mod handoff;
mod io;
mod limits;
mod stream;
mod wire;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

pub use handler::{Answer, Handler};
use handoff::{IoHandle, IoMsg, Job, StreamShared};
pub use limits::Limits;
pub use stream::StreamWriter;
pub use wire::{Request, Response};

pub struct Server {
    addr: SocketAddr,
    io: IoHandle,
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
        self.io.send(IoMsg::Stop { deadline });
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
fn work(jobs: &Receiver<Job>, io: &IoHandle, handler: &Handler) {
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
                io.send(IoMsg::Reply {
                    id: job.id,
                    bytes,
                    close: job.close,
                });
            }
            Some(attach) => {
                let bytes = wire::write_response(&response, wire::BodyLength::UntilClose, true);
                let shared = Arc::new(StreamShared::default());
                shared.queued.store(bytes.len(), Ordering::SeqCst);
                io.send(IoMsg::Stream {
                    id: job.id,
                    bytes,
                    shared: shared.clone(),
                });
                attach(StreamWriter::new(job.id, shared, io.clone()));
            }
        }
    }
}

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
