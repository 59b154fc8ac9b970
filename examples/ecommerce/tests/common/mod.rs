//! Shared by the process-level fault tests (`faults.rs`,
//! `read_model_faults.rs`, `chaos.rs`): the example's server as a process of
//! its own on DynamoDB Local, bursts of orders and cancellations over HTTP,
//! an [`Inspector`] that reads the tables directly, and the [`audit`] of
//! what the faults did to the orders.

#![allow(dead_code)]

pub mod audit;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use cqrs_core::{
    tenant_pk, AsyncDispatch, CommandService, DataItem, DataService, InvocationContext, ListQuery,
    SkCondition,
};
use cqrs_dynamodb::{local_client, DynamoDbStorage, TableNames};
use ecommerce::auth::{Auth, SECRET_ENV};
use ecommerce::shop::ShopConfig;
use ecommerce::Shop;
use serde_json::{json, Value};

pub const SECRET: &str = "fault-test-secret-of-at-least-32-bytes";
pub const TENANT: &str = "shop-a";

/// The servers' settings: short grace and leases, so that recovery and
/// takeover happen within the test.
pub const SERVER_ARGS: [&str; 8] = [
    "--recovery-grace",
    "2",
    "--lease-duration",
    "2",
    "--handler-timeout",
    "5",
    "--request-timeout",
    "15",
];

/// The example's binary, built (or brought up to date) once per test process.
pub fn binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
            let status = Command::new(env!("CARGO"))
                .args(["build", "--quiet", "-p", "ecommerce", "--example", "ecommerce"])
                .current_dir(&manifest)
                .status()
                .expect("cargo runs");
            assert!(status.success(), "the ecommerce example builds");
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| manifest.join("../../target"));
            let binary = target.join("debug/examples/ecommerce");
            assert!(binary.exists(), "{} exists", binary.display());
            binary
        })
        .clone()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The read models' database of the servers of the tables `prefix`, unless
/// a test gives its own: a SQLite file in the temporary directory.
pub fn read_db(prefix: &str) -> String {
    let file = std::env::temp_dir().join(format!("{prefix}-read.db"));
    format!("sqlite://{}?mode=rwc", file.display())
}

/// One server process.
pub struct Server {
    pub child: Option<Child>,
    pub url: String,
    pub log: PathBuf,
}

impl Server {
    /// Starts `ecommerce serve` on DynamoDB at `endpoint`, tables `prefix`,
    /// with the tests' [`SERVER_ARGS`] and `extra`.
    pub async fn start(endpoint: &str, prefix: &str, extra: &[&str]) -> Server {
        let args: Vec<&str> = SERVER_ARGS.iter().chain(extra).copied().collect();
        Server::start_with(endpoint, prefix, &args).await
    }

    /// Starts `ecommerce serve` with `args` only: the defaults for the rest.
    pub async fn start_with(endpoint: &str, prefix: &str, args: &[&str]) -> Server {
        let port = free_port();
        let log = std::env::temp_dir().join(format!("ecommerce-{prefix}-{port}.log"));
        let child = Command::new(binary())
            .args(["serve", "--backend", "dynamodb", "--pipeline", "stream"])
            .args(["--dynamodb-endpoint", endpoint, "--table-prefix", prefix])
            // The read models of the test's tables, shared by its servers,
            // out of the source tree (unless the test gives its own).
            .args(if args.contains(&"--read-db") {
                Vec::new()
            } else {
                vec!["--read-db".to_owned(), read_db(prefix)]
            })
            .args(["--addr", &format!("127.0.0.1:{port}")])
            .args(args)
            .env(SECRET_ENV, SECRET)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("the server starts");
        let mut server = Server {
            child: Some(child),
            url: format!("http://127.0.0.1:{port}"),
            log,
        };
        server.wait_healthy().await;
        server
    }

