//! The engine: every rule of the framework, once, over any [`Storage`].
//!
//! [`Engine`] implements [`CommandService`](crate::CommandService),
//! [`DataService`](crate::DataService) and
//! [`SequenceService`](crate::SequenceService) on top of a backend's
//! primitives, and runs the data-sync pipeline.

mod activity;
mod commands;
mod idempotent;
mod landed;
mod liveness;
mod pipeline;
mod reads;
pub(crate) mod records;
mod reindex;
mod reprocess;
mod sequences;
mod validate;
mod worker;

use std::future::Future;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use crate::context::TenancyPolicy;
use crate::error::{Error, Result};
use crate::handle::Services;
use crate::handler::DataSyncHandler;
use crate::index::Index;
use crate::keys::EntityKey;
use crate::model::{CommandRecord, CommandStatus};
use crate::storage::Storage;

use activity::Activity;
use liveness::Liveness;
#[cfg(feature = "testing")]
pub(crate) use pipeline::panic_message;
use pipeline::{Foreign, Pipeline, Recovery};
pub use pipeline::{RetryPolicy, APPLY_STEP};
pub use reindex::Reindexed;
use worker::Worker;

/// Who applies commands published with `publish_async`, and who finishes
/// the work of a sync publish that could not finish it itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AsyncDispatch {
    /// A background processor in this process (Tokio tasks), started on the
    /// first async publish. [`Engine::wait_idle`] waits for it.
    ///
    /// Its queue lives in memory: a command it has not finished when the
    /// process dies is not picked up again by anything. That is the right
    /// pipeline for the in-memory backend (whose data dies with the process
    /// too), and a lossy one for a durable backend: on DynamoDB use
    /// `External` with a stream consumer.
    #[default]
    InProcess,
    /// Something else feeds [`Engine::settle`]: a DynamoDB stream consumer
    /// or a Lambda function, reading every command row from the command
    /// table's stream. Async publishes only store the command.
    External,
}

/// Settings of an [`Engine`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EngineConfig {
    /// Which keys a caller may touch.
    pub tenancy: TenancyPolicy,
    /// Retries of failing handlers and of retryable backend errors in the pipeline.
    pub retry: RetryPolicy,
    /// Who applies async commands.
    pub dispatch: AsyncDispatch,
    /// How often a last-writer-wins ([`Latest`](crate::ExpectedVersion::Latest))
    /// publish re-reads and tries again when another writer got in between.
    pub latest_attempts: u32,
    /// Whether `publish_async` at `Exactly(n)` reads command `n` first to skip
    /// a command equal to it (the dirty check). On by default, as in the
    /// reference framework; off, an async publish is a single write, and an
    /// unchanged command is stored as a new version.
    pub async_dirty_check: bool,
    /// Longest run of one handler; a run still going then is cut off and
    /// counts as a failed run (retried, then recorded). Default
    /// [`DEFAULT_HANDLER_TIMEOUT`].
    pub handler_timeout: Duration,
    /// How long after its publication a command still `applied` (data
    /// written, handlers not finished) is left at most to a publisher that
    /// is alive before [`Engine::settle`] runs its handlers again. Default
    /// [`DEFAULT_RECOVERY_GRACE`]; keep it above the longest time a
    /// publisher can spend on handlers (`handler_timeout` × attempts plus
    /// backoff), or a slow run gets a second, concurrent one.
    ///
    /// A publisher that is gone does not get it: once the heartbeat of the
    /// row's [publisher](crate::CommandRecord::publisher) has expired
    /// (within [`publisher_lease`](Self::publisher_lease) of its death), the
    /// handlers run at once. The whole grace is waited for rows without a
    /// publisher (another writer's, older rows) and on a backend that keeps
    /// no [heartbeats](crate::Heartbeat).
    pub recovery_grace: Duration,
    /// How long this engine's heartbeat lasts without renewal (renewed
    /// every third of it while the engine lives): an engine that dies is
    /// known to be gone, and its unfinished sync publishes are recovered,
    /// within this. Default [`DEFAULT_PUBLISHER_LEASE`]; at least 100 ms.
    /// Hosts must keep their clocks synchronized to well within a third of
    /// it (expiries are compared across hosts).
    pub publisher_lease: Duration,
    /// How long a used [idempotency key](crate::IdempotencyKey) is held:
    /// a retry within it gets the first result, after it the key is free.
    /// Default [`DEFAULT_IDEMPOTENCY_RETENTION`](crate::DEFAULT_IDEMPOTENCY_RETENTION).
    pub idempotency_retention: Duration,
    /// Whether [`Engine::settle_inserted`] applies commands another framework
    /// wrote to a shared command table and left to its own pipeline (rows
    /// with a [foreign status](crate::CommandRecord::foreign_status), such
    /// as the reference framework's async commands, which have no status).
    /// Off by default: such a row is left to its writer's pipeline. Turn it
    /// on only in the one process that owns the table's pipeline (see the
    /// DynamoDB guide, "Sharing tables with MBC CQRS Serverless").
    pub apply_foreign_commands: bool,
}

