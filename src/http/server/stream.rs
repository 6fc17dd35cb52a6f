//! The write side of an event stream, as a handler holds it: bytes go to
//! the I/O thread without blocking, and the writer tells how far behind the
//! client is and whether the connection is still there.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::handoff::{IoHandle, IoMsg, StreamShared};

/// The write side of an event stream. Writing never blocks: bytes are
/// queued for the I/O thread, and `queued` tells how far the client is
/// behind. Dropping the writer closes the connection.
pub struct StreamWriter {
    id: u64,
    shared: Arc<StreamShared>,
    io: IoHandle,
}

impl StreamWriter {
    /// The writer of connection `id`, whose head the I/O thread has.
    pub fn new(id: u64, shared: Arc<StreamShared>, io: IoHandle) -> StreamWriter {
        StreamWriter { id, shared, io }
    }

    /// Queues `bytes`; false once the connection is closed.
    pub fn send(&self, bytes: Vec<u8>) -> bool {
        if self.is_closed() {
            return false;
        }
        self.shared.queued.fetch_add(bytes.len(), Ordering::SeqCst);
        self.io.send(IoMsg::Push { id: self.id, bytes })
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
            self.io.send(IoMsg::Close { id: self.id });
        }
    }
}
