//! [`DynamoDbStorage`]: the storage primitives on DynamoDB.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeValue, ConditionCheck, KeysAndAttributes, Put, ReturnValuesOnConditionCheckFailure,
    TransactWriteItem, Update,
};
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, Utc};
use cqrs_core::{
    command_sk, ApplyWrite, CommandRecord, CommandStatus, CommandWrite, Counter, DataItem, EntityKey, Error,
    ExpectedVersion, FailedCommand, Heartbeat, HeartbeatRenewal, IdempotencyRecord, IndexEntry, RangePage,
    RangeQuery, Result, SkCondition, SortOrder, Storage, StorageLimits, UnreadableRow, INDEX_KEY_SEPARATOR,
};

use crate::counter;
use crate::error::{build_error, is_retryable_reason, sdk_error, sdk_error_retryable_if, shape_error};
use crate::heartbeat;
use crate::item::{
    check_size, command_from_item, command_to_item, data_from_item, data_to_item, failure_from_item,
    failure_key, failure_to_item, history_from_item, history_to_item, idempotency_from_item, idempotency_key,
    idempotency_to_item, key, n, s, string_attribute, version_of, Item, FAILURE_PK_PREFIX, MAX_ITEM_BYTES,
};
use crate::tables::{ensure_tables, index_attributes, TableNames};

/// DynamoDB's limit on the number of items in one transaction.
pub const MAX_TRANSACTION_ITEMS: usize = 100;
/// DynamoDB's limit on the total size of the items of one transaction.
pub const MAX_TRANSACTION_BYTES: usize = 4 * 1024 * 1024;

/// DynamoDB's limit on the number of keys of one `BatchGetItem`.
const MAX_BATCH_GET_KEYS: u64 = 100;
/// Command versions read by the first probe above the versions
/// [`DynamoDbStorage::latest_from`] starts with; each further probe reads
/// twice as many, up to [`MAX_BATCH_GET_KEYS`].
const FIRST_PROBE: u64 = 16;
/// Sends of one `BatchGetItem` (its unprocessed keys sent again) before
/// giving up with a retryable error.
const BATCH_GET_ATTEMPTS: u32 = 10;

/// The condition on an idempotency key's row: no row, or an expired one
/// (replaced). `:now` is the current time in seconds since the epoch.
const KEY_FREE: &str = "attribute_not_exists(pk) OR expiresAt <= :now";

/// The storage backend on DynamoDB.
///
/// Every write that must be atomic is one request: a conditional `PutItem`
/// or one `TransactWriteItems`. Reads are strongly consistent. Cheap to
/// clone (the SDK client is).
///
/// ```no_run
/// # async fn run() -> cqrs_core::Result<()> {
/// use std::sync::Arc;
/// use cqrs_dynamodb::{DynamoDbStorage, TableNames};
///
/// let client = cqrs_dynamodb::local_client("http://127.0.0.1:8000");
/// let storage = DynamoDbStorage::new(client, TableNames::new("dev", "shop", "order"));
/// storage.ensure_tables().await?;
/// let engine = cqrs_core::Engine::builder(Arc::new(storage)).build();
/// # let _ = engine; Ok(()) }
/// ```
///
/// Or, the same, [`DynamoDbStorage::engine`].
#[derive(Debug, Clone)]
pub struct DynamoDbStorage {
    client: Client,
    tables: TableNames,
    superseded_ttl: Option<Duration>,
}

/// What each item of an apply transaction is, to explain a cancellation.
#[derive(Debug, Clone)]
enum TxItem {
    InsertCommand { key: EntityKey, version: u64 },
    MarkApplied { key: EntityKey, version: u64 },
    Data { key: EntityKey, expected: u64 },
    IdempotencyKey { key: EntityKey, expected: u64 },
    Other,
}

impl DynamoDbStorage {
    /// A backend over `tables`, using `client`.
    pub fn new(client: Client, tables: TableNames) -> Self {
        Self {
            client,
            tables,
            superseded_ttl: None,
        }
    }

    /// Gives superseded command rows and history rows a time to live, as the
    /// reference framework does (off by default: everything is kept).
    pub fn with_superseded_ttl(mut self, ttl: Duration) -> Self {
        self.superseded_ttl = Some(ttl);
        self
    }

    /// The table names.
    pub fn tables(&self) -> &TableNames {
        &self.tables
    }

    /// The SDK client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Creates the tables if they do not exist (see [`ensure_tables`]).
    pub async fn ensure_tables(&self) -> Result<()> {
        ensure_tables(&self.client, &self.tables).await
    }

