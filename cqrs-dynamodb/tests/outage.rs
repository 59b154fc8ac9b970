//! The stream consumer through DynamoDB outages, on a DynamoDB Local of the
//! test's own (on disk): killed and restarted mid-run, and hung (SIGSTOP).
//! Every command whose publish returned Ok ends applied and finished, with
//! its handler's effect, without restarting the consumer; a hung DynamoDB
//! makes calls fail within the SDK timeouts instead of hanging forever.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use common::*;
use cqrs_core::{
    tenant_pk, BoxError, CommandInput, CommandRecord, CommandService, CommandStatus, DataSyncEvent,
    DataSyncHandler, Engine, Storage,
};
use cqrs_dynamodb::testing::LocalDynamo;
use cqrs_dynamodb::{DynamoDbStorage, OPERATION_ATTEMPT_TIMEOUT, OPERATION_TIMEOUT};
use serde_json::json;

const MINUTE: Duration = Duration::from_secs(60);

/// Records every event; holds the event of one entity until told to let it
/// go, so that a test can break DynamoDB while that command is in the middle
/// of its handlers.
#[derive(Debug)]
struct Held {
    recorder: Arc<Recorder>,
    held_sk: String,
    reached: AtomicBool,
    released: AtomicBool,
}

#[async_trait]
impl DataSyncHandler for Held {
    fn name(&self) -> &str {
        "held"
    }

    async fn handle(&self, event: &DataSyncEvent) -> std::result::Result<(), BoxError> {
        if event.command.sk == self.held_sk && !self.released.load(Ordering::SeqCst) {
            self.reached.store(true, Ordering::SeqCst);
            // Bounded: well within the engine's handler timeout.
            for _ in 0..200 {
                if self.released.load(Ordering::SeqCst) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        self.recorder.handle(event).await
    }
}

/// Publishes version 1 of each `{prefix}{i}` and returns those accepted
/// (the publish returned Ok), each within `limit`.
async fn publish_burst(engine: &Engine, prefix: &str, count: usize, limit: Duration) -> Vec<String> {
    let mut accepted = Vec::new();
    for i in 0..count {
        let sk = format!("{prefix}{i:03}");
        let command = CommandInput::new(tenant_pk(TENANT), &sk).attributes(json!({ "n": 1 }));
        if let Ok(Ok(_)) = tokio::time::timeout(limit, engine.publish_async(command, &ctx())).await {
            accepted.push(sk);
        }
    }
    accepted
}

/// Waits until every accepted command is handled and its row finished, and
/// that no command is recorded as failed.
async fn assert_all_settled(
    storage: &DynamoDbStorage,
    engine: &Engine,
    recorder: &Recorder,
    accepted: &[String],
) {
    let wanted: BTreeSet<(String, u64)> = accepted.iter().map(|sk| (sk.clone(), 1)).collect();
    wait_until("every accepted command handled", 2 * MINUTE, || {
        let handled: BTreeSet<(String, u64)> = recorder.counts().into_keys().collect();
        handled.is_superset(&wanted)
    })
    .await;
    wait_until_async("every accepted command finished", MINUTE, || async {
        for sk in accepted {
            match storage.get_command(&key(sk), 1).await {
                Ok(Some(command)) if command.status == CommandStatus::Finished => {}
                _ => return false,
            }
        }
        true
    })
    .await;
    let failures = engine.list_failures(&ctx()).await.expect("failures");
    assert!(failures.is_empty(), "recorded as failed: {failures:?}");
}

#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test(flavor = "multi_thread")]
async fn dynamodb_killed_and_restarted_mid_run_loses_no_accepted_command() {
    if !LocalDynamo::available() {
        return;
    }
    let mut local = LocalDynamo::start().await.expect("DynamoDB Local started");
    let storage = fresh_storage_at(&local.endpoint(), "outage-kill").await;
    let recorder = Recorder::new();
    let held = Arc::new(Held {
        recorder: recorder.clone(),
        held_sk: "ORDER#A039".into(),
        reached: AtomicBool::new(false),
        released: AtomicBool::new(false),
    });
    let engine = engine(Arc::new(storage.clone()), held.clone());
    let consumer = consumer_at(&local.endpoint(), &engine, storage.tables());
    let monitor = consumer.monitor();
    let running = Running::start(consumer);

    let mut accepted = publish_burst(&engine, "ORDER#A", 40, Duration::from_secs(30)).await;
    assert_eq!(accepted.len(), 40, "DynamoDB is up: every publish is accepted");
    wait_until("the held command reached its handler", MINUTE, || {
        held.reached.load(Ordering::SeqCst)
    })
    .await;

    // Down for a few seconds, while a command is in the middle of its
    // handlers (its completion cannot be written) and others may be queued.
    local.kill();
    let down = Instant::now();
    let handled_at_kill = recorder.len();
    held.released.store(true, Ordering::SeqCst);
    let during = publish_burst(&engine, "ORDER#DOWN", 1, Duration::from_secs(2)).await;
    assert!(during.is_empty(), "accepted while DynamoDB was down: {during:?}");
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(down.elapsed())).await;
    local.restart().await.expect("DynamoDB Local restarted");
    let outage = down.elapsed();

    let back = Instant::now();
    accepted.extend(publish_burst(&engine, "ORDER#B", 20, Duration::from_secs(30)).await);
    assert_eq!(accepted.len(), 60, "DynamoDB is back: every publish is accepted");
    assert_all_settled(&storage, &engine, &recorder, &accepted).await;
    let settled_after = back.elapsed();
    running.stop(Duration::from_secs(20)).await;

    let stats = monitor.stats();
    println!(
        "DynamoDB Local killed for {outage:?} with {handled_at_kill} of 40 handled: {} accepted, {} handled, \
         {} duplicates, all settled {settled_after:?} after the restart; consumer {stats:?}",
        accepted.len(),
        recorder.counts().len(),
        recorder.duplicates()
    );
    assert!(handled_at_kill < 40, "killed mid-run");
}

/// Writes `count` async commands as the reference framework does (no status,
/// no `syncMode`), version 1 of each `{prefix}{i}`; returns those stored.
async fn insert_foreign(storage: &DynamoDbStorage, prefix: &str, count: usize) -> Vec<String> {
    let mut stored = Vec::new();
    for i in 0..count {
        let sk = format!("{prefix}{i:03}");
        let mut row = CommandRecord::builder(tenant_pk(TENANT), &sk)
            .status(CommandStatus::Published)
            .attributes(json!({ "n": 1 }))
            .build();
        row.foreign_status = Some("".into());
        let write = storage.put_command(&row, None);
        if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(2), write).await {
            stored.push(sk);
        }
    }
    stored
}

