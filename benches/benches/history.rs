//! Workload 2: the cost of one update against the length of the entity's
//! history, on ours and on the Rust peer.
//!
//! For each system, one fresh store holds `ENTITIES` orders at each version
//! V of 1, 100 and 1000 (created and updated up to V, not timed). Then each
//! order gets **one** more update, V → V+1, interleaved across the three
//! points (an order at v1, one at v100, one at v1000, the next order at
//! v1, ...), and only that call is timed (`publish_sync` on ours,
//! `CqrsFramework::execute` on cqrs-es 0.5). Every point thus runs against
//! the same store, of the same size: only the history of the updated entity
//! differs. The table gives the median and the 90th percentile of the
//! `ENTITIES` single-update latencies per point, and the ratio of the
//! medians v1000/v1. Building the command (ours: the new attributes) happens
//! before the clock starts. Each timed update touches an entity last written
//! long before (cold caches), so it costs more than one of a tight loop.
//!
//! The update sets the quantity of the first line of the order and the
//! totals (ours: the full new state at `ExpectedVersion::Exactly(V)`; the
//! peer: a `ChangeQuantity` command whose `QuantityChanged` event its
//! aggregate applies). Each update changes the quantity, so ours' dirty check
//! never skips one. Same single-threaded (`current_thread`) runtime as the
//! lifecycle workload; the peer runs on its `MemStore` minus the `println!`s
//! and, in a child process with stdout to `/dev/null`, on `MemStore` as shipped.
//!
//! `cargo bench -p cqrs-benches --bench history` (`CQRS_BENCH_ENTITIES=n`
//! changes the number of entities per point).

mod peer_orders;

use std::time::{Duration, Instant};

use cqrs_benches::peer::{child_role, median, micros, quantile, report, run_child};
use cqrs_core::{CommandInput, CommandService, DataItem, ExpectedVersion, InvocationContext};
use cqrs_es::mem_store::MemStore;
use cqrs_es::{CqrsFramework, EventStore};
use peer_orders::{change_quantity, create_command, order_attributes, order_code, order_sk};
use peer_orders::{Order, OrderCommand, QuietMemStore, PK};

/// Versions the timed update starts from.
const POINTS: [u64; 3] = [1, 100, 1000];
/// Entities (so timed updates) per point, unless `CQRS_BENCH_ENTITIES` says otherwise.
const ENTITIES: usize = 100;

fn entities() -> usize {
    std::env::var("CQRS_BENCH_ENTITIES")
        .ok()
        .map(|n| n.parse().expect("CQRS_BENCH_ENTITIES: a number"))
        .unwrap_or(ENTITIES)
}

