//! The stream consumer: on DynamoDB, the command table's stream is the
//! source of truth of the pipeline.
//!
//! Every command stored is a row inserted in the command table, and every
//! insert is a record of its stream, kept for 24 hours. A [`StreamConsumer`]
//! reads those records and brings each command to a final state with
//! [`Engine::settle_inserted`] (settle, knowing the status the row was
//! inserted with): the async publishes (`published`: nothing applied yet)
//! and the sync publishes and commits whose publisher may have died before
//! its handlers finished (`applied`). Run it next to the service (one per
//! replica, embedded in the server or as a process of its own); several
//! replicas share the work through shard leases. The Lambda entry point
//! ([`lambda`](crate::lambda), feature `lambda`) runs the same rules on
//! batches that Lambda reads for it.
//!
//! # What is fed
//!
//! An `INSERT` of a command row (`{sk}@{version}`) whose new image has status
//! `published` or `applied` ([`classify`]). Status changes (`MODIFY`),
//! removals (time to live), rows inserted `finished` or `failed`, and rows of
//! other shapes are skipped. The stream must include new images
//! (`NEW_IMAGE` or `NEW_AND_OLD_IMAGES`, as [`ensure_tables`](crate::ensure_tables)
//! creates it). Build the engine with
//! [`AsyncDispatch::External`]: async
//! publishes then only store the command, and the stream applies it.
//!
//! A row inserted `applied` usually belongs to a publisher that is running
//! its handlers right now. The consumer does not hold a concurrency slot for
//! it: it watches the row and its publisher's
//! [heartbeat](cqrs_core::Heartbeat) (reads every poll interval or so,
//! backing off; [`Engine::left_to_publisher`](cqrs_core::Engine::left_to_publisher)) until the publisher marks it
//! done, and settles it once the publisher is gone (its heartbeat expired,
//! within the [publisher lease](cqrs_core::EngineConfig::publisher_lease)
//! of its death), or at the latest once the engine's
//! [recovery grace](cqrs_core::EngineConfig::recovery_grace) after its
//! publication has passed with the row still `applied`. Meanwhile the
//! entity's later commands wait behind it, and the shard's checkpoint stays
//! before it.
//!
//! # Leases: one consumer per shard
//!
//! A stream is split into shards. Each shard has one item in the sequences
//! table (pk `STREAM#{command table}`, sk the shard id; see
//! [`DynamoDbLeases`]) holding its checkpoint and its lease: the owner (a
//! consumer id, by default `{hostname}-{pid}-{uuid}`) and an expiry. A
//! consumer takes the lease of a shard that nobody holds, whose lease
//! expired, or that it holds already, with a conditional write; renews it
//! every third of the [lease duration](StreamConsumer::lease_duration); and
//! writes every checkpoint on the condition that it still holds the lease
//! (fencing: a consumer whose lease was taken over stops working that shard
//! at once and cannot move its checkpoint). A consumer that cannot renew its
//! lease before it expires stops working the shard too, and takes it again
//! when it can. On a graceful stop it releases its leases, so that another
//! replica takes over at once; a replica that dies holds them until they
//! expire, so that **a dead replica's shards are taken over within the lease
//! duration plus one [poll interval](StreamConsumer::poll_interval)**
//! (defaults: 10 s + 1 s).
//!
//! **Clocks.** Expiry is wall-clock time in milliseconds since the epoch,
//! written by the holder and compared by the others: the hosts must keep
//! their clocks synchronized (NTP) to well within the lease duration. A host
//! whose clock runs ahead takes leases early; the fencing condition then
//! stops the previous owner at its next write, and the overlap costs at most
//! redeliveries, never a lost record.
//!
//! # Order, concurrency, checkpoints
//!
//! In a shard, records are read in order and each command is queued to its
//! entity's lane (pk and sk, without the version). A lane settles its
//! commands strictly one after the other; different entities run at the same
//! time, up to [`max_concurrent_entities`](StreamConsumer::max_concurrent_entities),
//! so a slow or hung entity does not hold back the others. A settle that
//! fails (storage unavailable) is tried again, with capped exponential
//! backoff, until it succeeds: a record is never skipped.
//!
//! The checkpoint of a shard is the highest sequence number up to which every
//! record is done (skipped records are done at once). It is saved at most
//! every [`checkpoint_interval`](StreamConsumer::checkpoint_interval) or after
//! [`checkpoint_every`](StreamConsumer::checkpoint_every) records. Records
//! are held in memory from read to done, at most
//! [`max_in_flight`](StreamConsumer::max_in_flight) per shard: an entity that
//! stays stuck for that long holds back reading, not memory.
//!
//! # At least once
//!
//! A consumer that stops (or dies) after settling a record but before
//! checkpointing it leaves the record to the next owner, who settles it
//! again: settling finds it final and does nothing. A record inserted
//! `published` that the next owner finds `applied` was in the middle of its
//! handlers when its consumer died (or lost its lease): its handlers run
//! again at once. A handler can therefore run twice; handlers must be
//! idempotent (at-least-once delivery).
//!
//! # Shards and streams
//!
//! A shard is closed after a while and continued by child shards; a child
//! starts only once its parent is finished (every record done and
//! checkpointed, and marked `finished`), so that the changes of one item are
//! seen in order. Shard iterators are kept across reads; records past the
//! stream's retention are logged as lost and reading resumes at the oldest
//! record; a new stream on the table (the table was recreated) starts over.
//!
//! # Shutdown
//!
//! [`StreamConsumer::run`] returns once its `shutdown` future completes and
//! the consumer has stopped: it stops reading, lets the commands already read
//! finish within the [drain deadline](StreamConsumer::drain_deadline),
//! checkpoints what is done and releases its leases. Whatever did not finish
//! stays in the stream for the next owner: nothing is stranded.
//!
//! ```no_run
//! # async fn run() -> cqrs_core::Result<()> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use cqrs_core::{AsyncDispatch, Engine};
//! use cqrs_dynamodb::stream::StreamConsumer;
//! use cqrs_dynamodb::{local_client, local_streams_client, DynamoDbStorage, TableNames};
//!
//! let endpoint = "http://127.0.0.1:8000";
//! let tables = TableNames::new("dev", "shop", "order");
//! let storage = DynamoDbStorage::new(local_client(endpoint), tables.clone());
//! let engine = Engine::builder(Arc::new(storage))
//!     .dispatch(AsyncDispatch::External)
//!     // .handler(...) for every data-sync handler of the module
//!     .build();
//! let consumer = StreamConsumer::new(engine, local_client(endpoint), local_streams_client(endpoint), tables)
//!     .lease_duration(Duration::from_secs(10));
//! let monitor = consumer.monitor(); // counters and owned shards, while it runs
//!
//! // Any future ends it: `tokio::signal::ctrl_c()` in a container.
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! # drop(stop);
//! consumer.run(stopped).await;
//! println!("{:?}", monitor.stats());
//! # Ok(()) }
//! ```

