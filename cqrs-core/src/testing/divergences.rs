//! Where backends could diverge: numbers, number ranges, transaction sizes,
//! sizes known only at apply time, foreign cursors, version overflow. Each
//! check holds every backend to DynamoDB's behaviour, so that what passes
//! on one passes on all.

use serde_json::json;

use super::fixtures::{builder, cmd, cmd_at, ctx, engine, n, PK_A};
use super::{RecordingHandler, StorageFactory};
use crate::error::Error;
use crate::handler::Interest;
use crate::keys::EntityKey;
use crate::model::{CommandStatus, ExpectedVersion};
use crate::query::{Cursor, ListQuery, SkCondition};
use crate::services::{CommandService, DataService};

/// Asserts that the tenant's partition holds no data row.
async fn assert_nothing_written(engine: &crate::engine::Engine, ctx: &crate::context::InvocationContext) {
    let page = engine.list_items(PK_A, ListQuery::new(), ctx).await.unwrap();
    assert!(page.items.is_empty(), "nothing was written: {:?}", page.items);
}

/// Numbers come back as DynamoDB keeps them (`6.0` as `6`): the item a
/// publish returns, the item read back and both handler images agree, to
/// the letter.
pub async fn numbers_read_back_as_written(factory: &dyn StorageFactory) {
    let handler = RecordingHandler::new("images", Interest::All);
    let engine = builder(factory).await.handler_arc(handler.clone()).build();
    let a = ctx("shop-a");
    let attributes = json!({ "tax": 6.0, "total": 65.98, "lines": [2.0, {"qty": 1.0}], "big": 1e20 });
    let written = engine
        .publish_sync(cmd(PK_A, "ORDER#1", attributes), &a)
        .await
        .unwrap()
        .into_item();
    let expected = json!({ "tax": 6, "total": 65.98, "lines": [2, {"qty": 1}], "big": 1e20 });
    assert_eq!(written.attributes, expected);
    assert!(written.attributes["tax"].is_u64(), "{}", written.attributes);
    let read = engine.get_item(&written.key(), &a).await.unwrap().unwrap();
    assert_eq!(read, written, "returned and stored items are equal");

    let changed = json!({ "tax": 6.0, "total": 70.0, "lines": [2.0, {"qty": 1.0}], "big": 1e20 });
    engine
        .publish_async(cmd_at(PK_A, "ORDER#1", 1, changed), &a)
        .await
        .unwrap();
    engine.wait_idle().await;
    let events = handler.events();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].new, written, "the handler's image is the stored item");
    let (old, new) = (events[1].old.as_ref().unwrap(), &events[1].new);
    assert_eq!(
        old.attributes["tax"], new.attributes["tax"],
        "an unchanged number is unchanged"
    );
    assert_eq!(new.attributes["total"], json!(70));
    let read = engine.get_item(&written.key(), &a).await.unwrap().unwrap();
    assert_eq!(&read, new);
}

/// Numbers DynamoDB cannot store are refused by every backend, before
/// anything is written.
pub async fn numbers_outside_the_range_are_rejected(factory: &dyn StorageFactory) {
    let engine = engine(factory).await;
    let a = ctx("shop-a");
    for (i, bad) in [json!({"x": 1e200}), json!({"x": [1, -1e-200]})]
        .into_iter()
        .enumerate()
    {
        let sk = format!("P#{i}");
        let results = [
            engine
                .publish_sync(cmd(PK_A, &sk, bad.clone()), &a)
                .await
                .map(drop),
            engine
                .publish_async(cmd(PK_A, &sk, bad.clone()), &a)
                .await
                .map(drop),
            engine.commit(vec![cmd(PK_A, &sk, bad)], &a).await.map(drop),
        ];
        for result in results {
            match result {
                Err(Error::InvalidInput { what, .. }) => assert!(what.starts_with("attributes.x"), "{what}"),
                other => panic!("expected invalid input, got {other:?}"),
            }
        }
        let key = EntityKey::new(PK_A, &sk);
        assert!(engine.get_command(&key, 1, &a).await.unwrap().is_none());
    }
    engine.wait_idle().await;
    assert_nothing_written(&engine, &a).await;
}

