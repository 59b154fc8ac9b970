//! Workload 7, HTTP: requests per second and latency percentiles of
//! `POST /orders` and `GET /orders/{code}` of the e-commerce example on the
//! memory backend, under a closed-loop load generator on loopback.
//!
//! `cargo bench -p cqrs-benches --bench http`
//!
//! The server runs in this process, on its own multi-thread Tokio runtime
//! (as many workers as cores), listening on `127.0.0.1:0`; the load
//! generator runs on a second multi-thread runtime of the same size. Client
//! and server therefore share the machine's cores: the numbers are a lower
//! bound of what the server alone would do. Because the server is in
//! process, no tracing subscriber is installed: the per-request log line
//! costs a disabled-callsite check only. To measure the real program, with
//! its log lines on stderr, start it and point the generator at it:
//!
//! ```sh
//! cargo build --release --example ecommerce
//! ECOMMERCE_JWT_SECRET=bench RUST_LOG=info target/release/examples/ecommerce --addr 127.0.0.1:3000 2>/dev/null &
//! ECOMMERCE_JWT_SECRET=bench HTTP_BENCH_URL=http://127.0.0.1:3000 cargo bench -p cqrs-benches --bench http
//! ```
//!
//! Each of `CONNECTIONS` tasks owns one `reqwest` client with one keep-alive
//! connection and sends requests back to back for `WARMUP + DURATION`; the
//! requests started within `DURATION` after the warm-up are recorded
//! (latency from sending to the last byte of the body, and status). A
//! non-2xx status or a transport error counts as an error.
//!
//! The order body is the seed's line `PRD-001 × 1 at 29.99`. By default the
//! stock is left at the demo's 100 units: the first 100 orders reserve a
//! unit, every later one is still a valid `201` whose reservation the
//! pipeline then marks `failed`. With `HTTP_BENCH_RESTOCK=1` the generator
//! first sets PRD-001 to 100,000,000 units so that every reservation
//! succeeds; the reservations then change the one inventory record's
//! counters (several per commit: the example's stock desk), and each
//! order's reservation is an entity of its own, so the record stays the
//! same size however many orders are open.
//!
//! Environment (all optional): `HTTP_BENCH_CONNECTIONS` (32),
//! `HTTP_BENCH_SECS` (10), `HTTP_BENCH_WARMUP_SECS` (2),
//! `HTTP_BENCH_ORDERS` (1000, the orders `GET` cycles through),
//! `HTTP_BENCH_RESTOCK` (0), `HTTP_BENCH_URL` (an external server; tokens
//! are then signed with `ECOMMERCE_JWT_SECRET`, else the development secret).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cqrs_core::{tenant_pk, DataService, InvocationContext, ListQuery, SkCondition};
use ecommerce::auth::{Auth, DEVELOPMENT_SECRET, SECRET_ENV};
use ecommerce::Shop;
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

const TENANT: &str = "shop-a";
const TOKEN_TTL: Duration = Duration::from_secs(3600);
/// How long the pipeline may take to catch up after the `POST` phase.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

struct Config {
    connections: usize,
    duration: Duration,
    warmup: Duration,
    orders: usize,
    restock: bool,
    external: Option<String>,
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
        let config = Self {
            connections: var("HTTP_BENCH_CONNECTIONS", 32usize),
            duration: Duration::from_secs_f64(var("HTTP_BENCH_SECS", 10.0f64)),
            warmup: Duration::from_secs_f64(var("HTTP_BENCH_WARMUP_SECS", 2.0f64)),
            orders: var("HTTP_BENCH_ORDERS", 1000usize),
            restock: var("HTTP_BENCH_RESTOCK", 0u8) != 0,
            external: std::env::var("HTTP_BENCH_URL")
                .ok()
                .filter(|u| !u.trim().is_empty())
                .map(|u| u.trim().trim_end_matches('/').to_owned()),
        };
        assert!(config.connections > 0, "HTTP_BENCH_CONNECTIONS must be positive");
        assert!(config.orders > 0, "HTTP_BENCH_ORDERS must be positive");
        assert!(!config.duration.is_zero(), "HTTP_BENCH_SECS must be positive");
        config
    }
}

