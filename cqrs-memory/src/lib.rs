#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod range;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use async_trait::async_trait;
use cqrs_core::{
    ApplyWrite, CommandRecord, CommandStatus, CommandWrite, DataItem, EntityKey, Error, ExpectedVersion,
    FailedCommand, RangePage, RangeQuery, Result, SortOrder, Storage, StorageLimits,
};

/// The in-memory storage backend.
///
/// Same conditions, same errors and the same limits as the DynamoDB backend
/// (by default DynamoDB's: 100 rows per transaction, 400 KB per item), so code
/// tested against it behaves the same in production. Every write is atomic
/// under one lock; reads return copies.
///
/// Cheap to clone: clones share the same tables.
#[derive(Debug, Clone, Default)]
pub struct InMemory {
    tables: Arc<RwLock<Tables>>,
    limits: StorageLimits,
}

#[derive(Debug, Default)]
struct Tables {
    /// Command rows per entity, by version.
    commands: HashMap<EntityKey, BTreeMap<u64, CommandRecord>>,
    /// Data rows per partition, by sort key (sorted for range queries).
    data: HashMap<String, BTreeMap<String, DataItem>>,
    /// History rows per entity, by version.
    history: HashMap<EntityKey, BTreeMap<u64, DataItem>>,
    /// Sequence counters by (pk, sk).
    counters: HashMap<(String, String), u64>,
    /// Failure records by (entity, version).
    failures: HashMap<(EntityKey, u64), FailedCommand>,
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
}

impl Tables {
    fn latest_version(&self, key: &EntityKey) -> Option<u64> {
        self.commands.get(key).and_then(|v| v.keys().next_back().copied())
    }

    fn data_version(&self, key: &EntityKey) -> Option<u64> {
        self.data
            .get(&key.pk)
            .and_then(|p| p.get(&key.sk))
            .map(|d| d.version)
    }

    fn check(&self, write: &ApplyWrite) -> Result<()> {
        let key = write.data.key();
        let actual = self.data_version(&key);
        if actual.unwrap_or(0) != write.expected_data_version {
            return Err(Error::Conflict {
                key: key.id(),
                expected: ExpectedVersion::Exactly(write.expected_data_version),
                actual,
            });
        }
        let versions = self.commands.get(&key);
        let exists = versions.is_some_and(|v| v.contains_key(&write.data.version));
        match (&write.command, exists) {
            (CommandWrite::Insert(_), true) => Err(Error::Conflict {
                key: key.id(),
                expected: ExpectedVersion::Exactly(write.expected_data_version),
                actual: self.latest_version(&key),
            }),
            (CommandWrite::MarkApplied, false) => Err(Error::NotFound {
                key: format!("{}@{}", key.id(), write.data.version),
            }),
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl Storage for InMemory {
    fn limits(&self) -> StorageLimits {
        self.limits
    }

    async fn put_command(&self, command: &CommandRecord) -> Result<()> {
        let key = command.key();
        let mut tables = self.write();
        let latest = tables.latest_version(&key);
        let versions = tables.commands.get(&key);
        let taken = versions.is_some_and(|v| v.contains_key(&command.version));
        let predecessor_missing =
            command.version > 1 && !versions.is_some_and(|v| v.contains_key(&(command.version - 1)));
        if taken || predecessor_missing {
            return Err(Error::Conflict {
                key: key.id(),
                expected: ExpectedVersion::Exactly(command.version - 1),
                actual: latest,
            });
        }
        tables
            .commands
            .entry(key)
            .or_default()
            .insert(command.version, command.clone());
        Ok(())
    }

    async fn get_command(&self, key: &EntityKey, version: u64) -> Result<Option<CommandRecord>> {
        Ok(self
            .read()
            .commands
            .get(key)
            .and_then(|v| v.get(&version))
            .cloned())
    }

    async fn latest_command(&self, key: &EntityKey) -> Result<Option<CommandRecord>> {
        Ok(self
            .read()
            .commands
            .get(key)
            .and_then(|v| v.values().next_back())
            .cloned())
    }

    async fn list_commands(&self, key: &EntityKey) -> Result<Vec<CommandRecord>> {
        Ok(self
            .read()
            .commands
            .get(key)
            .map(|v| v.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn set_command_status(&self, key: &EntityKey, version: u64, status: CommandStatus) -> Result<()> {
        let mut tables = self.write();
        let command = tables
            .commands
            .get_mut(key)
            .and_then(|v| v.get_mut(&version))
            .ok_or_else(|| Error::NotFound {
                key: format!("{}@{version}", key.id()),
            })?;
        command.status = status;
        Ok(())
    }

    async fn apply(&self, writes: &[ApplyWrite]) -> Result<()> {
        let rows = writes.len() * self.limits.rows_per_command;
        if rows > self.limits.max_transaction_items {
            return Err(Error::TooLarge {
                what: "transaction".into(),
                size: rows,
                limit: self.limits.max_transaction_items,
            });
        }
        let mut tables = self.write();
        // Check every condition before touching anything: all or nothing.
        for write in writes {
            tables.check(write)?;
        }
        for write in writes {
            let key = write.data.key();
            match &write.command {
                CommandWrite::Insert(command) => {
                    tables
                        .commands
                        .entry(key.clone())
                        .or_default()
                        .insert(command.version, (**command).clone());
                }
                CommandWrite::MarkApplied => {
                    if let Some(command) = tables
                        .commands
                        .get_mut(&key)
                        .and_then(|v| v.get_mut(&write.data.version))
                    {
                        command.status = CommandStatus::Applied;
                    }
                }
            }
            if let Some(history) = &write.history {
                tables
                    .history
                    .entry(key.clone())
                    .or_default()
                    .insert(history.version, history.clone());
            }
            tables
                .data
                .entry(key.pk)
                .or_default()
                .insert(key.sk, write.data.clone());
        }
        Ok(())
    }

    async fn get_data(&self, key: &EntityKey) -> Result<Option<DataItem>> {
        Ok(self
            .read()
            .data
            .get(&key.pk)
            .and_then(|p| p.get(&key.sk))
            .cloned())
    }

    async fn query_data(&self, query: &RangeQuery) -> Result<RangePage> {
        let tables = self.read();
        let Some(partition) = tables.data.get(&query.pk) else {
            return Ok(RangePage {
                items: Vec::new(),
                last_sk: None,
            });
        };
        let bounds = range::SkRange::new(query.sk.as_ref(), query.order, query.start_after.as_deref());
        let items: Vec<DataItem> = match (bounds.as_range(), query.order) {
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
        };
        // Like DynamoDB: a full page says "there may be more".
        let last_sk = (items.len() == query.limit)
            .then(|| items.last().map(|i| i.sk.clone()))
            .flatten();
        Ok(RangePage { items, last_sk })
    }

    async fn get_history(&self, key: &EntityKey, version: u64) -> Result<Option<DataItem>> {
        Ok(self
            .read()
            .history
            .get(key)
            .and_then(|h| h.get(&version))
            .cloned())
    }

    async fn list_history(&self, key: &EntityKey) -> Result<Vec<DataItem>> {
        Ok(self
            .read()
            .history
            .get(key)
            .map(|h| h.values().cloned().collect())
            .unwrap_or_default())
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
}
