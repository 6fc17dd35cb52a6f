//! Storage: the SQLite file, its pragmas, the read pool and the single write
//! connection. Every write runs in `Store::write`, one `BEGIN IMMEDIATE`
//! transaction on the one writer; reads come from the r2d2 pool. Driver errors
//! become `StoreError` here and never travel further up.

mod migrate;
pub mod sessions;
pub mod users;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crossbeam_channel::Sender;
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{Connection, ErrorCode, Transaction, TransactionBehavior};

pub use migrate::SCHEMA_VERSION;

/// How long a connection waits for a lock before giving up with `Busy`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// Anything else the driver reported.
    Sqlite(rusqlite::Error),
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
            StoreError::Sqlite(e) => write!(f, "sqlite: {e}"),
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
            _ => StoreError::Sqlite(e),
        }
    }
}

impl From<r2d2::Error> for StoreError {
    fn from(e: r2d2::Error) -> Self {
        StoreError::Pool(e.to_string())
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// SQLite durability: NORMAL (the default) survives process crashes and
/// loses at most the last transactions on power loss; FULL fsyncs every commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synchronous {
    Normal,
    Full,
}

pub struct Store {
    path: PathBuf,
    pool: r2d2::Pool<SqliteConnectionManager>,
    writer: Mutex<Connection>,
    /// Commits since the checkpointer was last woken.
    commits: AtomicU64,
    checkpointer: Sender<()>,
}

/// Commits between two wakes of the checkpointer: rare enough to cost
/// nothing, often enough to keep the WAL file small.
const COMMITS_PER_CHECKPOINT: u64 = 256;

impl Store {
    /// Opens (creating if needed) the database at `path` and applies pending
    /// migrations.
    pub fn open(path: &Path, sync: Synchronous) -> StoreResult<Store> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Pool(format!("cannot create {}: {e}", dir.display())))?;
        }
        let mut writer = Connection::open(path)?;
        configure(&writer, sync)?;
        migrate::apply(&mut writer)?;

        let manager = SqliteConnectionManager::file(path).with_init(move |c| configure(c, sync));
        let readers = std::thread::available_parallelism().map_or(4, |n| n.get() * 2);
        let pool = r2d2::Pool::builder()
            .max_size(readers.clamp(4, 16) as u32)
            .min_idle(Some(1))
            .connection_timeout(BUSY_TIMEOUT)
            .build(manager)?;
        Ok(Store {
            path: path.to_path_buf(),
            pool,
            writer: Mutex::new(writer),
            commits: AtomicU64::new(0),
            checkpointer: start_checkpointer(path, sync)?,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` inside one `BEGIN IMMEDIATE` transaction on the write
    /// connection and commits when it returns `Ok`; an `Err` rolls back.
    /// Nothing that leaves the process may happen inside `f`.
    pub fn write<T, E>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        // A poisoned lock only means another writer panicked mid-closure; its
        // transaction was rolled back when the guard unwound, so the
        // connection is still sound.
        let mut conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(StoreError::from)?;
        let value = f(&tx)?;
        tx.commit().map_err(StoreError::from)?;
        drop(conn);
        if self.commits.fetch_add(1, Ordering::Relaxed) + 1 >= COMMITS_PER_CHECKPOINT {
            self.commits.store(0, Ordering::Relaxed);
            let _ = self.checkpointer.try_send(());
        }
        Ok(value)
    }

    /// Runs `f` on a pooled read connection.
    pub fn read<T, E>(&self, f: impl FnOnce(&Connection) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let conn = self.pool.get().map_err(StoreError::from)?;
        f(&conn)
    }
}

/// WAL checkpoints copy committed pages back into the database file and
/// fsync it. Left to SQLite, they run inside whichever commit crosses the
/// threshold, on the writer's critical path; here a thread of its own runs
/// them (PASSIVE: never blocking readers or the writer) when woken by
/// `Store::write`. Idle, it sleeps on its channel.
fn start_checkpointer(path: &Path, sync: Synchronous) -> StoreResult<Sender<()>> {
    let conn = Connection::open(path)?;
    configure(&conn, sync)?;
    let (tx, rx) = crossbeam_channel::bounded::<()>(1);
    std::thread::Builder::new()
        .name("herald-checkpoint".into())
        .spawn(move || {
            while rx.recv().is_ok() {
                let result: rusqlite::Result<(i64, i64, i64)> =
                    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    });
                match result {
                    Ok((_, log, done)) if log - done > 100_000 => log::warn!(
                        "WAL checkpoint is falling behind: {} of {log} frames not yet copied back",
                        log - done
                    ),
                    Ok(_) => {}
                    Err(e) => log::warn!("WAL checkpoint failed: {e}"),
                }
            }
        })
        .map_err(|e| StoreError::Pool(format!("cannot start the checkpoint thread: {e}")))?;
    Ok(tx)
}

fn configure(conn: &Connection, sync: Synchronous) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let sync = match sync {
        Synchronous::Normal => "NORMAL",
        Synchronous::Full => "FULL",
    };
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = {sync};
         PRAGMA foreign_keys = ON;
         PRAGMA temp_store = MEMORY;
         PRAGMA cache_size = -16000;
         PRAGMA wal_autocheckpoint = 0;"
    ))?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

/// Milliseconds since the Unix epoch: the one time unit stored in the database.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_rolls_back_on_error_and_commits_on_ok() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db"), Synchronous::Normal).unwrap();
        let insert = |tx: &Transaction<'_>, id: &str| {
            tx.execute(
                "INSERT INTO users (id, email, created_at, updated_at) VALUES (?1, 'a@b.c', 0, 0)",
                [id],
            )
            .map_err(StoreError::from)
        };
        let failed: Result<(), StoreError> = store.write(|tx| {
            insert(tx, "u1")?;
            Err(StoreError::NotFound)
        });
        assert!(matches!(failed, Err(StoreError::NotFound)));
        store.write(|tx| insert(tx, "u2")).unwrap();
        let ids: Vec<String> = store
            .read(|c| {
                let mut st = c.prepare("SELECT id FROM users")?;
                let rows = st.query_map([], |r| r.get(0))?;
                rows.collect::<Result<_, _>>().map_err(StoreError::from)
            })
            .unwrap();
        assert_eq!(ids, vec!["u2".to_string()]);
    }

    #[test]
    fn the_checkpointer_copies_the_wal_back_off_the_writers_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let store = Store::open(&path, Synchronous::Normal).unwrap();
        let size = || std::fs::metadata(&path).unwrap().len();
        let before = size();
        for i in 0..(COMMITS_PER_CHECKPOINT * 2) {
            store
                .write(|tx| {
                    tx.execute(
                        "INSERT INTO users (id, email, name, created_at, updated_at)
                         VALUES (?1, 'a@b.c', ?2, 0, 0)",
                        rusqlite::params![format!("u{i}"), "x".repeat(500)],
                    )
                    .map_err(StoreError::from)
                })
                .unwrap();
        }
        // Commits no longer checkpoint themselves (wal_autocheckpoint = 0):
        // the database file only grows once the checkpointer has run.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while size() <= before && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(size() > before, "the WAL was never copied back");
    }

    #[test]
    fn pragmas_are_applied_to_every_connection() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db"), Synchronous::Full).unwrap();
        let (mode, fk, sync): (String, i64, i64) = store
            .read(|c| {
                Ok::<_, StoreError>((
                    c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?,
                    c.query_row("PRAGMA foreign_keys", [], |r| r.get(0))?,
                    c.query_row("PRAGMA synchronous", [], |r| r.get(0))?,
                ))
            })
            .unwrap();
        assert_eq!((mode.as_str(), fk, sync), ("wal", 1, 2));
    }
}
