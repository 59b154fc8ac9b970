//! [`Services`](crate::Services): read-your-writes, read-modify-write under
//! contention, and handlers that reach their engine without keeping it alive.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;

use super::fixtures::{cmd, cmd_at, ctx, engine, external_engine, n, PK_A};
use super::{RecordingHandler, StorageFactory};
use crate::engine::{Engine, RetryPolicy};
use crate::error::{BoxError, Error};
use crate::handle::Services;
use crate::handler::{DataSyncEvent, DataSyncHandler, Interest};
use crate::keys::EntityKey;
use crate::model::{CommandInput, DataItem, Updated};
use crate::services::{CommandService, DataService};

/// Generous retries, so that a contention check counts lost updates, not
/// retries running out.
fn patient() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 200,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(20),
    }
}

fn counter(item: Option<&DataItem>) -> u64 {
    item.and_then(|i| i.attributes["n"].as_u64()).unwrap_or(0)
}

/// `get_latest` lays an entity's published, not yet applied commands over
/// its data row — past version 9, where `@10` sorts before `@9` — and is the
/// data row once they are applied.
pub async fn read_your_writes_sees_pending_commands(factory: &dyn StorageFactory) {
    let engine = external_engine(factory, RecordingHandler::new("h", Interest::All)).await;
    let a = ctx("shop-a");
    let key = EntityKey::new(PK_A, "ORDER#1");
    assert_eq!(engine.get_latest(&key, &a).await.expect("absent"), None);
    // Pending creation: no data row yet.
    engine
        .publish_async(cmd(PK_A, "ORDER#1", n(1)), &a)
        .await
        .expect("create");
    assert_eq!(engine.get_item(&key, &a).await.expect("data"), None);
    let pending = engine
        .get_latest(&key, &a)
        .await
        .expect("latest")
        .expect("pending creation");
    assert_eq!((pending.version, counter(Some(&pending))), (1, 1));
    engine.process(&key, 1).await.expect("apply");
    for v in 1..12 {
        engine
            .publish_sync(cmd_at(PK_A, "ORDER#1", v, n(v + 1)), &a)
            .await
            .expect("sync");
    }
    let applied = engine.get_item(&key, &a).await.expect("data").expect("applied");
    assert_eq!(applied.version, 12);
    assert_eq!(
        engine.get_latest(&key, &a).await.expect("latest"),
        Some(applied.clone())
    );
    for v in 12..15 {
        engine
            .publish_async(cmd_at(PK_A, "ORDER#1", v, n(v + 1)), &a)
            .await
            .expect("async");
    }
    let latest = engine.get_latest(&key, &a).await.expect("latest").expect("item");
    assert_eq!((latest.version, counter(Some(&latest))), (15, 15));
    assert_eq!(latest.csk(), "ORDER#1@15");
    assert_eq!(
        (latest.created_at, &latest.created_by),
        (applied.created_at, &applied.created_by)
    );
    assert_eq!(
        engine.get_item(&key, &a).await.expect("data").map(|i| i.version),
        Some(12)
    );
    engine.process(&key, 15).await.expect("apply");
    let applied = engine.get_item(&key, &a).await.expect("data");
    assert_eq!(engine.get_latest(&key, &a).await.expect("latest"), applied);
    let error = engine
        .get_latest(&key, &ctx("shop-b"))
        .await
        .expect_err("another tenant's entity");
    assert!(matches!(error, Error::TenantViolation { .. }), "{error}");
}

