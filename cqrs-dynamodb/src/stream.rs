//! The stream processor: reads the command table's DynamoDB stream and feeds the pipeline.
//!
//! With [`AsyncDispatch::External`](cqrs_core::AsyncDispatch::External),
//! `publish_async` only stores a command row with status `published`; a
//! [`StreamProcessor`] running in a container (or locally, next to DynamoDB
//! Local) reads the inserts from the command table's stream and calls
//! [`Engine::process`] for each of them.
//!
//! # What is fed
//!
//! Only `INSERT` records whose new image has `status` = `published`. Rows
//! inserted by `publish_sync` and `commit` carry `applied`: their handlers ran
//! in the publishing process, and processing such a row while it is still
//! `applied` would run them a second time. Status changes (`MODIFY`) and
//! removals (time to live) are skipped. The stream must therefore include new
//! images (`NEW_IMAGE` or `NEW_AND_OLD_IMAGES`, as
//! [`ensure_tables`](crate::ensure_tables) creates it).
//!
//! # Checkpoints: nothing lost, nothing applied twice
//!
//! The sequence number of the last record handled in each shard is saved in a
//! [`CheckpointStore`] after each command fed, and at the end of each batch of
//! records. A restarted processor resumes right after it. The checkpoint never
//! moves past a record whose [`Engine::process`] failed: that record is tried
//! again (on the next poll, after bounded retries in this one), so a command is
//! never lost. A crash between processing a command and saving its checkpoint
//! makes the next processor feed that command again; [`Engine::process`] is
//! idempotent (a version already applied is not applied again, and its
//! handlers do not run again once they completed), so it is not applied twice.
//!
//! Records older than the stream's retention (24 hours on AWS) are gone: a
//! processor stopped for longer resumes at the oldest record still available
//! and logs an error.
//!
//! # Shards
//!
//! A stream is split into shards; a shard is closed after a while and
//! continued by child shards. Records of one shard are processed in order,
//! and a child shard waits until its parent is finished (read to its end), so
//! that the changes of one item are seen in the order they were written.
//!
//! The versions of one entity are distinct items (`sk@1`, `sk@2`, ...) and
//! may sit in different shards, in any order: that is harmless, because
//! [`Engine::process`] for version N applies every missing version up to N, in
//! order, and a later call for an earlier version finds it done. Shards are
//! processed one after the other all the same: two shards processed at once
//! could feed two versions of one entity at the same moment, and a handler
//! still running in one could be started again by the other.
//!
//! # One processor per stream
//!
//! Run a single processor per command table at a time. Two would both feed
//! every command; the data stays correct (version checks), but a handler can
//! run twice when both process the same command at the same moment, and their
//! checkpoints would overwrite each other.
//!
//! ```no_run
//! # async fn run() -> cqrs_core::Result<()> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use cqrs_core::{AsyncDispatch, Engine};
//! use cqrs_dynamodb::stream::{DynamoDbCheckpoints, StreamProcessor};
//! use cqrs_dynamodb::{local_client, local_streams_client, DynamoDbStorage, TableNames};
//!
//! let endpoint = "http://127.0.0.1:8000";
//! let tables = TableNames::new("dev", "shop", "order");
//! let storage = DynamoDbStorage::new(local_client(endpoint), tables.clone());
//! let engine = Engine::builder(Arc::new(storage))
//!     .dispatch(AsyncDispatch::External)
//!     .build();
//! let checkpoints = DynamoDbCheckpoints::new(local_client(endpoint), &tables);
//! let processor = StreamProcessor::new(
//!     engine,
//!     local_client(endpoint),
//!     local_streams_client(endpoint),
//!     tables,
//!     Arc::new(checkpoints),
//! );
//! processor.poll_once().await?; // fails early on a misconfiguration
//!
//! // Any future ends the loop: `tokio::signal::ctrl_c()` in a container.
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! # drop(stop);
//! processor.run(Duration::from_secs(1), stopped).await;
//! # Ok(()) }
//! ```

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue as DbValue;
use aws_sdk_dynamodbstreams::error::DisplayErrorContext;
use aws_sdk_dynamodbstreams::types::{AttributeValue, OperationType, Record, Shard, ShardIteratorType};
use chrono::Utc;
use cqrs_core::{parse_command_sk, CommandStatus, Engine, EntityKey, Error, Result, RetryPolicy};

