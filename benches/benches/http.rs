//! Workload 7, HTTP: requests per second, latency percentiles and the
//! server's CPU per request for `GET /health`, `GET /orders/{code}` and
//! `POST /orders` of the e-commerce example's release binary on the memory
//! backend, driven by `wrk` from another process over loopback.
//!
//! `cargo bench -p cqrs-benches --bench http` (needs `wrk`: `apt-get install wrk`)
//!
//! The bench builds the example (`cargo build --release --example ecommerce
//! -p ecommerce`, nothing to do when it is up to date; `HTTP_BENCH_SERVER`
//! names a binary to use instead) and starts it as a child process: `serve
//! --addr 127.0.0.1:0 --backend memory`, which seeds the demo catalogue, with
//! a signing secret of the bench's in `ECOMMERCE_JWT_SECRET` and
//! `RUST_LOG=error`: no log lines (the program's default `info` logs one per
//! request, `warn` one per failed reservation), as when the server ran in
//! the bench's process without a subscriber. `HTTP_BENCH_LOG=info` measures
//! them, written to /dev/null. The bench signs a `staff` token of `shop-a`
//! with the same secret, which every request carries.
//!
//! Set-up, not measured: optionally a restock, then `HTTP_BENCH_ORDERS`
//! orders placed through the API (16 at a time, with reqwest), which on a
//! fresh server are `ORD-000001` onwards; the bench waits until the
//! pipeline settled them.
//!
//! Each workload is a Lua script of `benches/http/` (`health.lua`,
//! `get_order.lua`, `post_order.lua`) that wrk runs with
//! `HTTP_BENCH_CONNECTIONS` keep-alive connections over
//! `HTTP_BENCH_WRK_THREADS` threads (one by default: on two cores one wrk
//! thread cost 4.5–7.7 µs of CPU per GET, two 7.7–12.8 µs, and left the
//! server less), closed loop: a warm-up run of
//! `HTTP_BENCH_WARMUP_SECS` whose figures are dropped, then, once the
//! server is idle again, a measured run of `HTTP_BENCH_SECS` with
//! `--latency`. Requests/s and the latency percentiles (send to last byte,
//! from wrk's histogram of every request) are wrk's, read from a line its
//! `done` callback prints. A non-2xx answer or a socket error (connect,
//! read, write, timeout after 10 s) counts as an error.
//!
//! CPU: the server's `utime + stime` from `/proc/PID/stat` just before the
//! measured run, when it ends, and once the server is idle again after it
//! (for `POST`, when the pipeline has applied the orders the run placed;
//! how long that took is the catch-up). Server µs per request = CPU up to
//! idle ÷ requests wrk counted; cores busy = CPU in the window ÷ the
//! window. wrk's CPU is this process's `cutime + cstime` (children waited
//! for) around the run; other cores busy = the machine's busy time in the
//! window (`/proc/stat`) less the server's and wrk's: other work on the
//! machine. Nothing is pinned: wrk, the server and anything else share the
//! cores; the load average is printed too.
//!
//! The order body is the seed's line `PRD-001 × 1 at 29.99`, the same every
//! time, without an `Idempotency-Key`. By default the stock is left at the
//! demo's 100 units: the first 100 orders reserve a unit, every later one
//! is still a valid `201` whose reservation the pipeline then marks
//! `failed`. With `HTTP_BENCH_RESTOCK=1` the bench first sets PRD-001 to
//! 100,000,000 units so that every reservation succeeds. After the `POST`
//! phase the bench lists the orders through the API and checks that every
//! order placed was applied and its reservation settled.
//!
//! Environment (all optional): `HTTP_BENCH_CONNECTIONS` (32),
//! `HTTP_BENCH_WRK_THREADS` (1), `HTTP_BENCH_SECS` (10),
//! `HTTP_BENCH_WARMUP_SECS` (2), `HTTP_BENCH_ORDERS` (1000, the orders
//! `GET` cycles through), `HTTP_BENCH_RESTOCK` (0), `HTTP_BENCH_LOG`
//! (`error`, the server's `RUST_LOG`), `HTTP_BENCH_SERVER` (the server
//! binary; else built as above), `WRK` (the wrk binary, `wrk`).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cqrs_core::InvocationContext;
use ecommerce::auth::{Auth, SECRET_ENV};
use ecommerce::services::NewOrder;
use ecommerce::Shop;
use reqwest::{Client, StatusCode, Url};
use serde_json::{json, Value};

