#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
// Every type a public item names can be named (and found) from the crate root.
#![deny(unnameable_types)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod attributes;
mod builders;
mod canonical;
pub mod clock;
mod context;
mod decorator;
mod engine;
mod error;
mod handle;
mod handler;
mod heartbeat;
mod idempotency;
mod index;
mod keys;
mod merge;
pub mod meters;
mod model;
mod numbers;
pub mod ops;
pub mod outbox;
pub mod projection;
mod query;
#[doc(hidden)]
pub mod regressions;
mod sequence;
mod services;
mod storage;
pub mod trace;
mod typed;
mod update;

#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;

pub use attributes::Attributes;
pub use builders::{CommandRecordBuilder, DataItemBuilder};
pub use context::{InvocationContext, TenancyPolicy};
pub use decorator::StorageDecorator;
pub use engine::{
    AsyncDispatch, Engine, EngineBuilder, EngineConfig, Reindexed, RetryPolicy, APPLY_STEP,
    DEFAULT_HANDLER_TIMEOUT, DEFAULT_PUBLISHER_LEASE, DEFAULT_RECOVERY_GRACE,
};
pub use error::{BoxError, Error, Result, TransientCause};
pub use handle::{default_conflict_retry, Services};
pub use handler::{DataSyncEvent, DataSyncHandler, Interest};
pub use heartbeat::{Heartbeat, HeartbeatRenewal};
pub use idempotency::{
    CommitMember, IdempotencyKey, IdempotencyRecord, DEFAULT_IDEMPOTENCY_RETENTION, MAX_IDEMPOTENCY_KEY_BYTES,
};
pub use index::{Index, IndexEntry, IndexLookup, INDEX_KEY_SEPARATOR, MAX_INDEXES, MAX_INDEX_SK_BYTES};
pub use keys::{
    command_sk, parse_command_sk, tenant_of_pk, tenant_pk, validate_pk, validate_sk, EntityKey,
    KEY_SEPARATOR, MAX_PK_BYTES, MAX_SK_BYTES, TENANT_PK_PREFIX, VERSION_SEPARATOR,
};
pub use merge::merge_patch;
pub use model::{
    CommandInput, CommandRecord, CommandStatus, DataItem, ExpectedVersion, FailedCommand, Handled,
    HandlerFailure, PartialUpdate, Published, Synced, Updated,
};
pub use numbers::{MAX_NUMBER_MAGNITUDE, MIN_NUMBER_MAGNITUDE};
pub use query::{
    Cursor, Filter, ListQuery, Page, SkCondition, SortOrder, UnreadableRow, DEFAULT_LIMIT, MAX_LIMIT,
};
pub use sequence::{
    fiscal_year, Counter, Rotation, SequenceRequest, SequenceValue, DEFAULT_FORMAT, MAX_SUB_CODES,
    SEQUENCE_PK_PREFIX,
};
pub use services::{CommandService, DataService, SequenceService};
#[cfg(feature = "mock")]
#[cfg_attr(docsrs, doc(cfg(feature = "mock")))]
pub use services::{MockCommandService, MockDataService, MockSequenceService};
/// The string type of keys and short row fields: inline up to 23 bytes,
/// shared beyond, so copies never allocate.
pub use smol_str::SmolStr;
pub use storage::{ApplyWrite, CommandWrite, RangePage, RangeQuery, Storage, StorageLimits};
pub use typed::{CommandServiceExt, DataServiceExt, HasAttributes, StateChange, Typed};
pub use update::{Update, UpdateAll};
