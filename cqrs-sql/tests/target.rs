//! The target's contract, statement by statement, on every database:
//! conditional checkpoints and documents, races between transactions,
//! views that switch generations atomically, dropped generations, batched
//! checkpoint reads, and names that cannot inject SQL.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::{Harness, Place};
use cqrs_core::projection::{MetaDoc, ProjectionTarget, ProjectionTx};
use cqrs_core::testing::projections::TargetHarness;
use cqrs_core::{EntityKey, Error};

fn key(n: usize) -> EntityKey {
    EntityKey::new("TENANT#shop-a", format!("ITEM#{n:05}"))
}

/// Creates `table` in `generation` with `rows`, and the checkpoint of
/// `key(0)` at 1, in one transaction.
async fn fill<H: TargetHarness>(
    h: &H,
    target: &H::Target,
    generation: u64,
    table: &str,
    rows: &[(&str, i64)],
) {
    let (mut tx, _) = target.begin("p").await.unwrap();
    tx.set_generation(generation);
    h.create_table(&mut tx, table).await.unwrap();
    for (k, v) in rows {
        h.add(&mut tx, table, k, *v).await.unwrap();
    }
    tx.set_checkpoint(&key(0), 0, 1).await.unwrap();
    tx.commit().await.unwrap();
}

fn rows(pairs: &[(&str, i64)]) -> BTreeMap<String, i64> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

/// The projector may begin a transaction (or read) before it prepares the
/// target: the framework's tables are created on first use.
async fn a_fresh_database_needs_no_prepare<H: TargetHarness>(h: &H) {
    let target = h.target().await;
    assert_eq!(target.checkpoints("p", 1, &[key(1)]).await.unwrap(), vec![0]);
    let (mut tx, generations) = target.begin("p").await.unwrap();
    assert_eq!(generations, None);
    tx.set_generation(1);
    tx.set_checkpoint(&key(1), 0, 1).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(target.load("p", MetaDoc::Generations).await.unwrap(), None);
}

async fn checkpoints_are_conditional<H: TargetHarness>(h: &H) {
    let target = h.target().await;
    target.prepare().await.unwrap();
    target.prepare().await.expect("prepare is idempotent");
    let (mut tx, generations) = target.begin("p").await.unwrap();
    assert_eq!(generations, None);
    tx.set_generation(1);
    assert_eq!(tx.checkpoint(&key(1)).await.unwrap(), 0);
    tx.set_checkpoint(&key(1), 0, 3).await.unwrap();
    assert_eq!(
        tx.checkpoint(&key(1)).await.unwrap(),
        3,
        "a transaction reads its own writes"
    );
    tx.commit().await.unwrap();

    let (mut tx, _) = target.begin("p").await.unwrap();
    tx.set_generation(1);
    let created_again = tx.set_checkpoint(&key(1), 0, 4).await.unwrap_err();
    assert!(created_again.is_conflict(), "{created_again}");
    let stale = tx.set_checkpoint(&key(1), 2, 4).await.unwrap_err();
    assert!(stale.is_conflict(), "{stale}");
    tx.set_checkpoint(&key(1), 3, 4).await.unwrap();
    tx.commit().await.unwrap();

    // Per projection and per generation.
    let (mut tx, _) = target.begin("other").await.unwrap();
    tx.set_generation(1);
    assert_eq!(tx.checkpoint(&key(1)).await.unwrap(), 0);
    tx.set_generation(2);
    assert_eq!(tx.checkpoint(&key(1)).await.unwrap(), 0);
    drop(tx);
    assert_eq!(
        target.checkpoints("p", 1, &[key(1), key(2)]).await.unwrap(),
        vec![4, 0]
    );
    assert_eq!(target.checkpoints("p", 2, &[key(1)]).await.unwrap(), vec![0]);
}