/// Two async read-modify-writes in a row see each other before the
/// pipeline applied the first; a sync one waits for a pending creation
/// instead of deciding on "absent".
pub async fn updates_see_pending_commands(factory: &dyn StorageFactory) {
    let engine = external_engine(factory, RecordingHandler::new("h", Interest::All)).await;
    let services = engine.services();
    let a = ctx("shop-a");
    let key = EntityKey::new(PK_A, "COUNTER#1");
    let bump = |current: Option<&DataItem>| {
        let next = CommandInput::new(PK_A, "COUNTER#1").attributes(n(counter(current) + 1));
        Ok::<_, Error>(Some(next))
    };
    for expected in 1..=3 {
        let published = services
            .update_with_async(&key, &a, bump)
            .await
            .expect("bump")
            .written()
            .expect("written");
        assert_eq!(
            (published.version, counter(Some(&published))),
            (expected, expected)
        );
    }
    assert_eq!(
        engine.get_item(&key, &a).await.expect("data"),
        None,
        "nothing applied yet"
    );

    let pending = EntityKey::new(PK_A, "COUNTER#2");
    engine
        .publish_async(cmd(PK_A, "COUNTER#2", n(10)), &a)
        .await
        .expect("create");
    let saw_absent = Arc::new(AtomicBool::new(false));
    let update = tokio::spawn({
        let (services, a, pending, saw_absent) =
            (services.clone(), a.clone(), pending.clone(), saw_absent.clone());
        async move {
            services
                .update(&pending)
                .retry(patient())
                .publish_sync(&a, move |current| {
                    saw_absent.fetch_or(current.is_none(), Ordering::SeqCst);
                    Ok::<_, Error>(Some(
                        CommandInput::new(PK_A, "COUNTER#2").attributes(n(counter(current) + 1)),
                    ))
                })
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    engine.process(&pending, 1).await.expect("apply the creation");
    let updated = update
        .await
        .expect("task")
        .expect("update")
        .written()
        .expect("written");
    assert_eq!((updated.version, counter(Some(&updated))), (2, 11));
    assert!(
        !saw_absent.load(Ordering::SeqCst),
        "the closure never saw the entity absent"
    );
}

/// Sixteen concurrent read-modify-writes of one counter: every increment
/// lands exactly once.
pub async fn concurrent_updates_lose_nothing(factory: &dyn StorageFactory) {
    let engine = engine(factory).await;
    let services = engine.services().with_conflict_retry(patient());
    let a = ctx("shop-a");
    let key = EntityKey::new(PK_A, "COUNTER#1");
    engine
        .publish_sync(cmd(PK_A, "COUNTER#1", n(0)), &a)
        .await
        .expect("create");
    let tasks = (0..16).map(|_| {
        let (services, a, key) = (services.clone(), a.clone(), key.clone());
        tokio::spawn(async move {
            services
                .update_with(&key, &a, |current| {
                    let item = current.ok_or_else(|| Error::not_found(&key))?;
                    Ok::<_, Error>(Some(
                        CommandInput::update_of(item).attributes(n(counter(Some(item)) + 1)),
                    ))
                })
                .await
        })
    });
    for outcome in futures::future::join_all(tasks).await {
        assert!(outcome.expect("task").expect("update").is_written());
    }
    let item = engine.get_item(&key, &a).await.expect("read").expect("item");
    assert_eq!((item.version, counter(Some(&item))), (17, 16));
}

/// Concurrent transfers between two accounts with `commit_with`: the total
/// is kept and every transfer lands once.
pub async fn concurrent_commit_with_keeps_totals(factory: &dyn StorageFactory) {
    let engine = engine(factory).await;
    let services = engine.services().with_conflict_retry(patient());
    let a = ctx("shop-a");
    let keys = [
        EntityKey::new(PK_A, "ACCOUNT#A"),
        EntityKey::new(PK_A, "ACCOUNT#B"),
    ];
    for key in &keys {
        engine
            .publish_sync(cmd(PK_A, &key.sk, n(100)), &a)
            .await
            .expect("open");
    }
    let tasks = (0..12).map(|i| {
        let (services, a, keys) = (services.clone(), a.clone(), keys.clone());
        tokio::spawn(async move {
            let (from, to) = if i % 2 == 0 { (0, 1) } else { (1, 0) };
            services
                .commit_with(&keys, &a, |items| {
                    let [Some(source), Some(target)] = [&items[from], &items[to]] else {
                        return Err(Error::invalid("account", "missing"));
                    };
                    Ok(vec![
                        CommandInput::update_of(source).attributes(n(counter(Some(source)) - 5)),
                        CommandInput::update_of(target).attributes(n(counter(Some(target)) + 5)),
                    ])
                })
                .await
        })
    });
    for outcome in futures::future::join_all(tasks).await {
        assert_eq!(outcome.expect("task").expect("transfer").len(), 2);
    }
    let mut total = 0;
    let mut versions = 0;
    for key in &keys {
        let item = engine.get_item(key, &a).await.expect("read").expect("account");
        total += counter(Some(&item));
        versions += item.version;
    }
    assert_eq!(total, 200, "money is neither made nor lost");
    assert_eq!(versions, 2 + 2 * 12, "each transfer wrote each account once");
}

/// The closure decides: skip writes nothing, refusing returns its error and
/// writes nothing, a command for another entity is refused.
pub async fn updates_skip_and_refuse(factory: &dyn StorageFactory) {
    let engine = engine(factory).await;
    let services = engine.services();
    let a = ctx("shop-a");
    let key = EntityKey::new(PK_A, "ORDER#1");
    let skipped = services
        .update_with(&key, &a, |_| Ok::<_, Error>(None))
        .await
        .expect("skip");
    assert_eq!(skipped, Updated::Skipped(None), "skipping an absent entity");
    let created = engine
        .publish_sync(cmd(PK_A, "ORDER#1", n(1)), &a)
        .await
        .expect("create")
        .into_item();
    let skipped = services
        .update_with(&key, &a, |_| Ok::<_, Error>(None))
        .await
        .expect("skip");
    assert_eq!(skipped, Updated::Skipped(Some(created)));
    let refused = services
        .update_with(&key, &a, |_| {
            Err::<Option<CommandInput>, _>(Error::invalid("order", "refused"))
        })
        .await;
    assert!(matches!(refused, Err(Error::InvalidInput { .. })));
    let elsewhere = services
        .update_with(&key, &a, |_| Ok::<_, Error>(Some(cmd(PK_A, "ORDER#2", n(2)))))
        .await;
    assert!(
        matches!(elsewhere, Err(Error::InvalidInput { .. })),
        "{elsewhere:?}"
    );
    let versions = engine.list_versions(&key, &a).await.expect("versions").len()
        + engine
            .list_versions(&EntityKey::new(PK_A, "ORDER#2"), &a)
            .await
            .expect("versions")
            .len();
    assert_eq!(versions, 1, "nothing written");
}

/// Projects orders into a summary row through the services of the engine
/// it is registered on.
struct Projector {
    services: Services,
}

#[async_trait]
impl DataSyncHandler for Projector {
    fn name(&self) -> &str {
        "projector"
    }

    fn interest(&self) -> Interest {
        Interest::SkPrefix("ORDER#".into())
    }

    async fn handle(&self, event: &DataSyncEvent) -> Result<(), BoxError> {
        let key = EntityKey::new(event.command.pk.clone(), "SUMMARY#orders");
        let version = event.command.version;
        self.services
            .update_with(&key, &event.context, |current| {
                let mut summary = current.map_or_else(|| json!({}), |i| i.attributes.clone().into_value());
                summary[event.command.code.as_str()] = json!(version);
                Ok::<_, Error>(Some(CommandInput::new(&key.pk, &key.sk).attributes(summary)))
            })
            .await?;
        Ok(())
    }
}

/// A handler built with `handler_with` uses its engine's services, and
/// dropping the engine frees it: no reference cycle keeps it (and its
/// storage) alive.
pub async fn handlers_reach_their_engine_without_keeping_it_alive(factory: &dyn StorageFactory) {
    let storage = factory.storage().await;
    let held = Arc::downgrade(&storage);
    let engine = Engine::builder(storage)
        .handler_with(|services| Projector {
            services: services.clone(),
        })
        .build();
    let a = ctx("shop-a");
    engine
        .publish_sync(cmd(PK_A, "ORDER#1", n(1)), &a)
        .await
        .expect("sync");
    engine
        .publish_async(cmd(PK_A, "ORDER#2", n(1)), &a)
        .await
        .expect("async");
    engine.wait_idle().await;
    let summary = engine
        .get_item(&EntityKey::new(PK_A, "SUMMARY#orders"), &a)
        .await
        .expect("read")
        .expect("projected");
    assert_eq!(summary.attributes, json!({ "1": 1, "2": 1 }));
    drop(engine);
    // The processor's last task lets go of the pipeline just after it is idle.
    for _ in 0..100 {
        if held.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the engine's storage is still held after the engine was dropped: a reference cycle");
}
