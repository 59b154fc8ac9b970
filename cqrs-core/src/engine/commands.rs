//! The write side: [`CommandService`] over the storage primitives.

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::try_join_all;
use tracing::Instrument;

use super::idempotent::Keyed;
use super::landed::WriteId;
use super::pipeline::HandlerRun;
use super::records::{command_record, data_item};
use super::validate::{check_command, check_key, check_size, check_size_as_data, check_transaction_size};
use super::Engine;
use crate::clock::command_time;
use crate::context::InvocationContext;
use crate::error::{Error, Result};
use crate::idempotency::{CommitMember, IdempotencyKey, IdempotencyRecord};
use crate::keys::EntityKey;
use crate::meters::{self, Mode};
use crate::model::{
    CommandInput, CommandRecord, CommandStatus, DataItem, ExpectedVersion, FailedCommand, Handled,
    PartialUpdate, Published, Synced,
};
use crate::services::CommandService;
use crate::storage::{ApplyWrite, CommandWrite};

/// Unit of the random backoff between last-writer-wins attempts.
const LATEST_BACKOFF_UNIT: Duration = Duration::from_micros(200);

fn command_span(key: &EntityKey, ctx: &InvocationContext, mode: &'static str) -> tracing::Span {
    tracing::info_span!("command", mode, tenant = %ctx.tenant_code, pk = %key.pk, sk = %key.sk, version = tracing::field::Empty)
}

/// The version after `base`; an entity cannot go past `u64::MAX`.
fn next_version(key: &EntityKey, base: u64) -> Result<u64> {
    base.checked_add(1).ok_or_else(|| {
        Error::invalid(
            "version",
            format!("{} cannot have a version after {base}", key.id()),
        )
    })
}

/// Fails unless the entity is at the expected version; returns that version.
fn check_version(key: &EntityKey, expected: ExpectedVersion, current: Option<u64>) -> Result<u64> {
    match expected {
        ExpectedVersion::Latest => Ok(current.unwrap_or(0)),
        ExpectedVersion::Exactly(v) if v == current.unwrap_or(0) => Ok(v),
        ExpectedVersion::Exactly(_) => Err(Error::Conflict {
            key: key.id(),
            expected,
            actual: current,
        }),
    }
}

/// What a sync publish will do, once the entity is read.
enum Prepared {
    /// Write this (its command is [`CommandWrite::Insert`]). Boxed: the
    /// write is large and goes through several futures and the storage by
    /// value; a pointer moves where the rows would be copied each time.
    Write(Box<ApplyWrite>),
    /// Nothing: the command equals the current item.
    Unchanged(Box<DataItem>),
}

impl Engine {
    /// Reads the entity, checks the version and the dirty check, and builds
    /// the write of `command`.
    async fn prepare_sync(
        &self,
        key: &EntityKey,
        command: CommandInput,
        keyed: Option<&Keyed>,
        ctx: &InvocationContext,
    ) -> Result<Prepared> {
        let current = self.storage_ref().get_data(key).await?;
        self.prepare_sync_over(key, current, command, keyed, ctx)
    }

    /// [`Engine::prepare_sync`] over an item already read.
    fn prepare_sync_over(
        &self,
        key: &EntityKey,
        previous: Option<DataItem>,
        mut command: CommandInput,
        keyed: Option<&Keyed>,
        ctx: &InvocationContext,
    ) -> Result<Prepared> {
        command.attributes.normalize()?;
        let base = check_version(key, command.version, previous.as_ref().map(|c| c.version))?;
        if let Some(current) = previous.as_ref().filter(|c| c.content() == command.content()) {
            return Ok(Prepared::Unchanged(Box::new(current.clone())));
        }
        let version = next_version(key, base)?;
        let mut record = command_record(command, version, CommandStatus::Applied, ctx, command_time());
        // With no handler to run, the command is done once written: a stream
        // consumer then has nothing to check.
        if !self.inner.pipeline.has_handlers_for(&record) {
            record.status = CommandStatus::Finished;
        }
        let mut data = data_item(&record, previous.as_ref());
        // The caller gets the data row: let it keep the parsed attributes
        // it published (the stored rows share the text).
        std::mem::swap(&mut data.attributes, &mut record.attributes);
        check_size(&self.storage_ref().limits(), &data)?;
        Ok(Prepared::Write(Box::new(ApplyWrite {
            command: CommandWrite::Insert(Box::new(record)),
            indexes: self.inner.pipeline.index_entries(&data)?,
            data,
            expected_data_version: base,
            history: previous,
            idempotency: self.key_row(keyed, key, version, ctx),
        })))
    }

