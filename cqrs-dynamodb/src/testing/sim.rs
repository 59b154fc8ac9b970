//! The DynamoDB stream consumer in a deterministic simulation
//! ([`cqrs_core::testing::sim`]): [`SimStreamSource`] serves a simulated
//! command table's stream ([`SimStream`]) as DynamoDB Streams would, so
//! that a real [`StreamConsumer`](crate::StreamConsumer) — its leases,
//! lanes, checkpoints, retries and takeovers — runs in the simulation
//! (`StreamConsumer::with_source`, with [`MemoryLeases`](crate::stream::MemoryLeases)
//! shared by the simulated replicas).

use std::sync::Arc;

use aws_sdk_dynamodbstreams::types::{
    AttributeValue, OperationType, Record, SequenceNumberRange, Shard, StreamRecord,
};
use cqrs_core::testing::sim::{SimStream, World};
use cqrs_core::{command_sk, Error, Result};

use crate::stream::StreamSource;

/// A simulated stream served as DynamoDB Streams: shards `shard-0` …,
/// sequence numbers the stream's, iterators `{shard}/{after}`. Each call
/// fails (retryably) with probability `unavailable`, drawn from the run's
/// [`World`].
#[derive(Debug)]
pub struct SimStreamSource {
    stream: Arc<SimStream>,
    world: Arc<World>,
    unavailable: f64,
}

const STREAM_ARN: &str = "arn:aws:dynamodb:sim:000000000000:table/sim/stream/1";

impl SimStreamSource {
    /// `stream`, whose calls fail with probability `unavailable`.
    pub fn new(stream: Arc<SimStream>, world: Arc<World>, unavailable: f64) -> Self {
        Self {
            stream,
            world,
            unavailable,
        }
    }

    fn call(&self, what: &str) -> Result<()> {
        if self.world.storage_down() || self.world.chance(self.unavailable) {
            self.world.trace(format_args!("stream {what} unavailable"));
            return Err(Error::backend(
                format!("simulated stream {what} unavailable"),
                true,
            ));
        }
        Ok(())
    }
}

fn shard_index(shard_id: &str) -> Result<usize> {
    shard_id
        .strip_prefix("shard-")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| Error::invalid("shard", format!("no shard {shard_id}")))
}

fn string(value: &str) -> AttributeValue {
    AttributeValue::S(value.to_owned())
}

#[async_trait::async_trait]
impl StreamSource for SimStreamSource {
    async fn stream_arn(&self, _table: &str) -> Result<String> {
        self.call("DescribeTable")?;
        Ok(STREAM_ARN.to_owned())
    }

    async fn shards(&self, _stream_arn: &str) -> Result<Vec<Shard>> {
        self.call("DescribeStream")?;
        Ok((0..self.stream.shard_count())
            .map(|n| {
                Shard::builder()
                    .shard_id(format!("shard-{n}"))
                    .sequence_number_range(
                        SequenceNumberRange::builder()
                            .starting_sequence_number("1")
                            .build(),
                    )
                    .build()
            })
            .collect())
    }

    async fn iterator(&self, _stream_arn: &str, shard_id: &str, position: Option<&str>) -> Result<String> {
        self.call("GetShardIterator")?;
        let after = match position {
            Some(position) => position
                .parse::<u64>()
                .map_err(|_| Error::invalid("sequence number", position.to_owned()))?,
            None => 0,
        };
        Ok(format!("{}/{after}", shard_index(shard_id)?))
    }

    async fn records(&self, iterator: &str, limit: i32) -> Result<(Vec<Record>, Option<String>)> {
        self.call("GetRecords")?;
        let (shard, after) = iterator
            .split_once('/')
            .and_then(|(shard, after)| Some((shard.parse::<usize>().ok()?, after.parse::<u64>().ok()?)))
            .ok_or_else(|| Error::invalid("shard iterator", iterator.to_owned()))?;
        let read = self
            .stream
            .read(shard, Some(after), usize::try_from(limit.max(1)).unwrap_or(1));
        let next = read.last().map_or(after, |r| r.sequence);
        let records = read
            .into_iter()
            .map(|record| {
                let status = record.inserted.as_str();
                let sk = command_sk(&record.key.sk, record.version);
                let change = StreamRecord::builder()
                    .keys("pk", string(&record.key.pk))
                    .keys("sk", string(&sk))
                    .new_image("pk", string(&record.key.pk))
                    .new_image("sk", string(&sk))
                    .new_image("status", string(status))
                    .sequence_number(record.sequence.to_string())
                    .build();
                Record::builder()
                    .event_name(OperationType::Insert)
                    .dynamodb(change)
                    .build()
            })
            .collect();
        // An open shard: there is always a next iterator.
        Ok((records, Some(format!("{shard}/{next}"))))
    }
}
