//! Writes whose first attempt landed unseen and whose retry then failed on
//! the row that attempt stored — the AWS SDK retrying a conditional write
//! that timed out during a pause of DynamoDB. The publish is answered as
//! the success it was, never as a conflict; a real conflict stays one.

use std::sync::Arc;

use super::fixtures::{cmd, cmd_at, ctx, fast_retry, n, RecordingHandler, PK_A};
use super::{Fault, FaultyStorage, Op, Rule, StorageFactory};
use crate::engine::Engine;
use crate::handler::Interest;
use crate::keys::EntityKey;
use crate::services::{CommandService, DataService};

/// Every write path — an async publish (create, and update), a sync
/// publish with and without handlers (create, and update), a commit — made
/// twice by its storage client, its first attempt landing: answered as
/// written, applied once, handled once. An async create of a key another
/// publish holds, made twice the same way, is still a conflict.
pub async fn writes_retried_after_landing_are_answered_as_written(factory: &dyn StorageFactory) {
    let storage = Arc::new(FaultyStorage::new(factory.storage().await));
    let handler = RecordingHandler::new("h", Interest::SkPrefix("HANDLED#".into()));
    let engine = Engine::builder(storage.clone())
        .retry(fast_retry())
        .handler_arc(handler.clone())
        .build();
    let a = ctx("shop-a");
    let retried_once = |op: Op| {
        storage.inject(Rule::new(Fault::RetriedAfterLanding).on(&[op]).times(1));
    };

    // The path of `POST /orders`: an async create of a fresh key, then an update.
    for (version, expected) in [(0, 1), (1, 2)] {
        retried_once(Op::PutCommand);
        let published = engine
            .publish_async(cmd_at(PK_A, "ORDER#ASYNC", version, n(expected)), &a)
            .await
            .unwrap_or_else(|e| panic!("async v{expected}: its write landed, yet: {e}"));
        assert!(!published.is_unchanged());
        assert_eq!(published.get().version, expected);
    }
    assert_eq!(storage.faults(Op::PutCommand), 2, "both writes were made twice");
    engine.wait_idle().await;
    let applied = engine
        .get_item(&EntityKey::new(PK_A, "ORDER#ASYNC"), &a)
        .await
        .expect("read")
        .expect("applied by the pipeline");
    assert_eq!((applied.version, applied.attributes.clone()), (2, n(2)));

    // Sync publishes: without a handler (one write), with one (write, then handlers).
    for sk in ["PLAIN#1", "HANDLED#1"] {
        for (version, expected) in [(0, 1), (1, 2)] {
            retried_once(Op::Apply);
            let published = engine
                .publish_sync(cmd_at(PK_A, sk, version, n(expected)), &a)
                .await
                .unwrap_or_else(|e| panic!("{sk} v{expected}: its write landed, yet: {e}"));
            assert!(!published.is_unchanged());
            assert_eq!(published.get().version, expected);
            assert_eq!(published.get().attributes, n(expected));
        }
    }
    let commands = vec![cmd_at(PK_A, "PLAIN#1", 2, n(3)), cmd(PK_A, "HANDLED#2", n(1))];
    retried_once(Op::Apply);
    let committed = engine
        .commit(commands, &a)
        .await
        .unwrap_or_else(|e| panic!("commit: its write landed, yet: {e}"));
    assert_eq!(
        committed.iter().map(|p| p.get().version).collect::<Vec<_>>(),
        [3, 1]
    );
    assert_eq!(storage.faults(Op::Apply), 5, "every apply was made twice");
    engine.wait_idle().await;
    for (sk, version) in [("PLAIN#1", 3), ("HANDLED#1", 2), ("HANDLED#2", 1)] {
        let key = EntityKey::new(PK_A, sk);
        let item = engine.get_item(&key, &a).await.expect("read").expect("written");
        assert_eq!(item.version, version, "{sk}");
        let versions = engine.list_versions(&key, &a).await.expect("versions");
        assert_eq!(versions.len() as u64, version, "{sk}: each version written once");
    }
    let mut handled = handler.seen();
    handled.sort();
    assert_eq!(
        handled,
        [
            ("HANDLED#1".into(), 1),
            ("HANDLED#1".into(), 2),
            ("HANDLED#2".into(), 1)
        ],
        "each written command handled once"
    );

    // A create on a key another publish holds stays a conflict.
    retried_once(Op::PutCommand);
    let taken = engine
        .publish_async(cmd(PK_A, "ORDER#ASYNC", n(9)), &a)
        .await
        .expect_err("version 1 is another publish's");
    assert!(taken.is_conflict(), "{taken}");
    assert_eq!(storage.faults(Op::PutCommand), 3);
}
