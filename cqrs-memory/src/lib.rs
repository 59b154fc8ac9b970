#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod range;
mod versions;

/// The guide's page on `Services`, compiled and run as doctests against this backend.
#[cfg(doctest)]
#[doc = include_str!("../../docs/services.md")]
struct ServicesGuide;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use cqrs_core::{
    ApplyWrite, CommandRecord, CommandStatus, CommandWrite, DataItem, EntityKey, Error, ExpectedVersion,
    FailedCommand, IdempotencyRecord, IndexEntry, RangePage, RangeQuery, Result, SortOrder, Storage,
    StorageLimits,
};
use versions::Versions;

/// The in-memory storage backend.
///
/// Same conditions, same errors and the same limits as the DynamoDB backend
/// (by default DynamoDB's: 100 rows per transaction, 400 KB per item), so code
/// tested against it behaves the same in production. Every write is atomic
/// under one lock; reads return copies.
///
/// Rows are kept behind `Arc`s, so that the lock is held only to look rows
/// up and to link them in: copying a row out for a read, building the rows
/// of a write and freeing replaced rows happen outside it.
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
        self.read().data.values().map(BTreeMap::len).sum()
    }

    fn read(&self) -> RwLockReadGuard<'_, Tables> {
        // A panic while holding the lock cannot leave a half-applied write:
        // writes check every condition before changing anything.
        self.tables.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Tables> {
        self.tables.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes the rows of `writes` atomically: every condition is checked,
    /// then every row linked in, under one lock. The rows replaced (and, on
    /// failure, the rows not written) are freed after the lock is released.
    fn apply_rows(&self, writes: Vec<Rows>) -> Result<()> {
        let count = writes.len() * self.limits.rows_per_command;
        if count > self.limits.max_transaction_items {
            return Err(Error::TooLarge {
                what: "transaction".into(),
                size: count,
                limit: self.limits.max_transaction_items,
            });
        }
        let replaced: Vec<Arc<DataItem>> = {
            let mut tables = self.write();
            for write in &writes {
                tables.check(write)?;
            }
            writes
                .into_iter()
                .filter_map(|write| tables.store(write))
                .collect()
        };
        drop(replaced);
        Ok(())
    }
}

/// Rows by partition key, then sort key: lookups take `&str`s, so reading
/// or writing an existing entity allocates no key.
type ByEntity<T> = HashMap<String, HashMap<String, T>>;

#[derive(Debug, Default)]
struct Tables {
    /// Command rows per entity, by version.
    commands: ByEntity<Versions<Arc<CommandRecord>>>,
    /// Data rows per partition, by sort key (sorted for range queries).
    data: HashMap<String, BTreeMap<String, Arc<DataItem>>>,
    /// History rows per entity, by version.
    history: ByEntity<Versions<Arc<DataItem>>>,
    /// Sequence counters by (pk, sk).
    counters: HashMap<(String, String), u64>,
    /// Failure records by (entity, version).
    failures: HashMap<(EntityKey, u64), FailedCommand>,
    /// Idempotency keys by (tenant, key), live or expired.
    idempotency: HashMap<(String, String), IdempotencyRecord>,
    /// Index partitions by (index, partition): entry sort key → the item's sk
    /// (every item of an index partition has the pk the partition starts with).
    indexes: HashMap<(String, String), BTreeMap<String, (String, String)>>,
    /// Each entity's entries in the indexes, replaced when it is written.
    index_entries: ByEntity<Vec<IndexEntry>>,
}

/// The rows of one entity.
fn rows<'a, T>(table: &'a ByEntity<T>, pk: &str, sk: &str) -> Option<&'a T> {
    table.get(pk)?.get(sk)
}

/// The rows of one entity, created empty if missing (the only case that
/// allocates its keys).
fn rows_mut<'a, T: Default>(table: &'a mut ByEntity<T>, pk: &str, sk: &str) -> &'a mut T {
    let partition = partition_mut(table, pk);
    if !partition.contains_key(sk) {
        partition.insert(sk.to_owned(), T::default());
    }
    partition.get_mut(sk).expect("just inserted")
}

/// A partition of a table, created empty if missing.
fn partition_mut<'a, T: Default>(table: &'a mut HashMap<String, T>, pk: &str) -> &'a mut T {
    if !table.contains_key(pk) {
        table.insert(pk.to_owned(), T::default());
    }
    table.get_mut(pk).expect("just inserted")
}

fn entity_id(pk: &str, sk: &str) -> String {
    EntityKey::new(pk, sk).id()
}

/// Copies of shared rows, made once the lock is released.
fn copies<T: Clone>(rows: Vec<Arc<T>>) -> Vec<T> {
    rows.into_iter().map(Arc::unwrap_or_clone).collect()
}

/// The rows of one [`ApplyWrite`], built before the lock is taken.
struct Rows {
    /// The command row to insert; `None`: mark the existing one applied.
    command: Option<Arc<CommandRecord>>,
    data: Arc<DataItem>,
    expected_data_version: u64,
    history: Option<Arc<DataItem>>,
    idempotency: Option<IdempotencyRecord>,
    indexes: Vec<IndexEntry>,
}

