//! Idempotency keys on DynamoDB: their rows in the sequences table, the
//! condition that replaces an expired row (DynamoDB's time to live deletes
//! rows lazily, DynamoDB Local perhaps never), and the writes a live key
//! stops.

mod common;

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::Utc;
use cqrs_core::{
    ApplyWrite, CommandInput, CommandService, CommandStatus, CommandWrite, Engine, EntityKey, Error,
    ExpectedVersion, IdempotencyRecord, Storage,
};
use cqrs_dynamodb::DynamoDbStorage;
use serde_json::json;

/// The raw row of an idempotency key of tenant `shop-a`.
async fn key_row(storage: &DynamoDbStorage, key: &str) -> Option<cqrs_dynamodb::Item> {
    storage
        .client()
        .get_item()
        .table_name(&storage.tables().sequences)
        .key("pk", AttributeValue::S("IDEMPOTENCY#shop-a".into()))
        .key("sk", AttributeValue::S(key.into()))
        .consistent_read(true)
        .send()
        .await
        .expect("get")
        .item
}

fn number(item: &cqrs_dynamodb::Item, name: &str) -> i64 {
    match item.get(name) {
        Some(AttributeValue::N(n)) => n.parse().expect("a number"),
        other => panic!("{name} is {other:?}"),
    }
}

fn string<'a>(item: &'a cqrs_dynamodb::Item, name: &str) -> &'a str {
    match item.get(name) {
        Some(AttributeValue::S(s)) => s,
        other => panic!("{name} is {other:?}"),
    }
}

fn key_record(key: &str, entity: &EntityKey, version: u64, expires_at: i64) -> IdempotencyRecord {
    IdempotencyRecord {
        tenant_code: common::TENANT.into(),
        key: key.into(),
        fingerprint: format!("fingerprint-of-{key}-{version}"),
        pk: entity.pk.to_string(),
        sk: entity.sk.to_string(),
        version,
        created_at: Utc::now(),
        expires_at,
        commit: Vec::new(),
    }
}

fn conflict_of(error: Error) -> (ExpectedVersion, Option<u64>) {
    match error {
        Error::Conflict { expected, actual, .. } => (expected, actual),
        other => panic!("expected a conflict, got {other:?}"),
    }
}

/// A key whose retention passed is taken again by a publish with other
/// content: the expired row is replaced by the write's condition, while it
/// is still stored.
#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test]
async fn an_expired_key_row_is_replaced() {
    if !common::available() {
        return;
    }
    let storage = common::fresh_storage("idem-expiry").await;
    // Expiry is kept in whole seconds (the publish's second, floored, plus
    // the retention): a key of 1 s could expire within a few milliseconds,
    // before the refused publish below on a loaded machine. 3 s leaves at
    // least 2 s for it.
    let engine = Engine::builder(Arc::new(storage.clone()))
        .idempotency_retention(Duration::from_secs(3))
        .build();
    let ctx = common::ctx();
    let pk = cqrs_core::tenant_pk(common::TENANT);
    let first = engine
        .publish_sync(
            CommandInput::new(&pk, "ORDER#1")
                .attributes(json!({ "n": 1 }))
                .idempotency_key("req-1"),
            &ctx,
        )
        .await
        .expect("first");
    assert_eq!(first.get().version, 1);

    let row = key_row(&storage, "req-1").await.expect("the key row");
    assert_eq!(string(&row, "entityPk"), pk);
    assert_eq!(string(&row, "entitySk"), "ORDER#1");
    assert_eq!(number(&row, "version"), 1);
    assert_eq!(
        number(&row, "ttl"),
        number(&row, "expiresAt"),
        "DynamoDB's time to live deletes it"
    );
    let first_fingerprint = string(&row, "fingerprint").to_owned();

    let other = || {
        CommandInput::new(&pk, "ORDER#1")
            .attributes(json!({ "n": 2 }))
            .version(ExpectedVersion::Exactly(1))
            .idempotency_key("req-1")
    };
    let refused = engine.publish_sync(other(), &ctx).await.unwrap_err();
    assert!(
        matches!(refused, Error::IdempotencyKeyReused { .. }),
        "{refused:?}"
    );
    assert_eq!(
        storage
            .get_data(&common::key("ORDER#1"))
            .await
            .unwrap()
            .unwrap()
            .version,
        1,
        "nothing written"
    );

    // Past the retention, in whole seconds.
    tokio::time::sleep(Duration::from_millis(4100)).await;
    assert!(
        key_row(&storage, "req-1").await.is_some(),
        "the expired row is still stored: what follows must replace it"
    );
    let second = engine
        .publish_sync(other(), &ctx)
        .await
        .expect("the key is free again");
    assert_eq!(second.get().version, 2);
    assert_eq!(second.get().attributes, json!({ "n": 2 }));
    let row = key_row(&storage, "req-1").await.expect("the key row");
    assert_eq!(number(&row, "version"), 2, "the row now names the second publish");
    assert_ne!(string(&row, "fingerprint"), first_fingerprint);
    assert!(number(&row, "expiresAt") > Utc::now().timestamp() - 1);
}

