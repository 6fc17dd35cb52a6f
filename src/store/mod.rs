//! Storage: the SQLite file, its pragmas, the read pool and the single write
//! connection. Every write runs in `Store::write` on the one writer, inside a
//! `BEGIN IMMEDIATE` transaction that concurrent callers share (group
//! commit): each caller's work is its own savepoint, and no caller returns
//! before the COMMIT that holds its work. Reads come from the r2d2 pool.
//! Driver errors become `StoreError` here and never travel further up.

mod migrate;
pub mod sessions;
pub mod users;

use std::collections::HashMap;
use std::ops::Deref;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crossbeam_channel::Sender;
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{Connection, ErrorCode, Transaction};

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
    writer: Mutex<Writer>,
    /// Callers blocked on the writer lock. While there are any, the holder
    /// leaves the transaction open for them instead of committing alone.
    queued: AtomicUsize,
    /// Signalled when a group transaction ends.
    group_ended: Condvar,
    /// Commits since the checkpointer was last woken.
    commits: AtomicU64,
    checkpointer: Sender<()>,
}

/// The write connection and the group transaction open on it.
struct Writer {
    conn: Connection,
    /// The open group's id and how many callers' work it holds.
    open: Option<(u64, usize)>,
    next_group: u64,
    /// How ended groups turned out, kept until every member waiting on one
    /// has read it: (outcome, members still to read it).
    ended: HashMap<u64, (Result<(), String>, usize)>,
}

/// A write transaction as handed to `Store::write`'s closure: a connection
/// that is inside a transaction. Everything that writes takes one.
pub struct Tx<'a>(&'a Connection);

impl<'a> Tx<'a> {
    /// For an embedding application that runs its own rusqlite transaction
    /// on herald's database.
    pub fn of(tx: &'a Transaction<'_>) -> Tx<'a> {
        Tx(tx)
    }
}

impl Deref for Tx<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.0
    }
}