/// Default [`EngineConfig::handler_timeout`]: 10 seconds.
pub const DEFAULT_HANDLER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`EngineConfig::recovery_grace`]: 2 minutes.
pub const DEFAULT_RECOVERY_GRACE: Duration = Duration::from_secs(120);
/// Default [`EngineConfig::publisher_lease`]: 10 seconds.
pub const DEFAULT_PUBLISHER_LEASE: Duration = Duration::from_secs(10);

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            tenancy: TenancyPolicy::default(),
            retry: RetryPolicy::default(),
            dispatch: AsyncDispatch::InProcess,
            latest_attempts: 100,
            async_dirty_check: true,
            handler_timeout: DEFAULT_HANDLER_TIMEOUT,
            recovery_grace: DEFAULT_RECOVERY_GRACE,
            publisher_lease: DEFAULT_PUBLISHER_LEASE,
            idempotency_retention: crate::idempotency::DEFAULT_IDEMPOTENCY_RETENTION,
            apply_foreign_commands: false,
        }
    }
}

/// The framework's services over one storage backend.
///
/// Cheap to clone: clones share the storage, the handlers and the background
/// processor. Hand it out as [`Services`] ([`Engine::services`]), or as
/// `Arc<dyn CommandService>`, `Arc<dyn DataService>` and `Arc<dyn SequenceService>`.
///
/// ```
/// use std::sync::Arc;
/// use cqrs_core::{Engine, Services, Storage};
///
/// fn services(storage: Arc<dyn Storage>) -> Services {
///     Engine::builder(storage).build().services()
/// }
/// ```
#[derive(Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

pub(crate) struct EngineInner {
    pipeline: Arc<Pipeline>,
    config: EngineConfig,
    worker: OnceLock<Worker>,
    activity: Arc<Activity>,
    liveness: Arc<Liveness>,
    /// The commands an operator reprocesses now ([`crate::ops::reprocess`]).
    reprocessing: reprocess::ReprocessLocks,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("storage", &self.inner.pipeline.storage)
            .field("handlers", &self.inner.pipeline.handler_names())
            .field("config", &self.inner.config)
            .finish()
    }
}

/// Builds an [`Engine`].
pub struct EngineBuilder {
    storage: Arc<dyn Storage>,
    handlers: Vec<HandlerSlot>,
    indexes: Vec<Index>,
    config: EngineConfig,
}

/// Builds a handler from the services of the engine it is registered on.
type MakeHandler = Box<dyn FnOnce(&Services) -> Arc<dyn DataSyncHandler>>;

/// A handler to register: built already, or built with the engine's services.
enum HandlerSlot {
    Ready(Arc<dyn DataSyncHandler>),
    WithServices(MakeHandler),
}

impl EngineBuilder {
    /// Registers a data-sync handler.
    pub fn handler(mut self, handler: impl DataSyncHandler) -> Self {
        self.handlers.push(HandlerSlot::Ready(Arc::new(handler)));
        self
    }

    /// Registers a shared data-sync handler.
    pub fn handler_arc(mut self, handler: Arc<dyn DataSyncHandler>) -> Self {
        self.handlers.push(HandlerSlot::Ready(handler));
        self
    }

