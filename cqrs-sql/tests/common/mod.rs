//! Shared by the tests: a [`TargetHarness`] per database (a fresh database
//! or schema per target, so tests run in parallel), and the PostgreSQL
//! server guard.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use cqrs_core::testing::projections::{HarnessTx, TargetHarness};
use cqrs_core::{BoxError, Storage};
use cqrs_sql::{SqlTarget, SqlTx};
use sqlx::{Any, Postgres, Sqlite};

/// The PostgreSQL server the tests use (`scripts/postgres` starts one).
pub const URL_VAR: &str = "CQRS_POSTGRES_URL";
/// Set: PostgreSQL tests fail, rather than skip, without a server.
pub const REQUIRE_VAR: &str = "CQRS_REQUIRE_POSTGRES";

/// The server's URL, if one is configured.
pub fn postgres_url() -> Option<String> {
    std::env::var(URL_VAR).ok().filter(|url| !url.is_empty())
}

/// Whether PostgreSQL tests can run. Without a server they skip loudly
/// under a plain `cargo test`, and fail under `scripts/test` and in CI.
pub fn postgres_available() -> bool {
    if postgres_url().is_some() {
        return true;
    }
    let required = std::env::var_os(REQUIRE_VAR).is_some() || std::env::var_os("CI").is_some();
    assert!(
        !required,
        "{URL_VAR} is not set, but PostgreSQL tests are required here ({REQUIRE_VAR} or CI is set): \
         run ./scripts/test, or eval \"$(./scripts/postgres)\""
    );
    eprintln!("\n*** SKIPPED: {URL_VAR} is not set, so this PostgreSQL test did not run. ***");
    false
}

/// A random name for a database object of one test.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// Creates a fresh schema on the server at [`postgres_url`]; its name.
pub async fn postgres_schema() -> String {
    let url = postgres_url().expect("checked by postgres_available()");
    let schema = unique("t");
    let admin = sqlx::PgPool::connect(&url).await.expect("PostgreSQL reachable");
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await
        .expect("schema created");
    admin.close().await;
    schema
}

/// The server's URL, on a fresh schema of its own (its `search_path`).
pub async fn postgres_schema_url() -> String {
    let url = postgres_url().expect("checked by postgres_available()");
    let schema = postgres_schema().await;
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}options=-c%20search_path%3D{schema}")
}

/// A pool on a fresh schema of its own (its `search_path`), on the server
/// at [`postgres_url`].
pub async fn postgres_pool() -> sqlx::PgPool {
    let url = postgres_url().expect("checked by postgres_available()");
    let schema = postgres_schema().await;
    let options = sqlx::postgres::PgConnectOptions::from_str(&url)
        .expect("a PostgreSQL URL")
        .options([("search_path", schema.as_str())]);
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await
        .expect("PostgreSQL reachable")
}

/// A URL of a SQLite file in a folder of its own.
pub fn sqlite_file_url() -> String {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("sqlite"));
    std::fs::create_dir_all(&dir).expect("temp folder");
    format!("sqlite://{}", dir.join("read-model.db").display())
}

/// Where the harness's targets live.
#[derive(Debug, Clone, Copy)]
pub enum Place {
    /// A SQLite file, through [`SqlTarget::<Sqlite>::connect`].
    SqliteFile,
    /// An in-memory SQLite database shared by the pool.
    SqliteMemory,
    /// A fresh schema of the PostgreSQL server.
    Postgres,
    /// [`sqlx::Any`] over a SQLite file.
    AnySqlite,
    /// [`sqlx::Any`] over an in-memory SQLite database.
    AnySqliteMemory,
}

/// The conformance suite's tables (text key, integer value), in plain SQL
/// that PostgreSQL and SQLite both run.
pub struct Harness<DB> {
    place: Place,
    _db: std::marker::PhantomData<fn() -> DB>,
}

