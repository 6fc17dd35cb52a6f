//! Pacing toward the mail provider, shared by every sender thread: a
//! client-side rate (`HERALD_MAIL_RATE_PER_SEC`, strict spacing so no second
//! ever holds more than the rate) and a team-wide pause when the provider
//! says its budget is spent (`ratelimit-remaining: 0`, or 429 + Retry-After).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::mail::RateHint;

/// A provider asking for longer than this is treated as asking for this:
/// the delivery's own backoff still honours the full Retry-After, but the
/// other senders should not stall for hours on one odd header.
const MAX_PAUSE: Duration = Duration::from_secs(300);

pub struct Pacer {
    /// Time between two requests; None when there is no client-side limit.
    interval: Option<Duration>,
    state: Mutex<PaceState>,
}

struct PaceState {
    /// The earliest instant the next request may start.
    next_slot: Instant,
    /// Set while the provider asked everyone to hold off.
    paused_until: Option<Instant>,
}

impl Pacer {
    pub fn new(rate_per_sec: Option<f64>) -> Pacer {
        Pacer {
            interval: rate_per_sec
                .filter(|r| *r > 0.0 && r.is_finite())
                .map(|r| Duration::from_secs_f64(1.0 / r)),
            state: Mutex::new(PaceState {
                next_slot: Instant::now(),
                paused_until: None,
            }),
        }
    }

    /// Blocks until this sender may make one request and takes that turn.
    /// False if `stop` fired meanwhile (the sender then leaves its job
    /// pending in the database for the next start).
    pub fn wait_turn(&self, stop: &Receiver<()>) -> bool {
        loop {
            let wait = match self.try_take(Instant::now()) {
                None => return true,
                Some(wait) => wait,
            };
            match stop.recv_timeout(wait) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return false,
            }
        }
    }

    /// Takes a turn if one is free now; false (nothing taken) if not.
    pub fn take_turn_now(&self) -> bool {
        self.try_take(Instant::now()).is_none()
    }

    /// Takes a turn at `now` (None) or says how long to wait for one.
    fn try_take(&self, now: Instant) -> Option<Duration> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(until) = state.paused_until {
            if until > now {
                return Some(until - now);
            }
            state.paused_until = None;
        }
        let interval = self.interval?;
        if state.next_slot > now {
            return Some(state.next_slot - now);
        }
        state.next_slot = now + interval;
        None
    }

    /// Learns from the provider's answer: an exhausted budget or a 429
    /// with Retry-After pauses every sender until the provider's reset.
    pub fn observe(&self, hint: &RateHint) {
        let pause = match (hint.throttled_for, hint.remaining) {
            (Some(wait), _) => wait,
            (None, Some(0)) => hint.reset.unwrap_or(Duration::from_secs(1)),
            _ => return,
        };
        if pause.is_zero() {
            return;
        }
        let until = Instant::now() + pause.min(MAX_PAUSE);
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.paused_until.is_none_or(|current| current < until) {
            log::info!("mail provider asked to slow down; pausing sends for {pause:?}");
            state.paused_until = Some(until);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_spaces_requests_evenly() {
        let pacer = Pacer::new(Some(20.0));
        let t0 = Instant::now();
        assert_eq!(pacer.try_take(t0), None);
        let wait = pacer.try_take(t0).expect("second request must wait");
        assert!(wait <= Duration::from_millis(50) && wait >= Duration::from_millis(49));
        assert_eq!(pacer.try_take(t0 + Duration::from_millis(50)), None);
    }

    #[test]
    fn no_rate_means_no_waiting() {
        let pacer = Pacer::new(None);
        let t0 = Instant::now();
        for _ in 0..1000 {
            assert_eq!(pacer.try_take(t0), None);
        }
    }

    #[test]
    fn an_exhausted_budget_or_a_throttle_pauses_everyone() {
        let pacer = Pacer::new(None);
        pacer.observe(&RateHint {
            remaining: Some(3),
            reset: Some(Duration::from_secs(1)),
            throttled_for: None,
        });
        assert_eq!(
            pacer.try_take(Instant::now()),
            None,
            "budget left: no pause"
        );

        pacer.observe(&RateHint {
            remaining: Some(0),
            reset: Some(Duration::from_secs(2)),
            throttled_for: None,
        });
        let wait = pacer.try_take(Instant::now()).expect("paused");
        assert!(wait > Duration::from_millis(1900), "{wait:?}");

        let pacer = Pacer::new(None);
        pacer.observe(&RateHint {
            throttled_for: Some(Duration::from_secs(7)),
            ..RateHint::default()
        });
        let wait = pacer.try_take(Instant::now()).expect("paused");
        assert!(wait > Duration::from_secs(6), "{wait:?}");
        let later = Instant::now() + Duration::from_secs(8);
        assert_eq!(pacer.try_take(later), None, "the pause ends");
    }

    #[test]
    fn waiting_stops_when_told_to() {
        let pacer = Pacer::new(None);
        pacer.observe(&RateHint {
            throttled_for: Some(Duration::from_secs(60)),
            ..RateHint::default()
        });
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        drop(stop_tx);
        assert!(!pacer.wait_turn(&stop_rx));
    }
}
