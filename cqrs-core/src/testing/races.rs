//! Races between real concurrent tasks.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use serde_json::json;

use super::fixtures::{cmd, ctx, engine, n, PK_A};
use super::StorageFactory;
use crate::engine::Engine;
use crate::error::Error;
use crate::keys::EntityKey;
use crate::model::{CommandInput, ExpectedVersion, PartialUpdate};
use crate::services::{CommandService, DataService};

/// Reads `key`, adds `by` to its counter `n` at the version read, retrying on
/// conflict. Returns the number of conflicts met.
async fn increment(engine: &Engine, key: &EntityKey, by: i64) -> u32 {
    let a = ctx("shop-a");
    let mut conflicts = 0;
    loop {
        let current = engine.get_item(key, &a).await.unwrap().unwrap();
        let value = current.attributes["n"].as_i64().unwrap();
        let next = CommandInput::update_of(&current).attributes(json!({ "n": value + by }));
        match engine.publish_sync(next, &a).await {
            Ok(_) => return conflicts,
            Err(e) if e.is_conflict() => conflicts += 1,
            Err(e) => panic!("unexpected error: {e:?}"),
        }
    }
}

/// 8 tasks × 50 optimistic increments with retry on conflict: exactly 400.
pub async fn concurrent_increments_are_exact(factory: &dyn StorageFactory) {
    let engine = engine(factory).await;
    let key = EntityKey::new(PK_A, "COUNTER#1");
    engine
        .publish_sync(cmd(PK_A, "COUNTER#1", json!({"n": 0})), &ctx("shop-a"))
        .await
        .unwrap();
    let conflicts = Arc::new(AtomicU32::new(0));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (engine, key, conflicts) = (engine.clone(), key.clone(), conflicts.clone());
            tokio::spawn(async move {
                for _ in 0..50 {
                    conflicts.fetch_add(increment(&engine, &key, 1).await, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    let a = ctx("shop-a");
    let item = engine.get_item(&key, &a).await.unwrap().unwrap();
    assert_eq!(item.attributes["n"], 400);
    assert_eq!(item.version, 401);
    assert_eq!(engine.list_versions(&key, &a).await.unwrap().len(), 401);
    assert_eq!(engine.list_history(&key, &a).await.unwrap().len(), 400);
    tracing::info!(conflicts = conflicts.load(Ordering::Relaxed), "increment race");
}

/// 16 tasks create the same entity: exactly one wins, the others conflict.
pub async fn concurrent_creates_have_one_winner(factory: &dyn StorageFactory) {
    let engine = engine(factory).await;
    let tasks: Vec<_> = (0..16u64)
        .map(|i| {
            let engine = engine.clone();
            tokio::spawn(async move {
                let a = ctx("shop-a");
                if i % 2 == 0 {
                    engine
                        .publish_sync(cmd(PK_A, "P#1", n(i)), &a)
                        .await
                        .map(|p| p.into_item().attributes)
                } else {
                    engine
                        .publish_async(cmd(PK_A, "P#1", n(i)), &a)
                        .await
                        .map(|p| p.into_inner().attributes)
                }
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        match task.await.expect("task") {
            Ok(attributes) => winners.push(attributes),
            Err(Error::Conflict { .. }) => {}
            Err(e) => panic!("unexpected error: {e:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one creation wins");
    engine.wait_idle().await;
    let a = ctx("shop-a");
    let item = engine
        .get_item(&EntityKey::new(PK_A, "P#1"), &a)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((item.version, &item.attributes), (1, &winners[0]));
}

/// Concurrent last-writer-wins async publishes get contiguous versions, all applied.
pub async fn concurrent_async_publishes_keep_versions_contiguous(factory: &dyn StorageFactory) {
    let engine = engine(factory).await;
    let tasks: Vec<_> = (0..8u64)
        .map(|t| {
            let engine = engine.clone();
            tokio::spawn(async move {
                let mut versions = Vec::new();
                for i in 0..20 {
                    let command = cmd(PK_A, "P#1", json!({"t": t, "i": i})).version(ExpectedVersion::Latest);
                    versions.push(
                        engine
                            .publish_async(command, &ctx("shop-a"))
                            .await
                            .unwrap()
                            .into_inner()
                            .version,
                    );
                }
                versions
            })
        })
        .collect();
    let mut versions = Vec::new();
    for task in tasks {
        let mine = task.await.expect("task");
        assert!(mine.windows(2).all(|w| w[0] < w[1]), "a task's versions increase");
        versions.extend(mine);
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=160).collect::<Vec<u64>>());
    engine.wait_idle().await;
    let a = ctx("shop-a");
    let key = EntityKey::new(PK_A, "P#1");
    assert_eq!(engine.get_item(&key, &a).await.unwrap().unwrap().version, 160);
    assert_eq!(engine.list_history(&key, &a).await.unwrap().len(), 159);
}

/// Tasks moving units between two entities in all-or-nothing commits keep
/// the total exact.
pub async fn concurrent_commits_stay_consistent(factory: &dyn StorageFactory) {
    let engine = engine(factory).await;
    let a = ctx("shop-a");
    engine
        .commit(
            vec![
                cmd(PK_A, "STOCK#A", json!({"n": 100})),
                cmd(PK_A, "STOCK#B", json!({"n": 0})),
            ],
            &a,
        )
        .await
        .unwrap();
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let engine = engine.clone();
            tokio::spawn(async move {
                let a = ctx("shop-a");
                for _ in 0..10 {
                    loop {
                        let from = engine
                            .get_item(&EntityKey::new(PK_A, "STOCK#A"), &a)
                            .await
                            .unwrap()
                            .unwrap();
                        let to = engine
                            .get_item(&EntityKey::new(PK_A, "STOCK#B"), &a)
                            .await
                            .unwrap()
                            .unwrap();
                        let (x, y) = (
                            from.attributes["n"].as_i64().unwrap(),
                            to.attributes["n"].as_i64().unwrap(),
                        );
                        let moves = vec![
                            CommandInput::update_of(&from).attributes(json!({"n": x - 1})),
                            CommandInput::update_of(&to).attributes(json!({"n": y + 1})),
                        ];
                        match engine.commit(moves, &a).await {
                            Ok(_) => break,
                            Err(e) if e.is_conflict() => continue,
                            Err(e) => panic!("unexpected error: {e:?}"),
                        }
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    let from = engine
        .get_item(&EntityKey::new(PK_A, "STOCK#A"), &a)
        .await
        .unwrap()
        .unwrap();
    let to = engine
        .get_item(&EntityKey::new(PK_A, "STOCK#B"), &a)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (from.attributes["n"].as_i64(), to.attributes["n"].as_i64()),
        (Some(40), Some(60))
    );
    assert_eq!((from.version, to.version), (61, 61));
}

/// Concurrent last-writer-wins partial updates, sync and async, each merge
/// over the latest state: no update is lost.
pub async fn concurrent_partial_updates_lose_nothing(factory: &dyn StorageFactory) {
    let engine = engine(factory).await;
    engine
        .publish_sync(cmd(PK_A, "P#1", json!({})), &ctx("shop-a"))
        .await
        .unwrap();
    let tasks: Vec<_> = (0..6u64)
        .map(|t| {
            let engine = engine.clone();
            tokio::spawn(async move {
                let a = ctx("shop-a");
                for i in 0..10 {
                    let update = PartialUpdate::new(PK_A, "P#1", ExpectedVersion::Latest)
                        .attributes(json!({ format!("t{t}-{i}"): true }));
                    if t % 2 == 0 {
                        engine.publish_partial_update_sync(update, &a).await.unwrap();
                    } else {
                        engine.publish_partial_update_async(update, &a).await.unwrap();
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    engine.wait_idle().await;
    let item = engine
        .get_item(&EntityKey::new(PK_A, "P#1"), &ctx("shop-a"))
        .await
        .unwrap()
        .unwrap();
    let keys = item.attributes.as_object().map_or(0, |o| o.len());
    assert_eq!(keys, 60, "every partial update survived");
    assert_eq!(item.version, 61);
}
