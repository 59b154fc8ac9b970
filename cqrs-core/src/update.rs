//! Read-modify-write in one call: read, decide, publish at the version read,
//! and on a version conflict read again and decide again, a bounded number
//! of times.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

use crate::context::InvocationContext;
use crate::engine::records::data_item;
use crate::engine::RetryPolicy;
use crate::error::Error;
use crate::handle::Services;
use crate::idempotency::{fingerprint, IdempotencyKey};
use crate::keys::EntityKey;
use crate::model::{
    CommandInput, CommandRecord, DataItem, ExpectedVersion, Handled, Published, Synced, Updated,
};

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
/// Returns what the publish did ([`Updated::Published`]), or — when the
/// closure skipped — the state it saw ([`Updated::Skipped`]).
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
    ) -> Result<Updated, E>
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
    ) -> Result<Updated, E>
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
    /// again and `change` called again, as in [`Update`]. The same as
    /// [`Services::update_all`] without a key:
    /// `services.update_all(keys).commit(ctx, change)`.
    ///
    /// A command for a key that is not in `keys` is refused (nothing was
    /// read for it to expect).
    pub async fn commit_with<E, F>(
        &self,
        keys: &[EntityKey],
        ctx: &InvocationContext,
        change: F,
    ) -> Result<Vec<Synced>, E>
    where
        F: FnMut(&[Option<DataItem>]) -> Result<Vec<CommandInput>, E> + Send,
        E: From<Error> + Send,
    {
        self.update_all(keys).commit(ctx, change).await
    }

    /// Starts a read-modify-write of several entities, all or nothing (see
    /// [`UpdateAll`]).
    pub fn update_all(&self, keys: &[EntityKey]) -> UpdateAll<'_> {
        UpdateAll {
            services: self,
            keys: keys.to_vec(),
            idempotency: None,
            retry: self.conflict_retry.clone(),
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

impl Services {
    /// The result of the keyed read-modify-write that holds `key`, if one
    /// does: the entity as its command left it.
    async fn first_update(
        &self,
        key: &IdempotencyKey,
        ctx: &InvocationContext,
    ) -> Result<Option<Updated>, Error> {
        let Some(first) = self.commands.find_idempotent(key, ctx).await? else {
            return Ok(None);
        };
        // The key's entity: with an explicit fingerprint, a key may name
        // another entity than this update's.
        let current = self.data.get_item(&first.key(), ctx).await?;
        let handled = handled_so_far(self, &first, ctx).await?;
        let item = item_of(&first, current.as_ref());
        Ok(Some(Updated::Published(Synced::new(
            Published::Written(item),
            handled,
        ))))
    }

    /// `outcome` — a closure's refusal or skip, a conflict — unless `key` is
    /// held by now: then a run with the same key (a racing duplicate) wrote
    /// first, and its result is the answer; or another request holds it
    /// ([`Error::IdempotencyKeyReused`]). Reads the key only for a keyed run.
    async fn unless_key_held<E: From<Error>>(
        &self,
        key: Option<&IdempotencyKey>,
        ctx: &InvocationContext,
        outcome: Result<Updated, E>,
    ) -> Result<Updated, E> {
        let Some(key) = key else { return outcome };
        if crate::regressions::active(crate::regressions::KEYED_RETRY_JUDGED_ON_MOVED_ENTITY) {
            return outcome;
        }
        match self.first_update(key, ctx).await? {
            Some(first) => Ok(first),
            None => outcome,
        }
    }
}

impl Services {
    /// [`Services::unless_key_held`] for a commit.
    async fn unless_commit_held<E: From<Error>>(
        &self,
        key: Option<&IdempotencyKey>,
        ctx: &InvocationContext,
        outcome: Result<Vec<Synced>, E>,
    ) -> Result<Vec<Synced>, E> {
        let Some(key) = key else { return outcome };
        match self.commands.find_idempotent_commit(key, ctx).await? {
            Some(first) => Ok(first),
            None => outcome,
        }
    }
}

impl Update<'_> {
    /// Makes the update idempotent: while the key is held, a retry returns
    /// the first update's result without calling the closure. Its default
    /// fingerprint is the entity's key (what the closure publishes may differ
    /// between tries); set one with [`IdempotencyKey::fingerprint_of`] to
    /// tell requests apart. Costs one read per try.
    ///
    /// A duplicate racing the first update (a client retrying before it was
    /// answered) gets the first result too: when the closure refuses or
    /// skips, or the publish conflicts, the key is looked up again before
    /// answering, so a closure that refuses a move already made needs no
    /// special case.
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
    pub async fn publish_sync<E, F>(self, ctx: &InvocationContext, change: F) -> Result<Updated, E>
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
    pub async fn publish_async<E, F>(self, ctx: &InvocationContext, change: F) -> Result<Updated, E>
    where
        F: FnMut(Option<&DataItem>) -> Result<Option<CommandInput>, E> + Send,
        E: From<Error> + Send,
    {
        self.run(ctx, Mode::Async, change).await
    }

    /// [`Update::publish_sync`] with the state as your own type: `change`
    /// gets the current attributes as `T` (`None`: the entity does not
    /// exist) and returns the new ones (`None`: skip, nothing is written).
    /// They replace the item's attributes, its other fields kept (a new
    /// entity takes its code and type from the sort key).
    ///
    /// ```
    /// use cqrs_core::{EntityKey, InvocationContext, Services};
    /// # #[derive(serde::Serialize, serde::Deserialize)]
    /// # struct Stock { quantity: i64 }
    ///
    /// async fn restock(services: &Services, ctx: &InvocationContext, units: i64) -> cqrs_core::Result<()> {
    ///     let key = EntityKey::new("TENANT#shop-a", "INVENTORY#PRD-001");
    ///     services
    ///         .update(&key)
    ///         .publish_sync_typed(ctx, |current: Option<Stock>| {
    ///             let quantity = current.map_or(0, |stock| stock.quantity) + units;
    ///             Ok::<_, cqrs_core::Error>(Some(Stock { quantity }))
    ///         })
    ///         .await?;
    ///     Ok(())
    /// }
    /// ```
    pub async fn publish_sync_typed<T, E, F>(self, ctx: &InvocationContext, change: F) -> Result<Updated, E>
    where
        T: Serialize + DeserializeOwned,
        F: FnMut(Option<T>) -> Result<Option<T>, E> + Send,
        E: From<Error> + Send,
    {
        self.run_typed(ctx, Mode::Sync, change).await
    }

    /// [`Update::publish_async`] with the state as your own type, as
    /// [`Update::publish_sync_typed`].
    pub async fn publish_async_typed<T, E, F>(self, ctx: &InvocationContext, change: F) -> Result<Updated, E>
    where
        T: Serialize + DeserializeOwned,
        F: FnMut(Option<T>) -> Result<Option<T>, E> + Send,
        E: From<Error> + Send,
    {
        self.run_typed(ctx, Mode::Async, change).await
    }

    async fn run_typed<T, E, F>(
        self,
        ctx: &InvocationContext,
        mode: Mode,
        mut change: F,
    ) -> Result<Updated, E>
    where
        T: Serialize + DeserializeOwned,
        F: FnMut(Option<T>) -> Result<Option<T>, E> + Send,
        E: From<Error> + Send,
    {
        let key = self.key.clone();
        self.run(ctx, mode, move |current| typed_change(&key, current, &mut change))
            .await
    }

    async fn run<E, F>(self, ctx: &InvocationContext, mode: Mode, mut change: F) -> Result<Updated, E>
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
        let idempotency = idempotency.as_ref();
        let mut attempt = 1;
        loop {
            if let Some(key) = idempotency {
                if let Some(first) = services.first_update(key, ctx).await? {
                    return Ok(first);
                }
            }
            let current = match mode {
                Mode::Sync => services.read_applied(&self.key, ctx).await,
                Mode::Async => services.data.get_latest(&self.key, ctx).await,
            };
            let outcome = match current {
                Ok(current) => match change(current.as_ref()) {
                    // A refusal or a skip may be a duplicate's, decided on
                    // the state a run with the same key left: that run's
                    // result is the answer.
                    Err(refused) => return services.unless_key_held(idempotency, ctx, Err(refused)).await,
                    Ok(None) => {
                        let skipped = Ok(Updated::Skipped(current));
                        return services.unless_key_held(idempotency, ctx, skipped).await;
                    }
                    Ok(Some(command)) => {
                        self.publish(command, current, idempotency.cloned(), mode, ctx)
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
                Err(error) if error.is_conflict() => {
                    return services
                        .unless_key_held(
                            idempotency,
                            ctx,
                            Err(E::from(error.after_conflict_retries(attempt))),
                        )
                        .await;
                }
                other => return other.map(Updated::Published).map_err(E::from),
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
    ) -> Result<Synced, Error> {
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
                Published::Written(record) => Synced::new(
                    Published::Written(item_of(&record, current.as_ref())),
                    Handled::Later,
                ),
                // Equal to the state read: that state is the answer.
                Published::Unchanged(record) => Synced::new(
                    Published::Unchanged(match current {
                        Some(item) => item,
                        None => item_of(&record, None),
                    }),
                    Handled::NoHandlers,
                ),
            }),
        }
    }
}

