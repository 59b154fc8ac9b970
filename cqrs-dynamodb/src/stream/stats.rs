//! What a running consumer has done so far, for tests and health checks.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Counters of a [`StreamConsumer`](super::StreamConsumer) since it was built.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerStats {
    /// Stream records read (every kind, redeliveries included).
    pub records_read: u64,
    /// Records handed to [`Engine::settle_inserted`](cqrs_core::Engine::settle_inserted): the
    /// inserts of command rows still `published` or `applied`.
    pub fed: u64,
    /// Records whose settle returned Ok (the command is final, or its row is gone).
    pub settled: u64,
    /// Settle calls that failed and were tried again later.
    pub retries: u64,
    /// Records skipped (not a command to settle, or malformed).
    pub skipped: u64,
    /// Checkpoints written.
    pub checkpoints_saved: u64,
    /// Leases taken (a shard started or taken over).
    pub leases_taken: u64,
    /// Leases lost: taken by another consumer, or not renewed in time.
    pub leases_lost: u64,
    /// Shards read to their end and marked finished by this consumer.
    pub shards_finished: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub records_read: AtomicU64,
    pub fed: AtomicU64,
    pub settled: AtomicU64,
    pub retries: AtomicU64,
    pub skipped: AtomicU64,
    pub checkpoints_saved: AtomicU64,
    pub leases_taken: AtomicU64,
    pub leases_lost: AtomicU64,
    pub shards_finished: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

#[derive(Debug, Default)]
pub(crate) struct MonitorInner {
    pub(crate) consumer_id: String,
    pub(crate) counters: Counters,
    pub(crate) owned: Mutex<BTreeSet<String>>,
}

/// A view of a running [`StreamConsumer`](super::StreamConsumer): its
/// counters and the shards it holds. Cheap to clone; get it with
/// [`StreamConsumer::monitor`](super::StreamConsumer::monitor) before
/// [`run`](super::StreamConsumer::run) takes the consumer.
#[derive(Debug, Clone)]
pub struct ConsumerMonitor {
    pub(crate) inner: Arc<MonitorInner>,
}

impl ConsumerMonitor {
    pub(crate) fn new(consumer_id: String) -> Self {
        Self {
            inner: Arc::new(MonitorInner {
                consumer_id,
                ..MonitorInner::default()
            }),
        }
    }

    /// The consumer's id: the lease owner it writes.
    pub fn consumer_id(&self) -> &str {
        &self.inner.consumer_id
    }

    /// The counters now.
    pub fn stats(&self) -> ConsumerStats {
        let c = &self.inner.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ConsumerStats {
            records_read: get(&c.records_read),
            fed: get(&c.fed),
            settled: get(&c.settled),
            retries: get(&c.retries),
            skipped: get(&c.skipped),
            checkpoints_saved: get(&c.checkpoints_saved),
            leases_taken: get(&c.leases_taken),
            leases_lost: get(&c.leases_lost),
            shards_finished: get(&c.shards_finished),
        }
    }

    /// The ids of the shards this consumer works now (holds the lease of).
    pub fn owned_shards(&self) -> Vec<String> {
        self.owned().iter().cloned().collect()
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    pub(crate) fn owned(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.inner.owned.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
