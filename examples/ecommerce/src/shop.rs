//! The storefront wired together: the engine with its handler, the services,
//! the notifier, on either backend.

use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDate;
use cqrs_core::{AsyncDispatch, DataSyncHandler, Engine, InvocationContext, Storage, TenancyPolicy};
use rust_decimal::Decimal;

use crate::error::{ShopError, ShopResult};
use crate::notify::{ClaimingNotifier, OutboxNotifier};
use crate::read_models::{OrderSearchPage, OrderSearchQuery, ReadModels, SalesRow};
use crate::services::{
    access, order_indexes, InventoryService, NewProduct, OrderService, ProductService, SetInventory,
    StockDesk,
};
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
    /// The relay's transport: the notifications this process sent, for
    /// tests and the demo.
    pub notifier: Arc<OutboxNotifier>,
    /// Notifications claimed in the tables (the outbox), by every process.
    pub notifications: ClaimingNotifier,
    /// The sales report and the order search, when this shop has a
    /// read-model database: their projectors are then handlers of the
    /// engine. Without them, reading them is a 503 `read_models_unavailable`.
    pub read_models: Option<ReadModels>,
}

/// Wraps a handler before it is registered (see [`ShopParts::wrap_handler`]).
pub type HandlerWrapper = Arc<dyn Fn(Arc<dyn DataSyncHandler>) -> Arc<dyn DataSyncHandler> + Send + Sync>;

/// What a [`Shop`] is built with besides its storage and pipeline settings
/// ([`Shop::with_parts`]); each part left out gets its default.
#[derive(Default)]
pub struct ShopParts {
    /// Where the outbox relay sends notifications; by default a notifier
    /// of the shop's own. Shops sharing one see each other's sends, as a
    /// shared mail service would.
    pub notifier: Option<Arc<OutboxNotifier>>,
    /// The read models, connected over the same storage.
    pub read_models: Option<ReadModels>,
    /// Wraps the order handler and the outbox relay before they are
    /// registered (a test's fault-injecting decorator).
    pub wrap_handler: Option<HandlerWrapper>,
    /// More handlers, registered after the shop's own as they are.
    pub handlers: Vec<Arc<dyn DataSyncHandler>>,
}

/// How a [`Shop`]'s engine runs its pipeline.
#[derive(Debug, Clone)]
pub struct ShopConfig {
    /// Who applies async commands: this process (`InProcess`, the memory
    /// backend's pipeline) or a stream consumer (`External`, DynamoDB).
    pub dispatch: AsyncDispatch,
    /// Longest run of the order handler before it counts as failed.
    pub handler_timeout: Duration,
    /// How long an unfinished sync publish is left at most to a publisher
    /// that is alive before the stream consumer finishes it.
    pub recovery_grace: Duration,
    /// How long this process's publisher heartbeat lasts without renewal:
    /// once it has died, its unfinished sync publishes are finished by the
    /// stream within about this.
    pub publisher_lease: Duration,
}

/// The order handler's default timeout: its reservations wait for their
/// turn on the stock desk, and a desk's batch retries its commit when
/// another process conflicts with it (up to 40 rounds), which on a slow or
/// busy DynamoDB can take longer than the framework's default of 10 s.
pub const HANDLER_TIMEOUT: Duration = Duration::from_secs(60);

impl Default for ShopConfig {
    fn default() -> Self {
        Self {
            dispatch: AsyncDispatch::InProcess,
            handler_timeout: HANDLER_TIMEOUT,
            recovery_grace: cqrs_core::DEFAULT_RECOVERY_GRACE,
            publisher_lease: cqrs_core::DEFAULT_PUBLISHER_LEASE,
        }
    }
}

