//! Stock: setting it, and reserving, releasing and deducting it for orders.
//!
//! Every change goes through the [stock desk](StockDesk): queued per tenant,
//! decided in batches on the counters read once per batch, and written in
//! one all-or-nothing commit per batch (the inventory records that changed,
//! plus one reservation entity per order). Concurrent orders of one product
//! therefore share commits instead of retrying each other's version
//! conflicts, and a restock waits for one batch.
//!
//! An inventory record keeps counters only (`quantity`, `reservedQuantity`);
//! what each order holds is its own entity, `RESERVATION#{orderCode}`
//! ([`ReservationAttributes`]), created at version 0 with the counters it
//! changes and moved to `released` or `deducted` with them again. Reserving,
//! releasing and deducting twice for the same order therefore change the
//! stock once, and no record grows with the number of open orders.

use std::collections::BTreeMap;

use cqrs_core::{tenant_pk, DataItem, DataServiceExt, EntityKey, InvocationContext, Services};
use serde::Deserialize;
use utoipa::ToSchema;

use super::stock_desk::{Done, End, Op, StockDesk};
use super::{access, validate};
use crate::domain::{inventory_sk, reservation_sk, ReservationAttributes};
use crate::error::{ShopError, ShopResult};

/// Tries of a batch of stock changes before giving up, when its commit
/// keeps conflicting with another process's (another replica, the stream
/// consumer, a Lambda): each try reads the records again and decides the
/// whole batch again. Within one process batches never conflict.
pub const MAX_ATTEMPTS: u32 = 40;

/// The most units on hand a product may have.
pub const MAX_STOCK: i64 = 1_000_000_000;

/// Sets the quantity on hand of a product.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({ "quantity": 100, "warehouseCode": "WH-TOKYO-01" }))]
pub struct SetInventory {
    /// Units on hand (not below the units reserved).
    #[serde(deserialize_with = "crate::json_integer::deserialize")]
    pub quantity: i64,
    /// Where the stock is.
    pub warehouse_code: String,
    /// The version the client last saw; checked when given.
    #[serde(default, deserialize_with = "crate::json_integer::option")]
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
    desk: StockDesk,
}

impl InventoryService {
    /// Over the given framework services, with a stock desk of its own
    /// (and of its clones).
    pub fn new(services: Services) -> Self {
        Self::with_desk(services, StockDesk::new())
    }

    /// Over the given framework services, queueing its changes on `desk`:
    /// give every inventory service of one engine the same desk (the HTTP
    /// API's and the order handler's), so that their changes share batches.
    pub fn with_desk(services: Services, desk: StockDesk) -> Self {
        Self { services, desk }
    }

    /// The desk its changes are queued on.
    pub fn desk(&self) -> &StockDesk {
        &self.desk
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

    /// An order's reservation, if its stock was ever reserved or refused
    /// (staff only; the order handler and the audits read it).
    pub async fn reservation(
        &self,
        order_code: &str,
        ctx: &InvocationContext,
    ) -> ShopResult<Option<ReservationAttributes>> {
        access::staff(ctx, "reading a reservation")?;
        validate::code("order code", order_code)?;
        let key = EntityKey::new(tenant_pk(&ctx.tenant_code), reservation_sk(order_code));
        let reservation = self.services.data.get_typed(&key, ctx).await?;
        Ok(reservation.map(|reservation| reservation.attributes))
    }

    /// Sets the quantity on hand (staff only) of a product of the catalogue,
    /// creating the record on first use. Queued with the tenant's other
    /// stock changes and applied in the next batch, before the reservations
    /// of that batch. With an expected
    /// version, the record must be at it (0: it must not exist yet), else it
    /// is a version conflict. Returns the record as the batch's commit left
    /// it (with the batch's reservations).
    pub async fn set(
        &self,
        product_code: &str,
        request: SetInventory,
        ctx: &InvocationContext,
    ) -> ShopResult<DataItem> {
        access::staff(ctx, "setting stock")?;
        validate::code("product code", product_code)?;
        validate::text("warehouseCode", &request.warehouse_code)?;
        validate::version(request.version)?;
        if !(0..=MAX_STOCK).contains(&request.quantity) {
            return Err(ShopError::InvalidInput(format!(
                "quantity must be 0 to {MAX_STOCK}, got {}",
                request.quantity
            )));
        }
        // The product's existence is checked by the batch, with its reads.
        let op = Op::Set {
            product_code: product_code.to_owned(),
            request,
        };
        match self.desk.submit(&self.services, op, ctx).await? {
            Done::Set(item) => Ok(*item),
            other => Err(unexpected(other)),
        }
    }

    /// Reserves `units` per product for `order_code`, all or nothing, and
    /// records the decision in the order's reservation: a second call for
    /// the same order answers the first one's outcome and changes nothing.
    /// Not a caller's operation: the order handler's, on the order's event,
    /// so it checks no role.
    pub async fn reserve(
        &self,
        order_code: &str,
        units: &BTreeMap<String, i64>,
        ctx: &InvocationContext,
    ) -> ShopResult<ReserveOutcome> {
        validate::code("order code", order_code)?;
        if let Some((product_code, n)) = units.iter().find(|(_, n)| **n < 1) {
            return Err(ShopError::InvalidInput(format!(
                "units of {product_code} must be at least 1, got {n}"
            )));
        }
        if units.is_empty() {
            return Ok(ReserveOutcome::Reserved);
        }
        let op = Op::Reserve {
            order_code: order_code.to_owned(),
            units: units.clone(),
        };
        match self.desk.submit(&self.services, op, ctx).await? {
            Done::Reserve(outcome) => Ok(outcome),
            other => Err(unexpected(other)),
        }
    }

    /// Gives back what `order_code` holds (nothing if it holds nothing:
    /// never reserved, refused, or released or deducted already).
    pub async fn release(&self, order_code: &str, ctx: &InvocationContext) -> ShopResult<()> {
        self.settle(order_code, End::Release, ctx).await
    }

    /// Takes what `order_code` holds out of stock (it was shipped); nothing
    /// if it holds nothing.
    pub async fn deduct(&self, order_code: &str, ctx: &InvocationContext) -> ShopResult<()> {
        self.settle(order_code, End::Deduct, ctx).await
    }

    async fn settle(&self, order_code: &str, end: End, ctx: &InvocationContext) -> ShopResult<()> {
        validate::code("order code", order_code)?;
        let op = Op::Settle {
            order_code: order_code.to_owned(),
            end,
        };
        match self.desk.submit(&self.services, op, ctx).await? {
            Done::Settled => Ok(()),
            other => Err(unexpected(other)),
        }
    }
}

/// An answer of the wrong kind: a bug of the desk.
fn unexpected(done: Done) -> ShopError {
    ShopError::Core(cqrs_core::Error::invalid(
        "stock desk",
        format!("answered {done:?} to another operation"),
    ))
}
