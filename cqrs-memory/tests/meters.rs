//! The engine's metrics (`cqrs_core::meters`), read back from a recording
//! recorder: each counts what happened, once.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cqrs_core::meters;
use cqrs_core::testing::{Fault, FaultyStorage, Op, Rule};
use cqrs_core::{
    AsyncDispatch, BoxError, CommandInput, CommandService, CommandStatus, DataSyncEvent, DataSyncHandler,
    Engine, ExpectedVersion, InvocationContext, RetryPolicy,
};
use cqrs_memory::InMemory;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

/// A recorded series: its name, its labels (sorted) and what it holds.
type Series = (String, Vec<(String, String)>, DebugValue);

/// The value of the series `name` with exactly `labels`, if recorded.
fn value(snapshot: &[Series], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut wanted: Vec<(String, String)> = labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
    wanted.sort();
    snapshot
        .iter()
        .find(|(n, l, _)| n == name && *l == wanted)
        .map(|(_, _, v)| match v {
            DebugValue::Counter(c) => *c as f64,
            DebugValue::Gauge(g) => g.into_inner(),
            // A histogram: how many values it recorded.
            DebugValue::Histogram(values) => values.len() as f64,
        })
}

/// Everything recorded (each series once: a snapshot hands values over once).
fn snapshot(snapshotter: &Snapshotter) -> Vec<Series> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key();
            let mut labels: Vec<(String, String)> = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            labels.sort();
            (key.name().to_owned(), labels, value)
        })
        .collect()
}

fn quick_retry(attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts: attempts,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(1),
    }
}

fn ctx() -> InvocationContext {
    InvocationContext::new("shop-a", "u")
}

fn product(sk: &str, version: u64, price: u64) -> CommandInput {
    CommandInput::new("TENANT#shop-a", sk)
        .attributes(serde_json::json!({ "price": price }))
        .version(ExpectedVersion::Exactly(version))
}

struct AlwaysFails;

#[async_trait]
impl DataSyncHandler for AlwaysFails {
    fn name(&self) -> &str {
        "always-fails"
    }

    async fn handle(&self, _event: &DataSyncEvent) -> Result<(), BoxError> {
        Err("the mail server said no".into())
    }
}

#[tokio::test]
async fn publishes_are_timed_by_mode_and_outcome_and_each_conflict_counts_once() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let engine = InMemory::engine().build();

    for sk in ["P#1", "P#2", "P#3"] {
        engine
            .publish_sync(product(sk, 0, 10), &ctx())
            .await
            .expect("sync publish");
    }
    // Two stale writers: one sync, one async.
    let stale = engine.publish_sync(product("P#1", 0, 11), &ctx()).await;
    assert!(stale.expect_err("stale").is_conflict());
    let stale = engine.publish_async(product("P#2", 0, 11), &ctx()).await;
    assert!(stale.expect_err("stale").is_conflict());
    engine
        .publish_async(product("P#4", 0, 10), &ctx())
        .await
        .expect("async publish");
    engine.wait_idle().await;
    // Refused for its input: the entity to update does not exist.
    let missing = engine
        .publish_partial_update_sync(
            cqrs_core::PartialUpdate::new("TENANT#shop-a", "P#9", ExpectedVersion::Exactly(1)),
            &ctx(),
        )
        .await;
    assert!(missing.is_err());

    let snapshot = snapshot(&snapshotter);
    let publishes = |mode, outcome| {
        value(
            &snapshot,
            meters::PUBLISH_SECONDS,
            &[("mode", mode), ("outcome", outcome)],
        )
    };
    assert_eq!(publishes("sync", "ok"), Some(3.0));
    assert_eq!(publishes("sync", "conflict"), Some(1.0));
    assert_eq!(publishes("sync", "rejected"), Some(1.0));
    assert_eq!(publishes("async", "ok"), Some(1.0));
    assert_eq!(publishes("async", "conflict"), Some(1.0));
    assert_eq!(publishes("sync", "error"), None);
    let conflicts = |mode| value(&snapshot, meters::PUBLISH_CONFLICTS, &[("mode", mode)]);
    assert_eq!(conflicts("sync"), Some(1.0));
    assert_eq!(conflicts("async"), Some(1.0));
    // The async command went through the in-process pipeline, once.
    assert_eq!(
        value(&snapshot, meters::COMMANDS_PROCESSED, &[("outcome", "applied")]),
        Some(1.0)
    );
    assert_eq!(value(&snapshot, meters::ENGINE_IN_FLIGHT, &[]), Some(0.0));
}

#[tokio::test]
async fn a_failing_handler_counts_every_run_its_retries_and_one_failure() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let engine = InMemory::engine()
        .handler(AlwaysFails)
        .retry(quick_retry(3))
        .build();

    let synced = engine
        .publish_sync(product("P#1", 0, 10), &ctx())
        .await
        .expect("publish");
    assert!(matches!(synced.handled(), cqrs_core::Handled::Failed(_)));

    let snapshot = snapshot(&snapshotter);
    let handler = [("handler", "always-fails")];
    assert_eq!(value(&snapshot, meters::HANDLER_RUNS, &handler), Some(3.0));
    assert_eq!(value(&snapshot, meters::HANDLER_RETRIES, &handler), Some(2.0));
    assert_eq!(
        value(
            &snapshot,
            meters::HANDLER_FAILURES,
            &[("handler", "always-fails"), ("outcome", "failed")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &snapshot,
            meters::HANDLER_FAILURES,
            &[("handler", "always-fails"), ("outcome", "transient")]
        ),
        None
    );
    // The publish itself succeeded: its data is written.
    assert_eq!(
        value(
            &snapshot,
            meters::PUBLISH_SECONDS,
            &[("mode", "sync"), ("outcome", "ok")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn storage_retries_of_the_pipeline_are_counted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let storage = Arc::new(FaultyStorage::new(Arc::new(InMemory::new())));
    let engine = Engine::builder(storage.clone())
        .dispatch(AsyncDispatch::External)
        .retry(quick_retry(5))
        .build();
    let published = engine
        .publish_async(product("P#1", 0, 10), &ctx())
        .await
        .expect("publish");
    let version = published.into_inner().version;
    // Two reads of the data row fail before one gets through.
    storage.inject(Rule::new(Fault::Unavailable).on(&[Op::GetData]).times(2));
    let status = engine
        .process(&cqrs_core::EntityKey::new("TENANT#shop-a", "P#1"), version)
        .await
        .expect("processed");
    assert_eq!(status, CommandStatus::Applied);

    let snapshot = snapshot(&snapshotter);
    assert_eq!(value(&snapshot, meters::STORAGE_RETRIES, &[]), Some(2.0));
    assert_eq!(
        value(&snapshot, meters::COMMANDS_PROCESSED, &[("outcome", "applied")]),
        Some(1.0)
    );
}
