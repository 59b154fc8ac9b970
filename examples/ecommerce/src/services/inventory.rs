//! Stock: setting it, and reserving, releasing and deducting it for orders.
//!
//! Every change to several products is one all-or-nothing commit at the
//! versions just read; a version conflict means another writer got in
//! between, and the change is read and tried again, a bounded number of
//! times. Each inventory record keeps the units reserved per order, so
//! reserving, releasing and deducting twice for the same order changes the
//! stock once.

use std::collections::BTreeMap;

use chrono::Utc;
use cqrs_core::{tenant_pk, CommandInput, DataItem, EntityKey, ExpectedVersion, InvocationContext};
use futures::future::try_join_all;
use serde::Deserialize;
use utoipa::ToSchema;

use super::{access, conflict_backoff, validate, Cqrs, ProductService};
use crate::domain::{inventory_sk, InventoryAttributes};
use crate::error::{ShopError, ShopResult};

/// Attempts of a reservation (or release, or deduction) before giving up
/// under contention.
pub const MAX_ATTEMPTS: u32 = 40;

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
    cqrs: Cqrs,
    products: ProductService,
}

impl InventoryService {
    /// Over the given framework services.
    pub fn new(cqrs: Cqrs) -> Self {
        let products = ProductService::new(cqrs.clone());
        Self { cqrs, products }
    }

    fn key(ctx: &InvocationContext, product_code: &str) -> EntityKey {
        EntityKey::new(tenant_pk(&ctx.tenant_code), inventory_sk(product_code))
    }

    /// A product's inventory record (staff or customer).
    pub async fn get(&self, product_code: &str, ctx: &InvocationContext) -> ShopResult<DataItem> {
        access::shopper(ctx, "reading stock")?;
        validate::code("product code", product_code)?;
        self.cqrs
            .data
            .get_item(&Self::key(ctx, product_code), ctx)
            .await?
            .ok_or_else(|| ShopError::NotFound(format!("no inventory for product {product_code}")))
    }

    /// Sets the quantity on hand (staff only), creating the record on first use. Without
    /// an expected version a concurrent change is read and the update tried
    /// again; with one, it is a conflict.
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
        let attempts = if request.version.is_some() {
            1
        } else {
            MAX_ATTEMPTS
        };
        for attempt in 1..=attempts {
            let current = self.cqrs.data.get_item(&key, ctx).await?;
            let now = Utc::now();
            let command = match &current {
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
            let command = match request.version {
                Some(version) => command.version(ExpectedVersion::Exactly(version)),
                None => command,
            };
            match self.cqrs.commands.publish_sync(command, ctx).await {
                Ok(published) => return Ok(published.into_item()),
                Err(e) if e.is_conflict() && attempt < attempts => conflict_backoff(attempt).await,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ShopError::Conflict(format!(
            "inventory of {product_code} is changing too fast, retry"
        )))
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
        for attempt in 1..=MAX_ATTEMPTS {
            let records = self.read_all(units.keys(), ctx).await?;
            let mut commands = Vec::with_capacity(records.len());
            for (product_code, record) in &records {
                let requested = units.get(product_code).copied().unwrap_or(0);
                let Some((item, mut attributes)) = record.clone() else {
                    return Ok(ReserveOutcome::Insufficient {
                        product_code: product_code.clone(),
                        requested,
                        available: 0,
                    });
                };
                if attributes.reservations.contains_key(order_code) {
                    // An earlier delivery reserved it (commits are all or nothing).
                    return Ok(ReserveOutcome::Reserved);
                }
                if attributes.available() < requested {
                    return Ok(ReserveOutcome::Insufficient {
                        product_code: product_code.clone(),
                        requested,
                        available: attributes.available(),
                    });
                }
                attributes.reserved_quantity += requested;
                attributes.reservations.insert(order_code.to_owned(), requested);
                commands.push(CommandInput::update_of(&item).attributes_from(&attributes)?);
            }
            match self.cqrs.commands.commit(commands, ctx).await {
                Ok(_) => return Ok(ReserveOutcome::Reserved),
                Err(e) if e.is_conflict() => conflict_backoff(attempt).await,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ShopError::Conflict(format!(
            "stock for order {order_code} is contended, retry"
        )))
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
        change: impl Fn(&mut InventoryAttributes, i64),
    ) -> ShopResult<()> {
        for attempt in 1..=MAX_ATTEMPTS {
            let records = self.read_all(products.iter(), ctx).await?;
            let mut commands = Vec::new();
            for (_, record) in records {
                let Some((item, mut attributes)) = record else {
                    continue;
                };
                let Some(units) = attributes.reservations.remove(order_code) else {
                    continue;
                };
                change(&mut attributes, units);
                commands.push(CommandInput::update_of(&item).attributes_from(&attributes)?);
            }
            if commands.is_empty() {
                return Ok(());
            }
            match self.cqrs.commands.commit(commands, ctx).await {
                Ok(_) => return Ok(()),
                Err(e) if e.is_conflict() => conflict_backoff(attempt).await,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ShopError::Conflict(format!(
            "stock for order {order_code} is contended, retry"
        )))
    }

    /// The inventory record of each product, read concurrently.
    async fn read_all<'a>(
        &self,
        products: impl Iterator<Item = &'a String>,
        ctx: &InvocationContext,
    ) -> ShopResult<Vec<(String, Option<(DataItem, InventoryAttributes)>)>> {
        try_join_all(products.map(|code| async move {
            let item = self.cqrs.data.get_item(&Self::key(ctx, code), ctx).await?;
            let record = match item {
                Some(item) => {
                    let attributes = item.attributes_as()?;
                    Some((item, attributes))
                }
                None => None,
            };
            Ok::<_, ShopError>((code.clone(), record))
        }))
        .await
    }
}
