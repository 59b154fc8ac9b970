//! The service traits users program against, object-safe so they can be held
//! as `Arc<dyn Trait>` and mocked (feature `mock`).

use async_trait::async_trait;

use crate::context::InvocationContext;
use crate::error::Result;
use crate::idempotency::IdempotencyKey;
use crate::index::IndexLookup;
use crate::keys::EntityKey;
use crate::model::{
    CommandInput, CommandRecord, CommandStatus, DataItem, FailedCommand, PartialUpdate, Published, Synced,
};
use crate::query::{ListQuery, Page};
use crate::sequence::{SequenceRequest, SequenceValue};

/// Publishes commands: the write side.
///
/// ```
/// use cqrs_core::{CommandInput, CommandService, ExpectedVersion, InvocationContext};
///
/// async fn rename(commands: &dyn CommandService, ctx: &InvocationContext) -> cqrs_core::Result<()> {
///     let created = commands
///         .publish_sync(CommandInput::new("TENANT#shop-a", "PRODUCT#PRD-001").name("Mouse"), ctx)
///         .await?
///         .into_item();
///     let renamed = CommandInput::update_of(&created).name("Wireless Mouse");
///     assert_eq!(renamed.version, ExpectedVersion::Exactly(1));
///     commands.publish_sync(renamed, ctx).await?;
///     Ok(())
/// }
/// ```
///
/// With the `mock` feature, `MockCommandService` stands in for it in unit
/// tests of your own services:
///
/// ```
/// # #[cfg(feature = "mock")]
/// # {
/// use cqrs_core::{CommandService, Error, ExpectedVersion, MockCommandService};
///
/// let mut commands = MockCommandService::new();
/// commands.expect_publish_sync().returning(|cmd, _| {
///     Err(Error::Conflict { key: cmd.key().id(), expected: cmd.version, actual: Some(7) })
/// });
/// let commands: std::sync::Arc<dyn CommandService> = std::sync::Arc::new(commands);
/// # }
/// ```
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait CommandService: Send + Sync {
    /// Stores the command as version N+1 and returns; the data table is
    /// updated later by the pipeline. One conditional write, after one read
    /// of the command at version N for the dirty check (none for version 0).
    async fn publish_async(
        &self,
        command: CommandInput,
        ctx: &InvocationContext,
    ) -> Result<Published<CommandRecord>>;

    /// Stores the command, applies it to the data table (with history, in one
    /// atomic write) and runs the handlers before returning.
    ///
    /// A failing handler does not fail the publish — the data is written by
    /// then: the command is marked [`Failed`](crate::CommandStatus::Failed),
    /// listed by [`list_failures`](CommandService::list_failures) and can be
    /// [reprocessed](CommandService::reprocess). The result says how the
    /// handlers ended ([`Synced::handled`]).
    async fn publish_sync(&self, command: CommandInput, ctx: &InvocationContext) -> Result<Synced>;

    /// Deep-merges the update over the entity's latest state and publishes
    /// the result asynchronously.
    async fn publish_partial_update_async(
        &self,
        update: PartialUpdate,
        ctx: &InvocationContext,
    ) -> Result<Published<CommandRecord>>;

    /// Deep-merges the update over the entity's current state and publishes
    /// the result synchronously.
    async fn publish_partial_update_sync(
        &self,
        update: PartialUpdate,
        ctx: &InvocationContext,
    ) -> Result<Synced>;

    /// Applies commands on different entities all-or-nothing: either every
    /// one is written (each at its expected version) or none is. Handlers run
    /// afterwards for each written command (each result says how they
    /// ended). Commands equal to their entity's current state are left out,
    /// as by the dirty check.
    async fn commit(&self, commands: Vec<CommandInput>, ctx: &InvocationContext) -> Result<Vec<Synced>>;

    /// [`commit`](CommandService::commit), idempotently: the key row is
    /// written in the commit's own atomic write, so that the commit is both
    /// all or nothing and keyed. While the key is held (see
    /// [`IdempotencyKey`]), the same commit again — a retry, or a duplicate
    /// racing the first — writes nothing and returns the first commit's
    /// result: each entity as that commit left it, written or unchanged, in
    /// its order. The key used by another request fails with
    /// [`Error::IdempotencyKeyReused`](crate::Error::IdempotencyKeyReused).
    ///
    /// The default fingerprint covers every command's content, in order;
    /// give one with [`IdempotencyKey::fingerprint_of`] when the request is
    /// what should match. The commands themselves take no key. The key row
    /// counts as one more item of the transaction: on DynamoDB (100 items),
    /// 33 commands of 3 rows fit, with or without a key; with a superseded
    /// TTL (4 rows a command), 24 with a key, 25 without. A commit whose
    /// every command is unchanged writes nothing, its key included.
    async fn commit_idempotent(
        &self,
        commands: Vec<CommandInput>,
        key: IdempotencyKey,
        ctx: &InvocationContext,
    ) -> Result<Vec<Synced>>;

    /// The result of the keyed commit that holds `key` (see
    /// [`commit_idempotent`](CommandService::commit_idempotent)), while the
    /// key is held; `None` when unused or expired. A key a single publish
    /// holds answers as a commit of its one command. Fails with
    /// [`Error::IdempotencyKeyReused`](crate::Error::IdempotencyKeyReused)
    /// when the key has a fingerprint and the stored one differs.
    async fn find_idempotent_commit(
        &self,
        key: &IdempotencyKey,
        ctx: &InvocationContext,
    ) -> Result<Option<Vec<Synced>>>;

    /// The command that produced `version` of the entity.
    async fn get_command(
        &self,
        key: &EntityKey,
        version: u64,
        ctx: &InvocationContext,
    ) -> Result<Option<CommandRecord>>;

    /// Every version of the entity, oldest first.
    async fn list_versions(&self, key: &EntityKey, ctx: &InvocationContext) -> Result<Vec<CommandRecord>>;

    /// Runs `version` of the entity through the pipeline again: applies it if
    /// it is not yet applied, then runs the handlers that failed for it (all
    /// matching handlers when none is recorded as failed).
    ///
    /// Returns the command's status afterwards: `Finished` (or `Applied` when
    /// no handler matches) on success, `Failed` when a handler failed again.
    async fn reprocess(
        &self,
        key: &EntityKey,
        version: u64,
        ctx: &InvocationContext,
    ) -> Result<CommandStatus>;

    /// Commands whose handlers failed, in the caller's tenant (in every
    /// tenant for a cross-tenant role).
    async fn list_failures(&self, ctx: &InvocationContext) -> Result<Vec<FailedCommand>>;

    /// The command a publish with this idempotency key wrote, while the key
    /// is held (see [`IdempotencyKey`]); `None` when the key is unused or
    /// expired. Fails with [`Error::IdempotencyKeyReused`](crate::Error::IdempotencyKeyReused)
    /// when the key has a fingerprint and the stored one differs.
    ///
    /// A publish needs no such look-up: a keyed publish returns the first
    /// result by itself. It is for work done *before* the publish that a
    /// retry should not repeat — taking an order number, say.
    async fn find_idempotent(
        &self,
        key: &IdempotencyKey,
        ctx: &InvocationContext,
    ) -> Result<Option<CommandRecord>>;
}