/// The edges of DynamoDB's number range, decided on the text a float is
/// sent as (its shortest round-trip decimal): the float nearest `1e126` is
/// sent as `1e126`, one past the largest number DynamoDB stores
/// (`9.9999999999999999999999999999999999999E+125`), and is refused by
/// every backend; the float just below it is stored, and so are `1e-130`
/// and 0, while the float just below `1e-130` is refused. A refusal names
/// the attribute and stays short, even for the smallest subnormal float.
pub async fn numbers_at_the_edges_of_the_range(factory: &dyn StorageFactory) {
    let engine = engine(factory).await;
    let a = ctx("shop-a");
    let below = |x: f64| f64::from_bits(x.to_bits() - 1);
    let largest = below(1e126);
    let accepted = [largest, -largest, 1e-130, -1e-130, 0.0, 9.99e125];
    let refused = [1e126, -1e126, below(1e-130), -below(1e-130), 5e-324, -f64::MAX];
    for (i, x) in accepted.into_iter().enumerate() {
        let sk = format!("OK#{i}");
        let written = engine
            .publish_sync(cmd(PK_A, &sk, json!({ "price": { "amount": x } })), &a)
            .await
            .unwrap_or_else(|e| panic!("{x:e} is a number DynamoDB stores: {e}"))
            .into_item();
        assert_eq!(written.attributes["price"]["amount"].as_f64(), Some(x), "{x:e}");
        let read = engine.get_item(&written.key(), &a).await.unwrap().unwrap();
        assert_eq!(read, written, "{x:e} reads back as written");
    }
    for (i, x) in refused.into_iter().enumerate() {
        let sk = format!("BAD#{i}");
        let attributes = json!({ "price": { "amounts": [1, x] } });
        let results = [
            engine
                .publish_sync(cmd(PK_A, &sk, attributes.clone()), &a)
                .await
                .map(drop),
            engine
                .publish_async(cmd(PK_A, &sk, attributes.clone()), &a)
                .await
                .map(drop),
            engine
                .commit(vec![cmd(PK_A, &sk, attributes)], &a)
                .await
                .map(drop),
        ];
        for result in results {
            match result {
                Err(error @ Error::InvalidInput { .. }) => {
                    let Error::InvalidInput { what, .. } = &error else {
                        unreachable!()
                    };
                    assert_eq!(what, "attributes.price.amounts[1]", "{x:e}");
                    let message = error.to_string();
                    assert!(message.len() < 200, "a short message for {x:e}: {message}");
                }
                other => panic!("{x:e} is out of range: expected invalid input, got {other:?}"),
            }
        }
        let key = EntityKey::new(PK_A, &sk);
        assert!(engine.get_command(&key, 1, &a).await.unwrap().is_none(), "{x:e}");
        assert!(engine.get_item(&key, &a).await.unwrap().is_none(), "{x:e}");
    }
}

/// A commit whose rows together exceed the transaction size is refused, by
/// every backend, and writes nothing.
pub async fn commits_over_the_transaction_size_are_rejected(factory: &dyn StorageFactory) {
    let engine = engine(factory).await;
    let a = ctx("shop-a");
    let limits = engine.storage().limits();
    // Each row fits; together the data and command rows do not.
    let per_row = limits.max_item_bytes / 2;
    let count = limits.max_transaction_bytes / (2 * per_row) + 1;
    let commands = (0..count)
        .map(|i| cmd(PK_A, &format!("P#{i}"), json!({ "blob": "x".repeat(per_row) })))
        .collect();
    match engine.commit(commands, &a).await {
        Err(Error::TooLarge { what, size, limit }) => {
            assert_eq!(what, "transaction bytes");
            assert!(size > limit && limit == limits.max_transaction_bytes);
        }
        other => panic!("expected too large, got {:?}", other.map(|r| r.len())),
    }
    assert_nothing_written(&engine, &a).await;
}