mod classify;
mod inspect;
mod leases;
pub mod meters;
mod shard;
mod source;
mod stats;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodbstreams::types::Shard;
use cqrs_core::{AsyncDispatch, Engine, Result};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

pub use classify::{classify, classify_record, RecordAction, SETTLED_STATUSES};
pub use inspect::{inspect_stream, Behind, ShardStatus, StreamStatus};
pub use leases::{
    now_millis, Acquired, DynamoDbLeases, LeaseStore, MemoryLeases, ShardCheckpoint, ShardLease, ShardRecord,
    CHECKPOINT_PK_PREFIX,
};
pub use source::{SdkStreams, StreamSource};
pub use stats::{ConsumerMonitor, ConsumerStats};

#[cfg(feature = "lambda")]
pub(crate) use classify::sequence_cmp;
use shard::{work_shard, ShardEnd};

use crate::tables::TableNames;

/// Default [`StreamConsumer::lease_duration`]: 10 seconds.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(10);
/// Default [`StreamConsumer::poll_interval`]: 1 second.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Default [`StreamConsumer::describe_interval`]: 5 seconds.
pub const DEFAULT_DESCRIBE_INTERVAL: Duration = Duration::from_secs(5);
/// Default [`StreamConsumer::max_concurrent_entities`]: 32 per shard.
pub const DEFAULT_MAX_CONCURRENT_ENTITIES: usize = 32;
/// Default [`StreamConsumer::max_in_flight`]: 1000 records per shard.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1000;
/// Default [`StreamConsumer::drain_deadline`]: 10 seconds.
pub const DEFAULT_DRAIN_DEADLINE: Duration = Duration::from_secs(10);
/// Default [`StreamConsumer::checkpoint_interval`]: 200 milliseconds.
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_millis(200);
/// Default [`StreamConsumer::checkpoint_every`]: 100 records.
pub const DEFAULT_CHECKPOINT_EVERY: usize = 100;
/// Default first wait of [`StreamConsumer::retry_backoff`]: 100 milliseconds.
pub const DEFAULT_RETRY_INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// Default longest wait of [`StreamConsumer::retry_backoff`]: 5 seconds.
pub const DEFAULT_RETRY_MAX_BACKOFF: Duration = Duration::from_secs(5);

