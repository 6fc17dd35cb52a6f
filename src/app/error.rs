//! What the application's actions fail with; `http::error` maps each
//! variant to one status, in one place.

use crate::notify::NotifyError;
use crate::store::StoreError;

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
