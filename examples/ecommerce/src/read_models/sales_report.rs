//! The sales report: units and revenue per shop, day and product, orders
//! cancelled or deleted taken out.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use cqrs_core::projection::{Change, Projection};
use cqrs_core::{BoxError, Interest};
use cqrs_sql::sqlx::Any;
use cqrs_sql::SqlTx;
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::{OrderAttributes, OrderStatus};
use crate::money;

/// The report's table (readers query this view of the live generation).
pub const SALES_TABLE: &str = "sales_daily";

/// The projection's name: it keys its checkpoints and generations.
pub const SALES_PROJECTION: &str = "sales-report";

/// Units and revenue per (tenant, day, product): the day is the UTC date
/// the order was created, so an order stays on its day whatever happens
/// to it later.
///
/// `apply` takes out what the order contributed as the report last saw it
/// and adds what it contributes now, netted per row: a cancellation (or a
/// deletion) takes the order out once, a redelivery changes nothing (the
/// projector skips it).
#[derive(Debug, Clone, Copy, Default)]
pub struct SalesReport;

/// What one order adds to one row of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contribution {
    /// The UTC day the order was created.
    pub day: NaiveDate,
    /// The product.
    pub product_code: String,
    /// Units ordered.
    pub units: i64,
    /// Quantity × unit price, in cents.
    pub revenue_cents: i64,
}

/// What an order created at `created_at` contributes to the report: per
/// product (lines of one product added up), its units and revenue on the
/// day of `created_at` (UTC); nothing when it is cancelled. Fails when the
/// amounts do not fit 64-bit cents.
pub fn contributions(
    order: &OrderAttributes,
    created_at: DateTime<Utc>,
) -> Result<Vec<Contribution>, BoxError> {
    if order.status == OrderStatus::Cancelled {
        return Ok(Vec::new());
    }
    let day = created_at.date_naive();
    let mut per_product: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    for item in &order.items {
        let units = i64::from(item.quantity);
        let revenue = cents(item.price)?
            .checked_mul(units)
            .ok_or("an order line's revenue does not fit 64-bit cents")?;
        let row = per_product.entry(&item.product_code).or_default();
        row.0 += units;
        row.1 = row
            .1
            .checked_add(revenue)
            .ok_or("an order's revenue does not fit 64-bit cents")?;
    }
    Ok(per_product
        .into_iter()
        .map(|(product_code, (units, revenue_cents))| Contribution {
            day,
            product_code: product_code.to_owned(),
            units,
            revenue_cents,
        })
        .collect())
}

/// An amount in whole cents (rounded half away from zero, as prices are).
pub(crate) fn cents(amount: Decimal) -> Result<i64, BoxError> {
    (money::to_cents(amount) * Decimal::ONE_HUNDRED)
        .to_i64()
        .ok_or_else(|| format!("{amount} does not fit 64-bit cents").into())
}

/// Cents as an amount with two decimals.
pub(crate) fn from_cents(cents: i64) -> Decimal {
    Decimal::new(cents, 2)
}

/// The change a change of an order makes to each row: what the new state
/// contributes minus what the old one did, rows that do not move left out.
pub(crate) fn net_change(change: &Change<OrderAttributes>) -> Result<Vec<Contribution>, BoxError> {
    let mut rows: BTreeMap<(NaiveDate, String), (i64, i64)> = BTreeMap::new();
    let old = match (change.old_state(), change.old.as_ref()) {
        (Some(order), Some(typed)) => contributions(order, typed.item.created_at)?,
        _ => Vec::new(),
    };
    let new = match change.new_state() {
        Some(order) => contributions(order, change.new.item.created_at)?,
        None => Vec::new(),
    };
    for (sign, contribution) in old
        .into_iter()
        .map(|c| (-1, c))
        .chain(new.into_iter().map(|c| (1, c)))
    {
        let row = rows
            .entry((contribution.day, contribution.product_code))
            .or_default();
        row.0 += sign * contribution.units;
        row.1 += sign * contribution.revenue_cents;
    }
    Ok(rows
        .into_iter()
        .filter(|(_, delta)| *delta != (0, 0))
        .map(|((day, product_code), (units, revenue_cents))| Contribution {
            day,
            product_code,
            units,
            revenue_cents,
        })
        .collect())
}

#[async_trait]
impl Projection<SqlTx<Any>> for SalesReport {
    type State = OrderAttributes;

    fn name(&self) -> &str {
        SALES_PROJECTION
    }

    fn interest(&self) -> Interest {
        Interest::SkPrefix("ORDER#".into())
    }

    fn tables(&self) -> Vec<String> {
        vec![SALES_TABLE.to_owned()]
    }

