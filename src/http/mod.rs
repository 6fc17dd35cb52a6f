//! The HTTP edge: the only code that touches tiny_http. A fixed pool of
//! worker threads takes requests, each handled under `catch_unwind` so a bug
//! is a logged 500 and never a dead worker, with one log line per request.
//! Shutdown stops accepting and lets in-flight requests finish. Live inbox
//! streams leave the worker pool: their connections belong to the stream hub.

mod auth;
mod credits;
mod deliveries;
mod error;
mod events;
mod inbox;
mod openapi;
mod orgs;
mod pages;
mod preferences;
mod request;
mod response;
mod routes;
mod stream;
mod stripe;
mod users;

pub use openapi::UNDOCUMENTED;
pub use routes::{Route, ROUTES};

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use error::ApiError;
use request::Req;
pub use response::Reply;

use crate::metrics::METRICS;
use crate::notify::Notifier;

/// What handlers share.
pub struct Ctx {
    pub notifier: Notifier,
    pub service_key: Option<String>,
    pub public_url: String,
    /// The reference application's settings (catalog, test hooks).
    pub app: crate::app::AppSettings,
    /// `STRIPE_WEBHOOK_SECRET`; without it the webhook answers 503.
    pub stripe_webhook_secret: Option<String>,
    /// `--dev`: serves `/dev/mail`.
    pub dev: bool,
    /// How often an idle inbox stream gets a heartbeat comment.
    pub stream_heartbeat: Duration,
}

pub struct HttpServer {
    server: Arc<tiny_http::Server>,
    stopping: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    hub: stream::Hub,
    addr: std::net::SocketAddr,
}

impl HttpServer {
    /// Binds `addr` and starts `threads` workers.
    pub fn start(addr: &str, ctx: Arc<Ctx>, threads: usize) -> Result<HttpServer, String> {
        HttpServer::start_with(addr, |_| ctx, threads)
    }