async fn documents_are_conditional_on_their_revision<H: TargetHarness>(h: &H) {
    let target = h.target().await;
    target.prepare().await.unwrap();
    assert_eq!(target.load("p", MetaDoc::Rebuild).await.unwrap(), None);
    let (mut tx, _) = target.begin("p").await.unwrap();
    tx.store(MetaDoc::Rebuild, "one", 0).await.unwrap();
    tx.commit().await.unwrap();
    let doc = target.load("p", MetaDoc::Rebuild).await.unwrap().unwrap();
    assert_eq!((doc.text.as_str(), doc.revision), ("one", 1));

    let (mut tx, _) = target.begin("p").await.unwrap();
    assert!(tx
        .store(MetaDoc::Rebuild, "again", 0)
        .await
        .unwrap_err()
        .is_conflict());
    assert!(tx
        .store(MetaDoc::Rebuild, "stale", 2)
        .await
        .unwrap_err()
        .is_conflict());
    tx.store(MetaDoc::Rebuild, "two", 1).await.unwrap();
    tx.commit().await.unwrap();
    let doc = target.load("p", MetaDoc::Rebuild).await.unwrap().unwrap();
    assert_eq!((doc.text.as_str(), doc.revision), ("two", 2));
    // The other document, and other projections, are apart.
    assert_eq!(target.load("p", MetaDoc::Generations).await.unwrap(), None);
    assert_eq!(target.load("q", MetaDoc::Rebuild).await.unwrap(), None);
}

async fn a_dropped_transaction_leaves_nothing<H: TargetHarness>(h: &H) {
    let target = h.target().await;
    target.prepare().await.unwrap();
    fill(h, &target, 1, "totals", &[("a", 1)]).await;
    target
        .switch("p", "{}", 0, 1, &["totals".to_owned()])
        .await
        .unwrap();

    let (mut tx, generations) = target.begin("p").await.unwrap();
    assert_eq!(generations.unwrap().revision, 1);
    tx.set_generation(1);
    h.add(&mut tx, "totals", "a", 10).await.unwrap();
    h.add(&mut tx, "totals", "b", 5).await.unwrap();
    tx.set_checkpoint(&key(0), 1, 2).await.unwrap();
    tx.store(MetaDoc::Rebuild, "x", 0).await.unwrap();
    drop(tx);

    assert_eq!(h.read(&target, "p", "totals").await, rows(&[("a", 1)]));
    assert_eq!(target.checkpoints("p", 1, &[key(0)]).await.unwrap(), vec![1]);
    assert_eq!(target.load("p", MetaDoc::Rebuild).await.unwrap(), None);
}

/// Two transactions race to apply the same version: one commits, the other
/// gets a conflict (at its checkpoint write or its commit) and leaves
/// nothing. Repeated, so that the interleavings vary.
async fn racing_transactions_apply_once<H: TargetHarness>(h: &H) {
    let h = Arc::new(h.target().await);
    let target = Arc::clone(&h);
    target.prepare().await.unwrap();
    const ROUNDS: usize = 20;
    for round in 0..ROUNDS {
        let tasks: Vec<_> = (0..2)
            .map(|_| {
                let target = Arc::clone(&target);
                tokio::spawn(async move {
                    let (mut tx, _) = target.begin("p").await?;
                    tx.set_generation(1);
                    let k = key(round);
                    let seen = tx.checkpoint(&k).await?;
                    tokio::task::yield_now().await;
                    // Both write as if they had read 0: the condition decides.
                    let _ = seen;
                    tx.set_checkpoint(&k, 0, 1).await?;
                    tx.commit().await
                })
            })
            .collect();
        let mut won = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(()) => won += 1,
                Err(e) => assert!(e.is_conflict(), "round {round}: {e}"),
            }
        }
        assert_eq!(won, 1, "round {round}: exactly one transaction commits");
    }
    let versions = target
        .checkpoints("p", 1, &(0..ROUNDS).map(key).collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(versions, vec![1; ROUNDS]);
}