    /// Runs `attempt` once, or — for a last-writer-wins publish — again on
    /// every conflict, up to [`EngineConfig::latest_attempts`](super::EngineConfig::latest_attempts).
    async fn retrying_latest<T, F, Fut>(
        &self,
        mode: Mode,
        expected: ExpectedVersion,
        mut attempt: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let attempts = match expected {
            ExpectedVersion::Latest => self.config().latest_attempts.max(1),
            ExpectedVersion::Exactly(_) => 1,
        };
        let mut tries = 1;
        loop {
            match attempt().await {
                Err(e) if e.is_conflict() && tries < attempts => {
                    meters::conflict(mode);
                    // Back off a little, at random, so that contending writers
                    // (and a pipeline catching up) spread out instead of spinning.
                    let ceiling = LATEST_BACKOFF_UNIT.saturating_mul(1 << tries.min(8));
                    tokio::time::sleep(ceiling.mul_f64(fastrand::f64())).await;
                    tries += 1;
                }
                // A `Latest` publish that spent its attempts says so.
                Err(e) if e.is_conflict() && attempts > 1 => return Err(e.after_conflict_retries(tries)),
                other => return other,
            }
        }
    }

    /// One attempt of a sync publish: read, check, apply, run the handlers.
    async fn publish_sync_once(
        &self,
        key: &EntityKey,
        command: CommandInput,
        keyed: Option<&Keyed>,
        ctx: &InvocationContext,
    ) -> Result<Synced> {
        let outcome = match self.prepare_sync(key, command, keyed, ctx).await {
            Ok(prepared) => self.write_prepared(prepared, ctx).await,
            Err(error) => Err(error),
        };
        match keyed {
            None => outcome,
            // Boxed: a keyed publish is the rarer one, and its state would
            // otherwise make every publish's future larger.
            Some(_) => Box::pin(self.resolve_sync(outcome, keyed, ctx)).await,
        }
    }

    /// Applies a prepared sync publish and runs its handlers.
    async fn write_prepared(&self, prepared: Prepared, ctx: &InvocationContext) -> Result<Synced> {
        let write = match prepared {
            Prepared::Write(write) => write,
            Prepared::Unchanged(unchanged) => {
                return Ok(Synced::new(Published::Unchanged(*unchanged), Handled::NoHandlers))
            }
        };
        let handled = write
            .inserted_command()
            .is_some_and(|record| record.status == CommandStatus::Applied);
        if !handled {
            // One atomic write and nothing after it: nothing to detach.
            // Nothing needs the rows after the write but the caller its data
            // row: hand them over, for a backend that can keep them as they are.
            let id = WriteId::of_apply(std::slice::from_ref(&*write));
            let data = match self.storage_ref().apply_one(write).await {
                Ok(data) => data,
                Err(error) => match id {
                    Some(id) if self.landed_despite(&error, Some(&id)).await? => {
                        self.state_at(id.key(), id.version()).await?
                    }
                    _ => return Err(error),
                },
            };
            tracing::Span::current().record("version", data.version);
            tracing::info!("published (sync)");
            return Ok(Synced::new(Published::Written(data), Handled::Finished));
        }
        Box::pin(self.write_then_handle(*write, ctx)).await
    }