    pub async fn wait_healthy(&mut self) {
        let client = reqwest::Client::new();
        let started = Instant::now();
        loop {
            if let Ok(response) = client.get(format!("{}/health", self.url)).send().await {
                if response.status() == 200 {
                    return;
                }
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!(
                    "the server exited ({status}) before it answered:\n{}",
                    self.log_text()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the server did not answer within 60 s:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("running")
    }

    /// SIGKILL: no shutdown of any kind.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits (bounded) for the graceful shutdown to end.
    pub async fn terminate(&mut self) -> Duration {
        let started = Instant::now();
        let Some(mut child) = self.child.take() else {
            return Duration::ZERO;
        };
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success());
        loop {
            if let Some(status) = child.try_wait().expect("waitable") {
                assert!(
                    status.success(),
                    "a graceful shutdown exits 0: {status}\n{}",
                    self.log_text()
                );
                return started.elapsed();
            }
            if started.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                panic!("no exit within 60 s of SIGTERM:\n{}", self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn token() -> String {
    token_for(TENANT, "fault-tester")
}

/// A staff token of `user` in shop `tenant`.
pub fn token_for(tenant: &str, user: &str) -> String {
    Auth::new(SECRET.as_bytes()).token(tenant, user, &["staff"], Duration::from_secs(3600))
}

/// The lines of the `i`th order of a burst: most fit the stock, those of
/// PRD-003 (10 units) run out, so both outcomes of a reservation occur.
pub fn order_body(i: usize) -> Value {
    let (product, name, price) = match i % 3 {
        0 => ("PRD-001", "Wireless Mouse", 29.99),
        1 => ("PRD-002", "Mechanical Keyboard", 89.5),
        _ => ("PRD-003", "USB-C Cable", 9.99),
    };
    json!({
        "customerId": format!("CUST-{i:03}"),
        "items": [{ "productCode": product, "name": name, "quantity": 1, "price": price }],
        "shippingAddress": { "street": "1 Main St", "city": "Tokyo", "postalCode": "100-0001", "country": "JP" },
        "paymentMethod": "credit_card"
    })
}

/// Places `count` orders at once, spread over `urls`; returns the codes of
/// those answered 201. `on_accepted` is told the running count of 201s.
pub async fn burst(
    urls: &[String],
    count: usize,
    on_accepted: impl Fn(usize) + Send + Sync + 'static,
) -> Vec<String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let accepted = Arc::new(AtomicUsize::new(0));
    let on_accepted = Arc::new(on_accepted);
    let token = token();
    let tasks: Vec<_> = (0..count)
        .map(|i| {
            let (client, token, accepted, on_accepted) = (
                client.clone(),
                token.clone(),
                accepted.clone(),
                on_accepted.clone(),
            );
            let url = urls[i % urls.len()].clone();
            tokio::spawn(async move {
                let response = client
                    .post(format!("{url}/orders"))
                    .bearer_auth(token)
                    .json(&order_body(i))
                    .send()
                    .await
                    .ok()?;
                if response.status() != 201 {
                    return None;
                }
                let body: Value = response.json().await.ok()?;
                on_accepted(accepted.fetch_add(1, Ordering::SeqCst) + 1);
                body["code"].as_str().map(str::to_owned)
            })
        })
        .collect();
    let mut codes = Vec::new();
    for task in tasks {
        if let Ok(Some(code)) = task.await {
            codes.push(code);
        }
    }
    codes
}

/// Reads the tables directly, as an operator would.
pub struct Inspector {
    pub shop: Shop,
    pub ctx: InvocationContext,
}

impl Inspector {
    pub fn new(endpoint: &str, prefix: &str) -> Self {
        Self::for_tenant(endpoint, prefix, TENANT)
    }

    /// An inspector of the shop `tenant`.
    pub fn for_tenant(endpoint: &str, prefix: &str, tenant: &str) -> Self {
        let storage = DynamoDbStorage::new(
            local_client(endpoint),
            ecommerce::shop::dynamodb_tables(TableNames::with_prefix(prefix)),
        );
        // It only reads: no pipeline of its own.
        let config = ShopConfig {
            dispatch: AsyncDispatch::External,
            ..ShopConfig::default()
        };
        Self {
            shop: Shop::with_config(Arc::new(storage), config),
            ctx: InvocationContext::new(tenant, "inspector").with_roles(["staff"]),
        }
    }

    pub async fn items(&self, prefix: &str) -> Vec<DataItem> {
        let mut items = Vec::new();
        let mut query = ListQuery::new()
            .sk(SkCondition::BeginsWith(prefix.into()))
            .limit(cqrs_core::MAX_LIMIT);
        loop {
            let page = DataService::list_items(
                &self.shop.engine,
                &tenant_pk(&self.ctx.tenant_code),
                query.clone(),
                &self.ctx,
            )
            .await
            .expect("listed");
            items.extend(page.items);
            match page.cursor {
                Some(cursor) => query = query.after(Some(cursor)),
                None => return items,
            }
        }
    }

    /// Whether the order's every version is final (finished or failed).
    pub async fn finished(&self, order: &DataItem) -> bool {
        let versions = CommandService::list_versions(&self.shop.engine, &order.key(), &self.ctx)
            .await
            .expect("listed");
        versions.iter().all(|c| {
            matches!(
                c.status,
                cqrs_core::CommandStatus::Finished | cqrs_core::CommandStatus::Failed
            )
        })
    }
}

pub fn report(line: String) {
    let _ = writeln!(std::io::stderr(), "FAULT REPORT {line}");
}

pub fn dynamodb() -> Option<String> {
    cqrs_dynamodb::testing::available().then(|| cqrs_dynamodb::testing::endpoint().expect("checked"))
}

pub fn prefix(test: &str) -> String {
    format!("f-{test}-{}", uuid::Uuid::new_v4().simple())
}

/// Cancels every order of `codes` at once (`PATCH /orders/{code}/status`:
/// a sync publish whose handler releases the stock in the request); `on_answered`
/// is told the running count of answers.
pub async fn cancel_burst(url: &str, codes: &[String], on_answered: impl Fn(usize) + Send + Sync + 'static) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let answered = Arc::new(AtomicUsize::new(0));
    let on_answered = Arc::new(on_answered);
    let token = token();
    let tasks: Vec<_> = codes
        .iter()
        .map(|code| {
            let (client, token, answered, on_answered) = (
                client.clone(),
                token.clone(),
                answered.clone(),
                on_answered.clone(),
            );
            let url = format!("{url}/orders/{code}/status");
            tokio::spawn(async move {
                let response = client
                    .patch(url)
                    .bearer_auth(token)
                    .json(&json!({ "status": "cancelled" }))
                    .send()
                    .await;
                if response.is_ok() {
                    on_answered(answered.fetch_add(1, Ordering::SeqCst) + 1);
                }
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
}
