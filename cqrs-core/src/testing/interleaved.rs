//! A storage decorator that yields to the scheduler around every call, so
//! that concurrent tasks really interleave between a read and the write that
//! depends on it — an in-memory backend otherwise completes every call
//! without ever suspending, and races would be won by luck.

use std::sync::Arc;

use async_trait::async_trait;

use chrono::{DateTime, Utc};

use crate::error::Result;
use crate::heartbeat::{Heartbeat, HeartbeatRenewal};
use crate::idempotency::IdempotencyRecord;
use crate::keys::EntityKey;
use crate::model::{CommandRecord, CommandStatus, DataItem, FailedCommand};
use crate::sequence::Counter;
use crate::storage::{ApplyWrite, RangePage, RangeQuery, Storage, StorageLimits};

/// Wraps a storage; every call yields before and after it runs.
#[derive(Debug, Clone)]
pub struct Interleaved(pub Arc<dyn Storage>);

macro_rules! interleave {
    ($self:ident . $call:ident ( $($arg:expr),* )) => {{
        tokio::task::yield_now().await;
        let result = $self.0.$call($($arg),*).await;
        tokio::task::yield_now().await;
        result
    }};
}

#[async_trait]
impl Storage for Interleaved {
    fn limits(&self) -> StorageLimits {
        self.0.limits()
    }

    async fn put_command(
        &self,
        command: &CommandRecord,
        idempotency: Option<&IdempotencyRecord>,
    ) -> Result<()> {
        interleave!(self.put_command(command, idempotency))
    }

    async fn get_command(&self, key: &EntityKey, version: u64) -> Result<Option<CommandRecord>> {
        interleave!(self.get_command(key, version))
    }

    async fn latest_command(
        &self,
        key: &EntityKey,
        data_version: Option<u64>,
    ) -> Result<Option<CommandRecord>> {
        interleave!(self.latest_command(key, data_version))
    }

    async fn list_commands(&self, key: &EntityKey) -> Result<Vec<CommandRecord>> {
        interleave!(self.list_commands(key))
    }

    async fn set_command_status(&self, key: &EntityKey, version: u64, status: CommandStatus) -> Result<()> {
        interleave!(self.set_command_status(key, version, status))
    }

    async fn apply(&self, writes: &[ApplyWrite]) -> Result<()> {
        interleave!(self.apply(writes))
    }

    async fn get_data(&self, key: &EntityKey) -> Result<Option<DataItem>> {
        interleave!(self.get_data(key))
    }

    async fn query_data(&self, query: &RangeQuery) -> Result<RangePage> {
        interleave!(self.query_data(query))
    }

    async fn get_history(&self, key: &EntityKey, version: u64) -> Result<Option<DataItem>> {
        interleave!(self.get_history(key, version))
    }

    async fn list_history(&self, key: &EntityKey) -> Result<Vec<DataItem>> {
        interleave!(self.list_history(key))
    }

    async fn next_counter(&self, counter: &Counter) -> Result<u64> {
        interleave!(self.next_counter(counter))
    }

    async fn put_failure(&self, failure: &FailedCommand) -> Result<()> {
        interleave!(self.put_failure(failure))
    }

    async fn delete_failure(&self, key: &EntityKey, version: u64) -> Result<()> {
        interleave!(self.delete_failure(key, version))
    }

    async fn get_failure(&self, key: &EntityKey, version: u64) -> Result<Option<FailedCommand>> {
        interleave!(self.get_failure(key, version))
    }

    async fn list_failures(&self, tenant_code: Option<&str>) -> Result<Vec<FailedCommand>> {
        interleave!(self.list_failures(tenant_code))
    }

    async fn get_idempotency(&self, tenant_code: &str, key: &str) -> Result<Option<IdempotencyRecord>> {
        interleave!(self.get_idempotency(tenant_code, key))
    }

    async fn query_index(&self, index: &str, query: &RangeQuery) -> Result<RangePage> {
        interleave!(self.query_index(index, query))
    }

    async fn put_index_entries(
        &self,
        key: &EntityKey,
        data_version: u64,
        indexes: &[String],
        entries: &[crate::index::IndexEntry],
    ) -> Result<()> {
        interleave!(self.put_index_entries(key, data_version, indexes, entries))
    }

    async fn renew_heartbeat(
        &self,
        publisher: &str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<HeartbeatRenewal> {
        interleave!(self.renew_heartbeat(publisher, expires_at, now))
    }

    async fn get_heartbeat(&self, publisher: &str) -> Result<Heartbeat> {
        interleave!(self.get_heartbeat(publisher))
    }
}
