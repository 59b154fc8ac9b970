#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
// Every type a public item names can be named (and found) from the crate root.
#![deny(unnameable_types)]

mod range;
mod versions;

/// The guide's page on `Services`, compiled and run as doctests against this backend.
#[cfg(doctest)]
#[doc = include_str!("../../docs/services.md")]
struct ServicesGuide;

/// The quick start of the repository's README, compiled and run as a doctest
/// (`tests/readme.rs` checks its dependency lines).
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct QuickStart;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cqrs_core::{
    ApplyWrite, CommandRecord, CommandStatus, CommandWrite, Counter, DataItem, EntityKey, Error,
    ExpectedVersion, FailedCommand, Heartbeat, HeartbeatRenewal, IdempotencyRecord, IndexEntry, RangePage,
    RangeQuery, Result, SmolStr, SortOrder, Storage, StorageLimits,
};
use versions::Versions;

/// The in-memory storage backend.
///
/// Same conditions, same errors and the same limits as the DynamoDB backend
/// (by default DynamoDB's: 100 rows per transaction, 400 KB per item), so code
/// tested against it behaves the same in production. Every write is atomic
/// under one lock.
///
/// Rows are kept compact: each entity is one entry holding its data row,
/// its history rows and its command rows, and a command row that was
/// applied is stored as its status alone, its content being the data (or
/// history) row of its version. Rows share their attributes text (see
/// [`cqrs_core::Attributes`]), so a read copies no attributes.
///
/// Cheap to clone: clones share the same tables.
#[derive(Debug, Clone, Default)]
pub struct InMemory {
    tables: Arc<RwLock<Tables>>,
    limits: StorageLimits,
}

impl InMemory {
    /// Empty tables with DynamoDB's limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// Empty tables with other limits (e.g. a small item size to test rejection).
    pub fn with_limits(limits: StorageLimits) -> Self {
        Self {
            tables: Arc::default(),
            limits,
        }
    }

    /// An [`Engine`](cqrs_core::Engine) builder over a new in-memory store.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> cqrs_core::Result<()> {
    /// use cqrs_core::{CommandInput, CommandService, InvocationContext};
    ///
    /// let engine = cqrs_memory::InMemory::engine().build();
    /// let ctx = InvocationContext::new("shop-a", "user-1");
    /// let item = engine
    ///     .publish_sync(CommandInput::new("TENANT#shop-a", "PRODUCT#PRD-001"), &ctx)
    ///     .await?
    ///     .into_item();
    /// assert_eq!(item.version, 1);
    /// # Ok(()) }
    /// ```
    pub fn engine() -> cqrs_core::EngineBuilder {
        cqrs_core::Engine::builder(Arc::new(Self::new()))
    }

    /// Number of data rows stored, over all partitions.
    pub fn data_len(&self) -> usize {
        self.read().partitions.values().map(|p| p.with_data.len()).sum()
    }

