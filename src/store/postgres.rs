//! The second engine: PostgreSQL, for deployments that outgrow one file or
//! run several herald instances on one database. Every write transaction is
//! SERIALIZABLE and is run again, whole, when PostgreSQL reports a
//! serialization failure or a deadlock: the outcome is always that of some
//! one-at-a-time order, as on SQLite's single writer, so every check-then-
//! write herald does stays exact across connections and instances.
//!
//! herald's SQL is written once, with SQLite's `?N` placeholders; this
//! module is where it becomes PostgreSQL's (`$N`, hints dropped, `RETURNING`
//! for new keys), once per statement and connection.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;
use postgres::fallible_iterator::FallibleIterator;

use postgres::error::SqlState;
use postgres::{Client, NoTls, Statement};
use r2d2_postgres::PostgresConnectionManager;

use super::error::{StoreError, StoreResult};
use super::migrate;
use super::postgres_sql::{inserted_table, redact, translate};
use super::postgres_types::{params, values};
use super::value::Arg;

/// How long a caller waits for a pooled connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Times a write transaction is run in all when it keeps conflicting: with
/// the pauses between them, about half a second of trying.
const MAX_ATTEMPTS: u32 = 32;
/// Statements a connection keeps prepared; herald's own are far fewer.
const STATEMENT_CACHE: usize = 512;

/// What `Store::listen` hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// A `Tx::notify` of a committed transaction, this process's included.
    Message { channel: String, payload: String },
    /// The connection was lost and made again: messages sent meanwhile
    /// were missed.
    Gap,
}

pub(super) struct Postgres {
    pool: r2d2::Pool<Manager>,
    /// For connections of their own (`listen`).
    config: postgres::Config,
    /// The URL without its password, for messages.
    pub(super) shown: String,
}

impl Postgres {
    /// Connects to the database at `url` and applies pending migrations.
    pub(super) fn open(url: &str) -> StoreResult<Postgres> {
        let mut config: postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Pool(format!("{}: {e}", redact(url))))?;
        if config.get_application_name().is_none() {
            config.application_name("herald");
        }
        config.connect_timeout(CONNECT_TIMEOUT);
        let mut client = config
            .connect(NoTls)
            .map_err(|e| StoreError::Pool(format!("cannot connect to {}: {e}", redact(url))))?;
        migrate::apply_postgres(&mut client)?;
        let keys = Arc::new(identity_columns(&mut client)?);
        drop(client);
        let manager = Manager {
            inner: PostgresConnectionManager::new(config.clone(), NoTls),
            keys,
        };
        let pool = r2d2::Pool::builder()
            .max_size(16)
            .min_idle(Some(2))
            // A check on every checkout would double the round trips; a
            // closed connection is found by `has_broken` instead, and a
            // statement on a dead one fails and is retried by its caller.
            .test_on_check_out(false)
            .connection_timeout(CONNECT_TIMEOUT)
            .build(manager)?;
        Ok(Postgres {
            pool,
            config,
            shown: redact(url),
        })
    }

    fn session(&self) -> StoreResult<r2d2::PooledConnection<Manager>> {
        let conn = self.pool.get()?;
        // A closure that panicked mid-transaction left it open: end it
        // before anyone else uses the connection.
        conn.borrow_mut().end("ROLLBACK")?;
        Ok(conn)
    }

    /// Runs `f` in a SERIALIZABLE transaction and commits when it returns
    /// `Ok`; runs it again from the start when PostgreSQL refused it for a
    /// conflict with another transaction. `f` must therefore have no effect
    /// but its SQL, which is already herald's rule for write closures.
    pub(super) fn write<T, E>(
        &self,
        mut f: impl FnMut(&RefCell<Session>) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let conn = self.session()?;
        let mut attempt = 1;
        loop {
            conn.borrow_mut()
                .begin("BEGIN ISOLATION LEVEL SERIALIZABLE")?;
            let result = f(&conn);
            let ended = match &result {
                Ok(_) => conn.borrow_mut().end("COMMIT"),
                Err(_) => conn.borrow_mut().end("ROLLBACK"),
            };
            let conflicted = std::mem::take(&mut conn.borrow_mut().conflicted);
            if conflicted && attempt < MAX_ATTEMPTS {
                // Back off a random while, growing: transactions that keep
                // colliding drift apart instead of meeting again.
                let most = 100u64 << attempt.min(8);
                let jitter = getrandom::u64().map_or(most / 2, |r| r % most);
                std::thread::sleep(Duration::from_micros(jitter));
                attempt += 1;
                continue;
            }
            ended?;
            return result;
        }
    }

    /// `f` on a pooled connection, inside one read-only REPEATABLE READ
    /// transaction (one snapshot) when `snapshot`.
    pub(super) fn read<T, E>(
        &self,
        snapshot: bool,
        f: impl FnOnce(&RefCell<Session>) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let conn = self.session()?;
        if !snapshot {
            return f(&conn);
        }
        conn.borrow_mut()
            .begin("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")?;
        let result = f(&conn);
        conn.borrow_mut().end("ROLLBACK")?;
        result
    }
}

