//! Workload 4, contention: 64 concurrent tasks each reserve 1 unit of one
//! product that has 10 units, on both backends. Exactly 10 must succeed and
//! the inventory must end with 10 of 10 units reserved, never more.
//!
//! Three paths per backend, each `ROUNDS` times (default 5) on a fresh store:
//!
//! - `InventoryService::reserve`: the e-commerce service itself, since issue
//!   12 a stock desk (reservations queued per tenant and decided in batches,
//!   one commit per batch: no version conflicts within the process; see
//!   `docs/hot-entities.md`).
//! - `counted loop`: the algorithm before the stock desk, written out here
//!   to count attempts and conflicts (optimistic read, check, `commit` at
//!   the version read, random backoff and retry on a conflict, up to 40
//!   attempts; the record keeps a per-order map: `benches/src/baseline.rs`).
//! - `counted loop, yield after read`: the same, yielding to the scheduler
//!   between read and commit. On the in-memory backend no call yields, so
//!   tasks barely overlap; this forces them to read the same version.
//!
//! Also printed: one task alone, for the uncontended time of an attempt.
//!
//! `cargo bench -p cqrs-benches --bench contention`; set `DYNAMODB_ENDPOINT`
//! for the DynamoDB rows. Tokio multi-thread runtime, one worker per core.

#[allow(dead_code)]
#[path = "../src/backends.rs"]
mod backends;
#[allow(dead_code)]
#[path = "../src/baseline.rs"]
mod baseline;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backends::{markdown_table, skipped_row, Backend};
use cqrs_core::{
    tenant_pk, CommandInput, CommandService, DataService, EntityKey, InvocationContext, ListQuery,
    SkCondition,
};
use ecommerce::domain::{inventory_sk, InventoryAttributes, ReservationAttributes, ReservationState};
use ecommerce::services::{NewProduct, ReserveOutcome, SetInventory};
use ecommerce::Shop;
use tokio::sync::Barrier;

const TASKS: usize = 64;
const UNITS: i64 = 10;
const TENANT: &str = "shop-a";
const PRODUCT: &str = "PRD-001";
/// The baseline's attempts before giving up.
const MAX_ATTEMPTS: u32 = baseline::MAX_ATTEMPTS;

/// How one task's reservation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Reserved,
    Insufficient,
    /// Still conflicting after `MAX_ATTEMPTS`.
    GaveUp,
}

/// One task's result.
#[derive(Debug, Clone)]
struct TaskResult {
    order: String,
    outcome: Outcome,
    /// What the counted loop counted (not the service).
    counts: Option<Counts>,
}

/// Attempts and where a counted task's time went.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    /// Reads (and commits) tried.
    attempts: u32,
    /// Commits that ended in a version conflict.
    conflicts: u32,
    /// Time in `get_item` and `commit`.
    in_calls: Duration,
    /// Time waiting before a retry.
    in_backoff: Duration,
}

impl std::ops::Add for Counts {
    type Output = Counts;

    fn add(self, other: Counts) -> Counts {
        Counts {
            attempts: self.attempts + other.attempts,
            conflicts: self.conflicts + other.conflicts,
            in_calls: self.in_calls + other.in_calls,
            in_backoff: self.in_backoff + other.in_backoff,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Service,
    CountedLoop,
    /// The counted loop, yielding to the scheduler between read and commit.
    CountedLoopYield,
}

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::Service => "`InventoryService::reserve`",
            Path::CountedLoop => "counted loop",
            Path::CountedLoopYield => "counted loop, yield after read",
        }
    }
}

/// Staff: seeding the product and its stock needs the role.
fn ctx() -> InvocationContext {
    InvocationContext::new(TENANT, "bench").with_roles(["staff"])
}

fn inventory_key() -> EntityKey {
    EntityKey::new(tenant_pk(TENANT), inventory_sk(PRODUCT))
}

/// The product and its inventory of `UNITS` units.
async fn seed(shop: &Shop) {
    let product: NewProduct = serde_json::from_value(serde_json::json!({
        "code": PRODUCT,
        "name": "Wireless Mouse",
        "categoryCode": "ACCESSORIES",
        "sku": "SKU-PRD-001",
        "price": 29.99,
        "currency": "USD",
        "isActive": true,
    }))
    .expect("product");
    shop.products
        .create(product, &ctx())
        .await
        .expect("create product");
    let stock = SetInventory {
        quantity: UNITS,
        warehouse_code: "WH-1".to_owned(),
        version: None,
    };
    shop.inventory
        .set(PRODUCT, stock, &ctx())
        .await
        .expect("set inventory");
}

