//! The storage primitives a backend implements.
//!
//! Every rule of the framework (versions, dirty check, merges, tenancy,
//! history, handler dispatch, retries) lives in [`Engine`](crate::Engine), once.
//! A backend only stores rows and enforces the conditions it is handed,
//! atomically. The conformance suite (feature `testing`) proves a backend
//! behaves like every other.

use async_trait::async_trait;

use chrono::{DateTime, Utc};

use crate::error::Result;
use crate::heartbeat::{Heartbeat, HeartbeatRenewal};
use crate::idempotency::IdempotencyRecord;
use crate::index::IndexEntry;
use crate::keys::EntityKey;
use crate::model::{CommandRecord, CommandStatus, DataItem, FailedCommand};
use crate::query::{SkCondition, SortOrder, UnreadableRow};
use crate::sequence::Counter;

/// Sizes a backend can store. The engine checks them before writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageLimits {
    /// Largest number of rows one [`Storage::apply`] may write (DynamoDB: 100).
    pub max_transaction_items: usize,
    /// Largest size of one stored item, in bytes of its JSON form (DynamoDB: 400 KB).
    pub max_item_bytes: usize,
    /// Largest total size of the rows of one [`Storage::apply`], in bytes of
    /// their JSON form (DynamoDB: 4 MB per transaction).
    pub max_transaction_bytes: usize,
    /// Rows one applied command writes in [`Storage::apply`]: command, data and
    /// history (3), plus any the backend adds (e.g. a TTL on the superseded command).
    pub rows_per_command: usize,
}

impl Default for StorageLimits {
    /// DynamoDB's limits.
    fn default() -> Self {
        Self {
            max_transaction_items: 100,
            max_item_bytes: 400 * 1024,
            max_transaction_bytes: 4 * 1024 * 1024,
            rows_per_command: 3,
        }
    }
}

/// What to do with the command row in an [`ApplyWrite`].
#[derive(Debug, Clone, PartialEq)]
pub enum CommandWrite {
    /// Insert the command row, which must not exist yet (sync publish).
    Insert(Box<CommandRecord>),
    /// The command row exists (async publish): set its status to
    /// [`CommandStatus::Applied`].
    MarkApplied,
}

/// Applying one command to one entity: command row, data row and history row,
/// written together.
#[derive(Debug, Clone, PartialEq)]
pub struct ApplyWrite {
    /// The command row.
    pub command: CommandWrite,
    /// The new data row; its `version` is the command's version.
    pub data: DataItem,
    /// The version the data row must be at before the write (`0`: it must not exist).
    pub expected_data_version: u64,
    /// The superseded data row, stored in history at `{sk}@{its version}`.
    pub history: Option<DataItem>,
    /// An idempotency key to store with the write (see [`Storage::put_command`]).
    pub idempotency: Option<IdempotencyRecord>,
    /// The new data row's entries in the engine's indexes: they replace the
    /// entity's previous entries, in the same atomic write.
    pub indexes: Vec<IndexEntry>,
}

impl ApplyWrite {
    /// The command row this write inserts (a sync publish), if any.
    pub fn inserted_command(&self) -> Option<&CommandRecord> {
        match &self.command {
            CommandWrite::Insert(record) => Some(record),
            CommandWrite::MarkApplied => None,
        }
    }
}

/// A range query over one partition of the data table.
#[derive(Debug, Clone, PartialEq)]
pub struct RangeQuery {
    /// The partition key.
    pub pk: String,
    /// Condition on the sort key.
    pub sk: Option<SkCondition>,
    /// Order.
    pub order: SortOrder,
    /// Start strictly after this sort key (in the query's order).
    pub start_after: Option<String>,
    /// At most this many rows.
    pub limit: usize,
}

/// One page of a [`RangeQuery`].
#[derive(Debug, Clone, PartialEq)]
pub struct RangePage {
    /// Rows in order.
    pub items: Vec<DataItem>,
    /// The sort key to continue after, `None` when the range is exhausted.
    pub last_sk: Option<String>,
    /// Rows of the range that could not be read as items; `last_sk` counts
    /// them as read.
    pub unreadable: Vec<UnreadableRow>,
    /// For [`Storage::query_index`]: the sort key of the entry each item was
    /// found by ([`IndexEntry::sk`]), one per item, in the same order. The
    /// engine checks it against the entry the item's current values give,
    /// for a row another program wrote may carry entries it no longer
    /// matches. Empty for [`Storage::query_data`].
    pub index_keys: Vec<String>,
}

