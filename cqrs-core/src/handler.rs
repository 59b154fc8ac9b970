//! Data-sync handlers: the side of the pipeline users write.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::context::InvocationContext;
use crate::error::BoxError;
use crate::keys::EntityKey;
use crate::model::{CommandRecord, DataItem};

/// Which commands a handler wants to see.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Interest {
    /// Every command.
    #[default]
    All,
    /// Commands whose sort key starts with this prefix (e.g. `ORDER#`).
    SkPrefix(String),
    /// Commands of this entity type.
    EntityType(String),
}

impl Interest {
    /// Whether `command` is of interest.
    pub fn matches(&self, command: &CommandRecord) -> bool {
        self.matches_row(&command.sk, &command.entity_type)
    }

    /// Whether a row of this sort key and entity type is of interest (a
    /// data row, for a projection's rebuild and lag).
    pub(crate) fn matches_row(&self, sk: &str, entity_type: &str) -> bool {
        match self {
            Interest::All => true,
            Interest::SkPrefix(prefix) => sk.starts_with(prefix.as_str()),
            Interest::EntityType(wanted) => entity_type == wanted,
        }
    }
}

/// What a handler receives: the command, the data item before it (`old`,
/// `None` for a creation) and after it (`new`), and the publisher's context.
#[derive(Debug, Clone, PartialEq)]
pub struct DataSyncEvent {
    /// The applied command.
    pub command: CommandRecord,
    /// The data item before the command; `None` when the command created it.
    pub old: Option<DataItem>,
    /// The data item the command produced.
    pub new: DataItem,
    /// The context of the publisher (tenant, user, request id, source ip).
    /// Roles are not stored with commands: in the async pipeline they are empty.
    pub context: InvocationContext,
    /// 1 on the first run, 2 on the first retry, ...
    pub attempt: u32,
}

impl DataSyncEvent {
    /// The entity's key.
    pub fn key(&self) -> EntityKey {
        self.command.key()
    }

    /// `true` when the command created the entity.
    pub fn is_create(&self) -> bool {
        self.old.is_none()
    }

    /// A key unique to this command (`pk#sk@version`), the same on every
    /// delivery: store it with a side effect to make a handler idempotent.
    pub fn idempotency_key(&self) -> String {
        format!("{}@{}", self.command.id(), self.command.version)
    }
}

/// Keeps a read model or a side effect in step with the data table.
///
/// Handlers run after a command is applied: before `publish_sync` returns, or
/// in the background processor for `publish_async`. Every matching handler
/// runs, concurrently; a failing one is retried with bounded backoff, then
/// the command is recorded as failed and can be reprocessed.
///
/// **Delivery is at least once**: after a crash, a retry or a reprocess the
/// same event can arrive again. Make handlers idempotent, for example by
/// storing [`DataSyncEvent::idempotency_key`] with what they write, or by
/// publishing with an expected version (a replay then conflicts).
///
/// ```
/// use async_trait::async_trait;
/// use cqrs_core::{BoxError, DataSyncEvent, DataSyncHandler, Interest};
///
/// struct OrderAudit;
///
/// #[async_trait]
/// impl DataSyncHandler for OrderAudit {
///     fn name(&self) -> &str { "order-audit" }
///     fn interest(&self) -> Interest { Interest::SkPrefix("ORDER#".into()) }
///     async fn handle(&self, event: &DataSyncEvent) -> Result<(), BoxError> {
///         let before = event.old.as_ref().map(|o| &o.attributes["status"]);
///         let after = &event.new.attributes["status"];
///         tracing::info!(?before, %after, "order {} changed", event.new.code);
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait DataSyncHandler: Send + Sync + 'static {
    /// A stable name, recorded with failures.
    fn name(&self) -> &str;

    /// Which commands the handler wants; all by default.
    fn interest(&self) -> Interest {
        Interest::All
    }

    /// Handles one applied command.
    async fn handle(&self, event: &DataSyncEvent) -> Result<(), BoxError>;
}

/// A shared handler is a handler: register an `Arc<dyn DataSyncHandler>`
/// (a handler wrapped by a decorator, or kept elsewhere too) wherever a
/// handler is taken, [`EngineBuilder::handler_with`](crate::EngineBuilder::handler_with) included.
#[async_trait]
impl<H: DataSyncHandler + ?Sized> DataSyncHandler for std::sync::Arc<H> {
    fn name(&self) -> &str {
        (**self).name()
    }

    fn interest(&self) -> Interest {
        (**self).interest()
    }

    async fn handle(&self, event: &DataSyncEvent) -> Result<(), BoxError> {
        (**self).handle(event).await
    }
}
