//! Recovery and the publisher's liveness: an interrupted sync publish is
//! recovered as soon as its publisher's heartbeat expires, and a publisher
//! that is alive is never taken over within the recovery grace.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;

use super::faulty::FaultyStorage;
use super::fixtures::{cmd, ctx, fast_retry, n, PK_A};
use super::StorageFactory;
use crate::engine::{AsyncDispatch, Engine};
use crate::error::BoxError;
use crate::handler::{DataSyncEvent, DataSyncHandler, Interest};
use crate::heartbeat::{Heartbeat, HeartbeatRenewal};
use crate::keys::EntityKey;
use crate::model::CommandStatus;
use crate::services::CommandService;
use crate::storage::Storage;

/// A handler that takes `run_for` per run, or never ends once `hang` is
/// set, and counts the runs it started per `(sk, version)`.
struct Slow {
    run_for: Duration,
    hang: AtomicBool,
    started: Mutex<HashMap<(String, u64), usize>>,
}

impl Slow {
    fn new(run_for: Duration) -> Arc<Self> {
        Arc::new(Self {
            run_for,
            hang: AtomicBool::new(false),
            started: Mutex::default(),
        })
    }

    fn runs_of(&self, sk: &str, version: u64) -> usize {
        self.started
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(sk.to_owned(), version))
            .copied()
            .unwrap_or(0)
    }
}

#[async_trait]
impl DataSyncHandler for Slow {
    fn name(&self) -> &str {
        "slow"
    }

    fn interest(&self) -> Interest {
        Interest::All
    }

    async fn handle(&self, event: &DataSyncEvent) -> Result<(), BoxError> {
        *self
            .started
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((event.command.sk.to_string(), event.command.version))
            .or_default() += 1;
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(self.run_for).await;
        Ok(())
    }
}

