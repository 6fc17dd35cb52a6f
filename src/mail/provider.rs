//! What every mail provider is: the `MailProvider` trait, the email it
//! sends, and how it reports the outcome (sent, worth retrying, refused for
//! good) with the provider's rate hints.

use std::time::Duration;

use serde::Serialize;

/// One email, exactly as it is sent on every attempt.
#[derive(Debug, Clone, Serialize)]
pub struct Email {
    pub from: String,
    pub to: Vec<String>,
    pub subject: String,
    pub html: String,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum MailError {
    /// Try again later (429, 409 in flight, 5xx, timeouts, refused or reset
    /// connections); `retry_after` is the provider's own hint.
    Retryable {
        message: String,
        retry_after: Option<Duration>,
    },
    /// The provider found the request itself invalid (400, 422): a field
    /// of some email. Checked before anything is sent, and the same for the
    /// same bytes every time, so nothing of such a request ever went out
    /// and the emails of a refused batch may still go one by one.
    Invalid { message: String },
    /// The provider refused this request for good (other 4xx, such as a
    /// revoked key). A provider may check that before it replays a request
    /// it already took, so this proves nothing about earlier attempts.
    Permanent { message: String },
    /// The key was used before with a different request (Resend's 409
    /// `invalid_idempotent_request`): something may have gone out under it,
    /// so nothing in this request may ever be sent under another key.
    KeyConflict { message: String },
}

impl std::fmt::Display for MailError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MailError::Retryable { message, .. }
            | MailError::Invalid { message }
            | MailError::Permanent { message }
            | MailError::KeyConflict { message } => f.write_str(message),
        }
    }
}

/// The provider's pacing hints from its last answer (`ratelimit-*` headers,
/// and `retry-after` on a 429), so senders slow down before 429s pile up.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RateHint {
    pub remaining: Option<u64>,
    pub reset: Option<Duration>,
    /// Set only when the provider refused for rate (429) and said how long
    /// to wait: the whole team is throttled, not just this email.
    pub throttled_for: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    pub provider_id: String,
}

pub trait MailProvider: Send + Sync {
    fn name(&self) -> &'static str;
    fn send_email(
        &self,
        email: &Email,
        idempotency_key: &str,
    ) -> (Result<Sent, MailError>, RateHint);
    /// Sends `emails` in one request under one key: all of them or, on any
    /// error, none. `Ok` holds one `Sent` per email, in order.
    fn send_batch(
        &self,
        emails: &[Email],
        idempotency_key: &str,
    ) -> (Result<Vec<Sent>, MailError>, RateHint);
}

/// Most emails one batch request may carry (Resend's limit).
pub const MAX_BATCH_EMAILS: usize = 100;
