//! What the storage layer fails with. Driver errors are classified here
//! (busy, not found, anything else as text) and never travel further up.

use rusqlite::ErrorCode;

#[derive(Debug)]
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

impl From<r2d2::Error> for StoreError {
    fn from(e: r2d2::Error) -> Self {
        StoreError::Pool(e.to_string())
    }
}

pub type StoreResult<T> = Result<T, StoreError>;
