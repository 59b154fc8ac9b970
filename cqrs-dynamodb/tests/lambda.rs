//! The Lambda entry point, fed with DynamoDB stream events in the JSON that
//! AWS sends, deserialized into `aws_lambda_events`' `Event`.
//!
//! The command rows in the events are the ones the engine stored, turned into
//! stream images with the item layout of the DynamoDB backend (the record
//! through serde_dynamo, sort key `{sk}@{version}`); one test checks that
//! layout against the rows DynamoDB Local really holds.

#![cfg(feature = "lambda")]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use aws_lambda_events::event::dynamodb::{Event, StreamViewType};
use aws_lambda_events::event::streams::DynamoDbEventResponse;
use cqrs_core::testing::{ctx, RecordingHandler};
use cqrs_core::{
    command_sk, ApplyWrite, AsyncDispatch, CommandInput, CommandRecord, CommandService, CommandStatus,
    CommandWrite, DataItem, DataService, Engine, EntityKey, Error, ExpectedVersion, Index, IndexLookup,
    Interest, ListQuery, Result, RetryPolicy, Storage, StorageDecorator,
};
use cqrs_dynamodb::lambda::handle_event;
use serde_json::{json, Value};

const TENANT: &str = "shop-a";
/// The engine's recovery grace: a row still `applied` this long after its
/// publication is handled again.
const RECOVERY_GRACE: Duration = Duration::from_millis(300);
const PK: &str = "TENANT#shop-a";
const TABLE_ARN: &str = "arn:aws:dynamodb:us-east-1:123456789012:table/dev-shop-order-command";
const STREAM_ARN: &str =
    "arn:aws:dynamodb:us-east-1:123456789012:table/dev-shop-order-command/stream/2024-05-01T00:00:00.000";

/// One INSERT record exactly as a Lambda function receives it (the shape of
/// the example in the AWS Lambda developer guide), for a command row stored
/// by `publish_async` of `TENANT#shop-a` / `ORDER#ORD-000001`, version 1.
const AWS_INSERT_EVENT: &str = r#"{
  "Records": [
    {
      "eventID": "c4ca4238a0b923820dcc509a6f75849b",
      "eventName": "INSERT",
      "eventVersion": "1.1",
      "eventSource": "aws:dynamodb",
      "awsRegion": "us-east-1",
      "dynamodb": {
        "ApproximateCreationDateTime": 1714521600,
        "Keys": {
          "pk": { "S": "TENANT#shop-a" },
          "sk": { "S": "ORDER#ORD-000001@1" }
        },
        "NewImage": {
          "pk": { "S": "TENANT#shop-a" },
          "sk": { "S": "ORDER#ORD-000001@1" },
          "id": { "S": "TENANT#shop-a#ORDER#ORD-000001" },
          "code": { "S": "ORD-000001" },
          "name": { "S": "ORD-000001" },
          "version": { "N": "1" },
          "tenantCode": { "S": "shop-a" },
          "type": { "S": "ORDER" },
          "attributes": {
            "M": {
              "customerId": { "S": "CUST-001" },
              "lines": { "L": [ { "M": { "sku": { "S": "PRD-001" }, "quantity": { "N": "2" } } } ] }
            }
          },
          "isDeleted": { "BOOL": false },
          "status": { "S": "published" },
          "source": { "S": "POST /orders" },
          "requestId": { "S": "req-1" },
          "createdAt": { "S": "2024-05-01T00:00:00Z" },
          "createdBy": { "S": "user-1" },
          "createdIp": { "S": "192.0.2.1" }
        },
        "SequenceNumber": "111000000000000000001",
        "SizeBytes": 412,
        "StreamViewType": "NEW_AND_OLD_IMAGES"
      },
      "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/dev-shop-order-command/stream/2024-05-01T00:00:00.000"
    }
  ]
}"#;

/// A storage that delegates to another and can be told to fail every apply
/// of some entities, as a backend outage the pipeline's retries do not
/// overcome (a retryable error: storage unavailable).
#[derive(Debug)]
struct Faulty {
    inner: Arc<dyn Storage>,
    fail_apply_of: Mutex<Vec<EntityKey>>,
}

