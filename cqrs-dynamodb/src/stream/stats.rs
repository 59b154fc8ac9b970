//! What a running consumer has done so far, for tests and health checks.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, Utc};

use super::meters;

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
    /// Adds `n` to `counter` and to the facade's counter `metric` (one of [`meters`]).
    pub(crate) fn add(counter: &AtomicU64, n: u64, metric: &'static str) {
        counter.fetch_add(n, Ordering::Relaxed);
        metrics::counter!(metric).increment(n);
    }
}

/// Where the work of one shard held stands.
#[derive(Debug, Default, Clone)]
pub(crate) struct ShardProgress {
    /// Records handed over and not settled yet.
    pub(crate) unsettled: u64,
    /// When the oldest of them was written to the stream.
    pub(crate) oldest_unsettled: Option<DateTime<Utc>>,
    /// When the last record read was written (`None` after an empty page).
    pub(crate) last_read: Option<DateTime<Utc>>,
}

#[derive(Debug, Default)]
pub(crate) struct MonitorInner {
    pub(crate) consumer_id: String,
    pub(crate) counters: Counters,
    pub(crate) owned: Mutex<BTreeSet<String>>,
    pub(crate) running: AtomicBool,
    pub(crate) last_contact: Mutex<Option<DateTime<Utc>>>,
    pub(crate) shards: Mutex<HashMap<String, ShardProgress>>,
}

/// The shards held, locked; the leases-held gauge follows the change when
/// the guard is dropped.
pub(crate) struct OwnedShards<'a> {
    shards: MutexGuard<'a, BTreeSet<String>>,
    before: usize,
}

impl std::ops::Deref for OwnedShards<'_> {
    type Target = BTreeSet<String>;

    fn deref(&self) -> &Self::Target {
        &self.shards
    }
}

impl std::ops::DerefMut for OwnedShards<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.shards
    }
}

impl Drop for OwnedShards<'_> {
    fn drop(&mut self) {
        let after = self.shards.len();
        if after != self.before {
            metrics::gauge!(meters::LEASES_HELD).increment(after as f64 - self.before as f64);
        }
    }
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

    pub(crate) fn owned(&self) -> OwnedShards<'_> {
        let shards = self.inner.owned.lock().unwrap_or_else(PoisonError::into_inner);
        let before = shards.len();
        OwnedShards { shards, before }
    }

    /// Whether the consumer's loop is running ([`run`](super::StreamConsumer::run)
    /// started and has not returned).
    pub fn is_running(&self) -> bool {
        self.inner.running.load(Ordering::Relaxed)
    }

    /// When the consumer last reached the stream and the lease table: its
    /// last poll round that succeeded (the stream's shards listed, free
    /// leases looked at), or its last lease renewal, whichever is later.
    /// `None` before the first. A consumer whose last contact is older than
    /// its lease duration holds nothing any more, and cannot take anything.
    pub fn last_contact(&self) -> Option<DateTime<Utc>> {
        *self
            .inner
            .last_contact
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Records read and handed over, not settled yet, over the shards held.
    pub fn unsettled(&self) -> u64 {
        self.progress().values().map(|p| p.unsettled).sum()
    }

    /// When the oldest record read and not settled yet was written to the
    /// stream (its approximate creation time); `None` when none is pending.
    pub fn oldest_unsettled(&self) -> Option<DateTime<Utc>> {
        self.progress().values().filter_map(|p| p.oldest_unsettled).min()
    }

    pub(crate) fn set_running(&self, running: bool) {
        self.inner.running.store(running, Ordering::Relaxed);
    }

    /// The stream or the lease table answered.
    pub(crate) fn contact(&self) {
        *self
            .inner
            .last_contact
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(cqrs_core::clock::now());
    }

    pub(crate) fn progress(&self) -> MutexGuard<'_, HashMap<String, ShardProgress>> {
        self.inner.shards.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the age gauges from the shards' progress, as of now.
    pub(crate) fn refresh_gauges(&self) {
        let now = cqrs_core::clock::now();
        let age = |at: DateTime<Utc>| (now - at).to_std().map_or(0.0, |d| d.as_secs_f64());
        let progress = self.progress();
        let oldest = progress.values().filter_map(|p| p.oldest_unsettled).min();
        let iterator_age = progress
            .values()
            .filter_map(|p| p.last_read)
            .map(age)
            .fold(0.0, f64::max);
        drop(progress);
        metrics::gauge!(meters::OLDEST_UNSETTLED_SECONDS).set(oldest.map_or(0.0, age));
        metrics::gauge!(meters::ITERATOR_AGE_SECONDS).set(iterator_age);
    }
}
