//! The Lambda entry point for DynamoDB stream events.
//!
//! A Lambda function subscribed to the command table's stream (an event
//! source mapping) runs the same rules as the [stream
//! consumer](crate::stream): every insert of a command row still `published`
//! or `applied` ([`classify`]) is brought to a final state with
//! [`Engine::settle_inserted`], per entity in order, different entities at the same
//! time. Build the function's engine with
//! [`AsyncDispatch::External`](cqrs_core::AsyncDispatch::External), so that
//! async publishes made by handlers inside the function are left to the
//! stream too, rather than to background tasks that Lambda freezes between
//! invocations.
//!
//! ```no_run
//! use std::sync::Arc;
//! use cqrs_core::{AsyncDispatch, Engine};
//! use cqrs_dynamodb::lambda;
//! use cqrs_dynamodb::DynamoDbStorage;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), lambda_runtime::Error> {
//!     lambda_runtime::tracing::init_default_subscriber();
//!     let storage = DynamoDbStorage::new(lambda::client_from_env().await, lambda::table_names_from_env()?);
//!     let engine = Engine::builder(Arc::new(storage))
//!         .dispatch(AsyncDispatch::External)
//!         // .handler(...) for every data-sync handler of the module
//!         .build();
//!     lambda::run(engine).await
//! }
//! ```
//!
//! The event source mapping needs `FunctionResponseTypes: [ReportBatchItemFailures]`:
//! [`handle_event`] reports the first record that did not complete in a
//! partial batch response, and without that setting Lambda ignores the report
//! and treats the batch as a success. `docs/dynamodb.md` describes the whole
//! deployment.

use std::collections::HashMap;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::BehaviorVersion;
use aws_lambda_events::event::dynamodb::{Event, EventRecord};
use aws_lambda_events::event::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use cqrs_core::{CommandStatus, Engine, EntityKey, Error, Result, RetryPolicy};
use futures::StreamExt as _;
use lambda_runtime::{service_fn, LambdaEvent};
use serde_dynamo::AttributeValue;

use crate::stream::{classify, sequence_cmp, RecordAction};
use crate::{http_client, timeout_config, TableNames, SDK_MAX_ATTEMPTS};

/// Variable giving every table one prefix: `{prefix}-command`, `-data`,
/// `-history`, `-sequences` ([`TableNames::with_prefix`]). When set, it wins
/// over the three variables below.
pub const TABLE_PREFIX_VAR: &str = "CQRS_TABLE_PREFIX";
/// Variable naming the environment (`dev`, `prod`, ...): the `{env}` of
/// [`TableNames::new`], `NODE_ENV` in the reference framework.
pub const ENV_VAR: &str = "CQRS_ENV";
/// Variable naming the application: the `{app}` of [`TableNames::new`],
/// `APP_NAME` in the reference framework.
pub const APP_VAR: &str = "CQRS_APP";
/// Variable naming the module whose command stream the function reads: the
/// `{module}` of [`TableNames::new`].
pub const MODULE_VAR: &str = "CQRS_MODULE";

/// How [`handle_event_with`] works a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatchOptions {
    /// Entities settled at the same time, at most (default 16).
    pub max_concurrent_entities: usize,
    /// Tries of one record's settle within the invocation, and the waits
    /// between them (default: 3 tries, 100 ms then 200 ms). When every try
    /// failed, the record is reported for Lambda to retry the batch from it.
    pub retry: RetryPolicy,
}

impl Default for BatchOptions {
    fn default() -> Self {
        Self {
            max_concurrent_entities: 16,
            retry: RetryPolicy {
                max_attempts: 3,
                initial_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(1),
            },
        }
    }
}

/// [`handle_event_with`] with the default [`BatchOptions`].
pub async fn handle_event(engine: &Engine, event: Event) -> Result<DynamoDbEventResponse> {
    handle_event_with(engine, event, &BatchOptions::default()).await
}