impl Faulty {
    fn fail_apply_of(&self, keys: &[EntityKey]) {
        *self.fail_apply_of.lock().unwrap_or_else(PoisonError::into_inner) = keys.to_vec();
    }
}

#[async_trait]
impl StorageDecorator for Faulty {
    fn inner(&self) -> &dyn Storage {
        self.inner.as_ref()
    }

    async fn apply(&self, writes: &[ApplyWrite]) -> Result<()> {
        let failing = self
            .fail_apply_of
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if writes.iter().any(|w| failing.contains(&w.data.key())) {
            return Err(Error::backend("injected outage", true));
        }
        self.inner.apply(writes).await
    }
}

/// An engine as the Lambda function builds it (external dispatch), with a
/// handler that records every event, over `storage`.
struct Fixture {
    engine: Engine,
    handler: Arc<RecordingHandler>,
    storage: Arc<Faulty>,
    /// Sequence numbers handed out so far.
    sequence: AtomicUsize,
}

impl Fixture {
    fn over(storage: Arc<dyn Storage>) -> Self {
        let storage = Arc::new(Faulty {
            inner: storage,
            fail_apply_of: Mutex::new(Vec::new()),
        });
        let handler = RecordingHandler::new("recorder", Interest::All);
        let engine = Engine::builder(storage.clone())
            .dispatch(AsyncDispatch::External)
            .retry(RetryPolicy {
                max_attempts: 2,
                initial_backoff: Duration::from_millis(1),
                max_backoff: Duration::from_millis(2),
            })
            .recovery_grace(RECOVERY_GRACE)
            .handler_arc(handler.clone())
            .build();
        Self {
            engine,
            handler,
            storage,
            sequence: AtomicUsize::new(0),
        }
    }

    fn in_memory() -> Self {
        Self::over(Arc::new(cqrs_memory::InMemory::new()))
    }

    /// Publishes the entity at `sk` asynchronously, expecting version `expected`,
    /// and returns the stored row.
    async fn publish(&self, sk: &str, expected: u64, attributes: Value) -> CommandRecord {
        let command = CommandInput::new(PK, sk)
            .version(ExpectedVersion::Exactly(expected))
            .attributes(attributes);
        let published = self
            .engine
            .publish_async(command, &ctx(TENANT))
            .await
            .expect("published")
            .into_inner();
        self.stored(sk, published.version).await
    }

    /// The command row as stored now.
    async fn stored(&self, sk: &str, version: u64) -> CommandRecord {
        self.engine
            .storage()
            .get_command(&EntityKey::new(PK, sk), version)
            .await
            .expect("read")
            .expect("stored")
    }

    /// The next sequence number: 21 digits, increasing, as DynamoDB's.
    fn next_sequence(&self) -> String {
        format!("{:021}", 100 + self.sequence.fetch_add(1, Ordering::SeqCst))
    }

    /// The INSERT record of a stored command row.
    fn insert(&self, row: &CommandRecord) -> Value {
        stream_record(
            "INSERT",
            Some(&self.next_sequence()),
            Some(image(row)),
            None,
            &keys_of(row),
        )
    }

    /// The INSERT record of a row as it was inserted with `status`.
    fn insert_as(&self, row: &CommandRecord, status: &str) -> Value {
        let mut image = image(row);
        image["status"] = json!({ "S": status });
        stream_record(
            "INSERT",
            Some(&self.next_sequence()),
            Some(image),
            None,
            &keys_of(row),
        )
    }

    async fn handle(&self, records: Vec<Value>) -> Result<DynamoDbEventResponse> {
        handle_event(&self.engine, event(records)).await
    }

    async fn data(&self, sk: &str) -> Option<DataItem> {
        self.engine
            .storage()
            .get_data(&EntityKey::new(PK, sk))
            .await
            .expect("read")
    }

    async fn data_version(&self, sk: &str) -> Option<u64> {
        self.data(sk).await.map(|d| d.version)
    }