/// After the drain deadline, how long a stopping consumer waits at most for
/// its shards' last checkpoints and lease releases.
const FINAL_WRITES_GRACE: Duration = Duration::from_secs(5);

/// Settings of a consumer.
#[derive(Debug, Clone)]
pub(crate) struct ConsumerConfig {
    pub(crate) lease_duration: Duration,
    pub(crate) poll_interval: Duration,
    pub(crate) describe_interval: Duration,
    pub(crate) max_concurrent_entities: usize,
    pub(crate) max_in_flight: usize,
    pub(crate) drain_deadline: Duration,
    pub(crate) checkpoint_interval: Duration,
    pub(crate) checkpoint_every: usize,
    pub(crate) initial_backoff: Duration,
    pub(crate) max_backoff: Duration,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            lease_duration: DEFAULT_LEASE_DURATION,
            poll_interval: DEFAULT_POLL_INTERVAL,
            describe_interval: DEFAULT_DESCRIBE_INTERVAL,
            max_concurrent_entities: DEFAULT_MAX_CONCURRENT_ENTITIES,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            drain_deadline: DEFAULT_DRAIN_DEADLINE,
            checkpoint_interval: DEFAULT_CHECKPOINT_INTERVAL,
            checkpoint_every: DEFAULT_CHECKPOINT_EVERY,
            initial_backoff: DEFAULT_RETRY_INITIAL_BACKOFF,
            max_backoff: DEFAULT_RETRY_MAX_BACKOFF,
        }
    }
}

impl ConsumerConfig {
    /// Leases are renewed three times per lease duration.
    pub(crate) fn renew_interval(&self) -> Duration {
        (self.lease_duration / 3).max(Duration::from_millis(10))
    }

    /// The wait after failure number `attempt` (1-based).
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(30));
        self.initial_backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

/// What the tasks of a running consumer share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) engine: Engine,
    pub(crate) source: Arc<dyn StreamSource>,
    pub(crate) store: Arc<dyn LeaseStore>,
    pub(crate) config: ConsumerConfig,
    pub(crate) monitor: ConsumerMonitor,
    pub(crate) consumer_id: String,
}

/// Reads the command table's stream and settles every command in it, with
/// shard leases shared by any number of replicas (see the [module
/// documentation](self)).
pub struct StreamConsumer {
    engine: Engine,
    source: Arc<dyn StreamSource>,
    /// The command table, whose stream this consumes.
    table: String,
    store: Arc<dyn LeaseStore>,
    config: ConsumerConfig,
    consumer_id: String,
    monitor: ConsumerMonitor,
}

impl std::fmt::Debug for StreamConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamConsumer")
            .field("engine", &self.engine)
            .field("source", &self.source)
            .field("table", &self.table)
            .field("store", &self.store)
            .field("config", &self.config)
            .field("consumer_id", &self.consumer_id)
            .finish_non_exhaustive()
    }
}

/// A consumer id unique to this process: `{hostname}-{pid}-{uuid}`.
pub fn default_consumer_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "host".to_owned());
    format!("{host}-{}-{}", std::process::id(), uuid::Uuid::new_v4().simple())
}