/// Settles the commands of one batch of stream records and says which
/// record to retry from.
///
/// Each record is classified as the stream consumer does ([`classify`]):
/// inserts of command rows with status `published` or `applied` are settled;
/// `MODIFY`, `REMOVE` and rows inserted `finished` or `failed` are skipped; a
/// command record without a usable key is logged and skipped (it can never
/// succeed, and retrying it would hold up every later record of the shard).
///
/// The commands of one entity are settled in stream order, one after the
/// other; different entities at the same time (up to
/// [`BatchOptions::max_concurrent_entities`]). [`Engine::settle_inserted`] is
/// idempotent, so a redelivered batch does no harm. A handler failure is not
/// an error here: the pipeline records it as a failed command, to be
/// reprocessed.
///
/// A row inserted `applied` whose publisher has not marked it done yet is
/// waited for, inside the invocation, while its publisher is alive (its
/// [heartbeat](cqrs_core::Heartbeat) is renewed), at most until the
/// engine's [recovery grace](cqrs_core::EngineConfig::recovery_grace) after
/// its publication ([`Engine::settle`] sleeps); a row whose publisher is gone
/// is recovered at once, and one without a publisher (another writer's)
/// waits for the whole grace. Give the function a timeout longer than that
/// grace, or a shorter grace to its engine.
///
/// When a settle still fails after [`BatchOptions::retry`] (storage
/// unavailable), its entity's later records are not attempted, and the
/// response names, in `batch_item_failures`, the **lowest** sequence number
/// of a record that did not complete. With `ReportBatchItemFailures`, Lambda
/// retries the batch from that record: every record after it comes again,
/// the completed ones included, which settle finds done. If that record has
/// no sequence number, the error itself is returned, and Lambda retries the
/// whole batch.
pub async fn handle_event_with(
    engine: &Engine,
    event: Event,
    options: &BatchOptions,
) -> Result<DynamoDbEventResponse> {
    // Per entity, its records in order (position in the batch, version).
    let mut lanes: Vec<(EntityKey, Vec<LaneRecord>)> = Vec::new();
    let mut lane_of: HashMap<EntityKey, usize> = HashMap::new();
    let mut repairs: Vec<(EntityKey, u64)> = Vec::new();
    for (position, record) in event.records.iter().enumerate() {
        match classify_event_record(record).for_engine(engine) {
            // `for_engine` resolved a foreign command: one not owned here.
            RecordAction::Skip | RecordAction::Foreign { .. } => {}
            RecordAction::RepairIndexes { key, version } => repairs.push((key, version)),
            RecordAction::Malformed(why) => {
                tracing::error!(
                    event_id = %record.event_id,
                    sequence_number = record.change.sequence_number.as_deref().unwrap_or(""),
                    why,
                    "skipping a malformed command record"
                );
            }
            RecordAction::Settle {
                key,
                version,
                inserted,
            } => {
                let lane = *lane_of.entry(key.clone()).or_insert_with(|| {
                    lanes.push((key, Vec::new()));
                    lanes.len() - 1
                });
                lanes[lane].1.push((position, version, inserted));
            }
        }
    }
    // Another framework's writes: their index entries repaired (best
    // effort, not retried: reads never serve a stale entry, and
    // `Engine::reindex` backfills what a failed repair missed).
    futures::stream::iter(repairs)
        .for_each_concurrent(
            options.max_concurrent_entities.max(1),
            |(key, version)| async move {
                if let Err(error) = engine.repair_indexes_after(&key, version).await {
                    tracing::warn!(pk = %key.pk, sk = %key.sk, version, %error,
                    "index entries of another program's write not repaired");
                }
            },
        )
        .await;
    // Per failed entity: the position of its first record not completed, and why.
    let failed: Vec<(usize, Error)> = futures::stream::iter(lanes)
        .map(|(key, records)| settle_lane(engine, key, records, &options.retry))
        .buffer_unordered(options.max_concurrent_entities.max(1))
        .filter_map(|failed| async move { failed })
        .collect()
        .await;
    let mut response = DynamoDbEventResponse::default();
    let lowest = failed.into_iter().min_by(|(a, _), (b, _)| {
        let sequence = |p: &usize| event.records[*p].change.sequence_number.as_deref();
        match (sequence(a), sequence(b)) {
            (Some(a), Some(b)) => sequence_cmp(a, b),
            _ => a.cmp(b),
        }
    });
    if let Some((position, error)) = lowest {
        let record = &event.records[position];
        let Some(sequence_number) = record.change.sequence_number.clone() else {
            tracing::error!(event_id = %record.event_id, %error,
                "settling failed on a record without a sequence number; failing the batch");
            return Err(error);
        };
        tracing::error!(%sequence_number, %error, "settling failed; the batch is retried from this record");
        // The struct is non-exhaustive: built from its default.
        let mut failure = DynamoDbBatchItemFailure::default();
        failure.item_identifier = Some(sequence_number);
        response.batch_item_failures.push(failure);
    }
    Ok(response)
}

/// A record of one entity's lane: its position in the batch, the command's
/// version, and the status its row was inserted with.
type LaneRecord = (usize, u64, CommandStatus);