/// The quantity set by the update from version `v` to `v + 1`: 3 or 4,
/// never the quantity before (new orders have 2).
fn quantity(v: u64) -> u32 {
    3 + (v % 2) as u32
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// The update of ours from `item`'s version.
fn ours_update(item: &DataItem) -> CommandInput {
    let mut attributes = item.attributes.clone();
    change_quantity(&mut attributes, quantity(item.version));
    CommandInput::new(&item.pk, &item.sk)
        .version(ExpectedVersion::Exactly(item.version))
        .attributes(attributes)
}

/// The entity of point `point` number `i`.
fn entity(point: usize, i: usize) -> usize {
    point * 1_000_000 + i
}

/// Ours, on one fresh engine: `entities` orders at each version of
/// [`POINTS`]; then one timed update of each, interleaved across the points.
/// The samples of each point.
async fn ours_points(entities: usize) -> Vec<Vec<Duration>> {
    let engine = cqrs_memory::InMemory::engine().build();
    let ctx = InvocationContext::new("shop-a", "bench");
    let mut items = vec![Vec::with_capacity(entities); POINTS.len()];
    for (point, &version) in POINTS.iter().enumerate() {
        for i in 0..entities {
            let n = entity(point, i);
            let create = CommandInput::new(PK, order_sk(n)).attributes(order_attributes(n));
            let mut item = engine
                .publish_sync(create, &ctx)
                .await
                .expect("create")
                .into_item();
            while item.version < version {
                item = engine
                    .publish_sync(ours_update(&item), &ctx)
                    .await
                    .expect("update")
                    .written()
                    .expect("a new version");
            }
            items[point].push(item);
        }
    }
    let mut samples = vec![Vec::with_capacity(entities); POINTS.len()];
    // Interleaved: entity i of every point, then entity i + 1 of every point.
    #[allow(clippy::needless_range_loop)]
    for i in 0..entities {
        for (point, &version) in POINTS.iter().enumerate() {
            let command = ours_update(&items[point][i]);
            let start = Instant::now();
            let written = engine.publish_sync(command, &ctx).await;
            samples[point].push(start.elapsed());
            let written = written.expect("update").written().expect("a new version");
            assert_eq!(written.version, version + 1);
        }
    }
    samples
}

/// The peer, over `store` (fresh): as [`ours_points`].
async fn peer_points<ES: EventStore<Order> + Clone>(store: ES, entities: usize) -> Vec<Vec<Duration>> {
    let cqrs = CqrsFramework::new(store.clone(), vec![], ());
    for (point, &version) in POINTS.iter().enumerate() {
        for i in 0..entities {
            let n = entity(point, i);
            let id = order_code(n);
            cqrs.execute(&id, create_command(n)).await.expect("create");
            for v in 1..version {
                let update = OrderCommand::ChangeQuantity {
                    quantity: quantity(v),
                };
                cqrs.execute(&id, update).await.expect("update");
            }
        }
    }
    let mut samples = vec![Vec::with_capacity(entities); POINTS.len()];
    for i in 0..entities {
        for (point, &version) in POINTS.iter().enumerate() {
            let id = order_code(entity(point, i));
            let update = OrderCommand::ChangeQuantity {
                quantity: quantity(version),
            };
            let start = Instant::now();
            let outcome = cqrs.execute(&id, update).await;
            samples[point].push(start.elapsed());
            outcome.expect("update");
        }
    }
    for (point, &version) in POINTS.iter().enumerate() {
        let events = store
            .load_events(&order_code(entity(point, 0)))
            .await
            .expect("load");
        assert_eq!(events.len() as u64, version + 1);
    }
    samples
}

/// p50 and p90 of one point.
#[derive(Clone, Copy)]
struct Point {
    p50: Duration,
    p90: Duration,
}

impl Point {
    fn of(samples: &[Duration]) -> Self {
        Self {
            p50: median(samples),
            p90: quantile(samples, 0.9),
        }
    }
}

fn main() {
    let rt = runtime();
    let entities = entities();

    // The child of `run_child`: the peer on MemStore as shipped, stdout discarded.
    if child_role().as_deref() == Some("memstore") {
        rt.block_on(peer_points(MemStore::<Order>::default(), entities.min(5)));
        for samples in rt.block_on(peer_points(MemStore::<Order>::default(), entities)) {
            let point = Point::of(&samples);
            report(&format!("{} {}", point.p50.as_nanos(), point.p90.as_nanos()));
        }
        return;
    }

    // Warm-up (allocator, page faults, code).
    rt.block_on(ours_points(entities.min(5)));
    rt.block_on(peer_points(QuietMemStore::<Order>::default(), entities.min(5)));
    let points = |samples: Vec<Vec<Duration>>| samples.iter().map(|s| Point::of(s)).collect::<Vec<_>>();
    let ours = points(rt.block_on(ours_points(entities)));
    let quiet = points(rt.block_on(peer_points(QuietMemStore::<Order>::default(), entities)));
    let shipped: Vec<Point> = run_child("memstore")
        .iter()
        .map(|line| {
            let mut ns = line
                .split(' ')
                .map(|n| Duration::from_nanos(n.parse().expect("nanoseconds")));
            Point {
                p50: ns.next().expect("p50"),
                p90: ns.next().expect("p90"),
            }
        })
        .collect();
    assert_eq!(shipped.len(), POINTS.len(), "child results");

    let rows = [
        ("ours: cqrs-core + cqrs-memory, `publish_sync`", ours),
        ("cqrs-es 0.5: `MemStore` minus its `println!`s", quiet),
        (
            "cqrs-es 0.5: `MemStore` as shipped (stdout to /dev/null)",
            shipped,
        ),
    ];
    println!();
    println!(
        "Latency of one update against the entity's version: {entities} entities per point, \
         one timed update each (V -> V+1), current_thread runtime; median (p90), microseconds"
    );
    println!();
    let header: Vec<String> = POINTS.iter().map(|v| format!("v{v}")).collect();
    println!("| system | {} | v1000/v1 (medians) |", header.join(" | "));
    println!("|---|{}---:|", "---:|".repeat(POINTS.len()));
    for (system, points) in &rows {
        let cells: Vec<String> = points
            .iter()
            .map(|p| format!("{:.1} ({:.1})", micros(p.p50), micros(p.p90)))
            .collect();
        let ratio = micros(points[POINTS.len() - 1].p50) / micros(points[0].p50);
        println!("| {system} | {} | {ratio:.2} |", cells.join(" | "));
    }
    println!();
    let ours = &rows[0].1;
    let ratio = micros(ours[POINTS.len() - 1].p50) / micros(ours[0].p50);
    println!(
        "Target: ours flat, v1000/v1 <= 1.2: {ratio:.2} ({}).",
        if ratio <= 1.2 { "met" } else { "missed" }
    );
}