    fn read(&self) -> RwLockReadGuard<'_, Tables> {
        // A panic while holding the lock cannot leave a half-applied write:
        // writes check every condition before changing anything.
        self.tables.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Tables> {
        self.tables.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes `writes` atomically: every condition is checked, then every
    /// row stored, under one lock. The rows replaced are freed after the
    /// lock is released.
    fn apply_writes(&self, writes: Vec<ApplyWrite>) -> Result<()> {
        self.check_transaction(writes.len())?;
        let replaced: Vec<Replaced> = {
            let mut tables = self.write();
            for write in &writes {
                tables.check(write)?;
            }
            writes.into_iter().map(|write| tables.store(write)).collect()
        };
        drop(replaced);
        Ok(())
    }

    /// [`InMemory::apply_writes`] of one write, without a vector.
    fn apply_write(&self, write: Box<ApplyWrite>) -> Result<()> {
        self.check_transaction(1)?;
        let replaced = {
            let mut tables = self.write();
            tables.check(&write)?;
            tables.store(*write)
        };
        drop(replaced);
        Ok(())
    }

    /// Fails when `writes` writes are more rows than one transaction takes.
    fn check_transaction(&self, writes: usize) -> Result<()> {
        let count = writes * self.limits.rows_per_command;
        if count > self.limits.max_transaction_items {
            return Err(Error::TooLarge {
                what: "transaction".into(),
                size: count,
                limit: self.limits.max_transaction_items,
            });
        }
        Ok(())
    }

    /// Reads one entity under the read lock.
    fn with_entity<T>(&self, key: &EntityKey, read: impl FnOnce(&Entity) -> T) -> Option<T> {
        self.read().entity(&key.pk, &key.sk).map(read)
    }
}

/// A fast hasher for the tables' keys (the process's own random seed).
type Hasher = foldhash::fast::RandomState;

#[derive(Debug, Default)]
struct Tables {
    /// Entities per partition, by sort key (sorted for range queries).
    partitions: HashMap<SmolStr, Partition, Hasher>,
    /// Sequence counters by (pk, sk).
    counters: HashMap<(String, String), u64, Hasher>,
    /// Failure records by (entity, version).
    failures: HashMap<(EntityKey, u64), FailedCommand, Hasher>,
    /// Idempotency keys by (tenant, key), live or expired.
    idempotency: HashMap<(String, String), IdempotencyRecord, Hasher>,
    /// Publisher heartbeats: publisher id → expiry.
    heartbeats: HashMap<String, DateTime<Utc>, Hasher>,
    /// Index partitions by (index, partition): entry sort key → the item's
    /// sk (every item of an index partition has the pk the partition starts with).
    indexes: IndexPartitions,
}

type IndexPartitions = HashMap<(String, String), BTreeMap<String, (SmolStr, SmolStr)>, Hasher>;

/// The entities of one partition: found by hashing their sort key, listed
/// in sort-key order.
#[derive(Debug, Default)]
struct Partition {
    entities: HashMap<SmolStr, Box<Entity>, Hasher>,
    /// The sort keys of the entities that have a data row, in order.
    with_data: BTreeSet<SmolStr>,
}

/// Everything stored of one entity.
#[derive(Debug, Default)]
struct Entity {
    /// The data row, once a command was applied.
    data: Option<DataItem>,
    /// Superseded data rows, by version.
    history: Versions<DataItem>,
    /// Command rows, by version.
    commands: Versions<CommandRow>,
    /// The entity's entries in the indexes, replaced when it is written.
    index_entries: Vec<IndexEntry>,
}

/// A stored command row.
#[derive(Debug)]
enum CommandRow {
    /// Applied, and equal to the data (or history) row of its version but
    /// for these: the row is rebuilt from it when read.
    Applied {
        status: CommandStatus,
        source: Option<SmolStr>,
        publisher: Option<SmolStr>,
    },
    /// Not applied yet (or not equal to its data row): kept whole.
    Whole(Box<CommandRecord>),
}

/// What a write replaced, freed once the lock is released.
type Replaced = Option<DataItem>;

impl Entity {
    fn latest_version(&self) -> Option<u64> {
        self.commands.last_version()
    }

    fn data_version(&self) -> Option<u64> {
        self.data.as_ref().map(|d| d.version)
    }

    /// The data row of `version`: the current one or a history row.
    fn row_of(&self, version: u64) -> Option<&DataItem> {
        match &self.data {
            Some(data) if data.version == version => Some(data),
            _ => self.history.get(&version),
        }
    }

    /// The command row of `version`, rebuilt if stored compact.
    fn command(&self, version: u64) -> Option<CommandRecord> {
        match self.commands.get(&version)? {
            CommandRow::Whole(record) => Some((**record).clone()),
            CommandRow::Applied {
                status,
                source,
                publisher,
            } => {
                let mut command = self.row_of(version)?.command(*status, source.clone());
                command.publisher.clone_from(publisher);
                Some(command)
            }
        }
    }

