//! Shard leases and checkpoints: one item per shard, taken, renewed, fenced
//! and released with conditional writes.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::operation::update_item::{UpdateItemError, UpdateItemOutput};
use aws_sdk_dynamodb::types::{AttributeValue as DbValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use chrono::Utc;
use cqrs_core::Result;

use crate::error::{sdk_error, shape_error};
use crate::item::{key, n, s, Item};
use crate::tables::TableNames;

/// Prefix of the partition key of the shard items (checkpoint and lease) in
/// the sequences table, followed by the command table's name.
pub const CHECKPOINT_PK_PREFIX: &str = "STREAM#";

/// Milliseconds since the Unix epoch, by this host's wall clock (the
/// framework's, [`cqrs_core::clock::now`]: simulated time in a simulation).
///
/// Lease expiries are compared across hosts: their clocks must agree to well
/// within a lease's duration (NTP-synced hosts agree to milliseconds).
pub fn now_millis() -> i64 {
    cqrs_core::clock::now().timestamp_millis()
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Where the consumers stand in one shard: the last record of an unbroken run
/// of finished records, and whether the shard was read to its end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardCheckpoint {
    /// Every record up to this sequence number (included) is done; `None`:
    /// start at the oldest record.
    pub sequence_number: Option<String>,
    /// The shard is closed and every one of its records is done: its children may start.
    pub finished: bool,
}

/// The lease of a shard, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardLease {
    /// The consumer holding it, if any.
    pub owner: Option<String>,
    /// When it expires, in milliseconds since the epoch.
    pub expires_at_ms: Option<i64>,
}

/// What is stored about one shard: its checkpoint and its lease.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardRecord {
    /// The checkpoint.
    pub checkpoint: ShardCheckpoint,
    /// The lease.
    pub lease: ShardLease,
}

/// The outcome of [`LeaseStore::acquire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// The lease is the caller's now; the shard's checkpoint.
    Taken(ShardCheckpoint),
    /// Another consumer holds the lease, until the time given (milliseconds
    /// since the epoch) unless it renews it.
    Held {
        /// The holder.
        owner: String,
        /// Its expiry.
        expires_at_ms: i64,
    },
}

/// Leases and checkpoints of the shards of one stream.
///
/// [`DynamoDbLeases`] is the real thing (shared by every replica, durable);
/// [`MemoryLeases`] is for tests of one process. Every method that writes for
/// an `owner` is conditional on that owner holding the lease: a consumer that
/// lost its lease cannot move a checkpoint (fencing).
#[async_trait]
pub trait LeaseStore: Send + Sync + std::fmt::Debug {
    /// The shard's checkpoint and lease, if stored for `stream_arn` (an item
    /// left by another stream of the table counts as none).
    async fn get(&self, stream_arn: &str, shard_id: &str) -> Result<Option<ShardRecord>>;

    /// Takes the shard's lease for `owner`, for `duration`, if nobody holds
    /// it, its lease expired, or `owner` holds it already.
    async fn acquire(
        &self,
        stream_arn: &str,
        shard_id: &str,
        owner: &str,
        duration: Duration,
    ) -> Result<Acquired>;

    /// Extends `owner`'s lease to `duration` from now; `false` when `owner`
    /// does not hold it any more.
    async fn renew(&self, shard_id: &str, owner: &str, duration: Duration) -> Result<bool>;

    /// Saves the checkpoint, if `owner` holds the lease; `false` (nothing
    /// written) when it does not.
    async fn checkpoint(
        &self,
        stream_arn: &str,
        shard_id: &str,
        owner: &str,
        checkpoint: &ShardCheckpoint,
    ) -> Result<bool>;

    /// Gives the lease up, if `owner` holds it, so that another consumer
    /// takes the shard over at once.
    async fn release(&self, shard_id: &str, owner: &str) -> Result<()>;
}

/// Leases and checkpoints in the sequences table ([`TableNames::sequences`]):
/// one item per shard, at pk `STREAM#{command table}` and sk the shard id,
/// with the attributes `sequenceNumber` (string), `finished` (boolean),
/// `streamArn`, `updatedAt` (RFC 3339), `leaseOwner` (string) and
/// `leaseExpiresAt` (number, milliseconds since the epoch).
///
/// A lease is taken with the condition `attribute_not_exists(leaseOwner) OR
/// leaseExpiresAt < :now OR leaseOwner = :me`; renewals, checkpoints and the
/// release are conditional on `leaseOwner = :me`. Expiry is wall-clock time:
/// the hosts of the consumers must have synchronized clocks (NTP).
///
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct DynamoDbLeases {
    client: aws_sdk_dynamodb::Client,
    table: String,
    pk: String,
}

