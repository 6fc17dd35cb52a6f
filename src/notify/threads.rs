//! Starting and stopping the notification threads: each is named (logs and
//! panics say which), and a stop waits for it only until a deadline, so a
//! stuck thread delays shutdown by its grace period and no more.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub(crate) fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .unwrap_or_else(|e| panic!("cannot start thread {name}: {e}"))
}

/// Joins `handle` if it finishes by `deadline`; else logs and leaves it.
pub(crate) fn join_until(handle: Option<JoinHandle<()>>, deadline: Instant) {
    let Some(handle) = handle else { return };
    while !handle.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if handle.is_finished() {
        let _ = handle.join();
    } else {
        log::warn!(
            "thread {} did not stop within the grace period",
            handle.thread().name().unwrap_or("?")
        );
    }
}
