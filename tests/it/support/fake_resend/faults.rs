//! Failures the fake is told to produce: the sliding-window rate limit with
//! Resend's headers, `fail_next` and `Mode::Fail`, and the random faults of
//! `set_random_faults`, each with Resend's error shape.

use std::time::{Duration, Instant};

use super::decide::Reply;
use super::{Fault, Mode, State};

/// Draws this request's random fault, if `set_random_faults` is on.
pub(super) fn draw_fault(state: &mut State) -> Option<Fault> {
    if state.fault_ratio <= 0.0 || state.faults.is_empty() {
        return None;
    }
    let roll = random_u64();
    let threshold = (state.fault_ratio * u32::MAX as f64) as u64;
    if (roll & 0xffff_ffff) >= threshold {
        return None;
    }
    Some(state.faults[((roll >> 32) % state.faults.len() as u64) as usize])
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("fake resend: random bytes");
    u64::from_le_bytes(bytes)
}

/// `fail_next` first, then `Mode::Fail`.
pub(super) fn injected_failure(state: &mut State) -> Option<u16> {
    if state.fail_next > 0 {
        state.fail_next -= 1;
        return Some(state.fail_next_status);
    }
    match state.mode {
        Mode::Fail(status) => Some(status),
        _ => None,
    }
}

pub(super) fn failure(state: &State, status: u16) -> Reply {
    let (name, message) = match status {
        400 => ("validation_error", "Injected failure: bad request."),
        401 => ("missing_api_key", "Injected failure: missing API key."),
        403 => ("invalid_api_key", "API key is invalid"),
        404 => ("not_found", "The requested endpoint does not exist."),
        405 => ("method_not_allowed", "Method Not Allowed"),
        409 => (
            "concurrent_idempotent_requests",
            "Same idempotency key used while original request is still in progress.",
        ),
        422 => ("validation_error", "Injected failure: validation error."),
        429 => (
            "rate_limit_exceeded",
            "Too many requests. Injected failure: rate limit exceeded.",
        ),
        451 => ("security_error", "Injected failure: security error."),
        500 => (
            "internal_server_error",
            "An unexpected error occurred. Injected failure.",
        ),
        s if s >= 500 => ("application_error", "Injected failure: server error."),
        _ => ("application_error", "Injected failure."),
    };
    let reply = Reply::error(status, name, message);
    if status == 429 {
        with_retry_after(state, reply)
    } else {
        reply
    }
}

/// Sliding one-second window over the requests let through.
pub(super) fn check_rate_limit(
    state: &mut State,
    now: Instant,
) -> Result<Vec<(String, String)>, Reply> {
    let limit = state.rate_limit;
    if limit == 0 {
        return Ok(Vec::new());
    }
    let window = Duration::from_secs(1);
    while let Some(&oldest) = state.window.front() {
        if now.saturating_duration_since(oldest) >= window {
            state.window.pop_front();
        } else {
            break;
        }
    }
    if state.window.len() >= limit as usize {
        let oldest = *state.window.front().expect("window is full, so not empty");
        let frees_in = (oldest + window).saturating_duration_since(now);
        let reset = frees_in.as_secs_f64().ceil().max(1.0) as u64;
        let headers = rate_headers(limit, 0, reset);
        let reply = Reply::error(
            429,
            "rate_limit_exceeded",
            &format!(
                "Too many requests. You can only make {limit} requests per second. See rate \
                 limit response headers for more information. Or contact support to increase \
                 rate limit."
            ),
        );
        return Err(with_retry_after(state, reply).with_headers(&headers));
    }
    state.window.push_back(now);
    let remaining = limit - state.window.len() as u32;
    Ok(rate_headers(limit, remaining, 1))
}

fn rate_headers(limit: u32, remaining: u32, reset: u64) -> Vec<(String, String)> {
    vec![
        ("ratelimit-limit".to_string(), limit.to_string()),
        ("ratelimit-remaining".to_string(), remaining.to_string()),
        ("ratelimit-reset".to_string(), reset.to_string()),
    ]
}

fn with_retry_after(state: &State, mut reply: Reply) -> Reply {
    let secs = state.retry_after.unwrap_or(1);
    reply
        .headers
        .push(("retry-after".to_string(), secs.to_string()));
    reply
}
