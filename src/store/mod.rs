//! Storage: the database herald keeps everything in, on one of two engines
//! (`Database`): an embedded SQLite file, or a PostgreSQL server that
//! several instances may share. Every write runs in `Store::write`, one
//! transaction whose outcome is that of writes run one at a time; reads run
//! on pooled connections. Callers see only `sql::{Conn, Tx}`: driver types
//! and errors never leave this folder.

pub mod copy;
mod error;
pub mod files;
mod group;
mod migrate;
mod postgres;
mod postgres_sql;
mod postgres_types;
pub mod sessions;
mod sql;
mod sqlite;
pub mod users;
mod value;

use std::path::{Path, PathBuf};

pub use error::{StoreError, StoreResult};
pub use migrate::SCHEMA_VERSION;
pub use sql::{Conn, Engine, Row, Tx};
pub use sqlite::Synchronous;
pub use value::{Arg, Column, Value};

/// The arguments of one statement, in placeholder order: `args![a, b]`.
#[macro_export]
macro_rules! args {
    () => { &[] as &[&dyn $crate::store::Arg] };
    ($($a:expr),+ $(,)?) => { &[$(&$a as &dyn $crate::store::Arg),+] as &[&dyn $crate::store::Arg] };
}

pub use self::postgres::Heard;
use self::postgres::Postgres;
pub use self::postgres_sql::with_database;
use self::sql::Link;
use self::sqlite::{Sqlite, WalPolicy};
use crate::time::Clock;

/// Where herald keeps its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// An SQLite file, created when missing.
    File(PathBuf),
    /// A PostgreSQL database (`postgres://...`), which must exist.
    Postgres(String),
}

impl std::fmt::Display for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Database::File(path) => write!(f, "{}", path.display()),
            Database::Postgres(url) => write!(f, "{}", postgres_sql::redact(url)),
        }
    }
}

pub struct Store {
    backend: Backend,
    clock: Clock,
    group: group::Group,
}

