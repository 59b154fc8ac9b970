//! Stock: setting it, and reserving, releasing and deducting it for orders.
//!
//! Every change is one of the framework's read-modify-writes: setting the
//! quantity is [`Services::update`] of one record, and a change to several
//! products is [`Services::commit_with`], one all-or-nothing commit at the
//! versions just read. A version conflict means another writer got in
//! between; the framework then reads again and the change is decided again,
//! a bounded number of times. Each inventory record keeps the units reserved
//! per order, so reserving, releasing and deducting twice for the same order
//! changes the stock once.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use cqrs_core::{
    tenant_pk, CommandInput, DataItem, EntityKey, ExpectedVersion, InvocationContext, RetryPolicy, Services,
};
use serde::Deserialize;
use utoipa::ToSchema;

use super::{access, validate, ProductService};
use crate::domain::{inventory_sk, InventoryAttributes};
use crate::error::{ShopError, ShopResult};

/// Tries of a reservation (or release, or deduction, or a stock change
/// without a version) before giving up under contention.
pub const MAX_ATTEMPTS: u32 = 40;

/// The retries of stock changes after version conflicts: every order of a
/// product writes its inventory record, so they contend. [`MAX_ATTEMPTS`]
/// tries, each after a random wait below 4 ms, 8 ms, ... 128 ms.
fn contended() -> RetryPolicy {
    RetryPolicy {
        max_attempts: MAX_ATTEMPTS,
        initial_backoff: Duration::from_millis(4),
        max_backoff: Duration::from_millis(128),
    }
}

/// The most units on hand a product may have.
pub const MAX_STOCK: i64 = 1_000_000_000;

/// Sets the quantity on hand of a product.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SetInventory {
    /// Units on hand (not below the units reserved).
    pub quantity: i64,
    /// Where the stock is.
    pub warehouse_code: String,
    /// The version the client last saw; checked when given.
    #[serde(default)]
    pub version: Option<u64>,
}

/// How a reservation went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReserveOutcome {
    /// Every line is reserved (now, or by an earlier delivery of the same event).
    Reserved,
    /// A product has too little stock (or no inventory): nothing was reserved.
    Insufficient {
        /// The product.
        product_code: String,
        /// Units the order needs.
        requested: i64,
        /// Units available.
        available: i64,
    },
}

/// Reads and changes stock.
#[derive(Clone)]
pub struct InventoryService {
    services: Services,
    products: ProductService,
}

impl InventoryService {
    /// Over the given framework services.
    pub fn new(services: Services) -> Self {
        let products = ProductService::new(services.clone());
        Self { services, products }
    }

    /// The services, retrying conflicts as stock changes need ([`MAX_ATTEMPTS`]).
    fn contended(&self) -> Services {
        self.services.clone().with_conflict_retry(contended())
    }

    fn key(ctx: &InvocationContext, product_code: &str) -> EntityKey {
        EntityKey::new(tenant_pk(&ctx.tenant_code), inventory_sk(product_code))
    }

    /// A product's inventory record (staff or customer).
    pub async fn get(&self, product_code: &str, ctx: &InvocationContext) -> ShopResult<DataItem> {
        access::shopper(ctx, "reading stock")?;
        validate::code("product code", product_code)?;
        self.services
            .data
            .get_item(&Self::key(ctx, product_code), ctx)
            .await?
            .ok_or_else(|| ShopError::NotFound(format!("no inventory for product {product_code}")))
    }

    /// Sets the quantity on hand (staff only), creating the record on first
    /// use. Without an expected version a concurrent change is read and the
    /// update decided again ([`MAX_ATTEMPTS`] tries); with one, the record
    /// must be at it (0: it must not exist yet), else it is a version
    /// conflict.
    pub async fn set(
        &self,
        product_code: &str,
        request: SetInventory,
        ctx: &InvocationContext,
    ) -> ShopResult<DataItem> {
        access::staff(ctx, "setting stock")?;
        validate::code("product code", product_code)?;
        validate::text("warehouseCode", &request.warehouse_code)?;
        if !(0..=MAX_STOCK).contains(&request.quantity) {
            return Err(ShopError::InvalidInput(format!(
                "quantity must be 0 to {MAX_STOCK}, got {}",
                request.quantity
            )));
        }
        if self.products.attributes(product_code, ctx).await?.is_none() {
            return Err(ShopError::NotFound(format!("product {product_code} not found")));
        }
        let key = Self::key(ctx, product_code);
        let retry = match request.version {
            // The closure checks the client's version: reading again after
            // a conflict could only find it stale.
            Some(_) => RetryPolicy {
                max_attempts: 1,
                ..contended()
            },
            None => contended(),
        };
        let set = self
            .services
            .update(&key)
            .retry(retry)
            .publish_sync(ctx, |current: Option<&DataItem>| {
                let found = current.map(|item| item.version);
                if let Some(expected) = request.version.filter(|v| *v != found.unwrap_or(0)) {
                    return Err(ShopError::Core(cqrs_core::Error::Conflict {
                        key: key.id(),
                        expected: ExpectedVersion::Exactly(expected),
                        actual: found,
                    }));
                }
                let now = Utc::now();
                let command = match current {
                    None => {
                        let attributes = InventoryAttributes {
                            product_code: product_code.to_owned(),
                            quantity: request.quantity,
                            reserved_quantity: 0,
                            warehouse_code: request.warehouse_code.clone(),
                            last_restocked_at: now,
                            reservations: BTreeMap::new(),
                        };
                        CommandInput::new(&key.pk, &key.sk)
                            .name(format!("Inventory {product_code}"))
                            .attributes_from(&attributes)?
                    }
                    Some(item) => {
                        let mut attributes: InventoryAttributes = item.attributes_as()?;
                        if request.quantity < attributes.reserved_quantity {
                            return Err(ShopError::Conflict(format!(
                                "quantity {} is below the {} units reserved for open orders",
                                request.quantity, attributes.reserved_quantity
                            )));
                        }
                        attributes.quantity = request.quantity;
                        attributes.warehouse_code = request.warehouse_code.clone();
                        attributes.last_restocked_at = now;
                        CommandInput::update_of(item).attributes_from(&attributes)?
                    }
                };
                Ok(Some(command))
            })
            .await;
        match set {
            Ok(Some(published)) => Ok(published.into_item()),
            // The closure never skips.
            Ok(None) => Err(ShopError::NotFound(format!(
                "no inventory for product {product_code}"
            ))),
            Err(ShopError::Core(e)) if e.is_conflict() && request.version.is_none() => Err(
                ShopError::Conflict(format!("inventory of {product_code} is changing too fast, retry")),
            ),
            Err(e) => Err(e),
        }
    }

