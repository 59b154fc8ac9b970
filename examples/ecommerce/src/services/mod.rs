//! The storefront's services, over the framework's [`Services`](cqrs_core::Services)
//! (`Arc<dyn …>` inside), so that unit tests can hand them mocks
//! (`Services::new(Arc::new(mock), …)`).

pub mod access;
mod inventory;
mod orders;
mod products;
mod stock_desk;
mod typed;
pub mod validate;

pub use validate::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, MIN_PAGE_SIZE};

pub use inventory::{InventoryService, ReserveOutcome, SetInventory, MAX_ATTEMPTS, MAX_STOCK};
pub use orders::{
    order_indexes, NewOrder, OrderService, Placed, MAX_LINES, MAX_QUANTITY, MIN_QUANTITY, ORDERS_BY_CUSTOMER,
    ORDERS_BY_STATUS,
};
pub use products::{NewProduct, ProductService, MAX_IMAGES};
pub use stock_desk::{DeskStats, StockDesk, DESK_USER, MAX_COMMANDS_PER_COMMIT};
