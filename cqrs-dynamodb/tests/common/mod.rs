//! Shared by the DynamoDB tests: the endpoint, fresh tables per test, and
//! the pieces of the stream consumer tests.

#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use cqrs_core::{
    tenant_pk, ApplyWrite, AsyncDispatch, BoxError, CommandInput, CommandRecord, CommandService,
    CommandStatus, CommandWrite, DataItem, DataService, DataSyncEvent, DataSyncHandler, Engine,
    EngineBuilder, EntityKey, ExpectedVersion, InvocationContext, RetryPolicy, Storage,
};
use cqrs_dynamodb::stream::StreamConsumer;
use cqrs_dynamodb::{local_client, local_streams_client, DynamoDbStorage, TableNames};
use serde_json::{json, Value};

#[allow(unused_imports)]
pub use cqrs_dynamodb::testing::{available, endpoint};

pub const TENANT: &str = "shop-a";

/// A unique table prefix for one test.
pub fn prefix(test: &str) -> String {
    format!("t-{test}-{}", uuid::Uuid::new_v4().simple())
}

/// Storage over freshly created tables of their own.
pub async fn fresh_storage(test: &str) -> DynamoDbStorage {
    let endpoint = endpoint().expect("checked by available()");
    fresh_storage_at(&endpoint, test).await
}

/// Storage over freshly created tables of their own, at `endpoint`.
pub async fn fresh_storage_at(endpoint: &str, test: &str) -> DynamoDbStorage {
    // With the indexes the conformance suite declares.
    let names = TableNames::with_prefix(&prefix(test)).with_indexes(cqrs_core::testing::CONFORMANCE_INDEXES);
    let storage = DynamoDbStorage::new(local_client(endpoint), names);
    storage.ensure_tables().await.expect("tables created");
    storage
}

/// A conformance-suite factory: fresh tables for every check.
pub async fn fresh(test: &str) -> Arc<dyn Storage> {
    Arc::new(fresh_storage(test).await)
}

pub fn ctx() -> InvocationContext {
    InvocationContext::new(TENANT, "user-1")
}

pub fn key(sk: &str) -> EntityKey {
    EntityKey::new(tenant_pk(TENANT), sk)
}

/// Records `(sk, version)` of every event it handles.
#[derive(Debug, Default)]
pub struct Recorder {
    seen: Mutex<Vec<(String, u64)>>,
}

impl Recorder {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn seen(&self) -> Vec<(String, u64)> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn len(&self) -> usize {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// How often each `(sk, version)` was handled.
    pub fn counts(&self) -> HashMap<(String, u64), usize> {
        let mut counts = HashMap::new();
        for seen in self.seen() {
            *counts.entry(seen).or_default() += 1;
        }
        counts
    }

    /// Events handled more than once, beyond the first.
    pub fn duplicates(&self) -> usize {
        self.counts().values().map(|n| n - 1).sum()
    }

    /// The versions of `sk` handled, in the order they were handled.
    pub fn versions_of(&self, sk: &str) -> Vec<u64> {
        self.seen()
            .into_iter()
            .filter(|(s, _)| s == sk)
            .map(|(_, v)| v)
            .collect()
    }

    fn record(&self, event: &DataSyncEvent) {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((event.command.sk.to_string(), event.command.version));
    }
}

#[async_trait]
impl DataSyncHandler for Recorder {
    fn name(&self) -> &str {
        "recorder"
    }

    async fn handle(&self, event: &DataSyncEvent) -> std::result::Result<(), BoxError> {
        self.record(event);
        Ok(())
    }
}

/// The recovery grace of the tests' engines: a sync row still `applied` this
/// long after its publication is settled by the stream.
pub const RECOVERY_GRACE: Duration = Duration::from_secs(1);

/// An engine that leaves async commands to the stream, with short retries
/// and a short recovery grace.
pub fn engine(storage: Arc<dyn Storage>, handler: Arc<dyn DataSyncHandler>) -> Engine {
    engine_builder(storage, handler).build()
}

/// [`engine`], to be built with more settings.
pub fn engine_builder(storage: Arc<dyn Storage>, handler: Arc<dyn DataSyncHandler>) -> EngineBuilder {
    Engine::builder(storage)
        .dispatch(AsyncDispatch::External)
        .retry(RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(100),
        })
        .recovery_grace(RECOVERY_GRACE)
        .handler_arc(handler)
}

/// A consumer with test timings: short lease, fast polls.
pub fn consumer_at(endpoint: &str, engine: &Engine, tables: &TableNames) -> StreamConsumer {
    StreamConsumer::new(
        engine.clone(),
        local_client(endpoint),
        local_streams_client(endpoint),
        tables.clone(),
    )
    .lease_duration(Duration::from_secs(2))
    .poll_interval(Duration::from_millis(100))
    .describe_interval(Duration::from_millis(500))
    .checkpoint_interval(Duration::from_millis(50))
    .retry_backoff(Duration::from_millis(50), Duration::from_millis(500))
    .drain_deadline(Duration::from_secs(5))
}