enum Backend {
    Sqlite(Sqlite),
    Postgres(Postgres),
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path` and applies
    /// pending migrations.
    pub fn open(path: &Path, sync: Synchronous) -> StoreResult<Store> {
        Store::open_with_clock(path, sync, Clock::system())
    }

    /// `open` with the clock every transaction reads "now" from.
    pub fn open_with_clock(path: &Path, sync: Synchronous, clock: Clock) -> StoreResult<Store> {
        Store::open_sqlite(path, sync, WalPolicy::default(), clock)
    }

    fn open_sqlite(
        path: &Path,
        sync: Synchronous,
        wal: WalPolicy,
        clock: Clock,
    ) -> StoreResult<Store> {
        Ok(Store {
            backend: Backend::Sqlite(Sqlite::open(path, sync, wal)?),
            clock,
            group: group::Group::default(),
        })
    }

    /// Opens `database` on its engine and applies pending migrations.
    /// `sync` applies to SQLite only.
    pub fn connect(database: &Database, sync: Synchronous, clock: Clock) -> StoreResult<Store> {
        match database {
            Database::File(path) => Store::open_with_clock(path, sync, clock),
            Database::Postgres(url) => Ok(Store {
                backend: Backend::Postgres(Postgres::open(url)?),
                clock,
                group: group::Group::default(),
            }),
        }
    }

    pub fn engine(&self) -> Engine {
        match self.backend {
            Backend::Sqlite(_) => Engine::Sqlite,
            Backend::Postgres(_) => Engine::Postgres,
        }
    }

    /// The SQLite file; None on PostgreSQL.
    pub fn path(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Sqlite(db) => Some(&db.path),
            Backend::Postgres(_) => None,
        }
    }

    /// Where the data is, for messages (no password).
    pub fn location(&self) -> String {
        match &self.backend {
            Backend::Sqlite(db) => db.path.display().to_string(),
            Backend::Postgres(db) => db.shown.clone(),
        }
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Runs `f` inside one write transaction and commits when it returns
    /// `Ok`; an `Err` rolls back. Nothing that leaves the process may happen
    /// inside `f`: on PostgreSQL a transaction that conflicts with another
    /// is rolled back and `f` runs again (see `postgres.rs`).
    pub fn write<T, E>(&self, mut f: impl FnMut(&Tx<'_>) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let clock = &self.clock;
        match &self.backend {
            Backend::Sqlite(db) => db.write(|c| f(&Tx::new(Link::Sqlite(c), clock))),
            Backend::Postgres(db) => db.write(|s| f(&Tx::new(Link::Postgres(s), clock))),
        }
    }

    /// `write` for small transactions of concurrent callers (group
    /// commit, `group.rs`): `f` runs in a savepoint of a transaction shared
    /// with the other callers' work queued meanwhile, and this returns once
    /// that transaction has committed. An `Err` from `f` rolls back only
    /// `f`'s own statements; a failed COMMIT fails every caller of the
    /// group. Like `write`'s, `f` may run more than once, and nothing in it
    /// may leave the process.
    pub fn write_grouped<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnMut(&Tx<'_>) -> Result<T, E> + Send + 'static,
    {
        self.group.write(f, &|work| self.write(work))
    }

    /// Runs `f` on a pooled read connection inside one read transaction:
    /// every query in `f` sees the same snapshot.
    pub fn snapshot<T, E>(&self, f: impl FnOnce(&Conn<'_>) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        self.read_on(true, f)
    }

    /// Runs `f` on a pooled read connection.
    pub fn read<T, E>(&self, f: impl FnOnce(&Conn<'_>) -> Result<T, E>) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        self.read_on(false, f)
    }

    fn read_on<T, E>(
        &self,
        snapshot: bool,
        f: impl FnOnce(&Conn<'_>) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let clock = &self.clock;
        match &self.backend {
            Backend::Sqlite(db) => db.read(snapshot, |c| f(&Conn::new(Link::Sqlite(c), clock))),
            Backend::Postgres(db) => db.read(snapshot, |s| f(&Conn::new(Link::Postgres(s), clock))),
        }
    }

    /// Starts hearing what other instances `notify` on `channels`, until
    /// `stop` is set; nothing on SQLite (one server per file: nobody else
    /// to hear).
    pub fn listen(
        &self,
        channels: &[&str],
        heard: crossbeam_channel::Sender<Heard>,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> StoreResult<()> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(()),
            Backend::Postgres(db) => db.listen(channels, heard, stop),
        }
    }

    /// Free pages `reclaim_free_pages` could give back: none on a database
    /// without incremental vacuum (made before it; `herald compact`
    /// converts it), which keeps them for reuse, and none on PostgreSQL,
    /// whose autovacuum looks after its own space.
    pub fn reclaimable_pages(&self) -> StoreResult<i64> {
        if self.engine() == Engine::Postgres {
            return Ok(0);
        }
        self.read(|c| {
            let mode: i64 = c.query_one("PRAGMA auto_vacuum", args![], |r| r.get(0))?;
            const INCREMENTAL: i64 = 2;
            if mode != INCREMENTAL {
                return Ok(0);
            }
            c.query_one("PRAGMA freelist_count", args![], |r| r.get(0))
        })
    }

    /// Gives up to `pages` free pages back to the filesystem (incremental
    /// vacuum; nothing on a database without it) in one short write; how
    /// many free pages are left.
    pub fn reclaim_free_pages(&self, pages: u32) -> StoreResult<i64> {
        if self.engine() == Engine::Postgres {
            return Ok(0);
        }
        self.write(|tx| {
            // Each step of the statement frees one page: run it to the end.
            let vacuum = format!("PRAGMA incremental_vacuum({pages})");
            tx.for_each(&vacuum, args![], |_| Ok(()))?;
            tx.query_one("PRAGMA freelist_count", args![], |r| r.get(0))
        })
    }
}

#[cfg(test)]
impl Store {
    /// The SQLite engine underneath, for its own tests.
    fn sqlite(&self) -> &Sqlite {
        match &self.backend {
            Backend::Sqlite(db) => db,
            Backend::Postgres(_) => panic!("not an SQLite store"),
        }
    }
}
