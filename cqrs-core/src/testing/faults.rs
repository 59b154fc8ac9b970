//! Checks under injected faults: a caller that drops its future, a handler
//! that hangs, storage that fails, loses responses or goes away for a while.
//! Each counts what was lost, stranded or doubled: every accepted command
//! must end applied and finished (or recorded as failed), its handlers run
//! to completion at least once.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use super::fixtures::{cmd, cmd_at, ctx, fast_retry, n, PK_A};
use super::{Fault, FaultyStorage, Interleaved, Op, Rule, StorageFactory};
use crate::engine::Engine;
use crate::error::{BoxError, Error};
use crate::handler::{DataSyncEvent, DataSyncHandler};
use crate::keys::EntityKey;
use crate::model::CommandStatus;
use crate::services::{CommandService, DataService};

/// Longest wait for the pipeline to settle in these checks: a bound, so that
/// a lost command fails the check instead of hanging it.
const SETTLE_WITHIN: Duration = Duration::from_secs(60);

/// A handler whose runs a check controls: held at a gate, hung for one
/// entity, failing transiently or for good. Records the runs that completed.
struct Scripted {
    completed: Mutex<Vec<(String, u64)>>,
    started: watch::Sender<usize>,
    gate: watch::Sender<bool>,
    hang_sk: Mutex<Option<String>>,
    transient_failures: AtomicU32,
    /// Transient failures come wrapped in a user's error enum, through
    /// `#[error(transparent)]`.
    wrap_transparently: AtomicBool,
    broken: AtomicBool,
}

/// A user's error enum, as the guide writes it: the framework's errors
/// wrapped transparently (its `source()` is the wrapped error's source).
#[derive(Debug, thiserror::Error)]
enum UserError {
    #[error(transparent)]
    Cqrs(#[from] Error),
}

impl Scripted {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            completed: Mutex::default(),
            started: watch::channel(0).0,
            gate: watch::channel(true).0,
            hang_sk: Mutex::default(),
            transient_failures: AtomicU32::new(0),
            wrap_transparently: AtomicBool::new(false),
            broken: AtomicBool::new(false),
        })
    }

    fn completed(&self) -> Vec<(String, u64)> {
        self.completed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn completions_of(&self, sk: &str, version: u64) -> usize {
        self.completed()
            .iter()
            .filter(|(s, v)| s == sk && *v == version)
            .count()
    }

    fn close_gate(&self) {
        self.gate.send_replace(false);
    }

    fn open_gate(&self) {
        self.gate.send_replace(true);
    }

    fn hang_on(&self, sk: Option<&str>) {
        *self.hang_sk.lock().unwrap_or_else(PoisonError::into_inner) = sk.map(str::to_owned);
    }

    fn hangs_on(&self, sk: &str) -> bool {
        self.hang_sk
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_deref()
            == Some(sk)
    }

    /// Waits (bounded) until `runs` runs have started.
    async fn wait_started(&self, runs: usize) {
        let mut started = self.started.subscribe();
        tokio::time::timeout(SETTLE_WITHIN, started.wait_for(|n| *n >= runs))
            .await
            .expect("handler runs started in time")
            .expect("channel open");
    }
}

#[async_trait]
impl DataSyncHandler for Scripted {
    fn name(&self) -> &str {
        "scripted"
    }