const TENANT: &str = "shop-a";
const TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Signs the bench's tokens and the server's checks (32 bytes or more).
const SECRET: &str = "http-bench-secret-of-at-least-32-bytes";
/// How long the server may take to start, and the pipeline to catch up.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
/// The server is idle when it used at most one clock tick in each of
/// `QUIET_SAMPLES` consecutive samples `QUIET_EVERY` apart.
const QUIET_EVERY: Duration = Duration::from_millis(100);
const QUIET_SAMPLES: u32 = 3;

struct Config {
    connections: usize,
    threads: usize,
    secs: u64,
    warmup_secs: u64,
    orders: usize,
    restock: bool,
    log: String,
    server: Option<PathBuf>,
    wrk: String,
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
            threads: var("HTTP_BENCH_WRK_THREADS", 1usize),
            secs: var("HTTP_BENCH_SECS", 10u64),
            warmup_secs: var("HTTP_BENCH_WARMUP_SECS", 2u64),
            orders: var("HTTP_BENCH_ORDERS", 1000usize),
            restock: var("HTTP_BENCH_RESTOCK", 0u8) != 0,
            log: var("HTTP_BENCH_LOG", "error".to_owned()),
            server: std::env::var_os("HTTP_BENCH_SERVER")
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
            wrk: var("WRK", "wrk".to_owned()),
        };
        assert!(config.connections > 0, "HTTP_BENCH_CONNECTIONS must be positive");
        assert!(
            (1..=config.connections).contains(&config.threads),
            "HTTP_BENCH_WRK_THREADS must be 1 to HTTP_BENCH_CONNECTIONS"
        );
        assert!(config.orders > 0, "HTTP_BENCH_ORDERS must be positive");
        assert!(config.secs > 0, "HTTP_BENCH_SECS must be positive");
        config
    }

    /// Whether the server may log lines that are no error (a line per
    /// request at `info`, per failed reservation at `warn`): its stderr then
    /// goes to /dev/null.
    fn logs_more_than_errors(&self) -> bool {
        !matches!(self.log.trim(), "off" | "error")
    }
}

/// Clock ticks per second of `/proc/*/stat`'s times.
fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// Fields of `/proc/{pid}/stat` after the command name, from field 3 on.
fn stat_fields(pid: &str) -> Vec<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/stat: {e}"));
    // The command name is in parentheses and may hold spaces.
    let (_, rest) = stat.rsplit_once(')').expect("/proc/PID/stat has a command name");
    rest.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect()
}

/// utime + stime of `pid` (fields 14 and 15), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let f = stat_fields(&pid.to_string());
    f[11] + f[12]
}

/// cutime + cstime of this process (fields 16 and 17): the CPU of the
/// children it waited for, in clock ticks.
fn children_ticks() -> u64 {
    let f = stat_fields("self");
    f[13] + f[14]
}

/// Busy clock ticks of the whole machine (every state of the `cpu` line of
/// `/proc/stat` but idle and iowait): the server, wrk, and anything else.
fn machine_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let cpu = stat.lines().next().expect("the cpu line of /proc/stat");
    cpu.split_whitespace()
        .skip(1)
        .take(8)
        .enumerate()
        .filter(|(i, _)| !matches!(i, 3 | 4))
        .map(|(_, f)| f.parse::<u64>().unwrap_or(0))
        .sum()
}