    fn seen(&self) -> Vec<(String, u64)> {
        self.handler
            .seen()
            .into_iter()
            .map(|(sk, v)| (sk.to_string(), v))
            .collect()
    }
}

/// The stream image of a command row: the item layout of the DynamoDB
/// backend (the record through serde_dynamo, sort key `{sk}@{version}`), in
/// DynamoDB JSON.
fn image(row: &CommandRecord) -> Value {
    let mut item: serde_dynamo::Item = serde_dynamo::to_item(row).expect("serializable");
    item.insert("sk".into(), serde_dynamo::AttributeValue::S(row.command_sk()));
    serde_json::to_value(item).expect("JSON")
}

fn keys_of(row: &CommandRecord) -> Value {
    json!({ "pk": { "S": row.pk }, "sk": { "S": row.command_sk() } })
}

/// One stream record as AWS sends it to Lambda.
fn stream_record(
    event_name: &str,
    sequence_number: Option<&str>,
    new_image: Option<Value>,
    old_image: Option<Value>,
    keys: &Value,
) -> Value {
    let mut change = json!({
        "ApproximateCreationDateTime": 1714521600.0,
        "Keys": keys,
        "SizeBytes": 256,
        "StreamViewType": "NEW_AND_OLD_IMAGES",
    });
    if let Some(sequence_number) = sequence_number {
        change["SequenceNumber"] = json!(sequence_number);
    }
    if let Some(image) = new_image {
        change["NewImage"] = image;
    }
    if let Some(image) = old_image {
        change["OldImage"] = image;
    }
    json!({
        "eventID": format!("event-{}", sequence_number.unwrap_or("none")),
        "eventName": event_name,
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": change,
        "eventSourceARN": STREAM_ARN,
    })
}

fn event(records: Vec<Value>) -> Event {
    serde_json::from_value(json!({ "Records": records })).expect("a DynamoDB stream event")
}

fn failures(response: &DynamoDbEventResponse) -> Vec<String> {
    response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone().unwrap_or_default())
        .collect()
}

fn versions_of(seen: &[(String, u64)], sk: &str) -> Vec<u64> {
    seen.iter().filter(|(s, _)| s == sk).map(|(_, v)| *v).collect()
}

fn seen(entries: &[(&str, u64)]) -> Vec<(String, u64)> {
    entries.iter().map(|(sk, v)| ((*sk).to_owned(), *v)).collect()
}

#[tokio::test]
async fn aws_wire_format_insert_parses_and_is_processed() {
    let parsed: Event = serde_json::from_str(AWS_INSERT_EVENT).expect("the AWS wire format parses");
    let record = &parsed.records[0];
    assert_eq!(record.event_name, "INSERT");
    assert_eq!(record.event_source.as_deref(), Some("aws:dynamodb"));
    assert_eq!(record.event_source_arn.as_deref(), Some(STREAM_ARN));
    assert!(STREAM_ARN.starts_with(TABLE_ARN));
    assert_eq!(
        record.change.sequence_number.as_deref(),
        Some("111000000000000000001")
    );
    assert_eq!(
        record.change.stream_view_type,
        Some(StreamViewType::NewAndOldImages)
    );
    assert_eq!(
        record.change.approximate_creation_date_time.timestamp(),
        1714521600
    );
    assert!(record.change.old_image.is_empty());

    // The literal image is a command row in the backend's layout: it reads
    // back as the record once its sort key loses the version.
    let mut row = record.change.new_image.clone();
    row.insert(
        "sk".into(),
        serde_dynamo::AttributeValue::S("ORDER#ORD-000001".into()),
    );
    let command: CommandRecord = serde_dynamo::from_item(row).expect("a command row");
    assert_eq!((command.code.as_str(), command.version), ("ORD-000001", 1));
    assert_eq!(command.status, CommandStatus::Published);
    assert_eq!(command.attributes["lines"][0]["quantity"], json!(2));

    // Through the handler: the stored row of that key is applied and handled.
    let fx = Fixture::in_memory();
    fx.publish("ORDER#ORD-000001", 0, json!({ "customerId": "CUST-001" }))
        .await;
    let response = handle_event(&fx.engine, parsed).await.expect("handled");
    assert!(failures(&response).is_empty());
    assert_eq!(fx.data_version("ORDER#ORD-000001").await, Some(1));
    assert_eq!(fx.seen(), seen(&[("ORDER#ORD-000001", 1)]));
    // The response is what Lambda expects back.
    assert_eq!(
        serde_json::to_value(&response).expect("JSON"),
        json!({ "batchItemFailures": [] })
    );
}

