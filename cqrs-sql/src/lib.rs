#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod connect;
mod database;
mod error;
mod names;
mod sql;
mod target;
mod tx;

#[cfg(feature = "sqlite")]
pub use connect::SQLITE_BUSY_TIMEOUT;
pub use database::SqlDatabase;
pub use target::SqlTarget;
pub use tx::SqlTx;

/// sqlx, as this crate uses it (the version its [`SqlTarget`] is built on).
pub use sqlx;
