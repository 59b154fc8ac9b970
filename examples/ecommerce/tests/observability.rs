//! What an operator sees, over a real socket: `GET /metrics` after a known
//! workload reports its counts exactly, and `GET /health/ready` fails with
//! its reason when storage fails or a read model lags past its bound, and
//! recovers.
//!
//! Each test installs the process's Prometheus recorder: nextest runs every
//! test in a process of its own.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cqrs_core::testing::FaultyStorage;
use cqrs_core::{CommandInput, CommandService, ExpectedVersion, InvocationContext};
use ecommerce::auth::Auth;
use ecommerce::observe::{install_prometheus, Observe, Readiness};
use ecommerce::Shop;
use serde_json::{json, Value};
use tokio::sync::oneshot;

const SECRET: &[u8] = b"test-secret-of-at-least-32-bytes";

/// The server on a real socket.
struct Server {
    base: String,
    client: reqwest::Client,
    token: String,
    stop: Option<oneshot::Sender<()>>,
}

impl Server {
    async fn start(shop: &Shop, observe: Observe) -> Server {
        let auth = Auth::new(SECRET);
        let token = auth.token("shop-a", "user-1", &["staff"], Duration::from_secs(3600));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bound");
        let addr = listener.local_addr().expect("an address");
        let app = ecommerce::http::router_observed(
            shop.clone(),
            auth,
            ecommerce::http::DEFAULT_REQUEST_TIMEOUT,
            observe,
        );
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(ecommerce::http::serve_until(listener, app, async move {
            let _ = stopped.await;
        }));
        Server {
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            token,
            stop: Some(stop),
        }
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("answered");
        (response.status().as_u16(), response.text().await.expect("a body"))
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .expect("answered");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// `/health/ready`: its status and its checks by name.
    async fn ready(&self) -> (u16, BTreeMap<String, Value>) {
        let (status, body) = self.get("/health/ready").await;
        let body: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(
            body["status"],
            if status == 200 { "ready" } else { "not_ready" },
            "{body}"
        );
        let checks = body["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .map(|check| (check["name"].as_str().expect("a name").to_owned(), check.clone()))
            .collect();
        (status, checks)
    }

    /// `/metrics`, parsed.
    async fn metrics(&self) -> Scrape {
        let (status, text) = self.get("/metrics").await;
        assert_eq!(status, 200, "{text}");
        Scrape::parse(&text)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Samples of a Prometheus text exposition: (name, sorted labels) → value.
#[derive(Debug, Default)]
struct Scrape {
    samples: BTreeMap<(String, Vec<(String, String)>), f64>,
    text: String,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut samples = BTreeMap::new();
        for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').expect("`series value`");
            let value: f64 = value.parse().expect("a number");
            let (name, labels) = match series.split_once('{') {
                None => (series.to_owned(), Vec::new()),
                Some((name, rest)) => {
                    let rest = rest.strip_suffix('}').expect("closing brace");
                    let mut labels: Vec<(String, String)> = rest
                        .split("\",")
                        .filter(|pair| !pair.is_empty())
                        .map(|pair| {
                            let (key, value) = pair.split_once("=\"").expect("key=\"value\"");
                            (key.to_owned(), value.trim_end_matches('"').to_owned())
                        })
                        .collect();
                    labels.sort();
                    (name.to_owned(), labels)
                }
            };
            samples.insert((name, labels), value);
        }
        Scrape {
            samples,
            text: text.to_owned(),
        }
    }

    /// The sample `name` with exactly `labels`; 0 when absent (a series not
    /// moved yet is not rendered).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut labels: Vec<(String, String)> =
            labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
        labels.sort();
        self.samples
            .get(&(name.to_owned(), labels))
            .copied()
            .unwrap_or(0.0)
    }

    /// How many publishes of `mode` ended with `outcome`: the histogram's count.
    fn publishes(&self, mode: &str, outcome: &str) -> f64 {
        self.get(
            "cqrs_publish_duration_seconds_count",
            &[("mode", mode), ("outcome", outcome)],
        )
    }
}

fn product_body(code: &str) -> Value {
    json!({
        "code": code, "name": format!("Product {code}"), "categoryCode": "ACCESSORIES", "sku": format!("SKU-{code}"),
        "price": 12.5, "currency": "USD", "description": "a test product", "images": [], "isActive": true
    })
}

fn order_body() -> Value {
    json!({
        "customerId": "CUST-001",
        "items": [{ "productCode": "PRD-001", "name": "Wireless Mouse", "quantity": 1, "price": 29.99 }],
        "shippingAddress": { "street": "123 Main St", "city": "Tokyo", "postalCode": "100-0001", "country": "JP" },
        "paymentMethod": "credit_card"
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_report_the_counts_of_a_known_workload() {
    let handle = install_prometheus().expect("the only recorder of this process");
    let shop = Shop::in_memory_with_read_models().await.expect("a shop");
    shop.seed_demo("shop-a").await.expect("seeded");
    shop.engine.wait_idle().await;
    let server = Server::start(&shop, Observe::new(Some(handle), Readiness::new(&shop))).await;
    let before = server.metrics().await;

    // Three new products (sync publishes), and one whose code is taken: a
    // version conflict, for real (the product exists at version 1).
    for code in ["PRD-901", "PRD-902", "PRD-903"] {
        let (status, body) = server
            .send(reqwest::Method::POST, "/products", &product_body(code))
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = server
        .send(reqwest::Method::POST, "/products", &product_body("PRD-901"))
        .await;
    assert_eq!(status, 409, "{body}");
    let products = server.metrics().await;
    let delta = |after: &Scrape, before: &Scrape, f: &dyn Fn(&Scrape) -> f64| f(after) - f(before);
    assert_eq!(delta(&products, &before, &|s| s.publishes("sync", "ok")), 3.0);
    assert_eq!(
        delta(&products, &before, &|s| s.publishes("sync", "conflict")),
        1.0
    );
    assert_eq!(
        delta(&products, &before, &|s| s
            .get("cqrs_publish_conflicts_total", &[("mode", "sync")])),
        1.0
    );
    assert_eq!(delta(&products, &before, &|s| s.publishes("async", "ok")), 0.0);

    // Two orders: one async publish each, applied by the in-process
    // pipeline, whose handlers reserve the stock.
    let mut codes = Vec::new();
    for _ in 0..2 {
        let (status, body) = server.send(reqwest::Method::POST, "/orders", &order_body()).await;
        assert_eq!(status, 201, "{body}");
        codes.push(body["code"].as_str().expect("a code").to_owned());
    }
    shop.engine.wait_idle().await;
    let orders = server.metrics().await;
    assert_eq!(delta(&orders, &products, &|s| s.publishes("async", "ok")), 2.0);
    assert_eq!(
        delta(&orders, &products, &|s| s
            .get("ecommerce_orders_placed_total", &[])),
        2.0
    );
    assert_eq!(
        delta(&orders, &products, &|s| s
            .get("cqrs_commands_processed_total", &[("outcome", "finished")])),
        2.0,
        "each async order processed once"
    );
    // Every version of the orders reached the order search read model once.
    let mut versions = 0;
    for code in &codes {
        let (status, order) = server
            .send(reqwest::Method::GET, &format!("/orders/{code}"), &Value::Null)
            .await;
        assert_eq!(status, 200, "{order}");
        versions += order["version"].as_u64().expect("a version");
    }
    assert_eq!(
        delta(&orders, &products, &|s| s.get(
            "cqrs_projection_applied_total",
            &[("projection", "order-search")]
        )),
        versions as f64
    );
    assert_eq!(orders.get("cqrs_engine_in_flight", &[]), 0.0);

    // A stale async publish: a conflict of mode async.
    let ctx = InvocationContext::new("shop-a", "user-1");
    let stale = shop
        .engine
        .publish_async(
            CommandInput::new("TENANT#shop-a", "PRODUCT#PRD-902").version(ExpectedVersion::Exactly(0)),
            &ctx,
        )
        .await;
    assert!(stale.expect_err("stale").is_conflict());
    let last = server.metrics().await;
    assert_eq!(delta(&last, &orders, &|s| s.publishes("async", "conflict")), 1.0);
    assert_eq!(
        delta(&last, &orders, &|s| s
            .get("cqrs_publish_conflicts_total", &[("mode", "async")])),
        1.0
    );
    // Described, and the latency histogram has buckets (the example sets them).
    assert!(
        last.text
            .contains("# HELP cqrs_publish_duration_seconds How long a publish took"),
        "{}",
        last.text
    );
    assert!(
        last.text
            .contains("cqrs_publish_duration_seconds_bucket{mode=\"sync\",outcome=\"ok\",le=\"0.001\"}"),
        "{}",
        last.text
    );
    assert_eq!(
        last.get(
            "cqrs_publish_duration_seconds_bucket",
            &[("mode", "sync"), ("outcome", "ok"), ("le", "+Inf")]
        ),
        last.publishes("sync", "ok")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_fails_with_its_reason_while_storage_is_down_and_recovers() {
    let storage = Arc::new(FaultyStorage::new(Arc::new(cqrs_memory::InMemory::new())));
    let shop = Shop::new(storage.clone());
    let server = Server::start(&shop, Observe::new(None, Readiness::new(&shop))).await;

    let (status, checks) = server.ready().await;
    assert_eq!(status, 200, "{checks:?}");
    assert_eq!(checks["storage"]["ok"], true);
    assert_eq!(
        checks["stream_consumer"]["applicable"], false,
        "no consumer in this process"
    );
    assert_eq!(checks["projections"]["applicable"], false, "no read models");
    // Liveness does not depend on storage.
    assert_eq!(server.get("/health/live").await.0, 200);
    // No recorder given: no metrics.
    assert_eq!(server.get("/metrics").await.0, 404);

    let outage = storage.outage();
    let (status, checks) = server.ready().await;
    assert_eq!(status, 503, "{checks:?}");
    assert_eq!(checks["storage"]["ok"], false);
    let reason = checks["storage"]["reason"].as_str().expect("a reason");
    assert!(reason.contains("a read failed"), "{reason}");
    assert_eq!(
        checks["stream_consumer"]["ok"], true,
        "not applicable is not failing"
    );
    assert_eq!(server.get("/health/live").await.0, 200, "alive while not ready");
    assert_eq!(server.get("/health").await.0, 200);

    storage.remove(outage);
    let (status, checks) = server.ready().await;
    assert_eq!(status, 200, "{checks:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_fails_while_a_read_model_lags_past_its_bound() {
    let handle = install_prometheus().expect("the only recorder of this process");
    let shop = Shop::in_memory_with_read_models().await.expect("a shop");
    // An order placed by a process without the read models (another
    // writer of the tables): they have not applied it.
    let writer = Shop::new(Arc::clone(shop.engine.storage()));
    writer.seed_demo("shop-a").await.expect("seeded");
    let ctx = InvocationContext::new("shop-a", "user-1").with_roles(["staff"]);
    let order = serde_json::from_value(order_body()).expect("an order");
    writer.orders.place(order, None, &ctx).await.expect("placed");
    writer.engine.wait_idle().await;
    tokio::time::sleep(Duration::from_millis(50)).await;

    let bounded = |bound| Readiness::new(&shop).max_projection_lag(Some(bound));
    let tight = bounded(Duration::from_millis(10));
    let server = Server::start(&shop, Observe::new(Some(handle), tight.clone())).await;
    let (status, checks) = server.ready().await;
    assert_eq!(status, 503, "not measured yet: {checks:?}");
    assert!(checks["projections"]["reason"]
        .as_str()
        .is_some_and(|r| r.contains("not been measured")));

    tight.refresh_projection_lag().await;
    let (status, checks) = server.ready().await;
    assert_eq!(status, 503, "{checks:?}");
    let reason = checks["projections"]["reason"].as_str().expect("a reason");
    assert!(reason.contains("order-search: "), "{reason}");
    assert!(reason.contains("sales-report: "), "{reason}");
    assert!(reason.contains("versions behind, the oldest written"), "{reason}");
    assert_eq!(checks["storage"]["ok"], true);
    // The measure set the lag gauges.
    let scrape = server.metrics().await;
    let (_, order) = server
        .send(reqwest::Method::GET, "/orders/ORD-000001", &Value::Null)
        .await;
    let versions = order["version"].as_f64().expect("the order's version");
    assert_eq!(
        scrape.get("cqrs_projection_lag_events", &[("projection", "order-search")]),
        versions,
        "every version of the order is behind"
    );
    assert!(scrape.get("cqrs_projection_lag_seconds", &[("projection", "order-search")]) >= 0.05);

    // The same lag within a looser bound is ready.
    let loose = bounded(Duration::from_secs(3600));
    loose.refresh_projection_lag().await;
    assert!(loose.check().await.is_ready());
    // And once the read models caught up (a rebuild), the tight bound is met.
    let read_models = shop.read_models.as_ref().expect("read models");
    for which in [
        ecommerce::read_models::ReadModel::Sales,
        ecommerce::read_models::ReadModel::Search,
    ] {
        read_models
            .rebuild(which, &["shop-a".to_owned(), "shop-b".to_owned()], |_| {})
            .await
            .expect("rebuilt");
    }
    tight.refresh_projection_lag().await;
    let (status, checks) = server.ready().await;
    assert_eq!(status, 200, "{checks:?}");
    let scrape = server.metrics().await;
    assert_eq!(
        scrape.get("cqrs_projection_lag_events", &[("projection", "order-search")]),
        0.0
    );
}

/// The stream consumer's lease in the DynamoDB tests: short, so that a lost
/// consumer shows within seconds.
const CONSUMER_LEASE: Duration = Duration::from_secs(2);

/// A shop on DynamoDB at `endpoint` (tables `prefix`-*, created) whose async
/// commands a stream consumer applies: its storage, the shop, and that
/// consumer, not started.
async fn shop_with_consumer(
    endpoint: &str,
    prefix: &str,
) -> (
    Arc<cqrs_dynamodb::DynamoDbStorage>,
    Shop,
    cqrs_dynamodb::stream::StreamConsumer,
) {
    let storage = Arc::new(cqrs_dynamodb::DynamoDbStorage::new(
        cqrs_dynamodb::local_client(endpoint),
        ecommerce::shop::dynamodb_tables(cqrs_dynamodb::TableNames::with_prefix(prefix)),
    ));
    storage.ensure_tables().await.expect("tables created");
    let config = ecommerce::shop::ShopConfig {
        dispatch: cqrs_core::AsyncDispatch::External,
        ..Default::default()
    };
    let shop = Shop::with_config(storage.clone(), config);
    let consumer = cqrs_dynamodb::stream::StreamConsumer::new(
        shop.engine.clone(),
        cqrs_dynamodb::local_client(endpoint),
        cqrs_dynamodb::local_streams_client(endpoint),
        storage.tables().clone(),
    )
    .lease_duration(CONSUMER_LEASE)
    .poll_interval(Duration::from_millis(100));
    (storage, shop, consumer)
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_and_metrics_follow_the_stream_consumer_on_dynamodb() {
    if !cqrs_dynamodb::testing::available() {
        return;
    }
    let handle = install_prometheus().expect("the only recorder of this process");
    let endpoint = cqrs_dynamodb::testing::endpoint().expect("checked by available()");
    let prefix = format!("t-ecom-ready-{}", uuid::Uuid::new_v4().simple());
    let (storage, shop, consumer) = shop_with_consumer(&endpoint, &prefix).await;
    shop.seed_demo("shop-a").await.expect("seeded");
    let consumer = consumer.drain_deadline(Duration::from_secs(5));
    let monitor = consumer.monitor();
    let readiness = Readiness::new(&shop).with_consumer(monitor.clone(), CONSUMER_LEASE);
    let server = Server::start(&shop, Observe::new(Some(handle), readiness)).await;

    // Not started yet: not ready, and says why.
    let (status, checks) = server.ready().await;
    assert_eq!(status, 503, "{checks:?}");
    assert_eq!(checks["storage"]["ok"], true);
    assert_eq!(checks["stream_consumer"]["ok"], false);
    assert!(checks["stream_consumer"]["reason"]
        .as_str()
        .is_some_and(|r| r.contains("not running")));

    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(consumer.run(async move {
        let _ = stopped.await;
    }));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, checks) = server.ready().await;
        if status == 200 {
            assert_eq!(checks["stream_consumer"]["ok"], true);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never ready: {checks:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // An order goes through the stream: fed and settled, counted.
    let (status, body) = server.send(reqwest::Method::POST, "/orders", &order_body()).await;
    assert_eq!(status, 201, "{body}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while monitor.stats().settled < 1 || monitor.unsettled() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not settled: {:?}",
            monitor.stats()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let scrape = server.metrics().await;
    let stats = monitor.stats();
    assert_eq!(scrape.get("cqrs_stream_records_fed_total", &[]), stats.fed as f64);
    assert_eq!(
        scrape.get("cqrs_stream_records_settled_total", &[]),
        stats.settled as f64
    );
    assert_eq!(
        scrape.get("cqrs_stream_leases_held", &[]),
        monitor.owned_shards().len() as f64
    );
    assert!(scrape.get("cqrs_stream_leases_held", &[]) >= 1.0);
    assert_eq!(scrape.get("cqrs_stream_unsettled_records", &[]), 0.0);
    assert_eq!(scrape.publishes("async", "ok"), 1.0, "the order");

    // Stopped: not ready again.
    let _ = stop.send(());
    running.await.expect("the consumer stopped");
    let (status, checks) = server.ready().await;
    assert_eq!(status, 503, "{checks:?}");
    assert!(checks["stream_consumer"]["reason"]
        .as_str()
        .is_some_and(|r| r.contains("not running")));
    assert_eq!(server.metrics().await.get("cqrs_stream_leases_held", &[]), 0.0);
    shop.engine.wait_idle().await;
    cqrs_dynamodb::testing::drop_tables(&storage)
        .await
        .expect("tables dropped");
}

/// Polls `/health/ready` until `done` holds for its answer, failing after `limit`.
async fn ready_until(
    server: &Server,
    what: &str,
    limit: Duration,
    done: impl Fn(u16, &BTreeMap<String, Value>) -> bool,
) -> BTreeMap<String, Value> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let (status, checks) = server.ready().await;
        if done(status, &checks) {
            return checks;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {limit:?}: {checks:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_fails_while_dynamodb_is_down_and_recovers_when_it_is_back() {
    if !cqrs_dynamodb::testing::LocalDynamo::available() {
        return;
    }
    let mut local = cqrs_dynamodb::testing::LocalDynamo::start()
        .await
        .expect("DynamoDB Local starts");
    let endpoint = local.endpoint();
    let (_, shop, consumer) = shop_with_consumer(&endpoint, "ready").await;
    let consumer = consumer
        .retry_backoff(Duration::from_millis(50), Duration::from_millis(500))
        .drain_deadline(Duration::from_secs(2));
    let readiness = Readiness::new(&shop).with_consumer(consumer.monitor(), CONSUMER_LEASE);
    let server = Server::start(&shop, Observe::new(None, readiness)).await;
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(consumer.run(async move {
        let _ = stopped.await;
    }));
    ready_until(&server, "ready", Duration::from_secs(30), |status, _| {
        status == 200
    })
    .await;

    // DynamoDB Local killed: the storage check fails at once; the consumer's
    // once its last contact is older than its lease.
    local.kill();
    let killed = std::time::Instant::now();
    let down = ready_until(
        &server,
        "storage and consumer failing",
        Duration::from_secs(60),
        |_, checks| checks["storage"]["ok"] == false && checks["stream_consumer"]["ok"] == false,
    )
    .await;
    let storage_reason = down["storage"]["reason"].as_str().expect("a reason");
    assert!(
        storage_reason.contains("a read failed") || storage_reason.contains("did not answer"),
        "{storage_reason}"
    );
    let consumer_reason = down["stream_consumer"]["reason"].as_str().expect("a reason");
    assert!(consumer_reason.contains("lease duration"), "{consumer_reason}");
    let noticed = killed.elapsed();
    assert_eq!(server.get("/health/live").await.0, 200, "alive while not ready");

    // Back: ready again, the consumer polling and leasing.
    local.restart().await.expect("DynamoDB Local restarts");
    let restarted = std::time::Instant::now();
    ready_until(&server, "ready again", Duration::from_secs(60), |status, _| {
        status == 200
    })
    .await;
    println!(
        "readiness: both checks failing {noticed:?} after the kill (lease {CONSUMER_LEASE:?}); ready {:?} after the restart answered",
        restarted.elapsed()
    );

    let _ = stop.send(());
    running.await.expect("the consumer stopped");
}