use crate::error::{sdk_error, shape_error};
use crate::item::{key, s};
use crate::tables::TableNames;

/// Prefix of the partition key of stream checkpoints in the sequences table,
/// followed by the command table's name.
pub const CHECKPOINT_PK_PREFIX: &str = "STREAM#";

/// GetRecords calls on one shard in one poll, at most: under a steady flow of
/// writes an open shard never returns an empty page, and the other shards
/// must get their turn.
const MAX_PAGES_PER_SHARD: usize = 100;

/// Where a processor stands in each shard of a stream.
///
/// Implementations must be durable for a restart to resume where the last
/// run stopped ([`DynamoDbCheckpoints`]); [`MemoryCheckpoints`] is for tests
/// and one-off runs (a new process starts over from the oldest record, which
/// is safe but slow).
#[async_trait]
pub trait CheckpointStore: Send + Sync + std::fmt::Debug {
    /// The sequence number of the last record processed in the shard, if any.
    async fn load(&self, stream_arn: &str, shard_id: &str) -> Result<Option<String>>;

    /// Records that every record of the shard up to `sequence_number`
    /// (included) was processed.
    async fn save(&self, stream_arn: &str, shard_id: &str, sequence_number: &str) -> Result<()>;

    /// Whether the shard was read to its end (it is closed and every record
    /// was processed).
    async fn is_finished(&self, stream_arn: &str, shard_id: &str) -> Result<bool>;

    /// Records that the shard was read to its end: its child shards may start.
    async fn mark_finished(&self, stream_arn: &str, shard_id: &str) -> Result<()>;
}

/// The checkpoint of one shard.
#[derive(Debug, Clone, Default)]
struct Checkpoint {
    sequence_number: Option<String>,
    finished: bool,
}

/// Checkpoints in memory: lost when the process ends.
#[derive(Debug, Default)]
pub struct MemoryCheckpoints {
    /// By (stream ARN, shard id).
    shards: Mutex<HashMap<(String, String), Checkpoint>>,
}

impl MemoryCheckpoints {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, stream_arn: &str, shard_id: &str, f: impl FnOnce(&mut Checkpoint) -> T) -> T {
        // A panic elsewhere cannot leave a checkpoint half-written: keep going.
        let mut shards = self.shards.lock().unwrap_or_else(PoisonError::into_inner);
        f(shards
            .entry((stream_arn.to_owned(), shard_id.to_owned()))
            .or_default())
    }
}

#[async_trait]
impl CheckpointStore for MemoryCheckpoints {
    async fn load(&self, stream_arn: &str, shard_id: &str) -> Result<Option<String>> {
        Ok(self.with(stream_arn, shard_id, |c| c.sequence_number.clone()))
    }

    async fn save(&self, stream_arn: &str, shard_id: &str, sequence_number: &str) -> Result<()> {
        self.with(stream_arn, shard_id, |c| {
            c.sequence_number = Some(sequence_number.to_owned())
        });
        Ok(())
    }

    async fn is_finished(&self, stream_arn: &str, shard_id: &str) -> Result<bool> {
        Ok(self.with(stream_arn, shard_id, |c| c.finished))
    }

    async fn mark_finished(&self, stream_arn: &str, shard_id: &str) -> Result<()> {
        self.with(stream_arn, shard_id, |c| c.finished = true);
        Ok(())
    }
}

/// Checkpoints in the sequences table ([`TableNames::sequences`]): one item
/// per shard, at pk `STREAM#{command table}` and sk the shard id, with the
/// attributes `sequenceNumber` (string), `finished` (boolean), `streamArn` and
/// `updatedAt`.
///
/// Shard ids are unique to their stream; the stream ARN is stored as well, and
/// an item of another stream (the table was recreated, say) counts as no
/// checkpoint. Cheap to clone.
#[derive(Debug, Clone)]
pub struct DynamoDbCheckpoints {
    client: aws_sdk_dynamodb::Client,
    table: String,
    pk: String,
}