    fn commands(&self) -> Vec<CommandRecord> {
        self.commands
            .versions()
            .filter_map(|version| self.command(version))
            .collect()
    }
}

/// The compact form of `record` once `data` (its data row) is stored, if
/// the row can be rebuilt from it (a row with a trace context is kept
/// whole: see [`DataItem::is_row_of`]).
fn compact(record: &CommandRecord, data: &DataItem) -> Option<CommandRow> {
    data.is_row_of(record).then(|| CommandRow::Applied {
        status: record.status,
        source: record.source.clone(),
        publisher: record.publisher.clone(),
    })
}

/// Leaves a copy of `write`'s data row in it for the store and gives back
/// the row handed over: the copy shares the attributes' text and drops
/// their parsed value, which the caller keeps.
fn keep_a_copy(write: &mut ApplyWrite) -> DataItem {
    let stored = write.data.clone();
    std::mem::replace(&mut write.data, stored)
}

fn entity_id(pk: &str, sk: &str) -> String {
    EntityKey::new(pk, sk).id()
}

impl Tables {
    fn entity(&self, pk: &str, sk: &str) -> Option<&Entity> {
        self.partitions.get(pk)?.entities.get(sk).map(Box::as_ref)
    }

    fn entity_mut(&mut self, pk: &str, sk: &str) -> Option<&mut Entity> {
        self.partitions.get_mut(pk)?.entities.get_mut(sk).map(Box::as_mut)
    }

    /// The entity's entry, created empty if missing.
    fn entity_or_default(&mut self, pk: &SmolStr, sk: &SmolStr) -> &mut Entity {
        self.partitions
            .entry(pk.clone())
            .or_default()
            .entities
            .entry(sk.clone())
            .or_default()
    }

    fn latest_version(&self, pk: &str, sk: &str) -> Option<u64> {
        self.entity(pk, sk).and_then(Entity::latest_version)
    }

    /// Whether a live row holds the key of `record`.
    fn key_taken(&self, record: &IdempotencyRecord) -> bool {
        let now = cqrs_core::clock::now();
        self.idempotency
            .get(&(record.tenant_code.clone(), record.key.clone()))
            .is_some_and(|stored| stored.is_live(now))
    }

    fn store_key(&mut self, record: IdempotencyRecord) {
        self.idempotency
            .insert((record.tenant_code.clone(), record.key.clone()), record);
    }

    fn check(&self, write: &ApplyWrite) -> Result<()> {
        let (pk, sk, version) = (write.data.pk.as_str(), write.data.sk.as_str(), write.data.version);
        let entity = self.entity(pk, sk);
        let actual = entity.and_then(Entity::data_version);
        if actual.unwrap_or(0) != write.expected_data_version
            || write.idempotency.as_ref().is_some_and(|k| self.key_taken(k))
        {
            return Err(Error::Conflict {
                key: entity_id(pk, sk),
                expected: ExpectedVersion::Exactly(write.expected_data_version),
                actual,
            });
        }
        let exists = entity.is_some_and(|e| e.commands.contains_key(&version));
        match (&write.command, exists) {
            (CommandWrite::Insert(_), true) => Err(Error::Conflict {
                key: entity_id(pk, sk),
                expected: ExpectedVersion::Exactly(write.expected_data_version),
                actual: self.latest_version(pk, sk),
            }),
            (CommandWrite::MarkApplied, false) => Err(Error::NotFound {
                key: format!("{}@{version}", entity_id(pk, sk)),
            }),
            _ => Ok(()),
        }
    }

