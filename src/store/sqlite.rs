//! The embedded engine: one SQLite file in WAL mode, a pool of readers and
//! one write connection behind a mutex, so write transactions run one at a
//! time (`BEGIN IMMEDIATE`) and ids follow commit order. Its own thread
//! checkpoints the WAL off the writer's path. Nothing outside `store/`
//! names rusqlite.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::Sender;
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{Connection, TransactionBehavior};

use super::error::{StoreError, StoreResult};
use super::migrate;
use super::value::{Arg, Value};

/// SQLite durability: NORMAL (the default) survives process crashes and
/// loses at most the last transactions on power loss; FULL fsyncs every commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synchronous {
    Normal,
    Full,
}

/// How long a connection waits for a lock before giving up with `Busy`.
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The checkpointer runs at most this often while commits keep coming:
/// rarely enough to cost little (each checkpoint that copies pages ends in
/// an fsync), often enough that the WAL grows by at most this much of
/// writes between two looks.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

pub(super) struct Sqlite {
    pub(super) path: PathBuf,
    pool: r2d2::Pool<SqliteConnectionManager>,
    writer: Mutex<Connection>,
    checkpointer: Sender<()>,
    /// Set by the checkpointer when the WAL should start over; the writer
    /// does it after its next commit (see `start_checkpointer`).
    restart_wal: Arc<AtomicBool>,
}

impl Sqlite {
    /// Opens (creating if needed) the database at `path` and applies pending
    /// migrations.
    pub(super) fn open(path: &Path, sync: Synchronous, wal: WalPolicy) -> StoreResult<Sqlite> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Pool(format!("cannot create {}: {e}", dir.display())))?;
        }
        let mut writer = Connection::open(path)?;
        // Takes effect only on a database without tables yet: a new one
        // gives pages freed by pruning back to the filesystem. An older one
        // reuses them, and converts with `herald compact`.
        writer.execute_batch("PRAGMA auto_vacuum = INCREMENTAL")?;
        configure(&writer, sync)?;
        migrate::apply_sqlite(&mut writer)?;

        let manager = SqliteConnectionManager::file(path).with_init(move |c| configure(c, sync));
        let readers = std::thread::available_parallelism().map_or(4, |n| n.get() * 2);
        let pool = r2d2::Pool::builder()
            .max_size(readers.clamp(4, 16) as u32)
            .min_idle(Some(1))
            .connection_timeout(BUSY_TIMEOUT)
            .build(manager)?;
        let restart_wal = Arc::new(AtomicBool::new(false));
        Ok(Sqlite {
            path: path.to_path_buf(),
            pool,
            writer: Mutex::new(writer),
            checkpointer: start_checkpointer(path, sync, wal, restart_wal.clone())?,
            restart_wal,
        })
    }

    /// One `BEGIN IMMEDIATE` transaction on the write connection, committed
    /// when `f` returns `Ok`. SQLite runs writers one at a time, so `f` runs
    /// once: there is never a conflict to retry.
    pub(super) fn write<T, E>(&self, f: impl FnOnce(&Connection) -> Result<T, E>) -> Result<T, E>
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
        if self.restart_wal.swap(false, Ordering::Relaxed) {
            restart_wal(&conn);
        }
        drop(conn);
        // A full channel means a checkpoint is already due.
        let _ = self.checkpointer.try_send(());
        Ok(value)
    }

    /// `f` on a pooled reader, inside one read transaction when `snapshot`.
    pub(super) fn read<T, E>(
        &self,
        snapshot: bool,
        f: impl FnOnce(&Connection) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let conn = self.pool.get().map_err(StoreError::from)?;
        if !snapshot {
            return f(&conn);
        }
        // Deferred: it takes no lock, and is rolled back (nothing to undo) on drop.
        let tx = conn.unchecked_transaction().map_err(StoreError::from)?;
        f(&tx)
    }

    /// The driver's pooled connection, for tests that hold a snapshot open.
    #[cfg(test)]
    fn read_raw<T, E>(&self, f: impl FnOnce(&Connection) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let conn = self.pool.get().map_err(StoreError::from)?;
        f(&conn)
    }
}

/// Calls `f` on each row `sql` returns until it says stop.
pub(super) fn rows(
    conn: &Connection,
    sql: &str,
    args: &[&dyn Arg],
    f: &mut dyn FnMut(&rusqlite::Row<'_>) -> StoreResult<ControlFlow<()>>,
) -> StoreResult<()> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(bind(args))?;
    while let Some(row) = rows.next()? {
        if f(row)?.is_break() {
            break;
        }
    }
    Ok(())
}

pub(super) fn execute(conn: &Connection, sql: &str, args: &[&dyn Arg]) -> StoreResult<usize> {
    Ok(conn.prepare_cached(sql)?.execute(bind(args))?)
}

