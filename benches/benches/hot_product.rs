//! Workload 8, a hot product: `HOT_ORDERS` (200) concurrent orders of one
//! unit of one product that has `HOT_STOCK` (150) units, while
//! `HOT_RESTOCKS` (16) restocks arrive one every `HOT_RESTOCK_EVERY_MS`
//! (50 ms) from the start of the burst. Today's design (the stock desk:
//! group commits per tenant, one reservation entity per order) against the
//! design before it (a read-check-commit of the inventory record per
//! reservation, retried on every version conflict, with a per-order map in
//! the record: `benches/src/baseline.rs`), in the same run, on the same
//! backend, at the same size.
//!
//! Two levels, each for both designs:
//!
//! - `services`: 200 tasks call the reservation directly
//!   (`InventoryService::reserve`, or the baseline's `commit_with` loop; a
//!   baseline call that gives up after its 40 tries is called again, as the
//!   order handler's pipeline would). Settled: every call answered.
//! - `pipeline`: 200 tasks place orders (`OrderService::create`, what
//!   `POST /orders` calls) on an engine with the in-process pipeline; its
//!   order handler reserves (the example's `OrderSyncHandler`, or a copy
//!   whose reservation is the baseline's; both mark the order and claim
//!   its notifications). Settled: `Engine::wait_idle` returned, and every
//!   order's reservation is `reserved` or `failed`. A third row runs the
//!   same handler without its stock step (every order marked reserved, no
//!   stock read or written): the floor the rest of the pipeline sets.
//!
//! A restock sets the quantity on hand to what it is (the shelf counted
//! again): a new version of the record each time, and still exactly
//! `HOT_STOCK` units to reserve, so every run must end with
//! min(`HOT_ORDERS`, `HOT_STOCK`) orders reserved, the rest refused, and
//! `reservedQuantity` equal to the units of the reserved orders — asserted.
//!
//! `cargo bench -p cqrs-benches --bench hot_product`; set
//! `DYNAMODB_ENDPOINT` for the DynamoDB rows. `HOT_LEVELS=services` (or
//! `pipeline`) runs one level only. Tokio multi-thread runtime, one worker
//! per core.

#[allow(dead_code)]
#[path = "../src/backends.rs"]
mod backends;
#[allow(dead_code)]
#[path = "../src/baseline.rs"]
mod baseline;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use backends::{markdown_table, Backend};
use cqrs_core::{
    tenant_pk, BoxError, CommandInput, DataItem, DataService, DataSyncEvent, DataSyncHandler, Engine,
    EntityKey, Interest, InvocationContext, ListQuery, Services, SkCondition, Storage, TenancyPolicy,
};
use ecommerce::domain::{inventory_sk, OrderAttributes, OrderStatus, Reservation, ReservationState};
use ecommerce::notify::{ClaimingNotifier, NotificationKind, OutboxNotifier};
use ecommerce::services::{
    InventoryService, NewOrder, NewProduct, OrderService, ProductService, ReserveOutcome, SetInventory,
    StockDesk,
};
use ecommerce::shop::{ShopConfig, HANDLER_TIMEOUT};
use ecommerce::Shop;
use tokio::sync::Barrier;

const TENANT: &str = "shop-a";
const PRODUCT: &str = "PRD-001";

struct Config {
    orders: usize,
    stock: i64,
    restocks: usize,
    restock_every: Duration,
    levels: Vec<Level>,
}