/// The engine that owns the table's pipeline applies the reference
/// framework's async commands through a kill of DynamoDB as it does ours:
/// every stored one ends applied (once: its data row at version 1) and
/// handled, none stranded or recorded as failed.
#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test(flavor = "multi_thread")]
async fn the_owner_applies_every_foreign_command_through_a_dynamodb_kill() {
    if !LocalDynamo::available() {
        return;
    }
    let mut local = LocalDynamo::start().await.expect("DynamoDB Local started");
    let storage = fresh_storage_at(&local.endpoint(), "outage-foreign").await;
    let recorder = Recorder::new();
    let owner = engine_builder(Arc::new(storage.clone()), recorder.clone())
        .apply_foreign_commands(true)
        .build();
    let running = Running::start(consumer_at(&local.endpoint(), &owner, storage.tables()));

    let mut stored = insert_foreign(&storage, "PRODUCT#A", 30).await;
    assert_eq!(stored.len(), 30, "DynamoDB is up: every row is stored");
    wait_until("one handled", MINUTE, || recorder.len() >= 1).await;
    local.kill();
    let handled_at_kill = recorder.len();
    assert!(insert_foreign(&storage, "PRODUCT#DOWN", 1).await.is_empty());
    tokio::time::sleep(Duration::from_secs(3)).await;
    local.restart().await.expect("DynamoDB Local restarted");
    stored.extend(insert_foreign(&storage, "PRODUCT#B", 10).await);
    assert_eq!(stored.len(), 40);

    assert_all_settled(&storage, &owner, &recorder, &stored).await;
    let mut lost = 0;
    for sk in &stored {
        match storage.get_data(&key(sk)).await.expect("read") {
            Some(item) => assert_eq!(item.version, 1, "{sk} applied once"),
            None => lost += 1,
        }
    }
    running.stop(Duration::from_secs(20)).await;
    println!(
        "killed with {handled_at_kill} of 30 handled: {} stored, {lost} lost, {} handler duplicates",
        stored.len(),
        recorder.duplicates()
    );
    assert_eq!(lost, 0);
}