/// [`consumer_at`] the shared endpoint.
pub fn consumer(engine: &Engine, storage: &DynamoDbStorage) -> StreamConsumer {
    consumer_at(
        &endpoint().expect("checked by available()"),
        engine,
        storage.tables(),
    )
}

/// A consumer running on a task of its own.
pub struct Running {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub fn start(consumer: StreamConsumer) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(consumer.run(async move {
            let _ = stopped.await;
        }));
        Self {
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops it gracefully; fails the test if it takes more than `within`.
    pub async fn stop(mut self, within: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(within, task)
                .await
                .expect("the consumer stopped in time")
                .expect("no panic");
        }
    }

    /// Kills it: its future is dropped at once, its leases are not released.
    pub async fn kill(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Waits until `done` holds, failing the test after `limit`.
pub async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the async `done` holds, failing the test after `limit`.
pub async fn wait_until_async<F, Fut>(what: &str, limit: Duration, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !done().await {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Publishes versions `from..=to` of `sk` asynchronously, chained on the
/// command rows (nothing is applied yet).
pub async fn publish_versions(engine: &Engine, sk: &str, from: u64, to: u64) {
    for version in from..=to {
        let command = CommandInput::new(tenant_pk(TENANT), sk)
            .attributes(json!({ "n": version }))
            .version(ExpectedVersion::Exactly(version - 1));
        let stored = engine
            .publish_async(command, &ctx())
            .await
            .expect("published")
            .into_inner();
        assert_eq!(
            (stored.version, stored.status),
            (version, CommandStatus::Published)
        );
    }
}

/// The handler saw every command exactly once.
pub fn assert_each_once(recorder: &Recorder) {
    let twice: Vec<_> = recorder.counts().into_iter().filter(|(_, n)| *n != 1).collect();
    assert!(twice.is_empty(), "handled more than once: {twice:?}");
}

/// Every command of `sk` was applied exactly once: data at `versions`, one
/// history row per superseded version, every command row `finished`.
pub async fn assert_applied_once(engine: &Engine, sk: &str, versions: u64) {
    let key = key(sk);
    let data = engine
        .get_item(&key, &ctx())
        .await
        .expect("read")
        .expect("data item");
    assert_eq!(data.version, versions, "{sk}");
    assert_eq!(data.attributes, json!({ "n": versions }), "{sk}");
    let history: Vec<u64> = engine
        .list_history(&key, &ctx())
        .await
        .expect("history")
        .iter()
        .map(|h| h.version)
        .collect();
    assert_eq!(history, (1..versions).collect::<Vec<_>>(), "{sk}: history");
    for command in engine.list_versions(&key, &ctx()).await.expect("versions") {
        assert_eq!(
            command.status,
            CommandStatus::Finished,
            "{sk}@{}",
            command.version
        );
    }
}

/// The status of a command row.
pub async fn status_of(storage: &dyn Storage, sk: &str, version: u64) -> Option<CommandStatus> {
    storage
        .get_command(&key(sk), version)
        .await
        .expect("read")
        .map(|c| c.status)
}

/// Writes version 1 of `sk` as a sync publish whose process died right after
/// its one atomic write: command row `applied` and data row, no handler run.
pub async fn insert_applied(storage: &dyn Storage, sk: &str, attributes: Value) -> CommandRecord {
    let now = Utc::now();
    let pk = tenant_pk(TENANT);
    let code = sk.rsplit('#').next().unwrap_or(sk);
    let common = json!({
        "pk": pk, "sk": sk, "id": format!("{pk}#{sk}"), "code": code, "name": code,
        "version": 1, "tenantCode": TENANT, "type": sk.split('#').next().unwrap_or(sk),
        "attributes": attributes, "isDeleted": false, "requestId": "req-dead",
        "createdAt": now, "createdBy": "user-1",
    });
    let mut command = common.clone();
    command["status"] = json!("applied");
    let command: CommandRecord = serde_json::from_value(command).expect("a command record");
    let mut data = common;
    data["cpk"] = json!(pk);
    data["csk"] = json!(format!("{sk}@1"));
    data["updatedAt"] = json!(now);
    data["updatedBy"] = json!("user-1");
    let data: DataItem = serde_json::from_value(data).expect("a data item");
    storage
        .apply(&[ApplyWrite {
            command: CommandWrite::Insert(Box::new(command.clone())),
            data,
            expected_data_version: 0,
            history: None,
            idempotency: None,
            indexes: Vec::new(),
        }])
        .await
        .expect("written");
    command
}
