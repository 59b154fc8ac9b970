//! The scripted tour of the storefront (`cargo run --example ecommerce -- demo`).
//!
//! It drives the services directly, as the HTTP handlers do, with contexts
//! built as the HTTP layer builds them, and checks every step: per-shop order
//! numbers, the reservation made by the pipeline, a refused transition, a
//! cancellation releasing stock, a shipment deducting it, 50 concurrent
//! orders for 10 units, and the isolation of the shops. [`run`] returns an
//! error at the first step that does not behave as expected.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use cqrs_core::{tenant_pk, CommandRecord, DataItem, DataService, EntityKey, InvocationContext};
use rust_decimal::Decimal;

use crate::domain::{
    order_sk, Address, InventoryAttributes, OrderAttributes, OrderItem, OrderStatus, Reservation,
    ReservationState,
};
use crate::error::{ShopError, ShopResult};
use crate::notify::NotificationKind;
use crate::services::{NewOrder, SetInventory};
use crate::shop::{Shop, DEMO_TENANTS};

/// Orders placed at once in the contention step.
pub const CONCURRENT_ORDERS: usize = 50;
/// Units of the contended product available when they are placed.
pub const CONTENDED_UNITS: i64 = 10;
/// The contended product (10 units in the demo catalogue).
pub const CONTENDED_PRODUCT: &str = "PRD-003";

/// Runs the tour on `shop`, writing each step to `out`. `Ok` when every
/// step behaved as expected; otherwise the error names the first that did
/// not. Output errors are ignored: they do not change the outcome.
pub async fn run(shop: &Shop, out: &mut (dyn Write + Send)) -> ShopResult<()> {
    let mut tour = Tour { shop, out, checks: 0 };
    let started = Instant::now();
    tour.run().await?;
    let checks = tour.checks;
    tour.say(format!(
        "\nAll {checks} checks passed in {} ms.",
        started.elapsed().as_millis()
    ));
    Ok(())
}

/// Prints today's sales report of `tenant` (from the read models, once
/// the pipeline is idle: they follow the writes), a line per product.
/// A shop without read models prints nothing.
pub async fn sales_report(shop: &Shop, tenant: &str, out: &mut (dyn Write + Send)) -> ShopResult<()> {
    if shop.read_models.is_none() {
        return Ok(());
    }
    shop.engine.wait_idle().await;
    let today = chrono::Utc::now().date_naive();
    let rows = shop.sales_report(today, today, &ctx(tenant)).await?;
    let _ = writeln!(
        out,
        "\nSales report of {tenant} for {today} (GET /reports/sales, cancelled orders out):"
    );
    for row in &rows {
        let _ = writeln!(
            out,
            "  {:<8} {:>4} units {:>10}",
            row.product_code, row.units, row.revenue
        );
    }
    if rows.is_empty() {
        let _ = writeln!(out, "  no sales");
    }
    Ok(())
}

/// A caller of `tenant`, as the HTTP layer builds it from a verified token.
fn ctx(tenant: &str) -> InvocationContext {
    InvocationContext::new(tenant, "demo-user")
        .with_roles([crate::services::access::STAFF])
        .with_source("demo")
}

/// The catalogue's lines: `(code, name, price)`, prices as in the demo catalogue.
fn line(code: &str, quantity: u32) -> OrderItem {
    let (name, price) = match code {
        "PRD-001" => ("Wireless Mouse", Decimal::new(2999, 2)),
        "PRD-002" => ("Mechanical Keyboard", Decimal::new(8950, 2)),
        _ => ("USB-C Cable", Decimal::new(999, 2)),
    };
    OrderItem {
        product_code: code.to_owned(),
        name: name.to_owned(),
        quantity,
        price,
    }
}

/// The seed's order request, with the given lines.
fn new_order(customer: &str, items: Vec<OrderItem>) -> NewOrder {
    NewOrder {
        customer_id: customer.to_owned(),
        items,
        shipping_address: Address {
            street: "123 Main St".to_owned(),
            city: "Tokyo".to_owned(),
            postal_code: "100-0001".to_owned(),
            country: "JP".to_owned(),
        },
        payment_method: "credit_card".to_owned(),
    }
}

/// The number of an order code (`ORD-000042` → 42).
fn number(code: &str) -> Option<u64> {
    code.strip_prefix("ORD-")?.parse().ok()
}

fn reservation_name(reservation: Reservation) -> &'static str {
    match reservation {
        Reservation::Pending => "pending",
        Reservation::Reserved => "reserved",
        Reservation::Failed => "failed",
    }
}