    /// An [`Engine`](cqrs_core::Engine) builder over this backend (a clone
    /// of it): the entry point every backend has
    /// (`cqrs_memory::InMemory::engine()` for the in-memory one).
    ///
    /// ```no_run
    /// # async fn run() -> cqrs_core::Result<()> {
    /// use cqrs_core::{AsyncDispatch, CommandInput, CommandService, InvocationContext};
    /// use cqrs_dynamodb::{DynamoDbStorage, TableNames};
    ///
    /// let client = cqrs_dynamodb::local_client("http://127.0.0.1:8000");
    /// let storage = DynamoDbStorage::new(client, TableNames::new("dev", "shop", "order"));
    /// storage.ensure_tables().await?;
    /// let engine = storage
    ///     .engine()
    ///     .dispatch(AsyncDispatch::External) // the stream settles async commands
    ///     .build();
    /// let ctx = InvocationContext::new("shop-a", "user-1");
    /// let item = engine
    ///     .publish_sync(CommandInput::new("TENANT#shop-a", "PRODUCT#PRD-001"), &ctx)
    ///     .await?
    ///     .into_item();
    /// assert_eq!(item.version, 1);
    /// # Ok(()) }
    /// ```
    pub fn engine(&self) -> cqrs_core::EngineBuilder {
        cqrs_core::Engine::builder(std::sync::Arc::new(self.clone()))
    }