    /// Registers a handler that uses the services of the engine it is
    /// registered on: `build` calls `make` with them. The handler holds
    /// them without keeping the engine alive — the engine and everything
    /// in it are freed when its last clone is dropped.
    ///
    /// ```
    /// use async_trait::async_trait;
    /// use cqrs_core::{BoxError, DataSyncEvent, DataSyncHandler, Engine, Services, Storage};
    ///
    /// struct AuditTrail { services: Services }
    ///
    /// #[async_trait]
    /// impl DataSyncHandler for AuditTrail {
    ///     fn name(&self) -> &str { "audit-trail" }
    ///     async fn handle(&self, event: &DataSyncEvent) -> Result<(), BoxError> {
    ///         let history = self.services.data.list_history(&event.key(), &event.context).await?;
    ///         tracing::info!(versions = history.len() + 1, "changed");
    ///         Ok(())
    ///     }
    /// }
    ///
    /// fn engine(storage: std::sync::Arc<dyn Storage>) -> Engine {
    ///     Engine::builder(storage)
    ///         .handler_with(|services| AuditTrail { services: services.clone() })
    ///         .build()
    /// }
    /// ```
    pub fn handler_with<H: DataSyncHandler>(mut self, make: impl FnOnce(&Services) -> H + 'static) -> Self {
        self.handlers
            .push(HandlerSlot::WithServices(Box::new(move |services| {
                Arc::new(make(services))
            })));
        self
    }

    /// Declares a secondary read path over the data table (see [`Index`]):
    /// every data row written from now on carries its entry, and
    /// [`list_by_index`](crate::DataService::list_by_index) reads it. On
    /// DynamoDB the data table needs the matching global secondary index
    /// (see the cqrs-dynamodb documentation).
    pub fn index(mut self, index: Index) -> Self {
        self.indexes.push(index);
        self
    }

    /// Declares several indexes (see [`EngineBuilder::index`]).
    pub fn indexes(mut self, indexes: impl IntoIterator<Item = Index>) -> Self {
        self.indexes.extend(indexes);
        self
    }

    /// Sets the tenancy policy.
    pub fn tenancy(mut self, tenancy: TenancyPolicy) -> Self {
        self.config.tenancy = tenancy;
        self
    }

    /// Sets the retry policy of the pipeline.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.config.retry = retry;
        self
    }

    /// Sets who applies async commands.
    pub fn dispatch(mut self, dispatch: AsyncDispatch) -> Self {
        self.config.dispatch = dispatch;
        self
    }

    /// Sets how often a last-writer-wins publish tries again after a conflict.
    pub fn latest_attempts(mut self, attempts: u32) -> Self {
        self.config.latest_attempts = attempts;
        self
    }

    /// Turns the dirty check of `publish_async` on or off (see
    /// [`EngineConfig::async_dirty_check`]).
    pub fn async_dirty_check(mut self, enabled: bool) -> Self {
        self.config.async_dirty_check = enabled;
        self
    }

    /// Sets the longest run of one handler (see [`EngineConfig::handler_timeout`]).
    pub fn handler_timeout(mut self, timeout: Duration) -> Self {
        self.config.handler_timeout = timeout;
        self
    }

    /// Makes this engine's pipeline the owner of commands another framework
    /// wrote and left to its own (see [`EngineConfig::apply_foreign_commands`]).
    pub fn apply_foreign_commands(mut self, apply: bool) -> Self {
        self.config.apply_foreign_commands = apply;
        self
    }

    /// Sets how long an unfinished sync publish is left to its publisher
    /// (see [`EngineConfig::recovery_grace`]).
    pub fn recovery_grace(mut self, grace: Duration) -> Self {
        self.config.recovery_grace = grace;
        self
    }

    /// Sets how long this engine's heartbeat lasts without renewal (see
    /// [`EngineConfig::publisher_lease`]).
    pub fn publisher_lease(mut self, lease: Duration) -> Self {
        self.config.publisher_lease = lease;
        self
    }

    /// Sets how long used idempotency keys are held (see
    /// [`EngineConfig::idempotency_retention`]).
    pub fn idempotency_retention(mut self, retention: Duration) -> Self {
        self.config.idempotency_retention = retention;
        self
    }

    /// Replaces the whole configuration, including what earlier calls set.
    pub fn config(mut self, config: EngineConfig) -> Self {
        self.config = config;
        self
    }

    /// Builds the engine. No task is started until the first async publish
    /// (which therefore must run inside a Tokio runtime).
    ///
    /// # Panics
    ///
    /// When two handlers have the same [`name`](DataSyncHandler::name):
    /// failures are recorded and reprocessed by name, so names must be unique.
    /// Likewise for two indexes of one name, an invalid index name or one
    /// without a partition field, and more than [`MAX_INDEXES`](crate::MAX_INDEXES)
    /// indexes. These are programming errors, caught at start-up.
    pub fn build(self) -> Engine {
        let EngineBuilder {
            storage,
            handlers,
            indexes,
            config,
        } = self;
        let mut index_names = std::collections::HashSet::new();
        assert!(
            indexes.len() <= crate::index::MAX_INDEXES,
            "{} indexes declared, at most {} are allowed",
            indexes.len(),
            crate::index::MAX_INDEXES
        );
        for index in &indexes {
            if let Err(error) = index.validate() {
                panic!("{error}");
            }
            assert!(
                index_names.insert(index.name().to_owned()),
                "two indexes are named '{}'; index names must be unique",
                index.name()
            );
        }
        let inner = Arc::new_cyclic(|engine: &Weak<EngineInner>| {
            let services = Services::of_weak(engine.clone());
            let handlers: Vec<Arc<dyn DataSyncHandler>> = handlers
                .into_iter()
                .map(|slot| match slot {
                    HandlerSlot::Ready(handler) => handler,
                    HandlerSlot::WithServices(make) => make(&services),
                })
                .collect();
            let mut names = std::collections::HashSet::new();
            for handler in &handlers {
                assert!(
                    names.insert(handler.name().to_owned()),
                    "two data-sync handlers are named '{}'; handler names must be unique",
                    handler.name()
                );
            }
            let liveness = Arc::new(Liveness::new(storage.clone(), config.publisher_lease));
            let pipeline = Arc::new(Pipeline::new(
                storage,
                handlers,
                indexes,
                config.retry.clone(),
                config.handler_timeout,
            ));
            EngineInner {
                pipeline,
                config,
                worker: OnceLock::new(),
                activity: Arc::default(),
                liveness,
                reprocessing: Default::default(),
            }
        });
        Engine { inner }
    }
}