    /// Stores the rows of one checked write; returns what it replaced.
    fn store(&mut self, write: ApplyWrite) -> Replaced {
        let ApplyWrite {
            command,
            data,
            history,
            idempotency,
            indexes,
            ..
        } = write;
        if let Some(record) = idempotency {
            self.store_key(record);
        }
        let Tables {
            partitions,
            indexes: index_partitions,
            ..
        } = self;
        let partition = partitions.entry(data.pk.clone()).or_default();
        let entity = partition.entities.entry(data.sk.clone()).or_default();
        reindex(index_partitions, entity, &data, indexes);
        let version = data.version;
        match command {
            CommandWrite::Insert(record) => {
                let row = compact(&record, &data).unwrap_or(CommandRow::Whole(record));
                entity.commands.insert(version, row);
            }
            CommandWrite::MarkApplied => {
                if let Some(row) = entity.commands.get_mut(&version) {
                    match row {
                        CommandRow::Applied { status, .. } => *status = CommandStatus::Applied,
                        CommandRow::Whole(record) => {
                            // Our status replaces another writer's, as on DynamoDB.
                            record.status = CommandStatus::Applied;
                            record.foreign_status = None;
                            if let Some(compact) = compact(record, &data) {
                                *row = compact;
                            }
                        }
                    }
                }
            }
        }
        if let Some(history) = history {
            entity.history.insert(history.version, history);
        }
        let sk = data.sk.clone();
        let replaced = entity.data.replace(data);
        if replaced.is_none() {
            partition.with_data.insert(sk);
        }
        replaced
    }
}

/// The conflict of a condition on an entity's data version.
fn version_conflict(key: &EntityKey, expected: u64, actual: Option<u64>) -> Error {
    Error::Conflict {
        key: key.id(),
        expected: ExpectedVersion::Exactly(expected),
        actual,
    }
}

/// Replaces the index entries of `entity` (whose new data row is `data`)
/// with `entries`.
fn reindex(
    index_partitions: &mut IndexPartitions,
    entity: &mut Entity,
    data: &DataItem,
    entries: Vec<IndexEntry>,
) {
    if entity.index_entries.is_empty() && entries.is_empty() {
        return;
    }
    let previous = std::mem::replace(&mut entity.index_entries, entries.clone());
    for entry in previous {
        if let Some(partition) = index_partitions.get_mut(&(entry.index, entry.pk)) {
            partition.remove(&entry.sk);
        }
    }
    for entry in entries {
        index_partitions
            .entry((entry.index, entry.pk))
            .or_default()
            .insert(entry.sk, (data.pk.clone(), data.sk.clone()));
    }
}

#[async_trait]
impl Storage for InMemory {
    fn limits(&self) -> StorageLimits {
        self.limits
    }

    async fn put_command(
        &self,
        command: &CommandRecord,
        idempotency: Option<&IdempotencyRecord>,
    ) -> Result<()> {
        let (pk, sk) = (command.pk.as_str(), command.sk.as_str());
        let row = CommandRow::Whole(Box::new(command.clone()));
        let mut tables = self.write();
        let versions = tables.entity(pk, sk).map(|e| &e.commands);
        let taken = versions.is_some_and(|v| v.contains_key(&command.version));
        let predecessor_missing =
            command.version > 1 && !versions.is_some_and(|v| v.contains_key(&(command.version - 1)));
        let key_taken = idempotency.is_some_and(|k| tables.key_taken(k));
        if taken || predecessor_missing || key_taken {
            return Err(Error::Conflict {
                key: entity_id(pk, sk),
                expected: ExpectedVersion::Exactly(command.version - 1),
                actual: tables.latest_version(pk, sk),
            });
        }
        tables
            .entity_or_default(&command.pk, &command.sk)
            .commands
            .insert(command.version, row);
        if let Some(record) = idempotency {
            tables.store_key(record.clone());
        }
        Ok(())
    }

    async fn get_command(&self, key: &EntityKey, version: u64) -> Result<Option<CommandRecord>> {
        Ok(self.with_entity(key, |e| e.command(version)).flatten())
    }

    async fn latest_command(
        &self,
        key: &EntityKey,
        _data_version: Option<u64>,
    ) -> Result<Option<CommandRecord>> {
        Ok(self
            .with_entity(key, |e| e.latest_version().and_then(|v| e.command(v)))
            .flatten())
    }

    async fn list_commands(&self, key: &EntityKey) -> Result<Vec<CommandRecord>> {
        Ok(self.with_entity(key, Entity::commands).unwrap_or_default())
    }