/// An order of `tenant` and its attributes.
async fn read_order(shop: &Shop, tenant: &str, code: &str) -> ShopResult<(DataItem, OrderAttributes)> {
    let item = shop.orders.get(code, &ctx(tenant)).await?;
    let attributes = item.attributes_as()?;
    Ok((item, attributes))
}

/// The inventory record of `product` in `tenant`.
async fn read_stock(shop: &Shop, tenant: &str, product: &str) -> ShopResult<InventoryAttributes> {
    Ok(shop.inventory.get(product, &ctx(tenant)).await?.attributes_as()?)
}

/// The tour's state: where it writes, and how many checks passed. (Not
/// shared across awaits by reference: the writer is `Send` but not `Sync`.)
struct Tour<'a> {
    shop: &'a Shop,
    out: &'a mut (dyn Write + Send),
    checks: usize,
}

impl Tour<'_> {
    fn say(&mut self, text: impl AsRef<str>) {
        let _ = writeln!(self.out, "{}", text.as_ref());
    }

    fn step(&mut self, title: &str) {
        self.say(format!("\n== {title}"));
    }

    /// Records an expectation: `ok` line, or `FAIL` and an error.
    fn check(&mut self, ok: bool, what: impl AsRef<str>) -> ShopResult<()> {
        let what = what.as_ref();
        if ok {
            self.checks += 1;
            self.say(format!("   ok   {what}"));
            Ok(())
        } else {
            self.say(format!("   FAIL {what}"));
            Err(ShopError::Conflict(format!("demo: expectation failed: {what}")))
        }
    }

    async fn place(&mut self, tenant: &str, order: NewOrder) -> ShopResult<CommandRecord> {
        let command = self.shop.orders.create(order, &ctx(tenant)).await?;
        let attributes: OrderAttributes = command.attributes_as()?;
        self.say(format!(
            "   {tenant}  {}  v{}  status {}  reservation {}  subtotal {:.2}  tax {:.2}  total {:.2}",
            command.code,
            command.version,
            attributes.status,
            reservation_name(attributes.reservation),
            attributes.subtotal,
            attributes.tax,
            attributes.total
        ));
        Ok(command)
    }

    async fn run(&mut self) -> ShopResult<()> {
        let shop = self.shop;
        let (a, b) = (DEMO_TENANTS[0], DEMO_TENANTS[1]);

        self.step("1. Two shops, each seeded with the demo catalogue");
        for tenant in DEMO_TENANTS {
            shop.seed_demo(tenant).await?;
            let page = shop.products.list(Some(100), None, &ctx(tenant)).await?;
            for product in &page.items {
                let attributes: crate::domain::ProductAttributes = product.attributes_as()?;
                let stock = read_stock(shop, tenant, &product.code).await?;
                self.say(format!(
                    "   {tenant}  {}  {:<20} {:>6.2} {}  on hand {:>3}  reserved {}",
                    product.code,
                    product.name,
                    attributes.price,
                    attributes.currency,
                    stock.quantity,
                    stock.reserved_quantity
                ));
            }
            self.check(
                page.items.len() >= 3,
                format!("{tenant} has the three demo products"),
            )?;
        }

        self.step("2. Orders are published asynchronously and numbered per shop");
        let fresh_a = shop
            .orders
            .list(None, Some(1), None, &ctx(a))
            .await?
            .items
            .is_empty();
        let fresh_b = shop
            .orders
            .list(None, Some(1), None, &ctx(b))
            .await?
            .items
            .is_empty();
        let a1 = self
            .place(a, new_order("CUST-001", vec![line("PRD-001", 2)]))
            .await?;
        let a2 = self
            .place(a, new_order("CUST-002", vec![line("PRD-002", 1)]))
            .await?;
        let b1 = self
            .place(b, new_order("CUST-900", vec![line("PRD-001", 1)]))
            .await?;
        let a1_attributes: OrderAttributes = a1.attributes_as()?;
        self.check(
            a1_attributes.subtotal == Decimal::new(5998, 2)
                && a1_attributes.tax == Decimal::new(600, 2)
                && a1_attributes.total == Decimal::new(6598, 2),
            "the seed's order: subtotal 59.98, tax 6.00, total 65.98",
        )?;
        self.check(
            a1.version == 1 && a1_attributes.reservation == Reservation::Pending,
            "the answer is the published command: version 1, reservation pending",
        )?;
        let (n1, n2) = (number(&a1.code), number(&a2.code));
        self.check(
            n1.is_some() && n2 == n1.map(|n| n + 1),
            format!("{a} numbers its orders in sequence: {} then {}", a1.code, a2.code),
        )?;
        if fresh_a {
            self.check(
                a1.code == "ORD-000001" && a2.code == "ORD-000002",
                format!("{a} starts at ORD-000001"),
            )?;
        }
        if fresh_b {
            self.check(
                b1.code == "ORD-000001",
                format!("{b} has its own sequence: its first order is ORD-000001 too"),
            )?;
        }

        self.step("3. The pipeline applies the orders and reserves their stock");
        shop.engine.wait_idle().await;
        for (tenant, command) in [(a, &a1), (a, &a2), (b, &b1)] {
            let (item, order) = read_order(shop, tenant, &command.code).await?;
            self.check(
                order.reservation == Reservation::Reserved,
                format!(
                    "{tenant} {}: reservation {} (version {})",
                    item.code,
                    reservation_name(order.reservation),
                    item.version
                ),
            )?;
        }
        let stock = read_stock(shop, a, "PRD-001").await?;
        let held = shop.inventory.reservation(&a1.code, &ctx(a)).await?;
        let units = held
            .as_ref()
            .and_then(|r| r.units.get("PRD-001").copied())
            .unwrap_or(0);
        self.say(format!(
            "   {a} PRD-001: on hand {}, reserved {} ({units} for {})",
            stock.quantity, stock.reserved_quantity, a1.code
        ));
        self.check(
            held.is_some_and(|r| r.state == ReservationState::Reserved) && units == 2,
            format!("the reservation of {} holds its 2 units", a1.code),
        )?;

        self.step("4. The status machine refuses a jump");
        let (before, _) = read_order(shop, a, &a1.code).await?;
        let refused = shop
            .orders
            .update_status(&a1.code, OrderStatus::Shipped, None, None, &ctx(a))
            .await;
        let (after, _) = read_order(shop, a, &a1.code).await?;
        match &refused {
            Err(e) => self.say(format!("   pending -> shipped: {e}")),
            Ok(item) => self.say(format!(
                "   pending -> shipped was accepted (version {})",
                item.version
            )),
        }
        self.check(
            matches!(
                refused,
                Err(ShopError::InvalidTransition {
                    from: OrderStatus::Pending,
                    to: OrderStatus::Shipped
                })
            ),
            "InvalidTransition (400 invalid_transition over HTTP)",
        )?;
        self.check(after.version == before.version, "nothing was written")?;

        self.step("5. Cancelling an order releases its stock");
        let before = read_stock(shop, a, "PRD-002").await?;
        let cancelled = shop
            .orders
            .update_status(&a2.code, OrderStatus::Cancelled, None, None, &ctx(a))
            .await?;
        shop.engine.wait_idle().await;
        let after = read_stock(shop, a, "PRD-002").await?;
        self.say(format!(
            "   {} cancelled (version {}); PRD-002 reservedQuantity {} -> {}, quantity {} -> {}",
            a2.code,
            cancelled.version,
            before.reserved_quantity,
            after.reserved_quantity,
            before.quantity,
            after.quantity
        ));
        self.check(
            after.reserved_quantity == before.reserved_quantity - 1 && after.quantity == before.quantity,
            "its unit is released, the quantity on hand is unchanged",
        )?;
        let held = shop.inventory.reservation(&a2.code, &ctx(a)).await?;
        self.check(
            held.is_some_and(|r| r.state == ReservationState::Released),
            "its reservation is released",
        )?;

        self.step("6. Shipping an order deducts its stock");
        let before = read_stock(shop, a, "PRD-001").await?;
        for next in [
            OrderStatus::Confirmed,
            OrderStatus::Processing,
            OrderStatus::Shipped,
        ] {
            let item = shop
                .orders
                .update_status(&a1.code, next, None, None, &ctx(a))
                .await?;
            self.say(format!("   {} -> {next} (version {})", a1.code, item.version));
        }
        shop.engine.wait_idle().await;
        let after = read_stock(shop, a, "PRD-001").await?;
        self.say(format!(
            "   PRD-001 quantity {} -> {}, reservedQuantity {} -> {}",
            before.quantity, after.quantity, before.reserved_quantity, after.reserved_quantity
        ));
        self.check(
            after.quantity == before.quantity - 2 && after.reserved_quantity == before.reserved_quantity - 2,
            "the 2 units left the stock and the reservation",
        )?;
        let delivered = shop
            .orders
            .update_status(&a1.code, OrderStatus::Delivered, None, None, &ctx(a))
            .await?;
        self.say(format!(
            "   {} -> delivered (version {})",
            a1.code, delivered.version
        ));
        let notified: Vec<NotificationKind> = shop
            .notifier
            .sent()
            .into_iter()
            .filter(|n| n.tenant == a && n.order_code == a1.code)
            .map(|n| n.kind)
            .collect();
        self.say(format!("   notifications for {}: {notified:?}", a1.code));
        self.check(
            notified
                == [
                    NotificationKind::OrderConfirmation,
                    NotificationKind::Shipping,
                    NotificationKind::Delivery,
                ],
            "the customer was told: received, shipped, delivered",
        )?;

        let contended = self.contention(a).await?;

        self.step("8. A shop sees only its own orders");
        // shop-a's latest order: shop-b, with its own sequence, has no order of that number
        // (unless the backend is reused across runs).
        let code = contended
            .iter()
            .max_by_key(|c| number(c))
            .cloned()
            .unwrap_or_else(|| a2.code.to_string());
        let seen_by_b = shop.orders.get(&code, &ctx(b)).await;
        match &seen_by_b {
            Err(e) => self.say(format!("   {b} asks for {a}'s {code}: {e}")),
            Ok(item) => self.say(format!(
                "   {b} asks for {code}: finds its own order, pk {}",
                item.pk
            )),
        }
        self.check(
            match &seen_by_b {
                Err(ShopError::NotFound(_)) => true,
                Ok(item) => !fresh_b && item.pk == tenant_pk(b),
                Err(_) => false,
            },
            format!("{b} cannot see {a}'s {code} (404 not_found over HTTP)"),
        )?;
        // Addressing shop-a's key directly is refused by the framework itself.
        let key = EntityKey::new(tenant_pk(a), order_sk(&code));
        let direct = shop.engine.get_item(&key, &ctx(b)).await;
        match &direct {
            Err(e) => self.say(format!("   {b} reads key {} directly: {e}", key.id())),
            Ok(item) => self.say(format!("   {b} reads key {} directly: {item:?}", key.id())),
        }
        self.check(
            matches!(direct, Err(cqrs_core::Error::TenantViolation { .. })),
            "the engine refuses another tenant's key (tenant violation, answered as 404)",
        )?;
        Ok(())
    }

    /// Step 7: many orders at once for a product with few units. Returns
    /// the codes of the orders.
    async fn contention(&mut self, tenant: &str) -> ShopResult<Vec<String>> {
        let shop = self.shop;
        self.step(&format!(
            "7. {CONCURRENT_ORDERS} concurrent orders of 1 unit for {CONTENDED_PRODUCT}, which has {CONTENDED_UNITS} available"
        ));
        let mut stock = read_stock(shop, tenant, CONTENDED_PRODUCT).await?;
        if stock.available() != CONTENDED_UNITS {
            // A backend reused across runs: make exactly 10 units available again.
            let restock = SetInventory {
                quantity: stock.reserved_quantity + CONTENDED_UNITS,
                warehouse_code: stock.warehouse_code.clone(),
                version: None,
            };
            shop.inventory
                .set(CONTENDED_PRODUCT, restock, &ctx(tenant))
                .await?;
            stock = read_stock(shop, tenant, CONTENDED_PRODUCT).await?;
            self.say(format!(
                "   restocked to {} on hand ({} reserved)",
                stock.quantity, stock.reserved_quantity
            ));
        }
        let reserved_before = stock.reserved_quantity;

        // Watches the inventory record while the orders are processed.
        let stop = Arc::new(AtomicBool::new(false));
        let monitor = {
            let (shop, stop, tenant) = (shop.clone(), stop.clone(), tenant.to_owned());
            tokio::spawn(async move {
                let (mut lowest, mut reads) = (i64::MAX, 0u32);
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(item) = shop.inventory.get(CONTENDED_PRODUCT, &ctx(&tenant)).await {
                        if let Ok(attributes) = item.attributes_as::<InventoryAttributes>() {
                            lowest = lowest.min(attributes.available());
                            reads += 1;
                        }
                    }
                    tokio::task::yield_now().await;
                }
                (lowest, reads)
            })
        };

        let started = Instant::now();
        let tasks: Vec<_> = (0..CONCURRENT_ORDERS)
            .map(|i| {
                let (shop, tenant) = (shop.clone(), tenant.to_owned());
                tokio::spawn(async move {
                    let order = new_order(&format!("CUST-{:03}", 100 + i), vec![line(CONTENDED_PRODUCT, 1)]);
                    shop.orders.create(order, &ctx(&tenant)).await
                })
            })
            .collect();
        let mut codes = Vec::with_capacity(CONCURRENT_ORDERS);
        let mut refused = 0;
        for task in tasks {
            match task.await {
                Ok(Ok(command)) => codes.push(command.code.to_string()),
                Ok(Err(e)) => {
                    refused += 1;
                    self.say(format!("   an order was refused: {e}"));
                }
                Err(e) => {
                    refused += 1;
                    self.say(format!("   an order task failed: {e}"));
                }
            }
        }
        let published = started.elapsed();
        shop.engine.wait_idle().await;
        let elapsed = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        let (lowest, reads) = monitor.await.unwrap_or((i64::MAX, 0));

        let (mut reserved, mut failed, mut pending) = (0, 0, 0);
        for code in &codes {
            let (_, order) = read_order(shop, tenant, code).await?;
            match order.reservation {
                Reservation::Reserved => reserved += 1,
                Reservation::Failed => failed += 1,
                Reservation::Pending => pending += 1,
            }
        }
        let after = read_stock(shop, tenant, CONTENDED_PRODUCT).await?;
        let alerts = shop
            .notifier
            .sent()
            .into_iter()
            .filter(|n| {
                n.kind == NotificationKind::InventoryReservationFailed && codes.contains(&n.order_code)
            })
            .count();
        self.say(format!(
            "   {} orders published in {} ms, all processed in {} ms",
            codes.len(),
            published.as_millis(),
            elapsed.as_millis()
        ));
        self.say(format!(
            "   reservations: {reserved} reserved, {failed} failed, {pending} pending; {alerts} alerts to operations"
        ));
        self.say(format!(
            "   {CONTENDED_PRODUCT}: quantity {}, reservedQuantity {} -> {}, available {}; lowest available seen {} ({reads} reads)",
            after.quantity,
            reserved_before,
            after.reserved_quantity,
            after.available(),
            if reads == 0 { "-".to_owned() } else { lowest.to_string() },
        ));
        let units = usize::try_from(CONTENDED_UNITS).unwrap_or(usize::MAX);
        self.check(
            refused == 0 && codes.len() == CONCURRENT_ORDERS,
            format!("all {CONCURRENT_ORDERS} orders were accepted"),
        )?;
        self.check(
            reserved == units && failed == CONCURRENT_ORDERS - units && pending == 0,
            format!(
                "exactly {units} reserved and {} failed: no overselling",
                CONCURRENT_ORDERS - units
            ),
        )?;
        self.check(
            after.reserved_quantity == reserved_before + CONTENDED_UNITS && after.available() == 0,
            format!("reservedQuantity grew by exactly {CONTENDED_UNITS}; nothing left"),
        )?;
        self.check(
            lowest >= 0 && after.available() >= 0,
            "available never went negative",
        )?;
        self.check(
            alerts == CONCURRENT_ORDERS - units,
            "operations were alerted of each failed reservation",
        )?;
        self.say(format!(
            "   {CONCURRENT_ORDERS} concurrent orders took {} ms",
            elapsed.as_millis()
        ));
        Ok(codes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    #[test]
    fn the_tour_can_run_on_any_task() {
        let shop = Shop::in_memory();
        let mut out = Vec::new();
        assert_send(&run(&shop, &mut out));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_tour_passes_on_a_fresh_in_memory_shop() {
        let shop = Shop::in_memory();
        let mut out = Vec::new();
        let result = run(&shop, &mut out).await;
        let text = String::from_utf8_lossy(&out);
        assert!(result.is_ok(), "{result:?}\n{text}");
        assert!(!text.contains("FAIL"), "{text}");
        assert!(
            text.contains("ORD-000001") && text.contains("ORD-000002"),
            "{text}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_tour_passes_again_on_the_same_shop() {
        let shop = Shop::in_memory();
        let mut out = Vec::new();
        run(&shop, &mut out).await.unwrap();
        let mut out = Vec::new();
        let result = run(&shop, &mut out).await;
        assert!(result.is_ok(), "{result:?}\n{}", String::from_utf8_lossy(&out));
    }
}
