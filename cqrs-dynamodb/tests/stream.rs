//! The stream processor against DynamoDB Local: commands published with
//! `publish_async` reach the pipeline through the command table's stream,
//! each exactly once, across restarts and backend failures.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cqrs_core::{
    tenant_pk, ApplyWrite, AsyncDispatch, BoxError, CommandInput, CommandRecord, CommandService,
    CommandStatus, DataItem, DataService, DataSyncEvent, DataSyncHandler, Engine, EntityKey, Error,
    ExpectedVersion, FailedCommand, InvocationContext, RangePage, RangeQuery, Result, RetryPolicy, Storage,
    StorageLimits,
};
use cqrs_dynamodb::stream::{CheckpointStore, DynamoDbCheckpoints, MemoryCheckpoints, StreamProcessor};
use cqrs_dynamodb::{local_client, local_streams_client, DynamoDbStorage};
use serde_json::json;

const TENANT: &str = "shop-a";

/// Records `(sk, version)` of every event it handles.
#[derive(Debug, Default)]
struct Recorder {
    seen: Mutex<Vec<(String, u64)>>,
}

impl Recorder {
    fn seen(&self) -> Vec<(String, u64)> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// How often each `(sk, version)` was handled.
    fn counts(&self) -> HashMap<(String, u64), usize> {
        let mut counts = HashMap::new();
        for seen in self.seen() {
            *counts.entry(seen).or_default() += 1;
        }
        counts
    }

    /// The versions of `sk` handled, in the order they were handled.
    fn versions_of(&self, sk: &str) -> Vec<u64> {
        self.seen()
            .into_iter()
            .filter(|(s, _)| s == sk)
            .map(|(_, v)| v)
            .collect()
    }
}

#[async_trait]
impl DataSyncHandler for Recorder {
    fn name(&self) -> &str {
        "recorder"
    }

    async fn handle(&self, event: &DataSyncEvent) -> std::result::Result<(), BoxError> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((event.command.sk.clone(), event.command.version));
        Ok(())
    }
}

fn ctx() -> InvocationContext {
    InvocationContext::new(TENANT, "user-1")
}

fn key(sk: &str) -> EntityKey {
    EntityKey::new(tenant_pk(TENANT), sk)
}

/// An engine that leaves async commands to the stream processor.
fn engine(storage: Arc<dyn Storage>, recorder: &Arc<Recorder>) -> Engine {
    Engine::builder(storage)
        .dispatch(AsyncDispatch::External)
        .handler_arc(recorder.clone())
        .build()
}

fn processor(
    engine: &Engine,
    storage: &DynamoDbStorage,
    checkpoints: Arc<dyn CheckpointStore>,
) -> StreamProcessor {
    let endpoint = common::endpoint().expect("checked by available()");
    StreamProcessor::new(
        engine.clone(),
        local_client(&endpoint),
        local_streams_client(&endpoint),
        storage.tables().clone(),
        checkpoints,
    )
}

/// Publishes versions `1..=versions` of `sk` asynchronously, chained on the
/// command rows (nothing is applied yet).
async fn publish_versions(engine: &Engine, sk: &str, versions: u64) {
    for version in 1..=versions {
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

/// Polls until `done` holds; the number of commands fed meanwhile.
async fn poll_until(processor: &StreamProcessor, done: impl Fn() -> bool) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut fed = 0;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "stream not processed within a minute ({fed} fed)"
        );
        let now = processor.poll_once().await.expect("poll");
        fed += now;
        if now == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    fed
}

/// The handler saw every command exactly once.
fn assert_each_once(recorder: &Recorder) {
    let twice: Vec<_> = recorder.counts().into_iter().filter(|(_, n)| *n != 1).collect();
    assert!(twice.is_empty(), "handled more than once: {twice:?}");
}