    async fn set_command_status(&self, key: &EntityKey, version: u64, status: CommandStatus) -> Result<()> {
        let mut tables = self.write();
        let row = tables
            .entity_mut(&key.pk, &key.sk)
            .and_then(|e| e.commands.get_mut(&version))
            .ok_or_else(|| Error::NotFound {
                key: format!("{}@{version}", key.id()),
            })?;
        let stored = match row {
            CommandRow::Applied { status: stored, .. } => *stored,
            CommandRow::Whole(record) => record.status,
        };
        // As on DynamoDB: `failed` never replaces `finished`.
        if status == CommandStatus::Failed && stored == CommandStatus::Finished {
            return Ok(());
        }
        match row {
            CommandRow::Applied { status: stored, .. } => *stored = status,
            CommandRow::Whole(record) => {
                record.status = status;
                record.foreign_status = None;
            }
        }
        Ok(())
    }

    async fn apply(&self, writes: &[ApplyWrite]) -> Result<()> {
        self.apply_writes(writes.to_vec())
    }

    async fn apply_one(&self, mut write: Box<ApplyWrite>) -> Result<DataItem> {
        let given = keep_a_copy(&mut write);
        self.apply_write(write)?;
        Ok(given)
    }

    async fn get_data(&self, key: &EntityKey) -> Result<Option<DataItem>> {
        Ok(self.with_entity(key, |e| e.data.clone()).flatten())
    }

    async fn query_data(&self, query: &RangeQuery) -> Result<RangePage> {
        let items: Vec<DataItem> = {
            let tables = self.read();
            let Some(partition) = tables.partitions.get(query.pk.as_str()) else {
                return Ok(RangePage::empty());
            };
            let bounds = range::SkRange::new(query.sk.as_ref(), query.order, query.start_after.as_deref());
            let data = |sk: &SmolStr| partition.entities.get(sk).and_then(|e| e.data.clone());
            match (bounds.as_range(), query.order) {
                (None, _) => Vec::new(),
                (Some(r), SortOrder::Ascending) => partition
                    .with_data
                    .range::<str, _>(r)
                    .take(query.limit)
                    .filter_map(data)
                    .collect(),
                (Some(r), SortOrder::Descending) => partition
                    .with_data
                    .range::<str, _>(r)
                    .rev()
                    .take(query.limit)
                    .filter_map(data)
                    .collect(),
            }
        };
        // Like DynamoDB: a full page says "there may be more".
        let last_sk = (items.len() == query.limit)
            .then(|| items.last().map(|i| i.sk.to_string()))
            .flatten();
        // Every row here is typed: none is unreadable.
        Ok(RangePage {
            items,
            last_sk,
            unreadable: Vec::new(),
            index_keys: Vec::new(),
        })
    }

    async fn query_index(&self, index: &str, query: &RangeQuery) -> Result<RangePage> {
        let tables = self.read();
        let Some(partition) = tables.indexes.get(&(index.to_owned(), query.pk.clone())) else {
            return Ok(RangePage::empty());
        };
        let bounds = range::SkRange::new(query.sk.as_ref(), query.order, query.start_after.as_deref());
        let entries: Vec<(&String, &(SmolStr, SmolStr))> = match (bounds.as_range(), query.order) {
            (None, _) => Vec::new(),
            (Some(r), SortOrder::Ascending) => partition.range::<str, _>(r).take(query.limit).collect(),
            (Some(r), SortOrder::Descending) => {
                partition.range::<str, _>(r).rev().take(query.limit).collect()
            }
        };
        // Like DynamoDB: a full page says "there may be more".
        let last_sk = (entries.len() == query.limit)
            .then(|| entries.last().map(|(entry_sk, _)| (*entry_sk).clone()))
            .flatten();
        let (items, index_keys) = entries
            .iter()
            .filter_map(|(entry_sk, (pk, sk))| {
                let data = tables.entity(pk, sk).and_then(|e| e.data.clone())?;
                Some((data, (*entry_sk).clone()))
            })
            .unzip();
        // Every row here is typed: none is unreadable.
        Ok(RangePage {
            items,
            last_sk,
            unreadable: Vec::new(),
            index_keys,
        })
    }

