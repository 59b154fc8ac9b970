//! Input validation: bad keys and oversized items are typed errors and write nothing.

use serde_json::json;

use super::fixtures::{cmd, ctx, engine, n, PK_A};
use super::StorageFactory;
use crate::error::Error;
use crate::keys::{EntityKey, MAX_PK_BYTES, MAX_SK_BYTES};
use crate::model::CommandInput;
use crate::query::ListQuery;
use crate::services::{CommandService, DataService};

/// Empty keys, `@` in a sort key, a pk without tenant, oversized keys, an id
/// or tenant code that disagrees with the key: rejected before any write.
pub async fn invalid_keys_are_rejected_before_writing(factory: &dyn StorageFactory) {
    let engine = engine(factory).await;
    let a = ctx("shop-a");
    let long_pk = format!("TENANT#{}", "a".repeat(MAX_PK_BYTES));
    let long_sk = "s".repeat(MAX_SK_BYTES);
    let mut bad_id = cmd(PK_A, "P#1", n(1));
    bad_id.id = Some("TENANT#shop-a#P#2".into());
    type IsExpected = fn(&Error) -> bool;
    let cases: Vec<(CommandInput, IsExpected)> = vec![
        (cmd("", "P#1", n(1)), |e| matches!(e, Error::InvalidInput { .. })),
        (cmd(PK_A, "", n(1)), |e| matches!(e, Error::InvalidInput { .. })),
        (cmd(PK_A, "P#1@2", n(1)), |e| {
            matches!(e, Error::InvalidInput { .. })
        }),
        (cmd("TENANT", "P#1", n(1)), |e| {
            matches!(e, Error::InvalidInput { .. })
        }),
        (cmd(PK_A, "P##1", n(1)), |e| {
            matches!(e, Error::InvalidInput { .. })
        }),
        (cmd(&long_pk, "P#1", n(1)), |e| {
            matches!(e, Error::TooLarge { .. })
        }),
        (cmd(PK_A, &long_sk, n(1)), |e| matches!(e, Error::TooLarge { .. })),
        (bad_id, |e| matches!(e, Error::InvalidInput { .. })),
        (cmd(PK_A, "P#1", n(1)).code(""), |e| {
            matches!(e, Error::InvalidInput { .. })
        }),
    ];
    for (command, expected) in cases {
        let label = format!(
            "{}/{}",
            command.pk.chars().take(20).collect::<String>(),
            command.sk.chars().take(20).collect::<String>()
        );
        let err = engine.publish_sync(command.clone(), &a).await.unwrap_err();
        assert!(expected(&err), "sync {label}: {err:?}");
        let err = engine.publish_async(command, &a).await.unwrap_err();
        assert!(expected(&err), "async {label}: {err:?}");
    }
    let err = engine
        .get_item(&EntityKey::new(PK_A, "X@1"), &a)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "{err:?}");
    let page = engine.list_items(PK_A, ListQuery::new(), &a).await.unwrap();
    assert!(page.items.is_empty(), "nothing was written");
}

/// An item larger than the backend's limit is rejected; nothing is written.
pub async fn oversized_items_are_rejected(factory: &dyn StorageFactory) {
    let engine = engine(factory).await;
    let a = ctx("shop-a");
    let limit = engine.storage().limits().max_item_bytes;
    let huge = json!({ "blob": "x".repeat(limit) });
    for result in [
        engine
            .publish_sync(cmd(PK_A, "P#1", huge.clone()), &a)
            .await
            .map(|_| ()),
        engine
            .publish_async(cmd(PK_A, "P#1", huge.clone()), &a)
            .await
            .map(|_| ()),
        engine
            .commit(vec![cmd(PK_A, "P#2", n(1)), cmd(PK_A, "P#1", huge)], &a)
            .await
            .map(|_| ()),
    ] {
        match result {
            Err(Error::TooLarge { size, limit: l, .. }) => assert!(size > l && l == limit),
            other => panic!("expected too large, got {other:?}"),
        }
    }
    engine.wait_idle().await;
    let page = engine.list_items(PK_A, ListQuery::new(), &a).await.unwrap();
    assert!(page.items.is_empty(), "nothing was written");
    let fits = json!({ "blob": "x".repeat(limit / 2) });
    engine.publish_sync(cmd(PK_A, "P#3", fits), &a).await.unwrap();
}