    /// Applies a sync write whose handlers follow, and runs them, on a task
    /// of its own. Reached through a box from [`Engine::write_prepared`]:
    /// this future is large, and the write without handlers should not
    /// carry its size.
    async fn write_then_handle(&self, write: ApplyWrite, ctx: &InvocationContext) -> Result<Synced> {
        let ctx = ctx.clone();
        self.detached(move |engine| {
            let mut write = write;
            async move {
                engine.apply_or_recover(std::slice::from_mut(&mut write)).await?;
                tracing::Span::current().record("version", write.data.version);
                tracing::info!("published (sync)");
                let handled = engine.run_handlers_after_write(&write, &ctx).await;
                Ok(Synced::new(Published::Written(write.data), handled))
            }
            .in_current_span()
        })
        .await
    }

    /// Applies sync writes whose handlers follow, their command rows stamped
    /// with this engine's publisher id (so that recovery knows when it is
    /// gone). A retryable failure may come after the write landed (a lost
    /// response): the commands are then handed to recovery, which runs their
    /// handlers if they were stored.
    async fn apply_or_recover(&self, writes: &mut [ApplyWrite]) -> Result<()> {
        let publisher = self.publisher_stamp().await;
        for write in writes.iter_mut() {
            if let CommandWrite::Insert(record) = &mut write.command {
                record.publisher.clone_from(&publisher);
            }
        }
        let applied = self.storage_ref().apply(writes).await;
        let applied = self
            .unless_landed(applied, WriteId::of_apply(writes).as_ref())
            .await;
        if let Err(error) = &applied {
            if error.is_retryable() {
                for record in writes.iter().filter_map(ApplyWrite::inserted_command) {
                    self.dispatch(record.key(), record.version, record.traceparent.clone());
                }
            }
        }
        applied
    }

    /// Runs the handlers of a written command and marks it finished (or
    /// records its failure). The write stands whatever happens here: when
    /// the outcome cannot be recorded (storage unavailable, a handler that
    /// could not reach it), the command stays `applied` and is handed to
    /// recovery — the in-process processor, or the stream consumer once the
    /// recovery grace has passed — which runs the handlers again.
    async fn run_handlers_after_write(&self, write: &ApplyWrite, ctx: &InvocationContext) -> Handled {
        let Some(record) = write.inserted_command() else {
            return Handled::NoHandlers;
        };
        // Written finished: no handler is interested in it.
        if record.status == CommandStatus::Finished {
            return Handled::Finished;
        }
        let outcome = self
            .inner
            .pipeline
            .run_handlers(
                record,
                write.history.as_ref(),
                &write.data,
                || ctx.clone(),
                HandlerRun::ALL,
            )
            .await;
        outcome.unwrap_or_else(|error| {
            tracing::warn!(version = record.version, %error, "handlers of a sync publish did not complete; left to recovery");
            self.dispatch(record.key(), record.version, record.traceparent.clone());
            Handled::Recovering
        })
    }

    /// The command an async publish builds on: the row at the expected
    /// version, or the latest row.
    async fn async_base(&self, key: &EntityKey, expected: ExpectedVersion) -> Result<Option<CommandRecord>> {
        match expected {
            ExpectedVersion::Exactly(0) => Ok(None),
            ExpectedVersion::Exactly(v) => self.storage_ref().get_command(key, v).await,
            ExpectedVersion::Latest => self.storage_ref().latest_command(key, None).await,
        }
    }

    /// One attempt of an async publish: reads the base (when the dirty check
    /// or a last-writer-wins publish needs it) and publishes on top of it.
    async fn publish_async_once(
        &self,
        key: &EntityKey,
        command: CommandInput,
        keyed: Option<&Keyed>,
        ctx: &InvocationContext,
    ) -> Result<Published<CommandRecord>> {
        let read_base = self.config().async_dirty_check || command.version == ExpectedVersion::Latest;
        let base = match read_base {
            true => self.async_base(key, command.version).await?,
            false => None,
        };
        let outcome = self.publish_async_on(key, command, base, keyed, ctx).await;
        match keyed {
            None => outcome,
            Some(_) => Box::pin(self.resolve_async(outcome, keyed, ctx)).await,
        }
    }

