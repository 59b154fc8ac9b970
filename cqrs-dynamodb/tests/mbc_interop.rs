//! Sharing tables with MBC CQRS Serverless, the reference framework, for
//! real: the rows its own code wrote (`tests/fixtures/mbc-items.json`, from
//! its core and sequence packages run against DynamoDB Local; each entry says
//! which call wrote it) are loaded into fresh tables and read, listed and
//! updated through this framework, and numbers are drawn from its counter.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use aws_sdk_dynamodb::types::AttributeValue;
use cqrs_core::{
    AsyncDispatch, CommandInput, CommandService, CommandStatus, DataService, Engine, EntityKey,
    ExpectedVersion, InvocationContext, ListQuery, SequenceRequest, SequenceService, Storage,
};
use cqrs_dynamodb::testing::{put_rows, rows_from_json};
use cqrs_dynamodb::{DynamoDbStorage, Item};
use serde_json::json;

const FIXTURES: &str = include_str!("fixtures/mbc-items.json");
const PK: &str = "TENANT#shop-a";

/// The fixture items: (table, item).
fn fixtures() -> Vec<(String, Item)> {
    rows_from_json(FIXTURES).expect("fixtures")
}

async fn put(storage: &DynamoDbStorage, table: &str, item: Item) {
    put_rows(storage, &[(table.to_owned(), item)]).await.expect("put");
}

async fn raw(storage: &DynamoDbStorage, table_name: &str, pk: &str, sk: &str) -> Item {
    storage
        .client()
        .get_item()
        .table_name(storage.tables().by_role(table_name).expect("a table"))
        .key("pk", AttributeValue::S(pk.into()))
        .key("sk", AttributeValue::S(sk.into()))
        .consistent_read(true)
        .send()
        .await
        .expect("get")
        .item
        .expect("the row")
}

/// Fresh tables holding every fixture row.
async fn loaded(test: &str) -> DynamoDbStorage {
    let storage = common::fresh_storage(test).await;
    put_rows(&storage, &fixtures()).await.expect("fixtures stored");
    storage
}

fn engine(storage: &DynamoDbStorage) -> Engine {
    Engine::builder(Arc::new(storage.clone()))
        .dispatch(AsyncDispatch::External)
        .build()
}

fn ctx() -> InvocationContext {
    common::ctx()
}

fn key(sk: &str) -> EntityKey {
    EntityKey::new(PK, sk)
}

fn string<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    match item.get(name) {
        Some(AttributeValue::S(value)) => Some(value),
        _ => None,
    }
}

