//! Tenant isolation, enforced by the framework.

use serde_json::json;

use super::fixtures::{builder, cmd, ctx, engine, n, RecordingHandler, PK_A, PK_B};
use super::StorageFactory;
use crate::context::TenancyPolicy;
use crate::error::{Error, Result};
use crate::handler::Interest;
use crate::keys::EntityKey;
use crate::model::{ExpectedVersion, PartialUpdate};
use crate::query::ListQuery;
use crate::sequence::SequenceRequest;
use crate::services::{CommandService, DataService, SequenceService};

fn assert_violation<T: std::fmt::Debug>(result: Result<T>) {
    match result {
        Err(Error::TenantViolation {
            caller_tenant,
            key_tenant,
        }) => {
            assert_eq!(
                (caller_tenant.as_str(), key_tenant.as_str()),
                ("shop-a", "shop-b")
            );
        }
        other => panic!("expected a tenant violation, got {other:?}"),
    }
}

/// A caller cannot write another tenant's keys, in any way; nothing is written.
pub async fn writes_to_another_tenant_are_rejected(factory: &dyn StorageFactory) {
    let engine = engine(factory).await;
    let (a, b) = (ctx("shop-a"), ctx("shop-b"));
    engine.publish_sync(cmd(PK_B, "P#1", n(1)), &b).await.unwrap();
    assert_violation(engine.publish_sync(cmd(PK_B, "P#2", n(1)), &a).await);
    assert_violation(engine.publish_async(cmd(PK_B, "P#2", n(1)), &a).await);
    let update = PartialUpdate::new(PK_B, "P#1", ExpectedVersion::Latest).attributes(json!({"n": 9}));
    assert_violation(engine.publish_partial_update_sync(update.clone(), &a).await);
    assert_violation(engine.publish_partial_update_async(update, &a).await);
    let mixed = vec![cmd(PK_A, "P#1", n(1)), cmd(PK_B, "P#3", n(1))];
    assert_violation(engine.commit(mixed, &a).await);
    // A tenant code that disagrees with the pk is not a way around it.
    let lying = cmd(PK_B, "P#4", n(1));
    let mut lying = lying;
    lying.tenant_code = Some("shop-a".into());
    assert_violation(engine.publish_sync(lying, &a).await);
    assert_violation(engine.reprocess(&EntityKey::new(PK_B, "P#1"), 1, &a).await);
    engine.wait_idle().await;

    let theirs = engine.list_items(PK_B, ListQuery::new(), &b).await.unwrap();
    assert_eq!(theirs.items.len(), 1, "nothing was written for shop-b");
    assert_eq!(theirs.items[0].version, 1);
    assert!(
        engine
            .get_item(&EntityKey::new(PK_A, "P#1"), &a)
            .await
            .unwrap()
            .is_none(),
        "the commit wrote nothing"
    );
}

/// A caller cannot read another tenant's data, commands or history.
pub async fn reads_of_another_tenant_are_rejected(factory: &dyn StorageFactory) {
    let engine = engine(factory).await;
    let (a, b) = (ctx("shop-a"), ctx("shop-b"));
    let item = engine
        .publish_sync(cmd(PK_B, "ORDER#1", n(1)), &b)
        .await
        .unwrap()
        .into_item();
    let key = item.key();
    assert_violation(engine.get_item(&key, &a).await);
    assert_violation(engine.list_items(PK_B, ListQuery::new(), &a).await);
    assert_violation(engine.list_history(&key, &a).await);
    assert_violation(engine.get_command(&key, 1, &a).await);
    assert_violation(engine.list_versions(&key, &a).await);
    assert_violation(
        engine
            .next(&SequenceRequest::new("ORDER").tenant("shop-b"), &a)
            .await,
    );
    assert_eq!(engine.get_item(&key, &b).await.unwrap(), Some(item));
}

/// The common tenant is shared; a cross-tenant role acts everywhere; a strict
/// policy allows neither.
pub async fn common_tenant_and_cross_tenant_roles(factory: &dyn StorageFactory) {
    let storage = factory.storage().await;
    let engine = crate::Engine::builder(storage.clone()).build();
    let a = ctx("shop-a");
    let common = engine
        .publish_sync(cmd("TENANT#common", "CATEGORY#1", n(1)), &a)
        .await
        .unwrap()
        .into_item();
    assert_eq!(common.tenant_code(), "common");
    assert!(engine
        .get_item(&common.key(), &ctx("shop-b"))
        .await
        .unwrap()
        .is_some());
    let admin = ctx("shop-a").with_roles(["system_admin"]);
    let theirs = engine
        .publish_sync(cmd(PK_B, "P#1", n(1)), &admin)
        .await
        .unwrap()
        .into_item();
    assert_eq!(theirs.tenant_code(), "shop-b");
    assert_eq!(
        engine
            .next(&SequenceRequest::new("ORDER").tenant("shop-b"), &admin)
            .await
            .unwrap()
            .no,
        1
    );

    let strict = crate::Engine::builder(storage)
        .tenancy(TenancyPolicy::strict())
        .build();
    let err = strict.get_item(&common.key(), &a).await.unwrap_err();
    assert!(matches!(err, Error::TenantViolation { .. }), "{err:?}");
    let err = strict
        .publish_sync(cmd(PK_B, "P#2", n(1)), &admin)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::TenantViolation { .. }), "{err:?}");
}

/// Failures are listed to their own tenant only (and to a cross-tenant role).
pub async fn failures_are_listed_per_tenant(factory: &dyn StorageFactory) {
    let broken = RecordingHandler::new("broken", Interest::All);
    broken.fail_next(u32::MAX);
    let engine = builder(factory).await.handler_arc(broken).build();
    let (a, b) = (ctx("shop-a"), ctx("shop-b"));
    engine.publish_sync(cmd(PK_A, "P#1", n(1)), &a).await.unwrap();
    engine.publish_sync(cmd(PK_B, "P#1", n(1)), &b).await.unwrap();
    engine.publish_sync(cmd(PK_B, "P#2", n(1)), &b).await.unwrap();
    assert_eq!(engine.list_failures(&a).await.unwrap().len(), 1);
    let theirs = engine.list_failures(&b).await.unwrap();
    assert_eq!(theirs.len(), 2);
    assert!(theirs.iter().all(|f| f.tenant_code == "shop-b"));
    let admin = ctx("shop-a").with_roles(["system_admin"]);
    assert_eq!(engine.list_failures(&admin).await.unwrap().len(), 3);
}