/// The reference framework finished a write of one of our orders (moved
/// it to `delivered`, keeping the `shipped` entry it copied) and created
/// one without entries: the records of its command rows repair their
/// index entries, so each is listed under its status (without any read of
/// the stale entry, which would repair it too).
#[tokio::test]
async fn another_frameworks_finished_writes_have_their_index_entries_repaired() {
    let storage = Arc::new(cqrs_memory::InMemory::new());
    let by_status = Index::new("orders-by-status")
        .entity_type("ORDER")
        .partition_by("attributes.status");
    let engine = Engine::builder(storage.clone())
        .dispatch(AsyncDispatch::External)
        .index(by_status.clone())
        .build();
    let c = ctx(TENANT);
    let v1 = engine
        .publish_sync(
            CommandInput::new(PK, "ORDER#1").attributes(json!({ "status": "shipped" })),
            &c,
        )
        .await
        .expect("ours")
        .into_item();
    // Its writes, through the storage's primitives.
    let mut v2 = v1.clone();
    v2.version = 2;
    v2.attributes = json!({ "status": "delivered" }).into();
    let created = DataItem::builder(PK, "ORDER#2")
        .entity_type("ORDER")
        .attributes(json!({ "status": "delivered" }))
        .build();
    for (previous, new, entries) in [
        (
            Some(&v1),
            &v2,
            by_status.entry(&v1).unwrap().into_iter().collect(),
        ),
        (None, &created, Vec::new()),
    ] {
        let write = ApplyWrite {
            command: CommandWrite::Insert(Box::new(new.command(CommandStatus::Finished, None))),
            data: new.clone(),
            expected_data_version: previous.map_or(0, |p| p.version),
            history: previous.cloned(),
            idempotency: None,
            indexes: entries,
        };
        storage.apply(&[write]).await.expect("its write");
    }
    let delivered = IndexLookup::new("orders-by-status", PK).value("delivered");
    let listed =
        |page: cqrs_core::Page<DataItem>| page.items.iter().map(|i| i.sk.to_string()).collect::<Vec<_>>();
    let before = engine
        .list_by_index(&delivered, ListQuery::new(), &c)
        .await
        .expect("read");
    assert!(listed(before).is_empty(), "no entry under delivered yet");

    // Its command rows' records, as it marks them finished.
    let records = [&v2, &created]
        .iter()
        .enumerate()
        .map(|(n, item)| {
            let row = item.command(CommandStatus::Finished, None);
            let mut image = image(&row);
            image["status"] = json!({ "S": "finish:FINISHED" });
            image["syncMode"] = json!({ "S": "SYNC" });
            stream_record(
                "INSERT",
                Some(&format!("{:021}", 500 + n)),
                Some(image),
                None,
                &keys_of(&row),
            )
        })
        .collect();
    let response = handle_event(&engine, event(records)).await.expect("handled");
    assert!(response.batch_item_failures.is_empty());
    let after = engine
        .list_by_index(&delivered, ListQuery::new(), &c)
        .await
        .expect("read");
    assert_eq!(listed(after), ["ORDER#1", "ORDER#2"]);
    let shipped = IndexLookup::new("orders-by-status", PK).value("shipped");
    let page = engine
        .list_by_index(&shipped, ListQuery::new(), &c)
        .await
        .expect("read");
    assert!(listed(page).is_empty());
}

