//! Storage decorators that override only what they change.
//!
//! A decorator wraps another [`Storage`] to add something around some of its
//! calls: counting requests, logging, a cache, an injected fault. Written as
//! a plain `impl Storage`, it must forward every other method by hand, and a
//! forgotten one silently falls back to the trait's default instead of the
//! inner backend's behaviour ([`Storage::limits`] reports DynamoDB's limits
//! over a backend with others; [`Storage::apply_one`] skips the wrapper's
//! [`Storage::apply`]). [`StorageDecorator`] forwards every method to
//! [`StorageDecorator::inner`] unless the decorator overrides it, and every
//! `StorageDecorator` is a `Storage`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::error::Result;
use crate::heartbeat::{Heartbeat, HeartbeatRenewal};
use crate::idempotency::IdempotencyRecord;
use crate::index::IndexEntry;
use crate::keys::EntityKey;
use crate::model::{CommandRecord, CommandStatus, DataItem, FailedCommand};
use crate::sequence::Counter;
use crate::storage::{ApplyWrite, RangePage, RangeQuery, Storage, StorageLimits};

/// A [`Storage`] that passes every call to an inner one unless it overrides
/// the method: implement [`inner`](StorageDecorator::inner) and the methods
/// the decorator changes, and the type is a `Storage` (a blanket
/// implementation forwards to these methods).
///
/// Each method has the meaning, conditions and errors of the [`Storage`]
/// method of the same name. A method added to `Storage` later is added here
/// with a forwarding default, so a decorator keeps compiling and keeps the
/// inner backend's behaviour.
///
/// [`apply_one`](StorageDecorator::apply_one) is the one method that does
/// not go straight to the inner backend: it calls the decorator's own
/// [`apply`](StorageDecorator::apply), so a decorator that changes `apply`
/// sees every write. A decorator that leaves `apply` alone may override
/// `apply_one` to call `self.inner().apply_one(write)` and keep the inner
/// backend's single-write path (the in-memory backend stores the rows it is
/// given without copying them).
///
/// A decorator's type implements both traits, so with both in scope a
/// method call on it is ambiguous: hold it as `Arc<dyn Storage>`, or call
/// `Storage::get_data(&decorator, key)`.
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
/// use async_trait::async_trait;
/// use cqrs_core::{ApplyWrite, Result, Storage, StorageDecorator};
///
/// /// Counts atomic writes; every other call goes straight through.
/// #[derive(Debug)]
/// struct CountWrites {
///     inner: Arc<dyn Storage>,
///     writes: AtomicUsize,
/// }
///
/// #[async_trait]
/// impl StorageDecorator for CountWrites {
///     fn inner(&self) -> &dyn Storage {
///         self.inner.as_ref()
///     }
///
///     async fn apply(&self, writes: &[ApplyWrite]) -> Result<()> {
///         self.writes.fetch_add(1, Ordering::Relaxed);
///         self.inner.apply(writes).await
///     }
/// }
///
/// fn counted(backend: Arc<dyn Storage>) -> Arc<dyn Storage> {
///     Arc::new(CountWrites { inner: backend, writes: AtomicUsize::new(0) })
/// }
/// ```
#[async_trait]
pub trait StorageDecorator: Send + Sync + std::fmt::Debug + 'static {
    /// The storage every call not overridden goes to.
    fn inner(&self) -> &dyn Storage;

    /// See [`Storage::limits`].
    fn limits(&self) -> StorageLimits {
        self.inner().limits()
    }

    /// See [`Storage::put_command`].
    async fn put_command(
        &self,
        command: &CommandRecord,
        idempotency: Option<&IdempotencyRecord>,
    ) -> Result<()> {
        self.inner().put_command(command, idempotency).await
    }

    /// See [`Storage::get_command`].
    async fn get_command(&self, key: &EntityKey, version: u64) -> Result<Option<CommandRecord>> {
        self.inner().get_command(key, version).await
    }

    /// See [`Storage::latest_command`].
    async fn latest_command(
        &self,
        key: &EntityKey,
        data_version: Option<u64>,
    ) -> Result<Option<CommandRecord>> {
        self.inner().latest_command(key, data_version).await
    }

    /// See [`Storage::list_commands`].
    async fn list_commands(&self, key: &EntityKey) -> Result<Vec<CommandRecord>> {
        self.inner().list_commands(key).await
    }

    /// See [`Storage::set_command_status`].
    async fn set_command_status(&self, key: &EntityKey, version: u64, status: CommandStatus) -> Result<()> {
        self.inner().set_command_status(key, version, status).await
    }

    /// See [`Storage::apply`].
    async fn apply(&self, writes: &[ApplyWrite]) -> Result<()> {
        self.inner().apply(writes).await
    }

    /// See [`Storage::apply_one`]. Calls this decorator's
    /// [`apply`](StorageDecorator::apply) (see the trait's documentation).
    async fn apply_one(&self, write: Box<ApplyWrite>) -> Result<DataItem> {
        self.apply(std::slice::from_ref(&*write)).await?;
        Ok(write.data)
    }

    /// See [`Storage::get_data`].
    async fn get_data(&self, key: &EntityKey) -> Result<Option<DataItem>> {
        self.inner().get_data(key).await
    }

    /// See [`Storage::query_data`].
    async fn query_data(&self, query: &RangeQuery) -> Result<RangePage> {
        self.inner().query_data(query).await
    }

    /// See [`Storage::query_index`].
    async fn query_index(&self, index: &str, query: &RangeQuery) -> Result<RangePage> {
        self.inner().query_index(index, query).await
    }

    /// See [`Storage::put_index_entries`].
    async fn put_index_entries(
        &self,
        key: &EntityKey,
        data_version: u64,
        indexes: &[String],
        entries: &[IndexEntry],
    ) -> Result<()> {
        self.inner()
            .put_index_entries(key, data_version, indexes, entries)
            .await
    }

    /// See [`Storage::get_history`].
    async fn get_history(&self, key: &EntityKey, version: u64) -> Result<Option<DataItem>> {
        self.inner().get_history(key, version).await
    }

    /// See [`Storage::list_history`].
    async fn list_history(&self, key: &EntityKey) -> Result<Vec<DataItem>> {
        self.inner().list_history(key).await
    }

    /// See [`Storage::get_idempotency`].
    async fn get_idempotency(&self, tenant_code: &str, key: &str) -> Result<Option<IdempotencyRecord>> {
        self.inner().get_idempotency(tenant_code, key).await
    }

    /// See [`Storage::next_counter`].
    async fn next_counter(&self, counter: &Counter) -> Result<u64> {
        self.inner().next_counter(counter).await
    }

    /// See [`Storage::put_failure`].
    async fn put_failure(&self, failure: &FailedCommand) -> Result<()> {
        self.inner().put_failure(failure).await
    }

    /// See [`Storage::delete_failure`].
    async fn delete_failure(&self, key: &EntityKey, version: u64) -> Result<()> {
        self.inner().delete_failure(key, version).await
    }

    /// See [`Storage::get_failure`].
    async fn get_failure(&self, key: &EntityKey, version: u64) -> Result<Option<FailedCommand>> {
        self.inner().get_failure(key, version).await
    }

    /// See [`Storage::list_failures`].
    async fn list_failures(&self, tenant_code: Option<&str>) -> Result<Vec<FailedCommand>> {
        self.inner().list_failures(tenant_code).await
    }

    /// See [`Storage::renew_heartbeat`].
    async fn renew_heartbeat(
        &self,
        publisher: &str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<HeartbeatRenewal> {
        self.inner().renew_heartbeat(publisher, expires_at, now).await
    }

    /// See [`Storage::get_heartbeat`].
    async fn get_heartbeat(&self, publisher: &str) -> Result<Heartbeat> {
        self.inner().get_heartbeat(publisher).await
    }
}