/// The new row's key: SQLite reads the connection's last rowid, cheaper
/// than `RETURNING`, which buffers its rows in a temporary table.
pub(super) fn insert(conn: &Connection, sql: &str, args: &[&dyn Arg]) -> StoreResult<Option<i64>> {
    let changed = execute(conn, sql, args)?;
    Ok((changed > 0).then(|| conn.last_insert_rowid()))
}

/// Column `idx` of `row` as herald's `Value`.
pub(super) fn value<'r>(row: &'r rusqlite::Row<'r>, idx: usize) -> StoreResult<Value<'r>> {
    use rusqlite::types::ValueRef;
    Ok(match row.get_ref(idx)? {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Real(x) => Value::Real(x),
        ValueRef::Text(t) => Value::Text(
            std::str::from_utf8(t)
                .map_err(|e| StoreError::Database(format!("column {idx}: {e}")))?,
        ),
        ValueRef::Blob(b) => Value::Blob(b),
    })
}

/// Binds an `Arg` for the SQLite driver without copying it.
struct Bind<'a>(&'a dyn Arg);

impl rusqlite::ToSql for Bind<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self.0.value() {
            Value::Null => ValueRef::Null,
            Value::Int(i) => ValueRef::Integer(i),
            Value::Real(x) => ValueRef::Real(x),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

fn bind<'a>(args: &'a [&'a dyn Arg]) -> impl rusqlite::Params + 'a {
    rusqlite::params_from_iter(args.iter().map(|a| Bind(*a)))
}

/// WAL frames (4 KiB pages) after which the checkpointer makes the WAL start
/// over: 64 MiB.
const WAL_RESTART_FRAMES: i64 = 16_384;

/// When the checkpointer looks at the WAL and when it makes it start over.
#[derive(Clone, Copy)]
pub(super) struct WalPolicy {
    check_every: Duration,
    restart_frames: i64,
}

impl Default for WalPolicy {
    fn default() -> WalPolicy {
        WalPolicy {
            check_every: CHECKPOINT_EVERY,
            restart_frames: WAL_RESTART_FRAMES,
        }
    }
}

/// How long the writer's restarting checkpoint may wait for readers still
/// on the old WAL; if they take longer, the next look tries again.
const RESTART_WAIT: Duration = Duration::from_millis(20);

/// WAL checkpoints copy committed pages back into the database file and
/// fsync it. Left to SQLite, they run inside whichever commit crosses the
/// threshold, on the writer's critical path; here a thread of its own runs
/// them (PASSIVE: never blocking readers or the writer), woken by
/// `Store::write` and at most every `check_every`. Idle, it sleeps on its
/// channel.
///
/// A PASSIVE checkpoint copies pages back but never makes the WAL start
/// over while some reader still holds a snapshot in it, and under steady
/// traffic one always does: the WAL grew to 2.8 GB for a 280 MB database in
/// herald-bench, and its writeback stalled commits. Past `restart_frames`
/// the checkpointer asks the writer to run a RESTART checkpoint right after
/// its next commit: holding the write lock, it need not fight writers, only
/// wait (at most `RESTART_WAIT`) for readers to leave the old WAL, and the
/// commit after it writes from the start of the file, which
/// `journal_size_limit` then trims.
fn start_checkpointer(
    path: &Path,
    sync: Synchronous,
    wal: WalPolicy,
    restart: Arc<AtomicBool>,
) -> StoreResult<Sender<()>> {
    let conn = Connection::open(path)?;
    configure(&conn, sync)?;
    let (tx, rx) = crossbeam_channel::bounded::<()>(1);
    std::thread::Builder::new()
        .name("herald-checkpoint".into())
        .spawn(move || {
            while rx.recv().is_ok() {
                match checkpoint(&conn, "PASSIVE") {
                    Ok((_, log, done)) => {
                        if log - done > 100_000 {
                            log::warn!(
                                "WAL checkpoint is falling behind: {} of {log} frames not yet copied back",
                                log - done
                            );
                        }
                        if log >= wal.restart_frames {
                            restart.store(true, Ordering::Relaxed);
                        }
                    }
                    Err(e) => log::warn!("WAL checkpoint failed: {e}"),
                }
                std::thread::sleep(wal.check_every);
            }
        })
        .map_err(|e| StoreError::Pool(format!("cannot start the checkpoint thread: {e}")))?;
    Ok(tx)
}

/// The writer's RESTART checkpoint, between two of its transactions.
fn restart_wal(conn: &Connection) {
    let restarted = conn
        .busy_timeout(RESTART_WAIT)
        .and_then(|()| checkpoint(conn, "RESTART"));
    if let Err(e) = conn.busy_timeout(BUSY_TIMEOUT) {
        log::warn!("cannot restore the writer's busy timeout: {e}");
    }
    match restarted {
        Ok((0, log, _)) => log::debug!("WAL starts over after {log} frames"),
        Ok(_) => log::debug!("WAL restart deferred: readers still on it"),
        Err(e) => log::warn!("WAL restart failed: {e}"),
    }
}

/// Runs `PRAGMA wal_checkpoint(mode)`: (busy, frames in the WAL, frames
/// copied back).
fn checkpoint(conn: &Connection, mode: &str) -> rusqlite::Result<(i64, i64, i64)> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })
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
         PRAGMA wal_autocheckpoint = 0;
         PRAGMA journal_size_limit = {};",
        WAL_RESTART_FRAMES * 4096
    ))?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::args;
    use crate::store::{Store, Tx};
    use crate::time::Clock;

    #[test]
    fn write_rolls_back_on_error_and_commits_on_ok() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db"), Synchronous::Normal).unwrap();
        let insert = |tx: &Tx<'_>, id: &str| {
            tx.execute(
                "INSERT INTO users (id, email, created_at, updated_at) VALUES (?1, 'a@b.c', 0, 0)",
                args![id],
            )
        };
        let failed: Result<(), StoreError> = store.write(|tx| {
            insert(tx, "u1")?;
            Err(StoreError::NotFound)
        });
        assert!(matches!(failed, Err(StoreError::NotFound)));
        store.write(|tx| insert(tx, "u2")).unwrap();
        let ids: Vec<String> = store
            .read(|c| c.query_all("SELECT id FROM users", args![], |r| r.get(0)))
            .unwrap();
        assert_eq!(ids, vec!["u2".to_string()]);
    }

    /// Commits one user row `u{i}` with a name of `name_len` bytes.
    fn insert_user(store: &Store, i: usize, name_len: usize) {
        store
            .write(|tx| {
                tx.execute(
                    "INSERT INTO users (id, email, name, created_at, updated_at)
                     VALUES (?1, 'a@b.c', ?2, 0, 0)",
                    args![format!("u{i}"), "x".repeat(name_len)],
                )
            })
            .unwrap();
    }

    #[test]
    fn the_checkpointer_copies_the_wal_back_off_the_writers_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let store = Store::open(&path, Synchronous::Normal).unwrap();
        let size = || std::fs::metadata(&path).unwrap().len();
        let before = size();
        for i in 0..512 {
            insert_user(&store, i, 500);
        }
        // Commits no longer checkpoint themselves (wal_autocheckpoint = 0):
        // the database file only grows once the checkpointer has run.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while size() <= before && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(size() > before, "the WAL was never copied back");
    }

    /// Two readers take turns so that one always holds a snapshot, as
    /// HTTP workers and the dispatcher do under load. PASSIVE checkpoints
    /// alone then never let the WAL start over and it grows with every
    /// write; with the restart it stays near its limit.
    #[test]
    fn the_wal_starts_over_even_while_readers_never_stop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        // The test writes far faster than herald does, so it looks sooner.
        let wal = WalPolicy {
            check_every: Duration::from_millis(2),
            restart_frames: 256, // 1 MiB
        };
        let store = Store::open_sqlite(&path, Synchronous::Normal, wal, Clock::system()).unwrap();
        let stop = AtomicBool::new(false);
        let wal_size = || std::fs::metadata(dir.path().join("t.db-wal")).map_or(0, |m| m.len());
        let mut largest = 0;
        std::thread::scope(|scope| {
            for _ in 0..2 {
                scope.spawn(|| {
                    while !stop.load(Ordering::Relaxed) {
                        store
                            .sqlite()
                            .read_raw(|c| {
                                c.execute_batch("BEGIN")?;
                                let _: i64 =
                                    c.query_row("SELECT COUNT(*) FROM users", [], |r| r.get(0))?;
                                std::thread::sleep(Duration::from_millis(2));
                                c.execute_batch("COMMIT")?;
                                Ok::<_, StoreError>(())
                            })
                            .unwrap();
                    }
                });
            }
            for i in 0..3000 {
                insert_user(&store, i, 2000);
                largest = largest.max(wal_size());
            }
            stop.store(true, Ordering::Relaxed);
        });
        // The rows wrote over 50 MB of frames; without restarts the WAL
        // holds them all (58.7 MB measured). A restart can be deferred a few
        // times while both readers hold snapshots on a loaded machine (10.8 MB
        // seen), so the bound is a third of the unbounded size.
        let limit = 20 * wal.restart_frames as u64 * 4096;
        assert!(largest < limit, "the WAL grew to {largest} bytes");
    }

    #[test]
    fn pragmas_are_applied_to_every_connection() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db"), Synchronous::Full).unwrap();
        let (mode, fk, sync): (String, i64, i64) = store
            .read(|c| {
                Ok::<_, StoreError>((
                    c.query_one("PRAGMA journal_mode", args![], |r| r.get(0))?,
                    c.query_one("PRAGMA foreign_keys", args![], |r| r.get(0))?,
                    c.query_one("PRAGMA synchronous", args![], |r| r.get(0))?,
                ))
            })
            .unwrap();
        assert_eq!((mode.as_str(), fk, sync), ("wal", 1, 2));
    }
}
