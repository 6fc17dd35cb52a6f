//! What the server asks of the code it serves: a `Handler` that turns each
//! complete `Request` into an `Answer`, which may keep the connection open
//! as an event stream.

use super::stream::StreamWriter;
use super::wire::{Request, Response};

/// What a handler answers: a response, and for an event stream what to do
/// with the connection once its head is on its way.
pub struct Answer {
    pub response: Response,
    pub stream: Option<Box<dyn FnOnce(StreamWriter) + Send>>,
}

pub type Handler = dyn Fn(Request) -> Answer + Send + Sync;