#[tokio::test]
async fn published_inserts_are_applied_in_order_and_handled_once() {
    let fx = Fixture::in_memory();
    let a1 = fx.publish("ORDER#A", 0, json!({ "n": 1 })).await;
    let a2 = fx.publish("ORDER#A", 1, json!({ "n": 2 })).await;
    let b1 = fx.publish("ORDER#B", 0, json!({ "n": 1 })).await;
    let a3 = fx.publish("ORDER#A", 2, json!({ "n": 3 })).await;
    // Images are taken at insert time: every one says "published".
    let records: Vec<Value> = [&a1, &a2, &b1, &a3].iter().map(|row| fx.insert(row)).collect();
    assert_eq!(
        fx.data("ORDER#A").await,
        None,
        "external dispatch: nothing applied yet"
    );

    let response = fx.handle(records.clone()).await.expect("handled");
    assert!(failures(&response).is_empty());
    let a = fx.data("ORDER#A").await.expect("applied");
    assert_eq!(
        (a.version, a.attributes.clone().into_value()),
        (3, json!({ "n": 3 }))
    );
    assert_eq!(fx.data_version("ORDER#B").await, Some(1));
    // In order per entity; entities side by side.
    let expected = fx.seen();
    assert_eq!(expected.len(), 4);
    assert_eq!(versions_of(&expected, "ORDER#A"), [1, 2, 3]);
    assert_eq!(versions_of(&expected, "ORDER#B"), [1]);
    for (sk, version) in [("ORDER#A", 1), ("ORDER#A", 2), ("ORDER#A", 3), ("ORDER#B", 1)] {
        assert_eq!(fx.stored(sk, version).await.status, CommandStatus::Finished);
    }
    let history = fx
        .engine
        .storage()
        .list_history(&EntityKey::new(PK, "ORDER#A"))
        .await
        .expect("read");
    assert_eq!(history.iter().map(|h| h.version).collect::<Vec<_>>(), vec![1, 2]);

    // Lambda delivers at least once: the same batch again changes nothing.
    let response = fx.handle(records).await.expect("handled again");
    assert!(failures(&response).is_empty());
    assert_eq!(fx.seen(), expected, "handlers ran once per command");
    assert_eq!(fx.data_version("ORDER#A").await, Some(3));
}

/// The reference framework's async command (no status, no `syncMode`): a
/// function whose engine does not own the table's pipeline passes it by; one
/// whose engine does applies it and runs its handlers.
#[tokio::test]
async fn another_frameworks_async_insert_is_applied_only_by_the_owner() {
    let fx = Fixture::in_memory();
    let mut row = CommandRecord::builder(PK, "PRODUCT#MBC")
        .status(CommandStatus::Published)
        .attributes(json!({ "price": 1 }))
        .build();
    row.foreign_status = Some("".into());
    Storage::put_command(fx.storage.as_ref(), &row, None)
        .await
        .expect("stored");
    let insert = fx.insert(&row);
    assert!(insert["dynamodb"]["NewImage"].get("status").is_none(), "{insert}");

    let response = fx.handle(vec![insert.clone()]).await.expect("handled");
    assert!(failures(&response).is_empty());
    assert_eq!(fx.data("PRODUCT#MBC").await, None, "left to its pipeline");
    assert!(fx.seen().is_empty());

    let owner = Engine::builder(fx.storage.clone())
        .dispatch(AsyncDispatch::External)
        .apply_foreign_commands(true)
        .handler_arc(fx.handler.clone())
        .build();
    let response = handle_event(&owner, event(vec![insert])).await.expect("handled");
    assert!(failures(&response).is_empty());
    assert_eq!(fx.data_version("PRODUCT#MBC").await, Some(1));
    assert_eq!(fx.seen(), seen(&[("PRODUCT#MBC", 1)]));
    assert_eq!(fx.stored("PRODUCT#MBC", 1).await.status, CommandStatus::Finished);
}

#[tokio::test]
async fn a_later_version_applies_its_missing_predecessors_first() {
    let fx = Fixture::in_memory();
    fx.publish("ORDER#A", 0, json!({ "n": 1 })).await;
    let a2 = fx.publish("ORDER#A", 1, json!({ "n": 2 })).await;
    // Only version 2 in this batch (version 1 went to an earlier, lost invocation).
    let response = fx.handle(vec![fx.insert(&a2)]).await.expect("handled");
    assert!(failures(&response).is_empty());
    assert_eq!(fx.data_version("ORDER#A").await, Some(2));
    assert_eq!(fx.seen(), seen(&[("ORDER#A", 1), ("ORDER#A", 2)]));
}

