//! herald: a self-hosted notification service on one SQLite file.
//!
//! Data flows one way: `http` (or an embedding application) -> a write
//! transaction in `store` that also writes the `notify` outbox -> after
//! commit, the bus -> the dispatcher -> the inbox and email channels ->
//! `mail` providers. The README's "Architecture" section has the map and its
//! invariants.

pub mod app;
pub mod cli;
pub mod config;
pub mod http;
pub mod ids;
pub mod mail;
pub mod metrics;
pub mod notify;
pub mod store;
pub mod time;