impl Config {
    fn from_env() -> Self {
        fn var<T: std::str::FromStr>(name: &str, default: T) -> T {
            match std::env::var(name) {
                Ok(v) if !v.trim().is_empty() => v
                    .trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{name}={v} is not a valid value")),
                _ => default,
            }
        }
        let levels = match std::env::var("HOT_LEVELS").ok().as_deref().map(str::trim) {
            None | Some("") => vec![Level::Services, Level::Pipeline],
            Some(list) => list
                .split(',')
                .map(|l| match l.trim() {
                    "services" => Level::Services,
                    "pipeline" => Level::Pipeline,
                    other => panic!("HOT_LEVELS: unknown level {other}"),
                })
                .collect(),
        };
        Self {
            orders: var("HOT_ORDERS", 200usize).max(1),
            stock: var("HOT_STOCK", 150i64).max(0),
            restocks: var("HOT_RESTOCKS", 16usize),
            restock_every: Duration::from_millis(var("HOT_RESTOCK_EVERY_MS", 50u64)),
            levels,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Design {
    /// Read-check-commit per reservation, retried on conflicts, per-order map.
    Baseline,
    /// Group commits per tenant, a reservation entity per order.
    Desk,
    /// No stock step at all (pipeline level only): the handler marks every
    /// order reserved without touching stock; what the rest of the
    /// pipeline costs.
    Floor,
}

impl Design {
    fn name(self) -> &'static str {
        match self {
            Design::Baseline => "before: read-check-commit + retries",
            Design::Desk => "stock desk: group commit",
            Design::Floor => "no stock step (the pipeline's floor)",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Services,
    Pipeline,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Services => "services",
            Level::Pipeline => "pipeline",
        }
    }
}

fn staff() -> InvocationContext {
    InvocationContext::new(TENANT, "bench-staff").with_roles(["staff"])
}

fn customer(n: usize) -> InvocationContext {
    InvocationContext::new(TENANT, format!("bench-customer-{n}")).with_roles(["customer"])
}

fn one_unit() -> BTreeMap<String, i64> {
    BTreeMap::from([(PRODUCT.to_owned(), 1)])
}

fn order_body() -> NewOrder {
    serde_json::from_value(serde_json::json!({
        "customerId": "CUST-001",
        "items": [{"productCode": PRODUCT, "quantity": 1, "price": 29.99}],
        "shippingAddress": {"street": "1 Main St", "city": "Tokyo", "postalCode": "100-0001", "country": "JP"},
        "paymentMethod": "card"
    }))
    .expect("an order")
}

/// The product and its stock, through the example's services.
async fn seed(services: &Services, stock: i64) {
    let product: NewProduct = serde_json::from_value(serde_json::json!({
        "code": PRODUCT, "name": "Wireless Mouse", "categoryCode": "ACCESSORIES",
        "sku": "SKU-PRD-001", "price": 29.99, "currency": "USD", "isActive": true,
    }))
    .expect("product");
    ProductService::new(services.clone())
        .create(product, &staff())
        .await
        .expect("create product");
    let request = SetInventory {
        quantity: stock,
        warehouse_code: "WH-1".into(),
        version: None,
    };
    InventoryService::new(services.clone())
        .set(PRODUCT, request, &staff())
        .await
        .expect("set stock");
}

/// Counters of the baseline (its retries are not the framework's to count).
#[derive(Default)]
struct Tally {
    /// Reads and decisions of reservations.
    attempts: AtomicU64,
    /// Calls that gave up after 40 tries (and were called again).
    gave_up: AtomicU64,
}

/// The example's order handler with the baseline's reservation: reads the
/// order, reserves (a give-up fails the run: the pipeline retries it),
/// marks the order, claims its notifications (the outbox relay sends them).
struct BaselineHandler {
    services: Services,
    tally: Arc<Tally>,
    /// Whether to reserve (false: [`Design::Floor`]).
    reserve: bool,
}

#[async_trait]
impl DataSyncHandler for BaselineHandler {
    fn name(&self) -> &str {
        "order-sync"
    }

    fn interest(&self) -> Interest {
        Interest::SkPrefix("ORDER#".into())
    }

    async fn handle(&self, event: &DataSyncEvent) -> Result<(), BoxError> {
        if event.old.is_some() {
            return Ok(());
        }
        let ctx = &event.context;
        let code = &event.command.code;
        let order: OrderAttributes = event.new.attributes_as()?;
        let current = self.services.data.get_item(&event.key(), ctx).await?;
        let pending = current
            .map(|item| item.attributes_as::<OrderAttributes>())
            .transpose()?
            .is_some_and(|o| o.reservation == Reservation::Pending && o.status != OrderStatus::Cancelled);
        let claims = ClaimingNotifier::new(self.services.clone());
        if pending {
            let tried = if self.reserve {
                baseline::reserve(&self.services, code, &order.units_per_product(), ctx).await
            } else {
                baseline::Tried {
                    outcome: baseline::Outcome::Reserved,
                    attempts: 1,
                }
            };
            self.tally
                .attempts
                .fetch_add(u64::from(tried.attempts), Ordering::Relaxed);
            let state = match tried.outcome {
                baseline::Outcome::Reserved => Reservation::Reserved,
                baseline::Outcome::Insufficient => Reservation::Failed,
                baseline::Outcome::GaveUp => {
                    self.tally.gave_up.fetch_add(1, Ordering::Relaxed);
                    return Err(format!("stock for order {code} is contended, retry").into());
                }
            };
            self.services
                .update_with(&event.key(), ctx, |current: Option<&DataItem>| {
                    let Some(item) = current else { return Ok(None) };
                    let mut order: OrderAttributes = item.attributes_as()?;
                    if order.reservation == state {
                        return Ok(None);
                    }
                    order.reservation = state;
                    Ok::<_, cqrs_core::Error>(Some(CommandInput::update_of(item).attributes_from(&order)?))
                })
                .await?;
            if state == Reservation::Failed {
                claims
                    .claim(
                        event,
                        NotificationKind::InventoryReservationFailed,
                        format!("insufficient inventory for order {code}"),
                    )
                    .await?;
            }
        }
        claims
            .claim(
                event,
                NotificationKind::OrderConfirmation,
                format!("order {code} received"),
            )
            .await?;
        Ok(())
    }
}

/// What one run measured.
struct Run {
    settle: Duration,
    reserved: usize,
    failed: usize,
    units_reserved: i64,
    quantity: i64,
    /// Versions of the inventory record written by the run (reservations
    /// and restocks).
    record_writes: u64,
    /// Version conflicts retried.
    conflicts: u64,
    /// Baseline calls that gave up after 40 tries (retried).
    gave_up: u64,
    /// Restock latencies: (started before the burst settled, latency, succeeded).
    restocks: Vec<(bool, Duration, bool)>,
    /// The record's attributes, in bytes of JSON, after the run.
    record_bytes: usize,
}

/// The engine, the way the design's stock is changed, and what to count with.
struct Setup {
    engine: Engine,
    services: Services,
    /// The example's inventory service (the stock desk), or none (baseline).
    inventory: Option<InventoryService>,
    tally: Arc<Tally>,
}

fn setup(storage: Arc<dyn Storage>, design: Design) -> Setup {
    let tally = Arc::new(Tally::default());
    match design {
        Design::Desk => {
            let shop = Shop::with_config(storage, ShopConfig::default());
            Setup {
                services: shop.engine.services(),
                engine: shop.engine,
                inventory: Some(shop.inventory),
                tally,
            }
        }
        Design::Baseline | Design::Floor => {
            let counted = tally.clone();
            let reserve = design == Design::Baseline;
            let engine = Engine::builder(storage)
                .tenancy(TenancyPolicy::strict())
                .handler_timeout(HANDLER_TIMEOUT)
                .handler_with(move |services| BaselineHandler {
                    services: services.clone(),
                    tally: counted,
                    reserve,
                })
                // The example's relay sends what the handler claims.
                .handler_with(|services| {
                    ClaimingNotifier::relay(services.clone(), Arc::new(OutboxNotifier::new()))
                })
                .build();
            Setup {
                services: engine.services(),
                engine,
                inventory: None,
                tally,
            }
        }
    }
}

async fn restock(setup: &Setup, quantity: i64) -> bool {
    match &setup.inventory {
        Some(inventory) => {
            let request = SetInventory {
                quantity,
                warehouse_code: "WH-1".into(),
                version: None,
            };
            match inventory.set(PRODUCT, request, &staff()).await {
                Ok(_) => true,
                Err(ecommerce::ShopError::Conflict(_)) => false,
                Err(e) => panic!("restock: {e}"),
            }
        }
        None => {
            baseline::set(&setup.services, PRODUCT, quantity, &staff())
                .await
                .outcome
        }
    }
}

/// One order's reservation through the services, to a final answer.
async fn reserve_once(setup: &Setup, n: usize) -> bool {
    let order = format!("ORD-{n:06}");
    match &setup.inventory {
        Some(inventory) => match inventory.reserve(&order, &one_unit(), &customer(n)).await {
            Ok(ReserveOutcome::Reserved) => true,
            Ok(ReserveOutcome::Insufficient { .. }) => false,
            Err(e) => panic!("reserve {order}: {e}"),
        },
        None => loop {
            let tried = baseline::reserve(&setup.services, &order, &one_unit(), &customer(n)).await;
            setup
                .tally
                .attempts
                .fetch_add(u64::from(tried.attempts), Ordering::Relaxed);
            match tried.outcome {
                baseline::Outcome::Reserved => break true,
                baseline::Outcome::Insufficient => break false,
                // The pipeline would run the handler again.
                baseline::Outcome::GaveUp => {
                    setup.tally.gave_up.fetch_add(1, Ordering::Relaxed);
                }
            }
        },
    }
}

async fn run(backend: Backend, design: Design, level: Level, config: &Config) -> Option<Run> {
    let store = backends::storage(backend, "hot").await?;
    let setup = Arc::new(setup(store.storage.clone(), design));
    seed(&setup.services, config.stock).await;
    let key = EntityKey::new(tenant_pk(TENANT), inventory_sk(PRODUCT));
    let seeded_version = setup
        .engine
        .get_item(&key, &staff())
        .await
        .expect("read")
        .expect("stock")
        .version;

    let barrier = Arc::new(Barrier::new(config.orders + 1));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tasks: Vec<_> = (1..=config.orders)
        .map(|n| {
            let setup = setup.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                match level {
                    Level::Services => Some(reserve_once(&setup, n).await),
                    Level::Pipeline => {
                        OrderService::new(setup.services.clone())
                            .create(order_body(), &customer(n))
                            .await
                            .expect("order placed");
                        None
                    }
                }
            })
        })
        .collect();
    barrier.wait().await;
    let started = Instant::now();
    let restock_count = if design == Design::Floor {
        0
    } else {
        config.restocks
    };
    let restocks: Vec<_> = (1..=restock_count)
        .map(|i| {
            let setup = setup.clone();
            let done = done.clone();
            let at = config.restock_every * i as u32;
            let quantity = config.stock;
            tokio::spawn(async move {
                tokio::time::sleep(at.saturating_sub(started.elapsed())).await;
                let during = !done.load(Ordering::SeqCst);
                let begun = Instant::now();
                let ok = restock(&setup, quantity).await;
                (during, begun.elapsed(), ok)
            })
        })
        .collect();
    let mut answers = Vec::with_capacity(config.orders);
    for task in tasks {
        answers.push(task.await.expect("order task"));
    }
    if level == Level::Pipeline {
        setup.engine.wait_idle().await;
    }
    let settle = started.elapsed();
    done.store(true, Ordering::SeqCst);
    let mut restock_results = Vec::with_capacity(restock_count);
    for task in restocks {
        restock_results.push(task.await.expect("restock task"));
    }
    setup.engine.wait_idle().await;

