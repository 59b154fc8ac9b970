//! Keyed commits: a multi-entity commit that is both all or nothing and
//! idempotent, its key row written in the commit's own atomic write.

use serde_json::json;

use super::fixtures::{cmd, cmd_at, ctx, engine, n, PK_A};
use super::StorageFactory;
use crate::error::Error;
use crate::idempotency::IdempotencyKey;
use crate::keys::EntityKey;
use crate::model::CommandInput;
use crate::services::{CommandService, DataService};

fn key(sk: &str) -> EntityKey {
    EntityKey::new(PK_A, sk)
}

/// A keyed commit retried returns the first result — written and
/// unchanged members alike, as the commit left them, even after the
/// entities moved on — and writes nothing more; the key used by another
/// request is refused; a commit that fails stores no key.
pub async fn keyed_commits_write_once(factory: &dyn StorageFactory) {
    let engine = engine(factory).await;
    let a = ctx("shop-a");
    let create = || vec![cmd(PK_A, "STOCK#A", n(10)), cmd(PK_A, "STOCK#B", n(0))];
    let first = engine
        .commit_idempotent(create(), IdempotencyKey::new("create"), &a)
        .await
        .expect("first");
    assert!(first.iter().all(|p| !p.is_unchanged() && p.get().version == 1));
    let again = engine
        .commit_idempotent(create(), IdempotencyKey::new("create"), &a)
        .await
        .expect("retry");
    assert_eq!(again, first, "the retry gets the first result");

    // One member unchanged: it answers unchanged, at the version it had.
    let mv = || vec![cmd_at(PK_A, "STOCK#A", 1, n(9)), cmd_at(PK_A, "STOCK#B", 1, n(0))];
    let moved = engine
        .commit_idempotent(mv(), IdempotencyKey::new("move"), &a)
        .await
        .expect("move");
    assert_eq!(
        moved
            .iter()
            .map(|p| (p.is_unchanged(), p.get().version))
            .collect::<Vec<_>>(),
        [(false, 2), (true, 1)]
    );
    // The entities move on; the retry still answers what the commit did.
    engine
        .commit(
            vec![cmd_at(PK_A, "STOCK#A", 2, n(8)), cmd_at(PK_A, "STOCK#B", 1, n(1))],
            &a,
        )
        .await
        .expect("a later change");
    let again = engine
        .commit_idempotent(mv(), IdempotencyKey::new("move"), &a)
        .await
        .expect("retry after the entities moved");
    assert_eq!(again, moved);
    let found = engine
        .find_idempotent_commit(&IdempotencyKey::new("move"), &a)
        .await
        .expect("find")
        .expect("held");
    assert_eq!(found, moved);
    let command = engine
        .find_idempotent(&IdempotencyKey::new("move"), &a)
        .await
        .expect("find")
        .expect("held");
    assert_eq!(
        (command.sk.as_str(), command.version),
        ("STOCK#A", 2),
        "its first written command"
    );
    for (sk, versions) in [("STOCK#A", 3), ("STOCK#B", 2)] {
        assert_eq!(
            engine.list_versions(&key(sk), &a).await.expect("versions").len(),
            versions
        );
    }

    // The key for another commit, or a single publish's key for a commit.
    let other = vec![cmd_at(PK_A, "STOCK#A", 3, n(1)), cmd_at(PK_A, "STOCK#B", 2, n(2))];
    let error = engine
        .commit_idempotent(other.clone(), IdempotencyKey::new("move"), &a)
        .await
        .expect_err("another commit");
    assert!(
        matches!(&error, Error::IdempotencyKeyReused { key, .. } if key == "move"),
        "{error}"
    );
    engine
        .publish_sync(cmd(PK_A, "ORDER#1", n(1)).idempotency_key("single"), &a)
        .await
        .expect("keyed publish");
    let error = engine
        .commit_idempotent(other, IdempotencyKey::new("single"), &a)
        .await
        .expect_err("a publish's key");
    assert!(matches!(error, Error::IdempotencyKeyReused { .. }), "{error}");
    assert_eq!(
        engine
            .get_item(&key("STOCK#A"), &a)
            .await
            .expect("read")
            .map(|i| i.version),
        Some(3),
        "nothing written"
    );

    // A commit that fails on a version writes nothing, its key included.
    let stale = vec![cmd_at(PK_A, "STOCK#A", 1, n(0)), cmd(PK_A, "STOCK#C", n(1))];
    let error = engine
        .commit_idempotent(stale, IdempotencyKey::new("stale"), &a)
        .await
        .expect_err("stale");
    assert!(error.is_conflict(), "{error}");
    assert!(engine
        .find_idempotent_commit(&IdempotencyKey::new("stale"), &a)
        .await
        .expect("find")
        .is_none());
    assert!(engine
        .get_item(&key("STOCK#C"), &a)
        .await
        .expect("read")
        .is_none());

    // Keys are checked; the commands of a commit still take none.
    let error = engine
        .commit_idempotent(
            vec![cmd(PK_A, "STOCK#D", n(1))],
            IdempotencyKey::new("has space"),
            &a,
        )
        .await
        .expect_err("bad key");
    assert!(
        matches!(&error, Error::InvalidInput { what, .. } if what == "idempotencyKey"),
        "{error}"
    );
    let error = engine
        .commit_idempotent(
            vec![cmd(PK_A, "STOCK#D", n(1)).idempotency_key("inner")],
            IdempotencyKey::new("outer"),
            &a,
        )
        .await
        .expect_err("a keyed command in a commit");
    assert!(
        matches!(&error, Error::InvalidInput { what, .. } if what == "idempotencyKey"),
        "{error}"
    );
}

