//! Racing duplicates of one keyed request: a client that retries before its
//! first try was answered (or several replicas handed the same message) runs
//! the same keyed operation many times at once. Every run answers what the
//! first did — never a conflict, never the refusal a closure gives the
//! entity the first run already moved — and one version is written.

use std::fmt::Debug;
use std::future::Future;

use serde_json::json;

use super::fixtures::{cmd, cmd_at, ctx, engine, PK_A};
use super::StorageFactory;
use crate::context::InvocationContext;
use crate::engine::Engine;
use crate::error::Error;
use crate::handle::Services;
use crate::keys::EntityKey;
use crate::model::{CommandInput, CommandStatus, DataItem, Published};
use crate::services::CommandService;

/// Concurrent duplicates per round.
const DUPLICATES: usize = 10;
/// Rounds per operation: a race lost once in a few rounds shows.
const ROUNDS: usize = 30;

/// Runs `DUPLICATES` copies of `run` at once and returns their outcomes.
async fn race<T, F, Fut>(run: F) -> Vec<Result<T, Error>>
where
    T: Send + 'static,
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, Error>> + Send + 'static,
{
    let tries: Vec<_> = (0..DUPLICATES).map(|_| tokio::spawn(run())).collect();
    futures::future::join_all(tries)
        .await
        .into_iter()
        .map(|joined| joined.expect("a duplicate's task"))
        .collect()
}

/// Every outcome is `Ok` and equal to the first one; returns it.
fn all_the_same<T: PartialEq + Debug>(what: &str, round: usize, outcomes: Vec<Result<T, Error>>) -> T {
    let mut answers = Vec::with_capacity(outcomes.len());
    for outcome in outcomes {
        match outcome {
            Ok(answer) => answers.push(answer),
            Err(error) => panic!("{what}, round {round}: a duplicate failed: {error}"),
        }
    }
    let first = answers.remove(0);
    for other in &answers {
        assert_eq!(
            other, &first,
            "{what}, round {round}: a duplicate answered otherwise"
        );
    }
    first
}

/// Creates `ORDER#{round}` as a paid order, unkeyed.
async fn paid_order(engine: &Engine, sk: &str, a: &InvocationContext) {
    engine
        .publish_sync(cmd(PK_A, sk, json!({ "status": "paid" })), a)
        .await
        .expect("create");
}

/// The status move of the checks: a paid order ships; any other is refused,
/// as an application's status machine refuses a second identical move.
fn ship(current: Option<&DataItem>, key: &EntityKey) -> Result<Option<CommandInput>, Error> {
    let item = current.ok_or_else(|| Error::not_found(key))?;
    if item.attributes["status"] != "paid" {
        return Err(Error::invalid("status", "only a paid order ships"));
    }
    Ok(Some(
        CommandInput::update_of(item).attributes(json!({ "status": "shipped" })),
    ))
}

async fn versions(engine: &Engine, sk: &str, a: &InvocationContext) -> usize {
    engine
        .list_versions(&EntityKey::new(PK_A, sk), a)
        .await
        .expect("versions")
        .len()
}

/// Ten concurrent duplicates of a keyed `publish_sync` and of a keyed
/// `publish_async` (each a status move at the version read), thirty rounds
/// each: all answer the first result, and one version is written.
pub async fn racing_keyed_publishes_answer_the_first_result(factory: &dyn StorageFactory) {
    let engine = engine(factory).await;
    let a = ctx("shop-a");
    for round in 0..ROUNDS {
        let sk = format!("ORDER#SYNC-{round}");
        paid_order(&engine, &sk, &a).await;
        let first = all_the_same(
            "publish_sync",
            round,
            race(|| {
                let (engine, a, sk) = (engine.clone(), a.clone(), sk.clone());
                async move {
                    let command = cmd_at(PK_A, &sk, 1, json!({ "status": "shipped" }))
                        .idempotency_key(format!("ship-sync-{round}"));
                    engine.publish_sync(command, &a).await
                }
            })
            .await,
        );
        assert!(!first.is_unchanged(), "round {round}: the move is written");
        assert_eq!(first.get().version, 2);
        assert_eq!(versions(&engine, &sk, &a).await, 2, "round {round}: written once");
    }
    for round in 0..ROUNDS {
        let sk = format!("ORDER#ASYNC-{round}");
        paid_order(&engine, &sk, &a).await;
        let first = all_the_same(
            "publish_async",
            round,
            race(|| {
                let (engine, a, sk) = (engine.clone(), a.clone(), sk.clone());
                async move {
                    let command = cmd_at(PK_A, &sk, 1, json!({ "status": "shipped" }))
                        .idempotency_key(format!("ship-async-{round}"));
                    // The command's status is the pipeline's progress
                    // when it was read, not part of the answer.
                    let published = engine.publish_async(command, &a).await?;
                    Ok(match published {
                        Published::Written(mut record) => {
                            record.status = CommandStatus::Published;
                            Published::Written(record)
                        }
                        unchanged => unchanged,
                    })
                }
            })
            .await,
        );
        assert!(!first.is_unchanged(), "round {round}: the move is written");
        assert_eq!(first.get().version, 2);
        assert_eq!(versions(&engine, &sk, &a).await, 2, "round {round}: written once");
    }
    engine.wait_idle().await;
}

