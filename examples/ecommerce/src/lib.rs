//! The e-commerce example of the `cqrs` framework: the storefront of the
//! seed page (orders, products, inventory, multi-tenant shops, event-driven
//! processing) as a library, served over HTTP by the `ecommerce` example.

#![deny(missing_docs)]

pub mod auth;
pub mod demo;
pub mod domain;
pub mod error;
pub mod http;
pub mod money;
pub mod notify;
pub mod services;
pub mod shop;
pub mod sync;

pub use error::{ShopError, ShopResult};
pub use shop::Shop;
