//! The email delivery engine, from the rows the dispatcher writes to the
//! provider's answer:
//! - `deliveries`: the table (rows, batches, requests read back, claims);
//! - `held`: emails that wait (escalation, quiet hours) and their release;
//! - `mail_queue`: the requests waiting in memory for a sender, bounded;
//! - `pacer`: the request rate every sender shares;
//! - `sender`: the sender threads, the only callers of the mail provider;
//! - `retry`: each attempt's outcome recorded (backoff, dead letters), and
//!   counted in the metrics by the same verdict;
//! - `views`: what the operator sees and re-arms;
//! - `policy`: the settings all of them read.
//!
//! Nothing is sent inside a transaction: senders get requests after COMMIT
//! and hand outcomes back to the dispatcher thread to record.

pub mod deliveries;
pub mod held;
pub(crate) mod mail_queue;
pub(crate) mod pacer;
pub mod policy;
pub mod retry;
pub(crate) mod sender;
pub mod views;