    /// Like `start`, building the context once the real address is known
    /// (`--addr 127.0.0.1:0` picks the port at bind time, and links in
    /// emails fall back to it).
    pub fn start_with(
        addr: &str,
        make_ctx: impl FnOnce(std::net::SocketAddr) -> Arc<Ctx>,
        threads: usize,
    ) -> Result<HttpServer, String> {
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        set_nodelay(&listener);
        let server = tiny_http::Server::from_listener(listener, None)
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| format!("{addr} is not an IP address"))?;
        let server = Arc::new(server);
        let ctx = make_ctx(addr);
        let hub = stream::Hub::start(ctx.notifier.clone(), ctx.stream_heartbeat)?;
        let stopping = Arc::new(AtomicBool::new(false));
        let next_id = Arc::new(AtomicU64::new(1));
        let workers = (0..threads.max(1))
            .map(|i| {
                let (server, ctx, stopping, next_id, hub) = (
                    server.clone(),
                    ctx.clone(),
                    stopping.clone(),
                    next_id.clone(),
                    hub.sender(),
                );
                std::thread::Builder::new()
                    .name(format!("herald-http-{i}"))
                    .spawn(move || worker(&server, &ctx, &hub, &stopping, &next_id))
                    .map_err(|e| format!("cannot start HTTP worker: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(HttpServer {
            server,
            stopping,
            workers,
            hub,
            addr,
        })
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// Stops taking new requests and waits up to `grace` for the ones in
    /// flight to be answered.
    pub fn shutdown(self, grace: Duration) {
        self.stopping.store(true, Ordering::SeqCst);
        for _ in &self.workers {
            self.server.unblock();
        }
        let deadline = Instant::now() + grace;
        for worker in self.workers {
            while !worker.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if worker.is_finished() {
                let _ = worker.join();
            }
        }
        // Streams never finish on their own: closing them is the hub's stop.
        self.hub.stop();
    }
}

/// tiny_http writes a response's head and a body larger than its buffer in
/// two writes; with Nagle's algorithm on, a keep-alive client's delayed ACK
/// then holds the body back for ~40 ms. Accepted sockets inherit
/// TCP_NODELAY from the listener on Linux and the BSDs.
#[cfg(unix)]
fn set_nodelay(listener: &std::net::TcpListener) {
    use std::os::fd::AsRawFd;
    extern "C" {
        fn setsockopt(
            fd: i32,
            level: i32,
            name: i32,
            value: *const std::ffi::c_void,
            len: u32,
        ) -> i32;
    }
    const IPPROTO_TCP: i32 = 6;
    const TCP_NODELAY: i32 = 1;
    let on: i32 = 1;
    // SAFETY: a valid socket descriptor and a pointer to a live i32 of the
    // length passed; setsockopt reads nothing beyond it.
    let rc = unsafe {
        setsockopt(
            listener.as_raw_fd(),
            IPPROTO_TCP,
            TCP_NODELAY,
            (&on as *const i32).cast(),
            std::mem::size_of::<i32>() as u32,
        )
    };
    if rc != 0 {
        log::warn!(
            "cannot set TCP_NODELAY: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(not(unix))]
fn set_nodelay(_listener: &std::net::TcpListener) {}

fn worker(
    server: &tiny_http::Server,
    ctx: &Ctx,
    hub: &stream::HubSender,
    stopping: &AtomicBool,
    next_id: &AtomicU64,
) {
    while !stopping.load(Ordering::SeqCst) {
        match server.recv() {
            Ok(rq) => handle(ctx, hub, rq, next_id.fetch_add(1, Ordering::Relaxed)),
            // `shutdown` unblocks every worker once; the loop sees the flag.
            Err(_) if stopping.load(Ordering::SeqCst) => break,
            Err(e) => log::warn!("accept failed: {e}"),
        }
    }
}

fn handle(ctx: &Ctx, hub: &stream::HubSender, mut rq: tiny_http::Request, request_id: u64) {
    let started = Instant::now();
    let method = rq.method().as_str().to_string();
    // The path only: query strings may carry cursors, never logged verbatim.
    let path = rq.url().split('?').next().unwrap_or("").to_string();
    // Requests whose body cannot be read never reach routing.
    let mut route = routes::UNMATCHED;
    let reply = catch_unwind(AssertUnwindSafe(|| {
        let req = Req::read(&mut rq)?;
        let found = routes::find(&req);
        route = found.label();
        routes::dispatch(ctx, &req, &found)
    }))
    .unwrap_or_else(|_| {
        Err(ApiError::internal(format!(
            "handler panicked on {method} {path}"
        )))
    })
    .unwrap_or_else(Reply::error);
    let status = reply.status;
    if let Some(subscribe) = reply.stream {
        // The hub writes the response head and owns the connection from here.
        hub.open(subscribe, rq.into_writer());
        log::info!("{method} {path} {status} stream opened req={request_id}");
        return;
    }
    if let Err(e) = rq.respond(reply.into_response()) {
        log::debug!("client went away before the response: {e}");
    }
    let took = started.elapsed();
    METRICS.http_request(route, method_label(&method), status, took);
    log::info!(
        "{method} {path} {status} {:.1}ms req={request_id}",
        took.as_secs_f64() * 1000.0
    );
}

/// Methods as a bounded label: anything unusual is "other".
fn method_label(method: &str) -> &'static str {
    ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
        .into_iter()
        .find(|m| m.eq_ignore_ascii_case(method))
        .unwrap_or("other")
}

/// `GET /metrics`: the counters plus queue gauges read now. Unauthenticated,
/// like `/healthz`, so a Prometheus scraper needs no secret.
fn metrics(ctx: &Ctx) -> Result<Reply, ApiError> {
    let mut gauges = ctx
        .notifier
        .store()
        .read(crate::notify::stats::queue_gauges)?;
    gauges.bus_len = ctx.notifier.bus_len();
    gauges.senders_len = ctx.notifier.mail_queue_len();
    Ok(Reply::text(
        200,
        "text/plain; version=0.0.4; charset=utf-8",
        METRICS.render(&gauges),
    ))
}
