//! The write side: [`CommandService`] over the storage primitives.

use std::collections::HashSet;

use async_trait::async_trait;
use chrono::Utc;
use futures::future::try_join_all;
use tracing::Instrument;

use super::records::{command_record, data_item};
use super::validate::{check_command, check_key, check_size};
use super::Engine;
use crate::context::InvocationContext;
use crate::error::{Error, Result};
use crate::keys::EntityKey;
use crate::merge::merge_patch;
use crate::model::{
    CommandInput, CommandRecord, CommandStatus, DataItem, ExpectedVersion, FailedCommand, PartialUpdate,
    Published,
};
use crate::services::CommandService;
use crate::storage::{ApplyWrite, CommandWrite};

fn command_span(key: &EntityKey, ctx: &InvocationContext, mode: &'static str) -> tracing::Span {
    tracing::info_span!("command", mode, tenant = %ctx.tenant_code, pk = %key.pk, sk = %key.sk, version = tracing::field::Empty)
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

impl Engine {
    /// Reads the entity, checks the version and the dirty check, and builds
    /// the write of `command` (or returns the unchanged item).
    async fn prepare_sync(
        &self,
        key: &EntityKey,
        command: CommandInput,
        ctx: &InvocationContext,
    ) -> Result<Result<(ApplyWrite, CommandRecord), DataItem>> {
        let current = self.storage_ref().get_data(key).await?;
        let base = check_version(key, command.version, current.as_ref().map(|c| c.version))?;
        let previous = match current {
            Some(current) if current.content() == command.content() => return Ok(Err(current)),
            other => other,
        };
        let record = command_record(command, base + 1, CommandStatus::Applied, ctx, Utc::now());
        let data = data_item(&record, previous.as_ref());
        check_size(&self.storage_ref().limits(), &data)?;
        Ok(Ok((
            ApplyWrite {
                command: CommandWrite::Insert(Box::new(record.clone())),
                data,
                expected_data_version: base,
                history: previous,
            },
            record,
        )))
    }

    async fn publish_sync_checked(
        &self,
        key: EntityKey,
        command: CommandInput,
        ctx: &InvocationContext,
    ) -> Result<Published<DataItem>> {
        let attempts = if command.version == ExpectedVersion::Latest {
            self.config().latest_attempts.max(1)
        } else {
            1
        };
        let mut attempt = 1;
        let (write, record) = loop {
            let (write, record) = match self.prepare_sync(&key, command.clone(), ctx).await? {
                Ok(prepared) => prepared,
                Err(unchanged) => return Ok(Published::Unchanged(unchanged)),
            };
            match self.storage_ref().apply(std::slice::from_ref(&write)).await {
                Ok(()) => break (write, record),
                Err(e) if e.is_conflict() && attempt < attempts => attempt += 1,
                Err(e) => return Err(e),
            }
        };
        tracing::Span::current().record("version", record.version);
        tracing::info!("published (sync)");
        self.inner
            .pipeline
            .run_handlers(&record, write.history.as_ref(), &write.data, ctx.clone(), None)
            .await?;
        Ok(Published::Written(write.data))
    }

    async fn publish_async_checked(
        &self,
        key: EntityKey,
        command: CommandInput,
        base: Option<CommandRecord>,
        ctx: &InvocationContext,
    ) -> Result<Published<CommandRecord>> {
        let latest = command.version == ExpectedVersion::Latest;
        let attempts = if latest {
            self.config().latest_attempts.max(1)
        } else {
            1
        };
        let mut base = base;
        for attempt in 1..=attempts {
            let base_version = match (command.version, &base) {
                (ExpectedVersion::Exactly(v), _) => v,
                (ExpectedVersion::Latest, Some(b)) => b.version,
                (ExpectedVersion::Latest, None) => {
                    base = self.storage_ref().latest_command(&key).await?;
                    base.as_ref().map_or(0, |b| b.version)
                }
            };
            if base.is_none() && base_version > 0 {
                base = self.storage_ref().get_command(&key, base_version).await?;
            }
            if let Some(b) = base
                .take()
                .filter(|b| b.version == base_version && b.content() == command.content())
            {
                return Ok(Published::Unchanged(b));
            }
            let record = command_record(
                command.clone(),
                base_version + 1,
                CommandStatus::Published,
                ctx,
                Utc::now(),
            );
            check_size(&self.storage_ref().limits(), &record)?;
            match self.storage_ref().put_command(&record).await {
                Ok(()) => {
                    tracing::Span::current().record("version", record.version);
                    tracing::info!("published (async)");
                    self.dispatch(key, record.version);
                    return Ok(Published::Written(record));
                }
                Err(e) if latest && e.is_conflict() && attempt < attempts => continue,
                Err(e) => return Err(e),
            }
        }
        unreachable!("the last attempt returns")
    }

    /// The entity's latest data item and the command built by merging `update` over it.
    fn merged(update: PartialUpdate, mut base: CommandInput) -> CommandInput {
        merge_patch(&mut base.attributes, &update.attributes);
        if let Some(name) = update.name {
            base.name = name;
        }
        if let Some(is_deleted) = update.is_deleted {
            base.is_deleted = is_deleted;
        }
        base
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
        self.publish_async_checked(key, command, None, ctx)
            .instrument(span)
            .await
    }

    async fn publish_sync(
        &self,
        command: CommandInput,
        ctx: &InvocationContext,
    ) -> Result<Published<DataItem>> {
        let key = check_command(self.tenancy(), &command, ctx)?;
        let span = command_span(&key, ctx, "sync");
        self.publish_sync_checked(key, command, ctx)
            .instrument(span)
            .await
    }

    async fn publish_partial_update_async(
        &self,
        update: PartialUpdate,
        ctx: &InvocationContext,
    ) -> Result<Published<CommandRecord>> {
        let key = update.key();
        check_key(self.tenancy(), &key, ctx)?;
        let base = match update.version {
            ExpectedVersion::Latest => self.storage_ref().latest_command(&key).await?,
            ExpectedVersion::Exactly(0) => None,
            ExpectedVersion::Exactly(v) => self.storage_ref().get_command(&key, v).await?,
        };
        let Some(base) = base else {
            let latest = self.storage_ref().latest_command(&key).await?;
            return Err(match (update.version, latest) {
                (ExpectedVersion::Exactly(v), Some(l)) => Error::Conflict {
                    key: key.id(),
                    expected: ExpectedVersion::Exactly(v),
                    actual: Some(l.version),
                },
                _ => Error::NotFound { key: key.id() },
            });
        };
        let command = Self::merged(
            update,
            input_of_command(&base, ExpectedVersion::Exactly(base.version)),
        );
        let span = command_span(&key, ctx, "async");
        self.publish_async_checked(key, command, Some(base), ctx)
            .instrument(span)
            .await
    }

    async fn publish_partial_update_sync(
        &self,
        update: PartialUpdate,
        ctx: &InvocationContext,
    ) -> Result<Published<DataItem>> {
        let key = update.key();
        check_key(self.tenancy(), &key, ctx)?;
        let attempts = if update.version == ExpectedVersion::Latest {
            self.config().latest_attempts.max(1)
        } else {
            1
        };
        let span = command_span(&key, ctx, "sync");
        async {
            for attempt in 1..=attempts {
                let current = self
                    .storage_ref()
                    .get_data(&key)
                    .await?
                    .ok_or_else(|| Error::NotFound { key: key.id() })?;
                check_version(&key, update.version, Some(current.version))?;
                let command = Self::merged(update.clone(), CommandInput::update_of(&current));
                match self.publish_sync_checked(key.clone(), command, ctx).await {
                    Err(e) if e.is_conflict() && attempt < attempts => continue,
                    other => return other,
                }
            }
            unreachable!("the last attempt returns")
        }
        .instrument(span)
        .await
    }

    async fn commit(
        &self,
        commands: Vec<CommandInput>,
        ctx: &InvocationContext,
    ) -> Result<Vec<Published<DataItem>>> {
        let mut keys = HashSet::with_capacity(commands.len());
        for command in &commands {
            let key = check_command(self.tenancy(), command, ctx)?;
            if !keys.insert(key.clone()) {
                return Err(Error::invalid("commit", format!("{key} appears more than once")));
            }
        }
        // Command, data and history rows per entity.
        let rows = commands.len() * 3;
        let limit = self.storage_ref().limits().max_transaction_items;
        if rows > limit {
            return Err(Error::TooLarge {
                what: "transaction (rows: 3 per command)".into(),
                size: rows,
                limit,
            });
        }
        let prepared = try_join_all(commands.into_iter().map(|command| {
            let key = command.key();
            async move { self.prepare_sync(&key, command, ctx).await }
        }))
        .await?;
        let (writes, records): (Vec<_>, Vec<_>) =
            prepared.iter().filter_map(|p| p.as_ref().ok()).cloned().unzip();
        if !writes.is_empty() {
            self.storage_ref().apply(&writes).await?;
            tracing::info!(tenant = %ctx.tenant_code, commands = writes.len(), "committed");
        }
        for (write, record) in writes.iter().zip(&records) {
            self.inner
                .pipeline
                .run_handlers(record, write.history.as_ref(), &write.data, ctx.clone(), None)
                .await?;
        }
        Ok(prepared
            .into_iter()
            .map(|p| match p {
                Ok((write, _)) => Published::Written(write.data),
                Err(unchanged) => Published::Unchanged(unchanged),
            })
            .collect())
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
        self.inner.pipeline.reprocess(key, version).await
    }

    async fn list_failures(&self, ctx: &InvocationContext) -> Result<Vec<FailedCommand>> {
        let tenancy = self.tenancy();
        let everyone = tenancy.cross_tenant_roles.iter().any(|r| ctx.has_role(r));
        let tenant = (!everyone).then_some(ctx.tenant_code.as_str());
        self.storage_ref().list_failures(tenant).await
    }
}
