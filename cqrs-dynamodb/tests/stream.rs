//! The stream consumer against DynamoDB Local: commands reach the pipeline
//! through the command table's stream, each settled once and in order per
//! entity, across restarts, crashes and backend failures, while hung
//! entities do not hold back the others.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use common::*;
use cqrs_core::testing::{Fault, FaultyStorage, Op, Rule};
use cqrs_core::{
    tenant_pk, BoxError, CommandInput, CommandService, CommandStatus, DataService, DataSyncEvent,
    DataSyncHandler, Engine, ExpectedVersion, Result,
};
use cqrs_dynamodb::stream::{
    Acquired, DynamoDbLeases, LeaseStore, MemoryLeases, ShardCheckpoint, ShardRecord, CHECKPOINT_PK_PREFIX,
};
use serde_json::json;

const MINUTE: Duration = Duration::from_secs(60);

#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test(flavor = "multi_thread")]
async fn async_commands_are_settled_once_in_order() {
    if !available() {
        return;
    }
    let storage = fresh_storage("stream-order").await;
    let recorder = Recorder::new();
    let engine = engine(Arc::new(storage.clone()), recorder.clone());
    let entities = ["ORDER#A", "ORDER#B", "ORDER#C"];
    for sk in entities {
        publish_versions(&engine, sk, 1, 5).await;
    }
    assert!(engine
        .get_item(&key("ORDER#A"), &ctx())
        .await
        .expect("read")
        .is_none());

    let consumer = consumer(&engine, &storage);
    let monitor = consumer.monitor();
    let running = Running::start(consumer);
    wait_until("15 commands handled", MINUTE, || recorder.len() >= 15).await;
    for sk in entities {
        assert_eq!(recorder.versions_of(sk), [1, 2, 3, 4, 5], "{sk}");
        assert_applied_once(&engine, sk, 5).await;
    }

    // Written after the consumer reached the end of the stream.
    let published = Instant::now();
    publish_versions(&engine, "ORDER#A", 6, 7).await;
    wait_until("2 more handled", MINUTE, || recorder.len() >= 17).await;
    println!(
        "settle time: 2 commands published at the end of the stream handled {:?} after the first publish",
        published.elapsed()
    );
    wait_until("every record settled", MINUTE, || monitor.stats().settled >= 17).await;
    running.stop(Duration::from_secs(10)).await;

    let stats = monitor.stats();
    assert_eq!(stats.fed, 17, "each insert fed once: {stats:?}");
    assert_eq!(stats.settled, 17, "{stats:?}");
    assert_eq!(stats.retries, 0, "{stats:?}");
    assert!(monitor.owned_shards().is_empty(), "leases given back");
    assert_each_once(&recorder);
    assert_eq!(recorder.versions_of("ORDER#A"), [1, 2, 3, 4, 5, 6, 7]);
    assert_applied_once(&engine, "ORDER#A", 7).await;
}

/// The shard items in the sequences table: (shard id, record).
async fn shard_items(storage: &cqrs_dynamodb::DynamoDbStorage) -> Vec<(String, ShardRecord)> {
    let out = storage
        .client()
        .query()
        .table_name(&storage.tables().sequences)
        .key_condition_expression("pk = :pk")
        .expression_attribute_values(
            ":pk",
            AttributeValue::S(format!("{CHECKPOINT_PK_PREFIX}{}", storage.tables().command)),
        )
        .consistent_read(true)
        .send()
        .await
        .expect("query");
    out.items()
        .iter()
        .map(|item| {
            let s = |name: &str| item.get(name).and_then(|v| v.as_s().ok()).cloned();
            let record = ShardRecord {
                checkpoint: ShardCheckpoint {
                    sequence_number: s("sequenceNumber"),
                    finished: item.get("finished").and_then(|v| v.as_bool().ok()) == Some(&true),
                },
                lease: cqrs_dynamodb::stream::ShardLease {
                    owner: s("leaseOwner"),
                    expires_at_ms: item
                        .get("leaseExpiresAt")
                        .and_then(|v| v.as_n().ok())
                        .and_then(|n| n.parse().ok()),
                },
            };
            (s("sk").unwrap_or_default(), record)
        })
        .collect()
}

