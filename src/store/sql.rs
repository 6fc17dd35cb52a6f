//! herald's own face of a database connection: the only types the modules
//! that own tables use to run SQL. Arguments and columns travel as engine-
//! neutral `Value`s, so no driver type or error crosses this boundary, and a
//! second engine can sit behind the same methods. Writes exist only on `Tx`,
//! which only `Store::write` hands out: every write is inside a transaction.

use std::ops::Deref;

use super::error::{StoreError, StoreResult};
use crate::time::Clock;

/// One SQL argument or column value, borrowed where it can be.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(&'a str),
    Blob(&'a [u8]),
}

/// Something that can be bound to a `?N` placeholder.
pub trait Arg {
    fn value(&self) -> Value<'_>;
}

/// `args![a, b]`: the arguments of one statement, in placeholder order.
#[macro_export]
macro_rules! args {
    () => { &[] as &[&dyn $crate::store::Arg] };
    ($($a:expr),+ $(,)?) => { &[$(&$a as &dyn $crate::store::Arg),+] as &[&dyn $crate::store::Arg] };
}

impl<T: Arg + ?Sized> Arg for &T {
    fn value(&self) -> Value<'_> {
        (**self).value()
    }
}

impl<T: Arg> Arg for Option<T> {
    fn value(&self) -> Value<'_> {
        self.as_ref().map_or(Value::Null, Arg::value)
    }
}

impl Arg for str {
    fn value(&self) -> Value<'_> {
        Value::Text(self)
    }
}

impl Arg for String {
    fn value(&self) -> Value<'_> {
        Value::Text(self)
    }
}

impl Arg for [u8] {
    fn value(&self) -> Value<'_> {
        Value::Blob(self)
    }
}

impl Arg for Vec<u8> {
    fn value(&self) -> Value<'_> {
        Value::Blob(self)
    }
}

impl Arg for bool {
    fn value(&self) -> Value<'_> {
        Value::Int(i64::from(*self))
    }
}

impl Arg for f64 {
    fn value(&self) -> Value<'_> {
        Value::Real(*self)
    }
}

macro_rules! int_arg {
    ($($t:ty),*) => {$(
        impl Arg for $t {
            fn value(&self) -> Value<'_> {
                // Counts and ids past i64::MAX do not occur; saturate rather than wrap.
                Value::Int(i64::try_from(*self).unwrap_or(i64::MAX))
            }
        }
    )*};
}
int_arg!(i64, i32, u32, u64, usize);

/// A column type a row can be read into.
pub trait Column: Sized {
    /// None when the stored value has another type.
    fn from_value(v: Value<'_>) -> Option<Self>;
}

impl<T: Column> Column for Option<T> {
    fn from_value(v: Value<'_>) -> Option<Self> {
        match v {
            Value::Null => Some(None),
            v => T::from_value(v).map(Some),
        }
    }
}

impl Column for String {
    fn from_value(v: Value<'_>) -> Option<Self> {
        match v {
            Value::Text(s) => Some(s.to_string()),
            _ => None,
        }
    }
}

impl Column for Vec<u8> {
    fn from_value(v: Value<'_>) -> Option<Self> {
        match v {
            Value::Blob(b) => Some(b.to_vec()),
            Value::Text(s) => Some(s.as_bytes().to_vec()),
            _ => None,
        }
    }
}

impl Column for f64 {
    fn from_value(v: Value<'_>) -> Option<Self> {
        match v {
            Value::Real(x) => Some(x),
            Value::Int(i) => Some(i as f64),
            _ => None,
        }
    }
}

impl Column for bool {
    fn from_value(v: Value<'_>) -> Option<Self> {
        match v {
            Value::Int(i) => Some(i != 0),
            _ => None,
        }
    }
}

macro_rules! int_column {
    ($($t:ty),*) => {$(
        impl Column for $t {
            fn from_value(v: Value<'_>) -> Option<Self> {
                match v {
                    Value::Int(i) => <$t>::try_from(i).ok(),
                    _ => None,
                }
            }
        }
    )*};
}
int_column!(i64, i32, u32, u64, usize);

/// One result row; columns by position.
pub struct Row<'r> {
    inner: &'r rusqlite::Row<'r>,
}