impl<DB> Harness<DB> {
    pub fn new(place: Place) -> Self {
        Harness {
            place,
            _db: std::marker::PhantomData,
        }
    }
}

/// Whether a failed read means the view does not exist (yet).
fn no_such_table(error: &sqlx::Error) -> bool {
    let text = error.to_string();
    text.contains("no such table")
        || error.as_database_error().and_then(|e| e.code()).as_deref() == Some("42P01")
}

macro_rules! harness {
    ($db:ty, |$place:ident| $target:expr) => {
        #[async_trait]
        impl TargetHarness for Harness<$db> {
            type Target = SqlTarget<$db>;

            async fn target(&self) -> SqlTarget<$db> {
                let $place = self.place;
                $target
            }

            async fn storage(&self) -> Arc<dyn Storage> {
                Arc::new(cqrs_memory::InMemory::new())
            }

            async fn create_table(&self, tx: &mut HarnessTx<Self>, table: &str) -> Result<(), BoxError> {
                let table = tx.table(table)?;
                sqlx::query(&format!(
                    "CREATE TABLE IF NOT EXISTS {table} (k TEXT PRIMARY KEY, v BIGINT NOT NULL)"
                ))
                .execute(tx.conn())
                .await?;
                Ok(())
            }

            async fn get(
                &self,
                tx: &mut HarnessTx<Self>,
                table: &str,
                key: &str,
            ) -> Result<Option<i64>, BoxError> {
                let table = tx.table(table)?;
                Ok(
                    sqlx::query_scalar(&format!("SELECT v FROM {table} WHERE k = $1"))
                        .bind(key)
                        .fetch_optional(tx.conn())
                        .await?,
                )
            }

            async fn add(
                &self,
                tx: &mut HarnessTx<Self>,
                table: &str,
                key: &str,
                delta: i64,
            ) -> Result<(), BoxError> {
                let table = tx.table(table)?;
                sqlx::query(&format!(
                    "INSERT INTO {table} (k, v) VALUES ($1, $2) \
                     ON CONFLICT (k) DO UPDATE SET v = {table}.v + excluded.v"
                ))
                .bind(key)
                .bind(delta)
                .execute(tx.conn())
                .await?;
                Ok(())
            }

            async fn read(
                &self,
                target: &SqlTarget<$db>,
                _projection: &str,
                table: &str,
            ) -> BTreeMap<String, i64> {
                let rows: Result<Vec<(String, i64)>, _> =
                    sqlx::query_as(&format!("SELECT k, v FROM {table}"))
                        .fetch_all(target.pool())
                        .await;
                match rows {
                    Ok(rows) => rows.into_iter().collect(),
                    Err(e) if no_such_table(&e) => BTreeMap::new(),
                    Err(e) => panic!("reading {table}: {e}"),
                }
            }
        }
    };
}

harness!(Sqlite, |place| match place {
    Place::SqliteFile => SqlTarget::<Sqlite>::connect(&sqlite_file_url())
        .await
        .expect("SQLite file"),
    Place::SqliteMemory => SqlTarget::<Sqlite>::connect("sqlite::memory:")
        .await
        .expect("SQLite in memory"),
    other => panic!("{other:?} is not a SQLite place"),
});

harness!(Postgres, |_place| SqlTarget::new(postgres_pool().await));

harness!(Any, |place| match place {
    Place::AnySqlite => SqlTarget::<Any>::connect(&sqlite_file_url())
        .await
        .expect("SQLite file through Any"),
    Place::AnySqliteMemory => SqlTarget::<Any>::connect("sqlite::memory:")
        .await
        .expect("SQLite in memory through Any"),
    other => panic!("{other:?} is not an Any place"),
});

/// A transaction's connection, for tests that write tables themselves.
pub fn conn<DB: cqrs_sql::SqlDatabase>(tx: &mut SqlTx<DB>) -> &mut DB::Connection {
    tx.conn()
}