#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test]
async fn every_row_mbc_wrote_reads_through_our_storage_and_engine() {
    if !common::available() {
        return;
    }
    let storage = loaded("mbc-read").await;
    let engine = engine(&storage);

    // Command rows: its statuses mapped, the raw one kept; absent fields empty.
    let expected = [
        ("ORDER#ORD-000001", 3, CommandStatus::Applied, None),
        (
            "ORDER#ORD-000001",
            4,
            CommandStatus::Finished,
            Some("finish:FINISHED"),
        ),
        (
            "PRODUCT#PRD-002",
            1,
            CommandStatus::Failed,
            Some("check_version:FAILED"),
        ),
        (
            "PRODUCT#PRD-100",
            1,
            CommandStatus::Finished,
            Some("finish:FINISHED"),
        ),
        (
            "PRODUCT#PRD-101",
            1,
            CommandStatus::Finished,
            Some("finish:FINISHED"),
        ),
        ("PRODUCT#PRD-102", 1, CommandStatus::Published, Some("")),
        (
            "PRODUCT#PRD-103",
            1,
            CommandStatus::Finished,
            Some("finish:FINISHED"),
        ),
    ];
    for (sk, version, status, foreign) in expected {
        let command = storage
            .get_command(&key(sk), version)
            .await
            .unwrap_or_else(|e| panic!("{sk}@{version}: {e}"))
            .unwrap_or_else(|| panic!("{sk}@{version} found"));
        assert_eq!(command.status, status, "{sk}@{version}");
        assert_eq!(command.foreign_status.as_deref(), foreign, "{sk}@{version}");
    }
    let batch = storage
        .get_command(&key("PRODUCT#PRD-103"), 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((batch.request_id.as_str(), batch.created_by.as_str()), ("", ""));
    // Its timestamps: whole seconds with an offset.
    assert_eq!(batch.created_at.to_rfc3339(), "2026-12-01T02:09:45+00:00");
    let versions = engine
        .list_versions(&key("ORDER#ORD-000001"), &ctx())
        .await
        .unwrap();
    assert_eq!(versions.iter().map(|c| c.version).collect::<Vec<_>>(), [3, 4]);

    // Data rows: without isDeleted (false), without a user or request id.
    for sk in ["PRODUCT#PRD-100", "PRODUCT#PRD-101", "PRODUCT#PRD-103"] {
        let item = engine.get_item(&key(sk), &ctx()).await.unwrap().expect(sk);
        assert_eq!(item.version, 1, "{sk}");
        assert!(!item.is_deleted, "{sk}");
        assert_eq!(item.ttl, None, "{sk}: ttl stored as NULL");
    }
    let no_user = engine
        .get_item(&key("PRODUCT#PRD-103"), &ctx())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(no_user.created_by, "");
    assert_eq!(no_user.attributes["sku"], "S3");

    // Its history row.
    let history = engine
        .list_history(&key("ORDER#ORD-000001"), &ctx())
        .await
        .unwrap();
    assert_eq!(history.iter().map(|h| h.version).collect::<Vec<_>>(), [3]);
    assert_eq!(history[0].attributes["status"], "confirmed");

    // The whole partition lists, nothing left out.
    let page = engine.list_items(PK, ListQuery::new(), &ctx()).await.unwrap();
    let listed: Vec<&str> = page.items.iter().map(|i| i.sk.as_str()).collect();
    assert_eq!(listed, ["PRODUCT#PRD-100", "PRODUCT#PRD-101", "PRODUCT#PRD-103"]);
    assert!(page.unreadable.is_empty(), "{:?}", page.unreadable);
}

#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test]
async fn every_data_row_mbc_wrote_updates_to_its_next_version_as_a_sync_row() {
    if !common::available() {
        return;
    }
    let storage = loaded("mbc-update").await;
    let engine = engine(&storage);
    for sk in ["PRODUCT#PRD-100", "PRODUCT#PRD-101", "PRODUCT#PRD-103"] {
        let mut item = engine.get_item(&key(sk), &ctx()).await.unwrap().expect(sk);
        item.attributes["price"] = json!(59.5);
        let command = CommandInput::update_of(&item);
        let updated = engine.publish_sync(command, &ctx()).await.unwrap().into_item();
        assert_eq!(updated.version, 2, "{sk}");
        assert_eq!(updated.created_at, item.created_at, "{sk}: creation kept");
        assert_eq!(updated.created_by, item.created_by, "{sk}");

        // Its stream consumer leaves our sync rows alone.
        let row = raw(&storage, "command", PK, &format!("{sk}@2")).await;
        assert_eq!(string(&row, "syncMode"), Some("SYNC"), "{sk}");
        assert_eq!(string(&row, "status"), Some("finished"), "{sk}");
    }
    // And the order it updated after ours: v4 (its) → v5 (ours).
    let order = key("ORDER#ORD-000001");
    let v4 = storage.get_command(&order, 4).await.unwrap().unwrap();
    let mut attributes = v4.attributes.clone();
    attributes["status"] = json!("delivered");
    let command = CommandInput::new(PK, "ORDER#ORD-000001")
        .version(ExpectedVersion::Exactly(4))
        .attributes(attributes);
    // Our data row of the order is not among the fixtures: the command goes
    // in as an async one on top of its v4.
    let published = engine.publish_async(command, &ctx()).await.unwrap();
    assert_eq!(published.written().map(|c| c.version), Some(5));
}

#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test]
async fn a_partition_with_an_unreadable_row_lists_the_rest() {
    if !common::available() {
        return;
    }
    let storage = loaded("mbc-unreadable").await;
    let engine = engine(&storage);
    let broken: Item = HashMap::from([
        ("pk".to_owned(), AttributeValue::S(PK.into())),
        ("sk".to_owned(), AttributeValue::S("PRODUCT#PRD-101X".into())),
        ("version".to_owned(), AttributeValue::S("not a number".into())),
    ]);
    put(&storage, "data", broken).await;

    let page = engine.list_items(PK, ListQuery::new(), &ctx()).await.unwrap();
    let listed: Vec<&str> = page.items.iter().map(|i| i.sk.as_str()).collect();
    assert_eq!(listed, ["PRODUCT#PRD-100", "PRODUCT#PRD-101", "PRODUCT#PRD-103"]);
    assert_eq!(page.unreadable.len(), 1);
    assert_eq!(
        (page.unreadable[0].pk.as_str(), page.unreadable[0].sk.as_str()),
        (PK, "PRODUCT#PRD-101X")
    );
    // Paging around it: every readable row once.
    let mut seen = Vec::new();
    let mut query = ListQuery::new().limit(1);
    loop {
        let page = engine.list_items(PK, query.clone(), &ctx()).await.unwrap();
        seen.extend(page.items.into_iter().map(|i| i.sk.to_string()));
        match page.cursor {
            Some(cursor) => query = query.after(Some(cursor)),
            None => break,
        }
    }
    assert_eq!(seen, ["PRODUCT#PRD-100", "PRODUCT#PRD-101", "PRODUCT#PRD-103"]);

    // Read alone, it is an error that names it.
    let error = engine
        .get_item(&key("PRODUCT#PRD-101X"), &ctx())
        .await
        .expect_err("unreadable");
    assert!(error.to_string().contains("PRODUCT#PRD-101X"), "{error}");
}

#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test]
async fn the_next_order_number_follows_mbcs_counter() {
    if !common::available() {
        return;
    }
    let storage = loaded("mbc-sequence").await;
    let engine = engine(&storage);
    let request = SequenceRequest::new("ORDER").format("ORD-{no:06}");
    let no = engine.next(&request, &ctx()).await.unwrap();
    assert_eq!((no.no, no.formatted.as_str()), (3, "ORD-000003"));

    let row = raw(&storage, "sequences", "SEQ#shop-a", "ORDER#none").await;
    assert_eq!(row.get("seq"), Some(&AttributeValue::N("3".into())));
    assert_eq!(string(&row, "code"), Some("ORDER#none"));
    assert_eq!(string(&row, "name"), Some("none"));
    assert_eq!(string(&row, "type"), Some("ORDER"));
    assert_eq!(string(&row, "tenantCode"), Some("shop-a"));
    assert_eq!(string(&row, "createdBy"), Some("system"), "the first drawer's");
    assert_eq!(string(&row, "updatedBy"), Some("user-1"));
    // As it writes timestamps: whole seconds with an offset.
    let updated_at = string(&row, "updatedAt").unwrap();
    assert!(
        updated_at.ends_with("+00:00") && updated_at.len() == 25,
        "{updated_at}"
    );
}

#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test]
async fn a_counter_of_the_old_layout_keeps_counting_once_under_concurrent_draws() {
    if !common::available() {
        return;
    }
    let storage = loaded("mbc-legacy-counter").await;
    let engine = engine(&storage);
    // This framework's counter before it shared the layout: sk without
    // period, the count in `counter`.
    let legacy: Item = HashMap::from([
        ("pk".to_owned(), AttributeValue::S("SEQ#shop-a".into())),
        ("sk".to_owned(), AttributeValue::S("INVOICE".into())),
        ("counter".to_owned(), AttributeValue::N("41".into())),
    ]);
    put(&storage, "sequences", legacy).await;

    let request = SequenceRequest::new("INVOICE");
    let draws = (0..8).map(|_| {
        let (engine, request) = (engine.clone(), request.clone());
        tokio::spawn(async move { engine.next(&request, &ctx()).await.unwrap().no })
    });
    let mut numbers: Vec<u64> = futures::future::join_all(draws)
        .await
        .into_iter()
        .map(|n| n.expect("task"))
        .collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (42..=49).collect::<Vec<_>>());
    let row = raw(&storage, "sequences", "SEQ#shop-a", "INVOICE#none").await;
    assert_eq!(row.get("seq"), Some(&AttributeValue::N("49".into())));
}

