//! The API's one error type and the one place errors of the lower layers
//! become HTTP statuses. The client sees a safe message; internal causes are
//! logged once, here, and never sent.

use serde_json::json;

use crate::app::AppError;
use crate::notify::NotifyError;
use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "bad_request", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(401, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(403, "forbidden", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(404, "not_found", message)
    }

    pub fn validation(field: &str, message: &str) -> ApiError {
        ApiError::new(422, "validation_failed", format!("{field}: {message}"))
    }

    /// A server-side failure: logged with its cause, reported without it.
    pub fn internal(cause: impl std::fmt::Display) -> ApiError {
        log::error!("internal error: {cause}");
        ApiError::new(500, "internal", "internal error; see the server log")
    }

    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"code": self.code, "message": self.message}})
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::not_found("not found"),
            StoreError::Busy(cause) => {
                log::warn!("database busy: {cause}");
                ApiError::new(
                    503,
                    "unavailable",
                    "database busy; nothing was changed, retry shortly",
                )
            }
            other => ApiError::internal(other),
        }
    }
}

impl From<NotifyError> for ApiError {
    fn from(e: NotifyError) -> Self {
        match e {
            NotifyError::UnknownType(t) => {
                ApiError::validation("type", &format!("unknown notification type {t:?}"))
            }
            NotifyError::Invalid { field, message } => ApiError::validation(&field, &message),
            NotifyError::Conflict(message) => ApiError::new(409, "conflict", message),
            NotifyError::Store(e) => e.into(),
            other => ApiError::internal(other),
        }
    }
}

impl From<AppError> for ApiError {
    fn from(e: AppError) -> Self {
        match e {
            AppError::Forbidden(m) => ApiError::forbidden(m),
            AppError::NotFound(m) => ApiError::not_found(m),
            AppError::Conflict(m) => ApiError::new(409, "conflict", m),
            AppError::Gone(m) => ApiError::new(410, "gone", m),
            AppError::Invalid { field, message } => ApiError::validation(&field, &message),
            AppError::BadInput(m) => ApiError::bad_request(m),
            AppError::Internal(cause) => ApiError::internal(cause),
            AppError::Store(e) => e.into(),
            AppError::Notify(e) => e.into(),
        }
    }
}
