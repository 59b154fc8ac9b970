//! Workload 11, projections: a sales report (units and revenue per product
//! per day, cancelled orders taken out) kept in SQL by a `Projector`.
//!
//! - **throughput**: events/s applied into SQLite (a file, WAL) and
//!   PostgreSQL (`CQRS_POSTGRES_URL`), one transaction per event (effect and
//!   checkpoint), by 1 and by 8 concurrent consumers, and into
//!   `MemoryTarget` for the framework's own cost;
//! - **rebuild**: 100,000 orders (`CQRS_BENCH_REBUILD_ORDERS` to change it)
//!   rebuilt into a new generation while an order a millisecond keeps
//!   arriving through the live pipeline; rows/s, and the report checked
//!   against the data table after the switch;
//! - **lag**: publish (async, DynamoDB Local when `DYNAMODB_ENDPOINT` is
//!   set, else memory) → projection committed in SQLite, under a steady
//!   20 orders/s; p50 / p99.
//!
//! `cargo bench -p cqrs-benches --bench projections` (the test script's
//! services: `eval "$(./scripts/postgres)"`, `eval "$(./scripts/dynamodb-local)"`).
//! `CQRS_BENCH_ONLY=throughput|rebuild|lag` runs one part.

#[allow(dead_code)]
#[path = "../src/backends.rs"]
mod backends;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use backends::{markdown_table, Backend};
use cqrs_core::projection::{Applied, Change, MemoryTarget, MemoryTx, Projection, Projector, Scope};
use cqrs_core::{
    tenant_pk, BoxError, CommandInput, CommandService, DataSyncEvent, DataSyncHandler, Engine,
    ExpectedVersion, InvocationContext, Storage,
};
use cqrs_sql::{SqlTarget, SqlTx};
use serde::{Deserialize, Serialize};
use sqlx::Any;

const TENANT: &str = "bench";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Line {
    product: String,
    quantity: i64,
    price_cents: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    status: String,
    lines: Vec<Line>,
}

/// What an order adds to the report: (day, product) → (units, revenue).
fn contribution(change_day: &str, order: Option<&Order>) -> Vec<((String, String), (i64, i64))> {
    let Some(order) = order.filter(|o| o.status != "cancelled") else {
        return Vec::new();
    };
    order
        .lines
        .iter()
        .map(|l| {
            (
                (change_day.to_owned(), l.product.clone()),
                (l.quantity, l.quantity * l.price_cents),
            )
        })
        .collect()
}

fn day_of(change: &Change<Order>) -> String {
    change.new.item.created_at.format("%Y-%m-%d").to_string()
}

/// The report in SQL (SQLite or PostgreSQL through `Any`).
struct SalesSql;

#[async_trait]
impl Projection<SqlTx<Any>> for SalesSql {
    type State = Order;
    fn name(&self) -> &str {
        "bench-sales"
    }
    fn interest(&self) -> cqrs_core::Interest {
        cqrs_core::Interest::SkPrefix("ORDER#".into())
    }
    fn tables(&self) -> Vec<String> {
        vec!["bench_sales".into()]
    }
    async fn create(&self, tx: &mut SqlTx<Any>) -> Result<(), BoxError> {
        let table = tx.table("bench_sales")?;
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS {table} (tenant TEXT NOT NULL, day TEXT NOT NULL, product TEXT NOT NULL, \
             units BIGINT NOT NULL, revenue_cents BIGINT NOT NULL, PRIMARY KEY (tenant, day, product))"
        ))
        .execute(tx.conn())
        .await?;
        Ok(())
    }
    async fn apply(&self, tx: &mut SqlTx<Any>, change: &Change<Order>) -> Result<(), BoxError> {
        let table = tx.table("bench_sales")?;
        let upsert = format!(
            "INSERT INTO {table} (tenant, day, product, units, revenue_cents) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (tenant, day, product) DO UPDATE SET units = {table}.units + excluded.units, \
             revenue_cents = {table}.revenue_cents + excluded.revenue_cents"
        );
        for ((day, product), (units, revenue)) in net(change) {
            sqlx::query(&upsert)
                .bind(change.tenant().to_owned())
                .bind(day)
                .bind(product)
                .bind(units)
                .bind(revenue)
                .execute(tx.conn())
                .await?;
        }
        Ok(())
    }
}

/// New contribution minus old, per (day, product), zero entries left out.
fn net(change: &Change<Order>) -> BTreeMap<(String, String), (i64, i64)> {
    let day = day_of(change);
    let mut net = BTreeMap::new();
    for (key, (u, r)) in contribution(&day, change.old_state()) {
        let e = net.entry(key).or_insert((0, 0));
        e.0 -= u;
        e.1 -= r;
    }
    for (key, (u, r)) in contribution(&day, change.new_state()) {
        let e = net.entry(key).or_insert((0, 0));
        e.0 += u;
        e.1 += r;
    }
    net.retain(|_, v| *v != (0, 0));
    net
}

