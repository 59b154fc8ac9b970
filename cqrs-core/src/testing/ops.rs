//! The operator's toolbox ([`crate::ops`]): listing failures with filters,
//! showing one without its attribute values, and reprocessing that is
//! idempotent, has a dry run, and runs a command's handlers once when two
//! reprocesses race.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;

use super::fixtures::{builder, cmd, ctx, PK_A, PK_B};
use super::StorageFactory;
use crate::engine::Engine;
use crate::error::BoxError;
use crate::handler::{DataSyncEvent, DataSyncHandler, Interest};
use crate::keys::EntityKey;
use crate::model::CommandStatus;
use crate::ops::{self, FailureFilter, Mode, Plan, ReprocessOutcome, ShowOptions};
use crate::services::CommandService;

/// A handler that fails for the sort keys it is told to, counting its runs
/// per sort key, each run taking `delay`.
#[derive(Debug)]
struct Gate {
    name: &'static str,
    failing: Mutex<HashSet<String>>,
    runs: Mutex<Vec<String>>,
    delay: Duration,
}

impl Gate {
    fn new(name: &'static str, delay: Duration) -> Arc<Self> {
        Arc::new(Self {
            name,
            failing: Mutex::default(),
            runs: Mutex::default(),
            delay,
        })
    }

    fn fail(&self, sk: &str) {
        self.failing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(sk.to_owned());
    }

    fn heal(&self, sk: &str) {
        self.failing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(sk);
    }

    fn runs_of(&self, sk: &str) -> usize {
        self.runs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|s| *s == sk)
            .count()
    }
}

#[async_trait]
impl DataSyncHandler for Gate {
    fn name(&self) -> &str {
        self.name
    }

    fn interest(&self) -> Interest {
        Interest::All
    }

    async fn handle(&self, event: &DataSyncEvent) -> Result<(), BoxError> {
        let sk = event.command.sk.to_string();
        self.runs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(sk.clone());
        tokio::time::sleep(self.delay).await;
        if self
            .failing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&sk)
        {
            return Err(format!("{} refuses {sk}", self.name).into());
        }
        Ok(())
    }
}

async fn publish(engine: &Engine, pk: &str, sk: &str) -> EntityKey {
    let tenant = pk.trim_start_matches("TENANT#");
    let item = engine
        .publish_sync(
            cmd(pk, sk, json!({ "email": "someone@example.com" })),
            &ctx(tenant),
        )
        .await
        .unwrap()
        .into_item();
    item.key()
}

fn keys(failed: &[crate::model::FailedCommand]) -> Vec<(String, String)> {
    failed.iter().map(|f| (f.pk.clone(), f.sk.clone())).collect()
}

/// Filters by tenant, by failed handler and by age select exactly the
/// matching failure records, oldest first.
pub async fn ops_list_filters_failures(factory: &dyn StorageFactory) {
    let stock = Gate::new("stock", Duration::ZERO);
    let mail = Gate::new("mail", Duration::ZERO);
    let engine = builder(factory)
        .await
        .handler_arc(stock.clone())
        .handler_arc(mail.clone())
        .build();
    stock.fail("P#1");
    stock.fail("P#2");
    mail.fail("P#3");
    publish(&engine, PK_A, "P#1").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let between = crate::clock::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    publish(&engine, PK_B, "P#2").await;
    publish(&engine, PK_A, "P#3").await;
    publish(&engine, PK_A, "P#4").await;

    let all = ops::list_failures(&engine, &FailureFilter::default())
        .await
        .unwrap();
    assert_eq!(
        keys(&all),
        [(PK_A, "P#1"), (PK_B, "P#2"), (PK_A, "P#3")].map(|(p, s)| (p.to_owned(), s.to_owned())),
        "every failed command, oldest first"
    );
    assert!(all.windows(2).all(|w| w[0].failed_at <= w[1].failed_at));
    let shop_a = ops::list_failures(&engine, &FailureFilter::default().tenant("shop-a"))
        .await
        .unwrap();
    assert_eq!(shop_a.len(), 2);
    assert!(shop_a.iter().all(|f| f.tenant_code == "shop-a"));
    let by_mail = ops::list_failures(&engine, &FailureFilter::default().handler("mail"))
        .await
        .unwrap();
    assert_eq!(keys(&by_mail), [(PK_A.to_owned(), "P#3".to_owned())]);
    let older = ops::list_failures(&engine, &FailureFilter::default().failed_before(between))
        .await
        .unwrap();
    assert_eq!(keys(&older), [(PK_A.to_owned(), "P#1".to_owned())]);
    let none = ops::list_failures(
        &engine,
        &FailureFilter::default().older_than(Duration::from_secs(3600)),
    )
    .await
    .unwrap();
    assert!(none.is_empty(), "nothing failed an hour ago");
    let combined = FailureFilter::default().tenant("shop-b").handler("mail");
    assert!(ops::list_failures(&engine, &combined).await.unwrap().is_empty());
}