    /// The expiry, in seconds since the epoch, of a row superseded now.
    fn expiry(&self) -> Option<i64> {
        self.superseded_ttl
            .map(|ttl| Utc::now().timestamp() + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2))
    }

    /// The command row with the highest version, in a constant number of
    /// requests (see [`Storage::latest_command`]).
    ///
    /// Versions are contiguous from 1 and a command is stored before it is
    /// applied, so the data row's version (`known`, read when `None`; 0: no
    /// data row) is stored, and the latest is the top of the run of versions
    /// above it: one `BatchGetItem` reads `known` and `known + 1` (nothing pending:
    /// done), and if `known + 1` is there, further ones read 16, 32, 64,
    /// then 100 versions up, until one is missing. When the starting version
    /// is missing (no data row, or rows deleted by their time to live), every
    /// command row of the entity is read instead ([`Self::scan_latest`]).
    async fn latest_from(&self, key: &EntityKey, known: Option<u64>) -> Result<Option<(u64, Item)>> {
        let start = match known {
            None => self.data_version(key).await?.unwrap_or(0),
            Some(known) => known,
        };
        if start == 0 {
            return self.scan_latest(key).await;
        }
        let mut window = start..=start.saturating_add(1);
        let mut found = self.batch_get_commands(key, window.clone()).await?;
        let Some(first) = found.remove(&start) else {
            return self.scan_latest(key).await;
        };
        let mut latest = (start, first);
        // `start` is in: the run goes on from the next version.
        let mut size = 1;
        let mut next = start.saturating_add(1);
        loop {
            for version in next..=*window.end() {
                match found.remove(&version) {
                    Some(item) => latest = (version, item),
                    None => return Ok(Some(latest)),
                }
            }
            if *window.end() == u64::MAX {
                return Ok(Some(latest));
            }
            next = window.end() + 1;
            size = match size {
                1 => FIRST_PROBE,
                size => (size * 2).min(MAX_BATCH_GET_KEYS),
            };
            window = next..=next.saturating_add(size - 1);
            found = self.batch_get_commands(key, window.clone()).await?;
        }
    }

    /// The highest stored command version, from [`Self::latest_from`].
    async fn latest_version(&self, key: &EntityKey, known: u64) -> Result<Option<u64>> {
        Ok(self
            .latest_from(key, Some(known))
            .await?
            .map(|(version, _)| version))
    }

    /// The version of the data row, reading nothing else of it.
    async fn data_version(&self, key: &EntityKey) -> Result<Option<u64>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.tables.data)
            .set_key(Some(self::key(&key.pk, &key.sk)))
            .projection_expression("version")
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk_error)?;
        match out.item {
            None => Ok(None),
            Some(item) => version_of(&item)
                .map(Some)
                .ok_or_else(|| shape_error("data row", "no version")),
        }
    }

    /// The command rows of `versions` that exist, by version: one
    /// consistent `BatchGetItem` (at most [`MAX_BATCH_GET_KEYS`] versions),
    /// its unprocessed keys sent again with a backoff.
    async fn batch_get_commands(
        &self,
        key: &EntityKey,
        versions: std::ops::RangeInclusive<u64>,
    ) -> Result<HashMap<u64, Item>> {
        let build = build_error("BatchGetItem");
        let keys = versions.map(|v| key_of_command(key, v)).collect();
        let mut request = KeysAndAttributes::builder()
            .set_keys(Some(keys))
            .consistent_read(true)
            .build()
            .map_err(build)?;
        let mut found = HashMap::new();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let out = self
                .client
                .batch_get_item()
                .request_items(&self.tables.command, request)
                .send()
                .await
                .map_err(sdk_error)?;
            let items = out
                .responses
                .and_then(|mut r| r.remove(&self.tables.command))
                .unwrap_or_default();
            for item in items {
                let version = match item.get("sk") {
                    Some(AttributeValue::S(sk)) => cqrs_core::parse_command_sk(sk).map(|(_, v)| v),
                    _ => None,
                }
                .ok_or_else(|| shape_error("command row", "sort key has no version"))?;
                found.insert(version, item);
            }
            match out
                .unprocessed_keys
                .and_then(|mut u| u.remove(&self.tables.command))
            {
                Some(rest) if !rest.keys().is_empty() => {
                    if attempt >= BATCH_GET_ATTEMPTS {
                        return Err(Error::backend(
                            format!(
                                "BatchGetItem left {} keys unprocessed after {attempt} sends",
                                rest.keys().len()
                            ),
                            true,
                        ));
                    }
                    // Throttled: back off as DynamoDB asks, 50 ms doubling to 1 s.
                    let backoff = Duration::from_millis(50).saturating_mul(1 << attempt.min(5));
                    tokio::time::sleep(backoff.min(Duration::from_secs(1))).await;
                    request = rest;
                }
                _ => return Ok(found),
            }
        }
    }

    /// The command row with the highest version, reading every command row
    /// of the entity: sort keys `{sk}@{n}` order as text (`@10` before `@9`).
    async fn scan_latest(&self, key: &EntityKey) -> Result<Option<(u64, Item)>> {
        let prefix = command_sk(&key.sk, 0);
        let prefix = &prefix[..prefix.len() - 1];
        let mut latest: Option<(u64, Item)> = None;
        let mut start = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.tables.command)
                .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                .expression_attribute_values(":pk", s(key.pk.as_str()))
                .expression_attribute_values(":prefix", s(prefix))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(sdk_error)?;
            for item in page.items.unwrap_or_default() {
                let version = match item.get("sk") {
                    Some(AttributeValue::S(sk)) => cqrs_core::parse_command_sk(sk).map(|(_, v)| v),
                    _ => None,
                };
                if let Some(version) = version {
                    if latest.as_ref().is_none_or(|(v, _)| version > *v) {
                        latest = Some((version, item));
                    }
                }
            }
            match page.last_evaluated_key {
                Some(next) if !next.is_empty() => start = Some(next),
                _ => return Ok(latest),
            }
        }
    }

    /// The `Put` of an idempotency key's row, on the condition that no live
    /// row holds the key; returns it with its size.
    fn key_put(&self, record: &IdempotencyRecord) -> Result<(Put, usize)> {
        let item = idempotency_to_item(record)?;
        let bytes = check_size(&item)?;
        let put = Put::builder()
            .table_name(&self.tables.sequences)
            .set_item(Some(item))
            .condition_expression(KEY_FREE)
            .expression_attribute_values(":now", n(Utc::now().timestamp()))
            .build()
            .map_err(build_error("TransactWriteItems"))?;
        Ok((put, bytes))
    }

    /// Every item of `table` under `pk` whose sort key starts with `prefix`.
    async fn query_prefix(&self, table: &str, pk: &str, prefix: &str) -> Result<Vec<Item>> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(table)
                .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                .expression_attribute_values(":pk", s(pk))
                .expression_attribute_values(":prefix", s(prefix))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(sdk_error)?;
            items.extend(page.items.unwrap_or_default());
            match page.last_evaluated_key {
                Some(next) if !next.is_empty() => start = Some(next),
                _ => return Ok(items),
            }
        }
    }

    /// Every `{sk}@{version}` row of an entity in `table`, by ascending
    /// version (their sort keys order as text, `@10` before `@9`).
    async fn versioned_rows<T>(
        &self,
        table: &str,
        key: &EntityKey,
        parse: fn(Item) -> Result<T>,
        version: fn(&T) -> u64,
    ) -> Result<Vec<T>> {
        let prefix = format!("{}@", key.sk);
        let mut rows = self
            .query_prefix(table, &key.pk, &prefix)
            .await?
            .into_iter()
            .map(parse)
            .collect::<Result<Vec<_>>>()?;
        rows.sort_by_key(version);
        Ok(rows)
    }

    async fn get(&self, table: &str, pk: &str, sk: &str) -> Result<Option<Item>> {
        let out = self
            .client
            .get_item()
            .table_name(table)
            .set_key(Some(key(pk, sk)))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk_error)?;
        Ok(out.item)
    }

    fn conflict(key: &EntityKey, expected: u64, actual: Option<u64>) -> Error {
        Error::Conflict {
            key: key.id(),
            expected: ExpectedVersion::Exactly(expected),
            actual,
        }
    }

    /// The transaction items of one apply, with what each one is.
    /// Returns the bytes of the items it adds.
    fn apply_items(&self, write: &ApplyWrite, items: &mut Vec<(TransactWriteItem, TxItem)>) -> Result<usize> {
        let mut bytes = 0;
        let key_of = write.data.key();
        let version = write.data.version;
        let expiry = self.expiry();
        let build = build_error("TransactWriteItems");
        match &write.command {
            CommandWrite::Insert(command) => {
                let item = command_to_item(command)?;
                bytes += check_size(&item)?;
                let put = Put::builder()
                    .table_name(&self.tables.command)
                    .set_item(Some(item))
                    .condition_expression("attribute_not_exists(pk)")
                    .build()
                    .map_err(build)?;
                items.push((
                    TransactWriteItem::builder().put(put).build(),
                    TxItem::InsertCommand {
                        key: key_of.clone(),
                        version,
                    },
                ));
            }
            CommandWrite::MarkApplied => {
                let update = Update::builder()
                    .table_name(&self.tables.command)
                    .set_key(Some(key(&key_of.pk, &command_sk(&key_of.sk, version))))
                    .update_expression("SET #status = :applied")
                    .condition_expression("attribute_exists(pk)")
                    .expression_attribute_names("#status", "status")
                    .expression_attribute_values(":applied", s("applied"))
                    .build()
                    .map_err(build)?;
                items.push((
                    TransactWriteItem::builder().update(update).build(),
                    TxItem::MarkApplied {
                        key: key_of.clone(),
                        version,
                    },
                ));
            }
        }
        let mut data = data_to_item(&write.data)?;
        for entry in &write.indexes {
            let (hash, range) = index_attributes(&entry.index);
            data.insert(hash, s(&entry.pk));
            data.insert(range, s(&entry.sk));
        }
        bytes += check_size(&data)?;
        let mut put = Put::builder()
            .table_name(&self.tables.data)
            .set_item(Some(data))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        put = match write.expected_data_version {
            0 => put.condition_expression("attribute_not_exists(pk)"),
            expected => put
                .condition_expression("version = :expected")
                .expression_attribute_values(":expected", n(expected)),
        };
        items.push((
            TransactWriteItem::builder()
                .put(put.build().map_err(build)?)
                .build(),
            TxItem::Data {
                key: key_of.clone(),
                expected: write.expected_data_version,
            },
        ));
        if let Some(history) = &write.history {
            let item = history_to_item(history, expiry)?;
            bytes += check_size(&item)?;
            let put = Put::builder()
                .table_name(&self.tables.history)
                .set_item(Some(item))
                .build()
                .map_err(build)?;
            items.push((TransactWriteItem::builder().put(put).build(), TxItem::Other));
        }
        if let (Some(expiry), true) = (expiry, version > 1) {
            // The superseded command row expires, as in the reference framework.
            let update = Update::builder()
                .table_name(&self.tables.command)
                .set_key(Some(key(&key_of.pk, &command_sk(&key_of.sk, version - 1))))
                .update_expression("SET #ttl = :ttl")
                .expression_attribute_names("#ttl", "ttl")
                .expression_attribute_values(":ttl", n(expiry))
                .build()
                .map_err(build)?;
            items.push((TransactWriteItem::builder().update(update).build(), TxItem::Other));
        }
        if let Some(record) = &write.idempotency {
            let (put, size) = self.key_put(record)?;
            bytes += size;
            items.push((
                TransactWriteItem::builder().put(put).build(),
                TxItem::IdempotencyKey {
                    key: key_of.clone(),
                    expected: write.expected_data_version,
                },
            ));
        }
        Ok(bytes)
    }

    /// Explains a cancelled apply transaction with the first failed condition.
    async fn cancellation(
        &self,
        err: SdkError<TransactWriteItemsError, HttpResponse>,
        items: &[TxItem],
    ) -> Result<Error> {
        let Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) = err.as_service_error()
        else {
            return Ok(sdk_error(err));
        };
        let reasons = cancelled.cancellation_reasons();
        let failed = reasons
            .iter()
            .zip(items)
            .find(|(reason, _)| reason.code() == Some("ConditionalCheckFailed"));
        if let Some((reason, item)) = failed {
            return Ok(match item {
                TxItem::Data { key, expected } => {
                    Self::conflict(key, *expected, reason.item().and_then(version_of))
                }
                // The command row of `version` exists: the latest is at or above it.
                TxItem::InsertCommand { key, version } => {
                    Self::conflict(key, version - 1, self.latest_version(key, *version).await?)
                }
                // The key is held by a live row; the data row's condition held
                // (it comes first, and would be the reason given).
                TxItem::IdempotencyKey { key, expected } => {
                    Self::conflict(key, *expected, (*expected > 0).then_some(*expected))
                }
                TxItem::MarkApplied { key, version } => Error::NotFound {
                    key: format!("{}@{version}", key.id()),
                },
                TxItem::Other => sdk_error(err),
            });
        }
        let retryable = reasons.iter().filter_map(|r| r.code()).any(is_retryable_reason);
        Ok(sdk_error_retryable_if(err, retryable))
    }
}

