//! Working one leased shard: a reader task, per-entity lanes, the checkpoint
//! of the done prefix, and the lease's renewal.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use cqrs_core::{CommandStatus, EntityKey, Error, Result};
use futures::FutureExt as _;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use super::classify::{classify_record, RecordAction};
use super::leases::ShardCheckpoint;
use super::meters;
use super::stats::Counters;
use super::Shared;
use crate::error::shape_error;

/// GetRecords returns at most this many records per call.
const MAX_RECORDS_PER_CALL: usize = 1000;

/// Non-empty pages a reader fetches in a row before it yields to the other
/// tasks (an open shard under a steady flow of writes never returns an empty
/// page).
pub(crate) const MAX_PAGES_PER_POLL: usize = 100;

/// How a shard's work ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ShardEnd {
    /// Closed, every record done, marked finished: its children may start.
    Finished,
    /// The lease was taken by another consumer, or could not be renewed in
    /// time: the work stopped at once, and the checkpoint stayed where it was.
    LeaseLost,
    /// Stopped on request: the done prefix was checkpointed and the lease released.
    Stopped,
}

/// One record read.
struct ReadRecord {
    sequence_number: String,
    action: RecordAction,
    /// When the record was written to the stream (approximately).
    created: DateTime<Utc>,
}

/// How a command of a lane is settled.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// Inserted `published`: settled at once, within the concurrency bound.
    Published,
    /// Inserted `applied` by a publisher that runs its handlers itself: its
    /// row is watched (cheap reads, outside the concurrency bound) until the
    /// publisher marks it done, or until its recovery is due (the publisher
    /// is gone, or the engine's recovery grace after its publication has
    /// passed); only then is it settled.
    Applied,
}

/// What the reader hands over.
enum Read {
    /// Records in stream order. Each holds one permit of the in-flight bound,
    /// given back when it leaves the window.
    Records(Vec<ReadRecord>),
    /// The shard is closed and was read to its end.
    End,
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One record between read and done.
struct Slot {
    sequence_number: String,
    done: bool,
}

/// Works one shard whose lease this consumer took at `leased_at`, from
/// `start`, until the shard is finished, the lease is lost, or `stop` says to
/// stop (with the drain deadline).
pub(crate) async fn work_shard(
    shared: Arc<Shared>,
    stream_arn: String,
    shard_id: String,
    start: ShardCheckpoint,
    leased_at: Instant,
    stop: watch::Receiver<Option<Instant>>,
) -> ShardEnd {
    let permits = Arc::new(Semaphore::new(shared.config.max_in_flight.max(1)));
    // The shard's entry in the monitor, removed when the worker ends.
    shared
        .monitor
        .progress()
        .insert(shard_id.clone(), Default::default());
    let (tx, rx) = mpsc::channel(4);
    let reader = AbortOnDrop(tokio::spawn(read_shard(
        shared.clone(),
        stream_arn.clone(),
        shard_id.clone(),
        start.sequence_number.clone(),
        permits.clone(),
        tx,
    )));
    let worker = Worker {
        lease_valid_until: leased_at + shared.config.lease_duration,
        position: start.sequence_number.clone(),
        saved: start.sequence_number,
        shared,
        stream_arn,
        shard_id,
        permits,
        reader: Some(reader),
        rx: Some(rx),
        ended: false,
        lanes: HashMap::new(),
        ready: VecDeque::new(),
        running: JoinSet::new(),
        capped: 0,
        window: VecDeque::new(),
        unsettled: BTreeMap::new(),
        base: 0,
        next_index: 0,
        unsaved: 0,
    };
    worker.run(stop).await
}

struct Worker {
    shared: Arc<Shared>,
    stream_arn: String,
    shard_id: String,
    permits: Arc<Semaphore>,
    reader: Option<AbortOnDrop>,
    rx: Option<mpsc::Receiver<Read>>,
    /// The reader reached the end of the closed shard.
    ended: bool,
    /// Per entity: the records waiting for it, in order (index, version,
    /// kind); the front one is running or ready. Entities with nothing
    /// pending have no entry.
    lanes: HashMap<EntityKey, VecDeque<(u64, u64, Kind)>>,
    /// Entities whose front record waits for a free slot.
    ready: VecDeque<EntityKey>,
    /// Settle tasks, one per entity at most: (entity, index, counted in `capped`).
    running: JoinSet<(EntityKey, u64, bool)>,
    /// Running tasks that count towards the concurrency bound.
    capped: usize,
    /// Records read and not yet part of the done prefix, in stream order.
    window: VecDeque<Slot>,
    /// Records handed to the engine and not settled yet: index, and when
    /// the record was written (the pipeline's lag, in the monitor and the
    /// gauges).
    unsettled: BTreeMap<u64, DateTime<Utc>>,
    /// Index of the window's front record.
    base: u64,
    next_index: u64,
    /// The last record of the done prefix.
    position: Option<String>,
    /// The position last saved.
    saved: Option<String>,
    /// Records added to the done prefix since the last save.
    unsaved: usize,
    /// When the lease expires unless renewed (measured from the moment the
    /// last successful renewal was sent).
    lease_valid_until: Instant,
}

async fn recv(rx: &mut Option<mpsc::Receiver<Read>>) -> Option<Read> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

impl Worker {
    fn counters(&self) -> &Counters {
        self.shared.monitor.counters()
    }

