//! What an operator reads of a command table's stream: each shard's lease
//! (owner, expiry), its checkpoint, and how far the pipeline is behind it.
//!
//! The consumers store one item per shard ([`DynamoDbLeases`](super::DynamoDbLeases)):
//! every record up to its checkpoint (a sequence number) is done. What is
//! behind is what follows the checkpoint: this counts it by reading the
//! shard from there, up to a bound (a shard far behind is reported as "at
//! least" the bound), and dates the oldest record from its
//! `ApproximateCreationDateTime`. Reading a stream does not disturb its
//! consumers (DynamoDB allows two readers per shard at once; a third is
//! throttled and retried by the SDK).

use aws_sdk_dynamodbstreams::types::{Record, Shard};
use chrono::{DateTime, Utc};
use cqrs_core::Result;
use serde::Serialize;

use super::leases::{now_millis, LeaseStore, ShardRecord};
use super::source::StreamSource;

/// Records read per `GetRecords` call at most (the service's maximum).
const PAGE: usize = 1000;

/// The records after a shard's checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Behind {
    /// How many (at most the bound given to [`inspect_stream`]).
    pub records: u64,
    /// `true` when the bound was reached: there may be more.
    pub at_least: bool,
    /// When the oldest of them was written (its `ApproximateCreationDateTime`:
    /// rounded down to the second by DynamoDB, to the minute by DynamoDB Local).
    pub oldest_at: Option<DateTime<Utc>>,
}

/// One shard of the stream as the consumers left it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ShardStatus {
    /// The shard.
    pub shard_id: String,
    /// Its parent, whose records come first.
    pub parent_shard_id: Option<String>,
    /// The shard is closed (split or rotated): no record is added to it.
    pub closed: bool,
    /// The consumer holding its lease, if any.
    pub owner: Option<String>,
    /// When that lease expires.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Whether the lease is held now (an owner whose lease has not expired).
    pub leased: bool,
    /// Every record up to this sequence number is done (`None`: none yet).
    pub checkpoint: Option<String>,
    /// The shard is closed and every record of it is done.
    pub finished: bool,
    /// What is behind the checkpoint.
    pub behind: Behind,
}

/// The stream of a command table, shard by shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct StreamStatus {
    /// The stream.
    pub stream_arn: String,
    /// Its shards within the stream's retention, parents first as listed.
    pub shards: Vec<ShardStatus>,
}

impl StreamStatus {
    /// Records behind in every shard (a lower bound when a shard's is).
    pub fn records_behind(&self) -> u64 {
        self.shards.iter().map(|s| s.behind.records).sum()
    }

    /// Whether a shard reached the bound (then [`StreamStatus::records_behind`]
    /// is a lower bound).
    pub fn at_least(&self) -> bool {
        self.shards.iter().any(|s| s.behind.at_least)
    }

    /// When the oldest record behind was written.
    pub fn oldest_behind_at(&self) -> Option<DateTime<Utc>> {
        self.shards.iter().filter_map(|s| s.behind.oldest_at).min()
    }
}

/// The leases, checkpoints and lag of every shard of `table`'s stream,
/// counting at most `bound` records behind per shard.
pub async fn inspect_stream(
    source: &dyn StreamSource,
    leases: &dyn LeaseStore,
    table: &str,
    bound: usize,
) -> Result<StreamStatus> {
    let stream_arn = source.stream_arn(table).await?;
    let mut shards = Vec::new();
    for shard in source.shards(&stream_arn).await? {
        let Some(shard_id) = shard.shard_id() else {
            continue;
        };
        let stored = leases.get(&stream_arn, shard_id).await?.unwrap_or_default();
        let behind = if stored.checkpoint.finished {
            Behind::default()
        } else {
            behind(
                source,
                &stream_arn,
                shard_id,
                stored.checkpoint.sequence_number.as_deref(),
                bound,
            )
            .await?
        };
        shards.push(status(&shard, shard_id, stored, behind));
    }
    Ok(StreamStatus { stream_arn, shards })
}

fn status(shard: &Shard, shard_id: &str, stored: ShardRecord, behind: Behind) -> ShardStatus {
    let expires = stored.lease.expires_at_ms;
    ShardStatus {
        shard_id: shard_id.to_owned(),
        parent_shard_id: shard.parent_shard_id().map(str::to_owned),
        closed: shard
            .sequence_number_range()
            .and_then(|r| r.ending_sequence_number())
            .is_some(),
        leased: stored.lease.owner.is_some() && expires.is_some_and(|e| e >= now_millis()),
        owner: stored.lease.owner,
        lease_expires_at: expires.and_then(DateTime::from_timestamp_millis),
        checkpoint: stored.checkpoint.sequence_number,
        finished: stored.checkpoint.finished,
        behind,
    }
}

/// Reads the shard after `checkpoint` until its end, an empty page (the
/// head of an open shard), or `bound` records.
async fn behind(
    source: &dyn StreamSource,
    stream_arn: &str,
    shard_id: &str,
    checkpoint: Option<&str>,
    bound: usize,
) -> Result<Behind> {
    let mut behind = Behind::default();
    let mut count = 0usize;
    let mut iterator = Some(source.iterator(stream_arn, shard_id, checkpoint).await?);
    while let Some(current) = iterator.take() {
        if count >= bound {
            behind.at_least = true;
            break;
        }
        let limit = i32::try_from((bound - count).min(PAGE)).unwrap_or(1);
        let (records, next) = source.records(&current, limit).await?;
        if records.is_empty() {
            break;
        }
        if behind.oldest_at.is_none() {
            behind.oldest_at = records.iter().find_map(created_at);
        }
        count += records.len();
        iterator = next;
    }
    behind.records = count as u64;
    Ok(behind)
}

