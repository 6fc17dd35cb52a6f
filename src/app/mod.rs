//! The reference application (SPEC 4): organizations, members, invitations,
//! role changes, the audit log and Stripe billing, the first call sites of
//! the notification seam. Every org-scoped action runs in one tenant-scoped
//! transaction (`tenant`) and enqueues its notifications there; they are
//! published only after COMMIT. Nothing here talks HTTP or sends mail.

pub mod audit;
pub mod billing;
pub mod catalog;
pub mod credits;
pub mod events;
pub mod invitations;
pub mod members;
pub mod orgs;
pub mod seed;
pub mod stripe;
pub mod tenant;

use crate::notify::NotifyError;
use crate::store::StoreError;

pub use catalog::Catalog;
pub use tenant::{Access, Role, Tenant};

/// What an action can fail with; `http::error` maps each to a status.
#[derive(Debug)]
pub enum AppError {
    /// The caller may see the org but lacks the role (403).
    Forbidden(String),
    /// Missing, or belongs to an org the caller is not in (404: ids never leak).
    NotFound(String),
    /// The request conflicts with the current state (409).
    Conflict(String),
    /// The thing existed but is no longer usable, e.g. an expired token (410).
    Gone(String),
    /// A field of the request is wrong (422).
    Invalid {
        field: String,
        message: String,
    },
    /// Input that is not what the endpoint takes at all (400).
    BadInput(String),
    /// A server-side failure; the whole transaction was rolled back (500).
    Internal(String),
    Store(StoreError),
    Notify(NotifyError),
}

impl AppError {
    pub fn invalid(field: &str, message: impl Into<String>) -> AppError {
        AppError::Invalid {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppError::Forbidden(m)
            | AppError::NotFound(m)
            | AppError::Conflict(m)
            | AppError::Gone(m)
            | AppError::BadInput(m)
            | AppError::Internal(m) => f.write_str(m),
            AppError::Invalid { field, message } => write!(f, "{field}: {message}"),
            AppError::Store(e) => write!(f, "{e}"),
            AppError::Notify(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for AppError {}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        AppError::Store(e)
    }
}

impl From<NotifyError> for AppError {
    fn from(e: NotifyError) -> Self {
        AppError::Notify(e)
    }
}

pub type AppResult<T> = Result<T, AppError>;

/// Failure injection for the integration tests that prove atomicity. Read
/// from `HERALD_TEST_*` variables at start; inert unless set, and the server
/// logs a warning when any is on.
#[derive(Debug, Clone, Default)]
pub struct TestHooks {
    /// `HERALD_TEST_FAIL_ROLE_CHANGE=1`: changeMemberRole fails after its
    /// update, audit row and outbox row are written, before COMMIT.
    pub fail_role_change: bool,
    /// `HERALD_TEST_FAIL_STRIPE_EVENT=<event id>`: the webhook handler fails
    /// for that event after claiming and applying it, before COMMIT.
    pub fail_stripe_event: Option<String>,
}

impl TestHooks {
    pub fn any(&self) -> bool {
        self.fail_role_change || self.fail_stripe_event.is_some()
    }
}

/// What the application's actions need besides the notifier.
#[derive(Debug, Clone, Default)]
pub struct AppSettings {
    pub catalog: Catalog,
    pub hooks: TestHooks,
}

/// Milliseconds an invitation stays acceptable.
pub const INVITATION_TTL_MS: i64 = 7 * 24 * 3600 * 1000;
