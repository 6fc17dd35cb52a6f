//! The server's bounds, all configurable: worker threads, open connections,
//! the size of a request's head and body, and how long each phase of a
//! connection may take.

use std::time::Duration;

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
