//! Read-modify-write in one call: read, decide, publish at the version read,
//! and on a version conflict read again and decide again, a bounded number
//! of times.

use serde_json::json;

use crate::context::InvocationContext;
use crate::engine::records::data_item;
use crate::engine::RetryPolicy;
use crate::error::Error;
use crate::handle::Services;
use crate::idempotency::{fingerprint, IdempotencyKey};
use crate::keys::EntityKey;
use crate::model::{CommandInput, CommandRecord, DataItem, ExpectedVersion, Published};

/// A read-modify-write of one entity, configured: from [`Services::update`].
///
/// The closure gets the entity's current state (`None`: it does not exist)
/// and returns the command to publish (`Some`), nothing (`None`: skip —
/// nothing is written), or an error of yours (refuse — returned as it is).
/// The command is published expecting the version the closure saw,
/// whatever version it carries. On a version conflict the entity is read
/// again and the closure called again, up to the services'
/// [conflict retry](Services::with_conflict_retry) attempts, with random
/// backoff; then the conflict is returned.
///
/// Returns what the publish did, or — when the closure skipped — the state
/// it saw as [`Published::Unchanged`] (`None` if the entity does not exist).
///
/// ```
/// use cqrs_core::{CommandInput, EntityKey, IdempotencyKey, InvocationContext, Services};
///
/// #[derive(Debug, thiserror::Error)]
/// enum ShopError {
///     #[error("only {0} left")]
///     OutOfStock(i64),
///     #[error(transparent)]
///     Cqrs(#[from] cqrs_core::Error),
/// }
///
/// async fn reserve(services: &Services, ctx: &InvocationContext, units: i64) -> Result<(), ShopError> {
///     let key = EntityKey::new("TENANT#shop-a", "INVENTORY#PRD-001");
///     services
///         .update(&key)
///         .idempotency_key(IdempotencyKey::new("reserve-ORD-000042"))
///         .publish_sync(ctx, |current| {
///             let item = current.ok_or_else(|| cqrs_core::Error::not_found(&key))?;
///             let on_hand = item.attributes["quantity"].as_i64().unwrap_or(0);
///             if on_hand < units {
///                 return Err(ShopError::OutOfStock(on_hand)); // refuse
///             }
///             let mut attributes = item.attributes.clone();
///             attributes["quantity"] = (on_hand - units).into();
///             Ok(Some(CommandInput::update_of(item).attributes(attributes)))
///         })
///         .await?;
///     Ok(())
/// }
/// ```
#[derive(Debug, Clone)]
#[must_use = "an update does nothing until `publish_sync` or `publish_async` is awaited"]
pub struct Update<'a> {
    services: &'a Services,
    key: EntityKey,
    idempotency: Option<IdempotencyKey>,
    retry: RetryPolicy,
}