impl StreamConsumer {
    /// A consumer of the stream of `tables.command`, with its leases and
    /// checkpoints in `tables.sequences` ([`DynamoDbLeases`]) and the default
    /// settings.
    ///
    /// `engine` should be built with
    /// [`AsyncDispatch::External`] (with
    /// the default `InProcess`, the publishing process applies its async
    /// commands itself and this consumer mostly finds them done). `dynamodb`
    /// looks up the table's stream and holds the leases, `streams` reads it.
    pub fn new(
        engine: Engine,
        dynamodb: aws_sdk_dynamodb::Client,
        streams: aws_sdk_dynamodbstreams::Client,
        tables: TableNames,
    ) -> Self {
        if engine.config().dispatch != AsyncDispatch::External {
            tracing::warn!(
                "the stream consumer's engine dispatches async commands in process; \
                 build it with AsyncDispatch::External"
            );
        }
        let store = Arc::new(DynamoDbLeases::new(dynamodb.clone(), &tables));
        let source = Arc::new(SdkStreams::new(dynamodb, streams));
        Self::with_source(engine, source, store, tables.command)
    }

    /// A consumer of `table`'s stream read from `source`, with its leases and
    /// checkpoints in `store`, and the default settings: the consumer of
    /// another stream of the same shape, such as the deterministic
    /// simulation's ([`testing::sim`](crate::testing::sim), feature `testing`).
    pub fn with_source(
        engine: Engine,
        source: Arc<dyn StreamSource>,
        store: Arc<dyn LeaseStore>,
        table: impl Into<String>,
    ) -> Self {
        let consumer_id = default_consumer_id();
        Self {
            store,
            engine,
            source,
            table: table.into(),
            config: ConsumerConfig::default(),
            monitor: ConsumerMonitor::new(consumer_id.clone()),
            consumer_id,
        }
    }

    /// How long a lease lasts without renewal (default
    /// [`DEFAULT_LEASE_DURATION`], 10 s; at least 100 ms). Renewed every
    /// third of it. A dead replica's shards are taken over after at most
    /// this plus [`poll_interval`](Self::poll_interval).
    pub fn lease_duration(mut self, duration: Duration) -> Self {
        self.config.lease_duration = duration.max(Duration::from_millis(100));
        self
    }

    /// How often free or expired leases are looked for and taken, and how
    /// long a reader waits after an empty page (default
    /// [`DEFAULT_POLL_INTERVAL`], 1 s; at least 10 ms).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.config.poll_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// How often the table's stream and its shards are listed
    /// (DescribeTable, DescribeStream; default [`DEFAULT_DESCRIBE_INTERVAL`],
    /// 5 s). A shard is also listed again when one of its parents finishes.
    pub fn describe_interval(mut self, interval: Duration) -> Self {
        self.config.describe_interval = interval;
        self
    }

    /// The lease owner this consumer writes (default [`default_consumer_id`]:
    /// unique to the process). Two consumers must never share an id: both
    /// would think they hold the same leases. A restarted process may reuse
    /// its id to take its own leases back at once.
    pub fn consumer_id(mut self, id: impl Into<String>) -> Self {
        self.consumer_id = id.into();
        self.monitor = ConsumerMonitor::new(self.consumer_id.clone());
        self
    }

    /// Entities of one shard settled at the same time, at most (default
    /// [`DEFAULT_MAX_CONCURRENT_ENTITIES`], 32; at least 1). The commands
    /// of one entity always run one after the other.
    pub fn max_concurrent_entities(mut self, max: usize) -> Self {
        self.config.max_concurrent_entities = max.max(1);
        self
    }

    /// Records of one shard held between read and done, at most (default
    /// [`DEFAULT_MAX_IN_FLIGHT`], 1000; at least 1): bounds memory, and how
    /// far reading runs ahead of an entity that is slow to settle.
    pub fn max_in_flight(mut self, max: usize) -> Self {
        self.config.max_in_flight = max.max(1);
        self
    }

    /// How long a stopping consumer lets the commands it has read finish
    /// (default [`DEFAULT_DRAIN_DEADLINE`], 10 s). What is left stays in the
    /// stream for the next owner. A process with a shutdown deadline of its
    /// own sets this to it, so that one setting bounds the whole drain
    /// (the last checkpoints and lease releases may take up to 5 s more
    /// when storage is slow).
    pub fn drain_deadline(mut self, deadline: Duration) -> Self {
        self.config.drain_deadline = deadline;
        self
    }