/// The example server, in process, on its own runtime.
struct Server {
    runtime: Runtime,
    shop: Shop,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Server {
    fn start(auth: Auth) -> (Self, String) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("server")
            .build()
            .expect("server runtime");
        let shop = Shop::in_memory();
        let (stop, stopped) = oneshot::channel::<()>();
        let (url, task) = runtime.block_on(async {
            shop.seed_demo(TENANT).await.expect("seed the demo catalogue");
            let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
                .await
                .expect("bind 127.0.0.1:0");
            let url = format!("http://{}", listener.local_addr().expect("local address"));
            let shutdown = async move {
                let _ = stopped.await;
            };
            let task = tokio::spawn(ecommerce::http::serve_with_shutdown(
                listener,
                shop.clone(),
                auth,
                shutdown,
            ));
            (url, task)
        });
        let server = Self {
            runtime,
            shop,
            stop: Some(stop),
            task: Some(task),
        };
        (server, url)
    }

    /// Waits for the pipeline to apply everything published; how long it took.
    fn drain(&self) -> Result<Duration, Duration> {
        let started = Instant::now();
        let idle = self
            .runtime
            .block_on(async { tokio::time::timeout(DRAIN_TIMEOUT, self.shop.engine.wait_idle()).await });
        idle.map(|()| started.elapsed()).map_err(|_| started.elapsed())
    }

    fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let served = self
                .runtime
                .block_on(async { tokio::time::timeout(Duration::from_secs(10), task).await });
            match served {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => eprintln!("warning: the server failed: {e}"),
                Ok(Err(e)) => eprintln!("warning: the server task failed: {e}"),
                Err(_) => eprintln!("warning: the server did not stop within 10 s"),
            }
        }
        self.runtime.shutdown_timeout(Duration::from_secs(5));
    }
}

/// One request of a workload, ready to send.
#[derive(Clone)]
struct Target {
    method: Method,
    url: String,
    body: Option<Arc<[u8]>>,
}

/// What one connection saw in the measured window.
#[derive(Default)]
struct Samples {
    latencies_ns: Vec<u64>,
    /// 2xx answers, warm-up included.
    successes_all: u64,
    errors: u64,
    transport_errors: u64,
    statuses: std::collections::BTreeMap<u16, u64>,
}

impl Samples {
    fn merge(&mut self, other: Samples) {
        self.latencies_ns.extend(other.latencies_ns);
        self.successes_all += other.successes_all;
        self.errors += other.errors;
        self.transport_errors += other.transport_errors;
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
    }
}

struct Report {
    name: String,
    samples: Samples,
    window: Duration,
}

fn client() -> Client {
    Client::builder()
        .pool_max_idle_per_host(1)
        .tcp_nodelay(true)
        .no_proxy()
        .build()
        .expect("reqwest client")
}

async fn send(client: &Client, token: &str, target: &Target) -> Result<(StatusCode, usize), reqwest::Error> {
    let mut request = client
        .request(target.method.clone(), &target.url)
        .bearer_auth(token);
    if let Some(body) = &target.body {
        request = request
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_vec());
    }
    let response = request.send().await?;
    let status = response.status();
    // The whole body is read: the connection is reused only after it.
    let body = response.bytes().await?;
    Ok((status, body.len()))
}

