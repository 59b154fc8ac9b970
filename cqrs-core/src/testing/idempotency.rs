//! Idempotency keys: a retried publish writes once and gets the first
//! result back; another request under the same key is refused; keys are
//! per tenant, expire, and survive concurrent retries and lost responses.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::fixtures::{builder, cmd, cmd_at, ctx, engine, n, PK_A, PK_B};
use super::{Fault, FaultyStorage, Op, RecordingHandler, Rule, StorageFactory};
use crate::engine::Engine;
use crate::error::Error;
use crate::handler::Interest;
use crate::idempotency::IdempotencyKey;
use crate::keys::EntityKey;
use crate::model::{CommandInput, ExpectedVersion, PartialUpdate, Published};
use crate::services::{CommandService, DataService};

async fn versions(engine: &Engine, sk: &str) -> usize {
    engine
        .list_versions(&EntityKey::new(PK_A, sk), &ctx("shop-a"))
        .await
        .expect("versions")
        .len()
}

fn written_version<T>(published: Published<T>, version: impl Fn(&T) -> u64) -> u64 {
    match published {
        Published::Written(value) => version(&value),
        Published::Unchanged(_) => panic!("a keyed retry answers with the first result, not 'unchanged'"),
    }
}

/// A retried keyed publish (sync, async, partial update) returns the first
/// result and writes nothing more; its handler ran once.
pub async fn keyed_publishes_write_once(factory: &dyn StorageFactory) {
    let handler = RecordingHandler::new("recorder", Interest::All);
    let engine = builder(factory).await.handler_arc(handler.clone()).build();
    let a = ctx("shop-a");

    let create = cmd(PK_A, "ORDER#1", n(1)).idempotency_key("create-1");
    let first = engine.publish_sync(create.clone(), &a).await.expect("first");
    let again = engine.publish_sync(create, &a).await.expect("retry");
    assert_eq!(first, again, "the retry gets the first result");
    assert_eq!(versions(&engine, "ORDER#1").await, 1);

    // A retry after the entity moved on still answers with the first result.
    let update = cmd_at(PK_A, "ORDER#1", 1, n(2)).idempotency_key("update-1");
    let first = engine.publish_sync(update.clone(), &a).await.expect("update");
    engine
        .publish_sync(cmd_at(PK_A, "ORDER#1", 2, n(3)), &a)
        .await
        .expect("a later change");
    let again = engine.publish_sync(update, &a).await.expect("retry");
    assert_eq!(written_version(again.published().clone(), |i| i.version), 2);
    assert_eq!(again.into_item().attributes, first.into_item().attributes);
    assert_eq!(versions(&engine, "ORDER#1").await, 3);

    // Last-writer-wins: the retry would otherwise write on top.
    let latest = cmd(PK_A, "ORDER#1", n(4))
        .version(ExpectedVersion::Latest)
        .idempotency_key("latest-1");
    let first = engine.publish_sync(latest.clone(), &a).await.expect("latest");
    engine
        .publish_sync(cmd_at(PK_A, "ORDER#1", 4, n(5)), &a)
        .await
        .expect("a later change");
    let again = engine.publish_sync(latest, &a).await.expect("retry");
    assert_eq!(
        written_version(again.into_published(), |i| i.version),
        first.get().version
    );
    assert_eq!(versions(&engine, "ORDER#1").await, 5);

    let publish = cmd(PK_A, "ORDER#2", n(1)).idempotency_key("async-1");
    let first = engine.publish_async(publish.clone(), &a).await.expect("async");
    engine.wait_idle().await;
    let again = engine.publish_async(publish, &a).await.expect("retry");
    assert_eq!(written_version(again, |c| c.version), first.get().version);

    let patch = PartialUpdate::new(PK_A, "ORDER#2", ExpectedVersion::Latest)
        .attributes(json!({ "note": "gift" }))
        .idempotency_key("patch-1");
    engine
        .publish_partial_update_sync(patch.clone(), &a)
        .await
        .expect("patch");
    let again = engine
        .publish_partial_update_sync(patch, &a)
        .await
        .expect("retry");
    assert_eq!(written_version(again.into_published(), |i| i.version), 2);
    engine.wait_idle().await;
    assert_eq!(versions(&engine, "ORDER#2").await, 2);

    let handled = |sk: &str| handler.seen().iter().filter(|(s, _)| s == sk).count();
    assert_eq!(
        (handled("ORDER#1"), handled("ORDER#2")),
        (5, 2),
        "one handler run per version"
    );
}

