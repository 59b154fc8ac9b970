//! The databases a [`SqlTarget`](crate::SqlTarget) runs on, and the few
//! statement shapes it needs of each.
//!
//! The target's logic is written once; what differs per sqlx database type
//! (binding and decoding) is instantiated for each by `sql_database!`, so
//! that no sqlx trait bound reaches the target's API.

use async_trait::async_trait;
use sqlx::{Database, Pool};

/// Which SQL dialect a connection speaks (for [`sqlx::Any`], known from the
/// pool's URL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Postgres,
    Sqlite,
}

/// A statement argument: the target's statements bind text and integers.
#[derive(Debug, Clone, Copy)]
pub enum Arg<'a> {
    Text(&'a str),
    Int(i64),
}

/// A sqlx database a [`SqlTarget`](crate::SqlTarget) runs on:
/// [`sqlx::Postgres`] (feature `postgres`), [`sqlx::Sqlite`] (feature
/// `sqlite`) and [`sqlx::Any`] (feature `any`). Sealed: the target relies on
/// each one's locking and error codes.
pub trait SqlDatabase: Database + Driver {}

impl<DB: Database + Driver> SqlDatabase for DB {}

pub(crate) use sealed::Driver;

mod sealed {
    use super::*;

    /// What the target needs of a database, private to this crate.
    #[async_trait]
    pub trait Driver: Database {
        /// The dialect of `pool`'s connections; `None` for a database the
        /// target does not support (an [`sqlx::Any`] pool of another kind).
        fn flavor(pool: &Pool<Self>) -> Option<Flavor>;

        /// Runs a statement; the rows it changed.
        async fn execute(
            conn: &mut Self::Connection,
            sql: &str,
            args: &[Arg<'_>],
        ) -> Result<u64, sqlx::Error>;

        /// Rows of one integer column.
        async fn fetch_ints(
            conn: &mut Self::Connection,
            sql: &str,
            args: &[Arg<'_>],
        ) -> Result<Vec<i64>, sqlx::Error>;

        /// Rows of a text and an integer column.
        async fn fetch_text_int(
            conn: &mut Self::Connection,
            sql: &str,
            args: &[Arg<'_>],
        ) -> Result<Vec<(String, i64)>, sqlx::Error>;

        /// Rows of two text columns and an integer column.
        async fn fetch_text_text_int(
            conn: &mut Self::Connection,
            sql: &str,
            args: &[Arg<'_>],
        ) -> Result<Vec<(String, String, i64)>, sqlx::Error>;
    }
}

/// Binds `args` to a sqlx query (or query_as, query_scalar) in order.
macro_rules! bind_all {
    ($query:expr, $args:expr) => {{
        let mut query = $query;
        for arg in $args {
            query = match *arg {
                Arg::Text(text) => query.bind(text),
                Arg::Int(int) => query.bind(int),
            };
        }
        query
    }};
}

/// Implements [`Driver`] for one sqlx database type; `$flavor` maps a
/// pool to its dialect.
macro_rules! sql_database {
    ($db:ty, $flavor:expr) => {
        #[async_trait]
        impl Driver for $db {
            fn flavor(pool: &Pool<Self>) -> Option<Flavor> {
                let flavor: fn(&Pool<Self>) -> Option<Flavor> = $flavor;
                flavor(pool)
            }

            async fn execute(
                conn: &mut Self::Connection,
                sql: &str,
                args: &[Arg<'_>],
            ) -> Result<u64, sqlx::Error> {
                let query = bind_all!(sqlx::query::<$db>(sql), args);
                Ok(query.execute(&mut *conn).await?.rows_affected())
            }

            async fn fetch_ints(
                conn: &mut Self::Connection,
                sql: &str,
                args: &[Arg<'_>],
            ) -> Result<Vec<i64>, sqlx::Error> {
                bind_all!(sqlx::query_scalar::<$db, i64>(sql), args)
                    .fetch_all(&mut *conn)
                    .await
            }

            async fn fetch_text_int(
                conn: &mut Self::Connection,
                sql: &str,
                args: &[Arg<'_>],
            ) -> Result<Vec<(String, i64)>, sqlx::Error> {
                bind_all!(sqlx::query_as::<$db, (String, i64)>(sql), args)
                    .fetch_all(&mut *conn)
                    .await
            }

            async fn fetch_text_text_int(
                conn: &mut Self::Connection,
                sql: &str,
                args: &[Arg<'_>],
            ) -> Result<Vec<(String, String, i64)>, sqlx::Error> {
                bind_all!(sqlx::query_as::<$db, (String, String, i64)>(sql), args)
                    .fetch_all(&mut *conn)
                    .await
            }
        }
    };
}

#[cfg(feature = "postgres")]
sql_database!(sqlx::Postgres, |_| Some(Flavor::Postgres));
#[cfg(feature = "sqlite")]
sql_database!(sqlx::Sqlite, |_| Some(Flavor::Sqlite));
#[cfg(feature = "any")]
sql_database!(sqlx::Any, |pool| flavor_of_url(
    pool.connect_options().database_url.scheme()
));

/// The dialect of an [`sqlx::Any`] URL scheme (the schemes sqlx's drivers
/// accept).
#[cfg(feature = "any")]
pub(crate) fn flavor_of_url(scheme: &str) -> Option<Flavor> {
    match scheme {
        "postgres" | "postgresql" => Some(Flavor::Postgres),
        "sqlite" => Some(Flavor::Sqlite),
        _ => None,
    }
}