    async fn run(mut self, mut stop: watch::Receiver<Option<Instant>>) -> ShardEnd {
        let config = self.shared.config.clone();
        let mut renew =
            tokio::time::interval_at(Instant::now() + config.renew_interval(), config.renew_interval());
        renew.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut flush = tokio::time::interval(config.checkpoint_interval);
        flush.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut draining: Option<Instant> = *stop.borrow();
        if draining.is_some() {
            self.stop_reading();
        }
        loop {
            if self.ended && self.window.is_empty() {
                match self.save(true).await {
                    Ok(true) => {
                        self.release().await;
                        Counters::add(&self.counters().shards_finished, 1, meters::SHARDS_FINISHED);
                        tracing::info!(shard = %self.shard_id, "stream shard finished");
                        return ShardEnd::Finished;
                    }
                    Ok(false) => return self.lost("the finished mark was fenced"),
                    Err(error) => {
                        tracing::warn!(shard = %self.shard_id, %error, "shard not marked finished; trying again");
                    }
                }
            } else if draining.is_some() && self.lanes.is_empty() {
                return self.stop_gracefully().await;
            }
            if self.unsaved >= config.checkpoint_every {
                if let Ok(false) = self.save_logged().await {
                    return self.lost("the checkpoint was fenced");
                }
            }
            let drain_deadline = draining.unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));
            // Biased, in this order: stopping and the lease come before the
            // work (a renewal is never starved by a steady flow of records),
            // and the choice is the same every time (a simulation replays it).
            tokio::select! {
                biased;
                changed = stop.changed(), if draining.is_none() => {
                    // A dropped sender means stop now.
                    let deadline = match changed {
                        Ok(()) => *stop.borrow(),
                        Err(_) => Some(Instant::now()),
                    };
                    if let Some(deadline) = deadline {
                        draining = Some(deadline);
                        self.stop_reading();
                    }
                }
                _ = tokio::time::sleep_until(drain_deadline), if draining.is_some() => {
                    tracing::warn!(
                        shard = %self.shard_id,
                        pending = self.window.iter().filter(|s| !s.done).count(),
                        "drain deadline passed; what is left stays in the stream for the next owner"
                    );
                    return self.stop_gracefully().await;
                }
                _ = renew.tick() => {
                    let sent = Instant::now();
                    let renewal = self.shared.store.renew(&self.shard_id, &self.shared.consumer_id, config.lease_duration);
                    match self.bounded(renewal).await {
                        Ok(true) => {
                        self.lease_valid_until = sent + config.lease_duration;
                        self.shared.monitor.contact();
                    }
                        Ok(false) => return self.lost("the lease was taken by another consumer"),
                        Err(error) => {
                            tracing::warn!(shard = %self.shard_id, %error, "lease not renewed; trying again");
                            if Instant::now() >= self.lease_valid_until {
                                return self.lost("the lease expired before it could be renewed");
                            }
                        }
                    }
                }
                _ = tokio::time::sleep_until(self.lease_valid_until) => {
                    if Instant::now() >= self.lease_valid_until {
                        return self.lost("the lease expired before it could be renewed");
                    }
                }
                Some(joined) = self.running.join_next(), if !self.running.is_empty() => match joined {
                    Ok((key, index, capped)) => {
                        if capped {
                            self.capped = self.capped.saturating_sub(1);
                        }
                        self.complete(key, index);
                    }
                    Err(error) => {
                        // Settle tasks catch panics, and none is aborted while
                        // the worker runs: the record it carried cannot be
                        // known, so give the shard up (from its checkpoint).
                        tracing::error!(shard = %self.shard_id, %error, "settle task lost; giving the shard up");
                        return self.stop_gracefully().await;
                    }
                },
                read = recv(&mut self.rx) => match read {
                    Some(Read::Records(records)) => self.dispatch(records),
                    Some(Read::End) => {
                        self.ended = true;
                        self.stop_reading();
                    }
                    None => {
                        // The reader ended without reaching the end: it only
                        // does when aborted, so stop like on a request.
                        tracing::error!(shard = %self.shard_id, "stream reader ended unexpectedly");
                        draining = Some(Instant::now() + config.drain_deadline);
                        self.stop_reading();
                    }
                },
                _ = flush.tick() => {
                    if let Ok(false) = self.save_logged().await {
                        return self.lost("the checkpoint was fenced");
                    }
                }
            }
        }
    }

    /// `write` (a lease or checkpoint write, awaited inline), given up at the
    /// next renewal or when the lease runs out, whichever comes first: a
    /// hung storage must not keep the worker from noticing that its lease
    /// expired. A write given up may still land; each is conditional on the
    /// lease, so a late one changes nothing another owner wrote.
    async fn bounded<T>(&self, write: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        let deadline = (Instant::now() + self.shared.config.renew_interval()).min(self.lease_valid_until);
        match tokio::time::timeout_at(deadline, write).await {
            Ok(result) => result,
            Err(_) => Err(Error::backend("lease store did not answer in time", true)),
        }
    }

    /// Stops the reader: records it did not hand over stay in the stream.
    fn stop_reading(&mut self) {
        self.reader = None;
        self.rx = None;
    }

    fn lost(&mut self, why: &str) -> ShardEnd {
        Counters::add(&self.counters().leases_lost, 1, meters::LEASES_LOST);
        tracing::warn!(shard = %self.shard_id, why, "shard lease lost; stopping work on it");
        self.stop_reading();
        self.running.abort_all();
        ShardEnd::LeaseLost
    }

    /// Abandons what is still running, saves the done prefix, releases the lease.
    async fn stop_gracefully(&mut self) -> ShardEnd {
        self.stop_reading();
        self.running.abort_all();
        match self.save_logged().await {
            Ok(false) => return self.lost("the checkpoint was fenced"),
            Ok(true) => {}
            Err(_) => {
                // Once more: the checkpoint is what the next owner starts from.
                if let Ok(false) = self.save_logged().await {
                    return self.lost("the checkpoint was fenced");
                }
            }
        }
        self.release().await;
        ShardEnd::Stopped
    }

    async fn release(&self) {
        let release = self
            .shared
            .store
            .release(&self.shard_id, &self.shared.consumer_id);
        let within = self.shared.config.renew_interval();
        let released = match tokio::time::timeout(within, release).await {
            Ok(released) => released,
            Err(_) => Err(Error::backend("lease store did not answer in time", true)),
        };
        if let Err(error) = released {
            tracing::warn!(shard = %self.shard_id, %error, "lease not released; it expires by itself");
        }
    }

    /// Takes in records read, in stream order.
    fn dispatch(&mut self, records: Vec<ReadRecord>) {
        for record in records {
            let index = self.next_index;
            self.next_index += 1;
            let done = match record.action {
                RecordAction::Settle {
                    key,
                    version,
                    inserted,
                } => {
                    Counters::add(&self.counters().fed, 1, meters::FED);
                    self.unsettled.insert(index, record.created);
                    metrics::gauge!(meters::UNSETTLED).increment(1.0);
                    let kind = match inserted {
                        CommandStatus::Published => Kind::Published,
                        _ => Kind::Applied,
                    };
                    let lane = self.lanes.entry(key.clone()).or_default();
                    lane.push_back((index, version, kind));
                    if lane.len() == 1 {
                        self.schedule(key);
                    }
                    false
                }
                // Another framework's write: its index entries are repaired
                // on the side (best effort: reads never serve a stale entry,
                // and `Engine::reindex` backfills what a lost repair missed).
                RecordAction::RepairIndexes { key, version } => {
                    let engine = self.shared.engine.clone();
                    tokio::spawn(async move {
                        if let Err(error) = engine.repair_indexes_after(&key, version).await {
                            tracing::warn!(pk = %key.pk, sk = %key.sk, version, %error,
                                "index entries of another program's write not repaired");
                        }
                    });
                    Counters::add(&self.counters().skipped, 1, meters::SKIPPED);
                    true
                }
                // A foreign command was resolved by `for_engine` when read:
                // here it is one this engine does not own.
                RecordAction::Skip | RecordAction::Foreign { .. } => {
                    Counters::add(&self.counters().skipped, 1, meters::SKIPPED);
                    true
                }
                RecordAction::Malformed(why) => {
                    Counters::add(&self.counters().skipped, 1, meters::SKIPPED);
                    tracing::error!(shard = %self.shard_id, sequence_number = %record.sequence_number, why,
                        "skipping a malformed command record");
                    true
                }
            };
            self.window.push_back(Slot {
                sequence_number: record.sequence_number,
                done,
            });
        }
        self.report_progress();
        self.start_ready();
        self.advance();
    }

    /// Tells the monitor where the shard's settling stands.
    fn report_progress(&self) {
        let mut progress = self.shared.monitor.progress();
        let entry = progress.entry(self.shard_id.clone()).or_default();
        entry.unsettled = self.unsettled.len() as u64;
        entry.oldest_unsettled = self.unsettled.values().min().copied();
    }

    /// The front record of `key`'s lane changed: a row inserted `applied` is
    /// watched at once (outside the bound); a published one waits for a slot.
    fn schedule(&mut self, key: EntityKey) {
        let Some(&(index, version, kind)) = self.lanes.get(&key).and_then(|lane| lane.front()) else {
            return;
        };
        match kind {
            Kind::Published => self.ready.push_back(key),
            Kind::Applied => {
                let shared = self.shared.clone();
                let shard_id = self.shard_id.clone();
                self.running.spawn(async move {
                    if publisher_done(&shared, &shard_id, &key, version).await {
                        Counters::add(&shared.monitor.counters().settled, 1, meters::SETTLED);
                    } else {
                        settle(&shared, &shard_id, &key, version, CommandStatus::Applied).await;
                    }
                    (key, index, false)
                });
            }
        }
    }

    /// Starts settling the front record of waiting entities, up to the bound.
    fn start_ready(&mut self) {
        while self.capped < self.shared.config.max_concurrent_entities.max(1) {
            let Some(key) = self.ready.pop_front() else {
                return;
            };
            let Some(&(index, version, _)) = self.lanes.get(&key).and_then(|lane| lane.front()) else {
                continue;
            };
            let shared = self.shared.clone();
            let shard_id = self.shard_id.clone();
            self.capped += 1;
            self.running.spawn(async move {
                settle(&shared, &shard_id, &key, version, CommandStatus::Published).await;
                (key, index, true)
            });
        }
    }

    /// A record of `key` is done: the entity's next one may start.
    fn complete(&mut self, key: EntityKey, index: u64) {
        if self.unsettled.remove(&index).is_some() {
            metrics::gauge!(meters::UNSETTLED).decrement(1.0);
            self.report_progress();
        }
        if let Some(slot) = index
            .checked_sub(self.base)
            .and_then(|offset| usize::try_from(offset).ok())
            .and_then(|offset| self.window.get_mut(offset))
        {
            slot.done = true;
        }
        if let Some(lane) = self.lanes.get_mut(&key) {
            lane.pop_front();
            if lane.is_empty() {
                self.lanes.remove(&key);
            } else {
                self.schedule(key);
            }
        }
        self.start_ready();
        self.advance();
    }

    /// Moves the position over the done prefix of the window.
    fn advance(&mut self) {
        while self.window.front().is_some_and(|slot| slot.done) {
            if let Some(slot) = self.window.pop_front() {
                self.position = Some(slot.sequence_number);
                self.base += 1;
                self.unsaved += 1;
                self.permits.add_permits(1);
            }
        }
    }

    /// [`save`](Self::save), logging a failure.
    async fn save_logged(&mut self) -> Result<bool> {
        let saved = self.save(false).await;
        if let Err(error) = &saved {
            // The flush tick tries again (the position still differs from the saved one).
            self.unsaved = 0;
            tracing::warn!(shard = %self.shard_id, %error, "stream checkpoint not saved; trying again");
        }
        saved
    }

    /// Saves the position (and `finished`) if it moved, fenced by the lease:
    /// `false` when the lease is another consumer's.
    async fn save(&mut self, finished: bool) -> Result<bool> {
        if !finished && (self.position.is_none() || self.position == self.saved) {
            self.unsaved = 0;
            return Ok(true);
        }
        let checkpoint = ShardCheckpoint {
            sequence_number: self.position.clone(),
            finished,
        };
        let saved = self
            .shared
            .store
            .checkpoint(
                &self.stream_arn,
                &self.shard_id,
                &self.shared.consumer_id,
                &checkpoint,
            )
            .await?;
        if saved {
            self.saved = self.position.clone();
            self.unsaved = 0;
            Counters::add(&self.counters().checkpoints_saved, 1, meters::CHECKPOINTS_SAVED);
        }
        Ok(saved)
    }
}

