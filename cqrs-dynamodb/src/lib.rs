#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
// Every type a public item names can be named (and found) from the crate root.
#![deny(unnameable_types)]
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The AWS SDK for DynamoDB this crate is built on, re-exported so that a
/// client (and its config, types and errors) comes from exactly the version
/// the backend takes: `cqrs_dynamodb::aws_sdk_dynamodb::Client`.
pub use aws_sdk_dynamodb;
/// The AWS SDK for DynamoDB Streams this crate's [`StreamConsumer`] reads
/// with, re-exported for the same reason.
pub use aws_sdk_dynamodbstreams;

mod client;
mod counter;
mod error;
mod heartbeat;
mod item;
#[cfg(feature = "lambda")]
#[cfg_attr(docsrs, doc(cfg(feature = "lambda")))]
pub mod lambda;
pub mod projection;
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