/// An async command accepted is one the pipeline can apply: at every size
/// up to the limit, a publish is either refused at once or applied later.
pub async fn async_commands_accepted_can_be_applied(factory: &dyn StorageFactory) {
    let engine = engine(factory).await;
    let a = ctx("shop-a");
    let limit = engine.storage().limits().max_item_bytes;
    let mut accepted = 0;
    for (i, shortfall) in (0..1200).step_by(100).enumerate() {
        let sk = format!("P#{i}");
        let blob = json!({ "blob": "x".repeat(limit.saturating_sub(300 + shortfall)) });
        if engine.publish_async(cmd(PK_A, &sk, blob), &a).await.is_ok() {
            accepted += 1;
            engine.wait_idle().await;
            let key = EntityKey::new(PK_A, &sk);
            let status = engine.get_command(&key, 1, &a).await.unwrap().map(|c| c.status);
            assert_ne!(
                status,
                Some(CommandStatus::Failed),
                "accepted at {sk}, then failed to apply"
            );
            assert_eq!(
                engine.get_item(&key, &a).await.unwrap().map(|d| d.version),
                Some(1),
                "{sk}"
            );
        }
    }
    assert!(accepted > 0, "some sizes fit");
    assert!(engine.list_failures(&a).await.unwrap().is_empty());
}

/// A cursor is only good for the query that made it: one naming a row
/// outside the query's sort-key range is refused with a typed error.
pub async fn cursors_outside_their_query_are_rejected(factory: &dyn StorageFactory) {
    let engine = engine(factory).await;
    let a = ctx("shop-a");
    for sk in ["A#1", "A#2", "B#1"] {
        engine.publish_sync(cmd(PK_A, sk, n(1)), &a).await.unwrap();
    }
    for (condition, foreign) in [
        (SkCondition::BeginsWith("A#".into()), "B#1"),
        (SkCondition::Between("A#1".into(), "A#2".into()), "A#3"),
        (SkCondition::LessThan("B#".into()), "B#1"),
    ] {
        let query = ListQuery::new()
            .sk(condition.clone())
            .after(Some(Cursor::encode(PK_A, foreign)));
        match engine.list_items(PK_A, query, &a).await {
            Err(Error::InvalidInput { what, .. }) => assert_eq!(what, "cursor"),
            other => panic!("{condition:?} after {foreign}: {other:?}"),
        }
    }
    // The query's own cursors work.
    let query = ListQuery::new().sk(SkCondition::BeginsWith("A#".into())).limit(1);
    let first = engine.list_items(PK_A, query.clone(), &a).await.unwrap();
    let second = engine
        .list_items(PK_A, query.after(first.cursor), &a)
        .await
        .unwrap();
    assert_eq!(second.items[0].sk, "A#2");
}

/// Versions near `u64::MAX` are refused with a typed error, never a panic.
pub async fn versions_never_overflow(factory: &dyn StorageFactory) {
    let engine = engine(factory).await;
    let a = ctx("shop-a");
    let at_max = || cmd(PK_A, "P#1", n(1)).version(ExpectedVersion::Exactly(u64::MAX));
    for result in [
        engine.publish_async(at_max(), &a).await.map(drop),
        engine.publish_sync(at_max(), &a).await.map(drop),
        engine.commit(vec![at_max()], &a).await.map(drop),
    ] {
        match result {
            Err(Error::InvalidInput { .. } | Error::Conflict { .. }) => {}
            other => panic!("expected a typed refusal, got {other:?}"),
        }
    }
    engine.wait_idle().await;
    let key = EntityKey::new(PK_A, "P#1");
    assert!(engine.get_item(&key, &a).await.unwrap().is_none());
    assert!(engine.list_versions(&key, &a).await.unwrap().is_empty());
}