impl DynamoDbLeases {
    /// The shard items of the stream of `tables.command`, stored in `tables.sequences`.
    pub fn new(client: aws_sdk_dynamodb::Client, tables: &TableNames) -> Self {
        Self {
            client,
            table: tables.sequences.clone(),
            pk: format!("{CHECKPOINT_PK_PREFIX}{}", tables.command),
        }
    }

    /// The partition key the shard items are stored under.
    pub fn partition_key(&self) -> &str {
        &self.pk
    }

    fn update(
        &self,
        shard_id: &str,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(&self.pk, shard_id)))
    }
}

fn string_attr<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    match item.get(name) {
        Some(DbValue::S(value)) => Some(value),
        _ => None,
    }
}

/// The record stored in `item`, if it belongs to `stream_arn`.
fn record_of(item: &Item, stream_arn: &str) -> Result<Option<ShardRecord>> {
    if string_attr(item, "streamArn") != Some(stream_arn) {
        return Ok(None);
    }
    let sequence_number = match item.get("sequenceNumber") {
        Some(DbValue::S(seq)) => Some(seq.clone()),
        None => None,
        Some(_) => return Err(shape_error("stream checkpoint", "sequenceNumber is not a string")),
    };
    Ok(Some(ShardRecord {
        checkpoint: ShardCheckpoint {
            sequence_number,
            finished: matches!(item.get("finished"), Some(DbValue::Bool(true))),
        },
        lease: lease_of(item),
    }))
}

fn lease_of(item: &Item) -> ShardLease {
    ShardLease {
        owner: string_attr(item, "leaseOwner").map(str::to_owned),
        expires_at_ms: match item.get("leaseExpiresAt") {
            Some(DbValue::N(ms)) => ms.parse().ok(),
            _ => None,
        },
    }
}