#[tokio::test]
async fn rows_inserted_applied_are_settled_once_their_publisher_is_done_or_dead() {
    let fx = Fixture::in_memory();
    let ctx = ctx(TENANT);
    fx.engine
        .publish_sync(
            CommandInput::new(PK, "ORDER#SYNC").attributes(json!({ "n": 1 })),
            &ctx,
        )
        .await
        .expect("published");
    assert_eq!(
        fx.seen(),
        seen(&[("ORDER#SYNC", 1)]),
        "the publisher ran the handlers"
    );
    // Inserted `applied`; its publisher recorded completion since.
    let row = fx.stored("ORDER#SYNC", 1).await;
    assert_eq!(row.status, CommandStatus::Finished);
    let async_row = fx.publish("ORDER#ASYNC", 0, json!({ "n": 1 })).await;
    // A sync publish whose process died after its write: `applied`, no handler run.
    let dead = common::insert_applied(fx.engine.storage().as_ref(), "ORDER#DEAD", json!({ "n": 1 })).await;

    let started = std::time::Instant::now();
    let response = fx
        .handle(vec![
            fx.insert_as(&row, "applied"),
            fx.insert(&async_row),
            fx.insert_as(&dead, "applied"),
        ])
        .await
        .expect("handled");
    assert!(failures(&response).is_empty());
    let mut handled = fx.seen();
    handled.sort();
    assert_eq!(
        handled,
        seen(&[("ORDER#ASYNC", 1), ("ORDER#DEAD", 1), ("ORDER#SYNC", 1)]),
        "the finished sync row is not handled again, the dead one is"
    );
    assert!(
        started.elapsed() >= RECOVERY_GRACE / 2,
        "the dead publisher's row waited for the recovery grace"
    );
    for sk in ["ORDER#SYNC", "ORDER#ASYNC", "ORDER#DEAD"] {
        assert_eq!(fx.stored(sk, 1).await.status, CommandStatus::Finished, "{sk}");
    }
    // A row inserted `finished` (no handler interested) is skipped.
    let response = fx
        .handle(vec![fx.insert_as(&row, "finished")])
        .await
        .expect("handled");
    assert!(failures(&response).is_empty());
    assert_eq!(fx.seen().len(), 3);
}

#[tokio::test]
async fn modify_and_remove_records_are_ignored() {
    let fx = Fixture::in_memory();
    let row = fx.publish("ORDER#A", 0, json!({ "n": 1 })).await;
    let published = image(&row);
    let mut with_ttl = published.clone();
    with_ttl["ttl"] = json!({ "N": "1714521600" });
    let keys = keys_of(&row);
    let records = vec![
        // Say, a TTL set on a row still "published": an update, not a new command.
        stream_record(
            "MODIFY",
            Some(&fx.next_sequence()),
            Some(with_ttl),
            Some(published.clone()),
            &keys,
        ),
        // Expiry or deletion: only the old image.
        stream_record("REMOVE", Some(&fx.next_sequence()), None, Some(published), &keys),
    ];
    let response = fx.handle(records).await.expect("handled");
    assert!(failures(&response).is_empty());
    assert_eq!(fx.data("ORDER#A").await, None);
    assert!(fx.seen().is_empty());
    assert_eq!(fx.stored("ORDER#A", 1).await.status, CommandStatus::Published);
}