#[async_trait]
impl Storage for DynamoDbStorage {
    fn limits(&self) -> StorageLimits {
        StorageLimits {
            max_transaction_items: MAX_TRANSACTION_ITEMS,
            max_item_bytes: MAX_ITEM_BYTES,
            max_transaction_bytes: MAX_TRANSACTION_BYTES,
            // Command, data, history, and the superseded command's TTL.
            rows_per_command: if self.superseded_ttl.is_some() { 4 } else { 3 },
        }
    }

    async fn put_command(
        &self,
        command: &CommandRecord,
        idempotency: Option<&IdempotencyRecord>,
    ) -> Result<()> {
        let key_of = command.key();
        let version = command.version;
        let item = command_to_item(command)?;
        check_size(&item)?;
        // On a failed condition: a version known to be stored, where the
        // search for the latest starts (0: the data row's).
        let failed: Option<u64> = if version == 1 && idempotency.is_none() {
            match self
                .client
                .put_item()
                .table_name(&self.tables.command)
                .set_item(Some(item))
                .condition_expression("attribute_not_exists(pk)")
                .send()
                .await
            {
                Ok(_) => None,
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
                {
                    Some(1)
                }
                Err(e) => return Err(sdk_error(e)),
            }
        } else {
            let build = build_error("TransactWriteItems");
            let mut transact = Vec::with_capacity(3);
            if version > 1 {
                let predecessor = ConditionCheck::builder()
                    .table_name(&self.tables.command)
                    .set_key(Some(key_of_command(&key_of, version - 1)))
                    .condition_expression("attribute_exists(pk)")
                    .build()
                    .map_err(build)?;
                transact.push(TransactWriteItem::builder().condition_check(predecessor).build());
            }
            let put = Put::builder()
                .table_name(&self.tables.command)
                .set_item(Some(item))
                .condition_expression("attribute_not_exists(pk)")
                .build()
                .map_err(build)?;
            let put_at = transact.len();
            transact.push(TransactWriteItem::builder().put(put).build());
            if let Some(record) = idempotency {
                let (put, _) = self.key_put(record)?;
                transact.push(TransactWriteItem::builder().put(put).build());
            }
            let sent = self
                .client
                .transact_write_items()
                .set_transact_items(Some(transact))
                .send()
                .await;
            match sent {
                Ok(_) => None,
                Err(e) => match e.as_service_error() {
                    Some(TransactWriteItemsError::TransactionCanceledException(c))
                        if c.cancellation_reasons()
                            .iter()
                            .any(|r| r.code() == Some("ConditionalCheckFailed")) =>
                    {
                        let failed_at = |i: usize| {
                            c.cancellation_reasons()
                                .get(i)
                                .is_some_and(|r| r.code() == Some("ConditionalCheckFailed"))
                        };
                        Some(if failed_at(put_at) {
                            // The version is taken.
                            version
                        } else if version > 1 && !failed_at(0) {
                            // Only the key is taken: the predecessor is there
                            // (if wrong, the search falls back to reading
                            // every version).
                            version - 1
                        } else {
                            0
                        })
                    }
                    other => {
                        // Cancelled for another reason than a condition:
                        // contention, which a retry may get past.
                        let cancelled = matches!(
                            other,
                            Some(TransactWriteItemsError::TransactionCanceledException(_))
                        );
                        return Err(sdk_error_retryable_if(e, cancelled));
                    }
                },
            }
        };
        match failed {
            None => Ok(()),
            Some(known) => Err(Self::conflict(
                &key_of,
                version - 1,
                self.latest_version(&key_of, known).await?,
            )),
        }
    }