/// The same key for another request — other content, another entity,
/// another mode — is refused with a typed error, and nothing is written.
pub async fn reused_idempotency_keys_are_refused(factory: &dyn StorageFactory) {
    let engine = engine(factory).await;
    let a = ctx("shop-a");
    engine
        .publish_sync(cmd(PK_A, "ORDER#1", n(1)).idempotency_key("k"), &a)
        .await
        .expect("first");
    let others = [
        ("other content", cmd(PK_A, "ORDER#1", n(2))),
        ("other entity", cmd(PK_A, "ORDER#2", n(1))),
    ];
    for (why, command) in others {
        let error = engine
            .publish_sync(command.idempotency_key("k"), &a)
            .await
            .expect_err(why);
        assert!(
            matches!(&error, Error::IdempotencyKeyReused { key, original } if key == "k" && original.ends_with("ORDER#1@1")),
            "{why}: {error}"
        );
    }
    let error = engine
        .publish_async(cmd(PK_A, "ORDER#1", n(1)).idempotency_key("k"), &a)
        .await
        .expect_err("a sync publish's key used by an async one");
    assert!(matches!(error, Error::IdempotencyKeyReused { .. }), "{error}");
    assert_eq!(versions(&engine, "ORDER#1").await, 1);
    assert_eq!(versions(&engine, "ORDER#2").await, 0);

    // An explicit fingerprint names the request: the command may differ.
    let request = IdempotencyKey::new("req")
        .fingerprint_of(&json!({ "body": 1 }))
        .expect("fingerprint");
    engine
        .publish_sync(cmd(PK_A, "ORDER#3", n(1)).idempotency_key(request.clone()), &a)
        .await
        .expect("first");
    let again = engine
        .publish_sync(cmd(PK_A, "ORDER#4", n(9)).idempotency_key(request.clone()), &a)
        .await
        .expect("same request, other command: the first result");
    assert_eq!(again.get().sk, "ORDER#3");
    assert_eq!(versions(&engine, "ORDER#4").await, 0);
    let found = engine
        .find_idempotent(&request, &a)
        .await
        .expect("find")
        .expect("held");
    assert_eq!((found.sk.as_str(), found.version), ("ORDER#3", 1));
    let other = IdempotencyKey::new("req").fingerprint("another request");
    assert!(matches!(
        engine.find_idempotent(&other, &a).await,
        Err(Error::IdempotencyKeyReused { .. })
    ));
    assert!(engine
        .find_idempotent(&IdempotencyKey::new("unused"), &a)
        .await
        .expect("find")
        .is_none());
}

/// Bad keys are refused before anything is written; commits take none.
pub async fn idempotency_keys_are_validated(factory: &dyn StorageFactory) {
    let engine = engine(factory).await;
    let a = ctx("shop-a");
    for bad in ["", "with space", "naïve", &"k".repeat(256)] {
        let error = engine
            .publish_sync(cmd(PK_A, "ORDER#1", n(1)).idempotency_key(bad), &a)
            .await
            .expect_err(bad);
        assert!(
            matches!(&error, Error::InvalidInput { what, .. } if what == "idempotencyKey"),
            "{error}"
        );
    }
    let error = engine
        .commit(vec![cmd(PK_A, "ORDER#1", n(1)).idempotency_key("k")], &a)
        .await
        .expect_err("commit with a key");
    assert!(
        matches!(&error, Error::InvalidInput { what, .. } if what == "idempotencyKey"),
        "{error}"
    );
    assert_eq!(versions(&engine, "ORDER#1").await, 0);
}

/// Keys are per tenant: another tenant's use of the same key is its own.
pub async fn idempotency_keys_are_per_tenant(factory: &dyn StorageFactory) {
    let engine = engine(factory).await;
    let (a, b) = (ctx("shop-a"), ctx("shop-b"));
    engine
        .publish_sync(cmd(PK_A, "ORDER#1", n(1)).idempotency_key("k"), &a)
        .await
        .expect("tenant a");
    let written = engine
        .publish_sync(cmd(PK_B, "ORDER#9", n(2)).idempotency_key("k"), &b)
        .await
        .expect("tenant b");
    assert!(!written.is_unchanged());
    assert_eq!(written.get().pk, PK_B);
    assert!(engine
        .find_idempotent(&IdempotencyKey::new("k"), &b)
        .await
        .expect("find")
        .is_some_and(|c| c.pk == PK_B));
}