#[tokio::test]
async fn failed_processing_is_reported_with_its_sequence_number() {
    let fx = Fixture::in_memory();
    let a1 = fx.publish("ORDER#A", 0, json!({ "n": 1 })).await;
    let b1 = fx.publish("ORDER#B", 0, json!({ "n": 1 })).await;
    let b2 = fx.publish("ORDER#B", 1, json!({ "n": 2 })).await;
    let c1 = fx.publish("ORDER#C", 0, json!({ "n": 1 })).await;
    let records: Vec<Value> = [&a1, &b1, &b2, &c1].iter().map(|row| fx.insert(row)).collect();
    let b1_sequence = records[1]["dynamodb"]["SequenceNumber"]
        .as_str()
        .expect("sequence number")
        .to_owned();

    fx.storage.fail_apply_of(&[EntityKey::new(PK, "ORDER#B")]);
    let response = fx
        .handle(records.clone())
        .await
        .expect("a partial batch response");
    assert_eq!(failures(&response), vec![b1_sequence]);
    assert_eq!(
        serde_json::to_value(&response).expect("JSON"),
        json!({ "batchItemFailures": [{ "itemIdentifier": records[1]["dynamodb"]["SequenceNumber"] }] })
    );
    // The other entities went on; B stopped at its first record, and B@2
    // was not attempted out of order.
    assert_eq!(fx.data_version("ORDER#A").await, Some(1));
    assert_eq!(fx.data_version("ORDER#B").await, None);
    assert_eq!(fx.data_version("ORDER#C").await, Some(1), "not held back by B");
    let mut handled = fx.seen();
    handled.sort();
    assert_eq!(handled, seen(&[("ORDER#A", 1), ("ORDER#C", 1)]));
    assert_eq!(fx.stored("ORDER#B", 2).await.status, CommandStatus::Published);

    // Lambda's retry: the batch from the reported record on, once the outage is over.
    fx.storage.fail_apply_of(&[]);
    let response = fx.handle(records[1..].to_vec()).await.expect("handled");
    assert!(failures(&response).is_empty());
    assert_eq!(fx.data_version("ORDER#B").await, Some(2));
    assert_eq!(fx.data_version("ORDER#C").await, Some(1));
    let mut handled = fx.seen();
    handled.sort();
    assert_eq!(
        handled,
        seen(&[("ORDER#A", 1), ("ORDER#B", 1), ("ORDER#B", 2), ("ORDER#C", 1)]),
        "C, redelivered, is not handled twice"
    );
    assert_eq!(versions_of(&fx.seen(), "ORDER#B"), [1, 2]);
    // An outage records no failure.
    let failures = fx.engine.list_failures(&ctx("shop-a")).await.expect("failures");
    assert!(failures.is_empty(), "failure records: {failures:?}");
}

#[tokio::test]
async fn the_lowest_sequence_number_not_completed_is_reported() {
    let fx = Fixture::in_memory();
    let a1 = fx.publish("ORDER#A", 0, json!({ "n": 1 })).await;
    let b1 = fx.publish("ORDER#B", 0, json!({ "n": 1 })).await;
    let a2 = fx.publish("ORDER#A", 1, json!({ "n": 2 })).await;
    let c1 = fx.publish("ORDER#C", 0, json!({ "n": 1 })).await;
    let d1 = fx.publish("ORDER#D", 0, json!({ "n": 1 })).await;
    let records: Vec<Value> = [&a1, &b1, &a2, &c1, &d1]
        .iter()
        .map(|row| fx.insert(row))
        .collect();
    let sequence = |i: usize| {
        records[i]["dynamodb"]["SequenceNumber"]
            .as_str()
            .map(str::to_owned)
    };

    // D fails, and so does B, earlier in the batch: B is reported.
    fx.storage
        .fail_apply_of(&[EntityKey::new(PK, "ORDER#D"), EntityKey::new(PK, "ORDER#B")]);
    let response = fx
        .handle(records.clone())
        .await
        .expect("a partial batch response");
    assert_eq!(failures(&response), vec![sequence(1).expect("sequence number")]);
    assert_eq!(fx.data_version("ORDER#A").await, Some(2));
    assert_eq!(fx.data_version("ORDER#C").await, Some(1));

    // Only D fails now: D is reported.
    fx.storage.fail_apply_of(&[EntityKey::new(PK, "ORDER#D")]);
    let response = fx
        .handle(records[1..].to_vec())
        .await
        .expect("a partial batch response");
    assert_eq!(failures(&response), vec![sequence(4).expect("sequence number")]);
    assert_eq!(fx.data_version("ORDER#B").await, Some(1));
    fx.storage.fail_apply_of(&[]);
    let response = fx.handle(records[4..].to_vec()).await.expect("handled");
    assert!(failures(&response).is_empty());
    assert_eq!(fx.seen().len(), 5, "each command handled once");
}