    /// One attempt of an async publish of `command` on top of `base`.
    async fn publish_async_on(
        &self,
        key: &EntityKey,
        mut command: CommandInput,
        base: Option<CommandRecord>,
        keyed: Option<&Keyed>,
        ctx: &InvocationContext,
    ) -> Result<Published<CommandRecord>> {
        command.attributes.normalize()?;
        let base_version = match (&base, command.version) {
            (Some(base), _) => base.version,
            (None, ExpectedVersion::Exactly(v)) => v,
            (None, ExpectedVersion::Latest) => 0,
        };
        if let Some(base) = base.filter(|b| b.content() == command.content()) {
            // Equal to the base: unchanged only if the base is still the latest.
            return match self
                .storage_ref()
                .get_command(key, next_version(key, base.version)?)
                .await?
            {
                None => Ok(Published::Unchanged(base)),
                Some(_) => Err(Error::Conflict {
                    key: key.id(),
                    expected: command.version,
                    actual: self
                        .storage_ref()
                        .latest_command(key, None)
                        .await?
                        .map(|l| l.version),
                }),
            };
        }
        let record = command_record(
            command,
            next_version(key, base_version)?,
            CommandStatus::Published,
            ctx,
            command_time(),
        );
        // The row the pipeline will write is the data row, which is larger.
        check_size_as_data(&self.storage_ref().limits(), &record)?;
        // Dropped while the write is under way, the publish may or may not
        // have stored the command: the processor then finds out.
        let mut cancelled = DispatchOnDrop {
            engine: Some(self),
            key,
            version: record.version,
            traceparent: record.traceparent.clone(),
        };
        let key_row = self.key_row(keyed, key, record.version, ctx);
        let stored = self.storage_ref().put_command(&record, key_row.as_ref()).await;
        let stored = self.unless_landed(stored, Some(&WriteId::of(&record))).await;
        if !stored.as_ref().is_err_and(Error::is_retryable) {
            // Stored, or certainly not (a conflict): no doubt to clear up.
            cancelled.engine = None;
        }
        stored?;
        tracing::Span::current().record("version", record.version);
        tracing::info!("published (async)");
        self.dispatch(key.clone(), record.version, record.traceparent.clone());
        Ok(Published::Written(record))
    }

    /// Applies `commands` all or nothing (see [`CommandService::commit`]);
    /// with `keyed`, stores the key row in the same transaction, naming
    /// every command of the commit.
    async fn commit_keyed(
        &self,
        commands: Vec<CommandInput>,
        keyed: Option<&Keyed>,
        ctx: &InvocationContext,
    ) -> Result<Vec<Synced>> {
        let mut keys = HashSet::with_capacity(commands.len());
        for command in &commands {
            let key = check_command(self.tenancy(), command, ctx)?;
            if command.idempotency_key.is_some() {
                return Err(Error::invalid(
                    "idempotencyKey",
                    "the commands of a commit take no idempotency keys: key the commit (commit_idempotent)",
                ));
            }
            if !keys.insert(key.clone()) {
                return Err(Error::invalid("commit", format!("{key} appears more than once")));
            }
        }
        let limits = self.storage_ref().limits();
        // A keyed commit writes its key row in the same transaction.
        let rows = commands.len() * limits.rows_per_command + usize::from(keyed.is_some());
        let limit = limits.max_transaction_items;
        if rows > limit {
            return Err(Error::TooLarge {
                what: "transaction".into(),
                size: rows,
                limit,
            });
        }
        let prepared = try_join_all(commands.into_iter().map(|command| {
            let key = command.key();
            async move { self.prepare_sync(&key, command, None, ctx).await }
        }))
        .await?;
        let mut writes: Vec<ApplyWrite> = prepared
            .iter()
            .filter_map(|p| match p {
                Prepared::Write(write) => Some((**write).clone()),
                Prepared::Unchanged(_) => None,
            })
            .collect();
        if let (Some(keyed), Some(first)) = (keyed, writes.first_mut()) {
            first.idempotency = Some(self.commit_key_row(keyed, &first.data, &prepared, ctx));
        }
        check_transaction_size(&limits, &writes)?;
        let handled = writes.iter().any(|w| {
            w.inserted_command()
                .is_some_and(|c| c.status == CommandStatus::Applied)
        });
        // How the handlers of each write ended, in the order of `writes`.
        let mut handled = if handled {
            // Handlers follow the write: detached, so that they run even if
            // the caller's future is dropped.
            let ctx = ctx.clone();
            let mut writes = writes;
            self.detached(move |engine| {
                async move {
                    engine.apply_or_recover(&mut writes).await?;
                    tracing::info!(tenant = %ctx.tenant_code, commands = writes.len(), "committed");
                    Ok(futures::future::join_all(
                        writes.iter().map(|w| engine.run_handlers_after_write(w, &ctx)),
                    )
                    .await)
                }
                .in_current_span()
            })
            .await?
        } else {
            if !writes.is_empty() {
                let applied = self.storage_ref().apply(&writes).await;
                self.unless_landed(applied, WriteId::of_apply(&writes).as_ref())
                    .await?;
                tracing::info!(tenant = %ctx.tenant_code, commands = writes.len(), "committed");
            }
            // No handler is interested in any of them: written finished.
            vec![Handled::Finished; writes.len()]
        }
        .into_iter();
        Ok(prepared
            .into_iter()
            .map(|p| match p {
                Prepared::Write(write) => Synced::new(
                    Published::Written(write.data),
                    handled.next().unwrap_or(Handled::NoHandlers),
                ),
                Prepared::Unchanged(unchanged) => {
                    Synced::new(Published::Unchanged(*unchanged), Handled::NoHandlers)
                }
            })
            .collect())
    }