impl Services {
    /// Starts a read-modify-write of `key` (see [`Update`]).
    pub fn update(&self, key: &EntityKey) -> Update<'_> {
        Update {
            services: self,
            key: key.clone(),
            idempotency: None,
            retry: self.conflict_retry.clone(),
        }
    }

    /// A synchronous read-modify-write of `key`: [`Update::publish_sync`].
    pub async fn update_with<E, F>(
        &self,
        key: &EntityKey,
        ctx: &InvocationContext,
        change: F,
    ) -> Result<Option<Published<DataItem>>, E>
    where
        F: FnMut(Option<&DataItem>) -> Result<Option<CommandInput>, E> + Send,
        E: From<Error> + Send,
    {
        self.update(key).publish_sync(ctx, change).await
    }

    /// An asynchronous read-modify-write of `key`: [`Update::publish_async`].
    pub async fn update_with_async<E, F>(
        &self,
        key: &EntityKey,
        ctx: &InvocationContext,
        change: F,
    ) -> Result<Option<Published<DataItem>>, E>
    where
        F: FnMut(Option<&DataItem>) -> Result<Option<CommandInput>, E> + Send,
        E: From<Error> + Send,
    {
        self.update(key).publish_async(ctx, change).await
    }

    /// A read-modify-write of several entities, all or nothing: reads each
    /// of `keys` (applied state; `None`: absent), passes them to `change` in
    /// the same order, and [commits](crate::CommandService::commit) the
    /// commands it returns, each expecting the version read for its key. An
    /// empty list writes nothing. On a version conflict everything is read
    /// again and `change` called again, as in [`Update`].
    ///
    /// A command for a key that is not in `keys` is refused (nothing was
    /// read for it to expect).
    pub async fn commit_with<E, F>(
        &self,
        keys: &[EntityKey],
        ctx: &InvocationContext,
        mut change: F,
    ) -> Result<Vec<Published<DataItem>>, E>
    where
        F: FnMut(&[Option<DataItem>]) -> Result<Vec<CommandInput>, E> + Send,
        E: From<Error> + Send,
    {
        let mut attempt = 1;
        loop {
            let read =
                futures::future::try_join_all(keys.iter().map(|key| self.read_applied(key, ctx))).await;
            let outcome = match read {
                Ok(current) => {
                    let mut commands = change(&current)?;
                    if commands.is_empty() {
                        return Ok(Vec::new());
                    }
                    for command in &mut commands {
                        let key = command.key();
                        let at = keys.iter().position(|k| *k == key).ok_or_else(|| {
                            Error::invalid("commit_with", format!("{key} was not read: add it to the keys"))
                        })?;
                        command.version =
                            ExpectedVersion::Exactly(current[at].as_ref().map_or(0, |i| i.version));
                    }
                    self.commands.commit(commands, ctx).await
                }
                Err(error) => Err(error),
            };
            match outcome {
                Err(error) if error.is_conflict() && attempt < self.conflict_retry.max_attempts => {
                    conflict_backoff(&self.conflict_retry, attempt).await;
                    attempt += 1;
                }
                other => return other.map_err(|error| E::from(error.after_conflict_retries(attempt))),
            }
        }
    }

    /// The entity's applied state. One that does not exist yet but has a
    /// command published (its creation, pending in the pipeline) is a
    /// conflict: the caller waits and reads again, rather than deciding on
    /// "absent" while it is being created.
    async fn read_applied(
        &self,
        key: &EntityKey,
        ctx: &InvocationContext,
    ) -> Result<Option<DataItem>, Error> {
        let applied = self.data.get_item(key, ctx).await?;
        if applied.is_none() {
            if let Some(pending) = self.data.get_latest(key, ctx).await? {
                return Err(Error::Conflict {
                    key: key.id(),
                    expected: ExpectedVersion::NEW,
                    actual: Some(pending.version),
                });
            }
        }
        Ok(applied)
    }
}

