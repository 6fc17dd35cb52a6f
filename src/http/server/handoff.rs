//! What passes between the I/O thread and the other threads: complete
//! requests to the workers, replies and stream bytes back through an
//! `IoHandle`, and the counters an open stream shares with the I/O thread.

use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Sender;
use mio::Waker;

use super::wire::Request;

/// A complete request for a worker.
pub struct Job {
    pub id: u64,
    pub request: Request,
    /// The connection ends after the answer.
    pub close: bool,
}

/// The jobs channel the I/O loop feeds.
pub type Jobs = Sender<Job>;

/// What workers and stream writers tell the I/O thread.
pub enum IoMsg {
    Reply {
        id: u64,
        bytes: Vec<u8>,
        close: bool,
    },
    Stream {
        id: u64,
        bytes: Vec<u8>,
        shared: Arc<StreamShared>,
    },
    Push {
        id: u64,
        bytes: Vec<u8>,
    },
    Close {
        id: u64,
    },
    Stop {
        deadline: Instant,
    },
}

/// Sends to the I/O thread and wakes it.
#[derive(Clone)]
pub struct IoHandle {
    tx: Sender<IoMsg>,
    waker: Arc<Waker>,
}

impl IoHandle {
    pub fn new(tx: Sender<IoMsg>, waker: Arc<Waker>) -> IoHandle {
        IoHandle { tx, waker }
    }

    /// False once the I/O thread is gone.
    pub fn send(&self, msg: IoMsg) -> bool {
        if self.tx.send(msg).is_err() {
            return false;
        }
        let _ = self.waker.wake();
        true
    }
}

/// State an open stream shares between its writer and the I/O thread.
#[derive(Debug, Default)]
pub struct StreamShared {
    /// Bytes handed to the I/O thread and not yet taken by the socket.
    pub queued: AtomicUsize,
    /// The connection is gone (client left, write failed, closed by us).
    pub closed: AtomicBool,
}