/// `show` gives the failure record, the row's status and type and the
/// entity's version, and the attribute values only when asked.
pub async fn ops_show_leaves_attribute_values_out(factory: &dyn StorageFactory) {
    let stock = Gate::new("stock", Duration::ZERO);
    let engine = builder(factory).await.handler_arc(stock.clone()).build();
    stock.fail("P#1");
    let key = publish(&engine, PK_A, "P#1").await;
    let shown = ops::show(&engine, &key, 1, ShowOptions::default()).await.unwrap();
    let failure = shown.failure.clone().expect("a failure record");
    assert_eq!(failure.failures[0].handler, "stock");
    assert_eq!(failure.failures[0].attempts, 3);
    assert!(failure.failures[0].error.contains("refuses P#1"));
    assert_eq!(shown.command.status, CommandStatus::Failed);
    assert_eq!(shown.command.tenant_code, "shop-a");
    assert_eq!(shown.applied_version, 1);
    assert_eq!(shown.command.attributes, None);
    let text = serde_json::to_string(&shown).unwrap();
    assert!(
        !text.contains("someone@example.com"),
        "no attribute value by default: {text}"
    );
    let with = ops::show(&engine, &key, 1, ShowOptions::default().with_attributes())
        .await
        .unwrap();
    assert_eq!(with.command.attributes.unwrap()["email"], "someone@example.com");
    let missing = ops::show(&engine, &key, 7, ShowOptions::default())
        .await
        .unwrap_err();
    assert!(missing.is_not_found());
}