    async fn get_command(&self, key: &EntityKey, version: u64) -> Result<Option<CommandRecord>> {
        self.get(&self.tables.command, &key.pk, &command_sk(&key.sk, version))
            .await?
            .map(command_from_item)
            .transpose()
    }

    async fn latest_command(
        &self,
        key: &EntityKey,
        data_version: Option<u64>,
    ) -> Result<Option<CommandRecord>> {
        self.latest_from(key, data_version)
            .await?
            .map(|(_, item)| command_from_item(item))
            .transpose()
    }

    async fn list_commands(&self, key: &EntityKey) -> Result<Vec<CommandRecord>> {
        self.versioned_rows(&self.tables.command, key, command_from_item, |c| c.version)
            .await
    }

    async fn set_command_status(&self, key: &EntityKey, version: u64, status: CommandStatus) -> Result<()> {
        let failed = status == CommandStatus::Failed;
        let mut update = self
            .client
            .update_item()
            .table_name(&self.tables.command)
            .set_key(Some(key_of_command(key, version)))
            .update_expression("SET #status = :status")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":status", s(status.as_str().to_owned()));
        update = if failed {
            // `failed` never replaces `finished` (see the trait): the row
            // that fails the condition is returned, to tell "finished" from
            // "missing".
            update
                .condition_expression("attribute_exists(pk) AND #status <> :finished")
                .expression_attribute_values(":finished", s(CommandStatus::Finished.as_str().to_owned()))
                .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
        } else {
            update.condition_expression("attribute_exists(pk)")
        };
        match update.send().await {
            Ok(_) => Ok(()),
            Err(e) => match e.as_service_error() {
                Some(UpdateItemError::ConditionalCheckFailedException(failed)) => {
                    if failed.item().is_some_and(|item| !item.is_empty()) {
                        // Finished already: the late failure changes nothing.
                        Ok(())
                    } else {
                        Err(Error::NotFound {
                            key: format!("{}@{version}", key.id()),
                        })
                    }
                }
                _ => Err(sdk_error(e)),
            },
        }
    }

    async fn apply(&self, writes: &[ApplyWrite]) -> Result<()> {
        let mut items = Vec::with_capacity(writes.len() * 4);
        let mut bytes = 0;
        for write in writes {
            bytes += self.apply_items(write, &mut items)?;
        }
        if bytes > MAX_TRANSACTION_BYTES {
            return Err(Error::TooLarge {
                what: "transaction bytes".into(),
                size: bytes,
                limit: MAX_TRANSACTION_BYTES,
            });
        }
        if items.len() > MAX_TRANSACTION_ITEMS {
            return Err(Error::TooLarge {
                what: "transaction".into(),
                size: items.len(),
                limit: MAX_TRANSACTION_ITEMS,
            });
        }
        let (transact, roles): (Vec<_>, Vec<_>) = items.into_iter().unzip();
        match self
            .client
            .transact_write_items()
            .set_transact_items(Some(transact))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => Err(self.cancellation(e, &roles).await?),
        }
    }

    async fn get_data(&self, key: &EntityKey) -> Result<Option<DataItem>> {
        self.get(&self.tables.data, &key.pk, &key.sk)
            .await?
            .map(data_from_item)
            .transpose()
    }

    async fn query_data(&self, query: &RangeQuery) -> Result<RangePage> {
        let mut request = self
            .client
            .query()
            .table_name(&self.tables.data)
            .expression_attribute_values(":pk", s(&query.pk))
            .scan_index_forward(query.order == SortOrder::Ascending)
            .limit(i32::try_from(query.limit).unwrap_or(i32::MAX))
            .consistent_read(true);
        let condition = match &query.sk {
            None => "pk = :pk".to_owned(),
            Some(condition) => {
                let (expression, values) = sk_condition("sk", condition);
                for (name, value) in values {
                    request = request.expression_attribute_values(name, s(value));
                }
                format!("pk = :pk AND {expression}")
            }
        };
        request = request.key_condition_expression(condition);
        if let Some(after) = &query.start_after {
            request = request.set_exclusive_start_key(Some(key(&query.pk, after)));
        }
        let page = request.send().await.map_err(sdk_error)?;
        range_page(page, "sk", false)
    }

    /// One `Query` of the index's global secondary index (eventually
    /// consistent: DynamoDB offers nothing else on one).
    async fn query_index(&self, index: &str, query: &RangeQuery) -> Result<RangePage> {
        let (hash, range) = index_attributes(index);
        let mut request = self
            .client
            .query()
            .table_name(&self.tables.data)
            .index_name(index)
            .expression_attribute_names("#ipk", &hash)
            .expression_attribute_values(":pk", s(&query.pk))
            .scan_index_forward(query.order == SortOrder::Ascending)
            .limit(i32::try_from(query.limit).unwrap_or(i32::MAX));
        let condition = match &query.sk {
            None => "#ipk = :pk".to_owned(),
            Some(condition) => {
                let (expression, values) = sk_condition("#isk", condition);
                for (name, value) in values {
                    request = request.expression_attribute_values(name, s(value));
                }
                request = request.expression_attribute_names("#isk", &range);
                format!("#ipk = :pk AND {expression}")
            }
        };
        request = request.key_condition_expression(condition);
        if let Some(after) = &query.start_after {
            // An index's start key is the entry and the item's table key: the
            // entity pk begins the partition, the item's sk ends the entry.
            let pk = query.pk.split(INDEX_KEY_SEPARATOR).next().unwrap_or_default();
            let sk = after.rsplit(INDEX_KEY_SEPARATOR).next().unwrap_or_default();
            let mut start = key(pk, sk);
            start.insert(hash.clone(), s(&query.pk));
            start.insert(range.clone(), s(after));
            request = request.set_exclusive_start_key(Some(start));
        }
        let page = request.send().await.map_err(sdk_error)?;
        range_page(page, &range, true)
    }

    /// One conditional `UpdateItem` of the data row: `SET` the attributes
    /// of the given entries, `REMOVE` those of the other named indexes.
    async fn put_index_entries(
        &self,
        key: &EntityKey,
        data_version: u64,
        indexes: &[String],
        entries: &[IndexEntry],
    ) -> Result<()> {
        let mut sets = Vec::new();
        let mut removes = Vec::new();
        let mut request = self
            .client
            .update_item()
            .table_name(&self.tables.data)
            .set_key(Some(self::key(&key.pk, &key.sk)))
            .condition_expression("version = :version")
            .expression_attribute_values(":version", n(data_version))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        for (i, index) in indexes.iter().enumerate() {
            let (hash, range) = index_attributes(index);
            request = request
                .expression_attribute_names(format!("#h{i}"), hash)
                .expression_attribute_names(format!("#r{i}"), range);
            match entries.iter().find(|e| e.index == *index) {
                Some(entry) => {
                    sets.push(format!("#h{i} = :h{i}, #r{i} = :r{i}"));
                    request = request
                        .expression_attribute_values(format!(":h{i}"), s(&entry.pk))
                        .expression_attribute_values(format!(":r{i}"), s(&entry.sk));
                }
                None => removes.push(format!("#h{i}, #r{i}")),
            }
        }
        if let Some(stray) = entries.iter().find(|e| !indexes.contains(&e.index)) {
            return Err(Error::invalid(
                "index",
                format!("an entry of {} that is not among the indexes named", stray.index),
            ));
        }
        let mut expression = String::new();
        if !sets.is_empty() {
            expression = format!("SET {}", sets.join(", "));
        }
        if !removes.is_empty() {
            expression = format!("{expression} REMOVE {}", removes.join(", "));
        }
        if expression.is_empty() {
            return Ok(());
        }
        match request.update_expression(expression.trim()).send().await {
            Ok(_) => Ok(()),
            Err(e) => match e.as_service_error() {
                Some(UpdateItemError::ConditionalCheckFailedException(failed)) => Err(Self::conflict(
                    key,
                    data_version,
                    failed.item().and_then(version_of),
                )),
                _ => Err(sdk_error(e)),
            },
        }
    }

    async fn get_history(&self, key: &EntityKey, version: u64) -> Result<Option<DataItem>> {
        self.get(&self.tables.history, &key.pk, &command_sk(&key.sk, version))
            .await?
            .map(history_from_item)
            .transpose()
    }

    async fn list_history(&self, key: &EntityKey) -> Result<Vec<DataItem>> {
        self.versioned_rows(&self.tables.history, key, history_from_item, |h| h.version)
            .await
    }

    async fn renew_heartbeat(
        &self,
        publisher: &str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<HeartbeatRenewal> {
        heartbeat::renew(&self.client, &self.tables.sequences, publisher, expires_at, now).await
    }

    async fn get_heartbeat(&self, publisher: &str) -> Result<Heartbeat> {
        heartbeat::get(&self.client, &self.tables.sequences, publisher).await
    }

    async fn get_idempotency(&self, tenant_code: &str, key: &str) -> Result<Option<IdempotencyRecord>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.tables.sequences)
            .set_key(Some(idempotency_key(tenant_code, key)))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk_error)?;
        out.item.map(idempotency_from_item).transpose()
    }

    /// One `UpdateItem` when the counter has a count (the usual case); when
    /// it has none, a `GetItem` of the legacy count and an `UpdateItem`
    /// that starts from it unless another draw got there first.
    async fn next_counter(&self, counter: &Counter) -> Result<u64> {
        let table = &self.tables.sequences;
        if let Some(no) = counter::draw(&self.client, table, counter, None).await? {
            return Ok(no);
        }
        let legacy = self.get(table, &counter.pk, &counter.legacy_sk).await?;
        let start = legacy.as_ref().and_then(counter::count).unwrap_or(0);
        counter::draw(&self.client, table, counter, Some(start))
            .await?
            .ok_or_else(|| shape_error("counter", "no count after a draw without condition"))
    }

    async fn put_failure(&self, failure: &FailedCommand) -> Result<()> {
        self.client
            .put_item()
            .table_name(&self.tables.sequences)
            .set_item(Some(failure_to_item(failure)?))
            .send()
            .await
            .map_err(sdk_error)?;
        Ok(())
    }

    async fn delete_failure(&self, key: &EntityKey, version: u64) -> Result<()> {
        self.client
            .delete_item()
            .table_name(&self.tables.sequences)
            .set_key(Some(failure_key(key, version)?))
            .send()
            .await
            .map_err(sdk_error)?;
        Ok(())
    }

    async fn get_failure(&self, key: &EntityKey, version: u64) -> Result<Option<FailedCommand>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.tables.sequences)
            .set_key(Some(failure_key(key, version)?))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk_error)?;
        out.item.map(failure_from_item).transpose()
    }

    async fn list_failures(&self, tenant_code: Option<&str>) -> Result<Vec<FailedCommand>> {
        let mut items = Vec::new();
        let mut start = None;
        loop {
            // A tenant's failures are one partition; every tenant's is a scan
            // (an operator's query, and failure records are few).
            let (page_items, next) = match tenant_code {
                Some(tenant) => {
                    let page = self
                        .client
                        .query()
                        .table_name(&self.tables.sequences)
                        .key_condition_expression("pk = :pk")
                        .expression_attribute_values(":pk", s(format!("{FAILURE_PK_PREFIX}{tenant}")))
                        .consistent_read(true)
                        .set_exclusive_start_key(start)
                        .send()
                        .await
                        .map_err(sdk_error)?;
                    (page.items, page.last_evaluated_key)
                }
                None => {
                    let page = self
                        .client
                        .scan()
                        .table_name(&self.tables.sequences)
                        .filter_expression("begins_with(pk, :prefix)")
                        .expression_attribute_values(":prefix", s(FAILURE_PK_PREFIX))
                        .consistent_read(true)
                        .set_exclusive_start_key(start)
                        .send()
                        .await
                        .map_err(sdk_error)?;
                    (page.items, page.last_evaluated_key)
                }
            };
            items.extend(page_items.unwrap_or_default());
            match next {
                Some(next) if !next.is_empty() => start = Some(next),
                _ => break,
            }
        }
        let mut failures = items
            .into_iter()
            .map(failure_from_item)
            .collect::<Result<Vec<_>>>()?;
        failures.sort_by(|a, b| a.failed_at.cmp(&b.failed_at).then_with(|| a.key().cmp(&b.key())));
        Ok(failures)
    }
}

