//! What the storage layer fails with. Driver errors are classified here
//! (busy, not found, anything else as text) and never travel further up.

use std::error::Error as _;

use rusqlite::ErrorCode;

#[derive(Debug, Clone)]
pub enum StoreError {
    /// The row asked for does not exist (or is not visible to the caller).
    NotFound,
    /// The database stayed locked or full; nothing was written.
    Busy(String),
    /// The database was written by a newer herald.
    TooNew {
        found: i64,
        supported: i64,
    },
    /// Anything else the database reported.
    Database(String),
    Pool(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::NotFound => write!(f, "not found"),
            StoreError::Busy(m) => write!(f, "database busy: {m}"),
            StoreError::TooNew { found, supported } => write!(
                f,
                "database schema version {found} is newer than this herald supports ({supported})"
            ),
            StoreError::Database(m) => write!(f, "database: {m}"),
            StoreError::Pool(m) => write!(f, "connection pool: {m}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked | ErrorCode::DiskFull) => {
                StoreError::Busy(e.to_string())
            }
            _ if matches!(e, rusqlite::Error::QueryReturnedNoRows) => StoreError::NotFound,
            _ => StoreError::Database(e.to_string()),
        }
    }
}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        use postgres::error::SqlState;
        let Some(db) = e.as_db_error() else {
            // The connection, not a statement: closed, unreachable, or a
            // value herald could not convert.
            return if e.is_closed() {
                StoreError::Pool(e.to_string())
            } else {
                StoreError::Database(format!(
                    "{e}: {}",
                    e.source().map_or(String::new(), |s| s.to_string())
                ))
            };
        };
        let message = match db.detail() {
            Some(detail) => format!("{} ({detail})", db.message()),
            None => db.message().to_string(),
        };
        let code = db.code();
        let busy = *code == SqlState::T_R_SERIALIZATION_FAILURE
            || *code == SqlState::T_R_DEADLOCK_DETECTED
            || *code == SqlState::LOCK_NOT_AVAILABLE
            || *code == SqlState::QUERY_CANCELED
            // Class 53: insufficient resources (disk full, too many connections).
            || code.code().starts_with("53");
        if busy {
            StoreError::Busy(message)
        } else {
            StoreError::Database(message)
        }
    }
}

impl From<r2d2::Error> for StoreError {
    fn from(e: r2d2::Error) -> Self {
        StoreError::Pool(e.to_string())
    }
}

pub type StoreResult<T> = Result<T, StoreError>;