    /// The key row of a keyed commit, stored with its first write: it names
    /// that command, and every command of the commit in order.
    fn commit_key_row(
        &self,
        keyed: &Keyed,
        first: &DataItem,
        prepared: &[Prepared],
        ctx: &InvocationContext,
    ) -> IdempotencyRecord {
        let retention = self.config().idempotency_retention;
        let mut row = keyed.record(&first.key(), first.version, ctx, retention);
        row.commit = prepared
            .iter()
            .map(|p| {
                let (item, written) = match p {
                    Prepared::Write(write) => (&write.data, true),
                    Prepared::Unchanged(item) => (&**item, false),
                };
                CommitMember {
                    pk: item.pk.to_string(),
                    sk: item.sk.to_string(),
                    version: item.version,
                    written,
                }
            })
            .collect();
        row
    }

    /// `update` merged over `base`.
    fn merged(update: &PartialUpdate, mut base: CommandInput) -> CommandInput {
        base.attributes.merge_patch(&update.attributes);
        if let Some(name) = &update.name {
            base.name = name.clone();
        }
        if let Some(is_deleted) = update.is_deleted {
            base.is_deleted = is_deleted;
        }
        base
    }
}

/// The idempotency key of a partial update, checked.
fn checked_key(update: &PartialUpdate) -> Result<Option<IdempotencyKey>> {
    if let Some(key) = &update.idempotency_key {
        key.validate()?;
    }
    Ok(update.idempotency_key.clone())
}

/// Hands an async command to the in-process processor if the publish is
/// dropped while its write is under way (armed while `engine` is `Some`).
struct DispatchOnDrop<'a> {
    engine: Option<&'a Engine>,
    key: &'a EntityKey,
    version: u64,
    traceparent: Option<smol_str::SmolStr>,
}

impl Drop for DispatchOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(engine) = self.engine.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                engine.dispatch(self.key.clone(), self.version, self.traceparent.take());
            }
        }
    }
}

fn input_of_command(command: &CommandRecord, version: ExpectedVersion) -> CommandInput {
    CommandInput {
        pk: command.pk.clone(),
        sk: command.sk.clone(),
        id: None,
        tenant_code: None,
        code: command.code.clone(),
        name: command.name.clone(),
        version,
        entity_type: command.entity_type.clone(),
        attributes: command.attributes.clone(),
        is_deleted: command.is_deleted,
        ttl: command.ttl,
        seq: command.seq,
        idempotency_key: None,
    }
}

