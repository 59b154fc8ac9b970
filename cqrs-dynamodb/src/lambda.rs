//! The Lambda entry point for DynamoDB stream events.
//!
//! A Lambda function subscribed to the command table's stream (an event
//! source mapping) runs the same pipeline as the in-process processor: for
//! every command row inserted by an async publish, it calls
//! [`Engine::process`]. Build the function's engine with
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
//! [`handle_event`] reports a failed record in a partial batch response, and
//! without that setting Lambda ignores the report and treats the batch as a
//! success. `docs/dynamodb.md` describes the whole deployment.

use aws_config::retry::RetryConfig;
use aws_config::BehaviorVersion;
use aws_lambda_events::event::dynamodb::{Event, EventRecord};
use aws_lambda_events::event::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use cqrs_core::{parse_command_sk, Engine, EntityKey, Error, Result};
use lambda_runtime::{service_fn, LambdaEvent};
use serde_dynamo::AttributeValue;

use crate::{http_client, TableNames, SDK_MAX_ATTEMPTS};

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

/// Processes one batch of stream records and says which record to retry from.
///
/// Records are handled one after the other, in stream order. A record is a
/// command to process when it is an `INSERT` whose new image has status
/// `published`: a command row stored by an async publish. Everything else
/// is skipped:
///
/// - `MODIFY` (status changes, TTL updates) and `REMOVE` (TTL expiry) records
///   carry no new command;
/// - rows inserted with status `applied` come from `publish_sync` or
///   `commit`, whose publisher has applied them and run their handlers
///   already (processing one would run its handlers a second time);
/// - a `published` row without a usable key (no `pk`/`sk`, or a sort key
///   that is not `{sk}@{version}`) is logged and skipped: it can never
///   succeed, and retrying it would hold up every later record of the shard.
///
/// For each command, [`Engine::process`] applies it (and any unapplied
/// predecessor) and runs its handlers; it is idempotent, so a redelivered
/// batch does no harm. A handler failure is not an error here: the pipeline
/// records it as a failed command, to be reprocessed.
///
/// When `process` returns an error (a storage failure that its retries did
/// not overcome), processing stops and the response names that record's
/// sequence number in `batch_item_failures`. With
/// `ReportBatchItemFailures`, Lambda then retries the batch from that record:
/// the records after it, which may be later versions of the same entity, are
/// not skipped and not applied out of order. If that record has no sequence
/// number, the error itself is returned, and Lambda retries the whole batch.
pub async fn handle_event(engine: &Engine, event: Event) -> Result<DynamoDbEventResponse> {
    let mut response = DynamoDbEventResponse::default();
    for record in &event.records {
        let (key, version) = match command_of(record) {
            Action::Skip => continue,
            Action::Malformed(why) => {
                tracing::error!(
                    event_id = %record.event_id,
                    sequence_number = record.change.sequence_number.as_deref().unwrap_or(""),
                    why,
                    "skipping a malformed command record"
                );
                continue;
            }
            Action::Process(key, version) => (key, version),
        };
        if let Err(error) = engine.process(&key, version).await {
            let Some(sequence_number) = record.change.sequence_number.clone() else {
                tracing::error!(pk = %key.pk, sk = %key.sk, version, %error,
                    "processing failed on a record without a sequence number; failing the batch");
                return Err(error);
            };
            tracing::error!(pk = %key.pk, sk = %key.sk, version, %sequence_number, %error,
                "processing failed; the batch is retried from this record");
            // The struct is non-exhaustive: built from its default.
            let mut failure = DynamoDbBatchItemFailure::default();
            failure.item_identifier = Some(sequence_number);
            response.batch_item_failures.push(failure);
            break;
        }
    }
    Ok(response)
}

/// Runs the Lambda function: [`handle_event`] for every invocation, until
/// the runtime stops.
///
/// See the [module documentation](self) for a complete `main`.
pub async fn run(engine: Engine) -> std::result::Result<(), lambda_runtime::Error> {
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Event>| {
        // The engine is a handle to shared state: cloning it per invocation is cheap.
        let engine = engine.clone();
        async move {
            handle_event(&engine, event.payload)
                .await
                .map_err(lambda_runtime::Error::from)
        }
    }))
    .await
}

/// A DynamoDB client configured from the environment, as the Lambda runtime
/// sets it: region (`AWS_REGION`), the function role's credentials, and
/// `AWS_ENDPOINT_URL_DYNAMODB` when set (to point a local run at DynamoDB
/// Local). It uses this crate's HTTP client ([`http_client`]) and the same
/// SDK retries as [`local_client`](crate::local_client).
pub async fn client_from_env() -> aws_sdk_dynamodb::Client {
    let config = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http_client())
        .retry_config(RetryConfig::standard().with_max_attempts(SDK_MAX_ATTEMPTS))
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

/// What to do with one stream record.
#[derive(Debug, PartialEq)]
enum Action {
    /// Not a new async command.
    Skip,
    /// A new async command: this version of this entity.
    Process(EntityKey, u64),
    /// A new async command without a usable key.
    Malformed(String),
}

/// Classifies a record; see [`handle_event`] for the rules.
fn command_of(record: &EventRecord) -> Action {
    if record.event_name != "INSERT" {
        return Action::Skip;
    }
    let image = &record.change.new_image;
    match image.get("status") {
        Some(AttributeValue::S(status)) if status == "published" => {}
        _ => return Action::Skip,
    }
    // The keys are in `Keys` (every stream view type has them) and in the new
    // image; either will do.
    let string = |name: &str| match record.change.keys.get(name).or_else(|| image.get(name)) {
        Some(AttributeValue::S(value)) => Some(value.as_str()),
        _ => None,
    };
    let (Some(pk), Some(row_sk)) = (string("pk"), string("sk")) else {
        return Action::Malformed("no string pk and sk".into());
    };
    match parse_command_sk(row_sk) {
        Some((sk, version)) if !sk.is_empty() && version > 0 => {
            Action::Process(EntityKey::new(pk, sk), version)
        }
        _ => Action::Malformed(format!("sort key '{row_sk}' is not {{sk}}@{{version}}")),
    }
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
    fn only_published_inserts_are_commands() {
        let keys = [("pk", "TENANT#a"), ("sk", "ORDER#1@2")];
        assert_eq!(
            command_of(&record("INSERT", &keys, Some("published"))),
            Action::Process(EntityKey::new("TENANT#a", "ORDER#1"), 2)
        );
        assert_eq!(
            command_of(&record("INSERT", &keys, Some("applied"))),
            Action::Skip
        );
        assert_eq!(command_of(&record("INSERT", &keys, None)), Action::Skip);
        assert_eq!(
            command_of(&record("MODIFY", &keys, Some("published"))),
            Action::Skip
        );
        assert_eq!(
            command_of(&record("REMOVE", &keys, Some("published"))),
            Action::Skip
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
                    command_of(&record("INSERT", keys, Some("published"))),
                    Action::Malformed(_)
                ),
                "{keys:?}"
            );
        }
    }
}