#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_consumer_resumes_at_its_checkpoint_and_takes_released_leases_at_once() {
    if !available() {
        return;
    }
    let storage = fresh_storage("stream-restart").await;
    let recorder = Recorder::new();
    let engine = engine(Arc::new(storage.clone()), recorder.clone());
    publish_versions(&engine, "ORDER#A", 1, 5).await;
    publish_versions(&engine, "ORDER#B", 1, 5).await;

    // A long lease: a lease that was not released would hold the second
    // consumer back for 30 s.
    let lease = Duration::from_secs(30);
    let first = consumer(&engine, &storage).lease_duration(lease);
    let first_monitor = first.monitor();
    let running = Running::start(first);
    wait_until("10 handled", MINUTE, || recorder.len() >= 10).await;
    wait_until("10 settled", MINUTE, || first_monitor.stats().settled >= 10).await;
    running.stop(Duration::from_secs(10)).await;
    let items = shard_items(&storage).await;
    assert!(!items.is_empty());
    for (shard, item) in &items {
        assert_eq!(item.lease.owner, None, "{shard}: lease released on shutdown");
    }
    assert!(
        items
            .iter()
            .any(|(_, item)| item.checkpoint.sequence_number.is_some()),
        "checkpoint saved: {items:?}"
    );

    publish_versions(&engine, "ORDER#A", 6, 7).await;
    // A new process, with only the sequences table in common.
    let second = consumer(&engine, &storage).lease_duration(lease);
    let second_monitor = second.monitor();
    let started = Instant::now();
    let running = Running::start(second);
    wait_until(
        "the second consumer holds a shard",
        Duration::from_secs(10),
        || !second_monitor.owned_shards().is_empty(),
    )
    .await;
    let takeover = started.elapsed();
    wait_until("12 handled", MINUTE, || recorder.len() >= 12).await;
    wait_until("2 settled", MINUTE, || second_monitor.stats().settled >= 2).await;
    running.stop(Duration::from_secs(10)).await;
    println!("takeover of released leases: {takeover:?}");

    assert_eq!(
        second_monitor.stats().fed,
        2,
        "the second consumer resumes after the last command the first checkpointed: {:?}",
        second_monitor.stats()
    );
    assert_each_once(&recorder);
    assert_eq!(recorder.versions_of("ORDER#A"), [1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(recorder.versions_of("ORDER#B"), [1, 2, 3, 4, 5]);
    assert_applied_once(&engine, "ORDER#A", 7).await;
    assert_applied_once(&engine, "ORDER#B", 5).await;
}

/// Leases whose checkpoint saves fail after a number of successes: the
/// process "crashes" between settling commands and saving their checkpoint.
#[derive(Debug)]
struct CrashingLeases {
    inner: DynamoDbLeases,
    saves_left: AtomicUsize,
}

#[async_trait]
impl LeaseStore for CrashingLeases {
    async fn get(&self, stream_arn: &str, shard_id: &str) -> Result<Option<ShardRecord>> {
        self.inner.get(stream_arn, shard_id).await
    }
    async fn acquire(
        &self,
        stream_arn: &str,
        shard_id: &str,
        owner: &str,
        duration: Duration,
    ) -> Result<Acquired> {
        self.inner.acquire(stream_arn, shard_id, owner, duration).await
    }
    async fn renew(&self, shard_id: &str, owner: &str, duration: Duration) -> Result<bool> {
        self.inner.renew(shard_id, owner, duration).await
    }
    async fn checkpoint(
        &self,
        stream_arn: &str,
        shard_id: &str,
        owner: &str,
        checkpoint: &ShardCheckpoint,
    ) -> Result<bool> {
        if self
            .saves_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_err()
        {
            return Err(cqrs_core::Error::backend("crashed before the checkpoint", true));
        }
        self.inner
            .checkpoint(stream_arn, shard_id, owner, checkpoint)
            .await
    }
    async fn release(&self, shard_id: &str, owner: &str) -> Result<()> {
        self.inner.release(shard_id, owner).await
    }
}

#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test(flavor = "multi_thread")]
async fn a_crash_before_the_checkpoint_settles_commands_again_without_applying_them_twice() {
    if !available() {
        return;
    }
    let storage = fresh_storage("stream-crash").await;
    let recorder = Recorder::new();
    let engine = engine(Arc::new(storage.clone()), recorder.clone());
    publish_versions(&engine, "ORDER#A", 1, 5).await;
    publish_versions(&engine, "ORDER#B", 1, 5).await;

    // The first consumer settles the 10 commands one at a time, checkpoints
    // after each command done in stream order, but only 3 saves land: its
    // checkpoint stays after A@3 (A@1, B@1, A@2, B@2, A@3: the prefix A@1..A@3).
    let crashing = Arc::new(CrashingLeases {
        inner: DynamoDbLeases::new(storage.client().clone(), storage.tables()),
        saves_left: AtomicUsize::new(3),
    });
    let first = consumer(&engine, &storage)
        .lease_store(crashing)
        .max_concurrent_entities(1)
        .checkpoint_every(1)
        .checkpoint_interval(Duration::from_secs(3600));
    let first_monitor = first.monitor();
    let running = Running::start(first);
    wait_until("10 handled", MINUTE, || recorder.len() >= 10).await;
    wait_until("10 settled", MINUTE, || first_monitor.stats().settled >= 10).await;
    running.kill().await;
    assert_eq!(first_monitor.stats().checkpoints_saved, 3);

    // The second takes the shard over once the dead one's lease expired.
    let second = consumer(&engine, &storage);
    let second_monitor = second.monitor();
    let running = Running::start(second);
    wait_until("7 settled again", MINUTE, || second_monitor.stats().settled >= 7).await;
    running.stop(Duration::from_secs(10)).await;

    assert_eq!(
        second_monitor.stats().fed,
        7,
        "the second feeds A@4 and everything after it again: {:?}",
        second_monitor.stats()
    );
    assert_each_once(&recorder);
    for sk in ["ORDER#A", "ORDER#B"] {
        assert_eq!(recorder.versions_of(sk), [1, 2, 3, 4, 5], "{sk}");
        assert_applied_once(&engine, sk, 5).await;
    }
}

#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test(flavor = "multi_thread")]
async fn sync_publishes_are_fed_without_running_their_handlers_twice() {
    if !available() {
        return;
    }
    let storage = fresh_storage("stream-sync").await;
    let recorder = Recorder::new();
    let engine = engine(Arc::new(storage.clone()), recorder.clone());
    for version in 1..=2 {
        for sk in ["PRODUCT#P1", "PRODUCT#P2"] {
            let command = CommandInput::new(tenant_pk(TENANT), sk)
                .attributes(json!({ "n": version }))
                .version(ExpectedVersion::Exactly(version - 1));
            engine.publish_sync(command, &ctx()).await.expect("published");
        }
    }
    assert_eq!(recorder.len(), 4, "sync handlers ran in the publisher");
    // An async version on top of a sync one.
    let command = CommandInput::new(tenant_pk(TENANT), "PRODUCT#P1")
        .attributes(json!({ "n": 3 }))
        .version(ExpectedVersion::Exactly(2));
    engine.publish_async(command, &ctx()).await.expect("published");

    let consumer = consumer(&engine, &storage);
    let monitor = consumer.monitor();
    let running = Running::start(consumer);
    wait_until("5 settled", MINUTE, || monitor.stats().settled >= 5).await;
    running.stop(Duration::from_secs(10)).await;

    assert_eq!(
        monitor.stats().fed,
        5,
        "every insert of a row with handlers to run"
    );
    assert_each_once(&recorder);
    assert_eq!(recorder.versions_of("PRODUCT#P1"), [1, 2, 3]);
    assert_eq!(recorder.versions_of("PRODUCT#P2"), [1, 2]);
    let p1 = engine.get_item(&key("PRODUCT#P1"), &ctx()).await.expect("read");
    assert_eq!(p1.map(|d| d.version), Some(3));
    for (sk, version) in [("PRODUCT#P1", 1), ("PRODUCT#P1", 3), ("PRODUCT#P2", 2)] {
        assert_eq!(
            status_of(&storage, sk, version).await,
            Some(CommandStatus::Finished)
        );
    }
}

#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test(flavor = "multi_thread")]
async fn a_sync_publish_whose_process_died_is_finished_by_the_stream() {
    if !available() {
        return;
    }
    let storage = fresh_storage("stream-dead-sync").await;
    let recorder = Recorder::new();
    let engine = engine(Arc::new(storage.clone()), recorder.clone());
    insert_applied(&storage, "ORDER#DEAD", json!({ "n": 1 })).await;
    assert!(recorder.seen().is_empty());

    let consumer = consumer(&engine, &storage);
    let monitor = consumer.monitor();
    let running = Running::start(consumer);
    wait_until("the handler ran", MINUTE, || recorder.len() >= 1).await;
    wait_until("settled", MINUTE, || monitor.stats().settled >= 1).await;
    running.stop(Duration::from_secs(10)).await;

    assert_eq!(recorder.versions_of("ORDER#DEAD"), [1]);
    assert_eq!(
        status_of(&storage, "ORDER#DEAD", 1).await,
        Some(CommandStatus::Finished)
    );
}

#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_backend_holds_the_checkpoint_before_the_command_and_is_retried_until_it_recovers() {
    if !available() {
        return;
    }
    let storage = fresh_storage("stream-flaky").await;
    let faulty = Arc::new(FaultyStorage::new(Arc::new(storage.clone())));
    let recorder = Recorder::new();
    let engine = engine(faulty.clone(), recorder.clone());
    publish_versions(&engine, "ORDER#A", 1, 3).await;
    let first = consumer(&engine, &storage).drain_deadline(Duration::from_millis(300));
    let first_monitor = first.monitor();
    let running = Running::start(first);
    wait_until("A handled", MINUTE, || recorder.len() >= 3).await;

    // Storage cannot apply anything while the outage lasts: B and C are
    // tried again and again, and never marked done.
    let outage = faulty.inject(Rule::new(Fault::Unavailable).on(&[Op::Apply]));
    publish_versions(&engine, "ORDER#B", 1, 2).await;
    publish_versions(&engine, "ORDER#C", 1, 1).await;
    wait_until("B and C retried", MINUTE, || first_monitor.stats().retries >= 4).await;
    running.stop(Duration::from_secs(10)).await;
    assert_eq!(recorder.versions_of("ORDER#A"), [1, 2, 3]);
    assert_eq!(recorder.versions_of("ORDER#B"), [] as [u64; 0]);
    assert_eq!(recorder.versions_of("ORDER#C"), [] as [u64; 0]);
    assert_eq!(
        status_of(&storage, "ORDER#B", 1).await,
        Some(CommandStatus::Published)
    );
    assert_eq!(
        status_of(&storage, "ORDER#C", 1).await,
        Some(CommandStatus::Published)
    );

    // The outage ends: a new consumer resumes at ORDER#B, not after it.
    faulty.remove(outage);
    let second = consumer(&engine, &storage);
    let second_monitor = second.monitor();
    let running = Running::start(second);
    wait_until("B and C handled", MINUTE, || recorder.len() >= 6).await;
    wait_until("3 settled", MINUTE, || second_monitor.stats().settled >= 3).await;
    running.stop(Duration::from_secs(10)).await;

    assert_eq!(
        second_monitor.stats().fed,
        3,
        "B@1, B@2 and C@1: {:?}",
        second_monitor.stats()
    );
    assert!(faulty.faults(Op::Apply) >= 3, "the outage happened");
    assert_each_once(&recorder);
    assert_eq!(recorder.versions_of("ORDER#B"), [1, 2]);
    assert_applied_once(&engine, "ORDER#A", 3).await;
    assert_applied_once(&engine, "ORDER#B", 2).await;
    assert_applied_once(&engine, "ORDER#C", 1).await;
    let failures = engine.list_failures(&ctx()).await.expect("failures");
    assert!(failures.is_empty(), "an outage is not a failure: {failures:?}");
}