impl From<ApplyWrite> for Rows {
    fn from(write: ApplyWrite) -> Self {
        Self {
            command: match write.command {
                CommandWrite::Insert(command) => Some(Arc::new(*command)),
                CommandWrite::MarkApplied => None,
            },
            data: Arc::new(write.data),
            expected_data_version: write.expected_data_version,
            history: write.history.map(Arc::new),
            idempotency: write.idempotency,
            indexes: write.indexes,
        }
    }
}

impl Tables {
    fn latest_version(&self, pk: &str, sk: &str) -> Option<u64> {
        rows(&self.commands, pk, sk).and_then(Versions::last_version)
    }

    fn data_version(&self, pk: &str, sk: &str) -> Option<u64> {
        self.data.get(pk).and_then(|p| p.get(sk)).map(|d| d.version)
    }

    /// Whether a live row holds the key of `record`.
    fn key_taken(&self, record: &IdempotencyRecord) -> bool {
        let now = chrono::Utc::now();
        self.idempotency
            .get(&(record.tenant_code.clone(), record.key.clone()))
            .is_some_and(|stored| stored.is_live(now))
    }

    /// Replaces the index entries of `data`'s entity with `entries`.
    fn index(&mut self, data: &DataItem, entries: Vec<IndexEntry>) {
        let (pk, sk) = (data.pk.as_str(), data.sk.as_str());
        let current = rows(&self.index_entries, pk, sk);
        if current.is_none_or(Vec::is_empty) && entries.is_empty() {
            return;
        }
        let previous = std::mem::replace(rows_mut(&mut self.index_entries, pk, sk), entries.clone());
        for entry in previous {
            if let Some(partition) = self.indexes.get_mut(&(entry.index, entry.pk)) {
                partition.remove(&entry.sk);
            }
        }
        for entry in entries {
            self.indexes
                .entry((entry.index, entry.pk))
                .or_default()
                .insert(entry.sk, (pk.to_owned(), sk.to_owned()));
        }
    }

    fn store_key(&mut self, record: IdempotencyRecord) {
        self.idempotency
            .insert((record.tenant_code.clone(), record.key.clone()), record);
    }

    fn check(&self, write: &Rows) -> Result<()> {
        let (pk, sk, version) = (write.data.pk.as_str(), write.data.sk.as_str(), write.data.version);
        let actual = self.data_version(pk, sk);
        if actual.unwrap_or(0) != write.expected_data_version
            || write.idempotency.as_ref().is_some_and(|k| self.key_taken(k))
        {
            return Err(Error::Conflict {
                key: entity_id(pk, sk),
                expected: ExpectedVersion::Exactly(write.expected_data_version),
                actual,
            });
        }
        let versions = rows(&self.commands, pk, sk);
        let exists = versions.is_some_and(|v| v.contains_key(&version));
        match (&write.command, exists) {
            (Some(_), true) => Err(Error::Conflict {
                key: entity_id(pk, sk),
                expected: ExpectedVersion::Exactly(write.expected_data_version),
                actual: self.latest_version(pk, sk),
            }),
            (None, false) => Err(Error::NotFound {
                key: format!("{}@{version}", entity_id(pk, sk)),
            }),
            _ => Ok(()),
        }
    }

