//! The DynamoDB projection target on DynamoDB Local: the target conformance
//! suite through a harness, and what is DynamoDB's own (the 100-item limit,
//! conditions racing, merged writes, batched reads, dropping a generation).
//! Without an endpoint (`DYNAMODB_ENDPOINT`, see `build.rs`) the tests are
//! marked ignored.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use cqrs_core::projection::{MetaDoc, ProjectionTarget, ProjectionTx, Projector, Scope};
use cqrs_core::testing::projections::{Tally, TargetHarness};
use cqrs_core::{
    tenant_pk, BoxError, CommandInput, CommandService, DataSyncEvent, DataSyncHandler, Engine, EntityKey,
    Error, ExpectedVersion, Storage,
};
use cqrs_dynamodb::aws_sdk_dynamodb::config::retry::RetryConfig;
use cqrs_dynamodb::aws_sdk_dynamodb::types::AttributeValue;
use cqrs_dynamodb::aws_sdk_dynamodb::Client;
use cqrs_dynamodb::projection::{DynamoTarget, DynamoTx, UpdateExpression};
use cqrs_dynamodb::testing::LocalDynamo;
use cqrs_dynamodb::{local_client, local_config, OPERATION_ATTEMPT_TIMEOUT};
use cqrs_memory::InMemory;
use serde_json::json;

use common::{available, ctx, endpoint, TENANT};

/// The suite's tables on DynamoDB: table `t`'s row `k` is the item
/// `pk = t`, `sk = k` of the generation, its value in the number `v`.
#[derive(Clone)]
struct DynamoHarness;

fn number(item: &std::collections::HashMap<String, AttributeValue>) -> Option<i64> {
    match item.get("v") {
        Some(AttributeValue::N(v)) => v.parse().ok(),
        _ => None,
    }
}

#[async_trait]
impl TargetHarness for DynamoHarness {
    type Target = DynamoTarget;

    async fn target(&self) -> DynamoTarget {
        let endpoint = endpoint().expect("checked by available()");
        let target = DynamoTarget::new(local_client(&endpoint), common::prefix("projections"));
        target.prepare().await.expect("table created");
        target
    }

    async fn storage(&self) -> Arc<dyn Storage> {
        Arc::new(InMemory::new())
    }

    async fn create_table(&self, _: &mut DynamoTx, _: &str) -> Result<(), BoxError> {
        // Every table of every generation lives in the target's one table.
        Ok(())
    }

    async fn get(&self, tx: &mut DynamoTx, table: &str, key: &str) -> Result<Option<i64>, BoxError> {
        Ok(tx.get(table, key).await?.as_ref().and_then(number))
    }

    async fn add(&self, tx: &mut DynamoTx, table: &str, key: &str, delta: i64) -> Result<(), BoxError> {
        Ok(tx.add(table, key, "v", delta)?)
    }

    async fn read(&self, target: &DynamoTarget, projection: &str, table: &str) -> BTreeMap<String, i64> {
        let Some(pk) = target.live_pk(projection, table).await.expect("generations read") else {
            return BTreeMap::new();
        };
        let client = target.client();
        let mut rows = BTreeMap::new();
        let mut start = None;
        loop {
            let page = client
                .query()
                .table_name(target.table())
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", AttributeValue::S(pk.clone()))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .expect("read model queried");
            for item in page.items() {
                let Some(AttributeValue::S(sk)) = item.get("sk") else {
                    panic!("an item without sk: {item:?}")
                };
                rows.insert(sk.clone(), number(item).expect("a number v"));
            }
            match page.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => return rows,
            }
        }
    }
}

// The target conformance suite, one test per check.
#[cfg(dynamodb_tests)]
cqrs_core::projection_target_tests!(DynamoHarness, guard = available());
#[cfg(not(dynamodb_tests))]
cqrs_core::projection_target_tests!(DynamoHarness, ignore = "needs DynamoDB Local: run ./scripts/test");

/// Keeps every event the engine hands its handlers.
#[derive(Default)]
struct Collector(Mutex<Vec<DataSyncEvent>>);

#[async_trait]
impl DataSyncHandler for Collector {
    fn name(&self) -> &str {
        "collector"
    }

    async fn handle(&self, event: &DataSyncEvent) -> Result<(), BoxError> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(event.clone());
        Ok(())
    }
}

struct World {
    target: DynamoTarget,
    engine: Engine,
    events: Arc<Collector>,
    projector: Projector<Tally<DynamoHarness>, DynamoTarget>,
}

