//! `ecommerce leases`, and the pipeline's lag in `ecommerce lag`: the
//! command table's stream, shard by shard.

use cqrs_dynamodb::stream::{inspect_stream, DynamoDbLeases, SdkStreams, StreamStatus};
use cqrs_dynamodb::TableNames;
use serde_json::json;

use super::output::{age_of, print_json, table};

/// Records counted behind a shard's checkpoint at most, by default.
pub const DEFAULT_LAG_BOUND: usize = 10_000;

/// What reading the stream takes.
pub struct StreamParts<'a> {
    pub dynamodb: &'a aws_sdk_dynamodb::Client,
    pub streams: &'a aws_sdk_dynamodbstreams::Client,
    pub tables: &'a TableNames,
}

impl StreamParts<'_> {
    /// The stream's shards, leases, checkpoints and lag.
    pub async fn inspect(&self, bound: usize) -> Result<StreamStatus, String> {
        let source = SdkStreams::new(self.dynamodb.clone(), self.streams.clone());
        let leases = DynamoDbLeases::new(self.dynamodb.clone(), self.tables);
        inspect_stream(&source, &leases, &self.tables.command, bound)
            .await
            .map_err(|e| format!("cannot read the stream of {}: {e}", self.tables.command))
    }
}

/// `ecommerce leases`: who holds each shard, until when, and its checkpoint.
pub async fn leases(parts: &StreamParts<'_>, bound: usize, json: bool) -> Result<(), String> {
    let status = parts.inspect(bound).await?;
    if json {
        return print_json(&status);
    }
    println!("stream {}", status.stream_arn);
    let rows: Vec<Vec<String>> = status
        .shards
        .iter()
        .map(|s| {
            vec![
                s.shard_id.clone(),
                match (&s.owner, s.leased) {
                    (Some(owner), true) => owner.clone(),
                    (Some(owner), false) => format!("{owner} (expired)"),
                    (None, _) => "-".to_owned(),
                },
                s.lease_expires_at
                    .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                    .unwrap_or_else(|| "-".to_owned()),
                s.checkpoint.clone().unwrap_or_else(|| "-".to_owned()),
                match (s.finished, s.closed) {
                    (true, _) => "finished".to_owned(),
                    (false, true) => "closed".to_owned(),
                    (false, false) => "open".to_owned(),
                },
            ]
        })
        .collect();
    println!(
        "{}",
        table(&["SHARD", "OWNER", "LEASE EXPIRES", "CHECKPOINT", "STATE"], &rows)
    );
    Ok(())
}

/// The pipeline's lag as a JSON value (for `lag --json`).
pub fn pipeline_json(status: &StreamStatus) -> serde_json::Value {
    json!({
        "streamArn": status.stream_arn,
        "recordsBehind": status.records_behind(),
        "atLeast": status.at_least(),
        "oldestBehindAt": status.oldest_behind_at(),
        "shards": status.shards,
    })
}

/// Prints the pipeline's lag per shard (for `lag`).
pub fn print_pipeline_lag(status: &StreamStatus) {
    let more = |at_least: bool| if at_least { "+" } else { "" };
    println!(
        "pipeline: {}{} stream records after the checkpoints{}",
        status.records_behind(),
        more(status.at_least()),
        status
            .oldest_behind_at()
            .map(|at| format!(", oldest written {} ago", age_of(at)))
            .unwrap_or_default()
    );
    let rows: Vec<Vec<String>> = status
        .shards
        .iter()
        .map(|s| {
            vec![
                s.shard_id.clone(),
                format!("{}{}", s.behind.records, more(s.behind.at_least)),
                s.behind.oldest_at.map(age_of).unwrap_or_else(|| "-".to_owned()),
                s.owner
                    .clone()
                    .filter(|_| s.leased)
                    .unwrap_or_else(|| "-".to_owned()),
            ]
        })
        .collect();
    println!("{}", table(&["SHARD", "BEHIND", "OLDEST", "OWNER"], &rows));
}
