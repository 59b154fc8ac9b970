//! Time to live of superseded rows, and what it costs a commit.

mod common;

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use cqrs_core::{CommandInput, CommandService, Engine, Error, ExpectedVersion, InvocationContext, Storage};
use cqrs_dynamodb::DynamoDbStorage;
use serde_json::json;

const DAY: Duration = Duration::from_secs(86_400);

async fn ttl_of(storage: &DynamoDbStorage, table: &str, sk: &str) -> Option<i64> {
    let item = storage
        .client()
        .get_item()
        .table_name(table)
        .key("pk", AttributeValue::S("TENANT#shop-a".into()))
        .key("sk", AttributeValue::S(sk.into()))
        .consistent_read(true)
        .send()
        .await
        .expect("get")
        .item
        .expect("row exists");
    match item.get("ttl") {
        Some(AttributeValue::N(n)) => Some(n.parse().expect("number")),
        _ => None,
    }
}

#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test]
async fn superseded_rows_expire_and_current_rows_do_not() {
    if !common::available() {
        return;
    }
    let storage = common::fresh_storage("ttl").await.with_superseded_ttl(DAY);
    let engine = Engine::builder(Arc::new(storage.clone())).build();
    let ctx = InvocationContext::new("shop-a", "u");
    let pk = "TENANT#shop-a";
    engine
        .publish_sync(CommandInput::new(pk, "P#1").attributes(json!({"n": 1})), &ctx)
        .await
        .unwrap();
    let update = CommandInput::new(pk, "P#1")
        .attributes(json!({"n": 2}))
        .version(ExpectedVersion::Exactly(1));
    engine.publish_sync(update, &ctx).await.unwrap();

    let now = chrono::Utc::now().timestamp();
    let tables = storage.tables();
    let expected = now + DAY.as_secs() as i64;
    for (table, sk) in [(&tables.command, "P#1@1"), (&tables.history, "P#1@1")] {
        let ttl = ttl_of(&storage, table, sk)
            .await
            .expect("superseded row has a ttl");
        assert!(
            (expected - 60..=expected + 60).contains(&ttl),
            "{table}/{sk}: {ttl} vs {expected}"
        );
    }
    assert_eq!(
        ttl_of(&storage, &tables.command, "P#1@2").await,
        None,
        "the current command stays"
    );
    assert_eq!(
        ttl_of(&storage, &tables.data, "P#1").await,
        None,
        "the data row stays"
    );
}

#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test]
async fn ttl_costs_a_row_per_command_in_a_commit() {
    if !common::available() {
        return;
    }
    let storage = common::fresh_storage("ttl-commit").await.with_superseded_ttl(DAY);
    assert_eq!(storage.limits().rows_per_command, 4);
    let engine = Engine::builder(Arc::new(storage)).build();
    let ctx = InvocationContext::new("shop-a", "u");
    let batch = |n: usize| {
        (0..n)
            .map(|i| CommandInput::new("TENANT#shop-a", format!("C#{i}")))
            .collect()
    };
    let err = engine.commit(batch(26), &ctx).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooLarge {
                size: 104,
                limit: 100,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(engine.commit(batch(25), &ctx).await.unwrap().len(), 25);
}