/// Callers' work in one group transaction at most: under a steady stream of
/// writers someone must commit.
const MAX_GROUP: usize = 64;

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
            writer: Mutex::new(Writer {
                conn: writer,
                open: None,
                next_group: 1,
                ended: HashMap::new(),
            }),
            queued: AtomicUsize::new(0),
            group_ended: Condvar::new(),
            commits: AtomicU64::new(0),
            checkpointer: start_checkpointer(path, sync)?,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` inside a write transaction and returns once its work is
    /// committed; an `Err` (or a panic) undoes `f`'s work and only that.
    /// Nothing that leaves the process may happen inside `f`.
    ///
    /// Group commit: `f` runs in a savepoint of a `BEGIN IMMEDIATE`
    /// transaction that may already hold other callers' work. If more
    /// callers are waiting for the writer, the transaction stays open for
    /// them and this caller waits; the last one commits for all. Under
    /// concurrent writes (HTTP workers posting events) one COMMIT then
    /// serves many callers; alone, a caller commits at once.
    pub fn write<T, E>(&self, f: impl FnOnce(&Tx<'_>) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        self.queued.fetch_add(1, Ordering::SeqCst);
        let mut w = self.lock_writer();
        self.queued.fetch_sub(1, Ordering::SeqCst);
        let group = match w.open {
            Some((id, _)) => id,
            None => {
                exec(&w.conn, "BEGIN IMMEDIATE")?;
                let id = w.next_group;
                w.next_group += 1;
                w.open = Some((id, 0));
                id
            }
        };
        let ran = run_in_savepoint(&w.conn, f);
        // Some errors (a full disk, an I/O error) make SQLite roll back the
        // whole transaction, and with it every member's work.
        let lost = w.conn.is_autocommit();
        let joined = matches!(ran, Ok(Ok(_))) && !lost;
        if let Some((_, members)) = w.open.as_mut() {
            *members += usize::from(joined);
        }
        let members = w.open.map_or(0, |(_, m)| m);
        let hand_on = !lost && members < MAX_GROUP && self.queued.load(Ordering::SeqCst) > 0;
        let outcome = if hand_on {
            // A caller blocked on the lock carries the group on; it, or one
            // after it, commits.
            if joined {
                self.wait_for_group(w, group)
            } else {
                drop(w);
                Ok(())
            }
        } else {
            self.end_group(&mut w, lost, joined)
        };
        let value = match ran {
            Ok(value) => value,
            Err(panic) => resume_unwind(panic),
        };
        match outcome {
            Ok(()) => value,
            Err(e) => Err(e.into()),
        }
    }

    /// Commits the open group (or records that SQLite already rolled it
    /// back), wakes its waiting members and releases the writer. `counted`:
    /// the caller is a member, so one fewer member waits.
    fn end_group(
        &self,
        w: &mut MutexGuard<'_, Writer>,
        lost: bool,
        counted: bool,
    ) -> Result<(), StoreError> {
        let Some((group, members)) = w.open.take() else {
            return Ok(());
        };
        let result = if lost {
            Err(StoreError::Busy(
                "the transaction was rolled back by the database".into(),
            ))
        } else {
            exec(&w.conn, "COMMIT").inspect_err(|_| {
                let _ = w.conn.execute_batch("ROLLBACK");
            })
        };
        let waiting = members - usize::from(counted);
        if waiting > 0 {
            let shared = result.as_ref().map(|_| ()).map_err(|e| e.to_string());
            w.ended.insert(group, (shared, waiting));
            self.group_ended.notify_all();
        }
        if result.is_ok()
            && self.commits.fetch_add(1, Ordering::Relaxed) + 1 >= COMMITS_PER_CHECKPOINT
        {
            self.commits.store(0, Ordering::Relaxed);
            let _ = self.checkpointer.try_send(());
        }
        result
    }

    /// Waits, with the writer released, until `group` has ended; its outcome.
    fn wait_for_group(&self, w: MutexGuard<'_, Writer>, group: u64) -> Result<(), StoreError> {
        let mut w = self
            .group_ended
            .wait_while(w, |w| !w.ended.contains_key(&group))
            .unwrap_or_else(|p| p.into_inner());
        let Some((outcome, left)) = w.ended.get_mut(&group) else {
            return Err(StoreError::Busy("lost track of a group commit".into()));
        };
        let outcome = outcome.clone();
        *left -= 1;
        if *left == 0 {
            w.ended.remove(&group);
        }
        outcome.map_err(|e| StoreError::Busy(format!("the shared commit failed: {e}")))
    }

    fn lock_writer(&self) -> MutexGuard<'_, Writer> {
        // Callers' panics are caught inside `write`; a poisoned lock means a
        // bug in this module, and the connection state is still checked
        // (`is_autocommit`) by the next caller.
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
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

/// Runs `f` in a savepoint: kept on `Ok`, rolled back on `Err` or panic
/// (the panic is returned for the caller to resume once the group is
/// settled).
fn run_in_savepoint<T, E>(
    conn: &Connection,
    f: impl FnOnce(&Tx<'_>) -> Result<T, E>,
) -> std::thread::Result<Result<T, E>>
where
    E: From<StoreError>,
{
    if let Err(e) = exec(conn, "SAVEPOINT herald_write") {
        return Ok(Err(e.into()));
    }
    let ran = catch_unwind(AssertUnwindSafe(|| f(&Tx(conn))));
    let end = match ran {
        Ok(Ok(_)) => exec(conn, "RELEASE herald_write"),
        _ => {
            exec(conn, "ROLLBACK TO herald_write").and_then(|()| exec(conn, "RELEASE herald_write"))
        }
    };
    match (ran, end) {
        (Ok(Ok(_)), Err(e)) => Ok(Err(e.into())),
        (ran, _) => ran,
    }
}

/// Runs a statement without parameters through the statement cache: the
/// transaction statements run for every write, and parsing them showed in
/// profiles.
fn exec(conn: &Connection, sql: &str) -> StoreResult<()> {
    conn.prepare_cached(sql)?.execute([])?;
    Ok(())
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
        let insert = |tx: &Tx<'_>, id: &str| {
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

    fn user_count(store: &Store, id_prefix: &str) -> i64 {
        store
            .read(|c| {
                c.query_row(
                    "SELECT COUNT(*) FROM users WHERE id LIKE ?1 || '%'",
                    [id_prefix],
                    |r| r.get(0),
                )
                .map_err(StoreError::from)
            })
            .unwrap()
    }

    fn add_user(tx: &Tx<'_>, id: &str) -> StoreResult<()> {
        tx.execute(
            "INSERT INTO users (id, email, created_at, updated_at) VALUES (?1, 'a@b.c', 0, 0)",
            [id],
        )?;
        Ok(())
    }

    /// Many writers at once: each returns only when its own row is visible
    /// to a reader on another connection (committed, not just written), a
    /// failing writer's row is gone and its neighbours' rows are not, and
    /// commits are shared.
    #[test]
    fn concurrent_writers_share_commits_and_each_sees_its_own_work_committed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db"), Synchronous::Normal).unwrap();
        let threads = 8;
        let per_thread = 200;
        std::thread::scope(|scope| {
            for t in 0..threads {
                let store = &store;
                scope.spawn(move || {
                    for i in 0..per_thread {
                        let id = format!("w{t}_{i}");
                        let fails = i % 10 == 3;
                        let result: StoreResult<()> = store.write(|tx| {
                            add_user(tx, &id)?;
                            if fails {
                                return Err(StoreError::NotFound);
                            }
                            Ok(())
                        });
                        assert_eq!(result.is_ok(), !fails);
                        let visible = user_count(store, &id) == 1;
                        assert_eq!(visible, !fails, "{id} after write returned");
                    }
                });
            }
        });
        let kept = threads * per_thread * 9 / 10;
        assert_eq!(user_count(&store, "w"), kept as i64);
        let w = store.lock_writer();
        assert!(
            w.open.is_none() && w.ended.is_empty(),
            "no group left behind"
        );
        let (writes, groups) = (threads * per_thread, w.next_group as usize - 1);
        eprintln!("{writes} writes in {groups} transactions");
        assert!(
            groups < writes * 9 / 10,
            "{writes} writes in {groups} transactions"
        );
    }

    #[test]
    fn a_panicking_writer_loses_only_its_own_work_and_the_panic_reaches_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db"), Synchronous::Normal).unwrap();
        std::thread::scope(|scope| {
            for t in 0..4 {
                let store = &store;
                scope.spawn(move || {
                    for i in 0..100 {
                        let id = format!("p{t}_{i}");
                        let panics = i % 7 == 0;
                        let result = catch_unwind(AssertUnwindSafe(|| {
                            store.write(|tx| {
                                add_user(tx, &id)?;
                                if panics {
                                    panic!("writer {id} fails");
                                }
                                Ok::<_, StoreError>(())
                            })
                        }));
                        assert_eq!(result.is_err(), panics);
                    }
                });
            }
        });
        // 0, 7, ..., 98: 15 of every 100 panicked.
        assert_eq!(user_count(&store, "p"), 4 * 85);
        store.write(|tx| add_user(tx, "after")).unwrap();
        assert_eq!(user_count(&store, "after"), 1);
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