/// Settles one entity's records in order; the first that does not complete
/// (and why) ends the lane.
async fn settle_lane(
    engine: &Engine,
    key: EntityKey,
    records: Vec<LaneRecord>,
    retry: &RetryPolicy,
) -> Option<(usize, Error)> {
    for (position, version, inserted) in records {
        let mut attempt = 1;
        loop {
            match engine.settle_inserted(&key, version, inserted).await {
                Ok(status) => {
                    tracing::debug!(pk = %key.pk, sk = %key.sk, version, ?status, "command settled");
                    break;
                }
                Err(error) if attempt < retry.max_attempts.max(1) => {
                    tracing::warn!(pk = %key.pk, sk = %key.sk, version, attempt, %error, "command not settled; trying again");
                    tokio::time::sleep(retry.backoff(attempt)).await;
                    attempt += 1;
                }
                Err(error) => {
                    tracing::error!(pk = %key.pk, sk = %key.sk, version, attempts = attempt, %error, "command not settled");
                    return Some((position, error));
                }
            }
        }
    }
    None
}

/// [`classify`] for a record of a Lambda event. The keys are taken from
/// `Keys` (every stream view type has them), or else from the new image.
pub fn classify_event_record(record: &EventRecord) -> RecordAction {
    let image = &record.change.new_image;
    fn string(value: Option<&AttributeValue>) -> Option<&str> {
        match value {
            Some(AttributeValue::S(value)) => Some(value),
            _ => None,
        }
    }
    let key = |name: &str| string(record.change.keys.get(name)).or_else(|| string(image.get(name)));
    classify(
        &record.event_name,
        string(image.get("status")),
        string(image.get(crate::SYNC_MODE_ATTRIBUTE)),
        key("pk"),
        key("sk"),
    )
}

/// Runs the Lambda function: [`handle_event`] for every invocation, until
/// the runtime stops.
///
/// See the [module documentation](self) for a complete `main`.
pub async fn run(engine: Engine) -> std::result::Result<(), lambda_runtime::Error> {
    run_then(engine, || {}).await
}

/// [`run`], calling `after_each` once an invocation is handled, before its
/// answer: Lambda may freeze the process as soon as it has the answer, so
/// this is where telemetry buffered during the invocation is exported
/// (an OpenTelemetry tracer provider's `force_flush`, say).
pub async fn run_then(
    engine: Engine,
    after_each: impl Fn() + Send + Sync + 'static,
) -> std::result::Result<(), lambda_runtime::Error> {
    let after_each = std::sync::Arc::new(after_each);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Event>| {
        // The engine is a handle to shared state: cloning it per invocation is cheap.
        let engine = engine.clone();
        let after_each = after_each.clone();
        async move {
            let handled = handle_event(&engine, event.payload).await;
            after_each();
            handled.map_err(lambda_runtime::Error::from)
        }
    }))
    .await
}

/// A DynamoDB client configured from the environment, as the Lambda runtime
/// sets it: region (`AWS_REGION`), the function role's credentials, and
/// `AWS_ENDPOINT_URL_DYNAMODB` when set (to point a local run at DynamoDB
/// Local). It uses this crate's HTTP client ([`http_client`]) and the same
/// SDK retries and [timeouts](crate::timeout_config) as
/// [`local_client`](crate::local_client).
pub async fn client_from_env() -> aws_sdk_dynamodb::Client {
    let config = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http_client())
        .retry_config(RetryConfig::standard().with_max_attempts(SDK_MAX_ATTEMPTS))
        .timeout_config(timeout_config())
        .load()
        .await;
    aws_sdk_dynamodb::Client::new(&config)
}

/// The table names from the environment.
///
/// With [`TABLE_PREFIX_VAR`] (`CQRS_TABLE_PREFIX`) set:
/// [`TableNames::with_prefix`]. Otherwise [`ENV_VAR`], [`APP_VAR`] and
/// [`MODULE_VAR`] (`CQRS_ENV`, `CQRS_APP`, `CQRS_MODULE`) must all be set:
/// [`TableNames::new`], the reference framework's names. An empty variable
/// counts as unset.
///
/// Fails with [`Error::InvalidInput`] naming the first missing variable.
pub fn table_names_from_env() -> Result<TableNames> {
    table_names_from(|name| std::env::var(name).ok())
}

