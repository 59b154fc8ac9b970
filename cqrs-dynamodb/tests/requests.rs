//! Requests per operation, counted on the wire with an SDK interceptor.

mod common;

use std::sync::{Arc, Mutex, PoisonError};

use aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::error::BoxError;
use cqrs_core::{
    AsyncDispatch, CommandInput, CommandService, DataService, Engine, EntityKey, ExpectedVersion,
    InvocationContext, ListQuery, PartialUpdate, SequenceRequest, SequenceService,
};
use cqrs_dynamodb::{local_config, DynamoDbStorage, TableNames};
use serde_json::json;

/// Records the operation (`X-Amz-Target`) of every request sent.
#[derive(Debug, Clone, Default)]
struct RequestLog(Arc<Mutex<Vec<String>>>);

impl RequestLog {
    /// The operations sent since the last call.
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl Intercept for RequestLog {
    fn name(&self) -> &'static str {
        "RequestLog"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let target = context.request().headers().get("x-amz-target").unwrap_or("?");
        let operation = target.rsplit('.').next().unwrap_or(target).to_owned();
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(operation);
        Ok(())
    }
}

async fn counted_engine(dirty_check: bool) -> (Engine, RequestLog) {
    counted_engine_with(dirty_check, false).await
}

async fn counted_engine_with(dirty_check: bool, handler: bool) -> (Engine, RequestLog) {
    let endpoint = common::endpoint().expect("checked by available()");
    let log = RequestLog::default();
    let config = local_config(&endpoint).interceptor(log.clone()).build();
    let client = aws_sdk_dynamodb::Client::from_conf(config);
    let storage = DynamoDbStorage::new(client, TableNames::with_prefix(&common::prefix("requests")));
    storage.ensure_tables().await.expect("tables");
    let mut builder = Engine::builder(Arc::new(storage))
        .dispatch(AsyncDispatch::External)
        .async_dirty_check(dirty_check);
    if handler {
        builder = builder.handler_arc(cqrs_core::testing::RecordingHandler::new(
            "all",
            cqrs_core::Interest::All,
        ));
    }
    log.take();
    (builder.build(), log)
}

fn ops(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test]
async fn requests_per_operation() {
    if !common::available() {
        return;
    }
    let (engine, log) = counted_engine(true).await;
    let ctx = InvocationContext::new("shop-a", "u");
    let pk = "TENANT#shop-a";

    engine
        .publish_sync(CommandInput::new(pk, "P#1").attributes(json!({"n": 1})), &ctx)
        .await
        .unwrap();
    assert_eq!(
        log.take(),
        ops(&["GetItem", "TransactWriteItems"]),
        "publish_sync (create)"
    );

    let update = CommandInput::new(pk, "P#1")
        .attributes(json!({"n": 2}))
        .version(ExpectedVersion::Exactly(1));
    engine.publish_sync(update, &ctx).await.unwrap();
    assert_eq!(
        log.take(),
        ops(&["GetItem", "TransactWriteItems"]),
        "publish_sync (update)"
    );

    let partial = PartialUpdate::new(pk, "P#1", ExpectedVersion::Exactly(2)).attributes(json!({"m": 1}));
    engine.publish_partial_update_sync(partial, &ctx).await.unwrap();
    assert_eq!(
        log.take(),
        ops(&["GetItem", "TransactWriteItems"]),
        "partial update (sync)"
    );

    let key = EntityKey::new(pk, "P#1");
    engine.get_item(&key, &ctx).await.unwrap();
    assert_eq!(log.take(), ops(&["GetItem"]), "get");

    engine
        .list_items(pk, ListQuery::new().limit(20), &ctx)
        .await
        .unwrap();
    assert_eq!(log.take(), ops(&["Query"]), "one list page");

    // The first number of a counter looks for a count of the old layout.
    engine.next(&SequenceRequest::new("ORDER"), &ctx).await.unwrap();
    assert_eq!(
        log.take(),
        ops(&["UpdateItem", "GetItem", "UpdateItem"]),
        "first sequence next"
    );
    engine.next(&SequenceRequest::new("ORDER"), &ctx).await.unwrap();
    assert_eq!(log.take(), ops(&["UpdateItem"]), "sequence next");

    engine
        .publish_async(CommandInput::new(pk, "A#1"), &ctx)
        .await
        .unwrap();
    assert_eq!(log.take(), ops(&["PutItem"]), "publish_async (create)");
    let next = CommandInput::new(pk, "A#1")
        .attributes(json!({"n": 1}))
        .version(ExpectedVersion::Exactly(1));
    engine.publish_async(next, &ctx).await.unwrap();
    assert_eq!(
        log.take(),
        ops(&["GetItem", "TransactWriteItems"]),
        "publish_async (update, dirty check on)"
    );

    engine.process(&EntityKey::new(pk, "A#1"), 1).await.unwrap();
    assert_eq!(
        log.take(),
        ops(&["GetItem", "GetItem", "TransactWriteItems"]),
        "pipeline apply (data, command, apply)"
    );

    let commit: Vec<_> = (1..=3).map(|i| CommandInput::new(pk, format!("C#{i}"))).collect();
    engine.commit(commit, &ctx).await.unwrap();
    let mut sent = log.take();
    sent.sort();
    assert_eq!(
        sent,
        ops(&["GetItem", "GetItem", "GetItem", "TransactWriteItems"]),
        "commit of 3 (reads in parallel: 2 round trips)"
    );
}