#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test]
async fn mbcs_async_command_is_left_to_it_unless_our_pipeline_owns_the_table() {
    if !common::available() {
        return;
    }
    let storage = loaded("mbc-async").await;
    left_alone_then_applied_by_the_owner(Arc::new(storage.clone())).await;
    // On the row: our status replaces the absent one.
    let row = raw(&storage, "command", PK, "PRODUCT#PRD-102@1").await;
    assert_eq!(string(&row, "status"), Some("applied"));
}

/// Its async command PRD-102@1, stored in `storage`: an engine that does not
/// own the pipeline leaves it as it is; the owner's applies it like one of
/// ours (no handler is interested: `applied` is where it ends, as ours do).
async fn left_alone_then_applied_by_the_owner(storage: Arc<dyn Storage>) {
    let product = key("PRODUCT#PRD-102");
    let bystander = Engine::builder(storage.clone())
        .dispatch(AsyncDispatch::External)
        .build();
    let status = bystander
        .settle_inserted(&product, 1, CommandStatus::Published)
        .await
        .unwrap();
    assert_eq!(status, CommandStatus::Published);
    assert_eq!(bystander.get_item(&product, &ctx()).await.unwrap(), None);
    let command = storage.get_command(&product, 1).await.unwrap().unwrap();
    assert_eq!(command.foreign_status.as_deref(), Some(""), "left as it wrote it");

    let owner = Engine::builder(storage.clone())
        .dispatch(AsyncDispatch::External)
        .apply_foreign_commands(true)
        .build();
    let status = owner
        .settle_inserted(&product, 1, CommandStatus::Published)
        .await
        .unwrap();
    assert_eq!(status, CommandStatus::Applied);
    let item = owner.get_item(&product, &ctx()).await.unwrap().expect("applied");
    assert_eq!((item.version, item.name.as_str()), (1, "Async"));
    assert_eq!(item.attributes["price"], 1);
    let command = storage.get_command(&product, 1).await.unwrap().unwrap();
    assert_eq!(
        (command.status, command.foreign_status),
        (CommandStatus::Applied, None)
    );
}