impl Shop {
    /// A shop over `storage`, its async commands applied in this process.
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        Self::with_config(storage, ShopConfig::default())
    }

    /// A shop over `storage`, its pipeline as `config` says.
    pub fn with_config(storage: Arc<dyn Storage>, config: ShopConfig) -> Self {
        Self::with_read_models(storage, config, None)
    }

    /// A shop over `storage`, its pipeline as `config` says, keeping
    /// `read_models` (connected over the same `storage`) when given: their
    /// projectors are registered as handlers of the engine.
    pub fn with_read_models(
        storage: Arc<dyn Storage>,
        config: ShopConfig,
        read_models: Option<ReadModels>,
    ) -> Self {
        let parts = ShopParts {
            read_models,
            ..ShopParts::default()
        };
        Self::with_parts(storage, config, parts)
    }

    /// A shop over `storage`, its pipeline as `config` says, with `parts`
    /// given from outside: what tests and simulations replace.
    pub fn with_parts(storage: Arc<dyn Storage>, config: ShopConfig, parts: ShopParts) -> Self {
        let ShopParts {
            notifier,
            read_models,
            wrap_handler,
            handlers,
        } = parts;
        let notifier = notifier.unwrap_or_default();
        let transport = notifier.clone();
        let wrap = move |handler: Arc<dyn DataSyncHandler>| match &wrap_handler {
            Some(wrap) => wrap(handler),
            None => handler,
        };
        let wrap_relay = wrap.clone();
        // A storefront has no shared tenant and no cross-tenant role. The
        // handlers get the services of the engine they are registered on (held
        // weakly by the framework: no cycle keeps the engine alive). The order
        // handler claims notifications in the outbox; its relay sends them. The
        // handler's reservations and the API's restocks queue on one stock
        // desk (it holds no services: no cycle either).
        let desk = StockDesk::new();
        let handler_desk = desk.clone();
        let mut builder = Engine::builder(storage)
            .tenancy(TenancyPolicy::strict())
            .dispatch(config.dispatch)
            .handler_timeout(config.handler_timeout)
            .recovery_grace(config.recovery_grace)
            .publisher_lease(config.publisher_lease)
            .indexes(order_indexes())
            .handler_with(move |services| {
                wrap(Arc::new(OrderSyncHandler::with_desk(
                    services.clone(),
                    handler_desk,
                )))
            })
            .handler_with(move |services| {
                wrap_relay(Arc::new(ClaimingNotifier::relay(services.clone(), transport)))
            });
        for handler in read_models
            .iter()
            .flat_map(ReadModels::projectors)
            .chain(handlers)
        {
            builder = builder.handler_arc(handler);
        }
        let engine = builder.build();
        let services = engine.services();
        Self {
            products: ProductService::new(services.clone()),
            inventory: InventoryService::with_desk(services.clone(), desk),
            orders: OrderService::new(services.clone()),
            notifications: ClaimingNotifier::new(services),
            engine,
            notifier,
            read_models,
        }
    }

    /// A shop on the in-memory backend.
    pub fn in_memory() -> Self {
        Self::new(Arc::new(cqrs_memory::InMemory::new()))
    }

    /// A shop on the in-memory backend with its read models in an
    /// in-memory SQLite database.
    pub async fn in_memory_with_read_models() -> ShopResult<Self> {
        let storage: Arc<dyn Storage> = Arc::new(cqrs_memory::InMemory::new());
        let read_models = ReadModels::connect("sqlite::memory:", Arc::clone(&storage)).await?;
        Ok(Self::with_read_models(
            storage,
            ShopConfig::default(),
            Some(read_models),
        ))
    }

    /// The read models, or 503 `read_models_unavailable`.
    fn read_models(&self) -> ShopResult<&ReadModels> {
        self.read_models.as_ref().ok_or(ShopError::ReadModelsUnavailable)
    }

    /// The sales report of the caller's shop from `from` to `to` (UTC days,
    /// both included). Staff only.
    pub async fn sales_report(
        &self,
        from: NaiveDate,
        to: NaiveDate,
        ctx: &InvocationContext,
    ) -> ShopResult<Vec<SalesRow>> {
        access::staff(ctx, "the sales report")?;
        // Bad input is a 400 whether or not the read models are there.
        crate::read_models::check_report_days(from, to)?;
        self.read_models()?.sales(&ctx.tenant_code, from, to).await
    }

    /// Searches the caller's shop's orders: staff find every order, a
    /// customer only the orders they placed.
    pub async fn search_orders(
        &self,
        query: &OrderSearchQuery,
        ctx: &InvocationContext,
    ) -> ShopResult<OrderSearchPage> {
        access::shopper(ctx, "searching orders")?;
        crate::read_models::check_search(query)?;
        let only_user = (!access::is_staff(ctx)).then_some(ctx.user_id.as_str());
        self.read_models()?
            .search(&ctx.tenant_code, query, only_user)
            .await
    }

    /// Seeds the demo catalogue of a tenant: three products with stock.
    /// Products and stock that exist already are left as they are, so that
    /// replicas started together on fresh tables can all seed: whichever
    /// creates a record first wins, the others find it there.
    pub async fn seed_demo(&self, tenant: &str) -> ShopResult<()> {
        let ctx = InvocationContext::new(tenant, "seed").with_roles([crate::services::access::STAFF]);
        let catalogue = [
            ("PRD-001", "Wireless Mouse", Decimal::new(2999, 2), 100),
            ("PRD-002", "Mechanical Keyboard", Decimal::new(8950, 2), 50),
            ("PRD-003", "USB-C Cable", Decimal::new(999, 2), 10),
        ];
        for (code, name, price, stock) in catalogue {
            if self.products.attributes(code, &ctx).await?.is_none() {
                let product = NewProduct {
                    code: code.to_owned(),
                    name: name.to_owned(),
                    category_code: "ACCESSORIES".to_owned(),
                    sku: format!("SKU-{code}"),
                    price,
                    currency: "USD".to_owned(),
                    description: format!("{name} for {tenant}"),
                    images: Vec::new(),
                    is_active: true,
                };
                exists_already_is_fine(self.products.create(product, &ctx).await.map(drop))?;
            }
            let stock = SetInventory {
                quantity: stock,
                warehouse_code: "WH-1".to_owned(),
                // Created, never overwritten: a restock is someone's decision.
                version: Some(0),
            };
            exists_already_is_fine(self.inventory.set(code, stock, &ctx).await.map(drop))?;
        }
        Ok(())
    }
}

/// A creation that lost to another writer created the same record.
fn exists_already_is_fine(created: ShopResult<()>) -> ShopResult<()> {
    match created {
        Err(ShopError::Conflict(_)) => Ok(()),
        Err(ShopError::Core(e)) if e.is_conflict() => Ok(()),
        other => other,
    }
}

/// `names` with the indexes the shop reads (the order listing's) on the data
/// table: the tables a shop on DynamoDB needs.
pub fn dynamodb_tables(names: cqrs_dynamodb::TableNames) -> cqrs_dynamodb::TableNames {
    names.with_indexes(order_indexes().map(|index| index.name().to_owned()))
}