/// `connections` closed loops, each on its own keep-alive connection, for
/// `warmup + duration`; `targets(i)` gives connection `c`'s `i`-th request.
async fn run_load(
    name: &str,
    config: &Config,
    token: &str,
    targets: Arc<dyn Fn(usize, u64) -> Target + Send + Sync>,
) -> Report {
    let start = Instant::now();
    let measure_from = start + config.warmup;
    let end = measure_from + config.duration;
    let mut tasks = Vec::with_capacity(config.connections);
    for connection in 0..config.connections {
        let token = token.to_owned();
        let targets = targets.clone();
        tasks.push(tokio::spawn(async move {
            let client = client();
            let mut samples = Samples {
                latencies_ns: Vec::with_capacity(64 * 1024),
                ..Samples::default()
            };
            let mut i = 0u64;
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let target = targets(connection, i);
                i += 1;
                let outcome = send(&client, &token, &target).await;
                let latency = sent.elapsed();
                if matches!(&outcome, Ok((status, _)) if status.is_success()) {
                    samples.successes_all += 1;
                }
                if sent < measure_from {
                    continue;
                }
                samples.latencies_ns.push(latency.as_nanos() as u64);
                match outcome {
                    Ok((status, _)) => {
                        *samples.statuses.entry(status.as_u16()).or_default() += 1;
                        if !status.is_success() {
                            samples.errors += 1;
                        }
                    }
                    Err(_) => {
                        samples.errors += 1;
                        samples.transport_errors += 1;
                    }
                }
            }
            samples
        }));
    }
    let mut samples = Samples::default();
    for task in tasks {
        samples.merge(task.await.expect("load task"));
    }
    samples.latencies_ns.sort_unstable();
    Report {
        name: name.to_owned(),
        samples,
        window: config.duration,
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(ns: u64) -> String {
    format!("{:.3}", ns as f64 / 1e6)
}

fn print_table(config: &Config, reports: &[Report]) {
    println!();
    println!(
        "| Request | Connections | Requests | Requests/s | p50 ms | p90 ms | p99 ms | max ms | Errors (non-2xx) | Statuses |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for report in reports {
        let s = &report.samples;
        let lat = &s.latencies_ns;
        let statuses: Vec<String> = s.statuses.iter().map(|(k, v)| format!("{k}×{v}")).collect();
        let mut statuses = statuses.join(", ");
        if s.transport_errors > 0 {
            statuses.push_str(&format!(", transport errors×{}", s.transport_errors));
        }
        println!(
            "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} |",
            report.name,
            config.connections,
            lat.len(),
            lat.len() as f64 / report.window.as_secs_f64(),
            ms(percentile(lat, 0.50)),
            ms(percentile(lat, 0.90)),
            ms(percentile(lat, 0.99)),
            ms(lat.last().copied().unwrap_or(0)),
            s.errors,
            statuses,
        );
    }
    println!();
}

/// The seed's order body: PRD-001 × 1 at 29.99.
fn order_body() -> Value {
    json!({
        "customerId": "CUST-001",
        "items": [{ "productCode": "PRD-001", "name": "Wireless Mouse", "quantity": 1, "price": 29.99 }],
        "shippingAddress": { "street": "123 Main St", "city": "Tokyo", "postalCode": "100-0001", "country": "JP" },
        "paymentMethod": "credit_card"
    })
}

/// Places `n` orders (16 at a time) and returns their codes, from `Location`.
async fn place_orders(url: &str, token: &str, n: usize) -> Vec<String> {
    let body: Arc<[u8]> = order_body().to_string().into_bytes().into();
    let client = client();
    let mut codes = Vec::with_capacity(n);
    let mut placed = 0;
    while placed < n {
        let batch = (n - placed).min(16);
        let requests = (0..batch).map(|_| {
            client
                .post(format!("{url}/orders"))
                .bearer_auth(token)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_vec())
                .send()
        });
        for response in futures_join_all(requests).await {
            let response = response.expect("POST /orders");
            assert_eq!(response.status(), StatusCode::CREATED, "POST /orders");
            let location = response.headers()[reqwest::header::LOCATION]
                .to_str()
                .expect("Location")
                .to_owned();
            codes.push(location.trim_start_matches("/orders/").to_owned());
        }
        placed += batch;
    }
    codes
}

/// `join_all` without the `futures` crate: spawns each future on the runtime.
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.expect("request task"));
    }
    out
}