/// Reads the data (read) table.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait DataService: Send + Sync {
    /// The current state of an entity.
    async fn get_item(&self, key: &EntityKey, ctx: &InvocationContext) -> Result<Option<DataItem>>;

    /// A page of the items of partition `pk`.
    async fn list_items(&self, pk: &str, query: ListQuery, ctx: &InvocationContext)
        -> Result<Page<DataItem>>;

    /// Every superseded version of an entity, oldest first.
    async fn list_history(&self, key: &EntityKey, ctx: &InvocationContext) -> Result<Vec<DataItem>>;

    /// A page of the items of one partition of a declared [`Index`](crate::Index):
    /// those of entity partition `lookup.pk()` whose partition fields have
    /// `lookup.values()`, in the order of the index's sort fields (then sk).
    ///
    /// The same query as [`list_items`](DataService::list_items): `query.sk`
    /// is a condition on the sort values (`Equals(v)`: every item sorted at
    /// `v`), filters, limit, order and cursors work alike, and the pk's
    /// tenancy is checked. The cost is that of the page, not of the
    /// partition: one `Query` of a global secondary index on DynamoDB, whose
    /// reads are eventually consistent (an item written a moment ago may be
    /// missing, or found under its previous values).
    async fn list_by_index(
        &self,
        lookup: &IndexLookup,
        query: ListQuery,
        ctx: &InvocationContext,
    ) -> Result<Page<DataItem>>;

    /// Read-your-writes: the entity's state after its latest *published*
    /// command, applied or not. After `publish_async` the data table lags
    /// until the pipeline applies the command; this read does not: it is
    /// [`get_item`](DataService::get_item) with the entity's pending
    /// commands laid over (the latest one: a command is a full state).
    ///
    /// The item of a pending command has that command's version, so a
    /// command built with [`CommandInput::update_of`] on it expects the
    /// right version. Its `created*` fields are the data row's (the
    /// command's own when the entity is not applied yet).
    ///
    /// Two requests on DynamoDB (the data row, then the commands after its
    /// version), however many versions the entity has.
    async fn get_latest(&self, key: &EntityKey, ctx: &InvocationContext) -> Result<Option<DataItem>>;
}

/// Issues numbers (order numbers, invoice numbers, ...): each number of a
/// sequence exactly once, in order, with no gap — a gap appears only where a
/// caller takes a number and does not use it (its publish fails, say).
///
/// The date that picks the rotation period is today in UTC unless the
/// request gives one.
///
/// ```
/// use cqrs_core::{InvocationContext, SequenceRequest, SequenceService};
///
/// async fn order_code(seq: &dyn SequenceService, ctx: &InvocationContext) -> cqrs_core::Result<String> {
///     let value = seq.next(&SequenceRequest::new("ORDER").format("ORD-{no:06}"), ctx).await?;
///     Ok(value.formatted) // "ORD-000001", "ORD-000002", ...
/// }
/// ```
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait SequenceService: Send + Sync {
    /// The next number of the sequence, atomically.
    async fn next(&self, request: &SequenceRequest, ctx: &InvocationContext) -> Result<SequenceValue>;
}
