//! herald's own face of a database connection: the only types the modules
//! that own tables use to run SQL, on either engine. Arguments and columns
//! travel as engine-neutral `Value`s, so no driver type or error crosses
//! this boundary. Writes exist only on `Tx`, which only `Store::write`
//! hands out: every write is inside a transaction. Where the engines truly
//! differ, the difference has one named method here (`Tx::insert`,
//! `Tx::notify`, `Tx::exclusive`, `Engine::skip_locked`).

use std::cell::RefCell;
use std::ops::{ControlFlow, Deref};

use super::error::{StoreError, StoreResult};
use super::postgres as postgres_engine;
use super::postgres_types;
use super::sqlite;
use super::value::{Arg, Column, Value};
use crate::time::Clock;

/// One result row; columns by position.
pub struct Row<'r> {
    inner: Driver<'r>,
}

/// The driver's row underneath.
enum Driver<'r> {
    Sqlite(&'r rusqlite::Row<'r>),
    Postgres(&'r postgres::Row),
}

impl<'r> Row<'r> {
    fn value(&self, idx: usize) -> StoreResult<Value<'r>> {
        match self.inner {
            Driver::Sqlite(row) => sqlite::value(row, idx),
            Driver::Postgres(row) => postgres_types::value(row, idx),
        }
    }

    /// A text column without copying it; None when it holds no text.
    pub fn text(&self, idx: usize) -> StoreResult<Option<&'r str>> {
        Ok(match self.value(idx)? {
            Value::Text(s) => Some(s),
            _ => None,
        })
    }

    pub fn get<T: Column>(&self, idx: usize) -> StoreResult<T> {
        let value = self.value(idx)?;
        T::from_value(value).ok_or_else(|| {
            StoreError::Database(format!(
                "column {idx} holds {value:?}, not a {}",
                std::any::type_name::<T>()
            ))
        })
    }
}

/// A connection of either engine, as the engines hand it out.
#[derive(Clone, Copy)]
pub(super) enum Link<'a> {
    Sqlite(&'a rusqlite::Connection),
    Postgres(&'a RefCell<postgres_engine::Session>),
}

impl Link<'_> {
    fn rows(
        self,
        sql: &str,
        args: &[&dyn Arg],
        f: &mut dyn FnMut(&Row<'_>) -> StoreResult<ControlFlow<()>>,
    ) -> StoreResult<()> {
        match self {
            Link::Sqlite(c) => sqlite::rows(c, sql, args, &mut |row| {
                f(&Row {
                    inner: Driver::Sqlite(row),
                })
            }),
            Link::Postgres(s) => postgres_engine::rows(s, sql, args, &mut |row| {
                f(&Row {
                    inner: Driver::Postgres(row),
                })
            }),
        }
    }
}

/// A connection to read with: a pooled reader, or a write transaction seen
/// through `Tx`. Statements are prepared once per connection and cached.
#[derive(Clone, Copy)]
pub struct Conn<'a> {
    link: Link<'a>,
    clock: &'a Clock,
}