    /// How often a shard's checkpoint is saved when it moved (default
    /// [`DEFAULT_CHECKPOINT_INTERVAL`], 200 ms; at least 1 ms).
    pub fn checkpoint_interval(mut self, interval: Duration) -> Self {
        self.config.checkpoint_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Saves a shard's checkpoint as soon as this many records were done
    /// since the last save (default [`DEFAULT_CHECKPOINT_EVERY`], 100; at
    /// least 1), without waiting for the [interval](Self::checkpoint_interval).
    pub fn checkpoint_every(mut self, records: usize) -> Self {
        self.config.checkpoint_every = records.max(1);
        self
    }

    /// Waits between tries of a command whose settle failed: `initial`,
    /// doubled on every failure, at most `max` (defaults
    /// [`DEFAULT_RETRY_INITIAL_BACKOFF`] and [`DEFAULT_RETRY_MAX_BACKOFF`]).
    /// Each retry is logged; there is no limit to their number.
    pub fn retry_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.config.initial_backoff = initial;
        self.config.max_backoff = max.max(initial);
        self
    }

    /// Keeps leases and checkpoints in `store` instead of the sequences table
    /// ([`MemoryLeases`] for tests; a decorator to inject faults).
    pub fn lease_store(mut self, store: Arc<dyn LeaseStore>) -> Self {
        self.store = store;
        self
    }

    /// The lease owner this consumer writes.
    pub fn id(&self) -> &str {
        &self.consumer_id
    }

    /// A view of the consumer's counters and shards, usable while it runs.
    pub fn monitor(&self) -> ConsumerMonitor {
        self.monitor.clone()
    }

    /// Checks that the command table exists and has a stream: fails early on
    /// a misconfiguration (a running consumer logs such errors and goes on
    /// trying).
    pub async fn check(&self) -> Result<()> {
        self.stream_arn().await.map(|_| ())
    }

