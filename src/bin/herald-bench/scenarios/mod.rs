//! The scenarios, one module each. `raw`, `dispatch`, `inbox` and
//! `two_instances` are run by `main` and return or record their figures;
//! `http` runs its phases in order (`stream`, `paced` and `retention` are
//! phases of it), each on the herald release binary as a child process;
//! `two_instances` reuses its load and latency phases on two servers.

pub mod dispatch;
pub mod fanout;
pub mod http;
pub mod inbox;
mod paced;
pub mod raw;
mod retention;
mod stream;
pub mod two_instances;