impl RangePage {
    /// A page with no rows, the end of its range.
    pub fn empty() -> Self {
        Self {
            items: Vec::new(),
            last_sk: None,
            unreadable: Vec::new(),
            index_keys: Vec::new(),
        }
    }
}

/// The primitives of a storage backend.
///
/// Implementations must make [`Storage::put_command`], [`Storage::apply`] and
/// [`Storage::next_counter`] atomic and linearizable, and report failed
/// conditions as [`Error::Conflict`](crate::Error::Conflict) carrying the
/// version actually found. Reads that follow writes must see them.
#[async_trait]
pub trait Storage: Send + Sync + std::fmt::Debug + 'static {
    /// The backend's limits.
    fn limits(&self) -> StorageLimits {
        StorageLimits::default()
    }

    /// Stores a published command at `{sk}@{version}`, on two conditions
    /// checked atomically with the write: no row exists at that version, and
    /// when `version > 1` the row of `version - 1` exists.
    ///
    /// With `idempotency`, stores that key row in the same atomic write, on a
    /// third condition: no live row of the key (same tenant and key, its
    /// `expires_at` not yet passed) exists. An expired row is replaced.
    ///
    /// Fails with [`Error::Conflict`](crate::Error::Conflict) (expected
    /// `version - 1`, actual: the latest stored version) when a condition
    /// fails, and writes nothing.
    async fn put_command(
        &self,
        command: &CommandRecord,
        idempotency: Option<&IdempotencyRecord>,
    ) -> Result<()>;

    /// The command row of `version`.
    async fn get_command(&self, key: &EntityKey, version: u64) -> Result<Option<CommandRecord>>;

    /// The command row with the highest version.
    ///
    /// `data_version` is the version of the entity's data row when the
    /// caller has just read it (`Some(0)`: there is none), `None` when it
    /// has not. Commands are stored before they are applied and versions are
    /// contiguous from 1, so a backend whose keys do not sort by version
    /// (DynamoDB's `{sk}@{n}`: `@10` before `@9`) can look upwards from it in
    /// a constant number of requests instead of reading every version.
    async fn latest_command(
        &self,
        key: &EntityKey,
        data_version: Option<u64>,
    ) -> Result<Option<CommandRecord>>;

    /// Every command row of the entity, by ascending version.
    async fn list_commands(&self, key: &EntityKey) -> Result<Vec<CommandRecord>>;

    /// Sets the status of an existing command row ([`Error::NotFound`](crate::Error::NotFound)
    /// when there is none).
    ///
    /// `failed` never replaces `finished`: once every handler has
    /// completed, a late write of an earlier run's failure (a timed-out
    /// write retried after an operator's reprocess finished the command)
    /// must not hide the command from the failures again. Such a write
    /// succeeds and changes nothing.
    async fn set_command_status(&self, key: &EntityKey, version: u64, status: CommandStatus) -> Result<()>;

    /// Writes every [`ApplyWrite`] atomically: all or none.
    ///
    /// Conditions: each data row is at `expected_data_version` (absent for 0);
    /// an inserted command row does not exist yet; a command row to mark
    /// applied exists; an idempotency key row is not live (as in
    /// [`Storage::put_command`]; a taken key is reported as a conflict). On failure nothing is written and the error is the
    /// conflict of the first failing entity (actual = its data version).
    async fn apply(&self, writes: &[ApplyWrite]) -> Result<()>;

    /// [`Storage::apply`] of a single write given by value; returns its data
    /// row. Same conditions, same atomicity, same errors. The engine calls it
    /// for a sync publish no handler is interested in (the most common
    /// write), which needs nothing but the data row afterwards. A backend
    /// that keeps the rows it is given (the in-memory one) can store them as
    /// they are instead of copies. The default calls `apply`.
    async fn apply_one(&self, write: Box<ApplyWrite>) -> Result<DataItem> {
        self.apply(std::slice::from_ref(&*write)).await?;
        Ok(write.data)
    }

    /// The data row of an entity.
    async fn get_data(&self, key: &EntityKey) -> Result<Option<DataItem>>;

    /// A page of the data rows of one partition, in sort-key order.
    async fn query_data(&self, query: &RangeQuery) -> Result<RangePage>;

    /// A page of the data rows of one partition of an index, in the order of
    /// their entries' sort keys: `query.pk` is the index partition
    /// ([`IndexEntry::pk`]), `query.sk` and `query.start_after` apply to the
    /// entries' sort keys, and `last_sk` is the sort key of the page's last
    /// entry. Reads may lag writes (DynamoDB's global secondary indexes are
    /// eventually consistent); a row is never found under an entry it no
    /// longer has once the lag has passed.
    async fn query_index(&self, index: &str, query: &RangeQuery) -> Result<RangePage>;

    /// Replaces the entity's entries in the indexes named in `indexes` with
    /// `entries` (an index of `indexes` without an entry there loses the
    /// entity's), on condition that its data row is at `data_version`;
    /// entries of other indexes are kept. The repair of a data row another
    /// program wrote with missing or stale entries: the condition keeps it
    /// from overwriting the entries of a newer write.
    ///
    /// Fails with [`Error::Conflict`](crate::Error::Conflict) (expected
    /// `data_version`, actual: the data row's version, `None` when there is
    /// none) when the condition fails, and writes nothing.
    async fn put_index_entries(
        &self,
        key: &EntityKey,
        data_version: u64,
        indexes: &[String],
        entries: &[IndexEntry],
    ) -> Result<()>;

    /// The history row of `version` (a superseded data version).
    async fn get_history(&self, key: &EntityKey, version: u64) -> Result<Option<DataItem>>;

    /// Every history row of the entity, by ascending version.
    async fn list_history(&self, key: &EntityKey) -> Result<Vec<DataItem>>;

    /// The stored row of an idempotency key of a tenant, live or expired
    /// (the caller checks [`IdempotencyRecord::is_live`]).
    async fn get_idempotency(&self, tenant_code: &str, key: &str) -> Result<Option<IdempotencyRecord>>;

    /// Atomically increments the count of `counter` and returns the new
    /// value. A counter with no count yet starts from the count at
    /// `counter.legacy_sk` (where this framework counted before), or from 0.
    /// A backend that stores rows writes the count as `seq` with the
    /// descriptive fields of [`Counter`], as the reference framework does.
    async fn next_counter(&self, counter: &Counter) -> Result<u64>;

    /// Records (or replaces) the failure of a command.
    async fn put_failure(&self, failure: &FailedCommand) -> Result<()>;

    /// Removes the failure record of a command, if any.
    async fn delete_failure(&self, key: &EntityKey, version: u64) -> Result<()>;

    /// The failure record of a command.
    async fn get_failure(&self, key: &EntityKey, version: u64) -> Result<Option<FailedCommand>>;

    /// Failure records of a tenant (every tenant when `None`), oldest first.
    async fn list_failures(&self, tenant_code: Option<&str>) -> Result<Vec<FailedCommand>>;

    /// Sets the [heartbeat](Heartbeat) of `publisher` (an engine) to last
    /// until `expires_at`, atomically on one condition: no heartbeat of
    /// `publisher` is stored, or the stored one has not expired at `now`.
    /// An expired heartbeat stays expired — its publisher counts as gone and
    /// recovery may have taken its work over — and the call returns
    /// [`HeartbeatRenewal::Expired`] without writing anything.
    ///
    /// The default keeps no heartbeats ([`HeartbeatRenewal::Unsupported`]):
    /// the engine then stamps no publisher on its rows, and recovery of an
    /// interrupted sync publish waits for the whole
    /// [recovery grace](crate::EngineConfig::recovery_grace). A wrapper of
    /// another storage forwards both heartbeat methods, or neither.
    async fn renew_heartbeat(
        &self,
        publisher: &str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<HeartbeatRenewal> {
        let _ = (publisher, expires_at, now);
        Ok(HeartbeatRenewal::Unsupported)
    }

    /// The heartbeat of `publisher`, read strongly consistently (after a
    /// renewal, the renewed one). The default keeps none
    /// ([`Heartbeat::Unsupported`]).
    async fn get_heartbeat(&self, publisher: &str) -> Result<Heartbeat> {
        let _ = publisher;
        Ok(Heartbeat::Unsupported)
    }
}