/// Waits (bounded) until the command row of `sk` version 1 exists.
async fn wait_for_row(storage: &dyn Storage, sk: &str) -> crate::model::CommandRecord {
    let started = Instant::now();
    loop {
        if let Some(row) = storage.get_command(&EntityKey::new(PK_A, sk), 1).await.unwrap() {
            return row;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{sk} was written");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The heartbeat primitives: a renewal extends a live heartbeat and never
/// brings an expired one back.
pub async fn storage_heartbeats(factory: &dyn StorageFactory) {
    let storage = factory.storage().await;
    let publisher = format!("conformance-{}", uuid::Uuid::new_v4().simple());
    let now = Utc::now();
    let until = now + chrono::Duration::seconds(10);
    let first = storage.renew_heartbeat(&publisher, until, now).await.unwrap();
    if first == HeartbeatRenewal::Unsupported {
        // A backend without heartbeats says so on both sides.
        assert_eq!(
            storage.get_heartbeat(&publisher).await.unwrap(),
            Heartbeat::Unsupported
        );
        return;
    }
    assert_eq!(first, HeartbeatRenewal::Renewed);
    let millis = |heartbeat: Heartbeat| match heartbeat {
        Heartbeat::Until(until) => Some(until.timestamp_millis()),
        _ => None,
    };
    assert_eq!(
        millis(storage.get_heartbeat(&publisher).await.unwrap()),
        Some(until.timestamp_millis())
    );
    assert_eq!(
        storage.get_heartbeat("conformance-nobody").await.unwrap(),
        Heartbeat::Missing
    );
    // Renewed while live.
    let later = until + chrono::Duration::seconds(5);
    assert_eq!(
        storage.renew_heartbeat(&publisher, later, now).await.unwrap(),
        HeartbeatRenewal::Renewed
    );
    assert_eq!(
        millis(storage.get_heartbeat(&publisher).await.unwrap()),
        Some(later.timestamp_millis())
    );
    // Expired: refused, and left as it was.
    let after_expiry = later + chrono::Duration::seconds(1);
    assert_eq!(
        storage
            .renew_heartbeat(
                &publisher,
                after_expiry + chrono::Duration::seconds(10),
                after_expiry
            )
            .await
            .unwrap(),
        HeartbeatRenewal::Expired
    );
    assert_eq!(
        millis(storage.get_heartbeat(&publisher).await.unwrap()),
        Some(later.timestamp_millis())
    );
}

/// A publisher whose handlers run much longer than its lease (but within
/// the recovery grace) is left alone while it lives: a recovering engine's
/// settle waits for it, returns once it finished, and the handler ran
/// exactly once per command. Settle does not wait for the whole grace.
pub async fn live_publisher_is_never_taken_over(factory: &dyn StorageFactory) {
    let storage = factory.storage().await;
    let lease = Duration::from_millis(300);
    let grace = Duration::from_secs(20);
    let run_for = Duration::from_millis(1500);
    let handler = Slow::new(run_for);
    let engine = |storage: Arc<dyn Storage>| {
        Engine::builder(storage)
            .retry(fast_retry())
            .dispatch(AsyncDispatch::External)
            .recovery_grace(grace)
            .publisher_lease(lease)
            .handler_timeout(Duration::from_secs(30))
            .handler_arc(handler.clone())
            .build()
    };
    let publisher = engine(storage.clone());
    let recovery = engine(storage.clone());
    let a = ctx("shop-a");
    let sks = ["LIVE#1", "LIVE#2", "LIVE#3"];
    let publishes: Vec<_> = sks
        .into_iter()
        .map(|sk| {
            let publisher = publisher.clone();
            let a = a.clone();
            tokio::spawn(async move { publisher.publish_sync(cmd(PK_A, sk, n(1)), &a).await })
        })
        .collect();
    for sk in sks {
        let row = wait_for_row(storage.as_ref(), sk).await;
        assert_eq!(row.status, CommandStatus::Applied, "{sk}: its handler is running");
        if storage.get_heartbeat("conformance-nobody").await.unwrap() != Heartbeat::Unsupported {
            assert!(row.publisher.is_some(), "{sk} names its publisher");
        }
    }
    let started = Instant::now();
    let settles = sks.map(|sk| {
        let recovery = recovery.clone();
        tokio::spawn(async move { recovery.settle(&EntityKey::new(PK_A, sk), 1).await })
    });
    for settle in settles {
        assert_eq!(settle.await.unwrap().unwrap(), CommandStatus::Finished);
    }
    let waited = started.elapsed();
    for publish in publishes {
        publish.await.unwrap().unwrap();
    }
    for sk in sks {
        assert_eq!(handler.runs_of(sk, 1), 1, "{sk}: its publisher's run only");
    }
    assert!(
        waited < grace / 2,
        "settle returned once the live publisher finished, not after the grace: {waited:?}"
    );
}

/// A publisher that is gone — its handler never returns, and it can no
/// longer reach storage, so its heartbeat is not renewed — has its
/// interrupted sync publish recovered once its lease has run out, long
/// before the recovery grace. A row whose publisher never wrote a heartbeat
/// is recovered at once.
pub async fn gone_publisher_is_recovered_within_its_lease(factory: &dyn StorageFactory) {
    let shared = factory.storage().await;
    let lease = Duration::from_millis(500);
    let grace = Duration::from_secs(30);
    let dying = Slow::new(Duration::ZERO);
    dying.hang.store(true, Ordering::SeqCst);
    let publisher_storage = Arc::new(FaultyStorage::new(shared.clone()));
    let publisher = Engine::builder(publisher_storage.clone())
        .retry(fast_retry())
        .dispatch(AsyncDispatch::External)
        .recovery_grace(grace)
        .publisher_lease(lease)
        .handler_timeout(Duration::from_secs(600))
        .handler_arc(dying.clone())
        .build();
    let handler = Slow::new(Duration::ZERO);
    let recovery = Engine::builder(shared.clone())
        .retry(fast_retry())
        .dispatch(AsyncDispatch::External)
        .recovery_grace(grace)
        .publisher_lease(lease)
        .handler_arc(handler.clone())
        .build();
    let a = ctx("shop-a");
    let publish = tokio::spawn({
        let publisher = publisher.clone();
        async move { publisher.publish_sync(cmd(PK_A, "GONE#1", n(1)), &a).await }
    });
    let row = wait_for_row(shared.as_ref(), "GONE#1").await;
    if shared.get_heartbeat("conformance-nobody").await.unwrap() == Heartbeat::Unsupported {
        // Without heartbeats, the grace is all recovery has.
        publish.abort();
        return;
    }
    let publisher_id = row.publisher.clone().expect("the row names its publisher");
    // The publisher dies: nothing it does reaches storage any more.
    publisher_storage.outage();
    let key = EntityKey::new(PK_A, "GONE#1");
    let started = Instant::now();
    assert_eq!(recovery.settle(&key, 1).await.unwrap(), CommandStatus::Finished);
    let recovered_after = started.elapsed();
    assert_eq!(handler.runs_of("GONE#1", 1), 1, "recovery ran the handler");
    assert!(
        recovered_after < lease * 6,
        "recovered within about the lease ({lease:?}), not the grace ({grace:?}): {recovered_after:?}"
    );
    assert!(
        matches!(shared.get_heartbeat(&publisher_id).await.unwrap(), Heartbeat::Until(at) if at <= Utc::now()),
        "the publisher's heartbeat had expired"
    );
    publish.abort();

    // A row naming a publisher that never wrote a heartbeat: recovered at once.
    let mut orphan = crate::engine::records::command_record(
        cmd(PK_A, "GONE#2", n(1)),
        1,
        CommandStatus::Applied,
        &ctx("shop-a"),
        Utc::now(),
    );
    orphan.publisher = Some("conformance-never-alive".into());
    let data = crate::engine::records::data_item(&orphan, None);
    shared
        .apply(&[crate::storage::ApplyWrite {
            command: crate::storage::CommandWrite::Insert(Box::new(orphan)),
            data,
            expected_data_version: 0,
            history: None,
            idempotency: None,
            indexes: Vec::new(),
        }])
        .await
        .unwrap();
    let started = Instant::now();
    let key = EntityKey::new(PK_A, "GONE#2");
    assert_eq!(recovery.settle(&key, 1).await.unwrap(), CommandStatus::Finished);
    assert!(started.elapsed() < lease * 4, "at once: {:?}", started.elapsed());
    assert_eq!(handler.runs_of("GONE#2", 1), 1);
    let failures = recovery.list_failures(&ctx("shop-a")).await.unwrap();
    assert!(failures.is_empty(), "{failures:?}");
}