/// Readers query the plain table name: a view of the live generation,
/// replaced in one step; a stale switch changes nothing; a dropped
/// generation leaves neither rows nor checkpoints.
async fn views_switch_generations_atomically<H: TargetHarness>(h: &H) {
    let target = h.target().await;
    target.prepare().await.unwrap();
    let tables = ["totals".to_owned(), "counts".to_owned()];
    fill(h, &target, 1, "totals", &[("a", 1)]).await;
    fill_more(h, &target, 1, "counts", &[("n", 1)]).await;
    assert_eq!(
        h.read(&target, "p", "totals").await,
        BTreeMap::new(),
        "no view before the switch"
    );
    target.switch("p", "gen-1", 0, 1, &tables).await.unwrap();
    assert_eq!(h.read(&target, "p", "totals").await, rows(&[("a", 1)]));
    assert_eq!(h.read(&target, "p", "counts").await, rows(&[("n", 1)]));

    fill(h, &target, 2, "totals", &[("a", 2), ("b", 2)]).await;
    fill_more(h, &target, 2, "counts", &[("n", 2)]).await;
    let stale = target.switch("p", "gen-2", 0, 2, &tables).await.unwrap_err();
    assert!(stale.is_conflict(), "{stale}");
    assert_eq!(
        h.read(&target, "p", "totals").await,
        rows(&[("a", 1)]),
        "a refused switch changes nothing"
    );
    let doc = target.load("p", MetaDoc::Generations).await.unwrap().unwrap();
    assert_eq!((doc.text.as_str(), doc.revision), ("gen-1", 1));

    target.switch("p", "gen-2", 1, 2, &tables).await.unwrap();
    assert_eq!(h.read(&target, "p", "totals").await, rows(&[("a", 2), ("b", 2)]));
    assert_eq!(h.read(&target, "p", "counts").await, rows(&[("n", 2)]));
    let doc = target.load("p", MetaDoc::Generations).await.unwrap().unwrap();
    assert_eq!((doc.text.as_str(), doc.revision), ("gen-2", 2));

    assert_eq!(target.checkpoints("p", 1, &[key(0)]).await.unwrap(), vec![1]);
    target.drop_generation("p", 1, &tables).await.unwrap();
    target
        .drop_generation("p", 1, &tables)
        .await
        .expect("dropping twice is harmless");
    assert_eq!(target.checkpoints("p", 1, &[key(0)]).await.unwrap(), vec![0]);
    assert_eq!(target.checkpoints("p", 2, &[key(0)]).await.unwrap(), vec![1]);
    // Its tables are gone: creating generation 1's table again starts empty.
    let (mut tx, _) = target.begin("p").await.unwrap();
    tx.set_generation(1);
    h.create_table(&mut tx, "totals").await.unwrap();
    assert_eq!(h.get(&mut tx, "totals", "a").await.unwrap(), None);
    drop(tx);
    assert_eq!(h.read(&target, "p", "totals").await, rows(&[("a", 2), ("b", 2)]));
}

/// Like `fill`, without touching the checkpoint.
async fn fill_more<H: TargetHarness>(
    h: &H,
    target: &H::Target,
    generation: u64,
    table: &str,
    rows: &[(&str, i64)],
) {
    let (mut tx, _) = target.begin("p").await.unwrap();
    tx.set_generation(generation);
    h.create_table(&mut tx, table).await.unwrap();
    for (k, v) in rows {
        h.add(&mut tx, table, k, *v).await.unwrap();
    }
    tx.commit().await.unwrap();
}

