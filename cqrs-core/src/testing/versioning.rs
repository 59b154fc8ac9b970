//! Versioning: creation, updates, conflicts, last-writer-wins, the dirty
//! check, partial updates, versions and history.

use serde_json::json;

use super::fixtures::{builder, cmd, cmd_at, ctx, engine, external_engine, n, RecordingHandler, PK_A};
use super::StorageFactory;
use crate::error::Error;
use crate::handler::Interest;
use crate::keys::EntityKey;
use crate::model::{CommandStatus, ExpectedVersion, PartialUpdate};
use crate::services::{CommandService, DataService};

fn assert_conflict(err: Error, expected: ExpectedVersion, actual: Option<u64>) {
    match err {
        Error::Conflict {
            expected: e,
            actual: a,
            ..
        } => {
            assert_eq!(e, expected, "expected version in the conflict");
            assert_eq!(a, actual, "actual version in the conflict");
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
}

/// Version 0 creates version 1, with every field and audit field filled.
pub async fn create_and_read_back(factory: &dyn StorageFactory) {
    let engine = engine(factory).await;
    let ctx = ctx("shop-a").with_source("test");
    let input = cmd(PK_A, "PRODUCT#PRD-001", json!({"price": 2999})).name("Mouse");
    let item = engine.publish_sync(input, &ctx).await.unwrap().written().unwrap();
    assert_eq!(item.version, 1);
    assert_eq!(item.id(), "TENANT#shop-a#PRODUCT#PRD-001");
    assert_eq!(item.tenant_code(), "shop-a");
    assert_eq!((item.code.as_str(), item.name.as_str()), ("PRD-001", "Mouse"));
    assert_eq!(item.entity_type, "PRODUCT");
    assert_eq!((item.cpk(), item.csk().as_str()), (PK_A, "PRODUCT#PRD-001@1"));
    assert_eq!(item.created_by, "user-1");
    assert_eq!(item.created_ip.as_deref(), Some("192.0.2.1"));
    assert_eq!(item.request_id, ctx.request_id);
    assert_eq!(item.created_at, item.updated_at);

    let key = item.key();
    let read = engine.get_item(&key, &ctx).await.unwrap().unwrap();
    assert_eq!(read, item);
    let command = engine.get_command(&key, 1, &ctx).await.unwrap().unwrap();
    assert_eq!(command.version, 1);
    assert_eq!(command.attributes, json!({"price": 2999}));
    assert_eq!(command.source.as_deref(), Some("test"));
    // No handler is interested: the command is done once written.
    assert_eq!(command.status, CommandStatus::Finished);
    assert_eq!(command.command_sk(), "PRODUCT#PRD-001@1");
    assert!(engine.get_command(&key, 2, &ctx).await.unwrap().is_none());
    assert!(engine
        .get_item(&EntityKey::new(PK_A, "PRODUCT#NONE"), &ctx)
        .await
        .unwrap()
        .is_none());
}

/// Creating an existing entity is a conflict carrying the actual version.
pub async fn create_twice_conflicts(factory: &dyn StorageFactory) {
    let engine = engine(factory).await;
    let ctx = ctx("shop-a");
    engine.publish_sync(cmd(PK_A, "P#1", n(1)), &ctx).await.unwrap();
    let err = engine
        .publish_sync(cmd(PK_A, "P#1", n(2)), &ctx)
        .await
        .unwrap_err();
    assert_conflict(err, ExpectedVersion::NEW, Some(1));
    let err = engine
        .publish_async(cmd(PK_A, "P#1", n(2)), &ctx)
        .await
        .unwrap_err();
    assert!(err.is_conflict(), "{err:?}");
    let key = EntityKey::new(PK_A, "P#1");
    assert_eq!(
        engine.get_item(&key, &ctx).await.unwrap().unwrap().attributes,
        n(1)
    );
    assert_eq!(engine.list_versions(&key, &ctx).await.unwrap().len(), 1);
}

/// Version N updates an entity at N to N+1, keeping the superseded version in
/// history and the creation audit fields.
pub async fn update_at_current_version(factory: &dyn StorageFactory) {
    let engine = engine(factory).await;
    let creator = ctx("shop-a");
    let v1 = engine
        .publish_sync(cmd(PK_A, "P#1", n(1)), &creator)
        .await
        .unwrap()
        .into_item();
    let updater = crate::InvocationContext::new("shop-a", "user-2");
    let v2 = engine
        .publish_sync(cmd_at(PK_A, "P#1", 1, n(2)), &updater)
        .await
        .unwrap()
        .into_item();
    assert_eq!(v2.version, 2);
    assert_eq!(v2.attributes, n(2));
    assert_eq!(v2.csk(), "P#1@2");
    assert_eq!((v2.created_by.as_str(), v2.created_at), ("user-1", v1.created_at));
    assert_eq!(v2.updated_by, "user-2");
    assert_eq!(v2.updated_ip, None);
    let history = engine.list_history(&v2.key(), &creator).await.unwrap();
    assert_eq!(history, vec![v1]);
}

/// A stale, a future and a missing-entity version are conflicts; nothing is written.
pub async fn stale_and_future_versions_conflict(factory: &dyn StorageFactory) {
    let engine = engine(factory).await;
    let ctx = ctx("shop-a");
    let key = EntityKey::new(PK_A, "P#1");
    engine.publish_sync(cmd(PK_A, "P#1", n(1)), &ctx).await.unwrap();
    engine
        .publish_sync(cmd_at(PK_A, "P#1", 1, n(2)), &ctx)
        .await
        .unwrap();
    for (expected, mode) in [(1, "stale"), (5, "future")] {
        let err = engine
            .publish_sync(cmd_at(PK_A, "P#1", expected, n(9)), &ctx)
            .await
            .unwrap_err();
        assert_conflict(err, ExpectedVersion::Exactly(expected), Some(2));
        let err = engine
            .publish_async(cmd_at(PK_A, "P#1", expected, n(9)), &ctx)
            .await
            .unwrap_err();
        assert!(err.is_conflict(), "{mode} async: {err:?}");
    }
    let err = engine
        .publish_sync(cmd_at(PK_A, "P#MISSING", 3, n(1)), &ctx)
        .await
        .unwrap_err();
    assert_conflict(err, ExpectedVersion::Exactly(3), None);
    let err = engine
        .publish_async(cmd_at(PK_A, "P#MISSING", 3, n(1)), &ctx)
        .await
        .unwrap_err();
    assert_conflict(err, ExpectedVersion::Exactly(3), None);
    engine.wait_idle().await;
    let item = engine.get_item(&key, &ctx).await.unwrap().unwrap();
    assert_eq!((item.version, item.attributes), (2, n(2)));
    assert_eq!(engine.list_versions(&key, &ctx).await.unwrap().len(), 2);
    let missing = EntityKey::new(PK_A, "P#MISSING");
    assert!(engine.list_versions(&missing, &ctx).await.unwrap().is_empty());
}

/// `Latest` applies on top of whatever version is current.
pub async fn latest_is_last_writer_wins(factory: &dyn StorageFactory) {
    let engine = engine(factory).await;
    let ctx = ctx("shop-a");
    let latest = |v| cmd(PK_A, "P#1", n(v)).version(ExpectedVersion::Latest);
    assert_eq!(
        engine
            .publish_sync(latest(1), &ctx)
            .await
            .unwrap()
            .into_item()
            .version,
        1
    );
    assert_eq!(
        engine
            .publish_sync(latest(2), &ctx)
            .await
            .unwrap()
            .into_item()
            .version,
        2
    );
    let record = engine
        .publish_async(latest(3), &ctx)
        .await
        .unwrap()
        .written()
        .unwrap();
    assert_eq!(record.version, 3);
    engine.wait_idle().await;
    let item = engine
        .get_item(&EntityKey::new(PK_A, "P#1"), &ctx)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((item.version, item.attributes), (3, n(3)));
}

/// Async publishes store the command (status `published`) and the background
/// processor applies it; the version rules are the same.
pub async fn async_publish_follows_the_same_rules(factory: &dyn StorageFactory) {
    let engine = engine(factory).await;
    let ctx = ctx("shop-a");
    let key = EntityKey::new(PK_A, "P#1");
    let record = engine
        .publish_async(cmd(PK_A, "P#1", n(1)), &ctx)
        .await
        .unwrap()
        .written()
        .unwrap();
    assert_eq!((record.version, record.status), (1, CommandStatus::Published));
    assert_eq!(record.request_id, ctx.request_id);
    engine.wait_idle().await;
    let item = engine.get_item(&key, &ctx).await.unwrap().unwrap();
    assert_eq!((item.version, item.attributes.clone()), (1, n(1)));
    let applied = engine.get_command(&key, 1, &ctx).await.unwrap().unwrap();
    assert_eq!(applied.status, CommandStatus::Applied);

    let v2 = engine
        .publish_async(cmd_at(PK_A, "P#1", 1, n(2)), &ctx)
        .await
        .unwrap()
        .written()
        .unwrap();
    assert_eq!(v2.version, 2);
    let err = engine
        .publish_async(cmd_at(PK_A, "P#1", 1, n(3)), &ctx)
        .await
        .unwrap_err();
    assert_conflict(err, ExpectedVersion::Exactly(1), Some(2));
    engine.wait_idle().await;
    let item = engine.get_item(&key, &ctx).await.unwrap().unwrap();
    assert_eq!((item.version, item.attributes), (2, n(2)));
}

/// A command stored by an async publish but not yet applied owns its version:
/// a sync publish of the same version conflicts until it is applied.
pub async fn sync_publish_conflicts_with_pending_async_command(factory: &dyn StorageFactory) {
    let handler = RecordingHandler::new("h", Interest::All);
    let engine = external_engine(factory, handler.clone()).await;
    let ctx = ctx("shop-a");
    let key = EntityKey::new(PK_A, "P#1");
    engine.publish_async(cmd(PK_A, "P#1", n(1)), &ctx).await.unwrap();
    assert!(
        engine.get_item(&key, &ctx).await.unwrap().is_none(),
        "external dispatch must not apply"
    );
    let err = engine
        .publish_sync(cmd(PK_A, "P#1", n(2)), &ctx)
        .await
        .unwrap_err();
    assert_conflict(err, ExpectedVersion::NEW, Some(1));
    assert_eq!(engine.process(&key, 1).await.unwrap(), CommandStatus::Finished);
    let item = engine.get_item(&key, &ctx).await.unwrap().unwrap();
    assert_eq!((item.version, item.attributes), (1, n(1)));
    assert_eq!(handler.seen(), vec![("P#1".into(), 1)]);
}

/// A command equal to the current state writes nothing and says so.
pub async fn dirty_check_writes_nothing(factory: &dyn StorageFactory) {
    let handler = RecordingHandler::new("h", Interest::All);
    let engine = builder(factory).await.handler_arc(handler.clone()).build();
    let ctx = ctx("shop-a");
    let key = EntityKey::new(PK_A, "P#1");
    let v1 = engine
        .publish_sync(cmd(PK_A, "P#1", n(1)), &ctx)
        .await
        .unwrap()
        .into_item();
    let again = engine
        .publish_sync(cmd_at(PK_A, "P#1", 1, n(1)), &ctx)
        .await
        .unwrap();
    assert!(again.is_unchanged());
    assert_eq!(again.into_item(), v1);
    let again = engine
        .publish_async(cmd_at(PK_A, "P#1", 1, n(1)), &ctx)
        .await
        .unwrap();
    assert!(again.is_unchanged());
    assert_eq!(again.into_inner().version, 1);
    let same_latest = cmd(PK_A, "P#1", n(1)).version(ExpectedVersion::Latest);
    assert!(engine
        .publish_sync(same_latest, &ctx)
        .await
        .unwrap()
        .is_unchanged());
    // Equal to version 1 but expecting it while version 2 exists: stale, not unchanged.
    let v2 = engine
        .publish_sync(cmd_at(PK_A, "P#1", 1, n(2)), &ctx)
        .await
        .unwrap()
        .into_item();
    let stale_equal = cmd_at(PK_A, "P#1", 1, n(1));
    assert!(engine
        .publish_sync(stale_equal.clone(), &ctx)
        .await
        .unwrap_err()
        .is_conflict());
    assert!(engine
        .publish_async(stale_equal, &ctx)
        .await
        .unwrap_err()
        .is_conflict());
    let back = cmd_at(PK_A, "P#1", 2, n(1));
    let v1 = engine.publish_sync(back, &ctx).await.unwrap().into_item();
    assert_eq!((v2.version, v1.version), (2, 3));
    // A different name is a change.
    let renamed = cmd_at(PK_A, "P#1", 3, n(1)).name("other");
    let v4 = engine.publish_sync(renamed, &ctx).await.unwrap().into_item();
    assert_eq!(v4.version, 4);
    engine.wait_idle().await;
    assert_eq!(engine.list_versions(&key, &ctx).await.unwrap().len(), 4);
    assert_eq!(engine.list_history(&key, &ctx).await.unwrap().len(), 3);
    assert_eq!(handler.seen().len(), 4, "handlers run only for written versions");
}

/// Partial updates deep-merge over the latest state, sync and async.
pub async fn partial_update_deep_merges(factory: &dyn StorageFactory) {
    let engine = engine(factory).await;
    let ctx = ctx("shop-a");
    let key = EntityKey::new(PK_A, "ORDER#1");
    let original = json!({"status": "pending", "address": {"city": "Tokyo", "zip": "100"}, "items": [1, 2], "note": "x"});
    engine
        .publish_sync(cmd(PK_A, "ORDER#1", original), &ctx)
        .await
        .unwrap();

    let patch = json!({"status": "confirmed", "address": {"zip": "101"}, "items": [3], "note": null});
    let update = PartialUpdate::new(PK_A, "ORDER#1", ExpectedVersion::Exactly(1)).attributes(patch.clone());
    let v2 = engine
        .publish_partial_update_sync(update, &ctx)
        .await
        .unwrap()
        .into_item();
    assert_eq!(v2.version, 2);
    assert_eq!(
        v2.attributes,
        json!({"status": "confirmed", "address": {"city": "Tokyo", "zip": "101"}, "items": [3]})
    );

    let stale = PartialUpdate::new(PK_A, "ORDER#1", ExpectedVersion::Exactly(1)).attributes(json!({"x": 1}));
    assert_conflict(
        engine
            .publish_partial_update_sync(stale.clone(), &ctx)
            .await
            .unwrap_err(),
        ExpectedVersion::Exactly(1),
        Some(2),
    );
    assert!(engine
        .publish_partial_update_async(stale, &ctx)
        .await
        .unwrap_err()
        .is_conflict());

    let missing = PartialUpdate::new(PK_A, "ORDER#404", ExpectedVersion::Latest).attributes(json!({"x": 1}));
    assert!(engine
        .publish_partial_update_sync(missing.clone(), &ctx)
        .await
        .unwrap_err()
        .is_not_found());
    assert!(engine
        .publish_partial_update_async(missing, &ctx)
        .await
        .unwrap_err()
        .is_not_found());

    let same = PartialUpdate::new(PK_A, "ORDER#1", ExpectedVersion::Exactly(2))
        .attributes(json!({"status": "confirmed"}));
    assert!(engine
        .publish_partial_update_sync(same, &ctx)
        .await
        .unwrap()
        .is_unchanged());

    let later = PartialUpdate::new(PK_A, "ORDER#1", ExpectedVersion::Latest)
        .attributes(json!({"address": {"city": "Osaka"}}))
        .name("renamed");
    let v3 = engine
        .publish_partial_update_async(later, &ctx)
        .await
        .unwrap()
        .written()
        .unwrap();
    assert_eq!(v3.version, 3);
    engine.wait_idle().await;
    let item = engine.get_item(&key, &ctx).await.unwrap().unwrap();
    assert_eq!(item.version, 3);
    assert_eq!(item.name, "renamed");
    assert_eq!(item.attributes["address"], json!({"city": "Osaka", "zip": "101"}));
    assert_eq!(item.attributes["status"], "confirmed");
}

/// Every version is listed, and every superseded data version is in history.
pub async fn versions_and_history_are_complete(factory: &dyn StorageFactory) {
    let engine = engine(factory).await;
    let ctx = ctx("shop-a");
    let key = EntityKey::new(PK_A, "P#1");
    engine.publish_sync(cmd(PK_A, "P#1", n(1)), &ctx).await.unwrap();
    for v in 1..5 {
        engine
            .publish_sync(cmd_at(PK_A, "P#1", v, n(v + 1)), &ctx)
            .await
            .unwrap();
    }
    let versions = engine.list_versions(&key, &ctx).await.unwrap();
    let seen: Vec<_> = versions
        .iter()
        .map(|c| (c.version, c.attributes.clone()))
        .collect();
    assert_eq!(seen, (1..=5).map(|v| (v, n(v))).collect::<Vec<_>>());
    let history = engine.list_history(&key, &ctx).await.unwrap();
    let seen: Vec<_> = history
        .iter()
        .map(|h| (h.version, h.attributes.clone(), h.csk()))
        .collect();
    let expected: Vec<_> = (1..=4).map(|v| (v, n(v), format!("P#1@{v}"))).collect();
    assert_eq!(seen, expected);
    let third = engine.get_command(&key, 3, &ctx).await.unwrap().unwrap();
    assert_eq!(third.attributes, n(3));
}

/// With the async dirty check off, an async publish reads nothing: an equal
/// command becomes a new version, and the version rules still hold.
pub async fn async_publish_without_dirty_check(factory: &dyn StorageFactory) {
    let engine = builder(factory).await.async_dirty_check(false).build();
    let ctx = ctx("shop-a");
    let key = EntityKey::new(PK_A, "P#1");
    engine.publish_async(cmd(PK_A, "P#1", n(1)), &ctx).await.unwrap();
    let again = engine
        .publish_async(cmd_at(PK_A, "P#1", 1, n(1)), &ctx)
        .await
        .unwrap();
    assert_eq!(again.written().map(|r| r.version), Some(2));
    let err = engine
        .publish_async(cmd_at(PK_A, "P#1", 1, n(3)), &ctx)
        .await
        .unwrap_err();
    assert_conflict(err, ExpectedVersion::Exactly(1), Some(2));
    let err = engine
        .publish_async(cmd_at(PK_A, "P#1", 7, n(3)), &ctx)
        .await
        .unwrap_err();
    assert_conflict(err, ExpectedVersion::Exactly(7), Some(2));
    engine.wait_idle().await;
    let item = engine.get_item(&key, &ctx).await.unwrap().unwrap();
    assert_eq!((item.version, item.attributes), (2, n(1)));
}
