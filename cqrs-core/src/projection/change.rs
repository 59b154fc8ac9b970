//! The projection trait and what a projection receives.

use async_trait::async_trait;
use serde::de::DeserializeOwned;

use crate::error::BoxError;
use crate::handler::Interest;
use crate::keys::EntityKey;
use crate::typed::Typed;

/// A read model kept by the projector: it turns each change of an entity
/// into writes of its tables, through the target's transaction `Tx`
/// ([`SqlTx`](https://docs.rs/cqrs-serverless-sql), `DynamoTx`,
/// [`MemoryTx`](super::MemoryTx)).
///
/// The projector commits those writes together with the entity's
/// checkpoint, so that under at-least-once delivery each version reaches
/// `apply` once in effect, in version order: duplicates and older versions
/// are skipped (and counted), a version that arrives before the ones it
/// follows first gets them applied from the entity's history. A failing
/// `apply` writes nothing: the transaction is dropped, and the event fails
/// in the pipeline (retried, then recorded as failed and reprocessable).
///
/// Write `apply` as "remove what `old` contributed, add what `new`
/// contributes": it then holds for creations, updates, deletions and the
/// first sight of an entity in a rebuilt generation alike.
///
/// ```
/// use async_trait::async_trait;
/// use cqrs_core::projection::{Change, MemoryTx, Projection};
/// use cqrs_core::{BoxError, Interest};
/// use serde::Deserialize;
///
/// #[derive(Deserialize)]
/// struct Order { product: String, quantity: i64, status: String }
///
/// /// Units ordered per product, cancelled orders taken out.
/// struct UnitsPerProduct;
///
/// fn units(order: &Order) -> i64 {
///     if order.status == "cancelled" { 0 } else { order.quantity }
/// }
///
/// #[async_trait]
/// impl Projection<MemoryTx> for UnitsPerProduct {
///     type State = Order;
///     fn name(&self) -> &str { "units-per-product" }
///     fn interest(&self) -> Interest { Interest::SkPrefix("ORDER#".into()) }
///     async fn apply(&self, tx: &mut MemoryTx, change: &Change<Order>) -> Result<(), BoxError> {
///         for (order, sign) in change.old_state().map(|o| (o, -1)).into_iter().chain(change.new_state().map(|n| (n, 1))) {
///             let row = tx.get("units", &order.product).and_then(|v| v.as_i64()).unwrap_or(0);
///             tx.put("units", &order.product, (row + sign * units(order)).into());
///         }
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait Projection<Tx: Send>: Send + Sync + 'static {
    /// The entity state, read from the items' attributes (the typed API).
    type State: DeserializeOwned + Send + Sync + 'static;

    /// A stable name: it keys the checkpoints and the generations.
    fn name(&self) -> &str;

    /// Which entities the projection reads; all by default. A rebuild scans
    /// the rows this selects.
    fn interest(&self) -> Interest {
        Interest::All
    }

    /// The read model's tables, for targets that point readers at a
    /// generation's tables (SQL: one view per table). Empty by default.
    fn tables(&self) -> Vec<String> {
        Vec::new()
    }

    /// Creates the read model's tables of a new generation (called in a
    /// transaction whose generation is the new one). Nothing by default.
    async fn create(&self, tx: &mut Tx) -> Result<(), BoxError> {
        let _ = tx;
        Ok(())
    }

    /// Applies one change of one entity to the read model.
    async fn apply(&self, tx: &mut Tx, change: &Change<Self::State>) -> Result<(), BoxError>;
}

/// Where a change came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChangeSource {
    /// A data-sync event of the pipeline.
    Live,
    /// A version read from the entity's history, to fill the versions
    /// between the last applied one and a later event.
    History,
    /// The entity's current row, read by a rebuild.
    Rebuild,
}

/// One change of one entity, as the read model sees it.
///
/// `old` is the state the read model last saw: version `version - 1`'s,
/// except when a rebuild reads an entity for the first time in its
/// generation (then `None`: the entity comes in whole, as of the scan), so
/// that "remove `old`, add `new`" is exact.
#[derive(Debug, Clone, PartialEq)]
pub struct Change<T> {
    /// The entity.
    pub key: EntityKey,
    /// The version this change brings the read model to.
    pub version: u64,
    /// The state the read model saw last; `None` for a creation, and for
    /// an entity a rebuild reads for the first time.
    pub old: Option<Typed<T>>,
    /// The state at `version`; its `item.is_deleted` says whether this
    /// version deleted the entity.
    pub new: Typed<T>,
    /// Where the change came from.
    pub source: ChangeSource,
}

impl<T> Change<T> {
    /// The tenant of the entity (the text after the last `#` of its pk).
    pub fn tenant(&self) -> &str {
        crate::keys::tenant_of_pk(&self.key.pk).unwrap_or_default()
    }

    /// The state the read model saw last, when it saw one and it was not
    /// deleted: what to take out.
    pub fn old_state(&self) -> Option<&T> {
        self.old
            .as_ref()
            .filter(|old| !old.item.is_deleted)
            .map(|old| &old.attributes)
    }

    /// The state at this version, unless it deleted the entity: what to put in.
    pub fn new_state(&self) -> Option<&T> {
        Some(&self.new.attributes).filter(|_| !self.new.item.is_deleted)
    }
}