/// A dry run reports the handlers it would run and writes nothing; the
/// reprocess finishes the command and runs only the failed handler; a
/// second reprocess finds it done and runs nothing.
pub async fn ops_reprocess_is_idempotent_with_a_dry_run(factory: &dyn StorageFactory) {
    let stock = Gate::new("stock", Duration::ZERO);
    let mail = Gate::new("mail", Duration::ZERO);
    let engine = builder(factory)
        .await
        .handler_arc(stock.clone())
        .handler_arc(mail.clone())
        .build();
    stock.fail("P#1");
    let key = publish(&engine, PK_A, "P#1").await;
    assert_eq!((stock.runs_of("P#1"), mail.runs_of("P#1")), (3, 1));
    let before = engine.storage().get_failure(&key, 1).await.unwrap();
    stock.heal("P#1");

    let planned = ops::reprocess(&engine, &key, 1, Mode::DryRun).await.unwrap();
    assert_eq!(
        planned,
        ReprocessOutcome::WouldReprocess {
            plan: Plan::Rerun {
                handlers: vec!["stock".to_owned()]
            }
        }
    );
    assert_eq!(
        (stock.runs_of("P#1"), mail.runs_of("P#1")),
        (3, 1),
        "a dry run runs nothing"
    );
    assert_eq!(engine.storage().get_failure(&key, 1).await.unwrap(), before);
    let row = engine.storage().get_command(&key, 1).await.unwrap().unwrap();
    assert_eq!(row.status, CommandStatus::Failed, "a dry run writes nothing");

    let done = ops::reprocess(&engine, &key, 1, Mode::Run).await.unwrap();
    assert_eq!(
        done,
        ReprocessOutcome::Finished {
            status: CommandStatus::Finished
        }
    );
    assert_eq!(
        (stock.runs_of("P#1"), mail.runs_of("P#1")),
        (4, 1),
        "only the failed handler ran"
    );
    assert_eq!(engine.storage().get_failure(&key, 1).await.unwrap(), None);

    for mode in [Mode::Run, Mode::DryRun] {
        let again = ops::reprocess(&engine, &key, 1, mode).await.unwrap();
        assert_eq!(
            again,
            ReprocessOutcome::AlreadyDone {
                status: CommandStatus::Finished
            }
        );
    }
    assert_eq!(
        (stock.runs_of("P#1"), mail.runs_of("P#1")),
        (4, 1),
        "a finished command's handlers are not run again"
    );
    assert!(ops::reprocess(&engine, &key, 9, Mode::Run)
        .await
        .unwrap_err()
        .is_not_found());

    // Still broken: failed again, with a new record.
    stock.fail("P#2");
    let key2 = publish(&engine, PK_A, "P#2").await;
    match ops::reprocess(&engine, &key2, 1, Mode::Run).await.unwrap() {
        ReprocessOutcome::FailedAgain { failures } => {
            assert_eq!(failures.len(), 1);
            assert_eq!(failures[0].handler, "stock");
        }
        other => panic!("expected failed again, got {other:?}"),
    }
    assert_eq!(stock.runs_of("P#2"), 6);
    assert_eq!(
        ops::list_failures(&engine, &FailureFilter::default())
            .await
            .unwrap()
            .len(),
        1
    );

    // An engine without the failed handler refuses, and writes nothing:
    // rerunning the others would mark the command finished without it.
    let without_stock = Engine::builder(engine.storage().clone())
        .handler_arc(mail.clone())
        .build();
    stock.heal("P#2");
    for mode in [Mode::DryRun, Mode::Run] {
        let refused = ops::reprocess(&without_stock, &key2, 1, mode).await.unwrap_err();
        assert!(refused.to_string().contains("'stock'"), "{refused}");
    }
    assert_eq!(
        engine
            .storage()
            .get_command(&key2, 1)
            .await
            .unwrap()
            .unwrap()
            .status,
        CommandStatus::Failed
    );
    assert_eq!(mail.runs_of("P#2"), 1);
}