/// The same report in `MemoryTarget`: the framework's cost alone.
struct SalesMemory;

#[async_trait]
impl Projection<MemoryTx> for SalesMemory {
    type State = Order;
    fn name(&self) -> &str {
        "bench-sales"
    }
    fn interest(&self) -> cqrs_core::Interest {
        cqrs_core::Interest::SkPrefix("ORDER#".into())
    }
    async fn apply(&self, tx: &mut MemoryTx, change: &Change<Order>) -> Result<(), BoxError> {
        for ((day, product), (units, revenue)) in net(change) {
            let key = format!("{}/{day}/{product}", change.tenant());
            let (u, r) = tx
                .get("sales", &key)
                .and_then(|v| Some((v.get(0)?.as_i64()?, v.get(1)?.as_i64()?)))
                .unwrap_or((0, 0));
            tx.put("sales", &key, serde_json::json!([u + units, r + revenue]));
        }
        Ok(())
    }
}

fn order(n: usize, status: &str) -> Order {
    Order {
        status: status.into(),
        lines: vec![
            Line {
                product: format!("PRD-{:03}", n % 20),
                quantity: 1 + (n % 3) as i64,
                price_cents: 1999,
            },
            Line {
                product: format!("PRD-{:03}", (n * 7) % 20),
                quantity: 2,
                price_cents: 550,
            },
        ],
    }
}

fn ctx() -> InvocationContext {
    InvocationContext::new(TENANT, "bench")
}

/// `orders` orders, every fifth one then cancelled: the events the pipeline
/// would deliver, in publish order.
async fn order_events(storage: &Arc<dyn Storage>, orders: usize) -> Vec<DataSyncEvent> {
    let engine = Engine::builder(Arc::clone(storage)).build();
    for n in 0..orders {
        let command = CommandInput::new(tenant_pk(TENANT), format!("ORDER#{n:07}"))
            .attributes_from(&order(n, "confirmed"))
            .expect("order");
        engine.publish_sync(command, &ctx()).await.expect("publish");
        if n % 5 == 4 {
            let cancel = CommandInput::new(tenant_pk(TENANT), format!("ORDER#{n:07}"))
                .attributes_from(&order(n, "cancelled"))
                .expect("order")
                .version(ExpectedVersion::Exactly(1));
            engine.publish_sync(cancel, &ctx()).await.expect("cancel");
        }
    }
    let mut events = Vec::new();
    for n in 0..orders {
        let key = cqrs_core::EntityKey::new(tenant_pk(TENANT), format!("ORDER#{n:07}"));
        let current = storage.get_data(&key).await.expect("read").expect("row");
        let first = match storage.get_history(&key, 1).await.expect("history") {
            Some(first) => first,
            None => current.clone(),
        };
        for (old, new) in std::iter::once((None, first.clone()))
            .chain((current.version > 1).then(|| (Some(first), current)))
        {
            let command = storage
                .get_command(&key, new.version)
                .await
                .expect("command")
                .expect("row");
            events.push(DataSyncEvent {
                command,
                old,
                new,
                context: ctx(),
                attempt: 1,
            });
        }
    }
    events
}

/// Applies `events` by `consumers` concurrent consumers (each a share of
/// the entities, in order per entity); events/s.
async fn apply_all<P, T>(projector: &Projector<P, T>, events: &[DataSyncEvent], consumers: usize) -> f64
where
    T: cqrs_core::projection::ProjectionTarget,
    P: Projection<T::Tx>,
{
    let started = Instant::now();
    let shares = (0..consumers).map(|c| {
        let mine: Vec<_> = events
            .iter()
            .filter(|e| hash(&e.command.sk) % consumers == c)
            .collect();
        async move {
            for event in mine {
                let applied = projector.apply(event).await.expect("apply");
                assert!(matches!(applied, Applied::Changed { .. }));
            }
        }
    });
    futures::future::join_all(shares).await;
    events.len() as f64 / started.elapsed().as_secs_f64()
}

fn hash(text: &str) -> usize {
    text.bytes()
        .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize))
}

