//! Orders: placing them at catalogue prices, reading them, moving their status.

use std::collections::BTreeMap;

use chrono::Utc;
use cqrs_core::{
    tenant_pk, CommandInput, CommandRecord, Cursor, DataItem, EntityKey, ExpectedVersion, Filter,
    InvocationContext, ListQuery, Page, SequenceRequest, SkCondition,
};
use serde::Deserialize;
use utoipa::ToSchema;

use super::{access, conflict_backoff, validate, Cqrs, ProductService};
use crate::domain::{order_sk, Address, OrderAttributes, OrderItem, OrderStatus, Reservation};
use crate::error::{ShopError, ShopResult};
use crate::money::totals;

/// Lines an order may have.
pub const MAX_LINES: usize = 100;
/// Units a line may have.
pub const MAX_QUANTITY: u32 = 10_000;
/// Tries of a status change without an expected version.
const STATUS_ATTEMPTS: u32 = 5;

/// An order to place, as in the seed's request.
#[derive(Debug, Clone, PartialEq, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewOrder {
    /// The customer.
    pub customer_id: String,
    /// The lines, at catalogue prices. A line's `name` is the catalogue's:
    /// one sent by the client is ignored.
    pub items: Vec<OrderItem>,
    /// Where it goes.
    pub shipping_address: Address,
    /// How it is paid.
    pub payment_method: String,
}

/// Places, reads and moves orders.
#[derive(Clone)]
pub struct OrderService {
    cqrs: Cqrs,
    products: ProductService,
}

impl OrderService {
    /// Over the given framework services.
    pub fn new(cqrs: Cqrs) -> Self {
        let products = ProductService::new(cqrs.clone());
        Self { cqrs, products }
    }

    fn key(ctx: &InvocationContext, code: &str) -> EntityKey {
        EntityKey::new(tenant_pk(&ctx.tenant_code), order_sk(code))
    }

    /// Places an order: checks every line against the catalogue, numbers it
    /// (`ORD-000001`), computes the totals and publishes it asynchronously;
    /// the data-sync handler then reserves its stock. Staff or customer; the
    /// order records the caller (`userId`, the token's `sub`).
    pub async fn create(&self, order: NewOrder, ctx: &InvocationContext) -> ShopResult<CommandRecord> {
        access::shopper(ctx, "placing an order")?;
        validate::text("customerId", &order.customer_id)?;
        validate::text("paymentMethod", &order.payment_method)?;
        let address = &order.shipping_address;
        for (what, value) in [
            ("shippingAddress.street", &address.street),
            ("shippingAddress.city", &address.city),
            ("shippingAddress.postalCode", &address.postal_code),
            ("shippingAddress.country", &address.country),
        ] {
            validate::text(what, value)?;
        }
        if order.items.is_empty() || order.items.len() > MAX_LINES {
            return Err(ShopError::InvalidInput(format!(
                "an order has 1 to {MAX_LINES} items"
            )));
        }
        let mut order = order;
        let mut catalogue = BTreeMap::new();
        for item in &mut order.items {
            validate::code("productCode", &item.product_code)?;
            if !(1..=MAX_QUANTITY).contains(&item.quantity) {
                return Err(ShopError::InvalidInput(format!(
                    "quantity of {} must be 1 to {MAX_QUANTITY}, got {}",
                    item.product_code, item.quantity
                )));
            }
            if !catalogue.contains_key(&item.product_code) {
                let product = self.products.find(&item.product_code, ctx).await?;
                catalogue.insert(item.product_code.clone(), product);
            }
            match catalogue.get(&item.product_code).and_then(Option::as_ref) {
                None => {
                    return Err(ShopError::InvalidInput(format!(
                        "unknown product {}",
                        item.product_code
                    )));
                }
                Some((_, product)) if !product.is_active => {
                    return Err(ShopError::InvalidInput(format!(
                        "product {} is not for sale",
                        item.product_code
                    )));
                }
                Some((_, product)) if product.price != item.price => {
                    return Err(ShopError::InvalidInput(format!(
                        "price of {} is {}, not {}",
                        item.product_code, product.price, item.price
                    )));
                }
                // The line's name is the catalogue's, whatever the client sent.
                Some((name, _)) => item.name = name.clone(),
            }
        }
        // Checked: a catalogue price too large to add up is a 400, not a panic.
        let totals = totals(order.items.iter().map(|i| (i.price, i.quantity)))?;
        let number = self
            .cqrs
            .sequences
            .next(&SequenceRequest::new("ORDER").format("ORD-{no:06}"), ctx)
            .await?;
        let code = number.formatted;
        let attributes = OrderAttributes {
            customer_id: order.customer_id,
            user_id: ctx.user_id.clone(),
            items: order.items,
            shipping_address: order.shipping_address,
            payment_method: order.payment_method,
            subtotal: totals.subtotal,
            tax: totals.tax,
            total: totals.total,
            status: OrderStatus::Pending,
            placed_at: Utc::now(),
            shipped_at: None,
            delivered_at: None,
            reservation: Reservation::Pending,
        };
        let command = CommandInput::new(tenant_pk(&ctx.tenant_code), order_sk(&code))
            .name(format!("Order {code}"))
            .attributes_from(&attributes)?;
        Ok(self.cqrs.commands.publish_async(command, ctx).await?.into_inner())
    }