/// Two operators' reprocesses of one command, at the same time through one
/// engine: the handler runs once, one reports it finished, the other
/// already done.
pub async fn ops_concurrent_reprocesses_run_handlers_once(factory: &dyn StorageFactory) {
    let stock = Gate::new("stock", Duration::from_millis(50));
    let engine = builder(factory).await.handler_arc(stock.clone()).build();
    stock.fail("P#1");
    let key = publish(&engine, PK_A, "P#1").await;
    stock.heal("P#1");
    let runs_before = stock.runs_of("P#1");
    let start = Arc::new(tokio::sync::Barrier::new(2));
    let tasks: Vec<_> = (0..2)
        .map(|_| {
            let (engine, key, start) = (engine.clone(), key.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                ops::reprocess(&engine, &key, 1, Mode::Run).await.unwrap()
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }
    assert_eq!(
        stock.runs_of("P#1") - runs_before,
        1,
        "the handler ran once: {outcomes:?}"
    );
    let finished = ReprocessOutcome::Finished {
        status: CommandStatus::Finished,
    };
    let already = ReprocessOutcome::AlreadyDone {
        status: CommandStatus::Finished,
    };
    assert!(
        outcomes.contains(&finished) && outcomes.contains(&already),
        "{outcomes:?}"
    );
}

/// Two engines over the same storage (two operators' processes) reprocess
/// one command at the same moment: nothing serializes them, so the failed
/// handler may run twice (at least once, as everywhere in the pipeline) —
/// never more — and the command ends finished without a failure record.
pub async fn ops_reprocesses_from_two_engines_end_finished(factory: &dyn StorageFactory) {
    let stock = Gate::new("stock", Duration::from_millis(50));
    let first = builder(factory).await.handler_arc(stock.clone()).build();
    let second = Engine::builder(first.storage().clone())
        .handler_arc(stock.clone())
        .build();
    stock.fail("P#1");
    let key = publish(&first, PK_A, "P#1").await;
    stock.heal("P#1");
    let runs_before = stock.runs_of("P#1");
    let start = Arc::new(tokio::sync::Barrier::new(2));
    let tasks: Vec<_> = [first.clone(), second]
        .into_iter()
        .map(|engine| {
            let (key, start) = (key.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                ops::reprocess(&engine, &key, 1, Mode::Run).await.unwrap()
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }
    let runs = stock.runs_of("P#1") - runs_before;
    assert!(
        (1..=2).contains(&runs),
        "the handler ran {runs} times: {outcomes:?}"
    );
    assert!(outcomes.iter().all(|o| matches!(
        o,
        ReprocessOutcome::Finished { .. } | ReprocessOutcome::AlreadyDone { .. }
    )));
    let row = first.storage().get_command(&key, 1).await.unwrap().unwrap();
    assert_eq!(row.status, CommandStatus::Finished);
    assert_eq!(first.storage().get_failure(&key, 1).await.unwrap(), None);
}

/// `reprocess_all` handles every match oldest first, reports progress after
/// each, and counts finished, failed again and already done.
pub async fn ops_reprocess_all_summarizes(factory: &dyn StorageFactory) {
    let stock = Gate::new("stock", Duration::ZERO);
    let engine = builder(factory).await.handler_arc(stock.clone()).build();
    for sk in ["P#1", "P#2", "P#3"] {
        stock.fail(sk);
        publish(&engine, PK_A, sk).await;
    }
    stock.fail("P#9");
    publish(&engine, PK_B, "P#9").await;
    stock.heal("P#1");
    stock.heal("P#3");
    // P#3 is reprocessed before the sweep reaches it: found done then.
    let key3 = EntityKey::new(PK_A, "P#3");
    let filter = FailureFilter::default().tenant("shop-a");

    let dry = ops::reprocess_all(&engine, &filter, Mode::DryRun, |_| {})
        .await
        .unwrap();
    assert_eq!((dry.dry_run, dry.matched, dry.would_reprocess), (true, 3, 3));
    assert_eq!(
        ops::list_failures(&engine, &filter).await.unwrap().len(),
        3,
        "the dry run wrote nothing"
    );

    let mut seen = Vec::new();
    let mut first = true;
    let summary = ops::reprocess_all(&engine, &filter, Mode::Run, |p| {
        seen.push((p.done, p.total));
        if first {
            first = false;
            // Another operator finishes P#3 meanwhile.
            let engine = engine.clone();
            let key3 = key3.clone();
            std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(async { engine.reprocess(&key3, 1, &ctx("shop-a")).await.unwrap() })
            })
            .join()
            .unwrap();
        }
    })
    .await
    .unwrap();
    assert_eq!(seen, [(0, 3), (1, 3), (2, 3), (3, 3)]);
    assert_eq!(
        (
            summary.matched,
            summary.finished,
            summary.failed_again,
            summary.already_done,
            summary.errors
        ),
        (3, 1, 1, 1, 0),
        "{summary:?}"
    );
    let order: Vec<_> = summary.results.iter().map(|r| r.sk.as_str()).collect();
    assert_eq!(order, ["P#1", "P#2", "P#3"]);
    assert_eq!(
        stock.runs_of("P#3"),
        4,
        "P#3 ran once more, by the other operator"
    );
    let left = ops::list_failures(&engine, &FailureFilter::default())
        .await
        .unwrap();
    assert_eq!(
        keys(&left),
        [(PK_B, "P#9"), (PK_A, "P#2")].map(|(p, s)| (p.to_owned(), s.to_owned())),
        "P#2 failed again after P#9 failed"
    );
    let json = serde_json::to_value(&summary).unwrap();
    assert_eq!(json["results"][1]["outcome"], "failedAgain");
    assert_eq!(json["results"][2]["outcome"], "alreadyDone");
}