    // Outcomes, and the invariants.
    let label = format!("{} / {} / {}", backend.name(), design.name(), level.name());
    let (reserved, failed) = match level {
        Level::Services => {
            let reserved = answers.iter().filter(|a| **a == Some(true)).count();
            (reserved, answers.len() - reserved)
        }
        Level::Pipeline => {
            let orders = list(&setup.engine, "ORDER#").await;
            assert_eq!(orders.len(), config.orders, "{label}: every order placed");
            let states: Vec<Reservation> = orders
                .iter()
                .map(|o| o.attributes_as::<OrderAttributes>().expect("order").reservation)
                .collect();
            assert!(
                !states.contains(&Reservation::Pending),
                "{label}: every reservation settled"
            );
            let reserved = states.iter().filter(|s| **s == Reservation::Reserved).count();
            (reserved, states.len() - reserved)
        }
    };
    if design == Design::Floor {
        let run = Run {
            settle,
            reserved,
            failed,
            units_reserved: 0,
            quantity: config.stock,
            record_writes: 0,
            conflicts: 0,
            gave_up: 0,
            restocks: Vec::new(),
            record_bytes: 0,
        };
        store.cleanup().await;
        return Some(run);
    }
    let expected = config.orders.min(config.stock as usize);
    assert_eq!(reserved, expected, "{label}: exactly the units there are");
    assert_eq!(failed, config.orders - expected, "{label}: refused");
    let record = setup
        .engine
        .get_item(&key, &staff())
        .await
        .expect("read")
        .expect("stock");
    let quantity = record.attributes["quantity"].as_i64().expect("quantity");
    let units_reserved = record.attributes["reservedQuantity"].as_i64().expect("reserved");
    assert_eq!(quantity, config.stock, "{label}");
    assert_eq!(
        units_reserved, reserved as i64,
        "{label}: one unit per reserved order"
    );
    // Who holds the units: the record's map (baseline), or the reservations.
    let holders = match design {
        Design::Baseline => record.attributes["reservations"]
            .as_object()
            .map_or(0, |m| m.len()),
        Design::Desk | Design::Floor => list(&setup.engine, "RESERVATION#")
            .await
            .iter()
            .filter(|r| r.attributes["state"] == serde_json::json!(ReservationState::Reserved))
            .count(),
    };
    assert_eq!(holders, reserved, "{label}: the holders are the reserved orders");
    let history = setup.engine.list_history(&key, &staff()).await.expect("history");
    for version in &history {
        let q = version.attributes["quantity"].as_i64().expect("quantity");
        let r = version.attributes["reservedQuantity"].as_i64().expect("reserved");
        assert!(r <= q, "{label}: v{} oversold", version.version);
    }
    let (conflicts, gave_up) = match &setup.inventory {
        Some(inventory) => (inventory.desk().stats().conflicts, 0),
        None => {
            // Each call counted its attempts; calls: one per order, plus
            // one per call that gave up (and was called again).
            let attempts = setup.tally.attempts.load(Ordering::Relaxed);
            let gave_up = setup.tally.gave_up.load(Ordering::Relaxed);
            (attempts.saturating_sub(config.orders as u64 + gave_up), gave_up)
        }
    };
    if let Some(inventory) = &setup.inventory {
        assert!(
            inventory.desk().is_idle() || wait_idle(inventory.desk()).await,
            "{label}: desk idle"
        );
    }
    let run = Run {
        settle,
        reserved,
        failed,
        units_reserved,
        quantity,
        record_writes: record.version - seeded_version,
        conflicts,
        gave_up,
        restocks: restock_results,
        record_bytes: serde_json::to_string(&record.attributes).expect("JSON").len(),
    };
    store.cleanup().await;
    Some(run)
}

