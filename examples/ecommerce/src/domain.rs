//! The storefront's entities: keys, attributes and the order status machine.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::money;

/// Sort key of an order: `ORDER#ORD-000001`.
pub fn order_sk(code: &str) -> String {
    format!("ORDER#{code}")
}

/// Sort key of a product: `PRODUCT#PRD-001`.
pub fn product_sk(code: &str) -> String {
    format!("PRODUCT#{code}")
}

/// Sort key of a product's inventory: `INVENTORY#PRD-001`.
pub fn inventory_sk(product_code: &str) -> String {
    format!("INVENTORY#{product_code}")
}

/// Sort key of an order's stock reservation: `RESERVATION#ORD-000001`.
pub fn reservation_sk(order_code: &str) -> String {
    format!("RESERVATION#{order_code}")
}

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    /// Placed, not yet confirmed.
    Pending,
    /// Confirmed (its stock is reserved).
    Confirmed,
    /// Being prepared.
    Processing,
    /// Handed to the carrier.
    Shipped,
    /// Received by the customer.
    Delivered,
    /// Cancelled.
    Cancelled,
}

impl OrderStatus {
    /// The statuses an order may move to from this one (the seed's table).
    pub fn next(self) -> &'static [OrderStatus] {
        use OrderStatus::*;
        match self {
            Pending => &[Confirmed, Cancelled],
            Confirmed => &[Processing, Cancelled],
            Processing => &[Shipped, Cancelled],
            Shipped => &[Delivered],
            Delivered | Cancelled => &[],
        }
    }

    /// Whether `self → next` is allowed.
    pub fn can_become(self, next: OrderStatus) -> bool {
        self.next().contains(&next)
    }

    /// The lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Confirmed => "confirmed",
            OrderStatus::Processing => "processing",
            OrderStatus::Shipped => "shipped",
            OrderStatus::Delivered => "delivered",
            OrderStatus::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an order's stock reservation went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Reservation {
    /// Not yet attempted (the order's event is still in the pipeline).
    Pending,
    /// Every line is reserved.
    Reserved,
    /// Not enough stock (or no inventory record) for some line: nothing reserved.
    Failed,
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderItem {
    /// The product's code (`PRD-001`).
    pub product_code: String,
    /// The product's name, from the catalogue: what a client sends here is
    /// ignored (it may leave it out).
    #[serde(default)]
    pub name: String,
    /// Units, at least 1.
    #[serde(deserialize_with = "crate::json_integer::deserialize")]
    pub quantity: u32,
    /// Unit price; must equal the catalogue's.
    #[serde(with = "money::json")]
    #[schema(value_type = f64)]
    pub price: Decimal,
}

/// A shipping address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Address {
    /// Street and number.
    pub street: String,
    /// City.
    pub city: String,
    /// Postal code.
    pub postal_code: String,
    /// Country code.
    pub country: String,
}

/// An order's attributes, as in the seed, plus its reservation state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderAttributes {
    /// The customer.
    pub customer_id: String,
    /// The user who placed it (the token's `sub`): a customer reads, lists
    /// and cancels the orders of this field only.
    #[serde(default)]
    pub user_id: String,
    /// The lines.
    pub items: Vec<OrderItem>,
    /// Where it goes.
    pub shipping_address: Address,
    /// How it is paid.
    pub payment_method: String,
    /// Sum of the lines.
    #[serde(with = "money::json")]
    #[schema(value_type = f64)]
    pub subtotal: Decimal,
    /// 10 % of the subtotal, rounded half-up to cents.
    #[serde(with = "money::json")]
    #[schema(value_type = f64)]
    pub tax: Decimal,
    /// Subtotal plus tax.
    #[serde(with = "money::json")]
    #[schema(value_type = f64)]
    pub total: Decimal,
    /// Status.
    pub status: OrderStatus,
    /// When it was placed.
    pub placed_at: DateTime<Utc>,
    /// When it was shipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shipped_at: Option<DateTime<Utc>>,
    /// When it was delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<DateTime<Utc>>,
    /// How its stock reservation went.
    pub reservation: Reservation,
}

impl OrderAttributes {
    /// Units per product, lines of the same product added up.
    pub fn units_per_product(&self) -> BTreeMap<String, i64> {
        let mut units = BTreeMap::new();
        for item in &self.items {
            *units.entry(item.product_code.clone()).or_insert(0) += i64::from(item.quantity);
        }
        units
    }
}

/// A product of the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProductAttributes {
    /// Category.
    pub category_code: String,
    /// Stock keeping unit.
    pub sku: String,
    /// Unit price.
    #[serde(with = "money::json")]
    #[schema(value_type = f64)]
    pub price: Decimal,
    /// Currency code.
    pub currency: String,
    /// Description.
    pub description: String,
    /// Image URLs.
    pub images: Vec<String>,
    /// Whether it can be ordered.
    pub is_active: bool,
}

/// Stock of one product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InventoryAttributes {
    /// The product.
    pub product_code: String,
    /// Units on hand.
    pub quantity: i64,
    /// Units reserved by orders not yet shipped.
    pub reserved_quantity: i64,
    /// Where the stock is.
    pub warehouse_code: String,
    /// When the quantity on hand was last set.
    pub last_restocked_at: DateTime<Utc>,
}

impl InventoryAttributes {
    /// Units that can still be reserved.
    pub fn available(&self) -> i64 {
        self.quantity - self.reserved_quantity
    }
}

/// Where an order's stock reservation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReservationState {
    /// The units are held: counted in the products' `reservedQuantity`.
    Reserved,
    /// Not enough stock: nothing was held, and nothing ever will be for
    /// this order (a redelivered reservation answers the same).
    Failed,
    /// Given back (the order was cancelled).
    Released,
    /// Taken out of stock (the order was shipped).
    Deducted,
}

/// Why a reservation failed: the first line that did not fit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Shortfall {
    /// The product.
    pub product_code: String,
    /// Units the order needs.
    pub requested: i64,
    /// Units that were available.
    pub available: i64,
}

/// An order's stock reservation (`RESERVATION#{orderCode}`): one entity per
/// order, created at version 0 in the same all-or-nothing commit as the
/// inventory counters it changes, and moved on (released, deducted) in the
/// same commit as the counters again. Reserving, releasing and deducting
/// read it first, which makes each of them idempotent per order, while the
/// inventory records keep counters only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReservationAttributes {
    /// The order.
    pub order_code: String,
    /// Units per product the order asked for (held while `reserved`).
    pub units: BTreeMap<String, i64>,
    /// Where it is.
    pub state: ReservationState,
    /// Why it failed (`failed` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shortfall: Option<Shortfall>,
}

#[cfg(test)]
mod tests {
    use super::OrderStatus::*;

    #[test]
    fn the_seed_status_machine() {
        let all = [Pending, Confirmed, Processing, Shipped, Delivered, Cancelled];
        let allowed = [
            (Pending, Confirmed),
            (Pending, Cancelled),
            (Confirmed, Processing),
            (Confirmed, Cancelled),
            (Processing, Shipped),
            (Processing, Cancelled),
            (Shipped, Delivered),
        ];
        for from in all {
            for to in all {
                assert_eq!(
                    from.can_become(to),
                    allowed.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
    }
}
