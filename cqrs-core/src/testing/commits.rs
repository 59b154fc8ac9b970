//! All-or-nothing commits over several entities.

use super::fixtures::{builder, cmd, cmd_at, ctx, engine, n, RecordingHandler, PK_A};
use super::StorageFactory;
use crate::error::Error;
use crate::handler::Interest;
use crate::keys::EntityKey;
use crate::model::{CommandInput, ExpectedVersion};
use crate::services::{CommandService, DataService};

/// Every command of a commit is applied, at its own version, and handled.
pub async fn commit_applies_every_command(factory: &dyn StorageFactory) {
    let handler = RecordingHandler::new("h", Interest::All);
    let engine = builder(factory).await.handler_arc(handler.clone()).build();
    let a = ctx("shop-a");
    let created = engine
        .commit(
            (1..=3)
                .map(|i| cmd(PK_A, &format!("INVENTORY#{i}"), n(10)))
                .collect(),
            &a,
        )
        .await
        .unwrap();
    assert_eq!(created.len(), 3);
    assert!(created.iter().all(|p| p.get().version == 1));
    let updated = engine
        .commit(
            vec![
                cmd_at(PK_A, "INVENTORY#1", 1, n(9)),
                cmd_at(PK_A, "INVENTORY#2", 1, n(8)),
                cmd_at(PK_A, "INVENTORY#3", 1, n(10)),
            ],
            &a,
        )
        .await
        .unwrap();
    assert_eq!(
        updated.iter().map(|p| p.get().version).collect::<Vec<_>>(),
        [2, 2, 1]
    );
    assert!(updated[2].is_unchanged(), "an unchanged member is left out");
    for (i, expected) in [(1, n(9)), (2, n(8)), (3, n(10))] {
        let key = EntityKey::new(PK_A, format!("INVENTORY#{i}"));
        assert_eq!(
            engine.get_item(&key, &a).await.unwrap().unwrap().attributes,
            expected
        );
    }
    assert_eq!(
        engine
            .list_history(&EntityKey::new(PK_A, "INVENTORY#1"), &a)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(handler.seen().len(), 5);
    assert!(engine.commit(Vec::new(), &a).await.unwrap().is_empty());
}

/// One stale member fails the whole commit: no entity changes, no command
/// row, no history row is written.
pub async fn commit_is_all_or_nothing(factory: &dyn StorageFactory) {
    let handler = RecordingHandler::new("h", Interest::All);
    let engine = builder(factory).await.handler_arc(handler.clone()).build();
    let a = ctx("shop-a");
    engine.publish_sync(cmd(PK_A, "A#1", n(1)), &a).await.unwrap();
    engine.publish_sync(cmd(PK_A, "B#1", n(1)), &a).await.unwrap();
    let attempts = [
        vec![cmd_at(PK_A, "A#1", 1, n(2)), cmd_at(PK_A, "B#1", 0, n(2))],
        vec![
            cmd_at(PK_A, "A#1", 1, n(2)),
            cmd(PK_A, "C#1", n(1)),
            cmd_at(PK_A, "B#1", 7, n(2)),
        ],
        vec![cmd(PK_A, "C#1", n(1)), cmd(PK_A, "A#1", n(2))],
    ];
    for commit in attempts {
        let err = engine.commit(commit, &a).await.unwrap_err();
        assert!(err.is_conflict(), "{err:?}");
    }
    for sk in ["A#1", "B#1"] {
        let key = EntityKey::new(PK_A, sk);
        let item = engine.get_item(&key, &a).await.unwrap().unwrap();
        assert_eq!((item.version, item.attributes), (1, n(1)));
        assert_eq!(engine.list_versions(&key, &a).await.unwrap().len(), 1);
        assert!(engine.list_history(&key, &a).await.unwrap().is_empty());
    }
    let c = EntityKey::new(PK_A, "C#1");
    assert!(engine.get_item(&c, &a).await.unwrap().is_none());
    assert!(engine.list_versions(&c, &a).await.unwrap().is_empty());
    assert_eq!(handler.seen().len(), 2, "no handler ran for a failed commit");
}

/// A commit must fit one transaction (3 rows per command) and name each entity once.
pub async fn commit_limits(factory: &dyn StorageFactory) {
    let engine = engine(factory).await;
    let a = ctx("shop-a");
    let limits = engine.storage().limits();
    let fitting = limits.max_transaction_items / limits.rows_per_command;
    let batch = |count: usize, prefix: &str| -> Vec<CommandInput> {
        (0..count)
            .map(|i| cmd(PK_A, &format!("{prefix}#{i}"), n(1)))
            .collect()
    };
    let err = engine.commit(batch(fitting + 1, "BIG"), &a).await.unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err:?}");
    assert!(engine
        .get_item(&EntityKey::new(PK_A, "BIG#0"), &a)
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        engine.commit(batch(fitting, "FIT"), &a).await.unwrap().len(),
        fitting
    );
    let twice = vec![
        cmd(PK_A, "D#1", n(1)),
        cmd(PK_A, "D#1", n(2)).version(ExpectedVersion::Latest),
    ];
    assert!(matches!(
        engine.commit(twice, &a).await.unwrap_err(),
        Error::InvalidInput { .. }
    ));
    assert!(engine
        .get_item(&EntityKey::new(PK_A, "D#1"), &a)
        .await
        .unwrap()
        .is_none());
}