impl DynamoDbCheckpoints {
    /// The checkpoints of the stream of `tables.command`, stored in `tables.sequences`.
    pub fn new(client: aws_sdk_dynamodb::Client, tables: &TableNames) -> Self {
        Self {
            client,
            table: tables.sequences.clone(),
            pk: format!("{CHECKPOINT_PK_PREFIX}{}", tables.command),
        }
    }

    /// The partition key the checkpoints are stored under.
    pub fn partition_key(&self) -> &str {
        &self.pk
    }

    /// The shard's item, if it belongs to `stream_arn`.
    async fn get(&self, stream_arn: &str, shard_id: &str) -> Result<Option<Checkpoint>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(&self.pk, shard_id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk_error)?;
        let Some(item) = out.item else {
            return Ok(None);
        };
        match item.get("streamArn") {
            Some(DbValue::S(arn)) if arn == stream_arn => {}
            _ => return Ok(None),
        }
        let sequence_number = match item.get("sequenceNumber") {
            Some(DbValue::S(seq)) => Some(seq.clone()),
            None => None,
            Some(_) => return Err(shape_error("stream checkpoint", "sequenceNumber is not a string")),
        };
        let finished = matches!(item.get("finished"), Some(DbValue::Bool(true)));
        Ok(Some(Checkpoint {
            sequence_number,
            finished,
        }))
    }

    /// Sets `attribute` on the shard's item (creating it), with the stream ARN.
    async fn set(&self, stream_arn: &str, shard_id: &str, attribute: &str, value: DbValue) -> Result<()> {
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(&self.pk, shard_id)))
            .update_expression("SET #attr = :value, streamArn = :arn, updatedAt = :now")
            .expression_attribute_names("#attr", attribute)
            .expression_attribute_values(":value", value)
            .expression_attribute_values(":arn", s(stream_arn))
            .expression_attribute_values(":now", s(Utc::now().to_rfc3339()))
            .send()
            .await
            .map_err(sdk_error)?;
        Ok(())
    }
}

#[async_trait]
impl CheckpointStore for DynamoDbCheckpoints {
    async fn load(&self, stream_arn: &str, shard_id: &str) -> Result<Option<String>> {
        Ok(self
            .get(stream_arn, shard_id)
            .await?
            .and_then(|c| c.sequence_number))
    }

    async fn save(&self, stream_arn: &str, shard_id: &str, sequence_number: &str) -> Result<()> {
        self.set(stream_arn, shard_id, "sequenceNumber", s(sequence_number))
            .await
    }

    async fn is_finished(&self, stream_arn: &str, shard_id: &str) -> Result<bool> {
        Ok(self.get(stream_arn, shard_id).await?.is_some_and(|c| c.finished))
    }

    async fn mark_finished(&self, stream_arn: &str, shard_id: &str) -> Result<()> {
        self.set(stream_arn, shard_id, "finished", DbValue::Bool(true))
            .await
    }
}

/// What the processor knows of one shard in this process.
#[derive(Debug, Default)]
struct ShardState {
    /// The last record handled (fed or skipped); `None`: none yet.
    position: Option<String>,
    /// The last position saved in the checkpoint store.
    saved: Option<String>,
    /// An iterator that continues right after `position`: kept between polls,
    /// because a page can be empty while records follow further on, and
    /// restarting from the checkpoint would land on that empty page again.
    iterator: Option<String>,
    /// Read to its end.
    finished: bool,
}

/// What the processor knows of the stream in this process.
#[derive(Debug, Default)]
struct State {
    /// The stream this state is about; reset when the table's stream changes.
    stream_arn: String,
    shards: HashMap<String, ShardState>,
}

/// Reads the command table's stream and feeds [`Engine::process`], with
/// checkpoints (see the [module documentation](self)).
pub struct StreamProcessor {
    engine: Engine,
    dynamodb: aws_sdk_dynamodb::Client,
    streams: aws_sdk_dynamodbstreams::Client,
    tables: TableNames,
    checkpoints: Arc<dyn CheckpointStore>,
    retry: RetryPolicy,
    max_per_poll: Option<usize>,
    /// Held for a whole poll: polls of one processor never overlap, so a
    /// shard is never read by two of them at once.
    state: tokio::sync::Mutex<State>,
}

