//! [`Services`]: the three services in one value, and the handle through
//! which an engine's own handlers reach it without keeping it alive.

use std::sync::{Arc, Weak};

use async_trait::async_trait;

use crate::context::InvocationContext;
use crate::engine::{Engine, EngineInner, RetryPolicy};
use crate::error::{Error, Result};
use crate::idempotency::IdempotencyKey;
use crate::index::IndexLookup;
use crate::keys::EntityKey;
use crate::model::{
    CommandInput, CommandRecord, CommandStatus, DataItem, FailedCommand, PartialUpdate, Published, Synced,
};
use crate::query::{ListQuery, Page};
use crate::sequence::{SequenceRequest, SequenceValue};
use crate::services::{CommandService, DataService, SequenceService};

/// The framework's services, cheap to clone: what your own services and
/// data-sync handlers hold.
///
/// From an engine, [`Engine::services`]; inside a handler registered with
/// [`EngineBuilder::handler_with`](crate::EngineBuilder::handler_with), the
/// value that closure is given; in unit tests, [`Services::new`] over mocks
/// (feature `mock`). It also carries the read-modify-write helpers
/// ([`Services::update_with`], [`Services::commit_with`]).
///
/// ```
/// use cqrs_core::{CommandInput, EntityKey, InvocationContext, Services};
///
/// async fn rename(services: &Services, ctx: &InvocationContext) -> cqrs_core::Result<()> {
///     let key = EntityKey::new("TENANT#shop-a", "PRODUCT#PRD-001");
///     services
///         .update_with(&key, ctx, |current| {
///             let item = current.ok_or_else(|| cqrs_core::Error::not_found(&key))?;
///             Ok::<_, cqrs_core::Error>(Some(CommandInput::update_of(item).name("Wireless Mouse")))
///         })
///         .await?;
///     Ok(())
/// }
/// ```
#[derive(Clone)]
pub struct Services {
    /// Publishing.
    pub commands: Arc<dyn CommandService>,
    /// Reading.
    pub data: Arc<dyn DataService>,
    /// Numbering.
    pub sequences: Arc<dyn SequenceService>,
    pub(crate) conflict_retry: RetryPolicy,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services")
            .field("conflict_retry", &self.conflict_retry)
            .finish_non_exhaustive()
    }
}

/// Default retries of a read-modify-write after a version conflict: 20
/// tries, waits drawn at random below 2 ms, 4 ms, ... up to 200 ms.
pub fn default_conflict_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 20,
        initial_backoff: std::time::Duration::from_millis(2),
        max_backoff: std::time::Duration::from_millis(200),
    }
}

impl Services {
    /// Services over any implementations (mocks in unit tests).
    ///
    /// ```
    /// # #[cfg(feature = "mock")]
    /// # {
    /// use std::sync::Arc;
    /// use cqrs_core::{MockCommandService, MockDataService, MockSequenceService, Services};
    ///
    /// let services = Services::new(
    ///     Arc::new(MockCommandService::new()),
    ///     Arc::new(MockDataService::new()),
    ///     Arc::new(MockSequenceService::new()),
    /// );
    /// # }
    /// ```
    pub fn new(
        commands: Arc<dyn CommandService>,
        data: Arc<dyn DataService>,
        sequences: Arc<dyn SequenceService>,
    ) -> Self {
        Self {
            commands,
            data,
            sequences,
            conflict_retry: default_conflict_retry(),
        }
    }

    /// The same services, with other retries after version conflicts in
    /// read-modify-writes (default [`default_conflict_retry`]). Waits are
    /// drawn at random below the policy's backoff, so that contending
    /// writers spread out.
    pub fn with_conflict_retry(mut self, retry: RetryPolicy) -> Self {
        self.conflict_retry = retry;
        self
    }

    /// The retries after version conflicts in read-modify-writes.
    pub fn conflict_retry(&self) -> &RetryPolicy {
        &self.conflict_retry
    }

    /// Services of an engine, held strongly.
    pub(crate) fn of_engine(engine: &Engine) -> Self {
        let shared = Arc::new(engine.clone());
        Self::new(shared.clone(), shared.clone(), shared)
    }

    /// Services of an engine being built, held weakly: its handlers hold
    /// them, and a strong hold would keep the engine alive forever.
    pub(crate) fn of_weak(inner: Weak<EngineInner>) -> Self {
        let shared = Arc::new(WeakEngine(inner));
        Self::new(shared.clone(), shared.clone(), shared)
    }
}