/// Waits on `ORDER#SLOW` until every other entity was handled, then succeeds;
/// never returns on `ORDER#HUNG` version 1.
#[derive(Debug)]
struct Gate {
    recorder: Arc<Recorder>,
    others: usize,
    /// Events of other entities seen when `ORDER#SLOW` was let through.
    seen_by_slow: AtomicUsize,
}

#[async_trait]
impl DataSyncHandler for Gate {
    fn name(&self) -> &str {
        "gate"
    }

    async fn handle(&self, event: &DataSyncEvent) -> std::result::Result<(), BoxError> {
        match (event.command.sk.as_str(), event.command.version) {
            ("ORDER#HUNG", 1) => std::future::pending().await,
            ("ORDER#SLOW", _) => {
                let others = || {
                    self.recorder
                        .seen()
                        .iter()
                        .filter(|(sk, _)| sk.starts_with("ORDER#E"))
                        .count()
                };
                while others() < self.others {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                self.seen_by_slow.store(others(), Ordering::SeqCst);
            }
            _ => {}
        }
        self.recorder.handle(event).await
    }
}

#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test(flavor = "multi_thread")]
async fn a_hung_handler_does_not_hold_back_other_entities_of_its_shard() {
    if !available() {
        return;
    }
    let storage = fresh_storage("stream-hung").await;
    let recorder = Recorder::new();
    let gate = Arc::new(Gate {
        recorder: recorder.clone(),
        others: 10,
        seen_by_slow: AtomicUsize::new(0),
    });
    let engine = Engine::builder(Arc::new(storage.clone()))
        .dispatch(cqrs_core::AsyncDispatch::External)
        .retry(cqrs_core::RetryPolicy {
            max_attempts: 2,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(10),
        })
        .handler_timeout(Duration::from_secs(3))
        .recovery_grace(RECOVERY_GRACE)
        .handler_arc(gate.clone())
        .build();
    // In stream order: the hung and the slow entity first, then the others.
    publish_versions(&engine, "ORDER#HUNG", 1, 2).await;
    publish_versions(&engine, "ORDER#SLOW", 1, 1).await;
    for i in 0..5 {
        publish_versions(&engine, &format!("ORDER#E{i}"), 1, 2).await;
    }

    let consumer = consumer(&engine, &storage);
    let monitor = consumer.monitor();
    let running = Running::start(consumer);
    wait_until("every command settled", MINUTE, || monitor.stats().settled >= 13).await;
    running.stop(Duration::from_secs(10)).await;

    // SLOW ran while the 10 commands after it were handled: nothing waited
    // behind it but its own entity.
    assert_eq!(gate.seen_by_slow.load(Ordering::SeqCst), 10);
    assert_eq!(recorder.versions_of("ORDER#SLOW"), [1]);
    // HUNG@1 timed out on every attempt: recorded as failed, reprocessable;
    // HUNG@2 came after it, in order.
    assert_eq!(
        status_of(&storage, "ORDER#HUNG", 1).await,
        Some(CommandStatus::Failed)
    );
    assert_eq!(recorder.versions_of("ORDER#HUNG"), [2]);
    let failures = engine.list_failures(&ctx()).await.expect("failures");
    assert_eq!(
        failures
            .iter()
            .map(|f| (f.sk.as_str(), f.version))
            .collect::<Vec<_>>(),
        [("ORDER#HUNG", 1)]
    );
    assert_eq!(monitor.stats().fed, 13);
    assert_eq!(
        monitor.stats().retries,
        0,
        "a handler failure is final, not retried by the consumer"
    );
}

/// Save, load, lease and fence, as every store must.
async fn round_trip(store: &dyn LeaseStore, arn: &str) {
    let lease = Duration::from_secs(60);
    assert_eq!(store.get(arn, "shard-1").await.expect("get"), None);
    assert_eq!(
        store.acquire(arn, "shard-1", "me", lease).await.expect("acquire"),
        Acquired::Taken(ShardCheckpoint::default())
    );
    let at = |seq: &str| ShardCheckpoint {
        sequence_number: Some(seq.into()),
        finished: false,
    };
    for seq in ["000000000000000000100", "000000000000000000200"] {
        assert!(store
            .checkpoint(arn, "shard-1", "me", &at(seq))
            .await
            .expect("save"));
    }
    assert!(matches!(
        store.acquire(arn, "shard-2", "me", lease).await.expect("acquire"),
        Acquired::Taken(_)
    ));
    assert!(store
        .checkpoint(arn, "shard-2", "me", &at("000000000000000000150"))
        .await
        .expect("save"));
    let get = |shard: &'static str| async move { store.get(arn, shard).await.expect("get").expect("stored") };
    assert_eq!(get("shard-1").await.checkpoint, at("000000000000000000200"));
    assert_eq!(get("shard-2").await.checkpoint, at("000000000000000000150"));
    assert_eq!(get("shard-1").await.lease.owner.as_deref(), Some("me"));
    let finished = ShardCheckpoint {
        sequence_number: Some("000000000000000000200".into()),
        finished: true,
    };
    assert!(store
        .checkpoint(arn, "shard-1", "me", &finished)
        .await
        .expect("finish"));
    assert_eq!(
        get("shard-1").await.checkpoint,
        finished,
        "finishing keeps the position"
    );
    assert!(!get("shard-2").await.checkpoint.finished);
    // Not the owner: fenced.
    assert!(!store
        .checkpoint(arn, "shard-2", "other", &at("9"))
        .await
        .expect("fenced"));
    assert_eq!(get("shard-2").await.checkpoint, at("000000000000000000150"));
    // Released: anyone takes it, with its checkpoint.
    store.release("shard-2", "me").await.expect("release");
    assert_eq!(get("shard-2").await.lease.owner, None);
    assert_eq!(
        store
            .acquire(arn, "shard-2", "other", lease)
            .await
            .expect("acquire"),
        Acquired::Taken(at("000000000000000000150"))
    );
    // A shard id of another stream (a recreated table) has no checkpoint.
    assert_eq!(store.get("arn:other", "shard-1").await.expect("get"), None);
    assert_eq!(
        store
            .acquire("arn:other", "shard-1", "me", lease)
            .await
            .expect("acquire"),
        Acquired::Taken(ShardCheckpoint::default())
    );
}

#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test(flavor = "multi_thread")]
async fn lease_stores_round_trip() {
    round_trip(&MemoryLeases::new(), "arn:stream").await;
    if !available() {
        return;
    }
    let storage = fresh_storage("stream-checkpoints").await;
    let store = DynamoDbLeases::new(storage.client().clone(), storage.tables());
    assert_eq!(
        store.partition_key(),
        format!("STREAM#{}", storage.tables().command)
    );
    round_trip(&store, "arn:stream").await;

    // Durable: another instance reads the same items.
    let again = DynamoDbLeases::new(storage.client().clone(), storage.tables());
    let shard_2 = again
        .get("arn:stream", "shard-2")
        .await
        .expect("get")
        .expect("stored");
    assert_eq!(
        shard_2.checkpoint.sequence_number.as_deref(),
        Some("000000000000000000150")
    );
    assert_eq!(shard_2.lease.owner.as_deref(), Some("other"));

    // Stored where documented: the sequences table, pk STREAM#{command
    // table}, sk the shard id, with the lease beside the checkpoint.
    let item = storage
        .client()
        .get_item()
        .table_name(&storage.tables().sequences)
        .key("pk", AttributeValue::S(store.partition_key().to_owned()))
        .key("sk", AttributeValue::S("shard-2".into()))
        .consistent_read(true)
        .send()
        .await
        .expect("get")
        .item
        .expect("shard item");
    let s = |name: &str| item.get(name).and_then(|v| v.as_s().ok()).map(String::as_str);
    assert_eq!(s("sequenceNumber"), Some("000000000000000000150"));
    assert_eq!(s("streamArn"), Some("arn:stream"));
    assert_eq!(s("leaseOwner"), Some("other"));
    assert!(s("updatedAt").is_some());
    let expires: i64 = item
        .get("leaseExpiresAt")
        .and_then(|v| v.as_n().ok())
        .and_then(|n| n.parse().ok())
        .expect("leaseExpiresAt, a number");
    let now = cqrs_dynamodb::stream::now_millis();
    assert!(expires > now && expires <= now + 60_000, "{expires} vs {now}");
}

#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test(flavor = "multi_thread")]
async fn a_command_row_expired_after_it_was_applied_does_not_hold_up_the_shard() {
    if !available() {
        return;
    }
    let storage = fresh_storage("stream-expired").await;
    let recorder = Recorder::new();
    let engine = engine(Arc::new(storage.clone()), recorder.clone());
    publish_versions(&engine, "ORDER#A", 1, 3).await;
    let first = consumer(&engine, &storage).lease_store(Arc::new(MemoryLeases::new()));
    let first_monitor = first.monitor();
    let running = Running::start(first);
    wait_until("3 settled", MINUTE, || first_monitor.stats().settled >= 3).await;
    running.stop(Duration::from_secs(10)).await;

    // Version 1's row expires (time to live of superseded rows), and a
    // consumer without checkpoints reads the stream from its start.
    storage
        .client()
        .delete_item()
        .table_name(&storage.tables().command)
        .key("pk", AttributeValue::S(tenant_pk(TENANT)))
        .key("sk", AttributeValue::S("ORDER#A@1".into()))
        .send()
        .await
        .expect("deleted");
    let second = consumer(&engine, &storage).lease_store(Arc::new(MemoryLeases::new()));
    let second_monitor = second.monitor();
    let running = Running::start(second);
    wait_until("3 settled again", MINUTE, || second_monitor.stats().settled >= 3).await;
    running.stop(Duration::from_secs(10)).await;
    assert_eq!(second_monitor.stats().fed, 3, "fed again, and found done");
    assert_eq!(second_monitor.stats().retries, 0);
    assert_eq!(recorder.versions_of("ORDER#A"), [1, 2, 3]);
}

#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test(flavor = "multi_thread")]
async fn a_recreated_command_table_is_followed_to_its_new_stream() {
    if !available() {
        return;
    }
    let storage = fresh_storage("stream-recreated").await;
    let recorder = Recorder::new();
    let engine = engine(Arc::new(storage.clone()), recorder.clone());
    let consumer = consumer(&engine, &storage);
    let monitor = consumer.monitor();
    let running = Running::start(consumer);
    publish_versions(&engine, "ORDER#OLD", 1, 3).await;
    wait_until("the old stream's commands handled", MINUTE, || {
        recorder.len() >= 3
    })
    .await;

    // The command table is deleted and created again: a new stream, whose
    // shard ids may collide with the old one's items in the sequences table.
    let client = storage.client().clone();
    let command_table = storage.tables().command.clone();
    client
        .delete_table()
        .table_name(&command_table)
        .send()
        .await
        .expect("deleted");
    wait_until_async("the table is gone", MINUTE, || async {
        client
            .describe_table()
            .table_name(&command_table)
            .send()
            .await
            .is_err()
    })
    .await;
    storage.ensure_tables().await.expect("created again");
    publish_versions(&engine, "ORDER#NEW", 1, 2).await;
    wait_until("the new stream's commands handled", MINUTE, || {
        recorder.len() >= 5
    })
    .await;
    running.stop(Duration::from_secs(10)).await;

    assert_each_once(&recorder);
    assert_eq!(recorder.versions_of("ORDER#NEW"), [1, 2]);
    assert!(monitor.stats().leases_taken >= 2, "{:?}", monitor.stats());
}