/// The baseline's wait before retrying a conflict (its `RetryPolicy`: 4 ms
/// doubling to 128 ms, a random time below it, drawn by `Services`):
/// uniform in 0..=2^(min(attempt, 6) + 1) ms.
async fn conflict_backoff(attempt: u32, rng: &mut SplitMix64) {
    let ceiling_ms = 2u64 << attempt.min(6);
    tokio::time::sleep(Duration::from_millis(rng.next() % (ceiling_ms + 1))).await;
}

/// A small PRNG (the package has no `fastrand`), seeded per task.
struct SplitMix64(u64);

impl SplitMix64 {
    fn seeded(task: usize) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        Self(nanos ^ (task as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The baseline's reservation of one product, written out to count attempts.
///
/// With `yield_after_read`, the task yields between its read and its commit,
/// so that other tasks read the same version (on the in-memory backend no
/// call yields otherwise, and tasks barely overlap).
async fn counted_reserve(
    shop: &Shop,
    order: &str,
    rng: &mut SplitMix64,
    yield_after_read: bool,
) -> TaskResult {
    let ctx = ctx();
    let key = inventory_key();
    let mut counts = Counts::default();
    let mut outcome = Outcome::GaveUp;
    for attempt in 1..=MAX_ATTEMPTS {
        counts.attempts = attempt;
        let call = Instant::now();
        let item = shop
            .engine
            .get_item(&key, &ctx)
            .await
            .expect("read")
            .expect("inventory exists");
        counts.in_calls += call.elapsed();
        if yield_after_read {
            tokio::task::yield_now().await;
        }
        let mut attributes: baseline::Inventory = item.attributes_as().expect("inventory attributes");
        if attributes.reservations.contains_key(order) {
            outcome = Outcome::Reserved;
            break;
        }
        if attributes.available() < 1 {
            outcome = Outcome::Insufficient;
            break;
        }
        attributes.reserved_quantity += 1;
        attributes.reservations.insert(order.to_owned(), 1);
        let command = CommandInput::update_of(&item)
            .attributes_from(&attributes)
            .expect("attributes");
        let call = Instant::now();
        let committed = shop.engine.commit(vec![command], &ctx).await;
        counts.in_calls += call.elapsed();
        match committed {
            Ok(_) => {
                outcome = Outcome::Reserved;
                break;
            }
            Err(e) if e.is_conflict() => {
                counts.conflicts += 1;
                let wait = Instant::now();
                conflict_backoff(attempt, rng).await;
                counts.in_backoff += wait.elapsed();
            }
            Err(e) => panic!("reserve {order}: {e}"),
        }
    }
    TaskResult {
        order: order.to_owned(),
        outcome,
        counts: Some(counts),
    }
}

async fn service_reserve(shop: &Shop, order: &str) -> TaskResult {
    let units = BTreeMap::from([(PRODUCT.to_owned(), 1)]);
    let outcome = match shop.inventory.reserve(order, &units, &ctx()).await {
        Ok(ReserveOutcome::Reserved) => Outcome::Reserved,
        Ok(ReserveOutcome::Insufficient { .. }) => Outcome::Insufficient,
        Err(ecommerce::ShopError::Conflict(_)) => Outcome::GaveUp,
        Err(e) => panic!("reserve {order}: {e}"),
    };
    TaskResult {
        order: order.to_owned(),
        outcome,
        counts: None,
    }
}

/// What one round measured (every invariant checked).
struct Round {
    total: Duration,
    median_task: Duration,
    /// Version of the record at the end (1 + its commits).
    final_version: u64,
    /// Summed over all tasks (counted loop only).
    counts: Option<Counts>,
}

/// Runs the 64 tasks once on a fresh store and checks the invariants;
/// `None` when the backend is not configured.
async fn round(backend: Backend, path: Path) -> Option<Round> {
    let store = backends::storage(backend, "contention").await?;
    let shop = Shop::new(store.storage.clone());
    seed(&shop).await;

    let barrier = Arc::new(Barrier::new(TASKS + 1));
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let shop = shop.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                let order = format!("ORD-{task:06}");
                let mut rng = SplitMix64::seeded(task);
                barrier.wait().await;
                let started = Instant::now();
                let result = match path {
                    Path::Service => service_reserve(&shop, &order).await,
                    Path::CountedLoop => counted_reserve(&shop, &order, &mut rng, false).await,
                    Path::CountedLoopYield => counted_reserve(&shop, &order, &mut rng, true).await,
                };
                (result, started, Instant::now())
            })
        })
        .collect();
    barrier.wait().await;
    let mut results = Vec::with_capacity(TASKS);
    let mut latencies = Vec::with_capacity(TASKS);
    let (mut first_start, mut last_end) = (None::<Instant>, None::<Instant>);
    for task in tasks {
        let (result, started, ended) = task.await.expect("task");
        results.push(result);
        latencies.push(ended - started);
        first_start = Some(first_start.map_or(started, |s| s.min(started)));
        last_end = Some(last_end.map_or(ended, |e| e.max(ended)));
    }
    let total = last_end.expect("tasks") - first_start.expect("tasks");

    let count = |outcome| results.iter().filter(|r| r.outcome == outcome).count();
    let label = format!("{} / {}", backend.name(), path.name());
    assert_eq!(count(Outcome::Reserved), UNITS as usize, "{label}: successes");
    assert_eq!(
        count(Outcome::Insufficient),
        TASKS - UNITS as usize,
        "{label}: insufficient"
    );
    assert_eq!(count(Outcome::GaveUp), 0, "{label}: gave up");

    // The final record, and every version before it: reserved never above quantity.
    let ctx = ctx();
    let key = inventory_key();
    let last = shop
        .engine
        .get_item(&key, &ctx)
        .await
        .expect("read")
        .expect("inventory");
    let mut versions = shop.engine.list_history(&key, &ctx).await.expect("history");
    versions.push(last.clone());
    let mut before = 0;
    for (expected_version, item) in (1..).zip(&versions) {
        assert_eq!(item.version, expected_version, "{label}: versions");
        let a: InventoryAttributes = item.attributes_as().expect("attributes");
        assert!(
            a.reserved_quantity <= a.quantity,
            "{label}: v{} over-reserved",
            item.version
        );
        assert!(a.reserved_quantity >= before, "{label}: v{}", item.version);
        before = a.reserved_quantity;
        if path != Path::Service {
            // One version per reservation.
            assert_eq!(
                a.reserved_quantity,
                expected_version as i64 - 1,
                "{label}: v{}",
                item.version
            );
        }
    }
    let attributes: InventoryAttributes = last.attributes_as().expect("attributes");
    assert_eq!(
        (attributes.reserved_quantity, attributes.quantity),
        (UNITS, UNITS),
        "{label}"
    );
    let mut winners: Vec<&str> = results
        .iter()
        .filter(|r| r.outcome == Outcome::Reserved)
        .map(|r| r.order.as_str())
        .collect();
    winners.sort_unstable();
    // Who holds the units: the reservation entities now, the record's map before.
    let recorded: Vec<String> = if path == Path::Service {
        let query = ListQuery::new()
            .sk(SkCondition::BeginsWith("RESERVATION#".into()))
            .limit(cqrs_core::MAX_LIMIT);
        let page = DataService::list_items(&shop.engine, &tenant_pk(TENANT), query, &ctx)
            .await
            .expect("reservations");
        page.items
            .iter()
            .map(|item| {
                item.attributes_as::<ReservationAttributes>()
                    .expect("a reservation")
            })
            .filter(|r| r.state == ReservationState::Reserved)
            .map(|r| r.order_code)
            .collect()
    } else {
        let map: baseline::Inventory = last.attributes_as().expect("attributes");
        map.reservations.into_keys().collect()
    };
    assert_eq!(winners, recorded, "{label}: the holders are the winners");
    if path == Path::Service {
        assert!(
            last.version <= 1 + UNITS as u64,
            "{label}: at most one version per success"
        );
    } else {
        assert_eq!(last.version, 1 + UNITS as u64, "{label}: one version per success");
    }
    let final_version = last.version;

    latencies.sort_unstable();
    let counts = results.iter().filter_map(|r| r.counts).reduce(|a, b| a + b);
    let round = Round {
        total,
        median_task: latencies[TASKS / 2],
        final_version,
        counts,
    };
    store.cleanup().await;
    Some(round)
}

