//! Idempotency keys in the engine: the row a keyed publish stores with its
//! command, and the first result a retry of it gets back.
//!
//! A keyed publish writes its key row in the same atomic write as its
//! command, on the condition that no live row holds the key. A retry then
//! fails that condition (or finds its command unchanged, or conflicts on the
//! version the first try took): only then is the key row read, and the first
//! publish's result returned. A first publish costs no read more.

use std::time::Duration;

use serde_json::json;

use super::records::data_item;
use super::Engine;
use crate::context::InvocationContext;
use crate::error::{Error, Result};
use crate::idempotency::{Fingerprint, IdempotencyKey, IdempotencyRecord};
use crate::keys::EntityKey;
use crate::model::{CommandInput, CommandRecord, DataItem, Handled, PartialUpdate, Published, Synced};

/// An idempotency key with its fingerprint worked out.
pub(crate) struct Keyed {
    key: String,
    fingerprint: String,
}

impl Keyed {
    /// `key` for a publish of `command` (`mode`: sync or async: a key used by
    /// one is another request for the other).
    pub(crate) fn of_command(key: IdempotencyKey, command: &CommandInput, mode: &str) -> Keyed {
        let fingerprint = key.fingerprint_or(|| {
            let mut hash = Fingerprint::default();
            hash.str(mode);
            hash_command(&mut hash, command);
            hash.finish()
        });
        Keyed {
            key: key.key,
            fingerprint,
        }
    }

    /// `key` for a commit of `commands`: their contents, in order.
    pub(crate) fn of_commit(key: IdempotencyKey, commands: &[CommandInput]) -> Keyed {
        let fingerprint = key.fingerprint_or(|| {
            let mut hash = Fingerprint::default();
            hash.str("commit");
            for command in commands {
                hash_command(&mut hash, command);
            }
            hash.finish()
        });
        Keyed {
            key: key.key,
            fingerprint,
        }
    }

    /// `key` for a partial update.
    pub(crate) fn of_update(key: IdempotencyKey, update: &PartialUpdate, mode: &str) -> Keyed {
        let fingerprint = key.fingerprint_or(|| {
            let mut hash = Fingerprint::default();
            hash.str("patch").str(mode).str(&update.pk).str(&update.sk);
            hash.str(&update.version.to_string());
            hash.value(&json!([update.name, update.is_deleted]));
            hash.value(&update.attributes);
            hash.finish()
        });
        Keyed {
            key: key.key,
            fingerprint,
        }
    }

    /// The row stored with the command of `version` of `entity`.
    pub(crate) fn record(
        &self,
        entity: &EntityKey,
        version: u64,
        ctx: &InvocationContext,
        retention: Duration,
    ) -> IdempotencyRecord {
        let now = crate::clock::now();
        let retention = i64::try_from(retention.as_secs()).unwrap_or(i64::MAX / 2);
        IdempotencyRecord {
            tenant_code: ctx.tenant_code.to_string(),
            key: self.key.clone(),
            fingerprint: self.fingerprint.clone(),
            pk: entity.pk.to_string(),
            sk: entity.sk.to_string(),
            version,
            created_at: now,
            expires_at: now.timestamp().saturating_add(retention),
            commit: Vec::new(),
        }
    }
}

/// Feeds what a command asks for to a fingerprint.
fn hash_command(hash: &mut Fingerprint, command: &CommandInput) {
    hash.str(&command.pk)
        .str(&command.sk)
        .str(&command.code)
        .str(&command.name);
    hash.str(&command.entity_type).str(&command.version.to_string());
    hash.value(&json!([
        command.is_deleted,
        command.ttl,
        command.seq,
        command.id,
        command.tenant_code
    ]));
    hash.value(&command.attributes);
}

impl Engine {
    /// The row a keyed publish stores with its command.
    pub(crate) fn key_row(
        &self,
        keyed: Option<&Keyed>,
        entity: &EntityKey,
        version: u64,
        ctx: &InvocationContext,
    ) -> Option<IdempotencyRecord> {
        keyed.map(|k| k.record(entity, version, ctx, self.config().idempotency_retention))
    }

    /// The live row of `key` in the caller's tenant; [`Error::IdempotencyKeyReused`]
    /// if it was stored with another fingerprint than `fingerprint` (any
    /// fingerprint matches `None`).
    pub(crate) async fn held_key(
        &self,
        key: &str,
        fingerprint: Option<&str>,
        ctx: &InvocationContext,
    ) -> Result<Option<IdempotencyRecord>> {
        let stored = self
            .storage_ref()
            .get_idempotency(&ctx.tenant_code, key)
            .await?
            .filter(|row| row.is_live(crate::clock::now()));
        match stored {
            Some(row) if fingerprint.is_some_and(|f| f != row.fingerprint) => {
                Err(Error::IdempotencyKeyReused {
                    key: key.to_owned(),
                    original: format!("{}@{}", row.entity().id(), row.version),
                })
            }
            other => Ok(other),
        }
    }

    /// A keyed async publish's outcome, or the first publish's result when
    /// the outcome says the key may have been used: a conflict, or nothing
    /// to write.
    pub(crate) async fn resolve_async(
        &self,
        outcome: Result<Published<CommandRecord>>,
        keyed: Option<&Keyed>,
        ctx: &InvocationContext,
    ) -> Result<Published<CommandRecord>> {
        let maybe_retry = may_be_a_retry(outcome.as_ref().map(Published::is_unchanged));
        match self.key_held_after(maybe_retry, keyed, ctx).await? {
            Some(row) => self.first_command(&row).await.map(Published::Written),
            None => outcome,
        }
    }