impl std::fmt::Debug for StreamProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamProcessor")
            .field("engine", &self.engine)
            .field("tables", &self.tables)
            .field("checkpoints", &self.checkpoints)
            .field("retry", &self.retry)
            .field("max_per_poll", &self.max_per_poll)
            .finish_non_exhaustive()
    }
}

impl StreamProcessor {
    /// A processor of the stream of `tables.command`.
    ///
    /// `engine` should be built with
    /// [`AsyncDispatch::External`](cqrs_core::AsyncDispatch::External) (with
    /// the default `InProcess`, the publishing process applies its async
    /// commands itself and this processor only finds them done). `dynamodb`
    /// looks up the table's stream, `streams` reads it.
    pub fn new(
        engine: Engine,
        dynamodb: aws_sdk_dynamodb::Client,
        streams: aws_sdk_dynamodbstreams::Client,
        tables: TableNames,
        checkpoints: Arc<dyn CheckpointStore>,
    ) -> Self {
        Self {
            engine,
            dynamodb,
            streams,
            tables,
            checkpoints,
            retry: RetryPolicy::default(),
            max_per_poll: None,
            state: tokio::sync::Mutex::new(State::default()),
        }
    }

    /// How a command whose [`Engine::process`] fails is retried within one
    /// poll (default: [`RetryPolicy::default`]). When every attempt failed,
    /// the poll leaves that shard, its checkpoint stays before the command,
    /// and the next poll starts with it again.
    ///
    /// A command that can never be processed (a row this framework cannot
    /// read, say) therefore holds up its shard, with an error logged on each
    /// poll, until an operator repairs the row or moves the checkpoint past
    /// it ([`CheckpointStore::save`] with the record's sequence number).
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Ends a poll after feeding `max` commands (default: no limit), so that
    /// a poll has a bounded length; [`run`](Self::run) polls again at once
    /// when a poll fed commands.
    pub fn max_per_poll(mut self, max: usize) -> Self {
        self.max_per_poll = Some(max);
        self
    }

    /// The checkpoint store.
    pub fn checkpoints(&self) -> &Arc<dyn CheckpointStore> {
        &self.checkpoints
    }