/// `ROUNDS` rounds (each asserted: 10 successes, 54 insufficient, 10 of 10
/// reserved); the row of the table.
async fn run(backend: Backend, path: Path, rounds: usize) -> Vec<String> {
    let mut done = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        match round(backend, path).await {
            Some(round) => done.push(round),
            None => {
                let mut row = skipped_row(backend, 12);
                row.insert(1, path.name().to_owned());
                row.pop();
                return row;
            }
        }
    }
    let mut totals: Vec<Duration> = done.iter().map(|r| r.total).collect();
    totals.sort_unstable();
    let mut medians: Vec<Duration> = done.iter().map(|r| r.median_task).collect();
    medians.sort_unstable();
    let (attempts, conflicts, retries, per_attempt, backoff) =
        match done.iter().filter_map(|r| r.counts).reduce(|a, b| a + b) {
            None => (
                "n/a".to_owned(),
                "n/a".to_owned(),
                "n/a (not exposed)".to_owned(),
                "n/a".to_owned(),
                "n/a".to_owned(),
            ),
            Some(c) => (
                format!("{:.1}", f64::from(c.attempts) / rounds as f64),
                format!("{:.1}", f64::from(c.conflicts) / rounds as f64),
                format!("{:.2}", f64::from(c.conflicts) / (UNITS as usize * rounds) as f64),
                duration(c.in_calls / c.attempts),
                duration(c.in_backoff / (TASKS * rounds) as u32),
            ),
        };
    vec![
        backend.name().to_owned(),
        path.name().to_owned(),
        format!("{UNITS} ×{rounds}"),
        format!("{} ×{rounds}", TASKS - UNITS as usize),
        format!(
            "{} ({} – {})",
            duration(totals[rounds / 2]),
            duration(totals[0]),
            duration(totals[rounds - 1])
        ),
        duration(medians[rounds / 2]),
        attempts,
        conflicts,
        retries,
        per_attempt,
        backoff,
        {
            let mut versions: Vec<u64> = done.iter().map(|r| r.final_version).collect();
            versions.sort_unstable();
            if versions[0] == versions[rounds - 1] {
                format!("{UNITS} / {UNITS}, v{}", versions[0])
            } else {
                format!("{UNITS} / {UNITS}, v{}–v{}", versions[0], versions[rounds - 1])
            }
        },
    ]
}