    /// [`Engine::resolve_async`] for a sync publish.
    pub(crate) async fn resolve_sync(
        &self,
        outcome: Result<Synced>,
        keyed: Option<&Keyed>,
        ctx: &InvocationContext,
    ) -> Result<Synced> {
        let maybe_retry = may_be_a_retry(outcome.as_ref().map(Synced::is_unchanged));
        let Some(row) = self.key_held_after(maybe_retry, keyed, ctx).await? else {
            return outcome;
        };
        let item = self.first_item(&row).await?;
        let handled = self.handled_at(&row.entity(), row.version).await?;
        Ok(Synced::new(Published::Written(item), handled))
    }

    /// How the handlers of `version` of `entity` have ended so far, from its
    /// command row's status: the outcome a keyed retry reports.
    async fn handled_at(&self, entity: &EntityKey, version: u64) -> Result<Handled> {
        let Some(command) = self.storage_ref().get_command(entity, version).await? else {
            // Expired after it was applied: done long ago.
            return Ok(Handled::Finished);
        };
        let interested = self.inner.pipeline.has_handlers_for(&command);
        Handled::of_stored(command.status, interested, || async {
            let failure = self.storage_ref().get_failure(entity, version).await?;
            Ok(failure.map(|f| f.failures).unwrap_or_default())
        })
        .await
    }

    /// The live row of a keyed publish's key when its outcome may be a
    /// retry's; read only then, so a first publish costs no read.
    async fn key_held_after(
        &self,
        maybe_retry: bool,
        keyed: Option<&Keyed>,
        ctx: &InvocationContext,
    ) -> Result<Option<IdempotencyRecord>> {
        match keyed.filter(|_| maybe_retry) {
            Some(keyed) => self.held_key(&keyed.key, Some(&keyed.fingerprint), ctx).await,
            None => Ok(None),
        }
    }

    /// A keyed commit's outcome, or the first commit's result when the
    /// outcome says the key may have been used: a conflict, or nothing
    /// written.
    pub(crate) async fn resolve_commit(
        &self,
        outcome: Result<Vec<Synced>>,
        keyed: &Keyed,
        ctx: &InvocationContext,
    ) -> Result<Vec<Synced>> {
        let may_be_a_retry = match &outcome {
            Ok(published) => published.iter().all(Synced::is_unchanged),
            Err(error) => error.is_conflict(),
        };
        if !may_be_a_retry {
            return outcome;
        }
        match self.held_key(&keyed.key, Some(&keyed.fingerprint), ctx).await? {
            Some(row) => self.first_commit(&row).await,
            None => outcome,
        }
    }

    /// What a key's first commit answered: each entity as the commit left
    /// it, written or unchanged, in the commit's order. A key a single
    /// publish holds answers as a commit of that one command.
    pub(crate) async fn first_commit(&self, row: &IdempotencyRecord) -> Result<Vec<Synced>> {
        if row.commit.is_empty() {
            let item = self.first_item(row).await?;
            let handled = self.handled_at(&row.entity(), row.version).await?;
            return Ok(vec![Synced::new(Published::Written(item), handled)]);
        }
        futures::future::try_join_all(row.commit.iter().map(|member| async move {
            let state = self.state_at(&member.entity(), member.version).await?;
            Ok(match member.written {
                true => Synced::new(
                    Published::Written(state),
                    self.handled_at(&member.entity(), member.version).await?,
                ),
                false => Synced::new(Published::Unchanged(state), Handled::NoHandlers),
            })
        }))
        .await
    }

    /// The command a key's first publish wrote.
    pub(crate) async fn first_command(&self, row: &IdempotencyRecord) -> Result<CommandRecord> {
        let entity = row.entity();
        self.storage_ref()
            .get_command(&entity, row.version)
            .await?
            .ok_or_else(|| Error::NotFound {
                key: format!("{}@{}", entity.id(), row.version),
            })
    }

    /// The entity as a key's first publish left it: the data row if still at
    /// that version, its history row if superseded, or the command's state
    /// if not applied yet.
    pub(crate) async fn first_item(&self, row: &IdempotencyRecord) -> Result<DataItem> {
        self.state_at(&row.entity(), row.version).await
    }

    /// The entity as `version` left it: the data row if still at that
    /// version, its history row if superseded, or the command's state if
    /// not applied yet.
    pub(crate) async fn state_at(&self, entity: &EntityKey, version: u64) -> Result<DataItem> {
        let current = self.storage_ref().get_data(entity).await?;
        match &current {
            Some(item) if item.version == version => return Ok(item.clone()),
            Some(item) if item.version > version => {
                if let Some(history) = self.storage_ref().get_history(entity, version).await? {
                    return Ok(history);
                }
            }
            _ => {}
        }
        let command = self
            .storage_ref()
            .get_command(entity, version)
            .await?
            .ok_or_else(|| Error::NotFound {
                key: format!("{}@{version}", entity.id()),
            })?;
        Ok(data_item(&command, current.as_ref()))
    }
}

/// A keyed publish that conflicted or found nothing to write may be the
/// retry of one that did write.
/// `outcome` says whether the publish found nothing to write.
fn may_be_a_retry(outcome: Result<bool, &Error>) -> bool {
    match outcome {
        Ok(unchanged) => unchanged,
        Err(error) => error.is_conflict(),
    }
}