#[async_trait]
impl<D: StorageDecorator> Storage for D {
    fn limits(&self) -> StorageLimits {
        StorageDecorator::limits(self)
    }

    async fn put_command(
        &self,
        command: &CommandRecord,
        idempotency: Option<&IdempotencyRecord>,
    ) -> Result<()> {
        StorageDecorator::put_command(self, command, idempotency).await
    }

    async fn get_command(&self, key: &EntityKey, version: u64) -> Result<Option<CommandRecord>> {
        StorageDecorator::get_command(self, key, version).await
    }

    async fn latest_command(
        &self,
        key: &EntityKey,
        data_version: Option<u64>,
    ) -> Result<Option<CommandRecord>> {
        StorageDecorator::latest_command(self, key, data_version).await
    }

    async fn list_commands(&self, key: &EntityKey) -> Result<Vec<CommandRecord>> {
        StorageDecorator::list_commands(self, key).await
    }

    async fn set_command_status(&self, key: &EntityKey, version: u64, status: CommandStatus) -> Result<()> {
        StorageDecorator::set_command_status(self, key, version, status).await
    }

    async fn apply(&self, writes: &[ApplyWrite]) -> Result<()> {
        StorageDecorator::apply(self, writes).await
    }

    async fn apply_one(&self, write: Box<ApplyWrite>) -> Result<DataItem> {
        StorageDecorator::apply_one(self, write).await
    }