#[async_trait]
impl LeaseStore for DynamoDbLeases {
    async fn get(&self, stream_arn: &str, shard_id: &str) -> Result<Option<ShardRecord>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(&self.pk, shard_id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk_error)?;
        match out.item {
            Some(item) => record_of(&item, stream_arn),
            None => Ok(None),
        }
    }

    async fn acquire(
        &self,
        stream_arn: &str,
        shard_id: &str,
        owner: &str,
        duration: Duration,
    ) -> Result<Acquired> {
        let now = now_millis();
        let sent = self
            .update(shard_id)
            .update_expression(
                "SET leaseOwner = :me, leaseExpiresAt = :expires, streamArn = :arn, updatedAt = :updated",
            )
            .condition_expression(
                "attribute_not_exists(leaseOwner) OR leaseExpiresAt < :now OR leaseOwner = :me",
            )
            .expression_attribute_values(":me", s(owner))
            .expression_attribute_values(":expires", n(now.saturating_add(millis(duration))))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":arn", s(stream_arn))
            .expression_attribute_values(":updated", s(Utc::now().to_rfc3339()))
            .return_values(ReturnValue::AllOld)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        let old = match sent {
            Ok(out) => out.attributes.unwrap_or_default(),
            Err(e) => {
                if let Some(UpdateItemError::ConditionalCheckFailedException(failed)) = e.as_service_error() {
                    let lease = failed.item().map(lease_of).unwrap_or_default();
                    return Ok(Acquired::Held {
                        owner: lease.owner.unwrap_or_default(),
                        expires_at_ms: lease.expires_at_ms.unwrap_or(now),
                    });
                }
                return Err(sdk_error(e));
            }
        };
        if let Some(record) = record_of(&old, stream_arn)? {
            return Ok(Acquired::Taken(record.checkpoint));
        }
        // A new shard item, or one left by another stream of the table (a
        // recreated table): its position means nothing here.
        if old.contains_key("sequenceNumber") || old.contains_key("finished") {
            let reset = self
                .update(shard_id)
                .update_expression("REMOVE sequenceNumber, finished")
                .condition_expression("leaseOwner = :me")
                .expression_attribute_values(":me", s(owner))
                .send()
                .await;
            if !owner_condition_held(reset)? {
                return Ok(Acquired::Held {
                    owner: String::new(),
                    expires_at_ms: now,
                });
            }
        }
        Ok(Acquired::Taken(ShardCheckpoint::default()))
    }

    async fn renew(&self, shard_id: &str, owner: &str, duration: Duration) -> Result<bool> {
        let sent = self
            .update(shard_id)
            .update_expression("SET leaseExpiresAt = :expires, updatedAt = :updated")
            .condition_expression("leaseOwner = :me")
            .expression_attribute_values(":me", s(owner))
            .expression_attribute_values(":expires", n(now_millis().saturating_add(millis(duration))))
            .expression_attribute_values(":updated", s(Utc::now().to_rfc3339()))
            .send()
            .await;
        owner_condition_held(sent)
    }

    async fn checkpoint(
        &self,
        stream_arn: &str,
        shard_id: &str,
        owner: &str,
        checkpoint: &ShardCheckpoint,
    ) -> Result<bool> {
        let mut set = vec!["streamArn = :arn", "updatedAt = :updated"];
        let mut update = self
            .update(shard_id)
            .condition_expression("leaseOwner = :me")
            .expression_attribute_values(":me", s(owner))
            .expression_attribute_values(":arn", s(stream_arn))
            .expression_attribute_values(":updated", s(Utc::now().to_rfc3339()));
        if let Some(seq) = &checkpoint.sequence_number {
            set.push("sequenceNumber = :seq");
            update = update.expression_attribute_values(":seq", s(seq));
        }
        if checkpoint.finished {
            set.push("finished = :finished");
            update = update.expression_attribute_values(":finished", DbValue::Bool(true));
        }
        let sent = update
            .update_expression(format!("SET {}", set.join(", ")))
            .send()
            .await;
        owner_condition_held(sent)
    }

    async fn release(&self, shard_id: &str, owner: &str) -> Result<()> {
        let sent = self
            .update(shard_id)
            .update_expression("REMOVE leaseOwner, leaseExpiresAt SET updatedAt = :updated")
            .condition_expression("leaseOwner = :me")
            .expression_attribute_values(":me", s(owner))
            .expression_attribute_values(":updated", s(Utc::now().to_rfc3339()))
            .send()
            .await;
        // Not ours any more: nothing to release.
        owner_condition_held(sent).map(drop)
    }
}

/// Whether an update conditional on `leaseOwner = :me` went through:
/// `Ok(false)` when the condition failed (the lease is another consumer's).
fn owner_condition_held(
    sent: std::result::Result<UpdateItemOutput, aws_sdk_dynamodb::error::SdkError<UpdateItemError>>,
) -> Result<bool> {
    match sent {
        Ok(_) => Ok(true),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
        {
            Ok(false)
        }
        Err(e) => Err(sdk_error(e)),
    }
}

/// One shard's item in [`MemoryLeases`].
#[derive(Debug, Clone, Default)]
struct MemoryShard {
    stream_arn: String,
    record: ShardRecord,
}

/// Leases and checkpoints in memory, with the same conditions as
/// [`DynamoDbLeases`]: for tests and single-process runs (a new process
/// starts over from the oldest record, which is safe but slow).
#[derive(Debug, Default)]
pub struct MemoryLeases {
    shards: Mutex<HashMap<String, MemoryShard>>,
}

