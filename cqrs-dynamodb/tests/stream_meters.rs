//! The stream consumer's metrics (`cqrs_dynamodb::stream::meters`) and the
//! monitor's view of its backlog, against DynamoDB Local: a command held
//! by its handler is counted as unsettled, its age grows, and everything
//! returns to zero once it is settled and the consumer stops.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use cqrs_core::{BoxError, DataSyncEvent, DataSyncHandler};
use cqrs_dynamodb::stream::meters;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

const MINUTE: Duration = Duration::from_secs(60);

/// Holds the commands of `ORDER#HELD` until released; the others pass.
struct Holding {
    released: AtomicBool,
}

#[async_trait]
impl DataSyncHandler for Holding {
    fn name(&self) -> &str {
        "holding"
    }

    async fn handle(&self, event: &DataSyncEvent) -> Result<(), BoxError> {
        while event.command.sk == "ORDER#HELD" && !self.released.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

/// What the recorder was given, added up: its snapshots hand each value
/// over once (counters and gauges are reset to 0 by a snapshot).
struct Meters {
    snapshotter: Snapshotter,
    totals: HashMap<String, f64>,
}

impl Meters {
    /// Takes a snapshot: adds up what moved; returns the gauges' values as
    /// handed over (what they were last set to, or moved by, since the last one).
    fn take(&mut self) -> HashMap<String, f64> {
        let mut gauges = HashMap::new();
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let moved = match value {
                DebugValue::Counter(c) => c as f64,
                DebugValue::Gauge(g) => {
                    gauges.insert(key.key().name().to_owned(), g.into_inner());
                    g.into_inner()
                }
                DebugValue::Histogram(_) => continue,
            };
            *self.totals.entry(key.key().name().to_owned()).or_default() += moved;
        }
        gauges
    }

    /// The value of the unlabelled series `name` now (a counter, or a gauge
    /// moved by increments), `None` if it never moved.
    fn value(&mut self, name: &str) -> Option<f64> {
        self.take();
        self.totals.get(name).copied()
    }

    /// The value the gauge `name` was last set to since the last snapshot.
    fn last_set(&mut self, name: &str) -> Option<f64> {
        self.take().get(name).copied()
    }
}

#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test(flavor = "multi_thread")]
async fn the_consumer_meters_its_reads_leases_and_backlog() {
    if !available() {
        return;
    }
    // Global: the consumer's tasks run on every thread of the runtime (each
    // test runs in a process of its own under nextest).
    let recorder = DebuggingRecorder::new();
    let mut seen = Meters {
        snapshotter: recorder.snapshotter(),
        totals: HashMap::new(),
    };
    recorder.install().expect("the only recorder of this process");

    let storage = fresh_storage("stream-meters").await;
    let handler = Arc::new(Holding {
        released: AtomicBool::new(false),
    });
    let engine = engine_builder(Arc::new(storage.clone()), handler.clone())
        .handler_timeout(MINUTE)
        .build();
    publish_versions(&engine, "ORDER#A", 1, 3).await;
    publish_versions(&engine, "ORDER#HELD", 1, 1).await;

    let consumer = consumer(&engine, &storage);
    let monitor = consumer.monitor();
    assert!(!monitor.is_running());
    let running = Running::start(consumer);
    wait_until("ORDER#A settled", MINUTE, || monitor.stats().settled >= 3).await;

    // One command is held: read, handed over, not settled.
    assert!(monitor.is_running());
    let contact = monitor.last_contact().expect("the lease table was reached");
    assert!((cqrs_core::clock::now() - contact).num_seconds() < 2);
    assert_eq!(monitor.unsettled(), 1);
    let oldest = monitor.oldest_unsettled().expect("the held command is pending");
    assert_eq!(seen.value(meters::UNSETTLED), Some(1.0));
    let held = monitor.owned_shards().len() as f64;
    assert!(held >= 1.0);
    assert_eq!(seen.value(meters::LEASES_HELD), Some(held));
    // Its age grows on every poll while it stays unsettled (from the
    // command's time).
    let (written, now) = (oldest, cqrs_core::clock::now());
    assert!(
        written <= now && (now - written).num_seconds() < 10,
        "written at {written}, now {now}"
    );
    wait_until("the backlog ages past 1.5 s", MINUTE, || {
        seen.last_set(meters::OLDEST_UNSETTLED_SECONDS)
            .is_some_and(|age| age >= 1.5)
    })
    .await;
    assert_eq!(monitor.oldest_unsettled(), Some(oldest));

    handler.released.store(true, Ordering::SeqCst);
    wait_until("ORDER#HELD settled", MINUTE, || monitor.stats().settled >= 4).await;
    wait_until("the backlog gauge back to 0", MINUTE, || {
        seen.value(meters::UNSETTLED) == Some(0.0)
    })
    .await;
    assert_eq!(monitor.unsettled(), 0);
    assert_eq!(monitor.oldest_unsettled(), None);
    running.stop(Duration::from_secs(10)).await;

    assert!(!monitor.is_running());
    assert_eq!(seen.value(meters::LEASES_HELD), Some(0.0), "leases released");
    // The counters agree with the monitor's.
    let stats = monitor.stats();
    assert_eq!((stats.fed, stats.settled, stats.retries), (4, 4, 0), "{stats:?}");
    let mut counted = |name| seen.value(name).unwrap_or(0.0) as u64;
    assert_eq!(counted(meters::RECORDS_READ), stats.records_read);
    assert_eq!(counted(meters::FED), 4);
    assert_eq!(counted(meters::SETTLED), 4);
    assert_eq!(counted(meters::RETRIES), 0);
    assert_eq!(counted(meters::LEASES_TAKEN), stats.leases_taken);
    assert!(stats.leases_taken >= 1);
    assert_eq!(counted(meters::CHECKPOINTS_SAVED), stats.checkpoints_saved);
    assert!(stats.checkpoints_saved >= 1);
    cqrs_dynamodb::testing::drop_tables(&storage)
        .await
        .expect("tables dropped");
}
