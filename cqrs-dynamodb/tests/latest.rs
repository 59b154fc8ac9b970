//! `latest_command` on DynamoDB: it looks upwards from a version known to be
//! stored, a window at a time, instead of reading every version's key, and
//! falls back to reading them all when that version is missing.

mod common;

use std::sync::Arc;

use aws_sdk_dynamodb::types::AttributeValue;
use cqrs_core::{
    command_sk, AsyncDispatch, CommandInput, CommandService, DataService, Engine, EntityKey, ExpectedVersion,
    Storage,
};
use cqrs_dynamodb::DynamoDbStorage;
use serde_json::json;

fn engine(storage: &DynamoDbStorage) -> Engine {
    Engine::builder(Arc::new(storage.clone()))
        .dispatch(AsyncDispatch::External)
        .build()
}

/// `applied` sync versions, then `pending` async ones nothing applies.
async fn entity(engine: &Engine, sk: &str, applied: u64, pending: u64) -> EntityKey {
    let ctx = common::ctx();
    let key = common::key(sk);
    for version in 1..=applied + pending {
        let command = CommandInput::new(&key.pk, sk)
            .attributes(json!({ "n": version }))
            .version(ExpectedVersion::Exactly(version - 1));
        if version <= applied {
            engine.publish_sync(command, &ctx).await.unwrap();
        } else {
            engine.publish_async(command, &ctx).await.unwrap();
        }
    }
    key
}

async fn latest(storage: &DynamoDbStorage, key: &EntityKey, known: Option<u64>) -> Option<u64> {
    storage
        .latest_command(key, known)
        .await
        .expect("latest")
        .map(|c| c.version)
}

async fn delete(storage: &DynamoDbStorage, table: &str, pk: &str, sk: &str) {
    storage
        .client()
        .delete_item()
        .table_name(table)
        .key("pk", AttributeValue::S(pk.into()))
        .key("sk", AttributeValue::S(sk.into()))
        .send()
        .await
        .expect("deleted");
}

/// Pending runs that end in each probe window and across them: the first
/// read (the known version and the next), the 16 after, the 32, the 64,
/// the 100s.
#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test]
async fn every_run_of_pending_commands_is_found() {
    if !common::available() {
        return;
    }
    let storage = common::fresh_storage("latest-runs").await;
    let engine = engine(&storage);
    for (i, (applied, pending)) in [
        (0, 0),
        (0, 1),
        (0, 5),
        (1, 0),
        (3, 1),
        (3, 2),
        (2, 17),
        (2, 18),
        (1, 50),
        (1, 51),
        (1, 160),
    ]
    .into_iter()
    .enumerate()
    {
        let key = entity(&engine, &format!("E#{i}"), applied, pending).await;
        let expected = Some(applied + pending).filter(|&v| v > 0);
        assert_eq!(
            latest(&storage, &key, None).await,
            expected,
            "{applied} applied, {pending} pending, known 0"
        );
        if applied > 0 {
            assert_eq!(
                latest(&storage, &key, Some(applied)).await,
                expected,
                "{applied} applied, {pending} pending, known {applied}"
            );
        }
        let command = storage.latest_command(&key, None).await.unwrap();
        if let Some(command) = command {
            assert_eq!(
                command.attributes,
                json!({ "n": applied + pending }),
                "the row, not just its version"
            );
        }
        let read = engine.get_latest(&key, &common::ctx()).await.unwrap();
        assert_eq!(
            read.map(|item| item.version),
            expected,
            "get_latest of {applied} + {pending}"
        );
    }
}

/// When the version it starts from is missing (a row deleted by its time
/// to live), every version is read: the answer is still the latest.
#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test]
async fn a_missing_starting_version_falls_back_to_reading_every_version() {
    if !common::available() {
        return;
    }
    let storage = common::fresh_storage("latest-fallback").await;
    let engine = engine(&storage);
    let tables = storage.tables().clone();

    // The data row's command is gone.
    let key = entity(&engine, "F#1", 12, 3).await;
    delete(&storage, &tables.command, &key.pk, &command_sk(&key.sk, 12)).await;
    assert_eq!(latest(&storage, &key, None).await, Some(15));
    assert_eq!(latest(&storage, &key, Some(12)).await, Some(15));

    // The data row is gone, its commands are not (yet).
    let key = entity(&engine, "F#2", 12, 0).await;
    delete(&storage, &tables.data, &key.pk, &key.sk).await;
    delete(&storage, &tables.command, &key.pk, &command_sk(&key.sk, 1)).await;
    assert_eq!(latest(&storage, &key, None).await, Some(12));

    // Nothing at all.
    assert_eq!(latest(&storage, &common::key("NONE#1"), None).await, None);
}

/// A conflict reports the latest stored version, found the same way.
#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test]
async fn conflicts_report_the_latest_version() {
    if !common::available() {
        return;
    }
    let storage = common::fresh_storage("latest-conflicts").await;
    let engine = engine(&storage);
    let ctx = common::ctx();
    let key = entity(&engine, "C#1", 12, 20).await;
    for expected in [0, 5, 12, 31] {
        let stale = CommandInput::new(&key.pk, &key.sk)
            .attributes(json!({ "n": "stale" }))
            .version(ExpectedVersion::Exactly(expected));
        match engine.publish_async(stale, &ctx).await.unwrap_err() {
            cqrs_core::Error::Conflict { actual, .. } => {
                assert_eq!(actual, Some(32), "async publish at {expected}")
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
    }
    let mut record = storage.get_command(&key, 32).await.unwrap().unwrap();
    record.version = 40;
    match storage.put_command(&record, None).await.unwrap_err() {
        cqrs_core::Error::Conflict { actual, .. } => assert_eq!(actual, Some(32), "a gap"),
        other => panic!("expected a conflict, got {other:?}"),
    }
}