#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test]
async fn publish_async_is_one_request_without_the_dirty_check() {
    if !common::available() {
        return;
    }
    let (engine, log) = counted_engine(false).await;
    let ctx = InvocationContext::new("shop-a", "u");
    engine
        .publish_async(CommandInput::new("TENANT#shop-a", "A#1"), &ctx)
        .await
        .unwrap();
    assert_eq!(log.take(), ops(&["PutItem"]));
    let next = CommandInput::new("TENANT#shop-a", "A#1")
        .attributes(json!({"n": 1}))
        .version(ExpectedVersion::Exactly(1));
    engine.publish_async(next, &ctx).await.unwrap();
    assert_eq!(log.take(), ops(&["TransactWriteItems"]));
}

/// With a handler interested, completion is recorded: one write more.
#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test]
async fn requests_per_operation_with_a_handler() {
    if !common::available() {
        return;
    }
    let (engine, log) = counted_engine_with(true, true).await;
    let ctx = InvocationContext::new("shop-a", "u");
    let pk = "TENANT#shop-a";
    engine
        .publish_sync(CommandInput::new(pk, "P#1").attributes(json!({"n": 1})), &ctx)
        .await
        .unwrap();
    assert_eq!(
        log.take(),
        ops(&["GetItem", "UpdateItem", "TransactWriteItems", "UpdateItem"]),
        "the engine's first sync publish: read, its publisher heartbeat, write, status finished"
    );
    engine
        .publish_sync(CommandInput::new(pk, "P#2").attributes(json!({"n": 1})), &ctx)
        .await
        .unwrap();
    assert_eq!(
        log.take(),
        ops(&["GetItem", "TransactWriteItems", "UpdateItem"]),
        "publish_sync (the heartbeat is renewed in the background): read, write, status finished"
    );
    engine
        .publish_async(CommandInput::new(pk, "A#1"), &ctx)
        .await
        .unwrap();
    assert_eq!(log.take(), ops(&["PutItem"]), "publish_async (create)");
    let key = EntityKey::new(pk, "A#1");
    engine.settle(&key, 1).await.unwrap();
    assert_eq!(
        log.take(),
        ops(&["GetItem", "GetItem", "TransactWriteItems", "UpdateItem"]),
        "settle of a published command: command, data, apply, finished"
    );
    engine.settle(&key, 1).await.unwrap();
    assert_eq!(
        log.take(),
        ops(&["GetItem"]),
        "settle of a finished command: its status"
    );
}