impl Row<'_> {
    /// A text column without copying it; None when it holds no text.
    pub fn text(&self, idx: usize) -> StoreResult<Option<&str>> {
        Ok(self.inner.get_ref(idx)?.as_str().ok())
    }

    pub fn get<T: Column>(&self, idx: usize) -> StoreResult<T> {
        let raw = self.inner.get_ref(idx)?;
        let value = match raw {
            rusqlite::types::ValueRef::Null => Value::Null,
            rusqlite::types::ValueRef::Integer(i) => Value::Int(i),
            rusqlite::types::ValueRef::Real(x) => Value::Real(x),
            rusqlite::types::ValueRef::Text(t) => Value::Text(
                std::str::from_utf8(t)
                    .map_err(|e| StoreError::Database(format!("column {idx}: {e}")))?,
            ),
            rusqlite::types::ValueRef::Blob(b) => Value::Blob(b),
        };
        T::from_value(value).ok_or_else(|| {
            StoreError::Database(format!(
                "column {idx} holds {value:?}, not a {}",
                std::any::type_name::<T>()
            ))
        })
    }
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

/// A connection to read with: a pooled reader, or a write transaction seen
/// through `Tx`. Statements are prepared once per connection and cached.
#[derive(Clone, Copy)]
pub struct Conn<'a> {
    inner: &'a rusqlite::Connection,
    clock: &'a Clock,
}

impl<'a> Conn<'a> {
    pub(super) fn new(inner: &'a rusqlite::Connection, clock: &'a Clock) -> Conn<'a> {
        Conn { inner, clock }
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
        let mut stmt = self.inner.prepare_cached(sql)?;
        let mut rows = stmt.query(bind(args))?;
        match rows.next()? {
            Some(row) => f(&Row { inner: row }).map(Some),
            None => Ok(None),
        }
    }

    /// Every row `sql` returns, each mapped by `f`.
    pub fn query_all<T>(
        &self,
        sql: &str,
        args: &[&dyn Arg],
        mut f: impl FnMut(&Row<'_>) -> StoreResult<T>,
    ) -> StoreResult<Vec<T>> {
        let mut stmt = self.inner.prepare_cached(sql)?;
        let mut rows = stmt.query(bind(args))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(f(&Row { inner: row })?);
        }
        Ok(out)
    }

    /// Calls `f` on each row `sql` returns without collecting them.
    pub fn for_each(
        &self,
        sql: &str,
        args: &[&dyn Arg],
        mut f: impl FnMut(&Row<'_>) -> StoreResult<()>,
    ) -> StoreResult<()> {
        let mut stmt = self.inner.prepare_cached(sql)?;
        let mut rows = stmt.query(bind(args))?;
        while let Some(row) = rows.next()? {
            f(&Row { inner: row })?;
        }
        Ok(())
    }
}

/// The write transaction `Store::write` runs its closure in; reads as a
/// `Conn` too. Committed or rolled back by `Store::write`, never here.
pub struct Tx<'a> {
    conn: Conn<'a>,
}

impl<'a> Tx<'a> {
    pub(super) fn new(tx: &'a rusqlite::Transaction<'_>, clock: &'a Clock) -> Tx<'a> {
        Tx {
            conn: Conn::new(tx, clock),
        }
    }

    /// Runs one statement; how many rows it changed.
    pub fn execute(&self, sql: &str, args: &[&dyn Arg]) -> StoreResult<usize> {
        Ok(self.conn.inner.prepare_cached(sql)?.execute(bind(args))?)
    }

    /// Runs one INSERT of a row whose key is an INTEGER PRIMARY KEY: the new
    /// row's key, or None when a conflict skipped it (`ON CONFLICT DO
    /// NOTHING`). The one place engines differ on how an insert hands back
    /// its key: SQLite reads the connection's last rowid, cheaper than
    /// `RETURNING`, which buffers its rows in a temporary table.
    pub fn insert(&self, sql: &str, args: &[&dyn Arg]) -> StoreResult<Option<i64>> {
        let changed = self.execute(sql, args)?;
        Ok((changed > 0).then(|| self.conn.inner.last_insert_rowid()))
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