impl Postgres {
    /// Hears `channels` on a connection of its own, on a thread that runs
    /// until `stop` is set and it hears a message (or a minute passes).
    /// When the connection drops it connects again and reports
    /// `Heard::Gap`: what was sent meanwhile is lost.
    pub(super) fn listen(
        &self,
        channels: &[&str],
        heard: Sender<Heard>,
        stop: Arc<AtomicBool>,
    ) -> StoreResult<()> {
        let listen: String = channels.iter().map(|c| format!("LISTEN {c};")).collect();
        let config = self.config.clone();
        let shown = self.shown.clone();
        std::thread::Builder::new()
            .name("herald-listen".into())
            .spawn(move || {
                let mut first = true;
                while !stop.load(Ordering::Relaxed) {
                    let mut client = match config.connect(NoTls).and_then(|mut c| {
                        c.batch_execute(&listen)?;
                        Ok(c)
                    }) {
                        Ok(client) => client,
                        Err(e) => {
                            log::warn!("cannot listen on {shown}: {e}; trying again");
                            std::thread::sleep(LISTEN_RETRY);
                            continue;
                        }
                    };
                    if !std::mem::take(&mut first) && heard.send(Heard::Gap).is_err() {
                        return;
                    }
                    while !stop.load(Ordering::Relaxed) {
                        let mut notifications = client.notifications();
                        let next = notifications.timeout_iter(LISTEN_POLL).next();
                        match next {
                            Ok(Some(n)) => {
                                let message = Heard::Message {
                                    channel: n.channel().to_string(),
                                    payload: n.payload().to_string(),
                                };
                                if heard.send(message).is_err() {
                                    return;
                                }
                            }
                            Ok(None) => {}
                            Err(e) => {
                                log::warn!("lost the listening connection to {shown}: {e}");
                                break;
                            }
                        }
                    }
                }
            })
            .map_err(|e| StoreError::Pool(format!("cannot start the listening thread: {e}")))?;
        Ok(())
    }
}

/// How long the listening thread waits for a message before it looks
/// whether it should stop: long, so that an idle server stays asleep; a
/// stopping instance wakes it with a message of its own.
const LISTEN_POLL: Duration = Duration::from_secs(60);
/// The pause before connecting again after the listening connection failed.
const LISTEN_RETRY: Duration = Duration::from_secs(1);

/// A pooled connection with its prepared statements.
pub(super) struct Session {
    client: Client,
    statements: HashMap<String, Statement>,
    /// `Tx::insert`'s statements, with `RETURNING` their table's key.
    inserts: HashMap<String, Statement>,
    /// Each table's identity column, for `insert`.
    keys: Arc<HashMap<String, String>>,
    in_transaction: bool,
    /// A statement failed because of another transaction; `write` retries.
    conflicted: bool,
    /// A statement of the open transaction failed. PostgreSQL then refuses
    /// the rest and turns COMMIT into a rollback that reports success, so
    /// `end` refuses to call that a commit.
    failed: bool,
}

impl Session {
    fn begin(&mut self, sql: &str) -> StoreResult<()> {
        self.client.batch_execute(sql).map_err(|e| self.error(e))?;
        self.in_transaction = true;
        self.failed = false;
        Ok(())
    }