/// A fresh SQL target for `name`: a SQLite file in a temp dir, or a fresh
/// PostgreSQL database.
async fn sql_target(name: &str) -> Option<SqlTarget<Any>> {
    let url = match name {
        "SQLite" => {
            let dir =
                std::env::temp_dir().join(format!("cqrs-bench-{}-{}", std::process::id(), fastrand_u64()));
            std::fs::create_dir_all(&dir).expect("temp dir");
            format!("sqlite://{}?mode=rwc", dir.join("read.db").display())
        }
        _ => {
            let base = std::env::var("CQRS_POSTGRES_URL")
                .ok()
                .filter(|u| !u.is_empty())?;
            let db = format!("bench_{}_{}", std::process::id(), fastrand_u64());
            let admin = SqlTarget::<Any>::connect(&base).await.expect("postgres");
            sqlx::query(&format!("CREATE DATABASE {db}"))
                .execute(admin.pool())
                .await
                .expect("create database");
            let (prefix, _) = base.rsplit_once('/').expect("a URL with a database");
            format!("{prefix}/{db}")
        }
    };
    Some(SqlTarget::<Any>::connect(&url).await.expect("connect"))
}

fn fastrand_u64() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn only(part: &str) -> bool {
    std::env::var("CQRS_BENCH_ONLY").map_or(true, |only| only == part)
}

async fn throughput() {
    let storage: Arc<dyn Storage> = Arc::new(cqrs_memory::InMemory::new());
    let events = order_events(&storage, 5_000).await;
    let mut rows = Vec::new();
    for consumers in [1, 8] {
        let projector = Projector::new(SalesMemory, MemoryTarget::new(), Arc::clone(&storage));
        let rate = apply_all(&projector, &events, consumers).await;
        rows.push(vec![
            "MemoryTarget".into(),
            consumers.to_string(),
            events.len().to_string(),
            format!("{rate:.0}"),
        ]);
    }
    for name in ["SQLite", "PostgreSQL"] {
        for consumers in [1, 8] {
            let Some(target) = sql_target(name).await else {
                rows.push(vec![
                    name.into(),
                    consumers.to_string(),
                    "skipped (CQRS_POSTGRES_URL not set)".into(),
                    String::new(),
                ]);
                continue;
            };
            let projector = Projector::new(SalesSql, target, Arc::clone(&storage));
            projector.prepare().await.expect("prepare");
            let rate = apply_all(&projector, &events, consumers).await;
            rows.push(vec![
                name.into(),
                consumers.to_string(),
                events.len().to_string(),
                format!("{rate:.0}"),
            ]);
        }
    }
    println!("\n### Projection throughput (sales report, one transaction per event)\n");
    println!(
        "{}",
        markdown_table(&["Target", "Consumers", "Events", "Events/s"], &rows)
    );
}

async fn rebuild() {
    let orders: usize = std::env::var("CQRS_BENCH_REBUILD_ORDERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let storage: Arc<dyn Storage> = Arc::new(cqrs_memory::InMemory::new());
    let seeding = Instant::now();
    let seed = Engine::builder(Arc::clone(&storage)).build();
    for n in 0..orders {
        let command = CommandInput::new(tenant_pk(TENANT), format!("ORDER#{n:07}"))
            .attributes_from(&order(n, "confirmed"))
            .expect("order");
        seed.publish_sync(command, &ctx()).await.expect("seed");
    }
    eprintln!("seeded {orders} orders in {:.1?}", seeding.elapsed());
    let mut rows = Vec::new();
    for name in ["SQLite", "PostgreSQL"] {
        let Some(target) = sql_target(name).await else {
            rows.push(vec![
                name.into(),
                "skipped (CQRS_POSTGRES_URL not set)".into(),
                String::new(),
                String::new(),
                String::new(),
            ]);
            continue;
        };
        let projector = Projector::new(SalesSql, target.clone(), Arc::clone(&storage));
        projector.prepare().await.expect("prepare");
        let live = Engine::builder(Arc::clone(&storage))
            .handler(projector.clone())
            .build();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let arriving = {
            let stop = Arc::clone(&stop);
            let name = name.to_owned();
            tokio::spawn(async move {
                let mut n = 0;
                let mut tick = tokio::time::interval(Duration::from_millis(1));
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    tick.tick().await;
                    let command = CommandInput::new(tenant_pk(TENANT), format!("ORDER#L{name}{n:06}"))
                        .attributes_from(&order(n, "confirmed"))
                        .expect("order");
                    live.publish_sync(command, &ctx()).await.expect("live order");
                    n += 1;
                }
                n
            })
        };
        let rebuilt = projector
            .rebuild(Scope::tenants([TENANT]))
            .batch(500)
            .run()
            .await
            .expect("rebuild");
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let live_orders = arriving.await.expect("live task");
        let (want, got) = (report_from_data(&storage).await, report_from_sql(&target).await);
        let exact = if want == got { "equal" } else { "DIFFERENT" };
        rows.push(vec![
            name.into(),
            rebuilt.rows.to_string(),
            format!("{:.1} s", rebuilt.elapsed.as_secs_f64()),
            format!("{:.0}", rebuilt.rows as f64 / rebuilt.elapsed.as_secs_f64()),
            format!("{live_orders} live orders during it; report vs data table: {exact}"),
        ]);
    }
    println!("\n### Rebuild of {orders} orders while orders keep arriving (batch 500)\n");
    println!(
        "{}",
        markdown_table(&["Target", "Rows", "Took", "Rows/s", "Check"], &rows)
    );
}