/// Publishes `versions` sync updates of `sk` (each one applied), from version 1.
async fn applied_versions(engine: &Engine, pk: &str, sk: &str, versions: u64, ctx: &InvocationContext) {
    for version in 1..=versions {
        let command = CommandInput::new(pk, sk)
            .attributes(json!({ "n": version }))
            .version(ExpectedVersion::Exactly(version - 1));
        engine.publish_sync(command, ctx).await.unwrap();
    }
}

/// Reading the latest command is a constant number of requests, whatever
/// the number of versions: the data row, then one `BatchGetItem` of its
/// version and the next (and one more, of 16 versions, when commands are
/// pending).
#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test]
async fn latest_reads_are_constant_in_versions() {
    if !common::available() {
        return;
    }
    let (engine, log) = counted_engine(true).await;
    let ctx = InvocationContext::new("shop-a", "u");
    let pk = "TENANT#shop-a";
    let key = EntityKey::new(pk, "L#1");
    applied_versions(&engine, pk, "L#1", 12, &ctx).await;
    log.take();

    let latest = engine.get_latest(&key, &ctx).await.unwrap().unwrap();
    assert_eq!(latest.version, 12);
    assert_eq!(
        log.take(),
        ops(&["GetItem", "BatchGetItem"]),
        "get_latest, 12 versions applied, none pending: data row, then versions 12 and 13"
    );

    // Three async commands nobody applies (External dispatch).
    for version in 13..=15 {
        let command = CommandInput::new(pk, "L#1")
            .attributes(json!({ "n": version }))
            .version(ExpectedVersion::Exactly(version - 1));
        engine.publish_async(command, &ctx).await.unwrap();
    }
    log.take();
    let latest = engine.get_latest(&key, &ctx).await.unwrap().unwrap();
    assert_eq!(
        (latest.version, latest.attributes.as_value()),
        (15, &json!({ "n": 15 }))
    );
    assert_eq!(
        log.take(),
        ops(&["GetItem", "BatchGetItem", "BatchGetItem"]),
        "get_latest, 12 applied and 3 pending: data row, versions 12-13, then 14-29"
    );
    assert_eq!(engine.get_item(&key, &ctx).await.unwrap().unwrap().version, 12);
    log.take();

    // An entity that does not exist: the data row (none), then the entity's
    // command rows (none: a pending creation would be among them).
    assert!(engine
        .get_latest(&EntityKey::new(pk, "L#none"), &ctx)
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        log.take(),
        ops(&["GetItem", "Query"]),
        "get_latest of a missing entity"
    );

    // Last writer wins on another entity of 12 versions: the latest command
    // (data row + BatchGetItem), then the write on top of it.
    applied_versions(&engine, pk, "L#2", 12, &ctx).await;
    log.take();
    let latest = CommandInput::new(pk, "L#2")
        .attributes(json!({ "n": "latest" }))
        .version(ExpectedVersion::Latest);
    let written = engine.publish_async(latest, &ctx).await.unwrap();
    assert_eq!(written.get().version, 13);
    assert_eq!(
        log.take(),
        ops(&["GetItem", "BatchGetItem", "TransactWriteItems"]),
        "publish_async at Latest, 12 versions"
    );
}