/// The example's release binary: `HTTP_BENCH_SERVER`, or built by cargo.
fn server_binary(config: &Config) -> PathBuf {
    if let Some(path) = &config.server {
        return path.clone();
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root");
    eprintln!("building the server: cargo build --release --example ecommerce -p ecommerce");
    let mut build = Command::new(&cargo);
    // Cargo set these for this bench, and a build script that reads one
    // (ring's reads CARGO_MANIFEST_DIR) would see it changed and rebuild
    // everything above it, here and again at the next plain `cargo build`.
    for (key, _) in std::env::vars_os() {
        let set_for_bench = key.to_str().is_some_and(|k| {
            k.starts_with("CARGO_PKG_")
                || k.starts_with("CARGO_MANIFEST_")
                || matches!(
                    k,
                    "CARGO_CRATE_NAME" | "CARGO_PRIMARY_PACKAGE" | "CARGO_TARGET_TMPDIR" | "OUT_DIR"
                )
        });
        if set_for_bench {
            build.env_remove(key);
        }
    }
    let out = build
        .current_dir(root)
        .args(["build", "--release", "--example", "ecommerce", "-p", "ecommerce"])
        .arg("--message-format=json-render-diagnostics")
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cargo}: {e}"));
    assert!(
        out.status.success(),
        "building the example failed: {}",
        out.status
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "ecommerce")
        .filter(|m| {
            m["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "example"))
        })
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .expect("cargo named no executable for the ecommerce example")
}

/// The example server, a child process.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(binary: &Path, config: &Config) -> Self {
        let stderr = if config.logs_more_than_errors() {
            Stdio::null()
        } else {
            Stdio::inherit()
        };
        let mut child = Command::new(binary)
            .args(["serve", "--addr", "127.0.0.1:0", "--backend", "memory"])
            .env(SECRET_ENV, SECRET)
            .env("RUST_LOG", &config.log)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        // It prints where it listens (port 0: the system picks), then a
        // welcome; the rest of its stdout is read and dropped.
        let stdout = child.stdout.take().expect("the server's stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some((_, rest)) = line.split_once("listens on ") {
                    let url = rest.split_whitespace().next().unwrap_or_default().to_owned();
                    let _ = tx.send(url);
                }
            }
        });
        let mut server = Self {
            child,
            url: String::new(),
        };
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(url) => server.url = url,
            Err(_) => {
                let status = server.child.try_wait().ok().flatten();
                panic!("the server did not say where it listens within {START_TIMEOUT:?} (exit: {status:?})");
            }
        }
        server
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn cpu_ticks(&mut self) -> u64 {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("the server exited: {status}");
        }
        cpu_ticks(self.pid())
    }

    /// Waits until the server is idle (see [`QUIET_SAMPLES`]); how long it
    /// was busy, to the nearest sample, or `None` after `timeout`.
    fn wait_quiet(&mut self, timeout: Duration) -> Option<Duration> {
        let started = Instant::now();
        let mut last = self.cpu_ticks();
        let mut busy_until = Duration::ZERO;
        let mut quiet = 0;
        while quiet < QUIET_SAMPLES {
            if started.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(QUIET_EVERY);
            let now = self.cpu_ticks();
            if now - last <= 1 {
                quiet += 1;
            } else {
                quiet = 0;
                busy_until = started.elapsed();
            }
            last = now;
        }
        Some(busy_until)
    }

    /// SIGTERM (a graceful shutdown), then SIGKILL after 15 s.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    if !status.success() {
                        eprintln!("warning: the server exited with {status}");
                    }
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(_) => break,
            }
        }
        eprintln!("warning: the server did not stop within 15 s; killed");
        // Drop kills it.
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What `done` in `benches/http/common.lua` printed, and the CPU around it.
#[derive(Default)]
struct Run {
    requests: u64,
    duration: Duration,
    socket_errors: u64,
    status_errors: u64,
    p50_us: u64,
    p90_us: u64,
    p99_us: u64,
    max_us: u64,
    /// The server's CPU ticks in the window, and up to idle after it.
    server_window: u64,
    server_total: u64,
    /// wrk's CPU ticks.
    wrk: u64,
    /// The machine's busy ticks in the window (everything).
    machine: u64,
    /// How long the server stayed busy after wrk stopped.
    catch_up: Option<Duration>,
}

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("http")
}

