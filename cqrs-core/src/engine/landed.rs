//! Writes reported as conflicts that in fact landed.
//!
//! A storage client that retries a conditional write (the AWS SDK retries a
//! `PutItem` or `TransactWriteItems` whose attempt timed out, as during a
//! pause of DynamoDB) may send it again after its first attempt was stored
//! unseen: the retry then fails on the very row the first attempt wrote,
//! and the write is reported as a conflict. Answered as such, a publish
//! whose command is stored would say it wrote nothing (a `409` for an order
//! that exists, left unapplied by a caller that believes it).
//!
//! So when the write of a command row is reported as a conflict, the row
//! at its version is read back: if it is this write's own, the write landed
//! and the publish goes on as written. Only a conflict costs the read.

use chrono::{DateTime, Utc};
use smol_str::SmolStr;

use super::Engine;
use crate::error::{Error, Result};
use crate::keys::EntityKey;
use crate::model::CommandRecord;
use crate::storage::ApplyWrite;

/// What tells one write of a command row from any other write of the same
/// version: the request and the user it came from, and the instant the
/// engine built it (nanoseconds).
#[derive(Debug, Clone)]
pub(crate) struct WriteId {
    key: EntityKey,
    version: u64,
    request_id: SmolStr,
    created_by: SmolStr,
    created_at: DateTime<Utc>,
}

impl WriteId {
    /// The identity of writing `record`.
    pub(crate) fn of(record: &CommandRecord) -> Self {
        Self {
            key: record.key(),
            version: record.version,
            request_id: record.request_id.clone(),
            created_by: record.created_by.clone(),
            created_at: record.created_at,
        }
    }

    /// The identity of the first command row an apply inserts (an apply is
    /// all or nothing: one of its rows tells whether it landed).
    pub(crate) fn of_apply(writes: &[ApplyWrite]) -> Option<Self> {
        writes.iter().find_map(ApplyWrite::inserted_command).map(Self::of)
    }

    /// Whether `stored` is the row this write carried.
    fn is(&self, stored: &CommandRecord) -> bool {
        stored.version == self.version
            && stored.created_at == self.created_at
            && stored.request_id == self.request_id
            && stored.created_by == self.created_by
    }

    /// The entity written.
    pub(crate) fn key(&self) -> &EntityKey {
        &self.key
    }

    /// The version written.
    pub(crate) fn version(&self) -> u64 {
        self.version
    }
}

impl Engine {
    /// Whether the write `id` names is stored, when its outcome was
    /// `error`: only a conflict may hide a write that landed.
    pub(crate) async fn landed_despite(&self, error: &Error, id: Option<&WriteId>) -> Result<bool> {
        let Some(id) = id.filter(|_| error.is_conflict()) else {
            return Ok(false);
        };
        let stored = self.storage_ref().get_command(&id.key, id.version).await?;
        let landed = stored.is_some_and(|row| id.is(&row));
        if landed {
            tracing::info!(
                pk = %id.key.pk, sk = %id.key.sk, version = id.version,
                "a write reported as a conflict had landed (a retried request): answered as written"
            );
        }
        Ok(landed)
    }

    /// `outcome` of a write of `id`, or `Ok` if it is a conflict that hides
    /// the write having landed.
    pub(crate) async fn unless_landed(&self, outcome: Result<()>, id: Option<&WriteId>) -> Result<()> {
        match outcome {
            Err(error) if self.landed_despite(&error, id).await? => Ok(()),
            other => other,
        }
    }
}