    async fn put_index_entries(
        &self,
        key: &EntityKey,
        data_version: u64,
        indexes: &[String],
        entries: &[IndexEntry],
    ) -> Result<()> {
        if let Some(stray) = entries.iter().find(|e| !indexes.contains(&e.index)) {
            return Err(Error::invalid(
                "index",
                format!("an entry of {} that is not among the indexes named", stray.index),
            ));
        }
        let mut tables = self.write();
        let Tables {
            partitions,
            indexes: index_partitions,
            ..
        } = &mut *tables;
        let entity = partitions
            .get_mut(key.pk.as_str())
            .and_then(|p| p.entities.get_mut(key.sk.as_str()));
        let actual = entity.as_ref().and_then(|e| e.data_version());
        let Some(entity) = entity.filter(|_| actual == Some(data_version)) else {
            return Err(version_conflict(key, data_version, actual));
        };
        // Present: its version was just read.
        let Some(data) = entity.data.clone() else {
            return Err(version_conflict(key, data_version, None));
        };
        // Entries of indexes not named stay, as attributes not named stay
        // on DynamoDB.
        let mut kept: Vec<IndexEntry> = entity
            .index_entries
            .iter()
            .filter(|e| !indexes.contains(&e.index))
            .cloned()
            .collect();
        kept.extend(entries.iter().cloned());
        reindex(index_partitions, entity, &data, kept);
        Ok(())
    }

    async fn get_history(&self, key: &EntityKey, version: u64) -> Result<Option<DataItem>> {
        Ok(self
            .with_entity(key, |e| e.history.get(&version).cloned())
            .flatten())
    }

    async fn list_history(&self, key: &EntityKey) -> Result<Vec<DataItem>> {
        Ok(self
            .with_entity(key, |e| e.history.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn next_counter(&self, counter: &Counter) -> Result<u64> {
        let mut tables = self.write();
        let key = (counter.pk.clone(), counter.sk.clone());
        if !tables.counters.contains_key(&key) {
            let legacy = (counter.pk.clone(), counter.legacy_sk.clone());
            let start = tables.counters.get(&legacy).copied().unwrap_or(0);
            tables.counters.insert(key.clone(), start);
        }
        let count = tables.counters.entry(key).or_insert(0);
        *count += 1;
        Ok(*count)
    }

    async fn put_failure(&self, failure: &FailedCommand) -> Result<()> {
        self.write()
            .failures
            .insert((failure.key(), failure.version), failure.clone());
        Ok(())
    }

    async fn delete_failure(&self, key: &EntityKey, version: u64) -> Result<()> {
        self.write().failures.remove(&(key.clone(), version));
        Ok(())
    }

    async fn get_failure(&self, key: &EntityKey, version: u64) -> Result<Option<FailedCommand>> {
        Ok(self.read().failures.get(&(key.clone(), version)).cloned())
    }

    async fn list_failures(&self, tenant_code: Option<&str>) -> Result<Vec<FailedCommand>> {
        let mut failures: Vec<FailedCommand> = self
            .read()
            .failures
            .values()
            .filter(|f| tenant_code.is_none_or(|t| f.tenant_code == t))
            .cloned()
            .collect();
        failures.sort_by(|a, b| a.failed_at.cmp(&b.failed_at).then_with(|| a.key().cmp(&b.key())));
        Ok(failures)
    }

    async fn renew_heartbeat(
        &self,
        publisher: &str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<HeartbeatRenewal> {
        let mut tables = self.write();
        match tables.heartbeats.get_mut(publisher) {
            Some(until) if *until < now => Ok(HeartbeatRenewal::Expired),
            Some(until) => {
                *until = expires_at;
                Ok(HeartbeatRenewal::Renewed)
            }
            None => {
                tables.heartbeats.insert(publisher.to_owned(), expires_at);
                Ok(HeartbeatRenewal::Renewed)
            }
        }
    }

    async fn get_heartbeat(&self, publisher: &str) -> Result<Heartbeat> {
        Ok(match self.read().heartbeats.get(publisher) {
            Some(until) => Heartbeat::Until(*until),
            None => Heartbeat::Missing,
        })
    }

    async fn get_idempotency(&self, tenant_code: &str, key: &str) -> Result<Option<IdempotencyRecord>> {
        let tables = self.read();
        Ok(tables
            .idempotency
            .get(&(tenant_code.to_owned(), key.to_owned()))
            .cloned())
    }
}