/// Sixteen concurrent tries of one keyed request write one version and all
/// answer with it: a sync create, and an async last-writer-wins update.
pub async fn concurrent_keyed_retries_write_once(factory: &dyn StorageFactory) {
    let engine = engine(factory).await;
    let a = ctx("shop-a");
    let tries = (0..16).map(|_| {
        let (engine, a) = (engine.clone(), a.clone());
        tokio::spawn(async move {
            engine
                .publish_sync(cmd(PK_A, "ORDER#1", n(1)).idempotency_key("create"), &a)
                .await
        })
    });
    for outcome in futures::future::join_all(tries).await {
        let published = outcome.expect("task").expect("every try succeeds");
        assert_eq!(published.get().version, 1);
    }
    assert_eq!(versions(&engine, "ORDER#1").await, 1);

    let tries = (0..16).map(|_| {
        let (engine, a) = (engine.clone(), a.clone());
        tokio::spawn(async move {
            let command = cmd(PK_A, "ORDER#1", n(2))
                .version(ExpectedVersion::Latest)
                .idempotency_key("bump");
            engine.publish_async(command, &a).await
        })
    });
    for outcome in futures::future::join_all(tries).await {
        let published = outcome.expect("task").expect("every try succeeds");
        assert_eq!(published.get().version, 2);
    }
    engine.wait_idle().await;
    assert_eq!(versions(&engine, "ORDER#1").await, 2);
}

/// A keyed publish whose response was lost is answered by its retry — the
/// first write, not a second one.
pub async fn lost_response_is_answered_by_the_keyed_retry(factory: &dyn StorageFactory) {
    let storage = Arc::new(FaultyStorage::new(factory.storage().await));
    let engine = Engine::builder(storage.clone()).build();
    let a = ctx("shop-a");
    for (op, sk) in [(Op::Apply, "ORDER#SYNC"), (Op::PutCommand, "ORDER#ASYNC")] {
        storage.inject(Rule::new(Fault::LostResponse).on(&[op]).times(1));
        let command = cmd(PK_A, sk, n(1)).idempotency_key(format!("key-{sk}"));
        let sync = op == Op::Apply;
        let lost = match sync {
            true => engine.publish_sync(command.clone(), &a).await.map(drop),
            false => engine.publish_async(command.clone(), &a).await.map(drop),
        };
        assert!(lost.expect_err("the response was lost").is_retryable());
        let version = match sync {
            true => written_version(
                engine
                    .publish_sync(command, &a)
                    .await
                    .expect("retry")
                    .into_published(),
                |i| i.version,
            ),
            false => written_version(engine.publish_async(command, &a).await.expect("retry"), |c| {
                c.version
            }),
        };
        assert_eq!(version, 1, "{sk}: the retry answers with the first write");
        engine.wait_idle().await;
        assert_eq!(versions(&engine, sk).await, 1, "{sk}: written once");
    }
}

/// A used key is free again once its retention has passed.
pub async fn idempotency_keys_expire(factory: &dyn StorageFactory) {
    let engine = builder(factory)
        .await
        .idempotency_retention(Duration::from_secs(1))
        .build();
    let a = ctx("shop-a");
    engine
        .publish_sync(cmd(PK_A, "ORDER#1", n(1)).idempotency_key("k"), &a)
        .await
        .expect("first");
    // Expiry is kept in whole seconds.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(engine
        .find_idempotent(&IdempotencyKey::new("k"), &a)
        .await
        .expect("find")
        .is_none());
    let other = engine
        .publish_sync(cmd(PK_A, "ORDER#2", n(1)).idempotency_key("k"), &a)
        .await
        .expect("the key is free again");
    assert_eq!(other.get().sk, "ORDER#2");
}

/// A keyed read-modify-write retried returns the first result without
/// deciding again (the closure would refuse the same move now).
pub async fn keyed_updates_replay_without_deciding_again(factory: &dyn StorageFactory) {
    let engine = engine(factory).await;
    let services = engine.services();
    let a = ctx("shop-a");
    let key = EntityKey::new(PK_A, "ORDER#1");
    engine
        .publish_sync(cmd(PK_A, "ORDER#1", json!({ "status": "paid" })), &a)
        .await
        .expect("create");
    let decisions = AtomicU32::new(0);
    let ship = || {
        services
            .update(&key)
            .idempotency_key("ship-1")
            .publish_sync(&a, |current| {
                decisions.fetch_add(1, Ordering::SeqCst);
                let item = current.ok_or_else(|| Error::not_found(&key))?;
                if item.attributes["status"] != "paid" {
                    return Err(Error::invalid("status", "only a paid order ships"));
                }
                Ok(Some(
                    CommandInput::update_of(item).attributes(json!({ "status": "shipped" })),
                ))
            })
    };
    let first = ship().await.expect("ship").written().expect("written");
    let again = ship().await.expect("retry");
    assert_eq!(first.version, 2);
    assert!(again.is_written(), "the first result");
    assert_eq!(again.into_item(), Some(first));
    assert_eq!(
        decisions.load(Ordering::SeqCst),
        1,
        "the retry did not decide again"
    );
    assert_eq!(
        engine.get_item(&key, &a).await.expect("read").map(|i| i.version),
        Some(2)
    );
}