/// A read-modify-write of several entities, all or nothing, configured:
/// from [`Services::update_all`]. [`UpdateAll::commit`] reads each entity
/// (applied state; `None`: absent), passes them to the closure in the order
/// of the keys, and [commits](crate::CommandService::commit) the commands it
/// returns, each expecting the version read for its key; on a version
/// conflict everything is read again and the closure called again. The
/// closure refuses with an error of yours, or skips with an empty list.
///
/// With [`UpdateAll::idempotency_key`], the commit is keyed
/// ([`commit_idempotent`](crate::CommandService::commit_idempotent)): while
/// the key is held, a retry — or a duplicate racing the first run — returns
/// the first commit's result without calling the closure, and one whose
/// closure refuses or skips because a run with the same key already moved
/// the entities gets that run's result instead.
///
/// ```
/// use cqrs_core::{CommandInput, EntityKey, InvocationContext, Services};
///
/// async fn transfer(services: &Services, ctx: &InvocationContext) -> cqrs_core::Result<()> {
///     let from = EntityKey::new("TENANT#shop-a", "STOCK#TOKYO");
///     let to = EntityKey::new("TENANT#shop-a", "STOCK#OSAKA");
///     services
///         .update_all(&[from.clone(), to.clone()])
///         .idempotency_key("transfer-42")
///         .commit(ctx, |current| {
///             let (Some(a), Some(b)) = (&current[0], &current[1]) else {
///                 return Err(cqrs_core::Error::not_found(&from));
///             };
///             let units = |item: &cqrs_core::DataItem| item.attributes["units"].as_i64().unwrap_or(0);
///             Ok(vec![
///                 CommandInput::update_of(a).attributes(serde_json::json!({ "units": units(a) - 5 })),
///                 CommandInput::update_of(b).attributes(serde_json::json!({ "units": units(b) + 5 })),
///             ])
///         })
///         .await?;
///     Ok(())
/// }
/// ```
#[derive(Debug, Clone)]
#[must_use = "an update does nothing until `commit` is awaited"]
pub struct UpdateAll<'a> {
    services: &'a Services,
    keys: Vec<EntityKey>,
    idempotency: Option<IdempotencyKey>,
    retry: RetryPolicy,
}

