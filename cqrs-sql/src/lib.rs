//! SQL projection target for `cqrs-serverless-core`, through sqlx:
//! projections whose read models are tables in PostgreSQL or SQLite,
//! applied exactly once in effect.
//!
//! A [`SqlTarget`] runs each event's SQL and the entity's checkpoint in one
//! transaction; a projection writes its tables through the transaction,
//! a [`SqlTx`], with ordinary sqlx queries. Readers query views named
//! after the tables, which a rebuild switches to a new generation in one
//! step. See the crate README for a whole projection.
//!
//! Features: `postgres` and `sqlite` (default), `any` (both, chosen by URL
//! at run time: `SqlTarget<sqlx::Any>`).

#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

mod connect;
mod database;
mod error;
mod names;
mod sql;
mod target;
mod tx;

pub use connect::SQLITE_BUSY_TIMEOUT;
pub use database::SqlDatabase;
pub use target::SqlTarget;
pub use tx::SqlTx;

/// sqlx, as this crate uses it (the version its [`SqlTarget`] is built on).
pub use sqlx;
