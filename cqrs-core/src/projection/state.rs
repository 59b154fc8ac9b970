//! The projector's bookkeeping: generations and rebuild progress, stored
//! by the target as JSON documents with revisions.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::target::Revised;
use crate::error::{Error, Result};

/// A projection's generations: complete copies of its read model. Readers
/// see `live`; a rebuild fills `building` while events keep reaching both.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Generations {
    /// The generation readers see.
    pub live: u64,
    /// The generation a rebuild is filling, if any.
    pub building: Option<u64>,
    /// The highest generation ever created (the next one is `last + 1`).
    pub last: u64,
}

impl Generations {
    /// The generations events are applied to: the live one and the one
    /// being built.
    pub fn targets(&self) -> impl Iterator<Item = u64> + '_ {
        std::iter::once(self.live).chain(self.building)
    }
}

/// Which rows a rebuild reads: the projection's interest within these
/// tenants' partitions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Scope {
    /// The tenants whose rows are read, in this order.
    pub tenants: Vec<String>,
}

impl Scope {
    /// The rows of these tenants.
    pub fn tenants<S: Into<String>>(tenants: impl IntoIterator<Item = S>) -> Self {
        Scope {
            tenants: tenants.into_iter().map(Into::into).collect(),
        }
    }
}

/// Where a rebuild stands; checkpointed with every batch it writes, so
/// that a rebuild resumes after a crash where it stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RebuildProgress {
    /// The generation being filled.
    pub generation: u64,
    /// What it reads.
    pub scope: Scope,
    /// Index in `scope.tenants` of the tenant being read.
    pub tenant_index: usize,
    /// The last sort key read in that tenant's partition.
    pub after_sk: Option<String>,
    /// Rows read so far.
    pub done: u64,
    /// Rows in scope when the rebuild started.
    pub total: u64,
    /// When the rebuild started.
    pub started_at: DateTime<Utc>,
}

/// Reads a bookkeeping document.
pub(crate) fn decode<T: DeserializeOwned>(doc: &Revised) -> Result<T> {
    serde_json::from_str(&doc.text)
        .map_err(|e| Error::backend(format!("unreadable projection bookkeeping: {e}"), false))
}

/// Writes a bookkeeping document.
pub(crate) fn encode<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("bookkeeping documents are plain data")
}