async fn world(name: &str) -> World {
    world_on(DynamoHarness.target().await, name).await
}

async fn world_on(target: DynamoTarget, name: &str) -> World {
    let harness = Arc::new(DynamoHarness);
    let events = Arc::new(Collector::default());
    let engine = Engine::builder(harness.storage().await)
        .handler_arc(events.clone())
        .build();
    let projector = Projector::new(
        Tally::new(harness, name),
        target.clone(),
        engine.storage().clone(),
    );
    World {
        target,
        engine,
        events,
        projector,
    }
}

impl World {
    /// Publishes version after version of `ITEM#{id}` with these (group, amount).
    async fn publish(&self, id: &str, states: &[(&str, i64)]) {
        for (i, (group, amount)) in states.iter().enumerate() {
            self.engine
                .publish_sync(
                    CommandInput::new(tenant_pk(TENANT), format!("ITEM#{id}"))
                        .attributes(json!({ "group": group, "amount": amount }))
                        .version(ExpectedVersion::Exactly(i as u64)),
                    &ctx(),
                )
                .await
                .expect("published");
        }
    }

    fn events(&self) -> Vec<DataSyncEvent> {
        self.events
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    async fn read(&self, table: &str) -> BTreeMap<String, i64> {
        DynamoHarness
            .read(&self.target, self.projector.name(), table)
            .await
    }
}

fn tenant_row(row: &str) -> String {
    format!("{TENANT}/{row}")
}

#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test(flavor = "multi_thread")]
async fn events_delivered_twice_and_out_of_order_are_applied_once_each() {
    if !available() {
        return;
    }
    let w = world("tally").await;
    w.publish("1", &[("tea", 5), ("tea", 7), ("coffee", 2)]).await;
    w.publish("2", &[("tea", 1), ("tea", 4)]).await;
    let events = w.events();
    assert_eq!(events.len(), 5);
    // Each entity's first version, then ITEM#1@3 before its @2 (which it
    // takes from history), ITEM#2@2, then everything again, newest first.
    let first_pass = [0, 3, 2, 4].map(|i| &events[i]);
    for event in first_pass.into_iter().chain(events.iter().rev()) {
        w.projector.apply(event).await.expect("applied");
    }
    assert_eq!(
        w.read("totals").await,
        BTreeMap::from([(tenant_row("coffee"), 2), (tenant_row("tea"), 4)])
    );
    let applied = w.read("applied").await;
    assert_eq!(applied.len(), 5, "{applied:?}");
    assert!(applied.values().all(|n| *n == 1), "{applied:?}");
    assert_eq!(
        w.read("last").await,
        BTreeMap::from([(tenant_row("ITEM#1"), 3), (tenant_row("ITEM#2"), 2)])
    );
    assert!(w.read("regressions").await.is_empty());
    let stats = w.projector.stats();
    assert_eq!(
        (stats.events, stats.versions, stats.from_history, stats.skipped),
        (4, 5, 1, 5)
    );
}

#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test(flavor = "multi_thread")]
async fn two_consumers_racing_on_shared_rows_apply_each_version_once() {
    if !available() {
        return;
    }
    let w = world("tally").await;
    // 12 entities of 3 versions, all adding to the same two totals rows:
    // every transaction races the others on those rows.
    for id in 0..12 {
        w.publish(&id.to_string(), &[("tea", 1), ("tea", 2), ("coffee", 3)])
            .await;
    }
    w.projector.prepare().await.expect("prepared");
    let events = w.events();
    let consumers: Vec<_> = [false, true]
        .into_iter()
        .map(|reversed| {
            let projector = w.projector.clone();
            let mut events = events.clone();
            if reversed {
                events.reverse();
            }
            tokio::spawn(async move {
                for event in &events {
                    projector.apply(event).await.expect("applied");
                }
            })
        })
        .collect();
    for consumer in consumers {
        consumer.await.expect("consumer finished");
    }
    assert_eq!(
        w.read("totals").await,
        BTreeMap::from([(tenant_row("coffee"), 36), (tenant_row("tea"), 0)])
    );
    let last = w.read("last").await;
    assert_eq!(last.len(), 12);
    assert!(last.values().all(|v| *v == 3), "{last:?}");
    let applied = w.read("applied").await;
    assert!(
        applied.values().all(|n| *n == 1),
        "a version applied twice: {applied:?}"
    );
    assert!(w.read("regressions").await.is_empty());
    let stats = w.projector.stats();
    // Each of the 36 events was applied once (versions) or skipped, by
    // one consumer or the other.
    assert_eq!(stats.events + stats.skipped, 72, "{stats:?}");
    println!("races lost and retried: {}", stats.conflicts);
}

#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test(flavor = "multi_thread")]
async fn a_rebuild_switches_readers_and_drops_the_old_generation() {
    if !available() {
        return;
    }
    let w = world("tally").await;
    w.publish("1", &[("tea", 5), ("tea", 7)]).await;
    w.publish("2", &[("coffee", 3)]).await;
    for event in w.events() {
        w.projector.apply(&event).await.expect("applied");
    }
    let before = w.read("totals").await;
    // A batch of 5 rows keeps a transaction under DynamoDB's 100 items.
    let rebuilt = w
        .projector
        .rebuild(Scope::tenants([TENANT]))
        .batch(5)
        .run()
        .await
        .expect("rebuilt");
    assert_eq!((rebuilt.generation, rebuilt.replaced, rebuilt.rows), (2, 1, 2));
    assert_eq!(w.target.live_generation("tally").await.unwrap(), Some(2));
    assert_eq!(w.read("totals").await, before);
    // Generation 1's items and checkpoints are gone; 2's are there.
    let client = local_client(&endpoint().unwrap());
    let pks: Vec<String> = client
        .scan()
        .table_name(w.target.table())
        .send()
        .await
        .unwrap()
        .items()
        .iter()
        .filter_map(|item| match item.get("pk") {
            Some(AttributeValue::S(pk)) => Some(pk.clone()),
            _ => None,
        })
        .collect();
    assert!(!pks.iter().any(|pk| pk.contains("#g1#")), "{pks:?}");
    assert!(pks.iter().any(|pk| pk.starts_with("tally#g2#")), "{pks:?}");
    assert!(
        pks.iter().any(|pk| pk.starts_with("CHECKPOINT#tally#g2#")),
        "{pks:?}"
    );
}

/// A target with the generations of `projection` in place (generation 1
/// live), as the projector leaves them.
async fn prepared(projection: &str) -> DynamoTarget {
    let target = DynamoHarness.target().await;
    target
        .switch(projection, r#"{"live":1,"building":null,"last":1}"#, 0, 1, &[])
        .await
        .expect("generations written");
    target
}

async fn begin(target: &DynamoTarget, projection: &str) -> DynamoTx {
    let (mut tx, doc) = target.begin(projection).await.expect("begun");
    assert!(doc.is_some());
    tx.set_generation(1);
    tx
}

#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_of_more_than_100_items_is_too_large_and_writes_nothing() {
    if !available() {
        return;
    }
    let target = prepared("big").await;
    let mut tx = begin(&target, "big").await;
    // 99 items and the generations check: 100, the limit.
    for i in 0..99 {
        tx.add("rows", &format!("{i:03}"), "v", 1).unwrap();
    }
    tx.commit().await.expect("100 items commit");
    let mut tx = begin(&target, "big").await;
    for i in 0..99 {
        tx.add("rows", &format!("{i:03}"), "v", 1).unwrap();
    }
    tx.set_checkpoint(&EntityKey::new("TENANT#a", "ITEM#1"), 0, 1)
        .await
        .unwrap();
    match tx.commit().await {
        Err(Error::TooLarge { what, size, limit }) => {
            assert_eq!((what.as_str(), size, limit), ("transaction", 101, 100))
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let rows = DynamoHarness.read(&target, "big", "rows").await;
    assert_eq!(rows.len(), 99);
    assert!(
        rows.values().all(|v| *v == 1),
        "the second transaction wrote: {rows:?}"
    );
    let checkpoints = target
        .checkpoints("big", 1, &[EntityKey::new("TENANT#a", "ITEM#1")])
        .await
        .unwrap();
    assert_eq!(checkpoints, [0]);
}

#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test(flavor = "multi_thread")]
async fn two_transactions_moving_one_checkpoint_conflict_and_the_loser_writes_nothing() {
    if !available() {
        return;
    }
    let target = prepared("race").await;
    let key = EntityKey::new("TENANT#a", "ITEM#1");
    let mut first = begin(&target, "race").await;
    let mut second = begin(&target, "race").await;
    for (tx, delta) in [(&mut first, 1), (&mut second, 10)] {
        assert_eq!(tx.checkpoint(&key).await.unwrap(), 0);
        tx.add("totals", "tea", "v", delta).unwrap();
        tx.set_checkpoint(&key, 0, 1).await.unwrap();
    }
    first.commit().await.expect("the first commits");
    let lost = second.commit().await.unwrap_err();
    assert!(lost.is_conflict(), "{lost:?}");
    assert_eq!(
        target
            .checkpoints("race", 1, std::slice::from_ref(&key))
            .await
            .unwrap(),
        [1]
    );
    assert_eq!(
        DynamoHarness.read(&target, "race", "totals").await,
        BTreeMap::from([("tea".to_owned(), 1)])
    );
    // From a checkpoint that moved on: also a conflict.
    let mut late = begin(&target, "race").await;
    late.set_checkpoint(&key, 1, 2).await.unwrap();
    late.commit().await.expect("moved from 1 to 2");
    let mut stale = begin(&target, "race").await;
    stale.set_checkpoint(&key, 1, 3).await.unwrap();
    assert!(stale.commit().await.unwrap_err().is_conflict());
}

#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test(flavor = "multi_thread")]
async fn a_commit_after_the_generations_changed_conflicts() {
    if !available() {
        return;
    }
    let target = prepared("switched").await;
    let mut tx = begin(&target, "switched").await;
    tx.add("totals", "tea", "v", 1).unwrap();
    // A rebuild starts meanwhile: the generations document moves on.
    target
        .switch("switched", r#"{"live":1,"building":2,"last":2}"#, 1, 1, &[])
        .await
        .unwrap();
    assert!(tx.commit().await.unwrap_err().is_conflict());
    assert!(DynamoHarness.read(&target, "switched", "totals").await.is_empty());
    // Storing the document from a stale revision conflicts at once.
    let (mut tx, doc) = target.begin("switched").await.unwrap();
    assert_eq!(doc.unwrap().revision, 2);
    let refused = tx.store(MetaDoc::Generations, "{}", 1).await.unwrap_err();
    assert!(refused.is_conflict(), "{refused:?}");
    tx.store(MetaDoc::Generations, r#"{"live":2,"building":null,"last":2}"#, 2)
        .await
        .unwrap();
    tx.commit().await.expect("stored");
    assert_eq!(target.live_generation("switched").await.unwrap(), Some(2));
}

#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test(flavor = "multi_thread")]
async fn writes_of_one_item_merge_and_reads_see_them() {
    if !available() {
        return;
    }
    let target = prepared("merge").await;
    let mut tx = begin(&target, "merge").await;
    tx.add("totals", "tea", "v", 5).unwrap();
    tx.add("totals", "tea", "v", -2).unwrap();
    assert_eq!(
        tx.get("totals", "tea").await.unwrap().as_ref().and_then(number),
        Some(3)
    );
    tx.put_value("days", "2026-12-05", &json!({ "v": 1, "note": "first" }))
        .unwrap();
    tx.add("days", "2026-12-05", "v", 1).unwrap();
    tx.update(
        "labels",
        "tea",
        UpdateExpression::new("SET #l = :l")
            .name("#l", "label")
            .value(":l", AttributeValue::S("Tea".into())),
    )
    .unwrap();
    // An expression and another write of one item cannot merge.
    let refused = tx.add("labels", "tea", "v", 1).unwrap_err();
    assert!(matches!(refused, Error::InvalidInput { .. }), "{refused:?}");
    let blob = std::collections::HashMap::from([("blob".to_owned(), AttributeValue::S("x".repeat(500_000)))]);
    let refused = tx.put("blobs", "x", blob).unwrap_err();
    assert!(matches!(refused, Error::TooLarge { .. }), "{refused:?}");
    tx.commit().await.expect("committed");
    assert!(target.get_live("merge", "blobs", "x").await.unwrap().is_none());
    assert_eq!(
        DynamoHarness.read(&target, "merge", "totals").await,
        BTreeMap::from([("tea".to_owned(), 3)])
    );
    let day = target
        .get_live("merge", "days", "2026-12-05")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(number(&day), Some(2));
    assert_eq!(day["note"], AttributeValue::S("first".into()));
    let label = target.get_live("merge", "labels", "tea").await.unwrap().unwrap();
    assert_eq!(label["label"], AttributeValue::S("Tea".into()));
}

#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test(flavor = "multi_thread")]
async fn checkpoints_are_read_in_batches_in_the_order_asked() {
    if !available() {
        return;
    }
    let target = prepared("many").await;
    let keys: Vec<EntityKey> = (0..250)
        .map(|i| EntityKey::new("TENANT#a", format!("ITEM#{i:03}")))
        .collect();
    for chunk in keys.chunks(90) {
        let mut tx = begin(&target, "many").await;
        for key in chunk.iter().filter(|k| !k.sk.ends_with('7')) {
            let version = key.sk[5..].parse::<u64>().unwrap() + 1;
            tx.set_checkpoint(key, 0, version).await.unwrap();
        }
        tx.commit().await.unwrap();
    }
    // Asked twice over, and with one key twice.
    let mut asked = keys.clone();
    asked.push(keys[3].clone());
    let found = target.checkpoints("many", 1, &asked).await.unwrap();
    let expected: Vec<u64> = asked
        .iter()
        .map(|k| {
            if k.sk.ends_with('7') {
                0
            } else {
                k.sk[5..].parse::<u64>().unwrap() + 1
            }
        })
        .collect();
    assert_eq!(found, expected);
    // Another generation has none.
    assert!(target
        .checkpoints("many", 2, &keys)
        .await
        .unwrap()
        .iter()
        .all(|v| *v == 0));
}

#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test(flavor = "multi_thread")]
async fn a_projection_name_the_layout_cannot_hold_is_refused() {
    if !available() {
        return;
    }
    let target = DynamoHarness.target().await;
    for name in ["a#g1", "CHECKPOINT", ""] {
        let refused = target.begin(name).await.err().expect("refused");
        assert!(
            matches!(refused, Error::InvalidInput { .. }),
            "{name}: {refused:?}"
        );
    }
}

#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test(flavor = "multi_thread")]
async fn dynamodb_hung_mid_projection_loses_and_doubles_nothing() {
    if !LocalDynamo::available() {
        return;
    }
    let mut local = LocalDynamo::start().await.expect("DynamoDB Local started");
    // One attempt per request: the outage reaches the target's callers
    // instead of being waited out by the SDK's retries.
    let config = local_config(&local.endpoint())
        .retry_config(RetryConfig::standard().with_max_attempts(1))
        .build();
    let target = DynamoTarget::new(Client::from_conf(config), common::prefix("projection-hung"));
    target.prepare().await.expect("table created");
    let w = world_on(target, "tally").await;
    for id in 0..30 {
        w.publish(&format!("{id:02}"), &[("tea", 1), ("coffee", 2)]).await;
    }
    w.projector.prepare().await.expect("prepared");
    let events = w.events();
    let progress = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicUsize::new(0));
    // A consumer that retries what fails retryably, as the pipeline does.
    let consumer = {
        let (projector, progress, failures) = (w.projector.clone(), progress.clone(), failures.clone());
        tokio::spawn(async move {
            for event in &events {
                loop {
                    match projector.apply(event).await {
                        Ok(_) => break,
                        Err(e) if e.is_retryable() => {
                            failures.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(e) => panic!("not retryable: {e}"),
                    }
                }
                progress.fetch_add(1, Ordering::SeqCst);
                // Paced, so that the outage comes mid-run.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    common::wait_until("a third of the events applied", Duration::from_secs(30), || {
        progress.load(Ordering::SeqCst) >= 20
    })
    .await;
    // Hung past the SDK's attempt timeout: requests in flight time out,
    // and a commit DynamoDB received may land once it resumes, after its
    // caller saw it fail.
    local.pause().expect("DynamoDB Local paused");
    tokio::time::sleep(OPERATION_ATTEMPT_TIMEOUT + Duration::from_secs(1)).await;
    local.resume().expect("DynamoDB Local resumed");
    consumer.await.expect("consumer finished");
    let failed = failures.load(Ordering::SeqCst);
    assert!(failed > 0, "the outage was not seen");
    // Every entity counted once, at its last version: nothing lost or doubled.
    assert_eq!(
        w.read("totals").await,
        BTreeMap::from([(tenant_row("coffee"), 60), (tenant_row("tea"), 0)])
    );
    let last = w.read("last").await;
    assert_eq!(last.len(), 30);
    assert!(last.values().all(|v| *v == 2), "{last:?}");
    let applied = w.read("applied").await;
    assert_eq!(applied.len(), 60);
    assert!(applied.values().all(|n| *n == 1), "applied twice: {applied:?}");
    println!("applies failed while DynamoDB hung, then retried: {failed}");
}