/// An engine held weakly: the services an engine's own handlers get.
struct WeakEngine(Weak<EngineInner>);

impl WeakEngine {
    fn engine(&self) -> Result<Engine> {
        Engine::upgrade(&self.0).ok_or_else(|| {
            Error::backend(
                "the engine this handler is registered on was dropped; wait for Engine::wait_idle before dropping it",
                false,
            )
        })
    }
}

#[async_trait]
impl CommandService for WeakEngine {
    async fn publish_async(
        &self,
        command: CommandInput,
        ctx: &InvocationContext,
    ) -> Result<Published<CommandRecord>> {
        self.engine()?.publish_async(command, ctx).await
    }

    async fn publish_sync(&self, command: CommandInput, ctx: &InvocationContext) -> Result<Synced> {
        self.engine()?.publish_sync(command, ctx).await
    }

    async fn publish_partial_update_async(
        &self,
        update: PartialUpdate,
        ctx: &InvocationContext,
    ) -> Result<Published<CommandRecord>> {
        self.engine()?.publish_partial_update_async(update, ctx).await
    }

    async fn publish_partial_update_sync(
        &self,
        update: PartialUpdate,
        ctx: &InvocationContext,
    ) -> Result<Synced> {
        self.engine()?.publish_partial_update_sync(update, ctx).await
    }

    async fn commit(&self, commands: Vec<CommandInput>, ctx: &InvocationContext) -> Result<Vec<Synced>> {
        self.engine()?.commit(commands, ctx).await
    }

    async fn commit_idempotent(
        &self,
        commands: Vec<CommandInput>,
        key: IdempotencyKey,
        ctx: &InvocationContext,
    ) -> Result<Vec<Synced>> {
        self.engine()?.commit_idempotent(commands, key, ctx).await
    }

    async fn find_idempotent_commit(
        &self,
        key: &IdempotencyKey,
        ctx: &InvocationContext,
    ) -> Result<Option<Vec<Synced>>> {
        self.engine()?.find_idempotent_commit(key, ctx).await
    }

    async fn get_command(
        &self,
        key: &EntityKey,
        version: u64,
        ctx: &InvocationContext,
    ) -> Result<Option<CommandRecord>> {
        self.engine()?.get_command(key, version, ctx).await
    }

    async fn list_versions(&self, key: &EntityKey, ctx: &InvocationContext) -> Result<Vec<CommandRecord>> {
        self.engine()?.list_versions(key, ctx).await
    }

    async fn reprocess(
        &self,
        key: &EntityKey,
        version: u64,
        ctx: &InvocationContext,
    ) -> Result<CommandStatus> {
        self.engine()?.reprocess(key, version, ctx).await
    }

    async fn list_failures(&self, ctx: &InvocationContext) -> Result<Vec<FailedCommand>> {
        self.engine()?.list_failures(ctx).await
    }

    async fn find_idempotent(
        &self,
        key: &IdempotencyKey,
        ctx: &InvocationContext,
    ) -> Result<Option<CommandRecord>> {
        self.engine()?.find_idempotent(key, ctx).await
    }
}

#[async_trait]
impl DataService for WeakEngine {
    async fn get_item(&self, key: &EntityKey, ctx: &InvocationContext) -> Result<Option<DataItem>> {
        self.engine()?.get_item(key, ctx).await
    }

    async fn list_items(
        &self,
        pk: &str,
        query: ListQuery,
        ctx: &InvocationContext,
    ) -> Result<Page<DataItem>> {
        self.engine()?.list_items(pk, query, ctx).await
    }

    async fn list_history(&self, key: &EntityKey, ctx: &InvocationContext) -> Result<Vec<DataItem>> {
        self.engine()?.list_history(key, ctx).await
    }

    async fn get_latest(&self, key: &EntityKey, ctx: &InvocationContext) -> Result<Option<DataItem>> {
        self.engine()?.get_latest(key, ctx).await
    }

    async fn list_by_index(
        &self,
        lookup: &IndexLookup,
        query: ListQuery,
        ctx: &InvocationContext,
    ) -> Result<Page<DataItem>> {
        self.engine()?.list_by_index(lookup, query, ctx).await
    }
}

#[async_trait]
impl SequenceService for WeakEngine {
    async fn next(&self, request: &SequenceRequest, ctx: &InvocationContext) -> Result<SequenceValue> {
        self.engine()?.next(request, ctx).await
    }
}
