#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
// Every type a public item names can be named (and found) from the crate root.
#![deny(unnameable_types)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod client;
mod counter;
mod error;
mod heartbeat;
mod item;
#[cfg(feature = "lambda")]
#[cfg_attr(docsrs, doc(cfg(feature = "lambda")))]
pub mod lambda;
mod storage;
pub mod stream;
mod tables;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;

pub use client::{
    http_client, local_client, local_config, local_streams_client, timeout_config, CONNECT_TIMEOUT,
    OPERATION_ATTEMPT_TIMEOUT, OPERATION_TIMEOUT, SDK_MAX_ATTEMPTS,
};
pub use error::{DynamoDbError, DynamoDbErrorKind};
pub use heartbeat::HEARTBEAT_PK;
pub use item::{
    command_from_item, data_from_item, history_from_item, item_size, Item, MAX_ITEM_BYTES,
    SYNC_MODE_ATTRIBUTE,
};
pub use storage::{DynamoDbStorage, MAX_TRANSACTION_BYTES, MAX_TRANSACTION_ITEMS};
pub use stream::{ConsumerMonitor, ConsumerStats, StreamConsumer};
pub use tables::{ensure_tables, index_attributes, TableNames, TableRole, TableSpec, TTL_ATTRIBUTE};