    /// Processes what the stream holds now, in every shard, and returns the
    /// number of commands fed to [`Engine::process`].
    ///
    /// A shard that fails (a command that still fails after its retries, a
    /// stream or checkpoint error) is left for the next poll while the other
    /// shards are processed; the poll then returns the first error. Commands
    /// fed before it stay fed and checkpointed.
    pub async fn poll_once(&self) -> Result<usize> {
        let mut state = self.state.lock().await;
        let stream_arn = self.stream_arn().await?;
        if state.stream_arn != stream_arn {
            if !state.stream_arn.is_empty() {
                tracing::info!(old = %state.stream_arn, new = %stream_arn, "the command table has a new stream");
            }
            *state = State {
                stream_arn: stream_arn.clone(),
                shards: HashMap::new(),
            };
        }
        let shards = self.describe_shards(&stream_arn).await?;
        let listed: HashSet<&str> = shards.iter().filter_map(Shard::shard_id).collect();
        let mut budget = Budget {
            fed: 0,
            max: self.max_per_poll,
        };
        let mut first_error = None;
        for shard in processing_order(&shards) {
            if budget.exhausted() {
                break;
            }
            let Some(shard_id) = shard.shard_id() else {
                continue;
            };
            let parent = shard.parent_shard_id().filter(|p| listed.contains(p));
            if let Err(error) = self
                .poll_shard(&mut state, &stream_arn, shard_id, parent, &mut budget)
                .await
            {
                tracing::error!(shard = shard_id, %error, "stream shard not processed; trying again on the next poll");
                first_error.get_or_insert(error);
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(budget.fed),
        }
    }

    /// Polls until `shutdown` completes: at once again after a poll that fed
    /// commands, after `idle` otherwise. Errors are logged (`tracing`) and the
    /// poll is tried again after `idle`.
    ///
    /// `shutdown` is looked at between polls, and a poll in progress is
    /// finished first, so that the command being processed has its handlers
    /// run and its checkpoint saved.
    pub async fn run<F: Future>(&self, idle: Duration, shutdown: F) {
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            // Polled before each poll too, so that it is registered early (a
            // signal future installs its handler on its first poll).
            if futures::poll!(shutdown.as_mut()).is_ready() {
                return;
            }
            let wait = match self.poll_once().await {
                Ok(0) => idle,
                Ok(fed) => {
                    tracing::debug!(fed, "stream poll");
                    Duration::ZERO
                }
                Err(error) => {
                    tracing::error!(%error, "stream poll failed");
                    idle
                }
            };
            tokio::select! {
                biased;
                _ = shutdown.as_mut() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// The ARN of the command table's current stream.
    async fn stream_arn(&self) -> Result<String> {
        let described = self
            .dynamodb
            .describe_table()
            .table_name(&self.tables.command)
            .send()
            .await
            .map_err(sdk_error)?;
        let table = described.table();
        let enabled = table
            .and_then(|t| t.stream_specification())
            .is_some_and(|s| s.stream_enabled());
        match table.and_then(|t| t.latest_stream_arn()) {
            Some(arn) => {
                if !enabled {
                    // A disabled stream stays readable for its retention: drain it.
                    tracing::warn!(table = %self.tables.command, "the command table's stream is disabled");
                }
                Ok(arn.to_owned())
            }
            None => Err(Error::invalid(
                "table",
                format!("table {} has no stream", self.tables.command),
            )),
        }
    }

    /// Every shard of the stream (those within its retention).
    async fn describe_shards(&self, stream_arn: &str) -> Result<Vec<Shard>> {
        let mut shards = Vec::new();
        let mut start: Option<String> = None;
        loop {
            let out = self
                .streams
                .describe_stream()
                .stream_arn(stream_arn)
                .set_exclusive_start_shard_id(start.take())
                .send()
                .await
                .map_err(sdk_error)?;
            let Some(description) = out.stream_description else {
                return Err(shape_error("stream description", "missing"));
            };
            shards.extend(description.shards.unwrap_or_default());
            match description.last_evaluated_shard_id {
                Some(last) if !last.is_empty() => start = Some(last),
                _ => return Ok(shards),
            }
        }
    }

    /// The shard's state in this process, loaded from the checkpoint store
    /// the first time the shard is seen.
    async fn shard_state<'s>(
        &self,
        state: &'s mut State,
        stream_arn: &str,
        shard_id: &str,
    ) -> Result<&'s mut ShardState> {
        if !state.shards.contains_key(shard_id) {
            let finished = self.checkpoints.is_finished(stream_arn, shard_id).await?;
            let saved = self.checkpoints.load(stream_arn, shard_id).await?;
            state.shards.insert(
                shard_id.to_owned(),
                ShardState {
                    position: saved.clone(),
                    saved,
                    iterator: None,
                    finished,
                },
            );
        }
        state
            .shards
            .get_mut(shard_id)
            .ok_or_else(|| Error::backend("shard state vanished", false))
    }

    /// Processes the records of one shard available now.
    async fn poll_shard(
        &self,
        state: &mut State,
        stream_arn: &str,
        shard_id: &str,
        parent: Option<&str>,
        budget: &mut Budget,
    ) -> Result<()> {
        if let Some(parent) = parent {
            // Loaded (and so processed earlier in this poll, parents coming
            // first) or else read from the store.
            if !self.shard_state(state, stream_arn, parent).await?.finished {
                tracing::debug!(shard = shard_id, parent, "waiting for the parent shard");
                return Ok(());
            }
        }
        let shard = self.shard_state(state, stream_arn, shard_id).await?;
        if shard.finished {
            return Ok(());
        }
        // The first page may come from an iterator kept since the previous
        // poll; the others follow from fresh ones.
        let mut first_page = true;
        for _ in 0..MAX_PAGES_PER_SHARD {
            if budget.exhausted() {
                return Ok(());
            }
            // Taken: put back only once every record of the page is handled.
            let (iterator, kept) = match shard.iterator.take() {
                Some(iterator) => (iterator, first_page),
                None => (
                    self.iterator(stream_arn, shard_id, shard.position.as_deref())
                        .await?,
                    false,
                ),
            };
            first_page = false;
            let page = match self.streams.get_records().shard_iterator(iterator).send().await {
                Ok(page) => page,
                Err(e) if kept => {
                    // A kept iterator is only a shortcut: it may have expired
                    // (after 15 minutes) or point at trimmed records. Start
                    // again from the position.
                    tracing::debug!(shard = shard_id, error = %DisplayErrorContext(&e), "kept shard iterator refused; getting a new one");
                    continue;
                }
                Err(e) => return Err(sdk_error(e)),
            };
            let records = page.records.unwrap_or_default();
            let empty = records.is_empty();
            for record in &records {
                let sequence_number = record
                    .dynamodb()
                    .and_then(|r| r.sequence_number())
                    .ok_or_else(|| shape_error("stream record", "no sequence number"))?;
                if let Some((key, version)) = published_command(record) {
                    if budget.exhausted() {
                        // The iterator is dropped: the next poll resumes after
                        // the last record handled.
                        return self.save(stream_arn, shard_id, shard).await;
                    }
                    if let Err(error) = self.feed(shard_id, &key, version).await {
                        // Save what was handled before it, never past it.
                        if let Err(save_error) = self.save(stream_arn, shard_id, shard).await {
                            tracing::error!(shard = shard_id, error = %save_error, "stream checkpoint not saved");
                        }
                        return Err(error);
                    }
                    budget.fed += 1;
                    shard.position = Some(sequence_number.to_owned());
                    self.save(stream_arn, shard_id, shard).await?;
                } else {
                    shard.position = Some(sequence_number.to_owned());
                }
            }
            self.save(stream_arn, shard_id, shard).await?;
            match page.next_shard_iterator {
                None => {
                    // Closed and read to its end: the children may start.
                    self.checkpoints.mark_finished(stream_arn, shard_id).await?;
                    shard.finished = true;
                    tracing::info!(shard = shard_id, "stream shard finished");
                    return Ok(());
                }
                Some(next) => {
                    shard.iterator = Some(next);
                    if empty {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    /// Saves the shard's position if it moved since the last save.
    async fn save(&self, stream_arn: &str, shard_id: &str, shard: &mut ShardState) -> Result<()> {
        if let Some(position) = &shard.position {
            if shard.saved.as_ref() != Some(position) {
                self.checkpoints.save(stream_arn, shard_id, position).await?;
                shard.saved = Some(position.clone());
            }
        }
        Ok(())
    }

    /// An iterator right after `position`, or at the oldest record without one.
    async fn iterator(&self, stream_arn: &str, shard_id: &str, position: Option<&str>) -> Result<String> {
        let request = || {
            self.streams
                .get_shard_iterator()
                .stream_arn(stream_arn)
                .shard_id(shard_id)
        };
        let out = match position {
            Some(position) => {
                let sent = request()
                    .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                    .sequence_number(position)
                    .send()
                    .await;
                match sent {
                    Ok(out) => out,
                    Err(e)
                        if e.as_service_error()
                            .is_some_and(|s| s.is_trimmed_data_access_exception()) =>
                    {
                        // Nothing to do about it now but to go on with what is left.
                        tracing::error!(
                            shard = shard_id,
                            checkpoint = position,
                            "stream records after the checkpoint are past the stream's retention and \
                             were lost; resuming at the oldest record"
                        );
                        request()
                            .shard_iterator_type(ShardIteratorType::TrimHorizon)
                            .send()
                            .await
                            .map_err(sdk_error)?
                    }
                    Err(e) => return Err(sdk_error(e)),
                }
            }
            None => request()
                .shard_iterator_type(ShardIteratorType::TrimHorizon)
                .send()
                .await
                .map_err(sdk_error)?,
        };
        out.shard_iterator
            .ok_or_else(|| shape_error("shard iterator", "none returned"))
    }

    /// [`Engine::process`] with bounded retries.
    async fn feed(&self, shard_id: &str, key: &EntityKey, version: u64) -> Result<CommandStatus> {
        let max = self.retry.max_attempts.max(1);
        let mut attempt = 1;
        loop {
            match self.engine.process(key, version).await {
                Ok(status) => {
                    tracing::debug!(pk = %key.pk, sk = %key.sk, version, ?status, "command processed");
                    return Ok(status);
                }
                // Handler failures are recorded by the pipeline and do not
                // come here: this is the backend, which may recover.
                Err(error) if attempt < max => {
                    tracing::warn!(shard = shard_id, pk = %key.pk, sk = %key.sk, version, attempt, %error, "command not processed; retrying");
                    tokio::time::sleep(self.retry.backoff(attempt)).await;
                    attempt += 1;
                }
                Err(error) => {
                    tracing::error!(shard = shard_id, pk = %key.pk, sk = %key.sk, version, attempts = max, %error, "command not processed");
                    return Err(error);
                }
            }
        }
    }
}

/// Commands fed in this poll, and the limit.
struct Budget {
    fed: usize,
    max: Option<usize>,
}

impl Budget {
    fn exhausted(&self) -> bool {
        self.max.is_some_and(|max| self.fed >= max)
    }
}

/// The command a record feeds: an insert of a command row (`{sk}@{version}`)
/// with status `published`.
fn published_command(record: &Record) -> Option<(EntityKey, u64)> {
    if record.event_name() != Some(&OperationType::Insert) {
        return None;
    }
    let data = record.dynamodb()?;
    let string = |map: Option<&HashMap<String, AttributeValue>>, name: &str| match map?.get(name) {
        Some(AttributeValue::S(value)) => Some(value.clone()),
        _ => None,
    };
    let Some(new_image) = data.new_image() else {
        tracing::warn!("stream record without a new image: the stream must include new images");
        return None;
    };
    if string(Some(new_image), "status").as_deref() != Some("published") {
        return None;
    }
    let pk = string(data.keys(), "pk")?;
    let row_sk = string(data.keys(), "sk")?;
    let Some((sk, version)) = parse_command_sk(&row_sk) else {
        tracing::warn!(
            pk,
            sk = row_sk,
            "stream record of a row that is not a command row; skipped"
        );
        return None;
    };
    Some((EntityKey::new(pk, sk), version))
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
        // Bounded: a cycle cannot happen, but must not hang the processor.
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
    use aws_sdk_dynamodbstreams::types::StreamRecord;

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

    fn record(event: OperationType, sk: &str, status: Option<&str>) -> Record {
        let keys = HashMap::from([
            ("pk".to_owned(), AttributeValue::S("TENANT#a".into())),
            ("sk".to_owned(), AttributeValue::S(sk.into())),
        ]);
        let mut data = StreamRecord::builder()
            .set_keys(Some(keys.clone()))
            .sequence_number("1");
        if let Some(status) = status {
            let mut image = keys;
            image.insert("status".into(), AttributeValue::S(status.into()));
            data = data.set_new_image(Some(image));
        }
        Record::builder().event_name(event).dynamodb(data.build()).build()
    }

    #[test]
    fn only_published_inserts_of_command_rows_are_fed() {
        let fed = |r: Record| published_command(&r);
        assert_eq!(
            fed(record(OperationType::Insert, "ORDER#1@3", Some("published"))),
            Some((EntityKey::new("TENANT#a", "ORDER#1"), 3))
        );
        assert_eq!(
            fed(record(OperationType::Insert, "ORDER#1@3", Some("applied"))),
            None
        );
        assert_eq!(
            fed(record(OperationType::Modify, "ORDER#1@3", Some("published"))),
            None
        );
        assert_eq!(fed(record(OperationType::Remove, "ORDER#1@3", None)), None);
        assert_eq!(
            fed(record(OperationType::Insert, "ORDER#1", Some("published"))),
            None
        );
        assert_eq!(fed(record(OperationType::Insert, "ORDER#1@3", None)), None);
    }

    #[tokio::test]
    async fn memory_checkpoints_round_trip() {
        let store = MemoryCheckpoints::new();
        assert_eq!(store.load("arn", "s1").await.ok().flatten(), None);
        assert!(store.save("arn", "s1", "100").await.is_ok());
        assert!(store.save("arn", "s1", "200").await.is_ok());
        assert_eq!(
            store.load("arn", "s1").await.ok().flatten().as_deref(),
            Some("200")
        );
        assert_eq!(store.load("other", "s1").await.ok().flatten(), None);
        assert!(!store.is_finished("arn", "s1").await.unwrap_or(true));
        assert!(store.mark_finished("arn", "s1").await.is_ok());
        assert!(store.is_finished("arn", "s1").await.unwrap_or(false));
        assert!(!store.is_finished("arn", "s2").await.unwrap_or(true));
    }
}