/// Waits (up to a second) for the desk's leader to end after its last batch.
async fn wait_idle(desk: &StockDesk) -> bool {
    for _ in 0..1000 {
        if desk.is_idle() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    false
}

/// The tenant's items of `prefix`.
async fn list(engine: &Engine, prefix: &str) -> Vec<DataItem> {
    let mut items = Vec::new();
    let mut query = ListQuery::new()
        .sk(SkCondition::BeginsWith(prefix.into()))
        .limit(cqrs_core::MAX_LIMIT);
    loop {
        let page = DataService::list_items(engine, &tenant_pk(TENANT), query.clone(), &staff())
            .await
            .expect("listed");
        items.extend(page.items);
        match page.cursor {
            Some(cursor) => query = query.after(Some(cursor)),
            None => return items,
        }
    }
}

fn seconds(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{:.0} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn row(backend: Backend, design: Design, level: Level, config: &Config, run: &Run) -> Vec<String> {
    if design == Design::Floor {
        let mut row = vec![
            backend.name().to_owned(),
            level.name().to_owned(),
            design.name().to_owned(),
            seconds(run.settle),
            format!("{:.1}", config.orders as f64 / run.settle.as_secs_f64()),
        ];
        row.resize(15, "—".to_owned());
        return row;
    }
    let mut during: Vec<Duration> = run.restocks.iter().filter(|r| r.0).map(|r| r.1).collect();
    during.sort_unstable();
    let failed_restocks = run.restocks.iter().filter(|r| !r.2).count();
    vec![
        backend.name().to_owned(),
        level.name().to_owned(),
        design.name().to_owned(),
        seconds(run.settle),
        format!("{:.1}", config.orders as f64 / run.settle.as_secs_f64()),
        format!("{} / {}", run.reserved, run.failed),
        format!("{} / {}", run.units_reserved, run.quantity),
        run.record_writes.to_string(),
        run.conflicts.to_string(),
        run.gave_up.to_string(),
        format!("{} of {}", during.len(), run.restocks.len()),
        seconds(quantile(&during, 0.5)),
        seconds(during.last().copied().unwrap_or_default()),
        failed_restocks.to_string(),
        format!("{} B", run.record_bytes),
    ]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let config = Config::from_env();
    let mut rows = Vec::new();
    let mut ratios = Vec::new();
    for backend in Backend::ALL {
        for &level in &config.levels {
            let mut settled = BTreeMap::new();
            let designs: &[Design] = match level {
                Level::Services => &[Design::Baseline, Design::Desk],
                Level::Pipeline => &[Design::Baseline, Design::Desk, Design::Floor],
            };
            for &design in designs {
                eprintln!(
                    "running {} / {} / {} ...",
                    backend.name(),
                    level.name(),
                    design.name()
                );
                match run(backend, design, level, &config).await {
                    Some(run) => {
                        eprintln!("  settled in {}", seconds(run.settle));
                        rows.push(row(backend, design, level, &config, &run));
                        settled.insert(design.name(), run.settle);
                    }
                    None => {
                        let mut skipped = backends::skipped_row(backend, 15);
                        skipped[1] = format!("{} ({})", level.name(), backends::SKIPPED);
                        rows.push(skipped);
                        break;
                    }
                }
            }
            if let (Some(before), Some(after)) = (
                settled.get(Design::Baseline.name()),
                settled.get(Design::Desk.name()),
            ) {
                ratios.push(format!(
                    "{} / {}: {:.1}× faster",
                    backend.name(),
                    level.name(),
                    before.as_secs_f64() / after.as_secs_f64()
                ));
            }
        }
    }
    println!(
        "\n### Hot product: {} concurrent orders of 1 unit, {} units in stock, {} restocks every {} ms\n\n\
         Multi-thread Tokio runtime ({} workers); both designs in this run, each on a fresh store, \
         asserted: exactly {} reserved and {} refused, reservedQuantity = units of the reserved \
         orders, never above the quantity in any version, the holders (the record's map before, \
         the reservation entities now) are the reserved orders. Settle: from the start of the burst \
         to the last answer (services) or to `Engine::wait_idle` (pipeline). Record writes: \
         versions of the inventory record written during the run (reservations and restocks). \
         Conflicts: commits refused by a version conflict and decided again. Restocks: latency of \
         those started before the burst settled. The pipeline's floor: the same handler without \
         its stock step (no invariants, no restocks).\n",
        config.orders,
        config.stock,
        config.restocks,
        config.restock_every.as_millis(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        config.orders.min(config.stock as usize),
        config.orders.saturating_sub(config.stock as usize),
    );
    print!(
        "{}",
        markdown_table(
            &[
                "backend",
                "level",
                "design",
                "settle",
                "orders/s",
                "reserved / refused",
                "units reserved / on hand",
                "record writes",
                "conflicts",
                "gave up (retried)",
                "restocks during the burst",
                "restock p50",
                "restock max",
                "restocks refused",
                "record size",
            ],
            &rows,
        )
    );
    if !ratios.is_empty() {
        println!("\nSettle time, before ÷ now: {}.", ratios.join("; "));
    }
}