    /// An order: staff read any, a customer only their own (another's
    /// reads as missing).
    pub async fn get(&self, code: &str, ctx: &InvocationContext) -> ShopResult<DataItem> {
        access::shopper(ctx, "reading an order")?;
        validate::code("order code", code)?;
        let not_found = || ShopError::NotFound(format!("order {code} not found"));
        let item = self
            .cqrs
            .data
            .get_item(&Self::key(ctx, code), ctx)
            .await?
            .ok_or_else(not_found)?;
        if access::is_staff(ctx)
            || item.attributes.get("userId").and_then(|u| u.as_str()) == Some(&ctx.user_id)
        {
            Ok(item)
        } else {
            Err(not_found())
        }
    }

    /// A page of orders, optionally of one status: staff see every order of
    /// the shop, a customer only their own.
    pub async fn list(
        &self,
        status: Option<OrderStatus>,
        limit: Option<usize>,
        cursor: Option<String>,
        ctx: &InvocationContext,
    ) -> ShopResult<Page<DataItem>> {
        access::shopper(ctx, "listing orders")?;
        let mut query = ListQuery::new()
            .sk(SkCondition::BeginsWith("ORDER#".into()))
            .limit(validate::limit(limit)?)
            .after(cursor.map(Cursor::from));
        if !access::is_staff(ctx) {
            query = query.filter(Filter::eq("attributes.userId", ctx.user_id.as_str()));
        }
        if let Some(status) = status {
            query = query.filter(Filter::eq("attributes.status", status.as_str()));
        }
        Ok(self
            .cqrs
            .data
            .list_items(&tenant_pk(&ctx.tenant_code), query, ctx)
            .await?)
    }

    /// Moves an order to `next`, as the seed's status machine allows. With
    /// `version`, the order must be at it; without, a concurrent change is
    /// read and the move checked and tried again. Staff make any move; a
    /// customer may only cancel their own order.
    pub async fn update_status(
        &self,
        code: &str,
        next: OrderStatus,
        version: Option<u64>,
        ctx: &InvocationContext,
    ) -> ShopResult<DataItem> {
        access::shopper(ctx, "changing an order's status")?;
        if !access::is_staff(ctx) && next != OrderStatus::Cancelled {
            return Err(ShopError::Forbidden(format!(
                "moving an order to {next} needs the role {}",
                access::STAFF
            )));
        }
        let attempts = if version.is_some() { 1 } else { STATUS_ATTEMPTS };
        for attempt in 1..=attempts {
            let current = self.get(code, ctx).await?;
            if let Some(expected) = version.filter(|v| *v != current.version) {
                return Err(cqrs_core::Error::Conflict {
                    key: current.id,
                    expected: ExpectedVersion::Exactly(expected),
                    actual: Some(current.version),
                }
                .into());
            }
            let mut attributes: OrderAttributes = current.attributes_as()?;
            if !attributes.status.can_become(next) {
                return Err(ShopError::InvalidTransition {
                    from: attributes.status,
                    to: next,
                });
            }
            if next == OrderStatus::Confirmed && attributes.reservation != Reservation::Reserved {
                return Err(ShopError::Conflict(format!(
                    "order {code} cannot be confirmed: its stock reservation is {}",
                    serde_json::to_value(attributes.reservation)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default()
                )));
            }
            attributes.status = next;
            match next {
                OrderStatus::Shipped => attributes.shipped_at = Some(Utc::now()),
                OrderStatus::Delivered => attributes.delivered_at = Some(Utc::now()),
                _ => {}
            }
            let expected = ExpectedVersion::Exactly(version.unwrap_or(current.version));
            let command = CommandInput::update_of(&current)
                .version(expected)
                .attributes_from(&attributes)?;
            match self.cqrs.commands.publish_sync(command, ctx).await {
                Ok(published) => return Ok(published.into_item()),
                Err(e) if e.is_conflict() && attempt < attempts => conflict_backoff(attempt).await,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ShopError::Conflict(format!(
            "order {code} is changing too fast, retry"
        )))
    }
}