fn created_at(record: &Record) -> Option<DateTime<Utc>> {
    let at = record.dynamodb()?.approximate_creation_date_time()?;
    DateTime::from_timestamp(at.secs(), at.subsec_nanos())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use aws_sdk_dynamodbstreams::types::{SequenceNumberRange, StreamRecord};
    use aws_smithy_types::DateTime as SmithyTime;

    use super::*;
    use crate::stream::leases::{MemoryLeases, ShardCheckpoint};

    const ARN: &str = "arn:stream";

    /// Two shards: `closed` with records 1..=5 written at second 100+n,
    /// `open` with records 11..=13 at 200+n; pages of 2 records.
    #[derive(Debug)]
    struct Fixed;

    fn records_of(shard: &str) -> Vec<u64> {
        match shard {
            "closed" => (1..=5).collect(),
            _ => (11..=13).collect(),
        }
    }

    #[async_trait::async_trait]
    impl StreamSource for Fixed {
        async fn stream_arn(&self, _table: &str) -> Result<String> {
            Ok(ARN.to_owned())
        }

        async fn shards(&self, _arn: &str) -> Result<Vec<Shard>> {
            let range = |end: Option<&str>| {
                SequenceNumberRange::builder()
                    .starting_sequence_number("1")
                    .set_ending_sequence_number(end.map(str::to_owned))
                    .build()
            };
            Ok(vec![
                Shard::builder()
                    .shard_id("closed")
                    .sequence_number_range(range(Some("5")))
                    .build(),
                Shard::builder()
                    .shard_id("open")
                    .parent_shard_id("closed")
                    .sequence_number_range(range(None))
                    .build(),
            ])
        }

        async fn iterator(&self, _arn: &str, shard: &str, position: Option<&str>) -> Result<String> {
            let after: u64 = position.map_or(0, |p| p.parse().unwrap());
            Ok(format!("{shard}:{after}"))
        }

        async fn records(&self, iterator: &str, limit: i32) -> Result<(Vec<Record>, Option<String>)> {
            let (shard, after) = iterator.split_once(':').unwrap();
            let after: u64 = after.parse().unwrap();
            let all = records_of(shard);
            let page: Vec<u64> = all
                .iter()
                .copied()
                .filter(|n| *n > after)
                .take(2.min(limit as usize))
                .collect();
            let last = page.last().copied().unwrap_or(after);
            let records = page
                .iter()
                .map(|n| {
                    let written =
                        SmithyTime::from_secs(if *n > 10 { 200 + *n as i64 } else { 100 + *n as i64 });
                    Record::builder()
                        .dynamodb(
                            StreamRecord::builder()
                                .sequence_number(n.to_string())
                                .approximate_creation_date_time(written)
                                .build(),
                        )
                        .build()
                })
                .collect();
            // The closed shard ends after its last record; the open one goes on.
            let next = (shard == "open" || last < *all.last().unwrap()).then(|| format!("{shard}:{last}"));
            Ok((records, next))
        }
    }

    #[tokio::test]
    async fn counts_the_records_after_each_checkpoint_up_to_the_bound() {
        let leases = MemoryLeases::new();
        leases
            .acquire(ARN, "closed", "consumer-1", Duration::from_secs(60))
            .await
            .unwrap();
        let at_2 = ShardCheckpoint {
            sequence_number: Some("2".to_owned()),
            finished: false,
        };
        assert!(leases
            .checkpoint(ARN, "closed", "consumer-1", &at_2)
            .await
            .unwrap());

        let status = inspect_stream(&Fixed, &leases, "table", 100).await.unwrap();
        let closed = &status.shards[0];
        assert_eq!(
            (closed.closed, closed.leased, closed.owner.as_deref()),
            (true, true, Some("consumer-1"))
        );
        assert_eq!(closed.checkpoint.as_deref(), Some("2"));
        assert_eq!(closed.behind.records, 3, "records 3, 4, 5");
        assert!(!closed.behind.at_least);
        assert_eq!(closed.behind.oldest_at, DateTime::from_timestamp(103, 0));
        let open = &status.shards[1];
        assert_eq!(
            (open.closed, open.leased, open.owner.clone()),
            (false, false, None)
        );
        assert_eq!(open.behind.records, 3, "no checkpoint: from the oldest record");
        assert_eq!(open.parent_shard_id.as_deref(), Some("closed"));
        assert_eq!((status.records_behind(), status.at_least()), (6, false));
        assert_eq!(status.oldest_behind_at(), DateTime::from_timestamp(103, 0));

        // Bounded: at most 2 per shard, reported as "at least".
        let bounded = inspect_stream(&Fixed, &leases, "table", 2).await.unwrap();
        assert!(bounded
            .shards
            .iter()
            .all(|s| s.behind.records == 2 && s.behind.at_least));
        assert_eq!((bounded.records_behind(), bounded.at_least()), (4, true));

        // A finished shard is not read: nothing behind.
        let done = ShardCheckpoint {
            sequence_number: Some("5".to_owned()),
            finished: true,
        };
        assert!(leases
            .checkpoint(ARN, "closed", "consumer-1", &done)
            .await
            .unwrap());
        let status = inspect_stream(&Fixed, &leases, "table", 100).await.unwrap();
        assert_eq!(status.shards[0].behind, Behind::default());
        assert!(status.shards[0].finished);
        assert_eq!(status.records_behind(), 3);
    }
}
