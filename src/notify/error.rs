//! The notification layer's error: what a caller of the seam can get wrong
//! (an unknown type, an invalid field) apart from what broke underneath (a
//! template, the registry, the store), so the HTTP layer maps each to its
//! status without knowing where it came from.

use crate::store::StoreError;

#[derive(Debug)]
pub enum NotifyError {
    /// The event's type is not in the registry.
    UnknownType(String),
    /// A field of the event is missing or malformed.
    Invalid {
        field: String,
        message: String,
    },
    /// A template failed to render.
    Render(String),
    /// The registry or templates are broken.
    Config(String),
    /// The request contradicts the current state (retrying a sent delivery).
    Conflict(String),
    Store(StoreError),
}

/// A malformed field, named as the request spells it (`repeat.days[1]`).
pub fn invalid(field: &str, message: &str) -> NotifyError {
    NotifyError::Invalid {
        field: field.to_string(),
        message: message.to_string(),
    }
}

impl std::fmt::Display for NotifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotifyError::UnknownType(t) => write!(f, "unknown notification type {t:?}"),
            NotifyError::Invalid { field, message } => write!(f, "{field}: {message}"),
            NotifyError::Render(m) | NotifyError::Config(m) | NotifyError::Conflict(m) => {
                f.write_str(m)
            }
            NotifyError::Store(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for NotifyError {}

impl From<StoreError> for NotifyError {
    fn from(e: StoreError) -> Self {
        NotifyError::Store(e)
    }
}