/// A few more polls feed nothing.
async fn assert_drained(processor: &StreamProcessor) {
    for _ in 0..3 {
        assert_eq!(processor.poll_once().await.expect("poll"), 0, "fed again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every command of `sk` was applied exactly once: data at `versions`, one
/// history row per superseded version, every command row past `published`.
async fn assert_applied_once(engine: &Engine, sk: &str, versions: u64) {
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

#[tokio::test(flavor = "multi_thread")]
async fn async_commands_are_fed_once_in_order() {
    if !common::available() {
        return;
    }
    let storage = common::fresh_storage("stream-order").await;
    let recorder = Arc::new(Recorder::default());
    let engine = engine(Arc::new(storage.clone()), &recorder);
    let entities = ["ORDER#A", "ORDER#B", "ORDER#C"];
    for sk in entities {
        publish_versions(&engine, sk, 5).await;
    }
    assert!(engine
        .get_item(&key("ORDER#A"), &ctx())
        .await
        .expect("read")
        .is_none());

    let processor = processor(&engine, &storage, Arc::new(MemoryCheckpoints::new()));
    let fed = poll_until(&processor, || recorder.seen().len() >= 15).await;
    assert_drained(&processor).await;

    assert_eq!(fed, 15);
    assert_each_once(&recorder);
    for sk in entities {
        assert_eq!(recorder.versions_of(sk), [1, 2, 3, 4, 5], "{sk}");
        assert_applied_once(&engine, sk, 5).await;
    }

    // Written after the processor reached the end of the stream.
    for version in 6..=7 {
        let command = CommandInput::new(tenant_pk(TENANT), "ORDER#A")
            .attributes(json!({ "n": version }))
            .version(ExpectedVersion::Exactly(version - 1));
        engine.publish_async(command, &ctx()).await.expect("published");
    }
    let fed = poll_until(&processor, || recorder.seen().len() >= 17).await;
    assert_drained(&processor).await;
    assert_eq!(fed, 2);
    assert_eq!(recorder.versions_of("ORDER#A"), [1, 2, 3, 4, 5, 6, 7]);
    assert_applied_once(&engine, "ORDER#A", 7).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn run_feeds_until_shut_down() {
    if !common::available() {
        return;
    }
    let storage = common::fresh_storage("stream-run").await;
    let recorder = Arc::new(Recorder::default());
    let engine = engine(Arc::new(storage.clone()), &recorder);
    let processor = Arc::new(processor(&engine, &storage, Arc::new(MemoryCheckpoints::new())));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn({
        let processor = processor.clone();
        async move { processor.run(Duration::from_millis(20), stopped).await }
    });

    publish_versions(&engine, "ORDER#A", 3).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while recorder.seen().len() < 3 {
        assert!(Instant::now() < deadline, "not processed within a minute");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(()).expect("running");
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("stopped")
        .expect("no panic");

    assert_eq!(recorder.versions_of("ORDER#A"), [1, 2, 3]);
    assert_applied_once(&engine, "ORDER#A", 3).await;
    assert_drained(&processor).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_processor_resumes_at_its_checkpoint() {
    if !common::available() {
        return;
    }
    let storage = common::fresh_storage("stream-restart").await;
    let recorder = Arc::new(Recorder::default());
    let engine = engine(Arc::new(storage.clone()), &recorder);
    publish_versions(&engine, "ORDER#A", 5).await;
    publish_versions(&engine, "ORDER#B", 5).await;

    // Processor A feeds 4 commands, then stops (the process ends).
    let checkpoints = DynamoDbCheckpoints::new(storage.client().clone(), storage.tables());
    let first = processor(&engine, &storage, Arc::new(checkpoints)).max_per_poll(4);
    assert_eq!(first.poll_once().await.expect("poll"), 4);
    assert_eq!(
        first.poll_once().await.expect("poll"),
        4,
        "a poll stops at its limit"
    );
    drop(first);
    assert_eq!(recorder.seen().len(), 8);

    // Processor B: a new process, with only the checkpoint table in common.
    let checkpoints = DynamoDbCheckpoints::new(storage.client().clone(), storage.tables());
    let second = processor(&engine, &storage, Arc::new(checkpoints));
    let fed = poll_until(&second, || recorder.seen().len() >= 10).await;
    assert_drained(&second).await;

    assert_eq!(fed, 2, "B resumes after the last command A checkpointed");
    assert_each_once(&recorder);
    for sk in ["ORDER#A", "ORDER#B"] {
        assert_eq!(recorder.versions_of(sk), [1, 2, 3, 4, 5], "{sk}");
        assert_applied_once(&engine, sk, 5).await;
    }
}

/// Checkpoints whose saves fail after a number of successes: the process
/// "crashes" between processing a command and saving its checkpoint.
#[derive(Debug)]
struct CrashingCheckpoints {
    inner: DynamoDbCheckpoints,
    saves_left: AtomicUsize,
}

#[async_trait]
impl CheckpointStore for CrashingCheckpoints {
    async fn load(&self, stream_arn: &str, shard_id: &str) -> Result<Option<String>> {
        self.inner.load(stream_arn, shard_id).await
    }

    async fn save(&self, stream_arn: &str, shard_id: &str, sequence_number: &str) -> Result<()> {
        let left = self.saves_left.load(Ordering::SeqCst);
        if left == 0 {
            return Err(Error::backend("crashed before the checkpoint", false));
        }
        self.saves_left.store(left - 1, Ordering::SeqCst);
        self.inner.save(stream_arn, shard_id, sequence_number).await
    }

    async fn is_finished(&self, stream_arn: &str, shard_id: &str) -> Result<bool> {
        self.inner.is_finished(stream_arn, shard_id).await
    }

    async fn mark_finished(&self, stream_arn: &str, shard_id: &str) -> Result<()> {
        self.inner.mark_finished(stream_arn, shard_id).await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_before_the_checkpoint_feeds_a_command_again_without_applying_it_twice() {
    if !common::available() {
        return;
    }
    let storage = common::fresh_storage("stream-crash").await;
    let recorder = Arc::new(Recorder::default());
    let engine = engine(Arc::new(storage.clone()), &recorder);
    publish_versions(&engine, "ORDER#A", 5).await;
    publish_versions(&engine, "ORDER#B", 5).await;

    // A processes 4 commands but saves only 3 checkpoints.
    let crashing = CrashingCheckpoints {
        inner: DynamoDbCheckpoints::new(storage.client().clone(), storage.tables()),
        saves_left: AtomicUsize::new(3),
    };
    let first = processor(&engine, &storage, Arc::new(crashing));
    assert!(first.poll_once().await.is_err(), "the checkpoint save failed");
    drop(first);
    assert_eq!(recorder.seen().len(), 4);

    let checkpoints = DynamoDbCheckpoints::new(storage.client().clone(), storage.tables());
    let second = processor(&engine, &storage, Arc::new(checkpoints));
    let fed = poll_until(&second, || recorder.seen().len() >= 10).await;
    assert_drained(&second).await;

    assert_eq!(fed, 7, "B feeds the 4th command again, and the 6 after it");
    assert_each_once(&recorder);
    for sk in ["ORDER#A", "ORDER#B"] {
        assert_eq!(recorder.versions_of(sk), [1, 2, 3, 4, 5], "{sk}");
        assert_applied_once(&engine, sk, 5).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_of_sync_publishes_are_not_fed() {
    if !common::available() {
        return;
    }
    let storage = common::fresh_storage("stream-sync").await;
    let recorder = Arc::new(Recorder::default());
    let engine = engine(Arc::new(storage.clone()), &recorder);
    for version in 1..=2 {
        for sk in ["PRODUCT#P1", "PRODUCT#P2"] {
            let command = CommandInput::new(tenant_pk(TENANT), sk)
                .attributes(json!({ "n": version }))
                .version(ExpectedVersion::Exactly(version - 1));
            engine.publish_sync(command, &ctx()).await.expect("published");
        }
    }
    assert_eq!(recorder.seen().len(), 4, "sync handlers ran in the publisher");
    // An async version on top of a sync one.
    let command = CommandInput::new(tenant_pk(TENANT), "PRODUCT#P1")
        .attributes(json!({ "n": 3 }))
        .version(ExpectedVersion::Exactly(2));
    engine.publish_async(command, &ctx()).await.expect("published");

    let processor = processor(&engine, &storage, Arc::new(MemoryCheckpoints::new()));
    let fed = poll_until(&processor, || recorder.seen().len() >= 5).await;
    assert_drained(&processor).await;

    assert_eq!(fed, 1, "only the async command");
    assert_each_once(&recorder);
    assert_eq!(recorder.versions_of("PRODUCT#P1"), [1, 2, 3]);
    assert_eq!(recorder.versions_of("PRODUCT#P2"), [1, 2]);
    let p1 = engine.get_item(&key("PRODUCT#P1"), &ctx()).await.expect("read");
    assert_eq!(p1.map(|d| d.version), Some(3));
}

/// A storage whose data reads of one entity fail while `failures` is above zero.
#[derive(Debug)]
struct Flaky {
    inner: DynamoDbStorage,
    failing_sk: &'static str,
    failures: AtomicUsize,
}

#[async_trait]
impl Storage for Flaky {
    fn limits(&self) -> StorageLimits {
        self.inner.limits()
    }
    async fn put_command(&self, command: &CommandRecord) -> Result<()> {
        self.inner.put_command(command).await
    }
    async fn get_command(&self, key: &EntityKey, version: u64) -> Result<Option<CommandRecord>> {
        self.inner.get_command(key, version).await
    }
    async fn latest_command(&self, key: &EntityKey) -> Result<Option<CommandRecord>> {
        self.inner.latest_command(key).await
    }
    async fn list_commands(&self, key: &EntityKey) -> Result<Vec<CommandRecord>> {
        self.inner.list_commands(key).await
    }
    async fn set_command_status(&self, key: &EntityKey, version: u64, status: CommandStatus) -> Result<()> {
        self.inner.set_command_status(key, version, status).await
    }
    async fn apply(&self, writes: &[ApplyWrite]) -> Result<()> {
        self.inner.apply(writes).await
    }
    async fn get_data(&self, key: &EntityKey) -> Result<Option<DataItem>> {
        let failing = key.sk == self.failing_sk
            && self
                .failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        if failing {
            return Err(Error::backend("injected: backend down", false));
        }
        self.inner.get_data(key).await
    }
    async fn query_data(&self, query: &RangeQuery) -> Result<RangePage> {
        self.inner.query_data(query).await
    }
    async fn get_history(&self, key: &EntityKey, version: u64) -> Result<Option<DataItem>> {
        self.inner.get_history(key, version).await
    }
    async fn list_history(&self, key: &EntityKey) -> Result<Vec<DataItem>> {
        self.inner.list_history(key).await
    }
    async fn next_counter(&self, pk: &str, sk: &str) -> Result<u64> {
        self.inner.next_counter(pk, sk).await
    }
    async fn put_failure(&self, failure: &FailedCommand) -> Result<()> {
        self.inner.put_failure(failure).await
    }
    async fn delete_failure(&self, key: &EntityKey, version: u64) -> Result<()> {
        self.inner.delete_failure(key, version).await
    }
    async fn get_failure(&self, key: &EntityKey, version: u64) -> Result<Option<FailedCommand>> {
        self.inner.get_failure(key, version).await
    }
    async fn list_failures(&self, tenant_code: Option<&str>) -> Result<Vec<FailedCommand>> {
        self.inner.list_failures(tenant_code).await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_backend_holds_the_checkpoint_before_the_command() {
    if !common::available() {
        return;
    }
    let storage = common::fresh_storage("stream-flaky").await;
    let flaky = Arc::new(Flaky {
        inner: storage.clone(),
        failing_sk: "ORDER#B",
        failures: AtomicUsize::new(0),
    });
    let recorder = Arc::new(Recorder::default());
    let engine = engine(flaky.clone(), &recorder);
    publish_versions(&engine, "ORDER#A", 3).await;
    publish_versions(&engine, "ORDER#B", 2).await;
    let retry = RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(20),
    };
    let checkpoints = Arc::new(MemoryCheckpoints::new());

    // ORDER#B cannot be processed for longer than the retries of a poll: the
    // commands before it are fed and checkpointed, it is not, and neither is
    // anything after it.
    flaky.failures.store(usize::MAX, Ordering::SeqCst);
    let first = processor(&engine, &storage, checkpoints.clone()).retry(retry.clone());
    assert!(first.poll_once().await.is_err());
    assert!(first.poll_once().await.is_err(), "tried again on the next poll");
    assert_eq!(recorder.versions_of("ORDER#A"), [1, 2, 3]);
    assert_eq!(recorder.versions_of("ORDER#B"), [] as [u64; 0]);
    drop(first);

    // Down for one attempt only: the retry within the poll gets through. A
    // new processor resumes at ORDER#B, not before it and not after it.
    flaky.failures.store(1, Ordering::SeqCst);
    let second = processor(&engine, &storage, checkpoints).retry(retry);
    let fed = poll_until(&second, || recorder.seen().len() >= 5).await;
    assert_drained(&second).await;
    assert_eq!(fed, 2);
    assert_eq!(flaky.failures.load(Ordering::SeqCst), 0, "the failure happened");
    assert_each_once(&recorder);
    assert_eq!(recorder.versions_of("ORDER#B"), [1, 2]);
    assert_applied_once(&engine, "ORDER#A", 3).await;
    assert_applied_once(&engine, "ORDER#B", 2).await;
}

/// Save, load and finish, as every store must.
async fn round_trip(store: &dyn CheckpointStore, arn: &str) {
    assert_eq!(store.load(arn, "shard-1").await.expect("load"), None);
    assert!(!store.is_finished(arn, "shard-1").await.expect("finished"));
    store
        .save(arn, "shard-1", "000000000000000000100")
        .await
        .expect("save");
    store
        .save(arn, "shard-1", "000000000000000000200")
        .await
        .expect("save");
    store
        .save(arn, "shard-2", "000000000000000000150")
        .await
        .expect("save");
    assert_eq!(
        store.load(arn, "shard-1").await.expect("load").as_deref(),
        Some("000000000000000000200")
    );
    assert_eq!(
        store.load(arn, "shard-2").await.expect("load").as_deref(),
        Some("000000000000000000150")
    );
    store.mark_finished(arn, "shard-1").await.expect("finish");
    assert!(store.is_finished(arn, "shard-1").await.expect("finished"));
    assert!(!store.is_finished(arn, "shard-2").await.expect("finished"));
    assert_eq!(
        store.load(arn, "shard-1").await.expect("load").as_deref(),
        Some("000000000000000000200"),
        "finishing keeps the position"
    );
    // A shard id of another stream (a recreated table) has no checkpoint.
    assert_eq!(store.load("arn:other", "shard-1").await.expect("load"), None);
    assert!(!store.is_finished("arn:other", "shard-1").await.expect("finished"));
}

#[tokio::test(flavor = "multi_thread")]
async fn checkpoint_stores_round_trip() {
    round_trip(&MemoryCheckpoints::new(), "arn:stream").await;
    if !common::available() {
        return;
    }
    let storage = common::fresh_storage("stream-checkpoints").await;
    let store = DynamoDbCheckpoints::new(storage.client().clone(), storage.tables());
    assert_eq!(
        store.partition_key(),
        format!("STREAM#{}", storage.tables().command)
    );
    round_trip(&store, "arn:stream").await;

    // Durable: another instance reads the same checkpoints.
    let again = DynamoDbCheckpoints::new(storage.client().clone(), storage.tables());
    assert_eq!(
        again
            .load("arn:stream", "shard-1")
            .await
            .expect("load")
            .as_deref(),
        Some("000000000000000000200")
    );
    assert!(again
        .is_finished("arn:stream", "shard-1")
        .await
        .expect("finished"));

    // Stored where documented: the sequences table, pk STREAM#{command table}, sk the shard id.
    let item = storage
        .client()
        .get_item()
        .table_name(&storage.tables().sequences)
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S(store.partition_key().to_owned()),
        )
        .key("sk", aws_sdk_dynamodb::types::AttributeValue::S("shard-1".into()))
        .consistent_read(true)
        .send()
        .await
        .expect("get")
        .item
        .expect("checkpoint item");
    assert_eq!(
        item.get("sequenceNumber")
            .and_then(|v| v.as_s().ok())
            .map(String::as_str),
        Some("000000000000000000200")
    );
    assert_eq!(item.get("finished").and_then(|v| v.as_bool().ok()), Some(&true));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_command_row_expired_after_it_was_applied_does_not_hold_up_the_shard() {
    if !common::available() {
        return;
    }
    let storage = common::fresh_storage("stream-expired").await;
    let recorder = Arc::new(Recorder::default());
    let engine = engine(Arc::new(storage.clone()), &recorder);
    publish_versions(&engine, "ORDER#A", 3).await;
    let first = processor(&engine, &storage, Arc::new(MemoryCheckpoints::new()));
    assert_eq!(poll_until(&first, || recorder.seen().len() >= 3).await, 3);

    // Version 1's row expires (time to live of superseded rows), and a
    // processor without checkpoints reads the stream from its start.
    storage
        .client()
        .delete_item()
        .table_name(&storage.tables().command)
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S(tenant_pk(TENANT)),
        )
        .key(
            "sk",
            aws_sdk_dynamodb::types::AttributeValue::S("ORDER#A@1".into()),
        )
        .send()
        .await
        .expect("deleted");
    let second = processor(&engine, &storage, Arc::new(MemoryCheckpoints::new()));
    assert_eq!(
        second.poll_once().await.expect("poll"),
        3,
        "fed again, and found done"
    );
    assert_drained(&second).await;
    assert_eq!(recorder.versions_of("ORDER#A"), [1, 2, 3]);
}
