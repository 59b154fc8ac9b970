//! Workload 1: the order lifecycle, in memory, against the Rust peer.
//!
//! Every order goes create → confirm → process → ship → deliver: five
//! commands, one after the other, order after order, on a single-threaded
//! (`current_thread`) Tokio runtime, so one core.
//!
//! - **ours, typed**: `publish_sync_typed` on
//!   `cqrs_memory::InMemory::engine().build()`, no data-sync handler; the
//!   order is the caller's own struct (`OrderState`), as the peer's are:
//!   each step takes the `Typed<OrderState>` the previous one returned,
//!   sets `status` and publishes the full new state at its version.
//! - **ours, typed changes**: the order created with `publish_sync_typed`,
//!   then each step a typed partial update (`StatusChange { status,
//!   tracking_number }`, `publish_partial_update_sync` at the version the
//!   last step returned): the counterpart of the peer's `Confirm`, `Ship`,
//!   ... commands, which carry the change, not the state.
//! - **ours, `Value`**: the same with `publish_sync` and the attributes as
//!   JSON (the caller moves the attributes of the item the previous step
//!   returned, sets `status` by indexing, and publishes).
//! - **cqrs-es 0.5** (crates.io): `CqrsFramework::execute` on an order
//!   aggregate with the same content (customer, 1-2 items, address, payment,
//!   totals, status, tracking number), no query processor. Twice: on a copy
//!   of its `MemStore` without the two `println!`s it makes per command
//!   (the framework's own cost), and on `MemStore` as shipped, in a child
//!   process whose stdout goes to `/dev/null`.
//!
//! Each system runs the whole workload `REPS` times on fresh stores; the
//! table gives the best and the median run.
//!
//! `cargo bench -p cqrs-benches --bench lifecycle`
//! (`CQRS_BENCH_ORDERS=n` changes the number of orders; `CQRS_BENCH_ONLY=ours`,
//! `=changes`, `=value` or `=peer` runs one system alone, once, for profiling: instructions per
//! command are the difference of two runs under
//! `valgrind --tool=callgrind` with different `CQRS_BENCH_ORDERS`, divided by
//! the difference in commands).

mod peer_orders;

use std::time::{Duration, Instant};

use cqrs_benches::peer::{child_role, median, report, run_child};
use cqrs_core::{
    CommandInput, CommandService, CommandServiceExt, DataItem, DataService, EntityKey, ExpectedVersion,
    PartialUpdate, Typed,
};
use cqrs_core::{Engine, InvocationContext};
use cqrs_es::mem_store::MemStore;
use cqrs_es::{CqrsFramework, EventStore};
use peer_orders::{
    create_command, order_attributes, order_code, order_sk, order_state, tracking_number, Order,
    OrderCommand, OrderState, QuietMemStore, Status, StatusChange, PK,
};
use serde_json::Value;

/// Commands per order.
const STEPS: usize = 5;
/// Runs of the whole workload per system.
const REPS: usize = 3;
/// Orders per run, unless `CQRS_BENCH_ORDERS` says otherwise.
const ORDERS: usize = 2_000;