/// Runs wrk with `script` for `secs`.
fn wrk(config: &Config, script: &str, url: &str, secs: u64, token: &str) -> Run {
    let script = scripts().join(script);
    let out = Command::new(&config.wrk)
        .args(["-t", &config.threads.to_string()])
        .args(["-c", &config.connections.to_string()])
        .args(["-d", &format!("{secs}s"), "--timeout", "10s", "--latency", "-s"])
        .arg(&script)
        .arg(url)
        .env("HTTP_BENCH_TOKEN", token)
        .env("HTTP_BENCH_ORDERS", config.orders.to_string())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} (apt-get install wrk): {e}", config.wrk));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().find(|l| l.starts_with("HTTP_BENCH "));
    let (true, Some(line)) = (out.status.success(), line) else {
        panic!(
            "wrk {} failed ({}):\n{stdout}\n{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let fields: BTreeMap<&str, u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.split_once('='))
        .map(|(k, v)| (k, v.parse().unwrap_or_else(|_| panic!("wrk printed {k}={v}"))))
        .collect();
    let f = |k: &str| {
        *fields
            .get(k)
            .unwrap_or_else(|| panic!("wrk printed no {k}: {line}"))
    };
    Run {
        requests: f("requests"),
        duration: Duration::from_micros(f("duration_us")),
        socket_errors: f("connect") + f("read") + f("write") + f("timeout"),
        status_errors: f("status"),
        p50_us: f("p50_us"),
        p90_us: f("p90_us"),
        p99_us: f("p99_us"),
        max_us: f("max_us"),
        ..Run::default()
    }
}

/// A warm-up run (its 2xx answers are returned), then the measured run.
fn workload(config: &Config, server: &mut Server, token: &str, script: &str) -> (u64, Run) {
    let warmup = if config.warmup_secs > 0 {
        let run = wrk(config, script, &server.url, config.warmup_secs, token);
        run.requests - run.status_errors
    } else {
        0
    };
    if server.wait_quiet(DRAIN_TIMEOUT).is_none() {
        eprintln!("warning: the server was still busy {DRAIN_TIMEOUT:?} after the warm-up");
    }
    let server_before = server.cpu_ticks();
    let wrk_before = children_ticks();
    let machine_before = machine_ticks();
    let mut run = wrk(config, script, &server.url, config.secs, token);
    let server_after = server.cpu_ticks();
    run.machine = machine_ticks() - machine_before;
    run.wrk = children_ticks() - wrk_before;
    run.catch_up = server.wait_quiet(DRAIN_TIMEOUT);
    run.server_window = server_after - server_before;
    run.server_total = server.cpu_ticks() - server_before;
    (warmup, run)
}

/// The seed's order body: PRD-001 × 1 at 29.99 (as in `post_order.lua`).
fn order_body() -> Value {
    json!({
        "customerId": "CUST-001",
        "items": [{ "productCode": "PRD-001", "name": "Wireless Mouse", "quantity": 1, "price": 29.99 }],
        "shippingAddress": { "street": "123 Main St", "city": "Tokyo", "postalCode": "100-0001", "country": "JP" },
        "paymentMethod": "credit_card"
    })
}

fn client() -> Client {
    Client::builder()
        .tcp_nodelay(true)
        .no_proxy()
        .build()
        .expect("reqwest client")
}

/// Places `n` orders (16 at a time) and returns their codes, from `Location`.
async fn place_orders(client: &Client, url: &str, token: &str, n: usize) -> Vec<String> {
    let body = order_body().to_string();
    let mut codes = Vec::with_capacity(n);
    while codes.len() < n {
        let batch = (n - codes.len()).min(16);
        let requests: Vec<_> = (0..batch)
            .map(|_| {
                tokio::spawn(
                    client
                        .post(format!("{url}/orders"))
                        .bearer_auth(token)
                        .header(reqwest::header::CONTENT_TYPE, "application/json")
                        .body(body.clone())
                        .send(),
                )
            })
            .collect();
        for request in requests {
            let response = request.await.expect("request task").expect("POST /orders");
            assert_eq!(response.status(), StatusCode::CREATED, "POST /orders");
            let location = response.headers()[reqwest::header::LOCATION]
                .to_str()
                .expect("Location");
            codes.push(location.trim_start_matches("/orders/").to_owned());
        }
    }
    codes
}

/// Waits until order `code` is readable and its reservation settled.
async fn wait_settled(client: &Client, url: &str, token: &str, code: &str) {
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

/// The shop's applied orders by reservation state, listed through the API.
async fn reservations(client: &Client, url: &str, token: &str) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut params = vec![("limit", "100".to_owned())];
        params.extend(cursor.take().map(|c| ("cursor", c)));
        let list = Url::parse_with_params(&format!("{url}/orders"), &params).expect("list URL");
        let response = client
            .get(list)
            .bearer_auth(token)
            .send()
            .await
            .expect("GET /orders");
        assert!(
            response.status().is_success(),
            "GET /orders: {}",
            response.status()
        );
        let page: Value = response.json().await.expect("page JSON");
        for order in page["items"].as_array().expect("items") {
            let state = order["attributes"]["reservation"].as_str().unwrap_or("?");
            *counts.entry(state.to_owned()).or_default() += 1;
        }
        match page["cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
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

fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1e3)
}

fn print_table(config: &Config, tick_us: f64, reports: &[(&str, Run)]) {
    println!();
    println!(
        "| Request | Connections | Requests | Requests/s | p50 ms | p90 ms | p99 ms | max ms | Errors | \
         Server CPU µs/request | Server cores busy | wrk cores busy | Other cores busy | Server busy after |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (name, run) in reports {
        let secs = run.duration.as_secs_f64();
        let cores = |ticks: u64| ticks as f64 * tick_us / 1e6 / secs;
        let errors = if run.socket_errors > 0 {
            format!(
                "{} (socket {})",
                run.status_errors + run.socket_errors,
                run.socket_errors
            )
        } else {
            run.status_errors.to_string()
        };
        println!(
            "| {name} | {} | {} | {:.0} | {} | {} | {} | {} | {errors} | {:.1} | {:.2} | {:.2} | {:.2} | {} |",
            config.connections,
            run.requests,
            run.requests as f64 / secs,
            ms(run.p50_us),
            ms(run.p90_us),
            ms(run.p99_us),
            ms(run.max_us),
            run.server_total as f64 * tick_us / run.requests.max(1) as f64,
            cores(run.server_window),
            cores(run.wrk),
            cores(run.machine.saturating_sub(run.server_window + run.wrk)),
            run.catch_up
                .map_or_else(|| "> 120 s".to_owned(), |d| format!("{:.1} s", d.as_secs_f64())),
        );
    }
    println!();
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
    let tick_us = 1e6 / clock_ticks() as f64;

    let binary = server_binary(&config);
    let auth = Auth::new(SECRET.as_bytes());
    let token = auth.token(TENANT, "bench-user", &["staff"], TOKEN_TTL);
    let mut server = Server::start(&binary, &config);
    let url = server.url.clone();

    println!("# HTTP: the e-commerce example on the memory backend, over loopback, driven by wrk");
    println!();
    println!(
        "- machine: {cores} cores (available_parallelism), {cpu}; {}",
        load_average()
    );
    println!(
        "- server: {} serve --backend memory, pid {}, {url}; RUST_LOG={}{}",
        binary.display(),
        server.pid(),
        config.log,
        if config.logs_more_than_errors() {
            " (log lines to /dev/null)"
        } else {
            " (no log lines but errors)"
        }
    );
    println!(
        "- client: wrk, {} threads, {} keep-alive connections, closed loop, scripts in {}; \
         nothing pinned: wrk and the server share the {cores} cores",
        config.threads,
        config.connections,
        scripts().display()
    );
    println!(
        "- each workload: {} s warm-up, idle, then {} s measured; latency = send to last byte (wrk)",
        config.warmup_secs, config.secs
    );
    println!(
        "- POST body: PRD-001 × 1 at 29.99; stock: {}",
        if config.restock {
            "PRD-001 restocked to 100,000,000 units first (every reservation succeeds)"
        } else {
            "the demo's 100 units (after 100 orders, reservations fail; still 201)"
        }
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let client = client();

    // Set up: optional restock, then the orders GET reads.
    let codes = runtime.block_on(async {
        if config.restock {
            let response = client
                .patch(format!("{url}/inventory/PRD-001"))
                .bearer_auth(&token)
                .json(&json!({ "quantity": 100_000_000, "warehouseCode": "WH-1" }))
                .send()
                .await
                .expect("PATCH /inventory/PRD-001");
            assert!(response.status().is_success(), "restock: {}", response.status());
        }
        let mut codes = place_orders(&client, &url, &token, config.orders).await;
        wait_settled(&client, &url, &token, codes.last().expect("an order")).await;
        codes.sort();
        codes
    });
    // get_order.lua reads ORD-000001 .. ORD-{orders}.
    let expected: Vec<String> = (1..=config.orders).map(|n| format!("ORD-{n:06}")).collect();
    assert_eq!(codes, expected, "the set-up orders are not ORD-000001 onwards");
    println!("- GET reads the {} orders placed first, round robin", codes.len());
    println!("- before the runs: {}", load_average());

    let mut reports = Vec::new();
    let mut posted = 0;
    for (name, script) in [
        ("GET /health (baseline: no token, no storage)", "health.lua"),
        ("GET /orders/{code}", "get_order.lua"),
        ("POST /orders", "post_order.lua"),
    ] {
        let (warmup, run) = workload(&config, &mut server, &token, script);
        if script == "post_order.lua" {
            posted = warmup + run.requests - run.status_errors;
        }
        reports.push((name, run));
    }
    print_table(&config, tick_us, &reports);
    println!("Machine after the run: {}.", load_average());
    println!();
    if let Some((_, post)) = reports.last() {
        match post.catch_up {
            Some(took) => println!(
                "After the POST run the server stayed busy {:.1} s more (the pipeline applying the orders \
                 and settling their reservations), {:.0} % of its CPU for the run.",
                took.as_secs_f64(),
                100.0 * (post.server_total - post.server_window) as f64 / post.server_total.max(1) as f64
            ),
            None => println!("After the POST run the server was still busy after {DRAIN_TIMEOUT:?}."),
        }
    }

    // Every order placed (set-up, warm-up and measured run) must have been
    // applied and its reservation settled. wrk does not count the requests
    // in flight when a run stops (at most one per connection per run), which
    // the server may have answered.
    let counted = config.orders as u64 + posted;
    let socket_errors: u64 = reports.iter().map(|(_, r)| r.socket_errors).sum();
    let reservations = runtime.block_on(reservations(&client, &url, &token));
    let seen: u64 = reservations.values().sum();
    let states: Vec<String> = reservations.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!(
        "Orders answered 201: {counted} (set-up {}, POST runs {posted}); orders in the data table: \
         {seen} (reservation: {}).",
        config.orders,
        states.join(", ")
    );
    println!();
    let slack = 2 * config.connections as u64;
    if socket_errors == 0 {
        assert!(
            (counted..=counted + slack).contains(&seen),
            "orders answered and orders applied differ by more than the requests in flight"
        );
    }
    assert!(!reservations.contains_key("pending"), "reservations left pending");

    drop(client);
    drop(runtime);
    server.stop();

    // Where the server's time goes, without HTTP: the JWT check and the
    // storage read each GET /orders/{code} does, in this process.
    let verify_us = per_call_us(50_000, || {
        std::hint::black_box(auth.verify(std::hint::black_box(&token)).expect("verify"));
    });
    let get_us = {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let shop = Shop::in_memory();
            shop.seed_demo(TENANT).await.expect("seed the demo catalogue");
            let ctx = InvocationContext::new(TENANT, "bench-user").with_roles(["staff"]);
            let order: NewOrder = serde_json::from_value(order_body()).expect("an order");
            let code = shop.orders.create(order, &ctx).await.expect("place").code;
            shop.engine.wait_idle().await;
            let iterations = 50_000u32;
            let started = Instant::now();
            for _ in 0..iterations {
                std::hint::black_box(shop.orders.get(&code, &ctx).await.expect("get"));
            }
            started.elapsed().as_secs_f64() * 1e6 / f64::from(iterations)
        })
    };
    println!("Per-request costs outside HTTP, in this process, on one thread:");
    println!();
    println!("| Step | µs per call |");
    println!("|---|---:|");
    println!("| `Auth::verify` (HS256 JWT, as every authenticated request does) | {verify_us:.2} |");
    println!("| `shop.orders.get` (the service call of GET /orders/{{code}}, in memory) | {get_us:.2} |");
    println!();
}