/// The same rows in the in-memory backend, stored through its primitives
/// (`testing::store_rows`: the products, the async command and the counter;
/// memory has no primitive for the order's later versions or a bare history
/// row). No DynamoDB needed.
#[tokio::test]
async fn the_same_rows_in_memory_read_the_same_and_settle_the_same() {
    let memory = cqrs_memory::InMemory::new();
    let stored = cqrs_dynamodb::testing::store_rows(&memory, &fixtures())
        .await
        .unwrap();
    // Three products (data and command rows), its async command, the other
    // product's command and the counter.
    assert_eq!(stored, 9);

    let engine = Engine::builder(Arc::new(memory.clone()))
        .dispatch(AsyncDispatch::External)
        .build();
    let page = engine.list_items(PK, ListQuery::new(), &ctx()).await.unwrap();
    let listed: Vec<&str> = page.items.iter().map(|i| i.sk.as_str()).collect();
    assert_eq!(listed, ["PRODUCT#PRD-100", "PRODUCT#PRD-101", "PRODUCT#PRD-103"]);
    let command = memory
        .get_command(&key("PRODUCT#PRD-100"), 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (command.status, command.foreign_status.as_deref()),
        (CommandStatus::Finished, Some("finish:FINISHED"))
    );

    // Its async command: left alone, then applied by an owner.
    left_alone_then_applied_by_the_owner(Arc::new(memory.clone())).await;

    // And its data rows update to their next version.
    let mut item = engine
        .get_item(&key("PRODUCT#PRD-103"), &ctx())
        .await
        .unwrap()
        .unwrap();
    item.attributes["price"] = json!(3);
    let updated = engine
        .publish_sync(CommandInput::update_of(&item), &ctx())
        .await
        .unwrap()
        .into_item();
    assert_eq!(updated.version, 2);

    // Its counter, drawn up to 2 here: the next order number is 3.
    let request = SequenceRequest::new("ORDER").format("ORD-{no:06}");
    let no = engine.next(&request, &ctx()).await.unwrap();
    assert_eq!(no.formatted, "ORD-000003");
}

