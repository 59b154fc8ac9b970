//! The storefront wired together: the engine with its handler, the services,
//! the notifier, on either backend.

use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use cqrs_core::{Engine, InvocationContext, Storage, TenancyPolicy};
use rust_decimal::Decimal;

use crate::error::ShopResult;
use crate::notify::OutboxNotifier;
use crate::services::{Cqrs, InventoryService, NewProduct, OrderService, ProductService, SetInventory};
use crate::sync::OrderSyncHandler;

/// The demo tenants.
pub const DEMO_TENANTS: [&str; 2] = ["shop-a", "shop-b"];

/// Everything the HTTP API and the demo use.
#[derive(Clone)]
pub struct Shop {
    /// The engine (for `wait_idle` and direct access).
    pub engine: Engine,
    /// The catalogue.
    pub products: ProductService,
    /// Stock.
    pub inventory: InventoryService,
    /// Orders.
    pub orders: OrderService,
    /// Notifications sent, for tests and the demo.
    pub notifier: Arc<OutboxNotifier>,
}

impl Shop {
    /// A shop over `storage`, its async commands applied in this process.
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        let services = Arc::new(OnceLock::new());
        let notifier = Arc::new(OutboxNotifier::new());
        // A storefront has no shared tenant and no cross-tenant role.
        let engine = Engine::builder(storage)
            .tenancy(TenancyPolicy::strict())
            .handler(OrderSyncHandler::new(services.clone(), notifier.clone()))
            .build();
        let cqrs = Cqrs::from_engine(&engine);
        // The handler reaches the services through the engine built with it.
        let _ = services.set(cqrs.clone());
        Self {
            products: ProductService::new(cqrs.clone()),
            inventory: InventoryService::new(cqrs.clone()),
            orders: OrderService::new(cqrs),
            engine,
            notifier,
        }
    }

    /// A shop on the in-memory backend.
    pub fn in_memory() -> Self {
        Self::new(Arc::new(cqrs_memory::InMemory::new()))
    }

    /// Seeds the demo catalogue of a tenant: three products with stock.
    /// Products that exist already are left as they are.
    pub async fn seed_demo(&self, tenant: &str) -> ShopResult<()> {
        let ctx = InvocationContext::new(tenant, "seed");
        let catalogue = [
            ("PRD-001", "Wireless Mouse", "29.99", 100),
            ("PRD-002", "Mechanical Keyboard", "89.50", 50),
            ("PRD-003", "USB-C Cable", "9.99", 10),
        ];
        for (code, name, price, stock) in catalogue {
            if self.products.attributes(code, &ctx).await?.is_none() {
                let product = NewProduct {
                    code: code.to_owned(),
                    name: name.to_owned(),
                    category_code: "ACCESSORIES".to_owned(),
                    sku: format!("SKU-{code}"),
                    price: Decimal::from_str(price).unwrap_or_default(),
                    currency: "USD".to_owned(),
                    description: format!("{name} for {tenant}"),
                    images: Vec::new(),
                    is_active: true,
                };
                self.products.create(product, &ctx).await?;
                let stock = SetInventory {
                    quantity: stock,
                    warehouse_code: "WH-1".to_owned(),
                    version: None,
                };
                self.inventory.set(code, stock, &ctx).await?;
            }
        }
        Ok(())
    }
}