#[async_trait]
impl CommandService for Engine {
    async fn publish_async(
        &self,
        command: CommandInput,
        ctx: &InvocationContext,
    ) -> Result<Published<CommandRecord>> {
        let key = check_command(self.tenancy(), &command, ctx)?;
        let span = command_span(&key, ctx, "async");
        let mut command = command;
        let keyed = (command.idempotency_key.take()).map(|k| Keyed::of_command(k, &command, "async"));
        let keyed = keyed.as_ref();
        let timer = meters::Publish::start(Mode::Async);
        let outcome = match command.version {
            // One attempt: the command moves in, without a copy.
            ExpectedVersion::Exactly(_) => {
                self.publish_async_once(&key, command, keyed, ctx)
                    .instrument(span)
                    .await
            }
            ExpectedVersion::Latest => {
                Box::pin(self.retrying_latest(Mode::Async, command.version, || {
                    self.publish_async_once(&key, command.clone(), keyed, ctx)
                }))
                .instrument(span)
                .await
            }
        };
        timer.end(&outcome);
        outcome
    }

    async fn publish_sync(&self, command: CommandInput, ctx: &InvocationContext) -> Result<Synced> {
        let key = check_command(self.tenancy(), &command, ctx)?;
        let span = command_span(&key, ctx, "sync");
        let mut command = command;
        let keyed = (command.idempotency_key.take()).map(|k| Keyed::of_command(k, &command, "sync"));
        let keyed = keyed.as_ref();
        let timer = meters::Publish::start(Mode::Sync);
        let outcome = match command.version {
            // No subscriber wants the span: no wrapper around the publish.
            ExpectedVersion::Exactly(_) if span.is_disabled() => {
                self.publish_sync_once(&key, command, keyed, ctx).await
            }
            // One attempt: the command moves in, without a copy.
            ExpectedVersion::Exactly(_) => {
                self.publish_sync_once(&key, command, keyed, ctx)
                    .instrument(span)
                    .await
            }
            ExpectedVersion::Latest => {
                Box::pin(self.retrying_latest(Mode::Sync, command.version, || {
                    self.publish_sync_once(&key, command.clone(), keyed, ctx)
                }))
                .instrument(span)
                .await
            }
        };
        timer.end(&outcome);
        outcome
    }

    async fn publish_partial_update_async(
        &self,
        update: PartialUpdate,
        ctx: &InvocationContext,
    ) -> Result<Published<CommandRecord>> {
        let key = update.key();
        check_key(self.tenancy(), &key, ctx)?;
        let keyed = checked_key(&update)?.map(|k| Keyed::of_update(k, &update, "async"));
        let keyed = keyed.as_ref();
        let span = command_span(&key, ctx, "async");
        let timer = meters::Publish::start(Mode::Async);
        let outcome = self
            .retrying_latest(Mode::Async, update.version, || async {
                let Some(base) = self.async_base(&key, update.version).await? else {
                    let latest = self.storage_ref().latest_command(&key, None).await?;
                    return Err(match (update.version, latest) {
                        (ExpectedVersion::Exactly(v), Some(latest)) => Error::Conflict {
                            key: key.id(),
                            expected: ExpectedVersion::Exactly(v),
                            actual: Some(latest.version),
                        },
                        _ => Error::NotFound { key: key.id() },
                    });
                };
                let command = Self::merged(
                    &update,
                    input_of_command(&base, ExpectedVersion::Exactly(base.version)),
                );
                let outcome = self.publish_async_on(&key, command, Some(base), keyed, ctx).await;
                self.resolve_async(outcome, keyed, ctx).await
            })
            .instrument(span)
            .await;
        timer.end(&outcome);
        outcome
    }