impl Update<'_> {
    /// Makes the update idempotent: while the key is held, a retry returns
    /// the first update's result without calling the closure. Its default
    /// fingerprint is the entity's key (what the closure publishes may differ
    /// between tries); set one with [`IdempotencyKey::fingerprint_of`] to
    /// tell requests apart. Costs one read per try.
    pub fn idempotency_key(mut self, key: impl Into<IdempotencyKey>) -> Self {
        self.idempotency = Some(key.into());
        self
    }

    /// Retries after version conflicts for this update only.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Reads the entity's applied state, decides, and publishes synchronously.
    pub async fn publish_sync<E, F>(
        self,
        ctx: &InvocationContext,
        change: F,
    ) -> Result<Option<Published<DataItem>>, E>
    where
        F: FnMut(Option<&DataItem>) -> Result<Option<CommandInput>, E> + Send,
        E: From<Error> + Send,
    {
        self.run(ctx, Mode::Sync, change).await
    }

    /// Reads the entity's latest state — with its published commands not yet
    /// applied ([`get_latest`](crate::DataService::get_latest)) — decides,
    /// and publishes asynchronously. Two updates in a row see each other
    /// even before the pipeline applied the first. The item returned is the
    /// state the command leads to.
    pub async fn publish_async<E, F>(
        self,
        ctx: &InvocationContext,
        change: F,
    ) -> Result<Option<Published<DataItem>>, E>
    where
        F: FnMut(Option<&DataItem>) -> Result<Option<CommandInput>, E> + Send,
        E: From<Error> + Send,
    {
        self.run(ctx, Mode::Async, change).await
    }

    async fn run<E, F>(
        self,
        ctx: &InvocationContext,
        mode: Mode,
        mut change: F,
    ) -> Result<Option<Published<DataItem>>, E>
    where
        F: FnMut(Option<&DataItem>) -> Result<Option<CommandInput>, E> + Send,
        E: From<Error> + Send,
    {
        let services = self.services;
        let idempotency = self.idempotency.clone().map(|key| {
            let derived = || fingerprint(&json!({ "op": mode.op(), "pk": self.key.pk, "sk": self.key.sk }));
            let fingerprint = key.fingerprint_or(derived);
            key.fingerprint(fingerprint)
        });
        let mut attempt = 1;
        loop {
            if let Some(key) = &idempotency {
                if let Some(first) = services.commands.find_idempotent(key, ctx).await? {
                    // The key's entity: with an explicit fingerprint, a key
                    // may name another entity than this update's.
                    let current = services.data.get_item(&first.key(), ctx).await?;
                    return Ok(Some(Published::Written(item_of(&first, current.as_ref()))));
                }
            }
            let current = match mode {
                Mode::Sync => services.read_applied(&self.key, ctx).await,
                Mode::Async => services.data.get_latest(&self.key, ctx).await,
            };
            let outcome = match current {
                Ok(current) => match change(current.as_ref())? {
                    None => return Ok(current.map(Published::Unchanged)),
                    Some(command) => {
                        self.publish(command, current, idempotency.clone(), mode, ctx)
                            .await
                    }
                },
                Err(error) => Err(error),
            };
            match outcome {
                Err(error) if error.is_conflict() && attempt < self.retry.max_attempts => {
                    conflict_backoff(&self.retry, attempt).await;
                    attempt += 1;
                }
                other => {
                    return other
                        .map(Some)
                        .map_err(|error| E::from(error.after_conflict_retries(attempt)))
                }
            }
        }
    }

    /// Publishes the closure's command at the version it saw.
    async fn publish(
        &self,
        mut command: CommandInput,
        current: Option<DataItem>,
        idempotency: Option<IdempotencyKey>,
        mode: Mode,
        ctx: &InvocationContext,
    ) -> Result<Published<DataItem>, Error> {
        if command.key() != self.key {
            return Err(Error::invalid(
                "update",
                format!(
                    "the closure returned a command for {}, not {}",
                    command.key(),
                    self.key
                ),
            ));
        }
        command.version = ExpectedVersion::Exactly(current.as_ref().map_or(0, |item| item.version));
        command.idempotency_key = idempotency;
        let commands = &self.services.commands;
        match mode {
            Mode::Sync => commands.publish_sync(command, ctx).await,
            Mode::Async => Ok(match commands.publish_async(command, ctx).await? {
                Published::Written(record) => Published::Written(item_of(&record, current.as_ref())),
                // Equal to the state read: that state is the answer.
                Published::Unchanged(record) => Published::Unchanged(match current {
                    Some(item) => item,
                    None => item_of(&record, None),
                }),
            }),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    Sync,
    Async,
}

impl Mode {
    fn op(self) -> &'static str {
        match self {
            Mode::Sync => "update-sync",
            Mode::Async => "update-async",
        }
    }
}

/// The entity's state as `command` leaves it; `other` is any data row of
/// the entity (its creation fields are the entity's, whatever its version).
fn item_of(command: &CommandRecord, other: Option<&DataItem>) -> DataItem {
    data_item(command, other)
}

/// Waits a random time below the policy's backoff for `attempt`, so that
/// contending writers spread out.
async fn conflict_backoff(retry: &RetryPolicy, attempt: u32) {
    tokio::time::sleep(retry.backoff(attempt).mul_f64(fastrand::f64())).await;
}