impl<'a> Conn<'a> {
    pub(super) fn new(link: Link<'a>, clock: &'a Clock) -> Conn<'a> {
        Conn { link, clock }
    }

    /// The store's clock: what "now" means for the rows this connection
    /// reads and writes (tests set it).
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The one row `sql` returns; `NotFound` when there is none.
    pub fn query_one<T>(
        &self,
        sql: &str,
        args: &[&dyn Arg],
        f: impl FnOnce(&Row<'_>) -> StoreResult<T>,
    ) -> StoreResult<T> {
        self.query_opt(sql, args, f)?.ok_or(StoreError::NotFound)
    }

    /// The first row `sql` returns, if any.
    pub fn query_opt<T>(
        &self,
        sql: &str,
        args: &[&dyn Arg],
        f: impl FnOnce(&Row<'_>) -> StoreResult<T>,
    ) -> StoreResult<Option<T>> {
        let mut f = Some(f);
        let mut out = None;
        self.link.rows(sql, args, &mut |row| {
            if let Some(f) = f.take() {
                out = Some(f(row)?);
            }
            Ok(ControlFlow::Break(()))
        })?;
        Ok(out)
    }

    /// Every row `sql` returns, each mapped by `f`.
    pub fn query_all<T>(
        &self,
        sql: &str,
        args: &[&dyn Arg],
        mut f: impl FnMut(&Row<'_>) -> StoreResult<T>,
    ) -> StoreResult<Vec<T>> {
        let mut out = Vec::new();
        self.for_each(sql, args, |row| {
            out.push(f(row)?);
            Ok(())
        })?;
        Ok(out)
    }

    /// Calls `f` on each row `sql` returns without collecting them.
    pub fn for_each(
        &self,
        sql: &str,
        args: &[&dyn Arg],
        mut f: impl FnMut(&Row<'_>) -> StoreResult<()>,
    ) -> StoreResult<()> {
        self.link.rows(sql, args, &mut |row| {
            f(row)?;
            Ok(ControlFlow::Continue(()))
        })
    }

    /// Which engine this connection belongs to, for the few statements
    /// that exist on one of them only.
    pub fn engine(&self) -> Engine {
        match self.link {
            Link::Sqlite(_) => Engine::Sqlite,
            Link::Postgres(_) => Engine::Postgres,
        }
    }
}

/// The two database engines herald runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

impl Engine {
    /// Whether several herald instances may run on one database: on
    /// PostgreSQL yes; an SQLite file has one server, so whatever another
    /// process claimed in it belongs to a process that is gone.
    pub fn is_shared(self) -> bool {
        self == Engine::Postgres
    }

    /// The clause that ends a claiming `SELECT`: rows locked by another
    /// transaction are left to it rather than waited for (PostgreSQL's
    /// `FOR UPDATE OF table SKIP LOCKED`); nothing on SQLite, whose one
    /// writer never meets another.
    pub fn skip_locked(self, table: &str) -> String {
        match self {
            Engine::Sqlite => String::new(),
            Engine::Postgres => format!(" FOR UPDATE OF {table} SKIP LOCKED"),
        }
    }
}

/// The write transaction `Store::write` runs its closure in; reads as a
/// `Conn` too. Committed or rolled back by `Store::write`, never here.
pub struct Tx<'a> {
    conn: Conn<'a>,
}

impl<'a> Tx<'a> {
    pub(super) fn new(link: Link<'a>, clock: &'a Clock) -> Tx<'a> {
        Tx {
            conn: Conn::new(link, clock),
        }
    }

    /// Runs one statement; how many rows it changed.
    pub fn execute(&self, sql: &str, args: &[&dyn Arg]) -> StoreResult<usize> {
        match self.conn.link {
            Link::Sqlite(c) => sqlite::execute(c, sql, args),
            Link::Postgres(s) => postgres_engine::execute(s, sql, args),
        }
    }

    /// Runs one INSERT of a row whose key the database generates: the new
    /// row's key, or None when a conflict skipped it (`ON CONFLICT DO
    /// NOTHING`). The one place engines differ on how an insert hands back
    /// its key.
    pub fn insert(&self, sql: &str, args: &[&dyn Arg]) -> StoreResult<Option<i64>> {
        match self.conn.link {
            Link::Sqlite(c) => sqlite::insert(c, sql, args),
            Link::Postgres(s) => postgres_engine::insert(s, sql, args),
        }
    }

    /// Tells every instance listening on `channel` (see `Store::listen`)
    /// about `payload` when, and only if, this transaction commits. Nothing
    /// on SQLite: no other instance shares the file.
    pub fn notify(&self, channel: &str, payload: &str) -> StoreResult<()> {
        if let Link::Postgres(s) = self.conn.link {
            postgres_engine::rows(
                s,
                "SELECT pg_notify(?1, ?2)",
                &[&channel as &dyn Arg, &payload],
                &mut |_| Ok(ControlFlow::Continue(())),
            )?;
        }
        Ok(())
    }

    /// Makes the transactions that call this with the same `key` run one
    /// after another, each to its commit (PostgreSQL's transaction-level
    /// advisory lock); SQLite's single writer already does.
    pub fn exclusive(&self, key: i64) -> StoreResult<()> {
        if let Link::Postgres(s) = self.conn.link {
            postgres_engine::rows(
                s,
                "SELECT pg_advisory_xact_lock(?1)",
                &[&key as &dyn Arg],
                &mut |_| Ok(ControlFlow::Continue(())),
            )?;
        }
        Ok(())
    }

    /// Starts the savepoint a group commit runs one caller's work in.
    pub(super) fn savepoint(&self) -> StoreResult<()> {
        self.batch("SAVEPOINT herald_work")
    }

    /// Keeps the work done since `savepoint`.
    pub(super) fn release_savepoint(&self) -> StoreResult<()> {
        self.batch("RELEASE herald_work")
    }

    /// Undoes the work done since `savepoint`, and ends it.
    pub(super) fn rollback_to_savepoint(&self) -> StoreResult<()> {
        self.batch("ROLLBACK TO herald_work; RELEASE herald_work")
    }

    fn batch(&self, sql: &str) -> StoreResult<()> {
        match self.conn.link {
            Link::Sqlite(c) => c.execute_batch(sql).map_err(StoreError::from),
            Link::Postgres(s) => s.borrow_mut().savepoint_batch(sql),
        }
    }

    /// `insert` of a row that is always written: its key.
    pub fn insert_one(&self, sql: &str, args: &[&dyn Arg]) -> StoreResult<i64> {
        self.insert(sql, args)?
            .ok_or_else(|| StoreError::Database(format!("no row inserted by {sql}")))
    }
}

impl<'a> Deref for Tx<'a> {
    type Target = Conn<'a>;

    fn deref(&self) -> &Conn<'a> {
        &self.conn
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::args;
    use crate::store::{Store, Synchronous};

    #[test]
    fn values_round_trip_and_type_mismatches_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db"), Synchronous::Normal).unwrap();
        let blob = vec![0u8, 255];
        let row = store
            .write(|tx| {
                tx.query_one(
                    "SELECT ?1, ?2, ?3, ?4, ?5, ?6",
                    args![7i64, "text", 1.5f64, blob, None::<i64>, true],
                    |r| {
                        Ok((
                            r.get::<i64>(0)?,
                            r.get::<String>(1)?,
                            r.get::<f64>(2)?,
                            r.get::<Vec<u8>>(3)?,
                            r.get::<Option<i64>>(4)?,
                            r.get::<bool>(5)?,
                        ))
                    },
                )
            })
            .unwrap();
        assert_eq!(row, (7, "text".into(), 1.5, vec![0, 255], None, true));
        let wrong = store.read(|c| c.query_one("SELECT 'x'", args![], |r| r.get::<i64>(0)));
        assert!(matches!(wrong, Err(StoreError::Database(_))), "{wrong:?}");
        let none = store.read(|c| c.query_one("SELECT 1 WHERE 0", args![], |r| r.get::<i64>(0)));
        assert!(matches!(none, Err(StoreError::NotFound)), "{none:?}");
        let negative = store.read(|c| c.query_one("SELECT -1", args![], |r| r.get::<u32>(0)));
        assert!(matches!(negative, Err(StoreError::Database(_))));
    }
}
