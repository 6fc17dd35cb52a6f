//! The scenarios, one module each. `raw`, `dispatch` and `inbox` are run
//! by `main` and return or record their figures; `http` runs its phases in
//! order (`stream`, `paced` and `retention` are phases of it), each on the
//! herald release binary as a child process.

pub mod dispatch;
pub mod http;
pub mod inbox;
mod paced;
pub mod raw;
mod retention;
mod stream;
