//! Listing and showing failed commands.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::keys::EntityKey;
use crate::model::{CommandRecord, CommandStatus, FailedCommand};

/// Which failed commands a call is about. The default matches every one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FailureFilter {
    /// Only this tenant's.
    pub tenant: Option<String>,
    /// Only those where this handler (by [`name`](crate::DataSyncHandler::name))
    /// failed; [`APPLY_STEP`](crate::APPLY_STEP) for commands that could not be applied.
    pub handler: Option<String>,
    /// Only those marked failed strictly before this time.
    pub failed_before: Option<DateTime<Utc>>,
}

impl FailureFilter {
    /// Only the commands of `tenant`.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// Only the commands where `handler` failed.
    pub fn handler(mut self, handler: impl Into<String>) -> Self {
        self.handler = Some(handler.into());
        self
    }

    /// Only the commands marked failed before `time`.
    pub fn failed_before(mut self, time: DateTime<Utc>) -> Self {
        self.failed_before = Some(time);
        self
    }

    /// Only the commands marked failed more than `age` ago (by
    /// [`clock::now`](crate::clock::now)).
    pub fn older_than(self, age: Duration) -> Self {
        let age = chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX);
        let time = crate::clock::now()
            .checked_sub_signed(age)
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        self.failed_before(time)
    }

    /// Whether `failed` is one of the commands this filter is about.
    pub fn matches(&self, failed: &FailedCommand) -> bool {
        self.tenant.as_deref().is_none_or(|t| failed.tenant_code == t)
            && self
                .handler
                .as_deref()
                .is_none_or(|h| failed.failures.iter().any(|f| f.handler == h))
            && self.failed_before.is_none_or(|before| failed.failed_at < before)
    }
}

/// The failure records matching `filter`, oldest first (by
/// [`failed_at`](FailedCommand::failed_at), then key and version).
pub async fn list_failures(engine: &Engine, filter: &FailureFilter) -> Result<Vec<FailedCommand>> {
    let mut failed: Vec<FailedCommand> = engine
        .storage()
        .list_failures(filter.tenant.as_deref())
        .await?
        .into_iter()
        .filter(|f| filter.matches(f))
        .collect();
    failed
        .sort_by(|a, b| (a.failed_at, &a.pk, &a.sk, a.version).cmp(&(b.failed_at, &b.pk, &b.sk, b.version)));
    Ok(failed)
}

/// What [`show`] includes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShowOptions {
    /// The command's attribute values. Off by default: they may hold
    /// personal data, and an operator rarely needs them to decide.
    pub attributes: bool,
}

impl ShowOptions {
    /// With the command's attribute values.
    pub fn with_attributes(mut self) -> Self {
        self.attributes = true;
        self
    }
}

/// A command row without its payload (unless asked for).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct CommandSummary {
    /// Partition key.
    pub pk: String,
    /// Sort key of the entity.
    pub sk: String,
    /// The version this command produces.
    pub version: u64,
    /// Entity type.
    #[serde(rename = "type")]
    pub entity_type: String,
    /// Tenant of the entity.
    pub tenant_code: String,
    /// Pipeline status.
    pub status: CommandStatus,
    /// The status as another framework stored it, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub foreign_status: Option<String>,
    /// When it was published.
    pub created_at: DateTime<Utc>,
    /// The request that published it.
    pub request_id: String,
    /// What produced it.
    pub source: Option<String>,
    /// Its attribute values, only with [`ShowOptions::attributes`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attributes: Option<serde_json::Value>,
}

impl CommandSummary {
    fn of(command: &CommandRecord, options: ShowOptions) -> Result<Self> {
        let attributes = match options.attributes {
            true => Some(serde_json::to_value(&command.attributes).map_err(|e| {
                Error::backend(format!("the command's attributes cannot be shown: {e}"), false)
            })?),
            false => None,
        };
        Ok(Self {
            pk: command.pk.to_string(),
            sk: command.sk.to_string(),
            version: command.version,
            entity_type: command.entity_type.to_string(),
            tenant_code: command.tenant_code().to_owned(),
            status: command.status,
            foreign_status: command.foreign_status.as_ref().map(|s| s.to_string()),
            created_at: command.created_at,
            request_id: command.request_id.to_string(),
            source: command.source.as_ref().map(|s| s.to_string()),
            attributes,
        })
    }
}

/// One command as an operator sees it: its failure record, its row, and
/// how far its entity is applied.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct FailureDetail {
    /// The failure record (handlers, their last error, attempts, when);
    /// `None` when the command is not failed (any more).
    pub failure: Option<FailedCommand>,
    /// The command row.
    pub command: CommandSummary,
    /// The version of the entity's data row (0: none).
    pub applied_version: u64,
}

/// The command at `version` of `key`, with its failure record if it has one
/// ([`Error::NotFound`] when there is no such command).
pub async fn show(
    engine: &Engine,
    key: &EntityKey,
    version: u64,
    options: ShowOptions,
) -> Result<FailureDetail> {
    let storage = engine.storage();
    let command = storage
        .get_command(key, version)
        .await?
        .ok_or_else(|| Error::NotFound {
            key: format!("{}@{version}", key.id()),
        })?;
    let failure = storage.get_failure(key, version).await?;
    let applied_version = storage.get_data(key).await?.map_or(0, |d| d.version);
    Ok(FailureDetail {
        failure,
        command: CommandSummary::of(&command, options)?,
        applied_version,
    })
}