impl Drop for Worker {
    /// The shard's unsettled records leave with it (the next owner reads
    /// them again): out of the gauge and the monitor.
    fn drop(&mut self) {
        if !self.unsettled.is_empty() {
            metrics::gauge!(meters::UNSETTLED).decrement(self.unsettled.len() as f64);
        }
        self.shared.monitor.progress().remove(&self.shard_id);
    }
}

/// Watches the row of a command inserted `applied` until its publisher marks
/// it done (`true`: nothing left to do), or until its recovery is due
/// ([`Engine::left_to_publisher`](cqrs_core::Engine::left_to_publisher):
/// its publisher is gone, or the recovery grace has passed; `false`: settle
/// it). Cheap reads, with growing waits; read errors are retried like
/// settle errors.
async fn publisher_done(shared: &Shared, shard_id: &str, key: &EntityKey, version: u64) -> bool {
    let mut attempt: u32 = 0;
    let mut failures: u32 = 0;
    loop {
        let watched = match shared.engine.storage().get_command(key, version).await {
            Ok(None) => return true,
            Ok(Some(command)) => match command.status {
                CommandStatus::Finished | CommandStatus::Failed => return true,
                CommandStatus::Published => return false,
                CommandStatus::Applied => shared.engine.left_to_publisher(&command).await,
            },
            Err(error) => Err(error),
        };
        let wait = match watched {
            Ok(None) => return false,
            Ok(Some(left)) => {
                attempt = attempt.saturating_add(1);
                let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(30));
                shared
                    .config
                    .poll_interval
                    .saturating_mul(factor)
                    .min(shared.config.max_backoff)
                    .min(left)
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                Counters::add(&shared.monitor.counters().retries, 1, meters::RETRIES);
                let wait = shared.config.backoff(failures);
                tracing::warn!(shard = shard_id, pk = %key.pk, sk = %key.sk, version, attempt = failures, %error, ?wait,
                    "command row or its publisher's heartbeat not read; trying again");
                wait
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// Settles one command inserted with status `inserted`, trying again (with
/// capped backoff) until it succeeds.
async fn settle(shared: &Shared, shard_id: &str, key: &EntityKey, version: u64, inserted: CommandStatus) {
    let mut attempt: u32 = 0;
    loop {
        let outcome = AssertUnwindSafe(shared.engine.settle_inserted(key, version, inserted))
            .catch_unwind()
            .await;
        let error = match outcome {
            Ok(Ok(status)) => {
                Counters::add(&shared.monitor.counters().settled, 1, meters::SETTLED);
                tracing::debug!(shard = shard_id, pk = %key.pk, sk = %key.sk, version, ?status, "command settled");
                return;
            }
            Ok(Err(error)) => error,
            Err(_) => Error::backend("settle panicked", true),
        };
        attempt = attempt.saturating_add(1);
        Counters::add(&shared.monitor.counters().retries, 1, meters::RETRIES);
        let wait = shared.config.backoff(attempt);
        tracing::warn!(shard = shard_id, pk = %key.pk, sk = %key.sk, version, attempt, %error, ?wait,
            "command not settled; trying again");
        tokio::time::sleep(wait).await;
    }
}

/// Reads the shard from `position` on and hands the records over, within the
/// in-flight bound, until the shard ends (or the task is aborted).
async fn read_shard(
    shared: Arc<Shared>,
    stream_arn: String,
    shard_id: String,
    mut position: Option<String>,
    permits: Arc<Semaphore>,
    tx: mpsc::Sender<Read>,
) {
    let mut iterator: Option<String> = None;
    let mut failures: u32 = 0;
    let mut pages = 0usize;
    loop {
        // Room for one record at least, and as many as are free.
        let Ok(mut permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let more = permits.available_permits().min(MAX_RECORDS_PER_CALL - 1);
        if more > 0 {
            if let Ok(extra) = permits
                .clone()
                .try_acquire_many_owned(u32::try_from(more).unwrap_or(1))
            {
                permit.merge(extra);
            }
        }
        let page = match next_page(&shared, &stream_arn, &shard_id, &position, &mut iterator, &permit).await {
            Ok(page) => {
                failures = 0;
                page
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                let wait = shared.config.backoff(failures);
                tracing::warn!(shard = %shard_id, %error, attempt = failures, ?wait, "stream shard not read; trying again");
                iterator = None;
                drop(permit);
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        let (records, next) = page;
        let read = records.len();
        Counters::add(
            &shared.monitor.counters().records_read,
            read as u64,
            meters::RECORDS_READ,
        );
        let mut batch = Vec::with_capacity(read);
        let now = cqrs_core::clock::now();
        for record in &records {
            let created = written_at(record).unwrap_or(now);
            let Some(sequence_number) = record.dynamodb().and_then(|r| r.sequence_number()) else {
                tracing::error!(shard = %shard_id, error = %shape_error("stream record", "no sequence number"), "skipped");
                continue;
            };
            batch.push(ReadRecord {
                sequence_number: sequence_number.to_owned(),
                action: classify_record(record).for_engine(&shared.engine),
                created,
            });
            position = Some(sequence_number.to_owned());
        }
        let empty = batch.is_empty();
        // How far reading is behind the writes: the age of the last record read.
        if let Some(entry) = shared.monitor.progress().get_mut(&shard_id) {
            entry.last_read = batch.last().map(|record| record.created);
        }
        if !empty {
            // One permit per record handed over: given back as each leaves the window.
            hand_over(&mut permit, batch.len());
            if tx.send(Read::Records(batch)).await.is_err() {
                return;
            }
        }
        drop(permit);
        match next {
            None => {
                let _ = tx.send(Read::End).await;
                return;
            }
            Some(next) => iterator = Some(next),
        }
        if empty {
            pages = 0;
            tokio::time::sleep(shared.config.poll_interval).await;
        } else {
            pages += 1;
            if pages >= MAX_PAGES_PER_POLL {
                pages = 0;
                tokio::task::yield_now().await;
            }
        }
    }
}

/// When a stream record's row was written: the command's `createdAt` when
/// it has one (precise, and on the framework's clock), else the record's
/// approximate creation time (rounded down by DynamoDB).
fn written_at(record: &aws_sdk_dynamodbstreams::types::Record) -> Option<DateTime<Utc>> {
    use aws_sdk_dynamodbstreams::types::AttributeValue;

    let data = record.dynamodb()?;
    let created = match data.new_image().and_then(|image| image.get("createdAt")) {
        Some(AttributeValue::S(at)) => DateTime::parse_from_rfc3339(at).ok(),
        _ => None,
    };
    created.map(|at| at.with_timezone(&Utc)).or_else(|| {
        let at = data.approximate_creation_date_time()?;
        DateTime::from_timestamp(at.secs(), at.subsec_nanos())
    })
}

/// Forgets `n` permits of `permit`: the worker adds them back one by one.
fn hand_over(permit: &mut OwnedSemaphorePermit, n: usize) {
    if let Some(taken) = permit.split(n) {
        taken.forget();
    }
}

type Page = (Vec<aws_sdk_dynamodbstreams::types::Record>, Option<String>);

/// One GetRecords page (at most as many records as `permit` holds), from the
/// kept iterator or a fresh one after `position`.
async fn next_page(
    shared: &Shared,
    stream_arn: &str,
    shard_id: &str,
    position: &Option<String>,
    iterator: &mut Option<String>,
    permit: &OwnedSemaphorePermit,
) -> Result<Page> {
    let source = &shared.source;
    let (current, kept) = match iterator.take() {
        Some(kept) => (kept, true),
        None => (
            source.iterator(stream_arn, shard_id, position.as_deref()).await?,
            false,
        ),
    };
    let limit = i32::try_from(permit.num_permits().clamp(1, MAX_RECORDS_PER_CALL)).unwrap_or(1);
    match source.records(&current, limit).await {
        Ok(page) => Ok(page),
        Err(error) if kept => {
            // A kept iterator is only a shortcut: it may have expired (after
            // 15 minutes) or point at trimmed records. Start again from the position.
            tracing::debug!(shard = shard_id, %error, "kept shard iterator refused; getting a new one");
            let fresh = source.iterator(stream_arn, shard_id, position.as_deref()).await?;
            source.records(&fresh, limit).await
        }
        Err(error) => Err(error),
    }
}