    /// Works the stream until `shutdown` completes, then stops (see
    /// [Shutdown](self#shutdown)) and returns.
    ///
    /// Errors (storage or stream unavailable, misconfiguration) are logged
    /// and tried again on the next poll; nothing is given up.
    pub async fn run<F: Future>(self, shutdown: F) {
        let shared = Arc::new(Shared {
            engine: self.engine.clone(),
            source: self.source.clone(),
            store: self.store.clone(),
            config: self.config.clone(),
            monitor: self.monitor.clone(),
            consumer_id: self.consumer_id.clone(),
        });
        let (stop, stopping) = watch::channel(None);
        let mut state = RunState::default();
        let mut shutdown = std::pin::pin!(shutdown);
        let mut poll = tokio::time::interval(self.config.poll_interval);
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tracing::info!(consumer = %self.consumer_id, table = %self.table, "stream consumer started");
        self.monitor.set_running(true);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.as_mut() => break,
                Some(joined) = state.workers.join_next_with_id(), if !state.workers.is_empty() => {
                    state.worker_ended(&self.monitor, joined);
                }
                _ = poll.tick() => {
                    // Not raced with the shutdown: a lease taken is worked (and
                    // so released on the way out), never dropped halfway.
                    match self.poll(&shared, &mut state, &stopping).await {
                        Ok(()) => self.monitor.contact(),
                        Err(error) => tracing::warn!(consumer = %self.consumer_id, %error, "stream poll failed; trying again"),
                    }
                    self.monitor.refresh_gauges();
                }
            }
        }
        let deadline = Instant::now() + self.config.drain_deadline;
        tracing::info!(consumer = %self.consumer_id, shards = state.owned.len(), "stream consumer stopping");
        stop.send_replace(Some(deadline));
        let drained = tokio::time::timeout_at(deadline + FINAL_WRITES_GRACE, async {
            while let Some(joined) = state.workers.join_next_with_id().await {
                state.worker_ended(&self.monitor, joined);
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(consumer = %self.consumer_id, "shards not stopped in time; their leases expire by themselves");
            state.workers.abort_all();
        }
        self.monitor.owned().clear();
        self.monitor.set_running(false);
        tracing::info!(consumer = %self.consumer_id, "stream consumer stopped");
    }

    /// One round: the stream's shards (when due), then a lease for every
    /// shard that is free, expired or ours, whose parent is finished.
    async fn poll(
        &self,
        shared: &Arc<Shared>,
        state: &mut RunState,
        stopping: &watch::Receiver<Option<Instant>>,
    ) -> Result<()> {
        let due = state
            .described_at
            .is_none_or(|at| at.elapsed() >= self.config.describe_interval);
        if due || state.describe_now {
            let stream_arn = self.stream_arn().await?;
            if state.stream_arn != stream_arn {
                if !state.stream_arn.is_empty() {
                    tracing::info!(old = %state.stream_arn, new = %stream_arn, "the command table has a new stream");
                }
                state.workers.abort_all();
                state.owned.clear();
                state.finished.clear();
                self.monitor.owned().clear();
                state.stream_arn = stream_arn;
            }
            state.shards = self.describe_shards(&state.stream_arn).await?;
            state.described_at = Some(Instant::now());
            state.describe_now = false;
        }
        let stream_arn = state.stream_arn.clone();
        let shards = std::mem::take(&mut state.shards);
        let result = self
            .take_leases(shared, state, &stream_arn, &shards, stopping)
            .await;
        state.shards = shards;
        result
    }

    async fn take_leases(
        &self,
        shared: &Arc<Shared>,
        state: &mut RunState,
        stream_arn: &str,
        shards: &[Shard],
        stopping: &watch::Receiver<Option<Instant>>,
    ) -> Result<()> {
        let listed: HashSet<&str> = shards.iter().filter_map(Shard::shard_id).collect();
        for shard in processing_order(shards) {
            let Some(shard_id) = shard.shard_id() else {
                continue;
            };
            if state.owned.contains_key(shard_id) || state.finished.contains(shard_id) {
                continue;
            }
            if let Some(parent) = shard.parent_shard_id().filter(|p| listed.contains(p)) {
                if !self.is_finished(state, stream_arn, parent).await? {
                    continue;
                }
            }
            // Looked at first: a read costs less than a failed conditional write.
            let stored = self.store.get(stream_arn, shard_id).await?;
            if let Some(stored) = &stored {
                if stored.checkpoint.finished {
                    state.finished.insert(shard_id.to_owned());
                    continue;
                }
                let held_by_other = stored
                    .lease
                    .owner
                    .as_deref()
                    .is_some_and(|owner| owner != self.consumer_id)
                    && stored.lease.expires_at_ms.is_some_and(|at| at >= now_millis());
                if held_by_other {
                    continue;
                }
            }
            let leased_at = Instant::now();
            let checkpoint = match self
                .store
                .acquire(
                    stream_arn,
                    shard_id,
                    &self.consumer_id,
                    self.config.lease_duration,
                )
                .await?
            {
                Acquired::Held { .. } => continue,
                Acquired::Taken(checkpoint) => checkpoint,
            };
            stats::Counters::add(&self.monitor.counters().leases_taken, 1, meters::LEASES_TAKEN);
            if checkpoint.finished {
                state.finished.insert(shard_id.to_owned());
                if let Err(error) = self.store.release(shard_id, &self.consumer_id).await {
                    tracing::warn!(shard = shard_id, %error, "lease of a finished shard not released");
                }
                continue;
            }
            tracing::info!(consumer = %self.consumer_id, shard = shard_id, checkpoint = ?checkpoint.sequence_number, "shard lease taken");
            let task = state.workers.spawn(work_shard(
                shared.clone(),
                stream_arn.to_owned(),
                shard_id.to_owned(),
                checkpoint,
                leased_at,
                stopping.clone(),
            ));
            state.owned.insert(shard_id.to_owned(), task.id());
            state.ids.insert(task.id(), shard_id.to_owned());
            self.monitor.owned().insert(shard_id.to_owned());
        }
        Ok(())
    }

    /// Whether `shard_id` is finished, as this consumer saw or as stored.
    async fn is_finished(&self, state: &mut RunState, stream_arn: &str, shard_id: &str) -> Result<bool> {
        if state.finished.contains(shard_id) {
            return Ok(true);
        }
        if state.owned.contains_key(shard_id) {
            return Ok(false);
        }
        let finished = self
            .store
            .get(stream_arn, shard_id)
            .await?
            .is_some_and(|record| record.checkpoint.finished);
        if finished {
            state.finished.insert(shard_id.to_owned());
        }
        Ok(finished)
    }

    /// The ARN of the command table's current stream.
    async fn stream_arn(&self) -> Result<String> {
        self.source.stream_arn(&self.table).await
    }

    /// Every shard of the stream (those within its retention).
    async fn describe_shards(&self, stream_arn: &str) -> Result<Vec<Shard>> {
        self.source.shards(stream_arn).await
    }
}