/// A key rides in the transaction of its command: a first keyed publish
/// costs what an unkeyed one does (an async create: a `TransactWriteItems`
/// instead of a `PutItem`). Its retry conflicts and reads the key's row and
/// the first result.
#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test]
async fn keyed_publishes_cost_no_request_more() {
    if !common::available() {
        return;
    }
    let (engine, log) = counted_engine(true).await;
    let ctx = InvocationContext::new("shop-a", "u");
    let pk = "TENANT#shop-a";

    let keyed = || {
        CommandInput::new(pk, "K#1")
            .attributes(json!({ "n": 1 }))
            .idempotency_key("req-sync-1")
    };
    let first = engine.publish_sync(keyed(), &ctx).await.unwrap();
    assert_eq!(
        log.take(),
        ops(&["GetItem", "TransactWriteItems"]),
        "keyed publish_sync, first try"
    );
    let retry = engine.publish_sync(keyed(), &ctx).await.unwrap();
    assert_eq!(
        retry.get(),
        first.get(),
        "the retry answers with the first result"
    );
    assert_eq!(
        log.take(),
        ops(&["GetItem", "GetItem", "GetItem", "GetItem"]),
        "keyed publish_sync, retry: data row (version 1 exists: conflict), key row, data row of the first \
         result, its command row (how its handlers ended)"
    );

    let keyed = || {
        CommandInput::new(pk, "K#2")
            .attributes(json!({ "n": 1 }))
            .idempotency_key("req-async-1")
    };
    let first = engine.publish_async(keyed(), &ctx).await.unwrap();
    assert_eq!(
        log.take(),
        ops(&["TransactWriteItems"]),
        "keyed publish_async (create), first try: command and key in one transaction"
    );
    let retry = engine.publish_async(keyed(), &ctx).await.unwrap();
    assert_eq!(retry.get().version, first.get().version);
    assert_eq!(retry.get().request_id, first.get().request_id);
    assert_eq!(
        log.take(),
        ops(&[
            "TransactWriteItems",
            "BatchGetItem",
            "GetItem",
            "GetItem",
            "GetItem"
        ]),
        "keyed publish_async (create), retry: the write conflicts, its latest version \
         (versions 1 and 2), the row at its version (did this write land? another's), key row, \
         the first command"
    );
}

/// A read-modify-write costs what the hand-written loop did — a read, then
/// the publish (which reads the row again for its checks) — and an
/// idempotency key adds the read of its row.
#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test]
async fn updates_cost_a_read_and_a_publish() {
    if !common::available() {
        return;
    }
    let (engine, log) = counted_engine(false).await;
    let services = engine.services();
    let ctx = InvocationContext::new("shop-a", "u");
    let pk = "TENANT#shop-a";
    let key = EntityKey::new(pk, "U#1");
    engine
        .publish_sync(CommandInput::new(pk, "U#1").attributes(json!({ "n": 0 })), &ctx)
        .await
        .unwrap();
    let bump = |current: Option<&cqrs_core::DataItem>| {
        let item = current.expect("exists");
        let n = item.attributes["n"].as_u64().unwrap_or(0);
        Ok::<_, cqrs_core::Error>(Some(
            CommandInput::update_of(item).attributes(json!({ "n": n + 1 })),
        ))
    };
    log.take();
    services.update_with(&key, &ctx, bump).await.unwrap();
    assert_eq!(
        log.take(),
        ops(&["GetItem", "GetItem", "TransactWriteItems"]),
        "update_with: the read, then the publish"
    );
    services
        .update(&key)
        .idempotency_key("bump-1")
        .publish_sync(&ctx, bump)
        .await
        .unwrap();
    assert_eq!(
        log.take(),
        ops(&["GetItem", "GetItem", "GetItem", "TransactWriteItems"]),
        "keyed update: the key row, the read, then the publish"
    );
}