/// `put_command` and `apply` with a live key: a conflict, nothing written;
/// with an expired one: written, the row replaced.
#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test]
async fn live_keys_stop_writes_and_expired_ones_do_not() {
    if !common::available() {
        return;
    }
    let storage = common::fresh_storage("idem-primitives").await;
    let engine = Engine::builder(Arc::new(storage.clone()))
        .dispatch(cqrs_core::AsyncDispatch::External)
        .build();
    let ctx = common::ctx();
    let (order1, order2, order3) = (
        common::key("ORDER#1"),
        common::key("ORDER#2"),
        common::key("ORDER#3"),
    );
    let now = Utc::now().timestamp();
    let hour = now + 3600;
    let live = key_record("held", &order2, 1, hour);

    let v1 = engine
        .publish_async(CommandInput::new(&order1.pk, &order1.sk), &ctx)
        .await
        .unwrap()
        .into_inner();
    let at = |entity: &EntityKey, version: u64| {
        let mut record = v1.clone();
        record.sk = entity.sk.clone();
        record.version = version;
        record
    };

    // Version 1 with a free key: command and key in one transaction.
    storage
        .put_command(&at(&order2, 1), Some(&live))
        .await
        .expect("version 1 with a free key");
    assert_eq!(
        storage.get_idempotency(common::TENANT, "held").await.unwrap(),
        Some(live.clone())
    );
    assert!(storage
        .get_idempotency(common::TENANT, "other")
        .await
        .unwrap()
        .is_none());

    // The live key stops version 2 of ORDER#1, and version 1 of ORDER#3.
    let error = storage
        .put_command(&at(&order1, 2), Some(&live))
        .await
        .unwrap_err();
    assert_eq!(conflict_of(error), (ExpectedVersion::Exactly(1), Some(1)));
    assert!(
        storage.get_command(&order1, 2).await.unwrap().is_none(),
        "nothing written"
    );
    let error = storage
        .put_command(&at(&order3, 1), Some(&live))
        .await
        .unwrap_err();
    assert_eq!(conflict_of(error), (ExpectedVersion::Exactly(0), None));
    assert!(
        storage.get_command(&order3, 1).await.unwrap().is_none(),
        "nothing written"
    );
    assert_eq!(
        storage.get_idempotency(common::TENANT, "held").await.unwrap(),
        Some(live.clone()),
        "the live row stays"
    );

    // An expired row is replaced by put_command.
    storage
        .put_command(&at(&order2, 2), Some(&key_record("old", &order2, 2, now - 10)))
        .await
        .expect("a free key (the row written is already expired)");
    let fresh = key_record("old", &order1, 2, hour);
    storage
        .put_command(&at(&order1, 2), Some(&fresh))
        .await
        .expect("an expired key row is replaced");
    assert_eq!(
        storage.get_idempotency(common::TENANT, "old").await.unwrap(),
        Some(fresh)
    );

    // apply with the live key: the conflict of the write's entity.
    engine.process(&order1, 1).await.unwrap();
    engine.process(&order1, 2).await.unwrap();
    let data = storage.get_data(&order1).await.unwrap().unwrap();
    assert_eq!(data.version, 2);
    let mut v3 = at(&order1, 3);
    v3.status = CommandStatus::Applied;
    let mut next = data.clone();
    next.version = 3;
    let write = |idempotency| ApplyWrite {
        command: CommandWrite::Insert(Box::new(v3.clone())),
        data: next.clone(),
        expected_data_version: 2,
        history: Some(data.clone()),
        idempotency: Some(idempotency),
        indexes: Vec::new(),
    };
    let error = storage.apply(&[write(live.clone())]).await.unwrap_err();
    assert_eq!(conflict_of(error), (ExpectedVersion::Exactly(2), Some(2)));
    assert!(
        storage.get_command(&order1, 3).await.unwrap().is_none(),
        "nothing written"
    );
    assert_eq!(storage.get_data(&order1).await.unwrap().unwrap().version, 2);
    assert!(storage.get_history(&order1, 2).await.unwrap().is_none());

    // An expired row is replaced by apply.
    storage
        .put_command(&at(&order3, 1), Some(&key_record("stale", &order3, 1, now - 10)))
        .await
        .unwrap();
    let fresh = key_record("stale", &order1, 3, hour);
    storage
        .apply(&[write(fresh.clone())])
        .await
        .expect("an expired key row does not stop the apply");
    assert_eq!(storage.get_data(&order1).await.unwrap().unwrap().version, 3);
    assert_eq!(
        storage.get_idempotency(common::TENANT, "stale").await.unwrap(),
        Some(fresh)
    );
}