impl Engine {
    /// Starts building an engine over `storage`.
    pub fn builder(storage: Arc<dyn Storage>) -> EngineBuilder {
        EngineBuilder {
            storage,
            handlers: Vec::new(),
            indexes: Vec::new(),
            config: EngineConfig::default(),
        }
    }

    /// The engine's services in one value, cheap to clone: what your own
    /// services hold.
    pub fn services(&self) -> Services {
        Services::of_engine(self)
    }

    /// The engine behind a weak handle, if it is still alive.
    pub(crate) fn upgrade(inner: &Weak<EngineInner>) -> Option<Engine> {
        inner.upgrade().map(|inner| Engine { inner })
    }

    /// The storage backend.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.inner.pipeline.storage
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Runs the pipeline for `version` of an entity: applies every published
    /// version up to it that is not yet applied, in order, and runs the
    /// handlers of each. Idempotent: an already applied version is not
    /// applied again (its handlers run again only if they never completed).
    ///
    /// Returns the command's final status: `Finished` (or `Applied` when no
    /// handler is interested), or `Failed` once a failure is recorded (a
    /// handler failed every attempt, or the command can never be applied).
    /// An error means nothing final happened yet for a transient reason
    /// (storage unavailable, a handler that could not reach it): call again
    /// later; nothing is marked done that is not.
    ///
    /// Stream consumers call [`Engine::settle`], which calls this.
    pub async fn process(&self, key: &EntityKey, version: u64) -> Result<CommandStatus> {
        self.inner.pipeline.process(key, version).await
    }

    /// Brings one stored command to a final state, whoever stored it: what a
    /// stream consumer or a Lambda function calls for every command row
    /// inserted with status `published` or `applied`.
    ///
    /// - `published` (an async publish): [`Engine::process`].
    /// - `applied` (a sync publish or commit whose handlers have not
    ///   finished): left to its publisher while it is alive, at most until
    ///   [`recovery_grace`](EngineConfig::recovery_grace) after its
    ///   publication (this call sleeps meanwhile; see
    ///   [`Engine::left_to_publisher`]). Once its publisher's heartbeat has
    ///   expired — it died, within
    ///   [`publisher_lease`](EngineConfig::publisher_lease) of its death —
    ///   or the grace has passed, the handlers run again.
    /// - `finished` or `failed`: nothing to do.
    ///
    /// Errors as [`Engine::process`]: call again later. A caller that knows
    /// the status the row was inserted with calls [`Engine::settle_inserted`].
    pub async fn settle(&self, key: &EntityKey, version: u64) -> Result<CommandStatus> {
        self.settle_inserted(key, version, CommandStatus::Applied).await
    }