type Report = BTreeMap<(String, String), (i64, i64)>;

async fn report_from_data(storage: &Arc<dyn Storage>) -> Report {
    let mut report = Report::new();
    let mut after = None;
    loop {
        let page = storage
            .query_data(&cqrs_core::RangeQuery {
                pk: tenant_pk(TENANT),
                sk: Some(cqrs_core::SkCondition::BeginsWith("ORDER#".into())),
                order: Default::default(),
                start_after: after,
                limit: 1000,
            })
            .await
            .expect("scan");
        for item in &page.items {
            let order: Order = item.attributes_as().expect("order");
            let day = item.created_at.format("%Y-%m-%d").to_string();
            for (key, (u, r)) in contribution(&day, Some(&order)) {
                let e = report.entry(key).or_insert((0, 0));
                e.0 += u;
                e.1 += r;
            }
        }
        match page.last_sk {
            Some(sk) => after = Some(sk),
            None => break,
        }
    }
    report.retain(|_, v| *v != (0, 0));
    report
}

async fn report_from_sql(target: &SqlTarget<Any>) -> Report {
    let rows: Vec<(String, String, i64, i64)> =
        sqlx::query_as("SELECT day, product, units, revenue_cents FROM bench_sales")
            .fetch_all(target.pool())
            .await
            .expect("report");
    rows.into_iter()
        .filter(|r| (r.2, r.3) != (0, 0))
        .map(|(d, p, u, r)| ((d, p), (u, r)))
        .collect()
}

/// Records when each event's projection committed.
struct Timed<P, T> {
    projector: Projector<P, T>,
    committed: Arc<Mutex<HashMap<String, Instant>>>,
}

#[async_trait]
impl<P, T> DataSyncHandler for Timed<P, T>
where
    T: cqrs_core::projection::ProjectionTarget,
    P: Projection<T::Tx>,
{
    fn name(&self) -> &str {
        self.projector.name()
    }
    fn interest(&self) -> cqrs_core::Interest {
        DataSyncHandler::interest(&self.projector)
    }
    async fn handle(&self, event: &DataSyncEvent) -> Result<(), BoxError> {
        self.projector.apply(event).await?;
        self.committed
            .lock()
            .expect("lock")
            .entry(event.command.sk.to_string())
            .or_insert_with(Instant::now);
        Ok(())
    }
}

async fn lag() {
    let backend = if backends::dynamodb_endpoint().is_some() {
        Backend::DynamoDb
    } else {
        Backend::Memory
    };
    let bench = backends::storage(backend, "projection-lag")
        .await
        .expect("storage");
    let target = sql_target("SQLite").await.expect("sqlite");
    let projector = Projector::new(SalesSql, target, Arc::clone(&bench.storage));
    projector.prepare().await.expect("prepare");
    let committed = Arc::new(Mutex::new(HashMap::new()));
    let engine = Engine::builder(Arc::clone(&bench.storage))
        .handler(Timed {
            projector,
            committed: Arc::clone(&committed),
        })
        .build();
    let (rate, seconds) = (20u32, 15u32);
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    let mut published = Vec::new();
    for n in 0..(rate * seconds) as usize {
        tick.tick().await;
        let sk = format!("ORDER#{n:07}");
        let command = CommandInput::new(tenant_pk(TENANT), &sk)
            .attributes_from(&order(n, "confirmed"))
            .expect("order");
        engine.publish_async(command, &ctx()).await.expect("publish");
        published.push((sk, Instant::now()));
    }
    engine.wait_idle().await;
    let committed = committed.lock().expect("lock");
    let mut lags: Vec<Duration> = published
        .iter()
        .filter_map(|(sk, at)| committed.get(sk).map(|c| c.saturating_duration_since(*at)))
        .collect();
    lags.sort();
    let pct = |p: f64| lags[((lags.len() as f64 * p) as usize).min(lags.len() - 1)];
    println!("\n### Projection lag: publish_async returned → projection committed (SQLite), {rate} orders/s for {seconds} s\n");
    println!(
        "{}",
        markdown_table(
            &["Storage", "Orders", "Applied", "Lag p50", "Lag p99"],
            &[vec![
                backend.name().into(),
                published.len().to_string(),
                lags.len().to_string(),
                format!("{:.1?}", pct(0.50)),
                format!("{:.1?}", pct(0.99)),
            ]]
        )
    );
    bench.cleanup().await;
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        if only("throughput") {
            throughput().await;
        }
        if only("rebuild") {
            rebuild().await;
        }
        if only("lag") {
            lag().await;
        }
    });
}