    async fn handle(&self, event: &DataSyncEvent) -> Result<(), BoxError> {
        self.started.send_modify(|n| *n += 1);
        if self.broken.load(Ordering::SeqCst) {
            return Err("broken for good".into());
        }
        let transient = self
            .transient_failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if transient {
            let error = Error::backend(std::io::Error::other("storage is down"), true);
            if self.wrap_transparently.load(Ordering::SeqCst) {
                return Err(Box::new(UserError::from(error)));
            }
            return Err(Box::new(error));
        }
        while self.hangs_on(&event.command.sk) {
            // Hung: only the pipeline's timeout ends this run.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut gate = self.gate.subscribe();
        let _ = gate.wait_for(|open| *open).await;
        self.completed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((event.command.sk.to_string(), event.command.version));
        Ok(())
    }
}

/// An engine over faulty storage (wrapping the backend), with the scripted handler.
async fn faulty_engine(
    factory: &dyn StorageFactory,
    handler_timeout: Duration,
) -> (Engine, Arc<FaultyStorage>, Arc<Scripted>) {
    let storage = Arc::new(FaultyStorage::new(Arc::new(Interleaved(factory.storage().await))));
    let handler = Scripted::new();
    let engine = Engine::builder(storage.clone())
        .retry(fast_retry())
        .handler_timeout(handler_timeout)
        .handler_arc(handler.clone())
        .build();
    (engine, storage, handler)
}

/// Waits (bounded) until `done` holds.
async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(
            started.elapsed() < SETTLE_WITHIN,
            "{what}: not within {SETTLE_WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn settle(engine: &Engine) {
    tokio::time::timeout(SETTLE_WITHIN, engine.wait_idle())
        .await
        .expect("every command reached a final state in time");
}

/// The status of a stored command.
async fn status(engine: &Engine, sk: &str, version: u64) -> Option<CommandStatus> {
    let key = EntityKey::new(PK_A, sk);
    engine
        .get_command(&key, version, &ctx("shop-a"))
        .await
        .expect("storage answers")
        .map(|c| c.status)
}

async fn data_version(engine: &Engine, sk: &str) -> Option<u64> {
    let key = EntityKey::new(PK_A, sk);
    engine
        .get_item(&key, &ctx("shop-a"))
        .await
        .expect("storage answers")
        .map(|d| d.version)
}

/// A sync publish (and a commit) whose caller drops its future while the
/// handlers run still completes them and records completion.
pub async fn dropped_sync_publish_still_runs_its_handlers(factory: &dyn StorageFactory) {
    let (engine, _, handler) = faulty_engine(factory, Duration::from_secs(10)).await;
    let a = ctx("shop-a");
    handler.close_gate();
    let publish = engine.publish_sync(cmd(PK_A, "ORDER#1", n(1)), &a);
    tokio::select! {
        _ = publish => panic!("a sync publish returned before its handler completed"),
        () = handler.wait_started(1) => {}
    }
    // The publish future is dropped now, its handler held at the gate.
    let commit = engine.commit(vec![cmd(PK_A, "ORDER#2", n(2)), cmd(PK_A, "ORDER#3", n(3))], &a);
    tokio::select! {
        _ = commit => panic!("a commit returned before its handlers completed"),
        () = handler.wait_started(3) => {}
    }
    assert!(handler.completed().is_empty());
    handler.open_gate();
    settle(&engine).await;
    for sk in ["ORDER#1", "ORDER#2", "ORDER#3"] {
        assert_eq!(handler.completions_of(sk, 1), 1, "{sk}: handler completed once");
        assert_eq!(
            status(&engine, sk, 1).await,
            Some(CommandStatus::Finished),
            "{sk}"
        );
        assert_eq!(data_version(&engine, sk).await, Some(1), "{sk}");
    }
}

/// An async publish dropped after its write landed is processed all the
/// same; one dropped before its write stores nothing, half of nothing.
pub async fn dropped_async_publish_is_processed_or_never_stored(factory: &dyn StorageFactory) {
    let (engine, storage, handler) = faulty_engine(factory, Duration::from_secs(10)).await;
    let a = ctx("shop-a");
    storage.inject(
        Rule::new(Fault::DelayResponse(Duration::from_millis(300)))
            .on(&[Op::PutCommand])
            .times(1),
    );
    let landed = engine.publish_async(cmd(PK_A, "ORDER#LANDED", n(1)), &a);
    assert!(
        tokio::time::timeout(Duration::from_millis(100), landed)
            .await
            .is_err(),
        "the publish was still waiting for its response"
    );
    storage.inject(
        Rule::new(Fault::Delay(Duration::from_millis(300)))
            .on(&[Op::PutCommand])
            .times(1),
    );
    let never = engine.publish_async(cmd(PK_A, "ORDER#NEVER", n(1)), &a);
    assert!(tokio::time::timeout(Duration::from_millis(100), never)
        .await
        .is_err());
    settle(&engine).await;

    assert_eq!(storage.faults(Op::PutCommand), 2);
    assert_eq!(data_version(&engine, "ORDER#LANDED").await, Some(1));
    assert_eq!(
        status(&engine, "ORDER#LANDED", 1).await,
        Some(CommandStatus::Finished)
    );
    assert_eq!(handler.completions_of("ORDER#LANDED", 1), 1);
    assert_eq!(status(&engine, "ORDER#NEVER", 1).await, None);
    assert_eq!(data_version(&engine, "ORDER#NEVER").await, None);
    assert_eq!(handler.completions_of("ORDER#NEVER", 1), 0);
}

/// A write whose response is lost (it landed; the caller got an error) is
/// not stranded: the pipeline finds the command and finishes it.
pub async fn lost_responses_strand_nothing(factory: &dyn StorageFactory) {
    let (engine, storage, handler) = faulty_engine(factory, Duration::from_secs(10)).await;
    let a = ctx("shop-a");
    storage.inject(Rule::new(Fault::LostResponse).on(&[Op::PutCommand]).times(1));
    let error = engine
        .publish_async(cmd(PK_A, "ORDER#ASYNC", n(1)), &a)
        .await
        .expect_err("the caller saw the lost response");
    assert!(error.is_retryable(), "{error}");
    // The pipeline applies that command: done before the next fault, which
    // must be the sync publish's own.
    settle(&engine).await;
    storage.inject(Rule::new(Fault::LostResponse).on(&[Op::Apply]).times(1));
    let error = engine
        .publish_sync(cmd(PK_A, "ORDER#SYNC", n(1)), &a)
        .await
        .expect_err("the caller saw the lost response");
    assert!(error.is_retryable(), "{error}");
    settle(&engine).await;
    for sk in ["ORDER#ASYNC", "ORDER#SYNC"] {
        assert_eq!(data_version(&engine, sk).await, Some(1), "{sk} applied");
        assert_eq!(
            status(&engine, sk, 1).await,
            Some(CommandStatus::Finished),
            "{sk}"
        );
        assert_eq!(handler.completions_of(sk, 1), 1, "{sk}: handled once");
    }
}

/// The pipeline's own apply of an async command lands but answers an error
/// (a timeout that landed): its retry conflicts with that very write, and
/// the pipeline still runs the handlers and finishes the command, instead
/// of taking the conflict for another run's apply and leaving the command
/// `applied` for good. (Found by the deterministic simulation.)
pub async fn a_lost_answer_to_the_pipelines_apply_strands_nothing(factory: &dyn StorageFactory) {
    let (engine, storage, handler) = faulty_engine(factory, Duration::from_secs(10)).await;
    let a = ctx("shop-a");
    storage.inject(Rule::new(Fault::LostResponse).on(&[Op::Apply]).times(1));
    engine
        .publish_async(cmd(PK_A, "ORDER#APPLY-LOST", n(1)), &a)
        .await
        .expect("stored");
    settle(&engine).await;
    assert_eq!(storage.faults(Op::Apply), 1, "the apply's answer was lost");
    assert_eq!(
        data_version(&engine, "ORDER#APPLY-LOST").await,
        Some(1),
        "applied"
    );
    assert_eq!(
        status(&engine, "ORDER#APPLY-LOST", 1).await,
        Some(CommandStatus::Finished),
        "finished, not left applied"
    );
    assert_eq!(handler.completions_of("ORDER#APPLY-LOST", 1), 1, "handled once");
}

/// A hung handler is cut off by the timeout, retried, then recorded as a
/// failure; other entities are processed meanwhile, and a reprocess once the
/// handler behaves finishes the command.
pub async fn hung_handler_times_out_and_others_go_on(factory: &dyn StorageFactory) {
    let (engine, _, handler) = faulty_engine(factory, Duration::from_millis(100)).await;
    let a = ctx("shop-a");
    handler.hang_on(Some("E#HUNG"));
    engine.publish_async(cmd(PK_A, "E#HUNG", n(0)), &a).await.unwrap();
    let others: Vec<String> = (0..10).map(|i| format!("E#{i}")).collect();
    for sk in &others {
        engine.publish_async(cmd(PK_A, sk, n(1)), &a).await.unwrap();
    }
    settle(&engine).await;
    for sk in &others {
        assert_eq!(handler.completions_of(sk, 1), 1, "{sk} went on");
        assert_eq!(
            status(&engine, sk, 1).await,
            Some(CommandStatus::Finished),
            "{sk}"
        );
    }
    assert_eq!(status(&engine, "E#HUNG", 1).await, Some(CommandStatus::Failed));
    // A sync publish with a hung handler returns too, within the timeouts.
    let published = tokio::time::timeout(
        SETTLE_WITHIN,
        engine.publish_sync(cmd_at(PK_A, "E#HUNG", 1, n(1)), &a),
    )
    .await
    .expect("a sync publish is bounded by the handler timeout");
    assert_eq!(published.unwrap().into_item().version, 2, "the data is written");
    assert_eq!(status(&engine, "E#HUNG", 2).await, Some(CommandStatus::Failed));

    let failures = engine.list_failures(&a).await.unwrap();
    assert_eq!(failures.len(), 2, "{failures:?}");
    for failure in &failures {
        assert_eq!(failure.sk, "E#HUNG");
        assert!(failure.failures[0].error.contains("timed out"), "{failures:?}");
        assert_eq!(failure.failures[0].attempts, fast_retry().max_attempts);
    }

    handler.hang_on(None);
    let key = EntityKey::new(PK_A, "E#HUNG");
    for version in [1, 2] {
        assert_eq!(
            engine.reprocess(&key, version, &a).await.unwrap(),
            CommandStatus::Finished
        );
        assert_eq!(handler.completions_of("E#HUNG", version), 1);
    }
    assert!(engine.list_failures(&a).await.unwrap().is_empty());
}

/// Storage goes away while commands are in the pipeline: nothing is marked
/// done that is not, publishes made during the outage fail (not accepted),
/// and once storage is back every accepted command completes, without a
/// restart and without a reprocess.
pub async fn storage_outage_completes_every_accepted_command(factory: &dyn StorageFactory) {
    let (engine, storage, handler) = faulty_engine(factory, Duration::from_secs(10)).await;
    let a = ctx("shop-a");
    handler.close_gate();
    let accepted: Vec<String> = (0..10).map(|i| format!("E#{i}")).collect();
    for sk in &accepted {
        engine.publish_async(cmd(PK_A, sk, n(1)), &a).await.unwrap();
    }
    // Every handler is running, held at the gate, when storage goes away.
    handler.wait_started(accepted.len()).await;
    let outage = storage.outage();
    for i in 0..5 {
        let refused = engine
            .publish_async(cmd(PK_A, &format!("E#LATE{i}"), n(1)), &a)
            .await
            .expect_err("nothing is accepted during the outage");
        assert!(refused.is_retryable(), "{refused}");
    }
    handler.open_gate();
    // The handlers complete, but their completion cannot be recorded.
    wait_until("every handler completed once", || {
        handler.completed().len() >= accepted.len()
    })
    .await;
    storage.remove(outage);
    settle(&engine).await;

    assert!(
        storage.faults(Op::SetCommandStatus) > 0,
        "the outage hit the status writes"
    );
    let mut handled = HashSet::new();
    for sk in &accepted {
        assert_eq!(data_version(&engine, sk).await, Some(1), "{sk} applied");
        assert_eq!(
            status(&engine, sk, 1).await,
            Some(CommandStatus::Finished),
            "{sk}"
        );
        assert!(handler.completions_of(sk, 1) >= 1, "{sk} handled");
        handled.insert(sk.clone());
    }
    assert_eq!(handled.len(), accepted.len(), "nothing lost");
    assert!(
        engine.list_failures(&a).await.unwrap().is_empty(),
        "an outage is not a failure"
    );
    for i in 0..5 {
        assert_eq!(data_version(&engine, &format!("E#LATE{i}")).await, None);
    }
}

/// A failure record that cannot be written while storage is down is written
/// once it is back: the failed command does not vanish.
pub async fn failure_records_are_written_once_storage_is_back(factory: &dyn StorageFactory) {
    let (engine, storage, handler) = faulty_engine(factory, Duration::from_secs(10)).await;
    let a = ctx("shop-a");
    handler.broken.store(true, Ordering::SeqCst);
    let down = storage.inject(Rule::new(Fault::Unavailable).on(&[Op::PutFailure]));
    engine.publish_async(cmd(PK_A, "E#1", n(1)), &a).await.unwrap();
    wait_until("failure records refused", || storage.faults(Op::PutFailure) >= 3).await;
    assert_eq!(
        status(&engine, "E#1", 1).await,
        Some(CommandStatus::Applied),
        "not marked failed yet"
    );
    storage.remove(down);
    settle(&engine).await;
    assert_eq!(status(&engine, "E#1", 1).await, Some(CommandStatus::Failed));
    let failures = engine.list_failures(&a).await.unwrap();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].failures[0].handler, "scripted");
}