    /// [`Engine::settle`], knowing the status the command row was inserted
    /// with (a stream record's new image has it).
    ///
    /// A row inserted `published` is an async command: only the pipeline
    /// applies it, so finding it `applied` means a pipeline run that did not
    /// finish — its consumer died, or lost its lease to this one — and its
    /// handlers run again at once, without the grace a sync publisher gets.
    pub async fn settle_inserted(
        &self,
        key: &EntityKey,
        version: u64,
        inserted: CommandStatus,
    ) -> Result<CommandStatus> {
        let recovery = match inserted {
            CommandStatus::Published => Recovery::AtOnce,
            _ => Recovery::AfterPublisher {
                liveness: &self.inner.liveness,
                grace: self.inner.config.recovery_grace,
            },
        };
        let foreign = if self.inner.config.apply_foreign_commands {
            Foreign::Apply
        } else {
            Foreign::Leave
        };
        self.inner.pipeline.settle(key, version, recovery, foreign).await
    }

    /// How much longer the command row `command`, found `applied` (a sync
    /// publish or commit whose handlers have not finished), is left to its
    /// publisher: `None` when its recovery is due now — the heartbeat of its
    /// [publisher](crate::CommandRecord::publisher) has expired or is
    /// missing, or the [recovery grace](EngineConfig::recovery_grace) since
    /// its publication has passed — else the time after which to ask again
    /// (at most until the publisher's heartbeat expires unless renewed).
    /// [`Engine::settle`] waits this way; a consumer that watches such rows
    /// itself (the DynamoDB stream consumer) asks it.
    pub async fn left_to_publisher(&self, command: &CommandRecord) -> Result<Option<Duration>> {
        self.inner
            .liveness
            .left_to_publisher(command, self.inner.config.recovery_grace)
            .await
    }

    /// The id this engine stamps on the rows of its sync publishes, with its
    /// heartbeat written (see [`CommandRecord::publisher`](crate::CommandRecord::publisher));
    /// `None` when the storage keeps no heartbeats or cannot be reached.
    pub(crate) async fn publisher_stamp(&self) -> Option<smol_str::SmolStr> {
        self.inner.liveness.stamp().await
    }

    /// Waits until every piece of work started so far has ended: async
    /// commands queued for the in-process processor, and publishes still
    /// running after their caller dropped its future. Returns at once if
    /// there is none. A graceful shutdown waits for it (with a deadline).
    pub async fn wait_idle(&self) {
        self.inner.activity.wait_idle().await;
    }

    /// Pieces of work in flight now (see [`Engine::wait_idle`]).
    pub fn in_flight(&self) -> usize {
        self.inner.activity.in_flight()
    }

    /// Runs `work` on a task of its own, so that it finishes even if the
    /// caller's future is dropped (a client disconnecting drops its request
    /// future): once a publish starts writing, its handlers and its status
    /// write happen whatever the caller does. Outside a Tokio runtime, runs
    /// it in place.
    async fn detached<T, F>(&self, work: impl FnOnce(Engine) -> F) -> Result<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        let in_flight = self.inner.activity.start();
        let work = work(self.clone());
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Boxed, so that this future does not hold the work inline.
            return Box::pin(work).await;
        };
        let task = runtime.spawn(async move {
            let _in_flight = in_flight;
            work.await
        });
        task.await.map_err(|e| {
            let why = match e.try_into_panic() {
                Ok(panic) => pipeline::panic_message(panic.as_ref()),
                Err(e) => e.to_string(),
            };
            Error::backend(format!("publish task ended abnormally: {why}"), false)
        })?
    }

    fn tenancy(&self) -> &TenancyPolicy {
        &self.inner.config.tenancy
    }

    fn storage_ref(&self) -> &dyn Storage {
        self.inner.pipeline.storage.as_ref()
    }

    /// Hands a stored command to the in-process processor, which brings it
    /// to a final state in the trace of its publish (the command row's
    /// `traceparent`); with external dispatch the stream consumer does.
    fn dispatch(&self, key: EntityKey, version: u64, traceparent: Option<smol_str::SmolStr>) {
        if self.inner.config.dispatch == AsyncDispatch::InProcess {
            self.inner
                .worker
                .get_or_init(|| Worker::new(self.inner.pipeline.clone(), self.inner.activity.clone()))
                .submit(key, version, traceparent);
        }
    }
}

/// Default backoff for [`RetryPolicy`].
pub(crate) const DEFAULT_INITIAL_BACKOFF: Duration = Duration::from_millis(50);