/// The row of its async command, as it inserts it.
fn async_row() -> Item {
    fixtures()
        .into_iter()
        .find(|(t, item)| t == "command" && string(item, "sk") == Some("PRODUCT#PRD-102@1"))
        .map(|(_, item)| item)
        .expect("its async command among the fixtures")
}

#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_stream_consumer_of_the_owner_applies_its_async_command_and_a_bystanders_passes_it_by() {
    use std::time::Duration;
    if !common::available() {
        return;
    }
    let product = key("PRODUCT#PRD-102");

    // A bystander's consumer: our async command is applied, its is not.
    let storage = common::fresh_storage("mbc-stream-bystander").await;
    let bystander = common::engine(Arc::new(storage.clone()), common::Recorder::new());
    let running = common::Running::start(common::consumer(&bystander, &storage));
    put(&storage, "command", async_row()).await;
    let ours = CommandInput::new(PK, "PRODUCT#OURS").attributes(json!({ "price": 2 }));
    bystander.publish_async(ours, &ctx()).await.unwrap();
    common::wait_until_async("our async command applied", Duration::from_secs(30), || async {
        bystander
            .get_item(&key("PRODUCT#OURS"), &ctx())
            .await
            .unwrap()
            .is_some()
    })
    .await;
    // Its record came before ours on the stream: whatever the consumer made
    // of it, it did not apply it.
    running.stop(Duration::from_secs(10)).await;
    assert_eq!(bystander.get_item(&product, &ctx()).await.unwrap(), None);
    let row = raw(&storage, "command", PK, "PRODUCT#PRD-102@1").await;
    assert_eq!(string(&row, "status"), None, "left as it wrote it");

    // The owner's consumer applies it.
    let storage = common::fresh_storage("mbc-stream-owner").await;
    let owner = Engine::builder(Arc::new(storage.clone()))
        .dispatch(AsyncDispatch::External)
        .apply_foreign_commands(true)
        .build();
    let running = common::Running::start(common::consumer(&owner, &storage));
    put(&storage, "command", async_row()).await;
    common::wait_until_async("its async command applied", Duration::from_secs(30), || async {
        owner.get_item(&product, &ctx()).await.unwrap().is_some()
    })
    .await;
    running.stop(Duration::from_secs(10)).await;
    let row = raw(&storage, "command", PK, "PRODUCT#PRD-102@1").await;
    assert_eq!(string(&row, "status"), Some("applied"));
}

/// A product the reference framework published without attributes (it
/// allows that): its data, command and history rows, as DynamoDB items.
fn without_attributes() -> Vec<(String, Item)> {
    let data = json!({
        "pk": { "S": PK }, "sk": { "S": "PRODUCT#BARE" }, "id": { "S": format!("{PK}#PRODUCT#BARE") },
        "code": { "S": "BARE" }, "name": { "S": "No attributes" }, "version": { "N": "1" },
        "type": { "S": "PRODUCT" }, "tenantCode": { "S": "shop-a" },
        "createdAt": { "S": "2026-12-01T02:08:29+00:00" }, "updatedAt": { "S": "2026-12-01T02:08:29+00:00" },
    });
    let mut command = data.clone();
    command["sk"] = json!({ "S": "PRODUCT#BARE@1" });
    command["status"] = json!({ "S": "finish:FINISHED" });
    command["syncMode"] = json!({ "S": "SYNC" });
    let item = |json: &serde_json::Value| cqrs_dynamodb::testing::item_from_json(json).expect("an item");
    vec![("command".into(), item(&command)), ("data".into(), item(&data))]
}