    async fn create(&self, tx: &mut SqlTx<Any>) -> Result<(), BoxError> {
        let table = tx.table(SALES_TABLE)?;
        cqrs_sql::sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS {table} (\
               tenant TEXT NOT NULL, day TEXT NOT NULL, product_code TEXT NOT NULL, \
               units BIGINT NOT NULL, revenue_cents BIGINT NOT NULL, \
               PRIMARY KEY (tenant, day, product_code))"
        ))
        .execute(tx.conn())
        .await?;
        Ok(())
    }

    async fn apply(&self, tx: &mut SqlTx<Any>, change: &Change<OrderAttributes>) -> Result<(), BoxError> {
        let table = tx.table(SALES_TABLE)?;
        let upsert = format!(
            "INSERT INTO {table} (tenant, day, product_code, units, revenue_cents) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (tenant, day, product_code) DO UPDATE SET \
               units = {table}.units + excluded.units, \
               revenue_cents = {table}.revenue_cents + excluded.revenue_cents"
        );
        for row in net_change(change)? {
            cqrs_sql::sqlx::query(&upsert)
                .bind(change.tenant().to_owned())
                .bind(day_text(row.day))
                .bind(row.product_code)
                .bind(row.units)
                .bind(row.revenue_cents)
                .execute(tx.conn())
                .await?;
        }
        Ok(())
    }
}

/// A day as stored: `YYYY-MM-DD`, which sorts as the days do.
pub(crate) fn day_text(day: NaiveDate) -> String {
    day.format("%Y-%m-%d").to_string()
}

/// One row of the sales report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SalesRow {
    /// The UTC day the orders were created.
    pub day: NaiveDate,
    /// The product.
    pub product_code: String,
    /// Units ordered that day, cancelled orders not counted.
    pub units: i64,
    /// Quantity × unit price of those units (before tax).
    #[serde(with = "money::json")]
    #[schema(value_type = f64)]
    pub revenue: Decimal,
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::domain::{Address, OrderItem, Reservation};

    fn order(lines: &[(&str, u32, i64)], status: OrderStatus) -> OrderAttributes {
        OrderAttributes {
            customer_id: "CUST-1".into(),
            user_id: "user-1".into(),
            items: lines
                .iter()
                .map(|(code, quantity, cents)| OrderItem {
                    product_code: (*code).into(),
                    name: String::new(),
                    quantity: *quantity,
                    price: Decimal::new(*cents, 2),
                })
                .collect(),
            shipping_address: Address {
                street: "1 Main St".into(),
                city: "Tokyo".into(),
                postal_code: "100".into(),
                country: "JP".into(),
            },
            payment_method: "card".into(),
            subtotal: Decimal::ZERO,
            tax: Decimal::ZERO,
            total: Decimal::ZERO,
            status,
            placed_at: Utc::now(),
            shipped_at: None,
            delivered_at: None,
            reservation: Reservation::Pending,
        }
    }

    fn row(day: NaiveDate, product: &str, units: i64, revenue_cents: i64) -> Contribution {
        Contribution {
            day,
            product_code: product.into(),
            units,
            revenue_cents,
        }
    }

    #[test]
    fn an_order_counts_on_the_utc_day_it_was_created_per_product() {
        // 23:30 in UTC is the next day in Tokyo: the report's day is UTC's.
        let created = Utc.with_ymd_and_hms(2026, 12, 4, 23, 30, 0).unwrap();
        let day = NaiveDate::from_ymd_opt(2026, 12, 4).unwrap();
        let placed = order(
            &[("PRD-001", 2, 2999), ("PRD-002", 1, 8950), ("PRD-001", 1, 2999)],
            OrderStatus::Pending,
        );
        assert_eq!(
            contributions(&placed, created).unwrap(),
            [row(day, "PRD-001", 3, 8997), row(day, "PRD-002", 1, 8950)]
        );
        for status in [
            OrderStatus::Confirmed,
            OrderStatus::Shipped,
            OrderStatus::Delivered,
        ] {
            let moved = OrderAttributes {
                status,
                ..placed.clone()
            };
            assert_eq!(contributions(&moved, created).unwrap().len(), 2, "{status}");
        }
        let cancelled = OrderAttributes {
            status: OrderStatus::Cancelled,
            ..placed
        };
        assert_eq!(contributions(&cancelled, created).unwrap(), []);
    }

    #[test]
    fn revenue_that_does_not_fit_is_an_error_not_a_wrap() {
        let created = Utc::now();
        let huge = order(&[("PRD-001", u32::MAX, i64::MAX / 1000)], OrderStatus::Pending);
        assert!(contributions(&huge, created).is_err());
    }
}