#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test(flavor = "multi_thread")]
async fn a_hung_dynamodb_fails_calls_within_the_sdk_timeouts() {
    if !LocalDynamo::available() {
        return;
    }
    let mut local = LocalDynamo::start().await.expect("DynamoDB Local started");
    let storage = fresh_storage_at(&local.endpoint(), "outage-hang").await;
    let recorder = Recorder::new();
    let engine = engine(Arc::new(storage.clone()), recorder.clone());
    let consumer = consumer_at(&local.endpoint(), &engine, storage.tables());
    let monitor = consumer.monitor();
    let running = Running::start(consumer);

    let mut accepted = publish_burst(&engine, "ORDER#A", 10, Duration::from_secs(30)).await;
    assert_eq!(accepted.len(), 10);
    wait_until("the first burst handled", MINUTE, || recorder.len() >= 10).await;

    // Hung: the process accepts connections and answers nothing.
    local.pause().expect("paused");
    let hung = Instant::now();
    let bound = OPERATION_TIMEOUT + Duration::from_secs(5);
    let (read_key, publish_ctx) = (key("ORDER#A000"), ctx());
    let (read, publish) = tokio::join!(
        tokio::time::timeout(bound, storage.get_data(&read_key)),
        tokio::time::timeout(
            bound,
            engine.publish_async(
                CommandInput::new(tenant_pk(TENANT), "ORDER#HUNG").attributes(json!({ "n": 1 })),
                &publish_ctx,
            )
        ),
    );
    let failed_after = hung.elapsed();
    local.resume().expect("resumed");
    let read = read.expect("the read ended within the SDK's operation timeout");
    let error = read.expect_err("a hung DynamoDB cannot answer");
    assert!(error.is_retryable(), "a timeout is transient: {error}");
    let publish = publish.expect("the publish ended within the SDK's operation timeout");
    assert!(publish.is_err(), "not accepted while hung");

    // Back: what was published before and after settles, without a restart.
    accepted.extend(publish_burst(&engine, "ORDER#B", 10, Duration::from_secs(30)).await);
    assert_eq!(accepted.len(), 20);
    assert_all_settled(&storage, &engine, &recorder, &accepted).await;
    running.stop(Duration::from_secs(20)).await;
    println!(
        "DynamoDB Local hung: calls failed after {failed_after:?} (operation timeout {OPERATION_TIMEOUT:?}); consumer {:?}",
        monitor.stats()
    );
}

/// DynamoDB paused for longer than the SDK's attempt timeout while an order
/// is created (an async publish of version 1, the path of `POST /orders`):
/// the SDK sends the `PutItem` again; DynamoDB, resumed before the retry,
/// stores the first attempt and fails the retry's condition on that row. The publish is
/// answered as written — not as a conflict — and the command is stored once.
#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test(flavor = "multi_thread")]
async fn a_create_retried_by_the_sdk_during_a_pause_is_answered_as_written() {
    if !LocalDynamo::available() {
        return;
    }
    let mut local = LocalDynamo::start().await.expect("DynamoDB Local started");
    let storage = fresh_storage_at(&local.endpoint(), "outage-retried").await;
    let engine = engine(Arc::new(storage.clone()), Recorder::new());
    let a = ctx();
    // Warm: the connection pool and the tables answer before the pause.
    engine
        .publish_async(CommandInput::new(tenant_pk(TENANT), "ORDER#WARM"), &a)
        .await
        .expect("warm-up publish");

    local.pause().expect("paused");
    let publish = tokio::spawn({
        let (engine, a) = (engine.clone(), a.clone());
        async move {
            let command = CommandInput::new(tenant_pk(TENANT), "ORDER#PAUSED").attributes(json!({ "n": 1 }));
            engine.publish_async(command, &a).await
        }
    });
    // Resumed just after the first attempt timed out, while the SDK backs
    // off (a random wait below a second) before its second attempt: the
    // first is stored on resuming, the second finds its row.
    tokio::time::sleep(OPERATION_ATTEMPT_TIMEOUT + Duration::from_millis(50)).await;
    local.resume().expect("resumed");
    let published = publish
        .await
        .expect("publish task")
        .expect("the create landed: answered as written, not as a conflict");
    assert_eq!(published.get().version, 1);
    let stored = storage
        .list_commands(&key("ORDER#PAUSED"))
        .await
        .expect("commands listed");
    assert_eq!(stored.len(), 1, "stored once");
    assert_eq!(
        stored[0].created_at,
        published.get().created_at,
        "the publish's own row"
    );
}