    /// COMMIT or ROLLBACK, if a transaction is open. A COMMIT after a
    /// failed statement rolls back and says so.
    fn end(&mut self, sql: &str) -> StoreResult<()> {
        if !std::mem::take(&mut self.in_transaction) {
            return Ok(());
        }
        if sql == "COMMIT" && std::mem::take(&mut self.failed) {
            self.client
                .batch_execute("ROLLBACK")
                .map_err(|e| self.error(e))?;
            return Err(StoreError::Database(
                "a statement of the transaction failed; it was rolled back".into(),
            ));
        }
        self.client.batch_execute(sql).map_err(|e| self.error(e))
    }

    /// A savepoint's statements (see `Tx::savepoint`). Rolling back to
    /// one makes the transaction usable again after a failed statement.
    pub(super) fn savepoint_batch(&mut self, sql: &str) -> StoreResult<()> {
        self.client.batch_execute(sql).map_err(|e| self.error(e))?;
        if sql.starts_with("ROLLBACK TO") {
            self.failed = false;
        }
        Ok(())
    }

    /// `sql` prepared in PostgreSQL's dialect, with `RETURNING returning`
    /// when given; cached apart, since the same text may also run plainly.
    fn prepared(&mut self, sql: &str, returning: Option<&str>) -> StoreResult<Statement> {
        let cached = match returning {
            None => &self.statements,
            Some(_) => &self.inserts,
        };
        if let Some(stmt) = cached.get(sql) {
            return Ok(stmt.clone());
        }
        let mut text = translate(sql);
        if let Some(key) = returning {
            text.push_str(" RETURNING ");
            text.push_str(key);
        }
        let stmt = self.client.prepare(&text).map_err(|e| self.error(e))?;
        let cache = match returning {
            None => &mut self.statements,
            Some(_) => &mut self.inserts,
        };
        if cache.len() >= STATEMENT_CACHE {
            cache.clear();
        }
        cache.insert(sql.to_string(), stmt.clone());
        Ok(stmt)
    }

    fn query(&mut self, sql: &str, args: &[&dyn Arg]) -> StoreResult<Vec<postgres::Row>> {
        let stmt = self.prepared(sql, None)?;
        let values = values(args);
        self.client
            .query(&stmt, &params(&values))
            .map_err(|e| self.error(e))
    }

    fn execute(&mut self, sql: &str, args: &[&dyn Arg]) -> StoreResult<usize> {
        let stmt = self.prepared(sql, None)?;
        let values = values(args);
        let changed = self
            .client
            .execute(&stmt, &params(&values))
            .map_err(|e| self.error(e))?;
        Ok(changed as usize)
    }

    fn insert(&mut self, sql: &str, args: &[&dyn Arg]) -> StoreResult<Option<i64>> {
        let stmt = match self.inserts.get(sql) {
            Some(stmt) => stmt.clone(),
            None => {
                let table = inserted_table(sql)
                    .ok_or_else(|| StoreError::Database(format!("not an INSERT: {sql}")))?;
                let key = self.keys.get(table).cloned().ok_or_else(|| {
                    StoreError::Database(format!("table {table} has no generated key"))
                })?;
                self.prepared(sql, Some(&key))?
            }
        };
        let values = values(args);
        let row = self
            .client
            .query_opt(&stmt, &params(&values))
            .map_err(|e| self.error(e))?;
        row.map(|r| r.try_get::<_, i64>(0).map_err(StoreError::from))
            .transpose()
    }

    /// Classifies a driver error, noting conflicts for `write`.
    fn error(&mut self, e: postgres::Error) -> StoreError {
        self.failed |= self.in_transaction;
        let code = e.code();
        if code == Some(&SqlState::T_R_SERIALIZATION_FAILURE)
            || code == Some(&SqlState::T_R_DEADLOCK_DETECTED)
        {
            self.conflicted = true;
        }
        StoreError::from(e)
    }
}

/// Calls `f` on each row `sql` returns until it says stop. The rows are
/// fetched first, so `f` may run statements of its own on the connection.
pub(super) fn rows(
    session: &RefCell<Session>,
    sql: &str,
    args: &[&dyn Arg],
    f: &mut dyn FnMut(&postgres::Row) -> StoreResult<ControlFlow<()>>,
) -> StoreResult<()> {
    let rows = session.borrow_mut().query(sql, args)?;
    for row in &rows {
        if f(row)?.is_break() {
            break;
        }
    }
    Ok(())
}

