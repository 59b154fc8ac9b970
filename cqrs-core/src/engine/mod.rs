//! The engine: every rule of the framework, once, over any [`Storage`].
//!
//! [`Engine`] implements [`CommandService`](crate::CommandService),
//! [`DataService`](crate::DataService) and
//! [`SequenceService`](crate::SequenceService) on top of a backend's
//! primitives, and runs the data-sync pipeline.

mod commands;
mod pipeline;
mod reads;
pub(crate) mod records;
mod sequences;
mod validate;
mod worker;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::context::TenancyPolicy;
use crate::error::Result;
use crate::handler::DataSyncHandler;
use crate::keys::EntityKey;
use crate::model::CommandStatus;
use crate::storage::Storage;

use pipeline::Pipeline;
pub use pipeline::{RetryPolicy, APPLY_STEP};
use worker::Worker;

/// Who applies commands published with `publish_async`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AsyncDispatch {
    /// A background processor in this process (Tokio tasks), started on the
    /// first async publish. [`Engine::wait_idle`] waits for it.
    #[default]
    InProcess,
    /// Something else feeds [`Engine::process`]: a DynamoDB stream processor
    /// or a Lambda function. Async publishes only store the command.
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
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            tenancy: TenancyPolicy::default(),
            retry: RetryPolicy::default(),
            dispatch: AsyncDispatch::InProcess,
            latest_attempts: 100,
            async_dirty_check: true,
        }
    }
}

/// The framework's services over one storage backend.
///
/// Cheap to clone: clones share the storage, the handlers and the background
/// processor. Hand it out as `Arc<dyn CommandService>`, `Arc<dyn DataService>`
/// and `Arc<dyn SequenceService>`.
///
/// ```
/// use std::sync::Arc;
/// use cqrs_core::{CommandService, DataService, Engine, SequenceService, Storage};
///
/// fn services(storage: Arc<dyn Storage>) -> (Arc<dyn CommandService>, Arc<dyn DataService>, Arc<dyn SequenceService>) {
///     let engine = Engine::builder(storage).build();
///     (Arc::new(engine.clone()), Arc::new(engine.clone()), Arc::new(engine))
/// }
/// ```
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    pipeline: Arc<Pipeline>,
    config: EngineConfig,
    worker: OnceLock<Worker>,
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
    handlers: Vec<Arc<dyn DataSyncHandler>>,
    config: EngineConfig,
}

impl EngineBuilder {
    /// Registers a data-sync handler.
    pub fn handler(mut self, handler: impl DataSyncHandler) -> Self {
        self.handlers.push(Arc::new(handler));
        self
    }

    /// Registers a shared data-sync handler.
    pub fn handler_arc(mut self, handler: Arc<dyn DataSyncHandler>) -> Self {
        self.handlers.push(handler);
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
    /// This is a programming error, caught at start-up.
    pub fn build(self) -> Engine {
        let mut names = std::collections::HashSet::new();
        for handler in &self.handlers {
            assert!(
                names.insert(handler.name()),
                "two data-sync handlers are named '{}'; handler names must be unique",
                handler.name()
            );
        }
        let pipeline = Arc::new(Pipeline::new(
            self.storage,
            self.handlers,
            self.config.retry.clone(),
        ));
        Engine {
            inner: Arc::new(Inner {
                pipeline,
                config: self.config,
                worker: OnceLock::new(),
            }),
        }
    }
}

impl Engine {
    /// Starts building an engine over `storage`.
    pub fn builder(storage: Arc<dyn Storage>) -> EngineBuilder {
        EngineBuilder {
            storage,
            handlers: Vec::new(),
            config: EngineConfig::default(),
        }
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
    /// This is what a stream processor or a Lambda function calls for each
    /// inserted command row whose status is `published` (rows inserted by
    /// `publish_sync` or `commit` have had their handlers run by the
    /// publishing process already); the in-process processor calls it too.
    pub async fn process(&self, key: &EntityKey, version: u64) -> Result<CommandStatus> {
        self.inner.pipeline.process(key, version).await
    }

    /// Waits until the in-process background processor has handled every
    /// async command published so far (returns at once if none was).
    pub async fn wait_idle(&self) {
        if let Some(worker) = self.inner.worker.get() {
            worker.wait_idle().await;
        }
    }

    fn tenancy(&self) -> &TenancyPolicy {
        &self.inner.config.tenancy
    }

    fn storage_ref(&self) -> &dyn Storage {
        self.inner.pipeline.storage.as_ref()
    }

    /// Hands a stored async command to the in-process processor.
    fn dispatch(&self, key: EntityKey, version: u64) {
        if self.inner.config.dispatch == AsyncDispatch::InProcess {
            self.inner
                .worker
                .get_or_init(|| Worker::new(self.inner.pipeline.clone()))
                .submit(key, version);
        }
    }
}

/// Default backoff for [`RetryPolicy`].
pub(crate) const DEFAULT_INITIAL_BACKOFF: Duration = Duration::from_millis(50);
