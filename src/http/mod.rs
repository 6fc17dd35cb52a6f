//! The HTTP edge: herald's own HTTP/1.1 server (`server/`) with the routes
//! on top. Each request is handled under `catch_unwind` so a bug is a
//! logged 500 and never a dead worker, with one log line per request.
//! Shutdown stops accepting and lets in-flight requests finish. Live inbox
//! streams leave the worker pool: the stream hub writes to them.

mod auth;
mod credits;
mod ctx;
mod deliveries;
mod error;
mod events;
mod inbox;
mod metrics;
mod openapi;
mod orgs;
mod pages;
mod preferences;
mod request;
mod response;
mod routes;
mod schedules;
mod server;
mod stream;
mod stripe;
mod topics;
mod users;
mod webhooks;

pub use routes::{Route, ROUTES};

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use ctx::Ctx;
pub use error::ApiError;
use request::Req;
pub use request::MAX_BODY;
pub use response::Reply;
pub use server::Limits as HttpLimits;
pub use stream::StreamLimits;

use crate::metrics::METRICS;

pub struct HttpServer {
    server: server::Server,
    hub: stream::Hub,
}

impl HttpServer {
    /// Binds `addr` and serves it, building the context once the real
    /// address is known (`--addr 127.0.0.1:0` picks the port at bind time,
    /// and links in emails fall back to it).
    pub fn start_with(
        addr: &str,
        make_ctx: impl FnOnce(std::net::SocketAddr) -> Arc<Ctx>,
        limits: HttpLimits,
        streams: StreamLimits,
    ) -> Result<HttpServer, String> {
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let bound = listener
            .local_addr()
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let ctx = make_ctx(bound);
        let hub = stream::Hub::start(ctx.notifier.clone(), streams)?;
        let next_id = AtomicU64::new(1);
        let hub_sender = hub.sender();
        let handler = move |request| handle(&ctx, &hub_sender, request, &next_id);
        let server = server::Server::start(listener, limits, Arc::new(handler))?;
        Ok(HttpServer { server, hub })
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.server.addr()
    }

    /// Stops taking new requests and waits up to `grace` for the ones in
    /// flight to be answered; then closes every stream.
    pub fn shutdown(self, grace: Duration) {
        self.server.shutdown(grace);
        self.hub.stop();
    }
}

fn handle(
    ctx: &Ctx,
    hub: &stream::HubSender,
    request: server::Request,
    next_id: &AtomicU64,
) -> server::Answer {
    let request_id = next_id.fetch_add(1, Ordering::Relaxed);
    let started = Instant::now();
    let method = request.method.clone();
    // The path only: query strings may carry cursors, never logged verbatim.
    let path = request.target.split('?').next().unwrap_or("").to_string();
    // Requests whose target cannot be decoded never reach routing.
    let mut route = routes::UNMATCHED;
    let mut reply = catch_unwind(AssertUnwindSafe(|| {
        let req = Req::parse(request)?;
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
    if let Some(end) = reply.ends_streams.take() {
        hub.end_streams(end);
    }
    let subscribe = reply.stream.take();
    if subscribe.is_some() && !hub.has_room() {
        reply = Reply::error(ApiError::new(
            503,
            "too_many_streams",
            "too many open inbox streams; retry shortly",
        ))
        .header("Retry-After", "5");
    }
    let status = reply.status;
    let took = started.elapsed();
    METRICS.http_request(route, method_label(&method), status, took);
    let response = reply.into_response();
    match subscribe.filter(|_| status == 200) {
        Some(subscribe) => {
            log::info!("{method} {path} {status} stream opened req={request_id}");
            let hub = hub.clone();
            server::Answer {
                response,
                stream: Some(Box::new(move |writer| hub.open(subscribe, writer))),
            }
        }
        None => {
            log::info!(
                "{method} {path} {status} {:.1}ms req={request_id}",
                took.as_secs_f64() * 1000.0
            );
            server::Answer {
                response,
                stream: None,
            }
        }
    }
}

/// Methods as a bounded label: anything unusual is "other".
fn method_label(method: &str) -> &'static str {
    ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
        .into_iter()
        .find(|m| m.eq_ignore_ascii_case(method))
        .unwrap_or("other")
}