/// A page of an index costs one `Query` whatever the partition holds: 20
/// pending orders among 100 orders, then among 10,000. Listing the same
/// page by filtering the tenant's partition reads every order before it.
#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test]
async fn index_pages_cost_the_page_not_the_partition() {
    if !common::available() {
        return;
    }
    let endpoint = common::endpoint().expect("checked by available()");
    let log = RequestLog::default();
    let client =
        aws_sdk_dynamodb::Client::from_conf(local_config(&endpoint).interceptor(log.clone()).build());
    let names = TableNames::with_prefix(&common::prefix("index-requests")).with_indexes(["orders-by-status"]);
    let storage = DynamoDbStorage::new(client, names);
    storage.ensure_tables().await.expect("tables");
    let by_status = cqrs_core::Index::new("orders-by-status")
        .entity_type("ORDER")
        .partition_by("attributes.status");
    let client = storage.client().clone();
    let data_table = storage.tables().data.clone();
    let engine = Engine::builder(Arc::new(storage))
        .index(by_status.clone())
        .build();
    let ctx = InvocationContext::new("shop-a", "u");
    let pk = "TENANT#shop-a";
    // 25 pending orders (ORDER#P…, which sort after the others) among 100,
    // then among 10,000: 9,975 shipped ones (ORDER#0…) in all. The index
    // reads the 25; a filtered listing of the partition reads the shipped
    // ones before them. The rows are written as the engine writes them —
    // the data row with its index entry — 25 per BatchWriteItem, to keep
    // the setup of 10,000 orders short.
    let place = |orders: Vec<(String, &'static str)>| {
        let (client, table, index) = (client.clone(), data_table.clone(), by_status.clone());
        async move {
            for chunk in orders.chunks(25) {
                let puts = chunk.iter().map(|(sk, status)| {
                    let item = cqrs_core::DataItem::builder(pk, sk)
                        .attributes(json!({ "status": status }))
                        .build();
                    let entry = index.entry(&item).expect("indexable").expect("in the index");
                    let mut row: std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue> =
                        serde_dynamo::to_item(&item).expect("an item");
                    let (hash, range) = cqrs_dynamodb::index_attributes(&entry.index);
                    row.insert(hash, aws_sdk_dynamodb::types::AttributeValue::S(entry.pk));
                    row.insert(range, aws_sdk_dynamodb::types::AttributeValue::S(entry.sk));
                    let put = aws_sdk_dynamodb::types::PutRequest::builder()
                        .set_item(Some(row))
                        .build()
                        .expect("put");
                    aws_sdk_dynamodb::types::WriteRequest::builder()
                        .put_request(put)
                        .build()
                });
                let out = client
                    .batch_write_item()
                    .request_items(&table, puts.collect())
                    .send()
                    .await
                    .expect("written");
                assert!(
                    out.unprocessed_items().is_none_or(|u| u.is_empty()),
                    "all written"
                );
            }
        }
    };
    let shipped = |range: std::ops::Range<u32>| range.map(|n| (format!("ORDER#0{n:06}"), "shipped"));
    let first: Vec<_> = (0..25)
        .map(|n| (format!("ORDER#P{n:06}"), "pending"))
        .chain(shipped(0..75))
        .collect();
    let rest: Vec<_> = shipped(75..9_975).collect();
    let pending = cqrs_core::IndexLookup::new("orders-by-status", pk).value("pending");
    let mut counts = Vec::new();
    for (orders, batch) in [(100, first), (10_000, rest)] {
        // Eight writers at once, to keep the setup short.
        let per_writer = batch.len().div_ceil(8);
        futures::future::join_all(batch.chunks(per_writer).map(|part| place(part.to_vec()))).await;
        log.take();
        let page = engine
            .list_by_index(&pending, ListQuery::new().limit(20), &ctx)
            .await
            .expect("page");
        assert_eq!(page.items.len(), 20);
        assert!(page.cursor.is_some(), "5 more pending orders");
        let by_index = log.take();
        let filtered = engine
            .list_items(
                pk,
                ListQuery::new()
                    .limit(20)
                    .filter(cqrs_core::Filter::eq("attributes.status", "pending")),
                &ctx,
            )
            .await
            .expect("filtered page");
        assert_eq!(filtered.items.len(), 20);
        counts.push((orders, by_index, log.take().len()));
    }
    for (orders, by_index, _) in &counts {
        assert_eq!(
            *by_index,
            ops(&["Query"]),
            "20 pending among {orders} orders, by index"
        );
    }
    eprintln!(
        "a page of 20 pending orders: by index {:?}; by filtering the partition, {} then {} Query requests",
        counts[0].1, counts[0].2, counts[1].2
    );
}