/// Waits until `code` is readable and its reservation settled (external server).
async fn wait_settled(url: &str, token: &str, code: &str) {
    let client = client();
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while Instant::now() < deadline {
        let response = client
            .get(format!("{url}/orders/{code}"))
            .bearer_auth(token)
            .send()
            .await
            .expect("GET /orders/{code}");
        if response.status().is_success() {
            let order: Value = response.json().await.expect("order JSON");
            if order["attributes"]["reservation"] != "pending" {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("order {code} was not settled within {DRAIN_TIMEOUT:?}");
}

/// The shop's orders by reservation state, read from the data table.
async fn reservations(shop: &Shop) -> std::collections::BTreeMap<String, u64> {
    let ctx = InvocationContext::new(TENANT, "bench-user");
    let mut counts = std::collections::BTreeMap::new();
    let mut cursor = None;
    loop {
        let query = ListQuery::new()
            .sk(SkCondition::BeginsWith("ORDER#".into()))
            .limit(1000)
            .after(cursor);
        let page = shop
            .engine
            .list_items(&tenant_pk(TENANT), query, &ctx)
            .await
            .expect("list orders");
        for item in &page.items {
            let state = item.attributes["reservation"].as_str().unwrap_or("?").to_owned();
            *counts.entry(state).or_default() += 1;
        }
        match page.cursor {
            Some(next) => cursor = Some(next),
            None => return counts,
        }
    }
}

/// The load average (1, 5, 15 min) from `/proc/loadavg`: other work on the
/// machine skews the numbers.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .map_or_else(
            || "load average unknown".to_owned(),
            |l| format!("load average {l}"),
        )
}

/// Microseconds per call of `f`, over `iterations` calls.
fn per_call_us(iterations: u32, mut f: impl FnMut()) -> f64 {
    for _ in 0..iterations / 10 {
        f();
    }
    let started = Instant::now();
    for _ in 0..iterations {
        f();
    }
    started.elapsed().as_secs_f64() * 1e6 / f64::from(iterations)
}

fn main() {
    let config = Config::from_env();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());

    let secret = match &config.external {
        Some(_) => std::env::var(SECRET_ENV)
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEVELOPMENT_SECRET.to_owned()),
        None => "http-bench-secret-of-at-least-32-bytes".to_owned(),
    };
    let auth = Auth::new(secret.as_bytes());
    let token = auth.token(TENANT, "bench-user", &["staff"], TOKEN_TTL);

    let (server, url) = match &config.external {
        Some(url) => (None, url.clone()),
        None => {
            let (server, url) = Server::start(auth.clone());
            (Some(server), url)
        }
    };
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("client")
        .build()
        .expect("client runtime");

    println!("# HTTP: the e-commerce example on the memory backend, over loopback");
    println!();
    println!(
        "- machine: {cores} cores (available_parallelism), {cpu}; {}",
        load_average()
    );
    match &server {
        Some(_) => println!(
            "- server: in process on 127.0.0.1:0, its own multi-thread Tokio runtime ({cores} workers); \
             no tracing subscriber (log lines disabled)"
        ),
        None => println!("- server: external, {url}"),
    }
    println!(
        "- client: {} connections (one reqwest client and keep-alive connection each), closed loop, \
         on a second {cores}-worker runtime; client and server share the {cores} cores",
        config.connections
    );
    println!(
        "- each workload: {:?} warm-up, then {:?} measured; latency = send to last body byte",
        config.warmup, config.duration
    );
    println!(
        "- POST body: PRD-001 × 1 at 29.99; stock: {}",
        if config.restock {
            "PRD-001 restocked to 100,000,000 units first (every reservation succeeds)"
        } else {
            "the demo's 100 units (after 100 orders, reservations fail; still 201)"
        }
    );

    // Set up: optional restock, then the orders GET reads.
    let codes = client_rt.block_on(async {
        if config.restock {
            let response = client()
                .patch(format!("{url}/inventory/PRD-001"))
                .bearer_auth(&token)
                .json(&json!({ "quantity": 100_000_000, "warehouseCode": "WH-1" }))
                .send()
                .await
                .expect("PATCH /inventory/PRD-001");
            assert!(response.status().is_success(), "restock: {}", response.status());
        }
        place_orders(&url, &token, config.orders).await
    });
    match &server {
        Some(server) => {
            server
                .drain()
                .expect("the pipeline did not settle the setup orders");
        }
        None => client_rt.block_on(wait_settled(&url, &token, codes.last().expect("an order"))),
    }
    println!("- GET reads {} existing orders, round robin", codes.len());

    let mut reports = Vec::new();
    client_rt.block_on(async {
        let health = Target {
            method: Method::GET,
            url: format!("{url}/health"),
            body: None,
        };
        reports.push(
            run_load(
                "GET /health (baseline: no token, no storage)",
                &config,
                &token,
                Arc::new(move |_, _| health.clone()),
            )
            .await,
        );

        let urls: Arc<Vec<String>> = Arc::new(codes.iter().map(|c| format!("{url}/orders/{c}")).collect());
        let n = urls.len();
        let stride = (n / config.connections).max(1);
        reports.push(
            run_load(
                "GET /orders/{code}",
                &config,
                &token,
                Arc::new(move |connection, i| Target {
                    method: Method::GET,
                    url: urls[(connection * stride + i as usize) % n].clone(),
                    body: None,
                }),
            )
            .await,
        );

        let post = Target {
            method: Method::POST,
            url: format!("{url}/orders"),
            body: Some(order_body().to_string().into_bytes().into()),
        };
        reports.push(
            run_load(
                "POST /orders",
                &config,
                &token,
                Arc::new(move |_, _| post.clone()),
            )
            .await,
        );
    });
    print_table(&config, &reports);
    println!("Machine after the run: {}.", load_average());
    println!();

    if let Some(server) = &server {
        match server.drain() {
            Ok(took) => println!(
                "After the POST phase the pipeline needed {:.2} s more to apply the orders and settle \
                 their reservations.",
                took.as_secs_f64()
            ),
            Err(took) => println!(
                "After the POST phase the pipeline was still busy after {:.0} s.",
                took.as_secs_f64()
            ),
        }
        // Every order placed (set-up and POST phase, warm-up included) must
        // have been applied and its reservation settled by the pipeline.
        let placed = codes.len() as u64 + reports.last().map_or(0, |r| r.samples.successes_all);
        let reservations = server.runtime.block_on(reservations(&server.shop));
        let seen: u64 = reservations.values().sum();
        let states: Vec<String> = reservations.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!(
            "Orders placed: {placed}; orders in the data table: {seen} (reservation: {}).",
            states.join(", ")
        );
        println!();
        assert_eq!(seen, placed, "orders placed and orders applied differ");
        assert!(!reservations.contains_key("pending"), "reservations left pending");
    }

    // Where the time goes, without HTTP: the JWT check and the storage read
    // each request of GET /orders/{code} does.
    let verify_us = per_call_us(50_000, || {
        std::hint::black_box(auth.verify(std::hint::black_box(&token)).expect("verify"));
    });
    println!("Per-request costs outside HTTP, on one thread:");
    println!();
    println!("| Step | µs per call |");
    println!("|---|---:|");
    println!("| `Auth::verify` (HS256 JWT, as every authenticated request does) | {verify_us:.2} |");
    if let Some(server) = &server {
        let ctx = InvocationContext::new(TENANT, "bench-user").with_roles(["staff"]);
        let code = codes[0].clone();
        let get_us = server.runtime.block_on(async {
            let iterations = 50_000u32;
            let started = Instant::now();
            for _ in 0..iterations {
                std::hint::black_box(server.shop.orders.get(&code, &ctx).await.expect("get"));
            }
            started.elapsed().as_secs_f64() * 1e6 / f64::from(iterations)
        });
        println!("| `shop.orders.get` (the service call of GET /orders/{{code}}, in memory) | {get_us:.2} |");
    }
    println!();

    drop(client_rt);
    if let Some(server) = server {
        server.stop();
    }
}