/// One task alone, `UNITS` reservations one after the other on a fresh
/// store: the mean time of one read + commit without contention.
async fn uncontended(backend: Backend) -> Option<Duration> {
    let store = backends::storage(backend, "contention").await?;
    let shop = Shop::new(store.storage.clone());
    seed(&shop).await;
    let mut rng = SplitMix64::seeded(0);
    let mut counts = Counts::default();
    for order in 0..UNITS {
        let result = counted_reserve(&shop, &format!("ORD-{order:06}"), &mut rng, false).await;
        assert_eq!(result.outcome, Outcome::Reserved);
        counts = counts + result.counts.expect("counted");
    }
    assert_eq!(counts.conflicts, 0, "a task alone never conflicts");
    store.cleanup().await;
    Some(counts.in_calls / counts.attempts)
}

/// `123 µs` or `12.3 ms`.
fn duration(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{} µs", d.as_micros())
    } else {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .map(|r| r.parse().expect("ROUNDS is a number"))
        .unwrap_or(5)
        .max(1);
    let mut rows = Vec::new();
    let mut baselines = Vec::new();
    for backend in Backend::ALL {
        for path in [Path::Service, Path::CountedLoop, Path::CountedLoopYield] {
            rows.push(run(backend, path, rounds).await);
        }
        baselines.push(match uncontended(backend).await {
            Some(d) => format!("{}: {}", backend.name(), duration(d)),
            None => format!("{}: {}", backend.name(), backends::SKIPPED),
        });
    }
    println!(
        "\n### Contention: {TASKS} tasks reserve 1 unit each of one product with {UNITS} units\n\n\
         Multi-thread Tokio runtime ({} workers). {rounds} rounds per row, each on a fresh store and \
         asserted (10 successes, 54 insufficient, none gave up, every version reserved <= quantity, \
         final 10 of 10 reserved by exactly the winners; the counted loops, the design before the \
         stock desk: one version per success). Tasks start together (barrier); in the counted loops \
         a conflict is retried after a random wait of 0..=2^(min(attempt,6)+1) ms, at most \
         {MAX_ATTEMPTS} attempts; the service queues on its stock desk (no conflicts within the \
         process, one commit per batch). Total time: first task's start to last task's end, median (min – max) of the \
         rounds; median task: median over rounds of the per-task median. Attempts and conflicts: \
         per round, all 64 tasks; retries per success = conflicts / successes; read + commit per \
         attempt: mean time in `get_item` + `commit`; backoff per task: mean time waiting to retry.\n",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    print!(
        "{}",
        markdown_table(
            &[
                "backend",
                "path",
                "successes",
                "insufficient",
                "total time",
                "median task",
                "attempts",
                "conflicts",
                "retries / success",
                "read + commit per attempt",
                "backoff per task",
                "final reserved / qty, version",
            ],
            &rows,
        )
    );
    println!(
        "\nUncontended, for comparison (one task, {UNITS} reservations in a row): read + commit per \
         attempt = {}.",
        baselines.join("; ")
    );
}