#[tokio::test]
async fn a_failure_without_sequence_number_fails_the_whole_batch() {
    let fx = Fixture::in_memory();
    let a1 = fx.publish("ORDER#A", 0, json!({ "n": 1 })).await;
    let record = stream_record("INSERT", None, Some(image(&a1)), None, &keys_of(&a1));
    fx.storage.fail_apply_of(&[EntityKey::new(PK, "ORDER#A")]);
    let err = fx.handle(vec![record]).await.expect_err("no record to report");
    assert!(err.to_string().contains("injected outage"), "{err}");
}

#[tokio::test]
async fn malformed_records_are_skipped() {
    let fx = Fixture::in_memory();
    let row = fx.publish("ORDER#A", 0, json!({ "n": 1 })).await;
    let malformed = |keys: Value| {
        let mut image = image(&row);
        let map = image.as_object_mut().expect("an item");
        map.remove("pk");
        map.remove("sk");
        for (name, value) in keys.as_object().expect("keys") {
            map.insert(name.clone(), value.clone());
        }
        stream_record("INSERT", Some(&fx.next_sequence()), Some(image), None, &keys)
    };
    let records = vec![
        malformed(json!({})),
        malformed(json!({ "pk": { "S": PK } })),
        malformed(json!({ "pk": { "S": PK }, "sk": { "S": "ORDER#A" } })),
        malformed(json!({ "pk": { "S": PK }, "sk": { "S": "ORDER#A@one" } })),
        malformed(json!({ "pk": { "N": "1" }, "sk": { "S": "ORDER#A@1" } })),
        fx.insert(&row),
    ];
    let response = fx.handle(records).await.expect("handled");
    assert!(
        failures(&response).is_empty(),
        "a malformed record is not retried"
    );
    assert_eq!(
        fx.data_version("ORDER#A").await,
        Some(1),
        "the records after it ran"
    );
    assert_eq!(fx.seen(), seen(&[("ORDER#A", 1)]));
}

/// Against DynamoDB Local: the images the tests build are the items the
/// backend stores, and the whole path works over `DynamoDbStorage`.
#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test]
async fn images_match_the_stored_dynamodb_items() {
    if !common::available() {
        return;
    }
    let storage = common::fresh_storage("lambda").await;
    let client = storage.client().clone();
    let table = storage.tables().command.clone();
    let fx = Fixture::over(Arc::new(storage));
    let a1 = fx
        .publish("ORDER#A", 0, json!({ "n": 1, "tags": ["x", "y"] }))
        .await;
    let a2 = fx.publish("ORDER#A", 1, json!({ "n": 2 })).await;

    for row in [&a1, &a2] {
        let stored = client
            .get_item()
            .table_name(&table)
            .key(
                "pk",
                aws_sdk_dynamodb::types::AttributeValue::S(row.pk.to_string()),
            )
            .key(
                "sk",
                aws_sdk_dynamodb::types::AttributeValue::S(command_sk(&row.sk, row.version)),
            )
            .consistent_read(true)
            .send()
            .await
            .expect("read")
            .item
            .expect("stored");
        let stored = serde_json::to_value(serde_dynamo::Item::from(stored)).expect("JSON");
        assert_eq!(image(row), stored, "the image of version {}", row.version);
    }

    let response = fx
        .handle(vec![fx.insert(&a1), fx.insert(&a2)])
        .await
        .expect("handled");
    assert!(failures(&response).is_empty());
    assert_eq!(fx.data_version("ORDER#A").await, Some(2));
    assert_eq!(fx.seen(), seen(&[("ORDER#A", 1), ("ORDER#A", 2)]));
    assert_eq!(fx.stored("ORDER#A", 2).await.status, CommandStatus::Finished);
}