    async fn get_data(&self, key: &EntityKey) -> Result<Option<DataItem>> {
        StorageDecorator::get_data(self, key).await
    }

    async fn query_data(&self, query: &RangeQuery) -> Result<RangePage> {
        StorageDecorator::query_data(self, query).await
    }

    async fn query_index(&self, index: &str, query: &RangeQuery) -> Result<RangePage> {
        StorageDecorator::query_index(self, index, query).await
    }

    async fn put_index_entries(
        &self,
        key: &EntityKey,
        data_version: u64,
        indexes: &[String],
        entries: &[IndexEntry],
    ) -> Result<()> {
        StorageDecorator::put_index_entries(self, key, data_version, indexes, entries).await
    }

    async fn get_history(&self, key: &EntityKey, version: u64) -> Result<Option<DataItem>> {
        StorageDecorator::get_history(self, key, version).await
    }

    async fn list_history(&self, key: &EntityKey) -> Result<Vec<DataItem>> {
        StorageDecorator::list_history(self, key).await
    }

    async fn get_idempotency(&self, tenant_code: &str, key: &str) -> Result<Option<IdempotencyRecord>> {
        StorageDecorator::get_idempotency(self, tenant_code, key).await
    }

    async fn next_counter(&self, counter: &Counter) -> Result<u64> {
        StorageDecorator::next_counter(self, counter).await
    }

    async fn put_failure(&self, failure: &FailedCommand) -> Result<()> {
        StorageDecorator::put_failure(self, failure).await
    }

    async fn delete_failure(&self, key: &EntityKey, version: u64) -> Result<()> {
        StorageDecorator::delete_failure(self, key, version).await
    }

    async fn get_failure(&self, key: &EntityKey, version: u64) -> Result<Option<FailedCommand>> {
        StorageDecorator::get_failure(self, key, version).await
    }

    async fn list_failures(&self, tenant_code: Option<&str>) -> Result<Vec<FailedCommand>> {
        StorageDecorator::list_failures(self, tenant_code).await
    }

    async fn renew_heartbeat(
        &self,
        publisher: &str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<HeartbeatRenewal> {
        StorageDecorator::renew_heartbeat(self, publisher, expires_at, now).await
    }

    async fn get_heartbeat(&self, publisher: &str) -> Result<Heartbeat> {
        StorageDecorator::get_heartbeat(self, publisher).await
    }
}