/// What a running consumer knows of its stream.
#[derive(Default)]
struct RunState {
    stream_arn: String,
    shards: Vec<Shard>,
    described_at: Option<Instant>,
    /// List the shards on the next poll (a parent finished: its children may start).
    describe_now: bool,
    /// Shards known finished.
    finished: HashSet<String>,
    /// Shards worked now, with their task.
    owned: HashMap<String, tokio::task::Id>,
    ids: HashMap<tokio::task::Id, String>,
    workers: JoinSet<ShardEnd>,
}

impl RunState {
    fn worker_ended(
        &mut self,
        monitor: &ConsumerMonitor,
        joined: std::result::Result<(tokio::task::Id, ShardEnd), tokio::task::JoinError>,
    ) {
        let (id, end) = match joined {
            Ok((id, end)) => (id, Some(end)),
            Err(error) => {
                if !error.is_cancelled() {
                    tracing::error!(%error, "shard task ended abnormally; the shard is taken again from its checkpoint");
                }
                (error.id(), None)
            }
        };
        let Some(shard_id) = self.ids.remove(&id) else {
            return;
        };
        if self.owned.get(&shard_id) == Some(&id) {
            self.owned.remove(&shard_id);
            monitor.owned().remove(&shard_id);
        }
        if end == Some(ShardEnd::Finished) {
            self.finished.insert(shard_id);
            self.describe_now = true;
        }
    }
}

/// `shards`, parents before their children (a parent that is not listed,
/// trimmed from the stream, counts as done).
fn processing_order(shards: &[Shard]) -> Vec<&Shard> {
    let parents: HashMap<&str, Option<&str>> = shards
        .iter()
        .filter_map(|s| Some((s.shard_id()?, s.parent_shard_id())))
        .collect();
    let depth = |shard: &Shard| {
        let mut depth = 0usize;
        let mut parent = shard.parent_shard_id();
        // Bounded: a cycle cannot happen, but must not hang the consumer.
        while let Some(id) = parent.filter(|_| depth < shards.len()) {
            match parents.get(id) {
                Some(grandparent) => {
                    depth += 1;
                    parent = *grandparent;
                }
                None => break,
            }
        }
        depth
    };
    let mut order: Vec<(usize, &Shard)> = shards.iter().map(|s| (depth(s), s)).collect();
    // Stable: shards of one depth keep DescribeStream's order.
    order.sort_by_key(|(depth, _)| *depth);
    order.into_iter().map(|(_, shard)| shard).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: &str, parent: Option<&str>) -> Shard {
        Shard::builder()
            .shard_id(id)
            .set_parent_shard_id(parent.map(str::to_owned))
            .build()
    }

    #[test]
    fn parents_come_before_children() {
        let shards = [
            shard("c", Some("b")),
            shard("b", Some("a")),
            shard("x", Some("trimmed")),
            shard("a", None),
            shard("b2", Some("a")),
        ];
        let order: Vec<_> = processing_order(&shards)
            .into_iter()
            .map(|s| s.shard_id().unwrap_or_default())
            .collect();
        assert_eq!(order, ["x", "a", "b", "b2", "c"]);
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let config = ConsumerConfig::default();
        assert_eq!(config.backoff(1), Duration::from_millis(100));
        assert_eq!(config.backoff(2), Duration::from_millis(200));
        assert_eq!(config.backoff(7), Duration::from_secs(5));
        assert_eq!(config.backoff(u32::MAX), Duration::from_secs(5));
        assert_eq!(config.renew_interval(), DEFAULT_LEASE_DURATION / 3);
    }

    #[test]
    fn consumer_ids_are_unique() {
        assert_ne!(default_consumer_id(), default_consumer_id());
    }
}
