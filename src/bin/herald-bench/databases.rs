//! Where each scenario's database lives: a file in the bench's scratch
//! directory (SQLite, the default), or, with `--database-url`, a database
//! of its own created on that PostgreSQL server for the one scenario (or
//! phase) and dropped when it is done, so every measurement starts from an
//! empty database on either engine.

use std::path::PathBuf;

use herald::store::{with_database, Database};

use crate::db::{self, PgDatabase};

/// The engine the scenarios run on.
pub enum Engine {
    /// SQLite files under the bench's scratch directory.
    Sqlite(PathBuf),
    /// Databases created on the PostgreSQL server this URL reaches.
    Postgres(String),
}

/// A scenario's database, removed with this value: the SQLite file stays in
/// the scratch directory (removed with it at the end); a PostgreSQL
/// database is dropped.
pub struct Fresh {
    pub database: Database,
    _created: Option<PgDatabase>,
}

impl Engine {
    pub fn is_postgres(&self) -> bool {
        matches!(self, Engine::Postgres(_))
    }

    /// The engine's name in the JSON (`sqlite` or `postgres`).
    pub fn name(&self) -> &'static str {
        match self {
            Engine::Sqlite(_) => "sqlite",
            Engine::Postgres(_) => "postgres",
        }
    }

    /// An empty database named after `name` (a scenario or phase): the file
    /// `{name}.db`, or the database `herald_bench_{pid}_{name}`, created
    /// now on the server. herald creates its tables when it first opens it.
    pub fn fresh(&self, name: &str) -> Result<Fresh, String> {
        match self {
            Engine::Sqlite(dir) => Ok(Fresh {
                database: Database::File(dir.join(format!("{name}.db"))),
                _created: None,
            }),
            Engine::Postgres(server) => {
                let db_name = format!("herald_bench_{}_{name}", std::process::id());
                let created = db::create_database(server, &db_name)?;
                Ok(Fresh {
                    database: Database::Postgres(with_database(server, &db_name)),
                    _created: Some(created),
                })
            }
        }
    }
}