    /// Links in the rows of one checked write; returns the data row it replaces.
    fn store(&mut self, write: Rows) -> Option<Arc<DataItem>> {
        let Rows {
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
        self.index(&data, indexes);
        let (pk, sk, version) = (data.pk.as_str(), data.sk.as_str(), data.version);
        match command {
            Some(command) => rows_mut(&mut self.commands, pk, sk).insert(version, command),
            None => {
                if let Some(command) = self
                    .commands
                    .get_mut(pk)
                    .and_then(|p| p.get_mut(sk))
                    .and_then(|v| v.get_mut(&version))
                {
                    Arc::make_mut(command).status = CommandStatus::Applied;
                }
            }
        }
        if let Some(history) = history {
            rows_mut(&mut self.history, pk, sk).insert(history.version, history);
        }
        let partition = partition_mut(&mut self.data, pk);
        match partition.get_mut(sk) {
            Some(row) => Some(std::mem::replace(row, data)),
            None => {
                partition.insert(sk.to_owned(), data);
                None
            }
        }
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
        let row = Arc::new(command.clone());
        let mut tables = self.write();
        let versions = rows(&tables.commands, pk, sk);
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
        rows_mut(&mut tables.commands, pk, sk).insert(command.version, row);
        if let Some(record) = idempotency {
            tables.store_key(record.clone());
        }
        Ok(())
    }

    async fn get_command(&self, key: &EntityKey, version: u64) -> Result<Option<CommandRecord>> {
        let row = rows(&self.read().commands, &key.pk, &key.sk).and_then(|v| v.get(&version).cloned());
        Ok(row.map(Arc::unwrap_or_clone))
    }

    async fn latest_command(
        &self,
        key: &EntityKey,
        _data_version: Option<u64>,
    ) -> Result<Option<CommandRecord>> {
        let row = rows(&self.read().commands, &key.pk, &key.sk).and_then(|v| v.last().cloned());
        Ok(row.map(Arc::unwrap_or_clone))
    }

    async fn list_commands(&self, key: &EntityKey) -> Result<Vec<CommandRecord>> {
        let rows: Vec<_> = rows(&self.read().commands, &key.pk, &key.sk)
            .map(|v| v.values().cloned().collect())
            .unwrap_or_default();
        Ok(copies(rows))
    }

    async fn set_command_status(&self, key: &EntityKey, version: u64, status: CommandStatus) -> Result<()> {
        let mut tables = self.write();
        let command = tables
            .commands
            .get_mut(&key.pk)
            .and_then(|p| p.get_mut(&key.sk))
            .and_then(|v| v.get_mut(&version))
            .ok_or_else(|| Error::NotFound {
                key: format!("{}@{version}", key.id()),
            })?;
        // Copies the row only if a reader still holds it.
        Arc::make_mut(command).status = status;
        Ok(())
    }

    async fn apply(&self, writes: &[ApplyWrite]) -> Result<()> {
        self.apply_rows(writes.iter().cloned().map(Rows::from).collect())
    }

    async fn apply_owned(&self, writes: Vec<ApplyWrite>) -> Result<Vec<DataItem>> {
        let data: Vec<DataItem> = writes.iter().map(|w| w.data.clone()).collect();
        self.apply_rows(writes.into_iter().map(Rows::from).collect())?;
        Ok(data)
    }

    async fn get_data(&self, key: &EntityKey) -> Result<Option<DataItem>> {
        let row = self
            .read()
            .data
            .get(&key.pk)
            .and_then(|p| p.get(&key.sk).cloned());
        Ok(row.map(Arc::unwrap_or_clone))
    }

    async fn query_data(&self, query: &RangeQuery) -> Result<RangePage> {
        let rows: Vec<Arc<DataItem>> = {
            let tables = self.read();
            let Some(partition) = tables.data.get(&query.pk) else {
                return Ok(RangePage {
                    items: Vec::new(),
                    last_sk: None,
                });
            };
            let bounds = range::SkRange::new(query.sk.as_ref(), query.order, query.start_after.as_deref());
            match (bounds.as_range(), query.order) {
                (None, _) => Vec::new(),
                (Some(r), SortOrder::Ascending) => partition
                    .range::<str, _>(r)
                    .take(query.limit)
                    .map(|(_, v)| v.clone())
                    .collect(),
                (Some(r), SortOrder::Descending) => partition
                    .range::<str, _>(r)
                    .rev()
                    .take(query.limit)
                    .map(|(_, v)| v.clone())
                    .collect(),
            }
        };
        let items = copies(rows);
        // Like DynamoDB: a full page says "there may be more".
        let last_sk = (items.len() == query.limit)
            .then(|| items.last().map(|i| i.sk.clone()))
            .flatten();
        Ok(RangePage { items, last_sk })
    }

    async fn query_index(&self, index: &str, query: &RangeQuery) -> Result<RangePage> {
        let (rows, last_sk) = {
            let tables = self.read();
            let Some(partition) = tables.indexes.get(&(index.to_owned(), query.pk.clone())) else {
                return Ok(RangePage {
                    items: Vec::new(),
                    last_sk: None,
                });
            };
            let bounds = range::SkRange::new(query.sk.as_ref(), query.order, query.start_after.as_deref());
            let entries: Vec<(&String, &(String, String))> = match (bounds.as_range(), query.order) {
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
            let rows: Vec<Arc<DataItem>> = entries
                .iter()
                .filter_map(|(_, (pk, sk))| tables.data.get(pk).and_then(|p| p.get(sk)).cloned())
                .collect();
            (rows, last_sk)
        };
        Ok(RangePage {
            items: copies(rows),
            last_sk,
        })
    }

    async fn get_history(&self, key: &EntityKey, version: u64) -> Result<Option<DataItem>> {
        let row = rows(&self.read().history, &key.pk, &key.sk).and_then(|h| h.get(&version).cloned());
        Ok(row.map(Arc::unwrap_or_clone))
    }

    async fn list_history(&self, key: &EntityKey) -> Result<Vec<DataItem>> {
        let rows: Vec<_> = rows(&self.read().history, &key.pk, &key.sk)
            .map(|h| h.values().cloned().collect())
            .unwrap_or_default();
        Ok(copies(rows))
    }

    async fn next_counter(&self, pk: &str, sk: &str) -> Result<u64> {
        let mut tables = self.write();
        let counter = tables.counters.entry((pk.to_owned(), sk.to_owned())).or_insert(0);
        *counter += 1;
        Ok(*counter)
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

    async fn get_idempotency(&self, tenant_code: &str, key: &str) -> Result<Option<IdempotencyRecord>> {
        let tables = self.read();
        Ok(tables
            .idempotency
            .get(&(tenant_code.to_owned(), key.to_owned()))
            .cloned())
    }
}