/// A switch waits for the transactions in flight (which read the
/// generations before it), and transactions begun after it read the new
/// generations: none commits writes to a generation already replaced.
async fn switch_waits_for_transactions_in_flight<H: TargetHarness>(h: &H) {
    let target = Arc::new(h.target().await);
    target.prepare().await.unwrap();
    fill(h, &target, 1, "totals", &[]).await;
    target
        .switch("p", "gen-1", 0, 1, &["totals".to_owned()])
        .await
        .unwrap();
    fill(h, &target, 2, "totals", &[]).await;

    let (mut in_flight, generations) = target.begin("p").await.unwrap();
    assert_eq!(generations.unwrap().text, "gen-1");
    in_flight.set_generation(1);
    h.add(&mut in_flight, "totals", "a", 1).await.unwrap();

    let switching = {
        let target = Arc::clone(&target);
        tokio::spawn(async move { target.switch("p", "gen-2", 1, 2, &["totals".to_owned()]).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !switching.is_finished(),
        "the switch waits for the transaction that read gen-1"
    );
    in_flight.commit().await.unwrap();
    switching.await.unwrap().unwrap();

    let (_, generations) = target.begin("p").await.unwrap();
    assert_eq!(generations.unwrap().text, "gen-2");
}

/// Reads of many checkpoints, over several statements, in the keys' order.
async fn checkpoints_are_read_in_batches<H: TargetHarness>(h: &H) {
    let target = h.target().await;
    target.prepare().await.unwrap();
    const KEYS: usize = 1_234;
    let (mut tx, _) = target.begin("p").await.unwrap();
    tx.set_generation(1);
    for n in (0..KEYS).filter(|n| n % 3 == 0) {
        tx.set_checkpoint(&key(n), 0, n as u64 + 1).await.unwrap();
    }
    tx.commit().await.unwrap();
    let keys: Vec<_> = (0..KEYS).rev().map(key).collect();
    let expected: Vec<u64> = (0..KEYS)
        .rev()
        .map(|n| if n % 3 == 0 { n as u64 + 1 } else { 0 })
        .collect();
    assert_eq!(target.checkpoints("p", 1, &keys).await.unwrap(), expected);
    assert_eq!(target.checkpoints("p", 1, &[]).await.unwrap(), Vec::<u64>::new());
}

/// Table names go into SQL text: anything but a plain name is refused
/// before any statement runs.
async fn table_names_cannot_inject_sql<H: TargetHarness>(h: &H) {
    let target = h.target().await;
    target.prepare().await.unwrap();
    fill(h, &target, 1, "totals", &[("a", 1)]).await;
    let evil = "totals_g1; DROP TABLE cqrs_projection_checkpoints; --";
    let (mut tx, _) = target.begin("p").await.unwrap();
    tx.set_generation(1);
    let refused = h.add(&mut tx, evil, "a", 1).await.unwrap_err();
    assert!(
        matches!(refused.downcast_ref::<Error>(), Some(Error::InvalidInput { what, .. }) if what == "table"),
        "{refused}"
    );
    drop(tx);
    let refused = target
        .switch("p", "gen-1", 0, 1, &["totals".to_owned(), evil.to_owned()])
        .await
        .unwrap_err();
    assert!(matches!(refused, Error::InvalidInput { .. }), "{refused}");
    assert_eq!(
        target.load("p", MetaDoc::Generations).await.unwrap(),
        None,
        "nothing written"
    );
    let refused = target
        .drop_generation("p", 1, &[evil.to_owned()])
        .await
        .unwrap_err();
    assert!(matches!(refused, Error::InvalidInput { .. }), "{refused}");
    assert_eq!(
        target.checkpoints("p", 1, &[key(0)]).await.unwrap(),
        vec![1],
        "nothing dropped"
    );
}

/// One `#[tokio::test]` per check and place.
macro_rules! checks {
    (ignore $place:ident, $db:ty; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test]
            #[ignore = "needs PostgreSQL: run ./scripts/test"]
            async fn $check() {
                super::$check(&Harness::<$db>::new(Place::$place)).await;
            }
        )*
    };
    ($place:ident, $db:ty, $guard:expr; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                if !$guard {
                    return;
                }
                super::$check(&Harness::<$db>::new(Place::$place)).await;
            }
        )*
    };
    ($($args:tt)*) => {
        checks!($($args)*;
            a_fresh_database_needs_no_prepare,
            checkpoints_are_conditional,
            documents_are_conditional_on_their_revision,
            a_dropped_transaction_leaves_nothing,
            racing_transactions_apply_once,
            views_switch_generations_atomically,
            switch_waits_for_transactions_in_flight,
            checkpoints_are_read_in_batches,
            table_names_cannot_inject_sql,
        );
    };
}

mod sqlite_file {
    use super::*;
    checks!(SqliteFile, sqlx::Sqlite, true);
}

mod sqlite_memory {
    use super::*;
    checks!(SqliteMemory, sqlx::Sqlite, true);
}

#[cfg(feature = "any")]
mod any_sqlite {
    use super::*;
    checks!(AnySqlite, sqlx::Any, true);
}

#[cfg(feature = "any")]
mod any_sqlite_memory {
    use super::*;
    checks!(AnySqliteMemory, sqlx::Any, true);
}

#[cfg(postgres_tests)]
mod postgres {
    use super::*;
    checks!(Postgres, sqlx::Postgres, common::postgres_available());
}

#[cfg(not(postgres_tests))]
mod postgres {
    use super::*;
    checks!(ignore Postgres, sqlx::Postgres);
}