fn key_of_command(key: &EntityKey, version: u64) -> HashMap<String, AttributeValue> {
    self::key(&key.pk, &command_sk(&key.sk, version))
}

/// A sort-key condition as a key condition expression and its values.
/// A page of data rows from a `Query`; the next page starts after the
/// value of `sort_attribute` in its last evaluated key.
fn range_page(
    page: aws_sdk_dynamodb::operation::query::QueryOutput,
    sort_attribute: &str,
    of_index: bool,
) -> Result<RangePage> {
    let last_sk = match page
        .last_evaluated_key
        .as_ref()
        .and_then(|k| k.get(sort_attribute))
    {
        Some(AttributeValue::S(sk)) => Some(sk.clone()),
        _ => None,
    };
    let mut items = Vec::new();
    let mut unreadable = Vec::new();
    let mut index_keys = Vec::new();
    for item in page.items.unwrap_or_default() {
        // One row another program wrote in a shape this one cannot read
        // must not fail the page: it is reported by its key.
        let (pk, sk) = (string_attribute(&item, "pk"), string_attribute(&item, "sk"));
        let index_key = string_attribute(&item, sort_attribute);
        match data_from_item(item) {
            Ok(item) => {
                items.push(item);
                if of_index {
                    index_keys.push(index_key);
                }
            }
            Err(error) => unreadable.push(UnreadableRow {
                pk,
                sk,
                reason: error.to_string(),
            }),
        }
    }
    Ok(RangePage {
        items,
        last_sk,
        unreadable,
        index_keys,
    })
}

/// The key condition on the sort key attribute `name` (`sk`, or an
/// index's `#isk`), and its values.
fn sk_condition<'a>(name: &str, condition: &'a SkCondition) -> (String, Vec<(&'static str, &'a str)>) {
    match condition {
        SkCondition::Equals(v) => (format!("{name} = :sk"), vec![(":sk", v)]),
        SkCondition::BeginsWith(v) => (format!("begins_with({name}, :sk)"), vec![(":sk", v)]),
        SkCondition::Between(low, high) => (
            format!("{name} BETWEEN :low AND :high"),
            vec![(":low", low), (":high", high)],
        ),
        SkCondition::LessThan(v) => (format!("{name} < :sk"), vec![(":sk", v)]),
        SkCondition::LessOrEqual(v) => (format!("{name} <= :sk"), vec![(":sk", v)]),
        SkCondition::GreaterThan(v) => (format!("{name} > :sk"), vec![(":sk", v)]),
        SkCondition::GreaterOrEqual(v) => (format!("{name} >= :sk"), vec![(":sk", v)]),
    }
}
