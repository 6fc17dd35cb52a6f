//! The database a test server (or herald run in-process) runs on. The
//! suite runs on SQLite (a file in a temporary directory) unless
//! `HERALD_TEST_ENGINE=postgres`: then each server gets a fresh database on
//! the PostgreSQL server that `HERALD_TEST_DATABASE_URL` names, dropped
//! when the test ends. Tests of several instances need PostgreSQL whatever
//! the suite's engine, and are skipped with a notice when no server is
//! named; tests about the SQLite file itself skip on PostgreSQL
//! (`sqlite_only`).

use std::sync::atomic::{AtomicU64, Ordering};

use herald::store::{with_database, Arg, Database, Row, Store, StoreResult, Synchronous};
use herald::time::Clock;
use postgres::NoTls;

use super::server::TestServer;

/// The variable that names a PostgreSQL server for the tests (its database
/// is only used to create and drop the tests' own).
pub const DATABASE_URL_ENV: &str = "HERALD_TEST_DATABASE_URL";
/// `postgres` runs the whole suite on PostgreSQL.
pub const ENGINE_ENV: &str = "HERALD_TEST_ENGINE";

/// True when the suite runs on PostgreSQL.
pub fn on_postgres() -> bool {
    match std::env::var(ENGINE_ENV).as_deref() {
        Ok("postgres" | "postgresql") => {
            assert!(
                postgres_server().is_some(),
                "{ENGINE_ENV}=postgres needs {DATABASE_URL_ENV} (e.g. postgres://postgres@127.0.0.1:5432/postgres)"
            );
            true
        }
        Ok("" | "sqlite") | Err(_) => false,
        Ok(other) => panic!("{ENGINE_ENV}={other:?}: expected sqlite or postgres"),
    }
}

/// The PostgreSQL server named by `HERALD_TEST_DATABASE_URL`, if any.
pub fn postgres_server() -> Option<String> {
    std::env::var(DATABASE_URL_ENV)
        .ok()
        .filter(|u| !u.is_empty())
}

/// The server for a test that needs PostgreSQL whatever the suite's engine;
/// None, after printing why, when there is none (the test then passes
/// without running: `cargo test` on a machine without PostgreSQL).
pub fn postgres_or_skip(test: &str) -> Option<String> {
    let server = postgres_server();
    if server.is_none() {
        eprintln!("NOTICE: {test} skipped: it needs PostgreSQL; set {DATABASE_URL_ENV} to run it");
    }
    server
}

/// True, after printing why, when a test about the SQLite file itself
/// (backups, WAL, migrations of old files) runs in a PostgreSQL suite.
pub fn sqlite_only(test: &str) -> bool {
    let skip = on_postgres();
    if skip {
        eprintln!("NOTICE: {test} skipped on PostgreSQL: it is about the SQLite file");
    }
    skip
}

impl TestServer {
    /// The server's database through herald's own storage layer, on
    /// either engine: `store().read(|c| c.query_all(...))`, `write` for what
    /// the API must not allow or cannot do. SQL is herald's dialect (`?N`).
    pub fn store(&self) -> &Store {
        self.store.get_or_init(|| {
            let database = match &self.postgres {
                Some(db) => Database::Postgres(db.url.clone()),
                None => Database::File(self.db_path.clone()),
            };
            Store::connect(&database, Synchronous::Normal, Clock::system())
                .unwrap_or_else(|e| self.fail(&format!("open {database}: {e}")))
        })
    }

    /// Where the server keeps its data, for messages: the SQLite file or
    /// the PostgreSQL database's URL.
    pub fn database(&self) -> String {
        match &self.postgres {
            Some(db) => db.url.clone(),
            None => self.db_path.display().to_string(),
        }
    }

    /// True when this server runs on PostgreSQL.
    pub fn on_postgres(&self) -> bool {
        self.postgres.is_some()
    }

    /// Runs a `SELECT COUNT(*) ...` (or any single-integer query).
    pub fn count(&self, sql: &str) -> i64 {
        self.store()
            .read(|c| c.query_one(sql, herald::args![], |r| r.get::<i64>(0)))
            .unwrap_or_else(|e| self.fail(&format!("query `{sql}`: {e}")))
    }

    /// Every row `sql` returns, each mapped by `f`.
    pub fn rows<T>(
        &self,
        sql: &str,
        args: &[&dyn Arg],
        f: impl FnMut(&Row<'_>) -> StoreResult<T>,
    ) -> Vec<T> {
        self.store()
            .read(|c| c.query_all(sql, args, f))
            .unwrap_or_else(|e| self.fail(&format!("query `{sql}`: {e}")))
    }

    /// The one row `sql` returns, mapped by `f`.
    pub fn row<T>(
        &self,
        sql: &str,
        args: &[&dyn Arg],
        f: impl FnOnce(&Row<'_>) -> StoreResult<T>,
    ) -> T {
        self.store()
            .read(|c| c.query_one(sql, args, f))
            .unwrap_or_else(|e| self.fail(&format!("query `{sql}`: {e}")))
    }

    /// Runs one statement the API would not (a raw write); rows changed.
    pub fn execute(&self, sql: &str, args: &[&dyn Arg]) -> usize {
        self.store()
            .write(|tx| tx.execute(sql, args))
            .unwrap_or_else(|e| self.fail(&format!("execute `{sql}`: {e}")))
    }
}

/// A database for a test that runs herald in-process: an SQLite file in a
/// temporary directory, or a fresh PostgreSQL database when the suite runs
/// on PostgreSQL. Removed when dropped.
pub struct TestDatabase {
    pub database: Database,
    _dir: tempfile::TempDir,
    _postgres: Option<PgDatabase>,
}

impl TestDatabase {
    pub fn new() -> TestDatabase {
        let dir = tempfile::tempdir().expect("create temp dir for the test database");
        let postgres = on_postgres()
            .then(|| PgDatabase::create(&postgres_server().expect("checked by on_postgres")));
        let database = match &postgres {
            Some(db) => Database::Postgres(db.url.clone()),
            None => Database::File(dir.path().join("herald.db")),
        };
        TestDatabase {
            database,
            _dir: dir,
            _postgres: postgres,
        }
    }

    /// herald's store on it, migrated.
    pub fn open(&self) -> Store {
        Store::connect(&self.database, Synchronous::Normal, Clock::system())
            .unwrap_or_else(|e| panic!("open {}: {e}", self.database))
    }
}

/// A database of its own on the test server, dropped with this value.
pub struct PgDatabase {
    pub url: String,
    name: String,
    server: String,
}

impl PgDatabase {
    pub fn create(server: &str) -> PgDatabase {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "herald_it_{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            super::server::random_hex(3)
        );
        admin(server)
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name} on {server}: {e}"));
        PgDatabase {
            url: with_database(server, &name),
            name,
            server: server.to_string(),
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        // FORCE: a killed server's sessions may linger a moment.
        let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(e) = admin(&self.server).batch_execute(&drop) {
            eprintln!("warning: {drop}: {e}");
        }
    }
}

fn admin(server: &str) -> postgres::Client {
    postgres::Client::connect(server, NoTls)
        .unwrap_or_else(|e| panic!("connect to {DATABASE_URL_ENV}={server}: {e}"))
}
