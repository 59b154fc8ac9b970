//! Where a [`StreamConsumer`](super::StreamConsumer) reads records from:
//! DynamoDB Streams through the SDK ([`SdkStreams`], what
//! [`StreamConsumer::new`](super::StreamConsumer::new) uses), or another
//! source of the same shape — the deterministic simulation's stream
//! ([`testing::sim`](crate::testing::sim), feature `testing`).

use aws_sdk_dynamodbstreams::error::DisplayErrorContext;
use aws_sdk_dynamodbstreams::types::{Record, Shard, ShardIteratorType};
use cqrs_core::{Error, Result};

use crate::error::{sdk_error, shape_error};

/// The operations of DynamoDB Streams a consumer needs.
#[async_trait::async_trait]
pub trait StreamSource: Send + Sync + std::fmt::Debug + 'static {
    /// The ARN of `table`'s current stream (a disabled stream stays readable
    /// for its retention).
    async fn stream_arn(&self, table: &str) -> Result<String>;

    /// Every shard of the stream (those within its retention).
    async fn shards(&self, stream_arn: &str) -> Result<Vec<Shard>>;

    /// An iterator right after `position` (a sequence number), or at the
    /// oldest record without one. Records past the stream's retention are
    /// gone: the iterator then starts at the oldest record left.
    async fn iterator(&self, stream_arn: &str, shard_id: &str, position: Option<&str>) -> Result<String>;

    /// At most `limit` records from `iterator`, and the iterator of what
    /// follows (`None`: the shard is closed and read to its end).
    async fn records(&self, iterator: &str, limit: i32) -> Result<(Vec<Record>, Option<String>)>;
}

/// DynamoDB Streams through the SDK: `DescribeTable` (on the DynamoDB
/// client), `DescribeStream`, `GetShardIterator` and `GetRecords`.
#[derive(Debug, Clone)]
pub struct SdkStreams {
    dynamodb: aws_sdk_dynamodb::Client,
    streams: aws_sdk_dynamodbstreams::Client,
}

impl SdkStreams {
    /// Over these clients.
    pub fn new(dynamodb: aws_sdk_dynamodb::Client, streams: aws_sdk_dynamodbstreams::Client) -> Self {
        Self { dynamodb, streams }
    }
}

#[async_trait::async_trait]
impl StreamSource for SdkStreams {
    async fn stream_arn(&self, table: &str) -> Result<String> {
        let described = self
            .dynamodb
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(sdk_error)?;
        let table_description = described.table();
        let enabled = table_description
            .and_then(|t| t.stream_specification())
            .is_some_and(|s| s.stream_enabled());
        match table_description.and_then(|t| t.latest_stream_arn()) {
            Some(arn) => {
                if !enabled {
                    // A disabled stream stays readable for its retention: drain it.
                    tracing::warn!(table, "the command table's stream is disabled");
                }
                Ok(arn.to_owned())
            }
            None => Err(Error::invalid("table", format!("table {table} has no stream"))),
        }
    }

    async fn shards(&self, stream_arn: &str) -> Result<Vec<Shard>> {
        let mut shards = Vec::new();
        let mut start: Option<String> = None;
        loop {
            let out = self
                .streams
                .describe_stream()
                .stream_arn(stream_arn)
                .set_exclusive_start_shard_id(start.take())
                .send()
                .await
                .map_err(sdk_error)?;
            let Some(description) = out.stream_description else {
                return Err(shape_error("stream description", "missing"));
            };
            shards.extend(description.shards.unwrap_or_default());
            match description.last_evaluated_shard_id {
                Some(last) if !last.is_empty() => start = Some(last),
                _ => return Ok(shards),
            }
        }
    }

    async fn iterator(&self, stream_arn: &str, shard_id: &str, position: Option<&str>) -> Result<String> {
        let request = || {
            self.streams
                .get_shard_iterator()
                .stream_arn(stream_arn)
                .shard_id(shard_id)
        };
        let out = match position {
            Some(position) => {
                let sent = request()
                    .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                    .sequence_number(position)
                    .send()
                    .await;
                match sent {
                    Ok(out) => out,
                    Err(e)
                        if e.as_service_error()
                            .is_some_and(|s| s.is_trimmed_data_access_exception()) =>
                    {
                        // Nothing to do about it now but to go on with what is left.
                        tracing::error!(
                            shard = shard_id,
                            checkpoint = position,
                            error = %DisplayErrorContext(&e),
                            "stream records after the checkpoint are past the stream's retention and \
                             were lost; resuming at the oldest record"
                        );
                        request()
                            .shard_iterator_type(ShardIteratorType::TrimHorizon)
                            .send()
                            .await
                            .map_err(sdk_error)?
                    }
                    Err(e) => return Err(sdk_error(e)),
                }
            }
            None => request()
                .shard_iterator_type(ShardIteratorType::TrimHorizon)
                .send()
                .await
                .map_err(sdk_error)?,
        };
        out.shard_iterator
            .ok_or_else(|| shape_error("shard iterator", "none returned"))
    }

    async fn records(&self, iterator: &str, limit: i32) -> Result<(Vec<Record>, Option<String>)> {
        let page = self
            .streams
            .get_records()
            .shard_iterator(iterator)
            .limit(limit)
            .send()
            .await
            .map_err(sdk_error)?;
        Ok((page.records.unwrap_or_default(), page.next_shard_iterator))
    }
}