pub(super) fn execute(
    session: &RefCell<Session>,
    sql: &str,
    args: &[&dyn Arg],
) -> StoreResult<usize> {
    session.borrow_mut().execute(sql, args)
}

/// The new row's key, handed back by `RETURNING` on the table's identity
/// column; None when `ON CONFLICT DO NOTHING` skipped the row.
pub(super) fn insert(
    session: &RefCell<Session>,
    sql: &str,
    args: &[&dyn Arg],
) -> StoreResult<Option<i64>> {
    session.borrow_mut().insert(sql, args)
}

/// Each table's identity column (the schema's generated keys).
fn identity_columns(client: &mut Client) -> StoreResult<HashMap<String, String>> {
    let rows = client.query(
        "SELECT table_name::text, column_name::text FROM information_schema.columns
         WHERE table_schema = current_schema() AND is_identity = 'YES'",
        &[],
    )?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

/// r2d2_postgres's manager, with each connection's statement cache beside it.
struct Manager {
    inner: PostgresConnectionManager<NoTls>,
    keys: Arc<HashMap<String, String>>,
}

impl r2d2::ManageConnection for Manager {
    type Connection = RefCell<Session>;
    type Error = postgres::Error;

    fn connect(&self) -> Result<RefCell<Session>, postgres::Error> {
        Ok(RefCell::new(Session {
            client: self.inner.connect()?,
            statements: HashMap::new(),
            inserts: HashMap::new(),
            keys: self.keys.clone(),
            in_transaction: false,
            conflicted: false,
            failed: false,
        }))
    }

    fn is_valid(&self, conn: &mut RefCell<Session>) -> Result<(), postgres::Error> {
        self.inner.is_valid(&mut conn.get_mut().client)
    }

    fn has_broken(&self, conn: &mut RefCell<Session>) -> bool {
        conn.get_mut().client.is_closed()
    }
}

/// A PostgreSQL database for the store's unit tests.
#[cfg(test)]
pub(super) mod testing {
    use postgres::{Client, NoTls};

    use crate::store::{with_database, Database, Store, Synchronous};
    use crate::time::Clock;

    /// A store on a database of its own on the server
    /// `HERALD_TEST_DATABASE_URL` names, dropped afterwards.
    pub struct TestDb {
        store: Option<Store>,
        server: String,
        name: String,
    }

    impl TestDb {
        /// None, after a notice, without a server to run on.
        pub fn create(test: &str) -> Option<TestDb> {
            let Some(server) = std::env::var("HERALD_TEST_DATABASE_URL").ok() else {
                eprintln!("NOTICE: {test} skipped: set HERALD_TEST_DATABASE_URL to run it");
                return None;
            };
            let name = format!("herald_unit_{}_{}", std::process::id(), test);
            let mut admin = Client::connect(&server, NoTls).unwrap();
            for sql in [
                format!("DROP DATABASE IF EXISTS {name}"),
                format!("CREATE DATABASE {name}"),
            ] {
                admin.batch_execute(&sql).unwrap();
            }
            let url = with_database(&server, &name);
            let store = Store::connect(
                &Database::Postgres(url),
                Synchronous::Normal,
                Clock::system(),
            );
            Some(TestDb {
                store: Some(store.unwrap()),
                server,
                name,
            })
        }

        pub fn store(&self) -> &Store {
            self.store.as_ref().unwrap()
        }
    }

    impl Drop for TestDb {
        fn drop(&mut self) {
            self.store.take();
            if let Ok(mut admin) = Client::connect(&self.server, NoTls) {
                let _ = admin.batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::TestDb;
    use super::*;
    use crate::args;

    #[test]
    fn values_round_trip_through_postgresql_and_mismatches_are_errors() {
        let Some(db) = TestDb::create("round_trip") else {
            return;
        };
        let blob = vec![0u8, 255];
        let row = db
            .store()
            .write(|tx| {
                tx.query_one(
                    "SELECT CAST(?1 AS BIGINT), CAST(?2 AS TEXT), CAST(?3 AS DOUBLE PRECISION),
                            CAST(?4 AS BYTEA), CAST(?5 AS BIGINT), CAST(?6 AS BOOLEAN),
                            SUM(x), CAST(?7 AS INTEGER)
                     FROM (VALUES (CAST(2 AS BIGINT)), (3)) AS t (x)",
                    args![7i64, "text", 1.5f64, blob, None::<i64>, true, 5i64],
                    |r| {
                        Ok((
                            r.get::<i64>(0)?,
                            r.get::<String>(1)?,
                            r.get::<f64>(2)?,
                            r.get::<Vec<u8>>(3)?,
                            r.get::<Option<i64>>(4)?,
                            r.get::<bool>(5)?,
                            r.get::<i64>(6)?,
                            r.get::<i64>(7)?,
                        ))
                    },
                )
            })
            .unwrap();
        assert_eq!(row, (7, "text".into(), 1.5, vec![0, 255], None, true, 5, 5));
        let read = |sql: &str| {
            db.store()
                .read(|c| c.query_one(sql, args![], |r| r.get::<i64>(0)))
        };
        assert!(matches!(read("SELECT 'x'"), Err(StoreError::Database(_))));
        assert!(matches!(
            read("SELECT 1 WHERE false"),
            Err(StoreError::NotFound)
        ));
        let too_big = db.store().read(|c| {
            c.query_one("SELECT CAST(?1 AS INTEGER)", args![i64::MAX], |r| {
                r.get::<i64>(0)
            })
        });
        assert!(
            matches!(too_big, Err(StoreError::Database(_))),
            "{too_big:?}"
        );
    }

    /// Read, then write what was read plus one, from eight threads at once:
    /// under READ COMMITTED most increments would be lost. SERIALIZABLE
    /// refuses the conflicting ones and `write` runs them again.
    #[test]
    fn concurrent_read_then_write_transactions_lose_no_update() {
        let Some(db) = TestDb::create("lost_updates") else {
            return;
        };
        let store = db.store();
        store
            .write(|tx| {
                tx.execute("CREATE TABLE counter (n BIGINT NOT NULL)", args![])?;
                tx.execute("INSERT INTO counter (n) VALUES (0)", args![])
            })
            .unwrap();
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..25 {
                        store
                            .write(|tx| {
                                let n: i64 =
                                    tx.query_one("SELECT n FROM counter", args![], |r| r.get(0))?;
                                tx.execute("UPDATE counter SET n = ?1", args![n + 1])
                            })
                            .unwrap();
                    }
                });
            }
        });
        let n: i64 = store
            .read(|c| c.query_one("SELECT n FROM counter", args![], |r| r.get(0)))
            .unwrap();
        assert_eq!(n, 200);
    }

    /// The same INSERT text run plainly and then through `Tx::insert`
    /// is two statements: the second still hands back the new key.
    #[test]
    fn an_insert_run_plainly_first_still_hands_back_its_key() {
        let Some(db) = TestDb::create("insert_after_execute") else {
            return;
        };
        let sql = "INSERT INTO organizations (id, name, created_at) VALUES (?1, 'o', 0)";
        let audit = "INSERT INTO audit_log (org_id, action, subject_type, subject_id, created_at)
                     VALUES ('o1', 'a', 's', 'x', 0)";
        let keys = db
            .store()
            .write(|tx| {
                tx.execute(sql, args!["o1"])?;
                tx.execute(audit, args![])?;
                Ok::<_, StoreError>((tx.insert(audit, args![])?, tx.insert(audit, args![])?))
            })
            .unwrap();
        assert_eq!(keys, (Some(2), Some(3)));
    }

    /// PostgreSQL answers COMMIT after a failed statement by rolling back
    /// and reporting success; a closure that ignored the failure must not
    /// be told its writes were committed.
    #[test]
    fn a_transaction_with_a_failed_statement_is_not_committed() {
        let Some(db) = TestDb::create("failed_statement") else {
            return;
        };
        let insert =
            "INSERT INTO users (id, email, created_at, updated_at) VALUES (?1, 'a@b.c', 0, 0)";
        let committed = db.store().write(|tx| {
            tx.execute(insert, args!["u1"])?;
            let _ignored = tx.execute(insert, args!["u1"]);
            Ok::<_, StoreError>(())
        });
        assert!(
            matches!(committed, Err(StoreError::Database(_))),
            "{committed:?}"
        );
        let users: i64 = db
            .store()
            .read(|c| c.query_one("SELECT COUNT(*) FROM users", args![], |r| r.get(0)))
            .unwrap();
        assert_eq!(users, 0);
    }
}
