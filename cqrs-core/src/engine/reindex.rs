//! Index repair: an entity's index entries rewritten from its current data
//! row.
//!
//! The engine writes a data row's entries with the row, atomically. Another
//! program sharing the table (the reference framework) does not: a row it
//! creates has no entries, and a row of ours it updates keeps the entries it
//! copied from the previous version, which may no longer match its values.
//! Reads never serve such a row under the wrong entry
//! ([`DataService::list_by_index`](crate::DataService::list_by_index) checks
//! each item it finds); the calls here put the entries right:
//!
//! - [`Engine::repair_indexes`]: one entity, when the pipeline sees another
//!   program's write (the DynamoDB stream consumer and Lambda entry point
//!   call it), and when a read finds a row under an entry it no longer has;
//! - [`Engine::reindex`]: every data row of a partition, the backfill of a
//!   table written before (or by others than) this engine.
//!
//! Every rewrite is conditioned on the version of the data row it was
//! computed from, so that it never replaces the entries of a newer write.

use super::Engine;
use crate::context::InvocationContext;
use crate::error::{Error, Result};
use crate::keys::{validate_pk, EntityKey};
use crate::model::DataItem;
use crate::query::SortOrder;
use crate::storage::RangeQuery;

/// Data rows read per storage call by [`Engine::reindex`].
const REINDEX_BATCH: usize = 100;

/// Attempts of [`Engine::repair_indexes`] when the data row keeps moving
/// under it (each write in between wrote entries of its own).
const REPAIR_ATTEMPTS: usize = 5;

/// Reads of the data row by [`Engine::repair_indexes_after`] while it waits
/// for another program's data write, and the first pause between them
/// (growing linearly: 1.5 s in all).
const FOREIGN_WRITE_WAITS: u32 = 6;
const FOREIGN_WRITE_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// What [`Engine::reindex`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reindexed {
    /// Data rows whose entries were rewritten.
    pub rewritten: usize,
    /// Rows of the partition that could not be read as data rows (left
    /// alone; they are logged).
    pub unreadable: usize,
}

impl Engine {
    /// Rewrites the entity's entries in the engine's indexes from its
    /// current data row: the repair of a row another program wrote (without
    /// entries, or with entries copied from an earlier version). Returns
    /// the version of the data row the entries were written for, `None`
    /// when the entity has no data row (or the engine declares no index).
    ///
    /// Conditioned on that version: a write that lands in between wrote
    /// entries of its own, and the repair reads the row again.
    pub async fn repair_indexes(&self, key: &EntityKey) -> Result<Option<u64>> {
        if self.inner.pipeline.indexes.is_empty() {
            return Ok(None);
        }
        let mut last_conflict = None;
        for _ in 0..REPAIR_ATTEMPTS {
            let Some(data) = self.storage_ref().get_data(key).await? else {
                return Ok(None);
            };
            match self.rewrite_entries(&data).await {
                Ok(()) => return Ok(Some(data.version)),
                Err(conflict @ Error::Conflict { .. }) => last_conflict = Some(conflict),
                Err(other) => return Err(other),
            }
        }
        Err(last_conflict.unwrap_or_else(|| Error::backend("index repair did not settle", true)))
    }

    /// [`Engine::repair_indexes`] after another program's write of `version`
    /// (a stream record of its command row): that program writes the data
    /// row after the command row, so the repair first waits, briefly and
    /// bounded, for the data row to reach `version`; then it repairs
    /// whatever version is there (a later write of the other program comes
    /// with a record of its own).
    pub async fn repair_indexes_after(&self, key: &EntityKey, version: u64) -> Result<Option<u64>> {
        if self.inner.pipeline.indexes.is_empty() {
            return Ok(None);
        }
        for attempt in 1..=FOREIGN_WRITE_WAITS {
            match self.storage_ref().get_data(key).await? {
                Some(data) if data.version >= version => break,
                _ if attempt < FOREIGN_WRITE_WAITS => {
                    tokio::time::sleep(FOREIGN_WRITE_WAIT * attempt).await;
                }
                _ => {
                    tracing::debug!(pk = %key.pk, sk = %key.sk, version, "the data row of another program's write is not there yet: repairing what is");
                }
            }
        }
        self.repair_indexes(key).await
    }

    /// Rewrites the index entries of every data row of the partition `pk`
    /// (checked against the caller's tenant, as `list_items` checks it):
    /// the backfill of a table another program wrote to, or of an index
    /// declared after its items were written. Rows are read a page at a
    /// time; each row's entries are written conditioned on the version
    /// read (a row written meanwhile is read again), so it is safe while
    /// the table is in use, and idempotent.
    pub async fn reindex(&self, pk: &str, ctx: &InvocationContext) -> Result<Reindexed> {
        validate_pk(pk)?;
        self.tenancy().check_pk(ctx, pk)?;
        let mut done = Reindexed::default();
        if self.inner.pipeline.indexes.is_empty() {
            return Ok(done);
        }
        let mut start_after = None;
        loop {
            let page = self
                .storage_ref()
                .query_data(&RangeQuery {
                    pk: pk.to_owned(),
                    sk: None,
                    order: SortOrder::Ascending,
                    start_after: start_after.take(),
                    limit: REINDEX_BATCH,
                })
                .await?;
            for row in &page.unreadable {
                tracing::warn!(pk = %row.pk, sk = %row.sk, reason = %row.reason, "unreadable row left out of a reindex");
            }
            done.unreadable += page.unreadable.len();
            for item in &page.items {
                match self.rewrite_entries(item).await {
                    Ok(()) => {}
                    // Written meanwhile: read it again.
                    Err(Error::Conflict { .. }) => {
                        self.repair_indexes(&item.key()).await?;
                    }
                    Err(other) => return Err(other),
                }
                done.rewritten += 1;
            }
            match page.last_sk {
                Some(last) => start_after = Some(last),
                None => break,
            }
        }
        tracing::info!(
            pk,
            rewritten = done.rewritten,
            unreadable = done.unreadable,
            "partition reindexed"
        );
        Ok(done)
    }

    /// Writes the entries `data` has in the engine's indexes, on condition
    /// that its row is still at `data.version`. A value no index key can
    /// hold leaves the row out of that index (its stale entries go).
    pub(crate) async fn rewrite_entries(&self, data: &DataItem) -> Result<()> {
        let indexes = &self.inner.pipeline.indexes;
        let mut entries = Vec::with_capacity(indexes.len());
        for index in indexes {
            match index.entry(data) {
                Ok(entry) => entries.extend(entry),
                Err(error) => {
                    tracing::warn!(pk = %data.pk, sk = %data.sk, index = index.name(), %error,
                        "a data row's values cannot be indexed: it is left out of the index");
                }
            }
        }
        let names: Vec<String> = indexes.iter().map(|i| i.name().to_owned()).collect();
        self.storage_ref()
            .put_index_entries(&data.key(), data.version, &names, &entries)
            .await
    }
}