/// A handler that fails because storage is unavailable (a retryable error in
/// its chain) is not recorded as failed: it is run again until it passes,
/// for async and sync publishes alike.
pub async fn transient_handler_errors_are_retried_until_they_pass(factory: &dyn StorageFactory) {
    transient_failures_are_outlasted(factory, false).await;
}

/// A retryable error wrapped in a user's error enum through
/// `#[error(transparent)]` (whose `source()` skips the framework's error)
/// is still seen as transient: the command is processed again until the
/// handler passes, never recorded as failed.
pub async fn transient_errors_are_found_through_transparent_wrappers(factory: &dyn StorageFactory) {
    transient_failures_are_outlasted(factory, true).await;
}

/// An async and a sync publish whose handler fails transiently (more times
/// than one run's retry budget), its errors wrapped transparently or not:
/// each command ends finished, its handler completed once, no failure
/// recorded.
async fn transient_failures_are_outlasted(factory: &dyn StorageFactory, wrap_transparently: bool) {
    let (engine, _, handler) = faulty_engine(factory, Duration::from_secs(10)).await;
    handler
        .wrap_transparently
        .store(wrap_transparently, Ordering::SeqCst);
    let a = ctx("shop-a");
    let budget = fast_retry().max_attempts;
    handler.transient_failures.store(budget * 2, Ordering::SeqCst);
    engine
        .publish_async(cmd(PK_A, "E#ASYNC", n(1)), &a)
        .await
        .unwrap();
    settle(&engine).await;
    assert_eq!(status(&engine, "E#ASYNC", 1).await, Some(CommandStatus::Finished));
    assert_eq!(handler.completions_of("E#ASYNC", 1), 1);
    assert_eq!(
        handler.transient_failures.load(Ordering::SeqCst),
        0,
        "every failure was retried"
    );

    handler.transient_failures.store(budget + 1, Ordering::SeqCst);
    engine
        .publish_sync(cmd(PK_A, "E#SYNC", n(1)), &a)
        .await
        .expect("the data is written: the publish stands");
    settle(&engine).await;
    assert_eq!(status(&engine, "E#SYNC", 1).await, Some(CommandStatus::Finished));
    assert_eq!(handler.completions_of("E#SYNC", 1), 1);
    assert!(engine.list_failures(&a).await.unwrap().is_empty());
}