/// The key row is one more item of the commit's transaction: the largest
/// keyed commit of updates that fits is written (on DynamoDB: exactly 100
/// items), one more command is refused before anything is written.
pub async fn keyed_commits_count_their_key_row(factory: &dyn StorageFactory) {
    let engine = engine(factory).await;
    let a = ctx("shop-a");
    let limits = engine.storage().limits();
    let fitting = limits.max_transaction_items / limits.rows_per_command;
    let fitting_keyed = (limits.max_transaction_items - 1) / limits.rows_per_command;
    let sk = |i: usize| format!("ITEM#{i:03}");
    let created = engine
        .commit((0..fitting).map(|i| cmd(PK_A, &sk(i), n(1))).collect(), &a)
        .await
        .expect("created");
    assert_eq!(created.len(), fitting);
    let updates =
        |count: usize| -> Vec<CommandInput> { (0..count).map(|i| cmd_at(PK_A, &sk(i), 1, n(2))).collect() };
    // One command more than fits with the key row: refused, nothing written.
    let error = engine
        .commit_idempotent(updates(fitting_keyed + 1), IdempotencyKey::new("too-many"), &a)
        .await
        .expect_err("too large with its key row");
    assert!(matches!(error, Error::TooLarge { .. }), "{error:?}");
    assert_eq!(
        engine.get_item(&key(&sk(0)), &a).await.unwrap().unwrap().version,
        1
    );
    let written = engine
        .commit_idempotent(updates(fitting_keyed), IdempotencyKey::new("fits"), &a)
        .await
        .expect("the largest keyed commit");
    assert_eq!(written.len(), fitting_keyed);
    assert!(written.iter().all(|p| !p.is_unchanged() && p.get().version == 2));
    let again = engine
        .commit_idempotent(updates(fitting_keyed), IdempotencyKey::new("fits"), &a)
        .await
        .expect("retry");
    assert_eq!(again, written);
    assert_eq!(
        engine
            .get_item(&key(&sk(0)), &a)
            .await
            .unwrap()
            .map(|i| i.attributes),
        Some(json!({ "n": 2 }).into())
    );
}