/// [`table_names_from_env`] over any lookup, so that it is testable without
/// touching the process's environment.
fn table_names_from(lookup: impl Fn(&str) -> Option<String>) -> Result<TableNames> {
    let var = |name: &str| lookup(name).filter(|value| !value.is_empty());
    if let Some(prefix) = var(TABLE_PREFIX_VAR) {
        return Ok(TableNames::with_prefix(&prefix));
    }
    let required = |name: &str| {
        var(name).ok_or_else(|| {
            Error::invalid(
                name,
                format!("environment variable not set (set {TABLE_PREFIX_VAR}, or {ENV_VAR}, {APP_VAR} and {MODULE_VAR})"),
            )
        })
    };
    Ok(TableNames::new(
        &required(ENV_VAR)?,
        &required(APP_VAR)?,
        &required(MODULE_VAR)?,
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| vars.get(name).cloned()
    }

    #[test]
    fn table_names_from_env_module_variables() {
        let names = table_names_from(lookup(&[
            (ENV_VAR, "prod"),
            (APP_VAR, "shop"),
            (MODULE_VAR, "order"),
        ]));
        assert_eq!(names.ok(), Some(TableNames::new("prod", "shop", "order")));
    }

    #[test]
    fn table_names_from_env_prefix_wins() {
        let names = table_names_from(lookup(&[(TABLE_PREFIX_VAR, "t-1"), (ENV_VAR, "prod")]));
        assert_eq!(names.ok(), Some(TableNames::with_prefix("t-1")));
    }

    #[test]
    fn table_names_from_env_names_the_missing_variable() {
        let err = table_names_from(lookup(&[(ENV_VAR, "prod"), (APP_VAR, ""), (MODULE_VAR, "order")]));
        match err {
            Err(Error::InvalidInput { what, .. }) => assert_eq!(what, APP_VAR),
            other => panic!("expected a missing {APP_VAR}, got {other:?}"),
        }
    }

    fn record(event_name: &str, keys: &[(&str, &str)], status: Option<&str>) -> EventRecord {
        let mut record = EventRecord::default();
        record.event_name = event_name.into();
        for (name, value) in keys {
            record
                .change
                .keys
                .insert((*name).into(), AttributeValue::S((*value).into()));
        }
        if let Some(status) = status {
            record
                .change
                .new_image
                .insert("status".into(), AttributeValue::S(status.into()));
        }
        record
    }

    #[test]
    fn published_and_applied_inserts_are_commands() {
        let keys = [("pk", "TENANT#a"), ("sk", "ORDER#1@2")];
        let settle = |inserted| RecordAction::Settle {
            key: EntityKey::new("TENANT#a", "ORDER#1"),
            version: 2,
            inserted,
        };
        assert_eq!(
            classify_event_record(&record("INSERT", &keys, Some("published"))),
            settle(CommandStatus::Published)
        );
        assert_eq!(
            classify_event_record(&record("INSERT", &keys, Some("applied"))),
            settle(CommandStatus::Applied)
        );
        for status in [Some("finished"), Some("failed"), Some("check_version:FAILED")] {
            assert_eq!(
                classify_event_record(&record("INSERT", &keys, status)),
                RecordAction::Skip,
                "{status:?}"
            );
        }
        // A version the reference framework finished applying: its index
        // entries are repaired.
        assert_eq!(
            classify_event_record(&record("INSERT", &keys, Some("finish:FINISHED"))),
            RecordAction::RepairIndexes {
                key: EntityKey::new("TENANT#a", "ORDER#1"),
                version: 2,
            }
        );
        // No status: the reference framework's async command, which the
        // engine settles only if it owns the pipeline.
        assert_eq!(
            classify_event_record(&record("INSERT", &keys, None)),
            RecordAction::Foreign {
                key: EntityKey::new("TENANT#a", "ORDER#1"),
                version: 2,
            }
        );
        assert_eq!(
            classify_event_record(&record("MODIFY", &keys, Some("published"))),
            RecordAction::Skip
        );
        assert_eq!(
            classify_event_record(&record("REMOVE", &keys, Some("published"))),
            RecordAction::Skip
        );
    }

    #[test]
    fn unusable_keys_are_malformed() {
        for keys in [
            &[][..],
            &[("pk", "TENANT#a")][..],
            &[("pk", "TENANT#a"), ("sk", "ORDER#1")][..],
            &[("pk", "TENANT#a"), ("sk", "ORDER#1@x")][..],
            &[("pk", "TENANT#a"), ("sk", "ORDER#1@0")][..],
            &[("pk", "TENANT#a"), ("sk", "@1")][..],
        ] {
            assert!(
                matches!(
                    classify_event_record(&record("INSERT", keys, Some("published"))),
                    RecordAction::Malformed(_)
                ),
                "{keys:?}"
            );
        }
    }
}