    async fn publish_partial_update_sync(
        &self,
        update: PartialUpdate,
        ctx: &InvocationContext,
    ) -> Result<Synced> {
        let key = update.key();
        check_key(self.tenancy(), &key, ctx)?;
        let keyed = checked_key(&update)?.map(|k| Keyed::of_update(k, &update, "sync"));
        let keyed = keyed.as_ref();
        let span = command_span(&key, ctx, "sync");
        let timer = meters::Publish::start(Mode::Sync);
        let outcome = self
            .retrying_latest(Mode::Sync, update.version, || async {
                let outcome = async {
                    let current = self
                        .storage_ref()
                        .get_data(&key)
                        .await?
                        .ok_or_else(|| Error::NotFound { key: key.id() })?;
                    check_version(&key, update.version, Some(current.version))?;
                    let command = Self::merged(&update, CommandInput::update_of(&current));
                    let prepared = self.prepare_sync_over(&key, Some(current), command, keyed, ctx)?;
                    self.write_prepared(prepared, ctx).await
                }
                .await;
                self.resolve_sync(outcome, keyed, ctx).await
            })
            .instrument(span)
            .await;
        timer.end(&outcome);
        outcome
    }

    async fn commit(&self, commands: Vec<CommandInput>, ctx: &InvocationContext) -> Result<Vec<Synced>> {
        let timer = meters::Publish::start(Mode::Commit);
        let outcome = self.commit_keyed(commands, None, ctx).await;
        timer.end(&outcome);
        outcome
    }

    async fn commit_idempotent(
        &self,
        commands: Vec<CommandInput>,
        key: IdempotencyKey,
        ctx: &InvocationContext,
    ) -> Result<Vec<Synced>> {
        key.validate()?;
        let keyed = Keyed::of_commit(key, &commands);
        let timer = meters::Publish::start(Mode::Commit);
        let outcome = self.commit_keyed(commands, Some(&keyed), ctx).await;
        let outcome = self.resolve_commit(outcome, &keyed, ctx).await;
        timer.end(&outcome);
        outcome
    }

    async fn find_idempotent_commit(
        &self,
        key: &IdempotencyKey,
        ctx: &InvocationContext,
    ) -> Result<Option<Vec<Synced>>> {
        key.validate()?;
        let Some(row) = self.held_key(&key.key, key.fingerprint.as_deref(), ctx).await? else {
            return Ok(None);
        };
        check_key(self.tenancy(), &row.entity(), ctx)?;
        self.first_commit(&row).await.map(Some)
    }

    async fn get_command(
        &self,
        key: &EntityKey,
        version: u64,
        ctx: &InvocationContext,
    ) -> Result<Option<CommandRecord>> {
        check_key(self.tenancy(), key, ctx)?;
        self.storage_ref().get_command(key, version).await
    }

    async fn list_versions(&self, key: &EntityKey, ctx: &InvocationContext) -> Result<Vec<CommandRecord>> {
        check_key(self.tenancy(), key, ctx)?;
        self.storage_ref().list_commands(key).await
    }

    async fn reprocess(
        &self,
        key: &EntityKey,
        version: u64,
        ctx: &InvocationContext,
    ) -> Result<CommandStatus> {
        check_key(self.tenancy(), key, ctx)?;
        let key = key.clone();
        self.detached(move |engine| async move { engine.inner.pipeline.reprocess(&key, version).await })
            .await
    }

    async fn find_idempotent(
        &self,
        key: &IdempotencyKey,
        ctx: &InvocationContext,
    ) -> Result<Option<CommandRecord>> {
        key.validate()?;
        let Some(row) = self.held_key(&key.key, key.fingerprint.as_deref(), ctx).await? else {
            return Ok(None);
        };
        check_key(self.tenancy(), &row.entity(), ctx)?;
        self.first_command(&row).await.map(Some)
    }

    async fn list_failures(&self, ctx: &InvocationContext) -> Result<Vec<FailedCommand>> {
        let tenancy = self.tenancy();
        let everyone = tenancy.cross_tenant_roles.iter().any(|r| ctx.has_role(r));
        let tenant = (!everyone).then_some(ctx.tenant_code.as_str());
        self.storage_ref().list_failures(tenant).await
    }
}