impl UpdateAll<'_> {
    /// Makes the commit idempotent (see [`UpdateAll`]). Its default
    /// fingerprint is the list of keys (what the closure commits may differ
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

    /// Reads every entity, decides, and commits (see [`UpdateAll`]).
    pub async fn commit<E, F>(self, ctx: &InvocationContext, mut change: F) -> Result<Vec<Synced>, E>
    where
        F: FnMut(&[Option<DataItem>]) -> Result<Vec<CommandInput>, E> + Send,
        E: From<Error> + Send,
    {
        let services = self.services;
        let keys = &self.keys;
        let idempotency = self.idempotency.clone().map(|key| {
            let derived = || {
                let keys: Vec<[&str; 2]> = keys.iter().map(|k| [k.pk.as_str(), k.sk.as_str()]).collect();
                fingerprint(&json!({ "op": "update-all", "keys": keys }))
            };
            let fingerprint = key.fingerprint_or(derived);
            key.fingerprint(fingerprint)
        });
        let idempotency = idempotency.as_ref();
        let mut attempt = 1;
        loop {
            if let Some(key) = idempotency {
                if let Some(first) = services.commands.find_idempotent_commit(key, ctx).await? {
                    return Ok(first);
                }
            }
            let read =
                futures::future::try_join_all(keys.iter().map(|key| services.read_applied(key, ctx))).await;
            let outcome = match read {
                Ok(current) => {
                    let mut commands = match change(&current) {
                        // As for a keyed update: a refusal or a skip may be
                        // a duplicate's, decided on what the first run wrote.
                        Err(refused) => {
                            return services.unless_commit_held(idempotency, ctx, Err(refused)).await
                        }
                        Ok(commands) if commands.is_empty() => {
                            return services
                                .unless_commit_held(idempotency, ctx, Ok(Vec::new()))
                                .await;
                        }
                        Ok(commands) => commands,
                    };
                    for command in &mut commands {
                        let key = command.key();
                        let at = keys.iter().position(|k| *k == key).ok_or_else(|| {
                            Error::invalid("commit_with", format!("{key} was not read: add it to the keys"))
                        })?;
                        command.version =
                            ExpectedVersion::Exactly(current[at].as_ref().map_or(0, |i| i.version));
                    }
                    match idempotency {
                        Some(key) => {
                            services
                                .commands
                                .commit_idempotent(commands, key.clone(), ctx)
                                .await
                        }
                        None => services.commands.commit(commands, ctx).await,
                    }
                }
                Err(error) => Err(error),
            };
            match outcome {
                Err(error) if error.is_conflict() && attempt < self.retry.max_attempts => {
                    conflict_backoff(&self.retry, attempt).await;
                    attempt += 1;
                }
                Err(error) if error.is_conflict() => {
                    return services
                        .unless_commit_held(
                            idempotency,
                            ctx,
                            Err(E::from(error.after_conflict_retries(attempt))),
                        )
                        .await;
                }
                other => return other.map_err(E::from),
            }
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

/// How the handlers of a keyed update's first publish have ended so far,
/// from its command's status (and its failure record, when it failed).
async fn handled_so_far(
    services: &Services,
    first: &CommandRecord,
    ctx: &InvocationContext,
) -> Result<Handled, Error> {
    // A sync publish's row still `applied` has handlers that did not finish.
    Handled::of_stored(first.status, true, || async {
        let failures = services.commands.list_failures(ctx).await?;
        let failed = failures
            .into_iter()
            .find(|f| f.key() == first.key() && f.version == first.version);
        Ok(failed.map(|f| f.failures).unwrap_or_default())
    })
    .await
}

/// Waits a random time below the policy's backoff for `attempt`, so that
/// contending writers spread out.
async fn conflict_backoff(retry: &RetryPolicy, attempt: u32) {
    tokio::time::sleep(retry.backoff(attempt).mul_f64(fastrand::f64())).await;
}

/// A typed closure's decision as the command to publish: the current
/// attributes deserialized for it, the ones it returns serialized.
fn typed_change<T, E, F>(
    key: &EntityKey,
    current: Option<&DataItem>,
    change: &mut F,
) -> Result<Option<CommandInput>, E>
where
    T: Serialize + DeserializeOwned,
    F: FnMut(Option<T>) -> Result<Option<T>, E>,
    E: From<Error>,
{
    let state = current.map(DataItem::attributes_as::<T>).transpose()?;
    let Some(next) = change(state)? else {
        return Ok(None);
    };
    let command = match current {
        Some(item) => CommandInput::update_of(item),
        None => CommandInput::new(&key.pk, &key.sk),
    };
    Ok(Some(command.attributes_from(&next)?))
}