/// An unfinished command is finished by [`Engine::settle`]: a sync publish
/// only once the recovery grace has passed (its publisher may still be
/// running its handlers), an async one applied by a pipeline run that died
/// at once when the caller says it was inserted `published`.
pub async fn settle_finishes_what_a_dead_publisher_left(factory: &dyn StorageFactory) {
    let storage = Arc::new(FaultyStorage::new(Arc::new(Interleaved(factory.storage().await))));
    let handler = Scripted::new();
    let grace = Duration::from_secs(1);
    let engine = Engine::builder(storage.clone())
        .retry(fast_retry())
        .dispatch(crate::engine::AsyncDispatch::External)
        .recovery_grace(grace)
        .handler_arc(handler.clone())
        .build();
    let a = ctx("shop-a");
    // The status writes are lost: the publishers "die" before recording completion.
    let lost = storage.inject(Rule::new(Fault::Unavailable).on(&[Op::SetCommandStatus]));
    engine.publish_sync(cmd(PK_A, "E#SYNC", n(1)), &a).await.unwrap();
    engine
        .publish_async(cmd(PK_A, "E#ASYNC", n(1)), &a)
        .await
        .unwrap();
    assert!(engine.process(&EntityKey::new(PK_A, "E#ASYNC"), 1).await.is_err());
    settle(&engine).await;
    storage.remove(lost);
    assert_eq!(status(&engine, "E#SYNC", 1).await, Some(CommandStatus::Applied));
    assert_eq!(status(&engine, "E#ASYNC", 1).await, Some(CommandStatus::Applied));
    assert_eq!(handler.completions_of("E#SYNC", 1), 1);
    assert_eq!(handler.completions_of("E#ASYNC", 1), 1);

    let started = std::time::Instant::now();
    let async_key = EntityKey::new(PK_A, "E#ASYNC");
    let settled = engine
        .settle_inserted(&async_key, 1, CommandStatus::Published)
        .await
        .unwrap();
    assert_eq!(settled, CommandStatus::Finished);
    assert_eq!(
        handler.completions_of("E#ASYNC", 1),
        2,
        "run again, at least once"
    );
    let sync_key = EntityKey::new(PK_A, "E#SYNC");
    let settled = engine.settle(&sync_key, 1).await.unwrap();
    assert_eq!(settled, CommandStatus::Finished);
    assert!(started.elapsed() >= grace / 2, "the sync publisher got its grace");
    assert_eq!(handler.completions_of("E#SYNC", 1), 2, "run again, at least once");
    // Settled commands are left alone.
    assert_eq!(
        engine.settle(&sync_key, 1).await.unwrap(),
        CommandStatus::Finished
    );
    assert_eq!(
        engine.settle(&async_key, 1).await.unwrap(),
        CommandStatus::Finished
    );
    assert_eq!(handler.completions_of("E#SYNC", 1), 2);
    assert_eq!(handler.completions_of("E#ASYNC", 1), 2);
}