    /// Reserves `units` per product for `order_code`, all or nothing. Not a
    /// caller's operation: the order handler's, on the order's event, so it
    /// checks no role.
    pub async fn reserve(
        &self,
        order_code: &str,
        units: &BTreeMap<String, i64>,
        ctx: &InvocationContext,
    ) -> ShopResult<ReserveOutcome> {
        let keys: Vec<EntityKey> = units.keys().map(|code| Self::key(ctx, code)).collect();
        let mut outcome = ReserveOutcome::Reserved;
        let committed = self
            .contended()
            .commit_with(&keys, ctx, |records: &[Option<DataItem>]| {
                // Decided afresh on every read.
                outcome = ReserveOutcome::Reserved;
                let mut commands = Vec::with_capacity(records.len());
                for ((product_code, &requested), record) in units.iter().zip(records) {
                    let Some(item) = record else {
                        outcome = ReserveOutcome::Insufficient {
                            product_code: product_code.clone(),
                            requested,
                            available: 0,
                        };
                        return Ok(Vec::new());
                    };
                    let mut attributes: InventoryAttributes = item.attributes_as()?;
                    if attributes.reservations.contains_key(order_code) {
                        // An earlier delivery reserved it (commits are all or nothing).
                        return Ok(Vec::new());
                    }
                    if attributes.available() < requested {
                        outcome = ReserveOutcome::Insufficient {
                            product_code: product_code.clone(),
                            requested,
                            available: attributes.available(),
                        };
                        return Ok(Vec::new());
                    }
                    attributes.reserved_quantity += requested;
                    attributes.reservations.insert(order_code.to_owned(), requested);
                    commands.push(CommandInput::update_of(item).attributes_from(&attributes)?);
                }
                Ok::<_, ShopError>(commands)
            })
            .await;
        match committed {
            Ok(_) => Ok(outcome),
            Err(e) => Err(contended_for(order_code, e)),
        }
    }

    /// Gives back what `order_code` reserved (nothing if it reserved nothing).
    pub async fn release(
        &self,
        order_code: &str,
        products: &[String],
        ctx: &InvocationContext,
    ) -> ShopResult<()> {
        self.settle(order_code, products, ctx, |attributes, units| {
            attributes.reserved_quantity -= units;
        })
        .await
    }

    /// Takes what `order_code` reserved out of stock (it was shipped).
    pub async fn deduct(
        &self,
        order_code: &str,
        products: &[String],
        ctx: &InvocationContext,
    ) -> ShopResult<()> {
        self.settle(order_code, products, ctx, |attributes, units| {
            attributes.reserved_quantity -= units;
            attributes.quantity -= units;
        })
        .await
    }

    /// Ends `order_code`'s reservations with `change`, all or nothing; a
    /// product without a reservation of the order is left alone, which makes
    /// a second run a no-op.
    async fn settle(
        &self,
        order_code: &str,
        products: &[String],
        ctx: &InvocationContext,
        change: impl Fn(&mut InventoryAttributes, i64) + Send + Sync,
    ) -> ShopResult<()> {
        let keys: Vec<EntityKey> = products.iter().map(|code| Self::key(ctx, code)).collect();
        self.contended()
            .commit_with(&keys, ctx, |records: &[Option<DataItem>]| {
                let mut commands = Vec::new();
                for item in records.iter().flatten() {
                    let mut attributes: InventoryAttributes = item.attributes_as()?;
                    let Some(units) = attributes.reservations.remove(order_code) else {
                        continue;
                    };
                    change(&mut attributes, units);
                    commands.push(CommandInput::update_of(item).attributes_from(&attributes)?);
                }
                Ok::<_, ShopError>(commands)
            })
            .await
            .map(drop)
            .map_err(|e| contended_for(order_code, e))
    }
}

/// A conflict left after every try is the stock being contended: the
/// caller (the order handler's pipeline) may retry later.
fn contended_for(order_code: &str, error: ShopError) -> ShopError {
    match error {
        ShopError::Core(e) if e.is_conflict() => {
            ShopError::Conflict(format!("stock for order {order_code} is contended, retry"))
        }
        other => other,
    }
}
