//! `SqlTarget::connect`: a pool set up for projections, from a URL.

use std::time::Duration;

use cqrs_core::{Error, Result};

use crate::SqlTarget;

/// How long a SQLite connection waits for another's write lock before it
/// gives up (`SQLITE_BUSY`): projection transactions take turns on it.
pub const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

fn connect_error(e: sqlx::Error) -> Error {
    // A server that is not up yet is worth waiting for; a bad URL is not.
    let retryable = matches!(
        e,
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Database(_)
    );
    Error::backend(e, retryable)
}

/// Whether a SQLite URL names an in-memory database.
#[cfg(feature = "sqlite")]
fn sqlite_in_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

/// Pool options for SQLite: an in-memory database lives as long as one of
/// its connections, so the pool keeps one open for good.
#[cfg(feature = "sqlite")]
fn sqlite_pool<DB: sqlx::Database>(in_memory: bool) -> sqlx::pool::PoolOptions<DB> {
    let options = sqlx::pool::PoolOptions::<DB>::new();
    if in_memory {
        options.min_connections(1).idle_timeout(None).max_lifetime(None)
    } else {
        options
    }
}

#[cfg(feature = "postgres")]
impl SqlTarget<sqlx::Postgres> {
    /// Connects to PostgreSQL (`postgres://user:password@host:port/db`; add
    /// `?sslmode=verify-full&sslrootcert=...` for TLS, e.g. to RDS).
    pub async fn connect(url: &str) -> Result<Self> {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect(url)
            .await
            .map_err(connect_error)?;
        Ok(SqlTarget::new(pool))
    }
}

#[cfg(feature = "sqlite")]
impl SqlTarget<sqlx::Sqlite> {
    /// Opens a SQLite database (`sqlite://path/to/file.db`, or
    /// `sqlite::memory:`): the file is created if missing and put in WAL
    /// mode (readers do not wait for writers), with a busy timeout of
    /// [`SQLITE_BUSY_TIMEOUT`]. An in-memory database is one database
    /// shared by the pool's connections, alive as long as the pool.
    pub async fn connect(url: &str) -> Result<Self> {
        use std::str::FromStr;

        use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};

        let in_memory = sqlite_in_memory(url);
        let mut options = SqliteConnectOptions::from_str(url)
            .map_err(connect_error)?
            .busy_timeout(SQLITE_BUSY_TIMEOUT);
        if !in_memory {
            options = options
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal);
        }
        let pool = sqlite_pool(in_memory)
            .connect_with(options)
            .await
            .map_err(connect_error)?;
        Ok(SqlTarget::new(pool))
    }
}

#[cfg(feature = "any")]
impl SqlTarget<sqlx::Any> {
    /// Connects to the database `url` names, PostgreSQL (`postgres://...`)
    /// or SQLite (`sqlite://...`, `sqlite::memory:`), set up as
    /// [`SqlTarget::<Postgres>::connect`](SqlTarget::connect) and
    /// [`SqlTarget::<Sqlite>::connect`](SqlTarget::connect) do. Installs
    /// sqlx's PostgreSQL and SQLite drivers for [`sqlx::Any`] if no drivers
    /// were installed yet.
    pub async fn connect(url: &str) -> Result<Self> {
        // Fails only when drivers were installed already: those are used.
        let _ = sqlx::any::install_drivers(&[sqlx::postgres::any::DRIVER, sqlx::sqlite::any::DRIVER]);
        let scheme = url.split(':').next().unwrap_or_default();
        let pool = match crate::database::flavor_of_url(scheme) {
            Some(crate::database::Flavor::Postgres) => sqlx::any::AnyPoolOptions::new()
                .connect(url)
                .await
                .map_err(connect_error)?,
            Some(crate::database::Flavor::Sqlite) => {
                let in_memory = sqlite_in_memory(url);
                let url = any_sqlite_url(url, in_memory);
                sqlite_pool::<sqlx::Any>(in_memory)
                    .after_connect(move |conn, _| {
                        Box::pin(async move {
                            use sqlx::Executor;
                            let journal = if in_memory {
                                ""
                            } else {
                                "PRAGMA journal_mode = WAL; "
                            };
                            conn.execute(
                                format!(
                                    "{journal}PRAGMA busy_timeout = {}",
                                    SQLITE_BUSY_TIMEOUT.as_millis()
                                )
                                .as_str(),
                            )
                            .await?;
                            Ok(())
                        })
                    })
                    .connect(&url)
                    .await
                    .map_err(connect_error)?
            }
            None => {
                return Err(Error::invalid(
                    "database url",
                    format!("'{scheme}:' is neither PostgreSQL nor SQLite"),
                ))
            }
        };
        Ok(SqlTarget::new(pool))
    }
}

/// The URL an [`sqlx::Any`] pool opens SQLite with. sqlx reads an `Any` URL
/// again for every connection, so `sqlite::memory:` would give each its
/// own database: it becomes a named shared in-memory database instead. A
/// file is created if missing (`mode=rwc`) unless the URL says otherwise.
#[cfg(feature = "any")]
fn any_sqlite_url(url: &str, in_memory: bool) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static MEMORY_DATABASES: AtomicU64 = AtomicU64::new(0);

    if in_memory {
        let n = MEMORY_DATABASES.fetch_add(1, Ordering::Relaxed);
        return format!(
            "sqlite:file:cqrs-sql-memory-{}-{n}?mode=memory",
            std::process::id()
        );
    }
    if url.contains("mode=") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    }
}
