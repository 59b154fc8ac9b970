//! What a read-model store implements so that projections can run on it.

use async_trait::async_trait;

use crate::error::Result;
use crate::keys::EntityKey;

/// Which of a projection's bookkeeping documents (stored by the target as
/// text with a revision).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MetaDoc {
    /// The generations: which one readers see, which one a rebuild fills
    /// ([`Generations`](super::Generations)). Every projection transaction
    /// reads it, and its commit fails if it changed in between.
    Generations,
    /// A rebuild's scope and scan position
    /// ([`RebuildProgress`](super::RebuildProgress)).
    Rebuild,
}

impl MetaDoc {
    /// The document's name in the target's bookkeeping table.
    pub fn as_str(self) -> &'static str {
        match self {
            MetaDoc::Generations => "generations",
            MetaDoc::Rebuild => "rebuild",
        }
    }
}

/// A bookkeeping document and its revision (1 after its first write).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revised {
    /// The document (JSON text written by the projector).
    pub text: String,
    /// Increases by one with every write.
    pub revision: u64,
}

/// A read-model store: where projections write, with their checkpoints, in
/// one transaction per event.
///
/// The projector owns the algorithm (what to skip, what to fill, when to
/// switch); a target provides transactions, per-entity checkpoints and two
/// small bookkeeping documents per projection. Each target also gives its
/// projections a transaction type of its own ([`ProjectionTarget::Tx`]),
/// through which they write the read model: SQL for a SQL database, items
/// for DynamoDB, rows for [`MemoryTarget`](super::MemoryTarget).
///
/// Every target passes the target conformance suite
/// (`cqrs_core::testing::projections`, feature `testing`).
#[async_trait]
pub trait ProjectionTarget: Send + Sync + 'static {
    /// A transaction of this target.
    type Tx: ProjectionTx;

    /// Creates what the target needs (its checkpoint and bookkeeping
    /// tables). Idempotent; the projector calls it before its first use.
    async fn prepare(&self) -> Result<()>;

    /// Begins a transaction of `projection`, and reads its
    /// [`MetaDoc::Generations`] document in it (`None` before the first
    /// generation exists). Its commit fails with [`Error::Conflict`](crate::Error::Conflict)
    /// when that document changed in between, or is made to wait for the
    /// change to land (what matters: a transaction never commits writes to
    /// a set of generations that was replaced before it committed).
    async fn begin(&self, projection: &str) -> Result<(Self::Tx, Option<Revised>)>;

    /// Reads a bookkeeping document outside any transaction.
    async fn load(&self, projection: &str, doc: MetaDoc) -> Result<Option<Revised>>;

    /// The checkpoints (last version applied, 0 for none) of `keys` in
    /// `generation`, in the order of `keys`.
    async fn checkpoints(&self, projection: &str, generation: u64, keys: &[EntityKey]) -> Result<Vec<u64>>;

    /// Makes `generation` the one readers see, in one atomic step with the
    /// write of the generations document `text` (conditioned on
    /// `expected_revision`, [`Error::Conflict`](crate::Error::Conflict) otherwise).
    /// `tables` are the read model's tables ([`Projection::tables`](super::Projection::tables)),
    /// for targets that point readers at a generation's tables (SQL views).
    async fn switch(
        &self,
        projection: &str,
        text: &str,
        expected_revision: u64,
        generation: u64,
        tables: &[String],
    ) -> Result<()>;

    /// Removes a generation that readers no longer see: its read-model rows
    /// and its checkpoints.
    async fn drop_generation(&self, projection: &str, generation: u64, tables: &[String]) -> Result<()>;

    /// Whether an error a projection returned comes from the target being
    /// unreachable (a lost connection, a timeout) rather than from the
    /// projection: the pipeline then retries the event when the target is
    /// back instead of recording it as failed. `false` by default.
    fn is_transient(&self, error: &(dyn std::error::Error + 'static)) -> bool {
        let _ = error;
        false
    }
}

/// One transaction of a [`ProjectionTarget`]: the read model's writes and
/// the checkpoints, committed together or not at all.
///
/// Dropping a transaction without committing it rolls it back.
#[async_trait]
pub trait ProjectionTx: Send + 'static {
    /// The generation the projection's writes go to.
    fn generation(&self) -> u64;

    /// Points the projection's next writes at `generation` (the projector
    /// calls it before handing the transaction to the projection).
    fn set_generation(&mut self, generation: u64);

    /// The checkpoint of `key` in the current generation: the last version
    /// applied, 0 for none. In targets with locks, it locks the checkpoint
    /// until the commit.
    async fn checkpoint(&mut self, key: &EntityKey) -> Result<u64>;

    /// Moves the checkpoint of `key` in the current generation from
    /// `previous` to `version`. Conditioned on `previous`: the commit (or
    /// this call) fails with [`Error::Conflict`](crate::Error::Conflict)
    /// when another transaction moved it.
    async fn set_checkpoint(&mut self, key: &EntityKey, previous: u64, version: u64) -> Result<()>;

    /// Writes a bookkeeping document in this transaction, conditioned on
    /// `expected_revision` (0: the document must not exist).
    async fn store(&mut self, doc: MetaDoc, text: &str, expected_revision: u64) -> Result<()>;

    /// Commits the read model's writes and the checkpoints together.
    async fn commit(self) -> Result<()>;
}