/// Ten concurrent duplicates of a keyed read-modify-write whose closure
/// refuses the move once it is made (a status machine), thirty rounds: the
/// duplicates that read the moved order answer the first result instead of
/// the closure's refusal, and one version is written.
pub async fn racing_keyed_updates_answer_the_first_result(factory: &dyn StorageFactory) {
    let engine = engine(factory).await;
    let services = engine.services();
    let a = ctx("shop-a");
    for round in 0..ROUNDS {
        let sk = format!("ORDER#{round}");
        paid_order(&engine, &sk, &a).await;
        let key = EntityKey::new(PK_A, &sk);
        let first = all_the_same(
            "update_with",
            round,
            race(|| {
                let (services, a, key): (Services, _, _) = (services.clone(), a.clone(), key.clone());
                async move {
                    services
                        .update(&key)
                        .idempotency_key(format!("ship-{round}"))
                        .publish_sync(&a, |current| ship(current, &key))
                        .await
                }
            })
            .await,
        );
        let first = first
            .written()
            .unwrap_or_else(|| panic!("round {round}: the move is written"));
        assert_eq!(first.version, 2);
        assert_eq!(first.attributes["status"], "shipped");
        assert_eq!(versions(&engine, &sk, &a).await, 2, "round {round}: written once");
    }
}

/// The move of the commit checks: a paid order ships and takes a unit of
/// its stock; an order that is not paid is refused.
fn ship_from_stock(current: &[Option<DataItem>], order: &EntityKey) -> Result<Vec<CommandInput>, Error> {
    let (Some(item), Some(stock)) = (&current[0], &current[1]) else {
        return Err(Error::not_found(order));
    };
    if item.attributes["status"] != "paid" {
        return Err(Error::invalid("status", "only a paid order ships"));
    }
    let units = stock.attributes["units"].as_i64().unwrap_or(0);
    Ok(vec![
        CommandInput::update_of(item).attributes(json!({ "status": "shipped" })),
        CommandInput::update_of(stock).attributes(json!({ "units": units - 1 })),
    ])
}

/// Ten concurrent duplicates of a keyed commit (`commit_idempotent`, at the
/// versions read) and of a keyed `update_all` whose closure refuses the
/// move once made, thirty rounds each: all answer the first result, and
/// each entity gets one version more.
pub async fn racing_keyed_commits_answer_the_first_result(factory: &dyn StorageFactory) {
    let engine = engine(factory).await;
    let services = engine.services();
    let a = ctx("shop-a");
    for (what, round) in ["commit_idempotent", "update_all"]
        .into_iter()
        .flat_map(|what| (0..ROUNDS).map(move |round| (what, round)))
    {
        let (order, stock) = (format!("ORDER#{what}-{round}"), format!("STOCK#{what}-{round}"));
        engine
            .commit(
                vec![
                    cmd(PK_A, &order, json!({ "status": "paid" })),
                    cmd(PK_A, &stock, json!({ "units": 10 })),
                ],
                &a,
            )
            .await
            .expect("created");
        let keys = [EntityKey::new(PK_A, &order), EntityKey::new(PK_A, &stock)];
        let outcomes = race(|| {
            let (engine, services, a, keys) = (engine.clone(), services.clone(), a.clone(), keys.clone());
            let key = format!("{what}-{round}");
            async move {
                if what == "update_all" {
                    return services
                        .update_all(&keys)
                        .idempotency_key(key)
                        .commit(&a, |current| ship_from_stock(current, &keys[0]))
                        .await;
                }
                let commands = vec![
                    cmd_at(PK_A, &keys[0].sk, 1, json!({ "status": "shipped" })),
                    cmd_at(PK_A, &keys[1].sk, 1, json!({ "units": 9 })),
                ];
                engine.commit_idempotent(commands, key.into(), &a).await
            }
        })
        .await;
        let first = all_the_same(what, round, outcomes);
        assert_eq!(
            first
                .iter()
                .map(|p| (p.is_unchanged(), p.get().version))
                .collect::<Vec<_>>(),
            [(false, 2), (false, 2)],
            "{what}, round {round}"
        );
        assert_eq!(first[1].get().attributes["units"], 9);
        for sk in [&order, &stock] {
            assert_eq!(
                versions(&engine, sk, &a).await,
                2,
                "{what}, round {round}: {sk} written once"
            );
        }
    }
}