/// Every read of an entity without attributes, on `storage`: empty
/// attributes, never an error.
async fn reads_as_empty_attributes(storage: Arc<dyn Storage>) {
    let engine = Engine::builder(storage.clone())
        .dispatch(AsyncDispatch::External)
        .build();
    let bare = key("PRODUCT#BARE");
    let item = engine
        .get_item(&bare, &ctx())
        .await
        .expect("read")
        .expect("the row");
    assert_eq!(item.attributes.as_value(), &json!({}));
    let latest = engine
        .get_latest(&bare, &ctx())
        .await
        .expect("read")
        .expect("the row");
    assert_eq!(latest.attributes.as_value(), &json!({}));
    let page = engine
        .list_items(PK, ListQuery::new(), &ctx())
        .await
        .expect("list");
    assert!(page.unreadable.is_empty(), "{:?}", page.unreadable);
    assert!(page.items.iter().any(|i| i.sk == "PRODUCT#BARE"));
    let command = storage
        .get_command(&bare, 1)
        .await
        .expect("read")
        .expect("the row");
    assert_eq!(command.attributes.as_value(), &json!({}));
    // And it updates like any other.
    let mut item = item;
    item.attributes["price"] = json!(3);
    let updated = engine
        .publish_sync(CommandInput::update_of(&item), &ctx())
        .await
        .expect("updated")
        .into_item();
    assert_eq!(updated.version, 2);
    let history = engine.list_history(&bare, &ctx()).await.expect("history");
    assert_eq!(history[0].attributes.as_value(), &json!({}));
}

#[tokio::test]
async fn a_row_without_attributes_reads_as_empty_attributes_on_both_backends() {
    let memory = cqrs_memory::InMemory::new();
    let stored = cqrs_dynamodb::testing::store_rows(&memory, &without_attributes())
        .await
        .expect("stored");
    assert_eq!(stored, 2);
    reads_as_empty_attributes(Arc::new(memory)).await;
    if !common::available() {
        return;
    }
    let storage = common::fresh_storage("mbc-bare").await;
    put_rows(&storage, &without_attributes()).await.expect("stored");
    reads_as_empty_attributes(Arc::new(storage)).await;
}

/// The stream consumer repairs the index entries of the reference
/// framework's writes: it moves one of our orders to `delivered` (a partial
/// update: it reads our row, our index attributes with it, and writes them
/// back as they were), and the order is found under `delivered` once the
/// consumer has seen its command row — without any read of the stale
/// `shipped` entry, which would repair it too.
#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_stream_consumer_repairs_the_index_entries_of_its_writes() {
    use std::time::Duration;
    if !common::available() {
        return;
    }
    let storage = common::fresh_storage("mbc-stream-reindex").await;
    let engine = Engine::builder(Arc::new(storage.clone()))
        .dispatch(AsyncDispatch::External)
        .index(
            cqrs_core::Index::new("orders-by-status")
                .entity_type("ORDER")
                .partition_by("attributes.status"),
        )
        .build();
    let running = common::Running::start(common::consumer(&engine, &storage));
    engine
        .publish_sync(
            CommandInput::new(PK, "ORDER#R1").attributes(json!({ "status": "shipped" })),
            &ctx(),
        )
        .await
        .expect("ours");

    // Its publishPartialUpdateSync: the command row of version 2 first, its
    // data row (with our index attributes copied) a moment later.
    let delivered = AttributeValue::M(HashMap::from([(
        "status".to_owned(),
        AttributeValue::S("delivered".into()),
    )]));
    let mut data = raw(&storage, "data", PK, "ORDER#R1").await;
    assert!(data.contains_key("ix_orders-by-status_pk"), "ours has its entry");
    data.insert("version".into(), AttributeValue::N("2".into()));
    data.insert("attributes".into(), delivered.clone());
    let mut command = raw(&storage, "command", PK, "ORDER#R1@1").await;
    command.insert("sk".into(), AttributeValue::S("ORDER#R1@2".into()));
    command.insert("version".into(), AttributeValue::N("2".into()));
    command.insert("attributes".into(), delivered);
    command.insert("status".into(), AttributeValue::S("finish:FINISHED".into()));
    command.insert("syncMode".into(), AttributeValue::S("SYNC".into()));
    put(&storage, "command", command).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    put(&storage, "data", data).await;

    let lookup = cqrs_core::IndexLookup::new("orders-by-status", PK).value("delivered");
    common::wait_until_async("listed under delivered", Duration::from_secs(30), || async {
        let page = engine
            .list_by_index(&lookup, ListQuery::new(), &ctx())
            .await
            .unwrap();
        page.items.iter().any(|i| i.sk == "ORDER#R1")
    })
    .await;
    running.stop(Duration::from_secs(10)).await;
    let row = raw(&storage, "data", PK, "ORDER#R1").await;
    assert_eq!(
        string(&row, "ix_orders-by-status_pk"),
        Some("TENANT#shop-a\u{1}delivered")
    );
}