fn orders() -> usize {
    std::env::var("CQRS_BENCH_ORDERS")
        .ok()
        .map(|n| n.parse().expect("CQRS_BENCH_ORDERS: a number"))
        .unwrap_or(ORDERS)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

// --- ours -------------------------------------------------------------------

/// One step of an order on ours: the state `item` returned, with a new status.
async fn ours_step(
    engine: &Engine,
    ctx: &InvocationContext,
    sk: &str,
    item: DataItem,
    status: Status,
    tracking: Option<String>,
) -> DataItem {
    let mut attributes = item.attributes;
    attributes["status"] = Value::from(status.as_str());
    if let Some(tracking) = tracking {
        attributes["trackingNumber"] = Value::from(tracking);
    }
    let command = CommandInput::new(PK, sk)
        .version(ExpectedVersion::Exactly(item.version))
        .attributes(attributes);
    engine
        .publish_sync(command, ctx)
        .await
        .expect("publish")
        .written()
        .expect("a new version")
}

/// The lifecycle of `orders` orders on a fresh engine; the time it took.
async fn ours_run(orders: usize) -> Duration {
    let engine = cqrs_memory::InMemory::engine().build();
    let ctx = InvocationContext::new("shop-a", "bench");
    let start = Instant::now();
    for i in 0..orders {
        let sk = order_sk(i);
        let create = CommandInput::new(PK, &sk).attributes(order_attributes(i));
        let item = engine
            .publish_sync(create, &ctx)
            .await
            .expect("create")
            .into_item();
        let item = ours_step(&engine, &ctx, &sk, item, Status::Confirmed, None).await;
        let item = ours_step(&engine, &ctx, &sk, item, Status::Processing, None).await;
        let item = ours_step(
            &engine,
            &ctx,
            &sk,
            item,
            Status::Shipped,
            Some(tracking_number(i)),
        )
        .await;
        ours_step(&engine, &ctx, &sk, item, Status::Delivered, None).await;
    }
    let elapsed = start.elapsed();
    for i in [0, orders - 1] {
        let item = engine
            .get_item(&EntityKey::new(PK, order_sk(i)), &ctx)
            .await
            .expect("get")
            .expect("stored");
        assert_eq!(item.version, STEPS as u64);
        assert_eq!(item.attributes["status"], "delivered");
    }
    elapsed
}

/// One step of an order on ours, typed: the order the last step returned,
/// with a new status.
async fn typed_step(
    engine: &Engine,
    ctx: &InvocationContext,
    order: Typed<OrderState>,
    status: Status,
    tracking: Option<String>,
) -> Typed<OrderState> {
    let (command, mut state) = order.update();
    state.status = status;
    if tracking.is_some() {
        state.tracking_number = tracking;
    }
    engine
        .publish_sync_typed(command, state, ctx)
        .await
        .expect("publish")
        .written()
        .expect("a new version")
}

/// The lifecycle of `orders` typed orders on a fresh engine; the time it took.
async fn typed_run(orders: usize) -> Duration {
    let engine = cqrs_memory::InMemory::engine().build();
    let ctx = InvocationContext::new("shop-a", "bench");
    let start = Instant::now();
    for i in 0..orders {
        let create = CommandInput::new(PK, order_sk(i));
        let order = engine
            .publish_sync_typed(create, order_state(i), &ctx)
            .await
            .expect("create")
            .into_item();
        let order = typed_step(&engine, &ctx, order, Status::Confirmed, None).await;
        let order = typed_step(&engine, &ctx, order, Status::Processing, None).await;
        let order = typed_step(&engine, &ctx, order, Status::Shipped, Some(tracking_number(i))).await;
        typed_step(&engine, &ctx, order, Status::Delivered, None).await;
    }
    let elapsed = start.elapsed();
    for i in [0, orders - 1] {
        let item = engine
            .get_item(&EntityKey::new(PK, order_sk(i)), &ctx)
            .await
            .expect("get")
            .expect("stored");
        assert_eq!(item.version, STEPS as u64);
        let order: OrderState = item.attributes_as().expect("an order");
        assert_eq!(order.status, Status::Delivered);
    }
    elapsed
}

/// One step of an order on ours as a typed partial update at `version`;
/// the version it wrote.
async fn change_step(
    engine: &Engine,
    ctx: &InvocationContext,
    sk: &str,
    version: u64,
    status: Status,
    tracking_number: Option<String>,
) -> u64 {
    let change = StatusChange {
        status,
        tracking_number,
    };
    let update = PartialUpdate::new(PK, sk, ExpectedVersion::Exactly(version))
        .attributes_from(&change)
        .expect("a change");
    engine
        .publish_partial_update_sync(update, ctx)
        .await
        .expect("publish")
        .written()
        .expect("a new version")
        .version
}

/// The lifecycle of `orders` typed orders, changed by typed partial
/// updates, on a fresh engine; the time it took.
async fn changes_run(orders: usize) -> Duration {
    let engine = cqrs_memory::InMemory::engine().build();
    let ctx = InvocationContext::new("shop-a", "bench");
    let start = Instant::now();
    for i in 0..orders {
        let sk = order_sk(i);
        let create = CommandInput::new(PK, &sk);
        let order = engine
            .publish_sync_typed(create, order_state(i), &ctx)
            .await
            .expect("create")
            .into_item();
        let v = change_step(&engine, &ctx, &sk, order.item.version, Status::Confirmed, None).await;
        let v = change_step(&engine, &ctx, &sk, v, Status::Processing, None).await;
        let v = change_step(&engine, &ctx, &sk, v, Status::Shipped, Some(tracking_number(i))).await;
        change_step(&engine, &ctx, &sk, v, Status::Delivered, None).await;
    }
    let elapsed = start.elapsed();
    for i in [0, orders - 1] {
        let item = engine
            .get_item(&EntityKey::new(PK, order_sk(i)), &ctx)
            .await
            .expect("get")
            .expect("stored");
        assert_eq!(item.version, STEPS as u64);
        let order: OrderState = item.attributes_as().expect("an order");
        assert_eq!(order.status, Status::Delivered);
        assert_eq!(order.tracking_number, Some(tracking_number(i)));
    }
    elapsed
}

// --- the peer ---------------------------------------------------------------

/// The lifecycle of `orders` orders on cqrs-es over `store` (fresh); the time it took.
async fn peer_run<ES: EventStore<Order> + Clone>(store: ES, orders: usize) -> Duration {
    let cqrs = CqrsFramework::new(store.clone(), vec![], ());
    let start = Instant::now();
    for i in 0..orders {
        let id = order_code(i);
        cqrs.execute(&id, create_command(i)).await.expect("create");
        cqrs.execute(&id, OrderCommand::Confirm).await.expect("confirm");
        cqrs.execute(&id, OrderCommand::Process).await.expect("process");
        let ship = OrderCommand::Ship {
            tracking_number: tracking_number(i),
        };
        cqrs.execute(&id, ship).await.expect("ship");
        cqrs.execute(&id, OrderCommand::Deliver).await.expect("deliver");
    }
    let elapsed = start.elapsed();
    for i in [0, orders - 1] {
        let events = store.load_events(&order_code(i)).await.expect("load");
        assert_eq!(events.len(), STEPS);
        let mut order = Order::default();
        events
            .into_iter()
            .for_each(|e| cqrs_es::Aggregate::apply(&mut order, e.payload));
        assert_eq!(order.status, Status::Delivered);
    }
    elapsed
}

// --- the table --------------------------------------------------------------

struct Row {
    system: &'static str,
    runs: Vec<Duration>,
}

impl Row {
    fn best(&self) -> Duration {
        *self.runs.iter().min().expect("runs")
    }
}

fn rate(commands: usize, d: Duration) -> f64 {
    commands as f64 / d.as_secs_f64()
}

fn main() {
    let rt = runtime();
    let orders = orders();
    let commands = orders * STEPS;

    // The child of `run_child`: the peer on MemStore as shipped, stdout discarded.
    if child_role().as_deref() == Some("memstore") {
        rt.block_on(peer_run(MemStore::<Order>::default(), orders.min(100)));
        for _ in 0..REPS {
            let d = rt.block_on(peer_run(MemStore::<Order>::default(), orders));
            report(&d.as_nanos().to_string());
        }
        return;
    }
    match std::env::var("CQRS_BENCH_ONLY").as_deref() {
        Ok("ours") => {
            let d = rt.block_on(typed_run(orders));
            println!("ours, typed: {commands} commands in {:.3} s", d.as_secs_f64());
            return;
        }
        Ok("changes") => {
            let d = rt.block_on(changes_run(orders));
            println!(
                "ours, typed changes: {commands} commands in {:.3} s",
                d.as_secs_f64()
            );
            return;
        }
        Ok("value") => {
            let d = rt.block_on(ours_run(orders));
            println!("ours, Value: {commands} commands in {:.3} s", d.as_secs_f64());
            return;
        }
        Ok("peer") => {
            let d = rt.block_on(peer_run(QuietMemStore::<Order>::default(), orders));
            println!("peer: {commands} commands in {:.3} s", d.as_secs_f64());
            return;
        }
        _ => {}
    }

    // Warm-up (allocator, page faults, code), then alternate the systems.
    rt.block_on(typed_run(orders.min(100)));
    rt.block_on(changes_run(orders.min(100)));
    rt.block_on(ours_run(orders.min(100)));
    rt.block_on(peer_run(QuietMemStore::<Order>::default(), orders.min(100)));
    let mut typed = Vec::new();
    let mut changes = Vec::new();
    let mut ours = Vec::new();
    let mut quiet = Vec::new();
    for _ in 0..REPS {
        typed.push(rt.block_on(typed_run(orders)));
        changes.push(rt.block_on(changes_run(orders)));
        ours.push(rt.block_on(ours_run(orders)));
        quiet.push(rt.block_on(peer_run(QuietMemStore::<Order>::default(), orders)));
    }
    let shipped: Vec<Duration> = run_child("memstore")
        .iter()
        .map(|ns| Duration::from_nanos(ns.parse().expect("nanoseconds")))
        .collect();

    let rows = [
        Row {
            system: "ours: cqrs-core + cqrs-memory, typed orders, `publish_sync_typed`",
            runs: typed,
        },
        Row {
            system: "ours: typed orders, each step a typed partial update (`StatusChange`)",
            runs: changes,
        },
        Row {
            system: "ours: cqrs-core + cqrs-memory, `Value` orders, `publish_sync`",
            runs: ours,
        },
        Row {
            system: "cqrs-es 0.5: `CqrsFramework` + `MemStore` minus its `println!`s",
            runs: quiet,
        },
        Row {
            system: "cqrs-es 0.5: `CqrsFramework` + `MemStore` as shipped (stdout to /dev/null)",
            runs: shipped,
        },
    ];
    let ours_median = median(&rows[0].runs);
    println!();
    println!(
        "Order lifecycle, in memory: {orders} orders x {STEPS} commands, one after the other, \
         current_thread runtime (one core); {REPS} runs per system"
    );
    println!();
    println!("| system | commands | seconds (median) | seconds (best) | commands/s (median) | commands/s (best) | ours / system (median) |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for row in &rows {
        let m = median(&row.runs);
        println!(
            "| {} | {commands} | {:.3} | {:.3} | {:.0} | {:.0} | {:.2}x |",
            row.system,
            m.as_secs_f64(),
            row.best().as_secs_f64(),
            rate(commands, m),
            rate(commands, row.best()),
            m.as_secs_f64() / ours_median.as_secs_f64(),
        );
    }
    println!();
    let ratio = median(&rows[3].runs).as_secs_f64() / ours_median.as_secs_f64();
    println!(
        "Target: ours (typed) ahead of the peer (>= 1x) on one core, aiming for 1.3x. Against the peer without printing: {ratio:.2}x ({}).",
        if ratio >= 1.0 { "met" } else { "missed" }
    );
}
