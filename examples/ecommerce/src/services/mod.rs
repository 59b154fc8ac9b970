//! The storefront's services, over the framework's [`Services`](cqrs_core::Services)
//! (`Arc<dyn …>` inside), so that unit tests can hand them mocks
//! (`Services::new(Arc::new(mock), …)`).

pub mod access;
mod inventory;
mod orders;
mod products;
mod validate;

pub use inventory::{InventoryService, ReserveOutcome, SetInventory, MAX_ATTEMPTS, MAX_STOCK};
pub use orders::{order_indexes, NewOrder, OrderService, Placed, ORDERS_BY_CUSTOMER, ORDERS_BY_STATUS};
pub use products::{NewProduct, ProductService};
