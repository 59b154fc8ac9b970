//! The storefront's services, over the framework's traits as `Arc<dyn …>` so
//! that unit tests can hand them mocks.

pub mod access;
mod inventory;
mod orders;
mod products;
mod validate;

use std::sync::Arc;

use cqrs_core::{CommandService, DataService, SequenceService};

pub use inventory::{InventoryService, ReserveOutcome, SetInventory, MAX_STOCK};
pub use orders::{NewOrder, OrderService};
pub use products::{NewProduct, ProductService};

/// The framework's services a storefront service uses.
#[derive(Clone)]
pub struct Cqrs {
    /// Publishing.
    pub commands: Arc<dyn CommandService>,
    /// Reading.
    pub data: Arc<dyn DataService>,
    /// Numbering.
    pub sequences: Arc<dyn SequenceService>,
}

impl Cqrs {
    /// All three from one engine.
    pub fn from_engine(engine: &cqrs_core::Engine) -> Self {
        Self {
            commands: Arc::new(engine.clone()),
            data: Arc::new(engine.clone()),
            sequences: Arc::new(engine.clone()),
        }
    }
}

/// A short random wait before retrying after a version conflict, so that
/// contending writers spread out.
pub(crate) async fn conflict_backoff(attempt: u32) {
    let ceiling_ms = 2u64 << attempt.min(6);
    tokio::time::sleep(std::time::Duration::from_millis(fastrand::u64(0..=ceiling_ms))).await;
}