impl MemoryLeases {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, MemoryShard>) -> T) -> T {
        // A panic elsewhere cannot leave an entry half-written: keep going.
        f(&mut self.shards.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

fn holds(lease: &ShardLease, owner: &str) -> bool {
    lease.owner.as_deref() == Some(owner)
}

#[async_trait]
impl LeaseStore for MemoryLeases {
    async fn get(&self, stream_arn: &str, shard_id: &str) -> Result<Option<ShardRecord>> {
        Ok(self.with(|shards| {
            shards
                .get(shard_id)
                .filter(|s| s.stream_arn == stream_arn)
                .map(|s| s.record.clone())
        }))
    }

    async fn acquire(
        &self,
        stream_arn: &str,
        shard_id: &str,
        owner: &str,
        duration: Duration,
    ) -> Result<Acquired> {
        let now = now_millis();
        Ok(self.with(|shards| {
            let shard = shards.entry(shard_id.to_owned()).or_default();
            let lease = &shard.record.lease;
            let free = lease.owner.is_none()
                || lease.expires_at_ms.is_some_and(|at| at < now)
                || holds(lease, owner);
            if !free {
                return Acquired::Held {
                    owner: lease.owner.clone().unwrap_or_default(),
                    expires_at_ms: lease.expires_at_ms.unwrap_or(now),
                };
            }
            if shard.stream_arn != stream_arn {
                shard.stream_arn = stream_arn.to_owned();
                shard.record.checkpoint = ShardCheckpoint::default();
            }
            shard.record.lease = ShardLease {
                owner: Some(owner.to_owned()),
                expires_at_ms: Some(now.saturating_add(millis(duration))),
            };
            Acquired::Taken(shard.record.checkpoint.clone())
        }))
    }

    async fn renew(&self, shard_id: &str, owner: &str, duration: Duration) -> Result<bool> {
        Ok(self.with(|shards| match shards.get_mut(shard_id) {
            Some(shard) if holds(&shard.record.lease, owner) => {
                shard.record.lease.expires_at_ms = Some(now_millis().saturating_add(millis(duration)));
                true
            }
            _ => false,
        }))
    }

    async fn checkpoint(
        &self,
        stream_arn: &str,
        shard_id: &str,
        owner: &str,
        checkpoint: &ShardCheckpoint,
    ) -> Result<bool> {
        Ok(self.with(|shards| match shards.get_mut(shard_id) {
            Some(shard) if holds(&shard.record.lease, owner) => {
                shard.stream_arn = stream_arn.to_owned();
                if checkpoint.sequence_number.is_some() {
                    shard.record.checkpoint.sequence_number = checkpoint.sequence_number.clone();
                }
                shard.record.checkpoint.finished |= checkpoint.finished;
                true
            }
            _ => false,
        }))
    }

    async fn release(&self, shard_id: &str, owner: &str) -> Result<()> {
        self.with(|shards| {
            if let Some(shard) = shards.get_mut(shard_id) {
                if holds(&shard.record.lease, owner) {
                    shard.record.lease = ShardLease::default();
                }
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_leases_are_exclusive_fenced_and_released() {
        let store = MemoryLeases::new();
        let lease = Duration::from_secs(60);
        assert_eq!(
            store.acquire("arn", "s1", "a", lease).await.ok(),
            Some(Acquired::Taken(ShardCheckpoint::default()))
        );
        assert!(matches!(
            store.acquire("arn", "s1", "b", lease).await,
            Ok(Acquired::Held { ref owner, .. }) if owner == "a"
        ));
        let at_100 = ShardCheckpoint {
            sequence_number: Some("100".into()),
            finished: false,
        };
        assert_eq!(store.checkpoint("arn", "s1", "a", &at_100).await.ok(), Some(true));
        assert_eq!(
            store.checkpoint("arn", "s1", "b", &at_100).await.ok(),
            Some(false)
        );
        assert_eq!(store.renew("s1", "b", lease).await.ok(), Some(false));
        assert_eq!(store.renew("s1", "a", lease).await.ok(), Some(true));
        assert!(store.release("s1", "b").await.is_ok());
        assert!(matches!(
            store.acquire("arn", "s1", "b", lease).await,
            Ok(Acquired::Held { .. })
        ));
        assert!(store.release("s1", "a").await.is_ok());
        assert_eq!(
            store.acquire("arn", "s1", "b", lease).await.ok(),
            Some(Acquired::Taken(at_100.clone()))
        );
        // Expired: anyone may take it.
        assert_eq!(
            store.acquire("arn", "s2", "a", Duration::ZERO).await.ok(),
            Some(Acquired::Taken(ShardCheckpoint::default()))
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(matches!(
            store.acquire("arn", "s2", "b", lease).await,
            Ok(Acquired::Taken(_))
        ));
        // Another stream's item is no checkpoint.
        assert_eq!(store.get("other", "s1").await.ok(), Some(None));
        assert_eq!(
            store.get("arn", "s1").await.ok().flatten().map(|r| r.checkpoint),
            Some(at_100)
        );
    }
}
