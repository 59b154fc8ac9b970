//! The HTTP API over a real socket, with reqwest, on both backends: every
//! endpoint, the order lifecycle, authentication, tenant isolation, bad
//! bodies, concurrent orders on scarce stock, and redelivered events.
//!
//! Every scenario runs twice, as `memory::<scenario>` and
//! `dynamodb::<scenario>`. The DynamoDB variant needs `DYNAMODB_ENDPOINT`
//! (DynamoDB Local); without it, it skips loudly, or fails when
//! `CQRS_REQUIRE_DYNAMODB` or `CI` is set.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use cqrs_core::{
    CommandService, CommandStatus, DataService, DataSyncEvent, DataSyncHandler, EntityKey, InvocationContext,
};
use ecommerce::auth::Auth;
use ecommerce::notify::NotificationKind;
use ecommerce::shop::ShopConfig;
use ecommerce::sync::OrderSyncHandler;
use ecommerce::Shop;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const SECRET: &[u8] = b"test-secret-of-at-least-32-bytes";
const ROLES: &[&str] = &["staff"];

// ---- backends ---------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Memory,
    DynamoDb,
}

/// A fresh, empty shop, and its DynamoDB storage (to drop its tables at the end).
struct Fresh {
    shop: Shop,
    dynamodb: Option<Arc<cqrs_dynamodb::DynamoDbStorage>>,
}

impl Backend {
    /// A fresh, empty shop; `None` when the backend is not available here.
    async fn shop(self, test: &str) -> Option<Fresh> {
        self.shop_with(test, ShopConfig::default()).await
    }

    /// [`Backend::shop`], its pipeline as `config` says.
    async fn shop_with(self, test: &str, config: ShopConfig) -> Option<Fresh> {
        match self {
            Backend::Memory => Some(Fresh {
                shop: Shop::with_config(Arc::new(cqrs_memory::InMemory::new()), config),
                dynamodb: None,
            }),
            Backend::DynamoDb => {
                if !cqrs_dynamodb::testing::available() {
                    return None;
                }
                let endpoint = cqrs_dynamodb::testing::endpoint()
                    .expect("checked by cqrs_dynamodb::testing::available()");
                let prefix = format!("t-ecom-{test}-{}", uuid::Uuid::new_v4().simple());
                let storage = Arc::new(cqrs_dynamodb::DynamoDbStorage::new(
                    cqrs_dynamodb::local_client(&endpoint),
                    ecommerce::shop::dynamodb_tables(cqrs_dynamodb::TableNames::with_prefix(&prefix)),
                ));
                storage.ensure_tables().await.expect("tables created");
                Some(Fresh {
                    shop: Shop::with_config(storage.clone(), config),
                    dynamodb: Some(storage),
                })
            }
        }
    }
}

impl Fresh {
    /// Drops the tables of a test that passed (a failed test keeps them to look at).
    async fn clean_up(self) {
        self.shop.engine.wait_idle().await;
        if let Some(storage) = self.dynamodb {
            cqrs_dynamodb::testing::drop_tables(&storage)
                .await
                .expect("tables dropped");
        }
    }
}

// ---- the server and its client ------------------------------------------------

/// A response: status, content type, headers and JSON body (`Null` when empty).
#[derive(Debug)]
struct Resp {
    status: u16,
    content_type: String,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Resp {
    /// The value of header `name`, if it has one.
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The server on a real socket, over a shop seeded for shop-a and shop-b.
struct Api {
    shop: Shop,
    dynamodb: Option<Arc<cqrs_dynamodb::DynamoDbStorage>>,
    auth: Auth,
    base: String,
    client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

impl Api {
    async fn start(backend: Backend, test: &str) -> Option<Api> {
        Self::start_with(backend, test, ShopConfig::default()).await
    }

    /// [`Api::start`], the shop's pipeline as `config` says.
    async fn start_with(backend: Backend, test: &str, config: ShopConfig) -> Option<Api> {
        let Fresh { shop, dynamodb } = backend.shop_with(test, config).await?;
        shop.seed_demo("shop-a").await.expect("shop-a seeded");
        shop.seed_demo("shop-b").await.expect("shop-b seeded");
        let auth = Auth::new(SECRET);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bound");
        let addr = listener.local_addr().expect("an address");
        let (shutdown, stop) = oneshot::channel::<()>();
        let server = tokio::spawn(ecommerce::http::serve_with_shutdown(
            listener,
            shop.clone(),
            auth.clone(),
            async move {
                let _ = stop.await;
            },
        ));
        Some(Api {
            shop,
            dynamodb,
            auth,
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            shutdown: Some(shutdown),
            server: Some(server),
        })
    }

    /// Shuts the server down and checks that it ended cleanly.
    async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            let ended = tokio::time::timeout(Duration::from_secs(10), server)
                .await
                .expect("the server stops within 10 s");
            ended
                .expect("the server task did not panic")
                .expect("the server ended without error");
        }
        Fresh {
            shop: self.shop.clone(),
            dynamodb: self.dynamodb.take(),
        }
        .clean_up()
        .await;
    }

    fn token(&self, tenant: &str) -> String {
        self.auth
            .token(tenant, "user-1", ROLES, Duration::from_secs(3600))
    }

    async fn send(&self, method: Method, path: &str, token: Option<&str>, body: Option<Vec<u8>>) -> Resp {
        self.send_with(method, path, token, body, &[]).await
    }

    /// [`Api::send`] with more headers (given as bytes: they need not be text).
    async fn send_with(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
        headers: &[(&str, &[u8])],
    ) -> Resp {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        for (name, value) in headers {
            let value = reqwest::header::HeaderValue::from_bytes(value).expect("a header value");
            request = request.header(*name, value);
        }
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body);
        }
        let response = request.send().await.expect("the server answers");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let content_type = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let text = response.text().await.expect("a body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}), status {status}: {text}"))
        };
        Resp {
            status,
            content_type,
            headers,
            body,
        }
    }

    async fn get(&self, path: &str, token: &str) -> Resp {
        self.send(Method::GET, path, Some(token), None).await
    }

    async fn post(&self, path: &str, token: &str, body: &Value) -> Resp {
        self.send(
            Method::POST,
            path,
            Some(token),
            Some(body.to_string().into_bytes()),
        )
        .await
    }

    async fn patch(&self, path: &str, token: &str, body: &Value) -> Resp {
        self.send(
            Method::PATCH,
            path,
            Some(token),
            Some(body.to_string().into_bytes()),
        )
        .await
    }

    /// `method path` with `body` and an `Idempotency-Key`.
    async fn keyed(&self, method: Method, path: &str, token: &str, key: &str, body: &Value) -> Resp {
        self.send_with(
            method,
            path,
            Some(token),
            Some(body.to_string().into_bytes()),
            &[("idempotency-key", key.as_bytes())],
        )
        .await
    }

    /// Places an order and returns its code (201 expected).
    async fn place(&self, token: &str, product: &str, quantity: u32, price: f64) -> String {
        let created = self
            .post("/orders", token, &order_body(product, quantity, price))
            .await;
        assert_eq!(created.status, 201, "{:?}", created.body);
        created.body["code"].as_str().expect("a code").to_owned()
    }

    /// The order once the pipeline has settled its reservation (bounded: 10 s).
    async fn settled(&self, token: &str, code: &str) -> Value {
        self.shop.engine.wait_idle().await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let order = self.get(&format!("/orders/{code}"), token).await;
            if order.status == 200 && order.body["attributes"]["reservation"] != "pending" {
                return order.body;
            }
            assert!(
                Instant::now() < deadline,
                "order {code} not settled within 10 s: {order:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `(quantity, reservedQuantity)` of a product's stock.
    async fn stock(&self, token: &str, product: &str) -> (i64, i64) {
        let record = self.get(&format!("/inventory/{product}"), token).await;
        assert_eq!(record.status, 200, "{:?}", record.body);
        let a = &record.body["attributes"];
        (
            a["quantity"].as_i64().expect("quantity"),
            a["reservedQuantity"].as_i64().expect("reserved"),
        )
    }

    /// Moves an order; returns the response.
    async fn move_to(&self, token: &str, code: &str, status: &str) -> Resp {
        self.patch(
            &format!("/orders/{code}/status"),
            token,
            &json!({ "status": status }),
        )
        .await
    }

    /// Every order of the token's tenant, walking the pages.
    async fn all_orders(&self, token: &str, query: &str) -> Vec<Value> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..1000 {
            let mut path = format!("/orders?limit=100{query}");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let page = self.get(&path, token).await;
            assert_eq!(page.status, 200, "{:?}", page.body);
            items.extend(page.body["items"].as_array().expect("items").iter().cloned());
            match page.body["cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return items,
            }
        }
        panic!("more than 1000 pages");
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

fn order_body(product: &str, quantity: u32, price: f64) -> Value {
    json!({
        "customerId": "CUST-001",
        "items": [{ "productCode": product, "name": "Wireless Mouse", "quantity": quantity, "price": price }],
        "shippingAddress": { "street": "123 Main St", "city": "Tokyo", "postalCode": "100-0001", "country": "JP" },
        "paymentMethod": "credit_card"
    })
}

/// An order of several `(product, quantity, price)` lines.
fn lines_body(lines: &[(&str, u32, f64)]) -> Value {
    let mut body = order_body("PRD-001", 1, 29.99);
    body["items"] = lines
        .iter()
        .map(|(product, quantity, price)| {
            json!({ "productCode": product, "name": "Item", "quantity": quantity, "price": price })
        })
        .collect();
    body
}

fn product_body(code: &str, price: f64, is_active: bool) -> Value {
    json!({
        "code": code, "name": format!("Product {code}"), "categoryCode": "ACCESSORIES", "sku": format!("SKU-{code}"),
        "price": price, "currency": "USD", "description": "a test product", "images": ["https://img/1.png"],
        "isActive": is_active
    })
}

/// An item of the API: `{pk, sk, code, name, version, attributes}`.
fn assert_item(body: &Value, tenant: &str, sk: &str, version: u64) {
    assert_eq!(body["pk"], format!("TENANT#{tenant}"), "{body}");
    assert_eq!(body["sk"], sk, "{body}");
    assert_eq!(body["code"], sk.split_once('#').expect("a typed sk").1, "{body}");
    assert!(body["name"].is_string(), "{body}");
    assert_eq!(body["version"], version, "{body}");
    assert!(body["attributes"].is_object(), "{body}");
}

/// A list: `{"items": [...], "cursor": string|null}`.
fn assert_list(body: &Value) -> &Vec<Value> {
    assert!(body["cursor"].is_null() || body["cursor"].is_string(), "{body}");
    assert!(
        body.get("cursor").is_some(),
        "a list always has a cursor field: {body}"
    );
    body["items"]
        .as_array()
        .unwrap_or_else(|| panic!("a list: {body}"))
}

/// An error: the status, a JSON body `{"error": kind, "message"}`.
fn assert_error(resp: &Resp, status: u16, kind: &str) {
    assert_eq!(resp.status, status, "{:?}", resp.body);
    assert!(
        resp.content_type.starts_with("application/json"),
        "an error is JSON: {resp:?}"
    );
    assert_eq!(resp.body["error"], kind, "{:?}", resp.body);
    assert!(
        resp.body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "an error has a message: {:?}",
        resp.body
    );
}

fn f64_at(body: &Value, path: &str) -> f64 {
    body.pointer(path)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("no number at {path}: {body}"))
}

/// `value` with every number as a float: `6` and `6.0` are the same JSON
/// number, and a backend may give back either.
fn numbers_as_f64(value: &Value) -> Value {
    match value {
        Value::Number(n) => json!(n.as_f64().expect("a finite number")),
        Value::Array(items) => Value::Array(items.iter().map(numbers_as_f64).collect()),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), numbers_as_f64(v))).collect())
        }
        other => other.clone(),
    }
}

fn codes(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|i| i["code"].as_str().expect("a code").to_owned())
        .collect()
}

fn ctx(tenant: &str) -> InvocationContext {
    InvocationContext::new(tenant, "user-1")
}

// ---- scenarios ----------------------------------------------------------------

/// Every endpoint once, with its status and the shape of its body.
async fn every_endpoint(api: &Api) {
    let a = api.token("shop-a");

    let health = api.send(Method::GET, "/health", None, None).await;
    assert_eq!(health.status, 200, "{health:?}");
    assert_eq!(health.body, json!({ "status": "ok" }));

    let spec = api.send(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(spec.status, 200, "the spec needs no token: {spec:?}");
    assert!(
        spec.body["openapi"].as_str().is_some_and(|v| v.starts_with('3')),
        "{}",
        spec.body
    );
    let paths = spec.body["paths"].as_object().expect("paths");
    for path in [
        "/orders",
        "/orders/{code}",
        "/orders/{code}/status",
        "/products",
        "/products/{code}",
        "/inventory/{productCode}",
        "/health",
    ] {
        assert!(
            paths.contains_key(path),
            "the spec lists {path}: {:?}",
            paths.keys().collect::<Vec<_>>()
        );
    }
    for (path, method) in [
        ("/orders", "post"),
        ("/orders", "get"),
        ("/orders/{code}", "get"),
        ("/orders/{code}/status", "patch"),
        ("/products", "post"),
        ("/products", "get"),
        ("/products/{code}", "get"),
        ("/inventory/{productCode}", "patch"),
        ("/inventory/{productCode}", "get"),
    ] {
        assert!(
            paths[path].get(method).is_some(),
            "the spec lists {method} {path}"
        );
    }

    // POST /orders: the seed's response.
    let created = api.post("/orders", &a, &order_body("PRD-001", 2, 29.99)).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let order = &created.body;
    assert_item(order, "shop-a", "ORDER#ORD-000001", 1);
    assert_eq!(order["code"], "ORD-000001");
    assert_eq!(order["name"], "Order ORD-000001");
    assert_eq!(f64_at(order, "/attributes/subtotal"), 59.98);
    assert_eq!(f64_at(order, "/attributes/tax"), 6.0);
    assert_eq!(f64_at(order, "/attributes/total"), 65.98);
    assert_eq!(order["attributes"]["status"], "pending");
    assert_eq!(order["attributes"]["reservation"], "pending");
    assert_eq!(order["attributes"]["customerId"], "CUST-001");
    assert_eq!(order["attributes"]["paymentMethod"], "credit_card");
    assert_eq!(order["attributes"]["shippingAddress"]["city"], "Tokyo");
    assert_eq!(
        order["attributes"]["items"],
        order_body("PRD-001", 2, 29.99)["items"]
    );
    assert!(order["attributes"]["placedAt"].is_string(), "{order}");

    // GET /orders/{code}
    let settled = api.settled(&a, "ORD-000001").await;
    assert_item(&settled, "shop-a", "ORDER#ORD-000001", 2);
    assert_eq!(settled["attributes"]["reservation"], "reserved");
    assert_eq!(settled["attributes"]["status"], "pending");
    assert_eq!(f64_at(&settled, "/attributes/total"), 65.98);

    // GET /orders
    let list = api.get("/orders", &a).await;
    assert_eq!(list.status, 200, "{:?}", list.body);
    let items = assert_list(&list.body);
    assert_eq!(codes(items), ["ORD-000001"]);
    assert!(list.body["cursor"].is_null());
    assert_item(&items[0], "shop-a", "ORDER#ORD-000001", 2);

    // PATCH /orders/{code}/status
    let confirmed = api
        .patch(
            "/orders/ORD-000001/status",
            &a,
            &json!({ "status": "confirmed", "version": 2 }),
        )
        .await;
    assert_eq!(confirmed.status, 200, "{:?}", confirmed.body);
    assert_item(&confirmed.body, "shop-a", "ORDER#ORD-000001", 3);
    assert_eq!(confirmed.body["attributes"]["status"], "confirmed");

    // POST /products
    let product = api
        .post("/products", &a, &product_body("PRD-004", 12.5, true))
        .await;
    assert_eq!(product.status, 201, "{:?}", product.body);
    assert_item(&product.body, "shop-a", "PRODUCT#PRD-004", 1);
    assert_eq!(product.body["name"], "Product PRD-004");
    let attributes = &product.body["attributes"];
    assert_eq!(f64_at(attributes, "/price"), 12.5);
    assert_eq!(attributes["categoryCode"], "ACCESSORIES");
    assert_eq!(attributes["sku"], "SKU-PRD-004");
    assert_eq!(attributes["currency"], "USD");
    assert_eq!(attributes["description"], "a test product");
    assert_eq!(attributes["images"], json!(["https://img/1.png"]));
    assert_eq!(attributes["isActive"], true);
    let again = api
        .post("/products", &a, &product_body("PRD-004", 12.5, true))
        .await;
    assert_error(&again, 409, "conflict");

    // GET /products, GET /products/{code}
    let products = api.get("/products", &a).await;
    assert_eq!(products.status, 200, "{:?}", products.body);
    assert_eq!(
        codes(assert_list(&products.body)),
        ["PRD-001", "PRD-002", "PRD-003", "PRD-004"]
    );
    assert!(products.body["cursor"].is_null());
    let one = api.get("/products/PRD-002", &a).await;
    assert_eq!(one.status, 200, "{:?}", one.body);
    assert_item(&one.body, "shop-a", "PRODUCT#PRD-002", 1);
    assert_eq!(one.body["name"], "Mechanical Keyboard");
    assert_eq!(f64_at(&one.body, "/attributes/price"), 89.5);

    // PATCH /inventory/{productCode}: creates, then updates at a version.
    let stock = api
        .patch(
            "/inventory/PRD-004",
            &a,
            &json!({ "quantity": 5, "warehouseCode": "WH-2" }),
        )
        .await;
    assert_eq!(stock.status, 200, "{:?}", stock.body);
    assert_item(&stock.body, "shop-a", "INVENTORY#PRD-004", 1);
    assert_eq!(stock.body["attributes"]["quantity"], 5);
    assert_eq!(stock.body["attributes"]["reservedQuantity"], 0);
    assert_eq!(stock.body["attributes"]["warehouseCode"], "WH-2");
    let restocked = api
        .patch(
            "/inventory/PRD-004",
            &a,
            &json!({ "quantity": 7, "warehouseCode": "WH-2", "version": 1 }),
        )
        .await;
    assert_eq!(restocked.status, 200, "{:?}", restocked.body);
    assert_item(&restocked.body, "shop-a", "INVENTORY#PRD-004", 2);
    let stale = api
        .patch(
            "/inventory/PRD-004",
            &a,
            &json!({ "quantity": 9, "warehouseCode": "WH-2", "version": 1 }),
        )
        .await;
    assert_error(&stale, 409, "version_conflict");
    let below_reserved = api
        .patch(
            "/inventory/PRD-001",
            &a,
            &json!({ "quantity": 1, "warehouseCode": "WH-1" }),
        )
        .await;
    assert_error(&below_reserved, 409, "conflict");
    let negative = api
        .patch(
            "/inventory/PRD-004",
            &a,
            &json!({ "quantity": -1, "warehouseCode": "WH-2" }),
        )
        .await;
    assert_error(&negative, 400, "invalid_input");
    let no_product = api
        .patch(
            "/inventory/PRD-404",
            &a,
            &json!({ "quantity": 1, "warehouseCode": "WH-2" }),
        )
        .await;
    assert_error(&no_product, 404, "not_found");

    // GET /inventory/{productCode}
    let record = api.get("/inventory/PRD-004", &a).await;
    assert_eq!(record.status, 200, "{:?}", record.body);
    assert_item(&record.body, "shop-a", "INVENTORY#PRD-004", 2);
    assert_eq!(record.body["attributes"]["quantity"], 7);
    assert_eq!(record.body["attributes"]["productCode"], "PRD-004");
    assert_eq!(api.stock(&a, "PRD-001").await, (100, 2));

    // Missing things are 404 JSON; bad codes are 400.
    assert_error(&api.get("/orders/ORD-999999", &a).await, 404, "not_found");
    assert_error(&api.get("/products/PRD-404", &a).await, 404, "not_found");
    assert_error(&api.get("/inventory/PRD-404", &a).await, 404, "not_found");
    assert_error(
        &api.move_to(&a, "ORD-999999", "cancelled").await,
        404,
        "not_found",
    );
    assert_error(&api.get("/orders/ORD%23000001", &a).await, 400, "invalid_input");
}

/// An order from creation to delivery, and the refusals on the way.
async fn lifecycle(api: &Api) {
    let a = api.token("shop-a");
    assert_eq!(api.stock(&a, "PRD-001").await, (100, 0));

    let code = api.place(&a, "PRD-001", 2, 29.99).await;
    assert_eq!(code, "ORD-000001");
    let order = api.settled(&a, &code).await;
    assert_eq!(order["attributes"]["reservation"], "reserved");
    assert_eq!(api.stock(&a, "PRD-001").await, (100, 2));

    // pending → shipped is not a transition; nothing changes.
    let skipped = api.move_to(&a, &code, "shipped").await;
    assert_error(&skipped, 409, "invalid_transition");
    let message = skipped.body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("pending") && message.contains("shipped"),
        "{message}"
    );

    // A stale version is a conflict and changes nothing.
    let stale = api
        .patch(
            &format!("/orders/{code}/status"),
            &a,
            &json!({ "status": "confirmed", "version": 1 }),
        )
        .await;
    assert_error(&stale, 409, "version_conflict");
    let unchanged = api.get(&format!("/orders/{code}"), &a).await;
    assert_eq!(unchanged.body["version"], 2);
    assert_eq!(unchanged.body["attributes"]["status"], "pending");

    let confirmed = api.move_to(&a, &code, "confirmed").await;
    assert_eq!(confirmed.status, 200, "{:?}", confirmed.body);
    assert_eq!(confirmed.body["attributes"]["status"], "confirmed");
    assert_eq!(confirmed.body["version"], 3);
    assert_error(
        &api.move_to(&a, &code, "confirmed").await,
        409,
        "invalid_transition",
    );

    let processing = api.move_to(&a, &code, "processing").await;
    assert_eq!(processing.status, 200, "{:?}", processing.body);
    assert_eq!(processing.body["attributes"]["status"], "processing");
    assert!(processing.body["attributes"].get("shippedAt").is_none());

    let shipped = api.move_to(&a, &code, "shipped").await;
    assert_eq!(shipped.status, 200, "{:?}", shipped.body);
    assert_eq!(shipped.body["attributes"]["status"], "shipped");
    assert!(
        shipped.body["attributes"]["shippedAt"].is_string(),
        "{}",
        shipped.body
    );
    assert!(shipped.body["attributes"].get("deliveredAt").is_none());
    api.shop.engine.wait_idle().await;
    assert_eq!(
        api.stock(&a, "PRD-001").await,
        (98, 0),
        "shipping takes the reserved units out of stock"
    );

    let delivered = api.move_to(&a, &code, "delivered").await;
    assert_eq!(delivered.status, 200, "{:?}", delivered.body);
    assert_eq!(delivered.body["attributes"]["status"], "delivered");
    assert!(
        delivered.body["attributes"]["deliveredAt"].is_string(),
        "{}",
        delivered.body
    );
    assert_eq!(
        delivered.body["attributes"]["shippedAt"],
        shipped.body["attributes"]["shippedAt"]
    );
    assert_eq!(delivered.body["version"], 6);
    let final_state = api.get(&format!("/orders/{code}"), &a).await;
    assert_eq!(numbers_as_f64(&final_state.body), numbers_as_f64(&delivered.body));
    assert_error(
        &api.move_to(&a, &code, "cancelled").await,
        409,
        "invalid_transition",
    );
    assert_eq!(api.stock(&a, "PRD-001").await, (98, 0));

    // A reservation that failed: the order cannot be confirmed (409), and it reserved nothing.
    let too_many = api.place(&a, "PRD-003", 11, 9.99).await;
    let failed = api.settled(&a, &too_many).await;
    assert_eq!(failed["attributes"]["reservation"], "failed");
    assert_eq!(failed["attributes"]["status"], "pending");
    assert_error(&api.move_to(&a, &too_many, "confirmed").await, 409, "conflict");
    assert_eq!(api.stock(&a, "PRD-003").await, (10, 0));
    // ... but it can be cancelled, which releases nothing.
    let cancelled_failed = api.move_to(&a, &too_many, "cancelled").await;
    assert_eq!(cancelled_failed.status, 200, "{:?}", cancelled_failed.body);
    assert_eq!(api.stock(&a, "PRD-003").await, (10, 0));

    // Cancelling a reserved (and confirmed) order releases its stock.
    let keyboard = api.place(&a, "PRD-002", 3, 89.5).await;
    api.settled(&a, &keyboard).await;
    assert_eq!(api.stock(&a, "PRD-002").await, (50, 3));
    let confirmed = api.move_to(&a, &keyboard, "confirmed").await;
    assert_eq!(confirmed.status, 200, "{:?}", confirmed.body);
    let cancelled = api
        .patch(
            &format!("/orders/{keyboard}/status"),
            &a,
            &json!({ "status": "cancelled", "version": confirmed.body["version"] }),
        )
        .await;
    assert_eq!(cancelled.status, 200, "{:?}", cancelled.body);
    assert_eq!(cancelled.body["attributes"]["status"], "cancelled");
    api.shop.engine.wait_idle().await;
    assert_eq!(api.stock(&a, "PRD-002").await, (50, 0));
    assert_error(
        &api.move_to(&a, &keyboard, "confirmed").await,
        409,
        "invalid_transition",
    );

    // A reservation is all or nothing across lines, and lines of one product add up.
    let mixed = api
        .post(
            "/orders",
            &a,
            &lines_body(&[("PRD-002", 1, 89.5), ("PRD-003", 11, 9.99)]),
        )
        .await;
    assert_eq!(mixed.status, 201, "{:?}", mixed.body);
    let mixed = api
        .settled(&a, mixed.body["code"].as_str().expect("a code"))
        .await;
    assert_eq!(mixed["attributes"]["reservation"], "failed");
    assert_eq!(
        api.stock(&a, "PRD-002").await,
        (50, 0),
        "nothing reserved for the line that fitted"
    );
    let split = api
        .post(
            "/orders",
            &a,
            &lines_body(&[("PRD-003", 6, 9.99), ("PRD-003", 5, 9.99)]),
        )
        .await;
    assert_eq!(split.status, 201, "{:?}", split.body);
    let split = api
        .settled(&a, split.body["code"].as_str().expect("a code"))
        .await;
    assert_eq!(
        split["attributes"]["reservation"], "failed",
        "6 + 5 units of a product with 10"
    );
    let exact = api
        .post(
            "/orders",
            &a,
            &lines_body(&[("PRD-003", 6, 9.99), ("PRD-003", 4, 9.99)]),
        )
        .await;
    assert_eq!(exact.status, 201, "{:?}", exact.body);
    let exact = api
        .settled(&a, exact.body["code"].as_str().expect("a code"))
        .await;
    assert_eq!(
        exact["attributes"]["reservation"], "reserved",
        "6 + 4 units of a product with 10"
    );
    assert_eq!(api.stock(&a, "PRD-003").await, (10, 10));

    // The customer and operations were told, once each.
    let sent = api.shop.notifier.sent();
    let count = |code: &str, kind: NotificationKind| {
        sent.iter()
            .filter(|n| n.tenant == "shop-a" && n.order_code == code && n.kind == kind)
            .count()
    };
    assert_eq!(count(&code, NotificationKind::OrderConfirmation), 1);
    assert_eq!(count(&code, NotificationKind::Shipping), 1);
    assert_eq!(count(&code, NotificationKind::Delivery), 1);
    assert_eq!(count(&too_many, NotificationKind::InventoryReservationFailed), 1);
    assert_eq!(count(&keyboard, NotificationKind::Cancellation), 1);
}

/// Filters, limits and cursors of GET /orders.
async fn listing(api: &Api) {
    let a = api.token("shop-a");
    let b = api.token("shop-b");
    let mut placed = Vec::new();
    for _ in 0..5 {
        placed.push(api.place(&a, "PRD-001", 1, 29.99).await);
    }
    assert_eq!(
        placed,
        [
            "ORD-000001",
            "ORD-000002",
            "ORD-000003",
            "ORD-000004",
            "ORD-000005"
        ]
    );
    for code in &placed {
        api.settled(&a, code).await;
    }
    for code in ["ORD-000002", "ORD-000004"] {
        let cancelled = api.move_to(&a, code, "cancelled").await;
        assert_eq!(cancelled.status, 200, "{:?}", cancelled.body);
    }

    // status=pending, one at a time: each pending order once, the last page without cursor.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut first_cursor = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/orders?status=pending&limit=1&cursor={c}"),
            None => "/orders?status=pending&limit=1".to_owned(),
        };
        let page = api.get(&path, &a).await;
        assert_eq!(page.status, 200, "{:?}", page.body);
        let items = assert_list(&page.body);
        assert_eq!(items.len(), 1, "a page of limit 1 holds one item: {}", page.body);
        assert_eq!(items[0]["attributes"]["status"], "pending");
        seen.extend(codes(items));
        match page.body["cursor"].as_str() {
            Some(c) => {
                first_cursor.get_or_insert_with(|| c.to_owned());
                cursor = Some(c.to_owned());
            }
            None => break,
        }
        assert!(seen.len() <= 3, "more pages than pending orders: {seen:?}");
    }
    assert_eq!(seen, ["ORD-000001", "ORD-000003", "ORD-000005"]);

    let cancelled = api.get("/orders?status=cancelled", &a).await;
    assert_eq!(codes(assert_list(&cancelled.body)), ["ORD-000002", "ORD-000004"]);
    assert!(cancelled.body["cursor"].is_null());
    let all = api.all_orders(&a, "").await;
    assert_eq!(codes(&all), placed);
    let two = api.get("/orders?limit=2", &a).await;
    assert_eq!(codes(assert_list(&two.body)), ["ORD-000001", "ORD-000002"]);
    assert!(two.body["cursor"].is_string());

    // Bad parameters are 400 JSON.
    assert_error(&api.get("/orders?limit=0", &a).await, 400, "invalid_input");
    assert_error(&api.get("/orders?limit=101", &a).await, 400, "invalid_input");
    assert_error(&api.get("/orders?limit=many", &a).await, 400, "invalid_input");
    assert_error(
        &api.get("/orders?status=teleported", &a).await,
        400,
        "invalid_input",
    );
    // A cursor is opaque: any string is well formed, only the server's own
    // reads (422).
    assert_error(
        &api.get("/orders?cursor=not-a-cursor", &a).await,
        422,
        "invalid_cursor",
    );
    // A cursor of shop-a is no way into shop-a's orders for shop-b.
    let foreign = api
        .get(
            &format!("/orders?limit=1&cursor={}", first_cursor.expect("a cursor")),
            &b,
        )
        .await;
    assert_error(&foreign, 422, "invalid_cursor");
}

/// Orders are checked against the catalogue; a refused order leaves no trace.
async fn catalogue_prices(api: &Api) {
    let a = api.token("shop-a");
    let inactive = api
        .post("/products", &a, &product_body("PRD-009", 5.0, false))
        .await;
    assert_eq!(inactive.status, 201, "{:?}", inactive.body);
    assert_eq!(inactive.body["attributes"]["isActive"], false);
    let stocked = api
        .patch(
            "/inventory/PRD-009",
            &a,
            &json!({ "quantity": 100, "warehouseCode": "WH-1" }),
        )
        .await;
    assert_eq!(stocked.status, 200, "{:?}", stocked.body);

    let mut missing_field = order_body("PRD-001", 1, 29.99);
    missing_field.as_object_mut().unwrap().remove("customerId");
    let mut missing_price = order_body("PRD-001", 1, 29.99);
    missing_price["items"][0].as_object_mut().unwrap().remove("price");
    let mut no_items = order_body("PRD-001", 1, 29.99);
    no_items["items"] = json!([]);
    let mut blank_customer = order_body("PRD-001", 1, 29.99);
    blank_customer["customerId"] = json!("  ");
    // Well formed, refused by the catalogue: 422.
    let unprocessable = [
        ("wrong price", order_body("PRD-001", 2, 19.99)),
        ("price off by a cent", order_body("PRD-001", 2, 30.0)),
        ("unknown product", order_body("PRD-404", 1, 29.99)),
        ("inactive product", order_body("PRD-009", 1, 5.0)),
    ];
    for (what, body) in unprocessable {
        let resp = api.post("/orders", &a, &body).await;
        assert_eq!(resp.status, 422, "{what}: {:?}", resp.body);
        assert_error(&resp, 422, "unprocessable");
    }
    // Against the document's rules: 400.
    let mut fractional_price = order_body("PRD-001", 1, 29.99);
    fractional_price["items"][0]["price"] = json!(29.991);
    let refused = [
        ("price finer than cents", fractional_price),
        (
            "a malformed line after an unknown product",
            lines_body(&[("PRD-404", 1, 29.99), ("PRD-001", 0, 29.99)]),
        ),
        ("quantity 0", order_body("PRD-001", 0, 29.99)),
        ("quantity over the limit", order_body("PRD-001", 10_001, 29.99)),
        ("missing customerId", missing_field),
        ("missing price", missing_price),
        ("no items", no_items),
        ("blank customerId", blank_customer),
    ];
    for (what, body) in refused {
        let resp = api.post("/orders", &a, &body).await;
        assert_eq!(resp.status, 400, "{what}: {:?}", resp.body);
        assert_error(&resp, 400, "invalid_input");
    }
    api.shop.engine.wait_idle().await;
    let list = api.get("/orders", &a).await;
    assert_eq!(
        assert_list(&list.body).len(),
        0,
        "no order was created: {}",
        list.body
    );
    assert_eq!(api.stock(&a, "PRD-001").await, (100, 0));
    assert_eq!(api.stock(&a, "PRD-009").await, (100, 0));

    // Prices are per tenant's catalogue; the right one is accepted.
    let code = api.place(&a, "PRD-002", 1, 89.5).await;
    let order = api.settled(&a, &code).await;
    assert_eq!(f64_at(&order, "/attributes/subtotal"), 89.5);
    assert_eq!(f64_at(&order, "/attributes/tax"), 8.95);
    assert_eq!(f64_at(&order, "/attributes/total"), 98.45);

    // Several lines: the totals of the seed's rule (10 % tax, rounded half-up to cents).
    let several = api
        .post(
            "/orders",
            &a,
            &lines_body(&[("PRD-001", 1, 29.99), ("PRD-002", 2, 89.5)]),
        )
        .await;
    assert_eq!(several.status, 201, "{:?}", several.body);
    assert_eq!(f64_at(&several.body, "/attributes/subtotal"), 208.99);
    assert_eq!(f64_at(&several.body, "/attributes/tax"), 20.9);
    assert_eq!(f64_at(&several.body, "/attributes/total"), 229.89);
    let several = api
        .settled(&a, several.body["code"].as_str().expect("a code"))
        .await;
    assert_eq!(several["attributes"]["reservation"], "reserved");
    assert_eq!(api.stock(&a, "PRD-001").await, (100, 1));
    assert_eq!(api.stock(&a, "PRD-002").await, (50, 3));
    // One bad line refuses the whole order.
    let one_bad = api
        .post(
            "/orders",
            &a,
            &lines_body(&[("PRD-001", 1, 29.99), ("PRD-002", 1, 89.49)]),
        )
        .await;
    assert_error(&one_bad, 422, "unprocessable");
    assert_eq!(assert_list(&api.get("/orders", &a).await.body).len(), 2);

    // A bad product is refused too.
    let negative = api
        .post("/products", &a, &product_body("PRD-010", -1.0, true))
        .await;
    assert_error(&negative, 400, "invalid_input");
    let fractional = api
        .post("/products", &a, &product_body("PRD-010", 1.001, true))
        .await;
    assert_error(&fractional, 400, "invalid_input");
    let bad_code = api
        .post("/products", &a, &product_body("PRD#010", 1.0, true))
        .await;
    assert_error(&bad_code, 400, "invalid_input");
}

/// Prices and quantities are bounded and money adds up with checked
/// arithmetic: the issue's 7.9e28 product is refused, an order of one that is
/// in the tables already (written before the bound) is a 400, not a closed
/// connection, and nothing is written for either.
async fn money_bounds(api: &Api) {
    let a = api.token("shop-a");
    for (what, price) in [
        ("7.9e28", json!(7.9e28)),
        ("zero", json!(0)),
        ("negative", json!(-0.01)),
        ("a cent over the bound", json!(1_000_000.01)),
        ("a thousandth", json!(0.001)),
        ("1e200", json!(1e200)),
        ("1e-200", json!(1e-200)),
    ] {
        let mut body = product_body("PRD-050", 1.0, true);
        body["price"] = price;
        let resp = api.post("/products", &a, &body).await;
        assert_eq!(resp.status, 400, "price {what}: {:?}", resp.body);
        assert_error(&resp, 400, "invalid_input");
    }
    for raw in [
        r#""price": 1e400"#,
        r#""price": 79228162514264337593543950336"#,
        r#""price": -79228162514264337593543950336"#,
    ] {
        let body = format!(
            r#"{{"code":"PRD-050","name":"N","categoryCode":"C","sku":"S",{raw},"currency":"USD","isActive":true}}"#
        );
        let resp = api
            .send(Method::POST, "/products", Some(&a), Some(body.into_bytes()))
            .await;
        assert_error(&resp, 400, "invalid_input");
    }
    assert_eq!(api.get("/products/PRD-050", &a).await.status, 404);
    // The bound itself is a price.
    let top = api
        .post("/products", &a, &product_body("PRD-051", 1_000_000.0, true))
        .await;
    assert_eq!(top.status, 201, "{:?}", top.body);

    // Quantities: of an order line and of stock.
    for quantity in [
        json!(0),
        json!(10_001),
        json!(4_294_967_296_u64),
        json!(1e30),
        json!(-1),
        json!(1.5),
    ] {
        let mut body = order_body("PRD-001", 1, 29.99);
        body["items"][0]["quantity"] = quantity;
        assert_error(&api.post("/orders", &a, &body).await, 400, "invalid_input");
    }
    for quantity in [
        json!(-1),
        json!(ecommerce::services::MAX_STOCK + 1),
        json!(i64::MAX),
        json!(1e30),
        json!(2.5),
    ] {
        let stock = api
            .patch(
                "/inventory/PRD-001",
                &a,
                &json!({ "quantity": quantity, "warehouseCode": "WH-1" }),
            )
            .await;
        assert_error(&stock, 400, "invalid_input");
    }

    // A product priced 7.9e28 written before prices were bounded: every order
    // of it is a 400 (its totals do not fit), with nothing written.
    let legacy = cqrs_core::CommandInput::new("TENANT#shop-a", "PRODUCT#PRD-052")
        .name("Legacy")
        .attributes(json!({
            "categoryCode": "C", "sku": "S", "price": 7.9e28, "currency": "USD",
            "description": "", "images": [], "isActive": true
        }));
    CommandService::publish_sync(&api.shop.engine, legacy, &ctx("shop-a"))
        .await
        .expect("the legacy product is written");
    for quantity in [1, 2, 10_000] {
        let resp = api
            .post("/orders", &a, &order_body("PRD-052", quantity, 7.9e28))
            .await;
        assert_error(&resp, 400, "invalid_input");
    }
    let mixed = lines_body(&[("PRD-051", 10_000, 1_000_000.0), ("PRD-052", 1, 7.9e28)]);
    assert_error(&api.post("/orders", &a, &mixed).await, 400, "invalid_input");

    api.shop.engine.wait_idle().await;
    assert_eq!(assert_list(&api.get("/orders", &a).await.body).len(), 0);
    assert_eq!(api.stock(&a, "PRD-001").await, (100, 0));
    // The bounded worst case adds up, and no order number was used by the refusals.
    api.patch(
        "/inventory/PRD-051",
        &a,
        &json!({ "quantity": 1_000_000, "warehouseCode": "WH-1" }),
    )
    .await;
    let lines: Vec<(&str, u32, f64)> = vec![("PRD-051", 10_000, 1_000_000.0); 100];
    let biggest = api.post("/orders", &a, &lines_body(&lines)).await;
    assert_eq!(biggest.status, 201, "{:?}", biggest.body);
    assert_eq!(biggest.body["code"], "ORD-000001");
    assert_eq!(f64_at(&biggest.body, "/attributes/total"), 1.1e12);
}

/// An order line's name is the catalogue's: a client's is ignored (it may
/// leave it out). Control characters in free text are a 400, with nothing
/// written.
async fn order_lines(api: &Api) {
    let a = api.token("shop-a");
    let mut lying = order_body("PRD-001", 1, 29.99);
    lying["items"][0]["name"] = json!("Free Laptop");
    let placed = api.post("/orders", &a, &lying).await;
    assert_eq!(placed.status, 201, "{:?}", placed.body);
    assert_eq!(placed.body["attributes"]["items"][0]["name"], "Wireless Mouse");
    let code = placed.body["code"].as_str().expect("a code").to_owned();
    let stored = api.settled(&a, &code).await;
    assert_eq!(stored["attributes"]["items"][0]["name"], "Wireless Mouse");
    let mut nameless = lines_body(&[("PRD-001", 1, 29.99), ("PRD-002", 1, 89.5)]);
    for item in nameless["items"].as_array_mut().expect("items") {
        item.as_object_mut().expect("a line").remove("name");
    }
    let placed = api.post("/orders", &a, &nameless).await;
    assert_eq!(placed.status, 201, "{:?}", placed.body);
    assert_eq!(placed.body["attributes"]["items"][0]["name"], "Wireless Mouse");
    assert_eq!(
        placed.body["attributes"]["items"][1]["name"],
        "Mechanical Keyboard"
    );
    api.shop.engine.wait_idle().await;
    let orders_before = api.all_orders(&a, "").await.len();
    let stock_before = api.stock(&a, "PRD-001").await;

    let controls = [
        "\u{0}",
        "a\nb",
        "\r",
        "\t",
        "\u{1b}[31mred",
        "\u{7f}",
        "\u{85}",
        "x\u{9f}",
    ];
    for control in controls {
        for pointer in [
            "/customerId",
            "/paymentMethod",
            "/shippingAddress/street",
            "/shippingAddress/city",
            "/shippingAddress/postalCode",
            "/shippingAddress/country",
        ] {
            let mut body = order_body("PRD-001", 1, 29.99);
            *body.pointer_mut(pointer).expect("a field") = json!(format!("ok {control}"));
            let resp = api.post("/orders", &a, &body).await;
            assert_eq!(resp.status, 400, "{pointer} {control:?}: {:?}", resp.body);
            assert_error(&resp, 400, "invalid_input");
        }
        for field in ["name", "categoryCode", "sku", "currency", "description"] {
            let mut body = product_body("PRD-060", 1.0, true);
            body[field] = json!(format!("ok {control}"));
            let resp = api.post("/products", &a, &body).await;
            assert_eq!(resp.status, 400, "{field} {control:?}: {:?}", resp.body);
            assert_error(&resp, 400, "invalid_input");
        }
        let mut body = product_body("PRD-060", 1.0, true);
        body["images"] = json!([format!("https://img/{control}.png")]);
        assert_error(&api.post("/products", &a, &body).await, 400, "invalid_input");
        let stock = api
            .patch(
                "/inventory/PRD-001",
                &a,
                &json!({ "quantity": 7, "warehouseCode": format!("WH {control}") }),
            )
            .await;
        assert_error(&stock, 400, "invalid_input");
    }
    // Text that is merely not ASCII is fine.
    let mut body = product_body("PRD-061", 1.0, true);
    body["name"] = json!("Souris sans fil — ワイヤレスマウス");
    body["description"] = json!("");
    let created = api.post("/products", &a, &body).await;
    assert_eq!(created.status, 201, "{:?}", created.body);

    api.shop.engine.wait_idle().await;
    assert_eq!(api.all_orders(&a, "").await.len(), orders_before);
    assert_eq!(api.stock(&a, "PRD-001").await, stock_before);
    assert_eq!(api.get("/products/PRD-060", &a).await.status, 404);
}

/// Every route × every role: `staff`, a `customer`, another customer of the
/// same shop, and a token without either role. Refusals write nothing.
async fn roles(api: &Api) {
    let ttl = Duration::from_secs(3600);
    let staff = api.auth.token("shop-a", "staff-1", &["staff"], ttl);
    let customer = api.auth.token("shop-a", "cust-1", &["customer"], ttl);
    let other = api.auth.token("shop-a", "cust-2", &["customer"], ttl);
    let nobody = api.auth.token("shop-a", "nobody", &["user"], ttl);

    // The customer's orders: X (to cancel), Y (for staff to move).
    let x = api.place(&customer, "PRD-001", 1, 29.99).await;
    let y = api.place(&customer, "PRD-001", 1, 29.99).await;
    for code in [&x, &y] {
        let order = api.settled(&staff, code).await;
        assert_eq!(order["attributes"]["userId"], "cust-1", "{order}");
        assert_eq!(order["attributes"]["reservation"], "reserved", "{order}");
    }
    let order = order_body("PRD-001", 1, 29.99);
    let cancel = json!({ "status": "cancelled" });
    let confirm = json!({ "status": "confirmed" });
    let stock = |quantity: i64| json!({ "quantity": quantity, "warehouseCode": "WH-1" });
    let x_path = format!("/orders/{x}");
    let y_path = format!("/orders/{y}");
    let x_status = format!("{x_path}/status");
    let y_status = format!("{y_path}/status");
    // (who, token, method, path, body, status): in this order.
    type Case<'a> = (&'a str, &'a str, Method, &'a str, Option<Value>, u16);
    let cases: Vec<Case> = vec![
        // POST /orders
        ("staff", &staff, Method::POST, "/orders", Some(order.clone()), 201),
        (
            "customer",
            &customer,
            Method::POST,
            "/orders",
            Some(order.clone()),
            201,
        ),
        ("other", &other, Method::POST, "/orders", Some(order.clone()), 201),
        (
            "nobody",
            &nobody,
            Method::POST,
            "/orders",
            Some(order.clone()),
            403,
        ),
        // GET /orders
        ("staff", &staff, Method::GET, "/orders", None, 200),
        ("customer", &customer, Method::GET, "/orders", None, 200),
        ("other", &other, Method::GET, "/orders", None, 200),
        ("nobody", &nobody, Method::GET, "/orders", None, 403),
        // GET /orders/{code}
        ("staff", &staff, Method::GET, &x_path, None, 200),
        ("customer", &customer, Method::GET, &x_path, None, 200),
        ("other", &other, Method::GET, &x_path, None, 404),
        ("nobody", &nobody, Method::GET, &x_path, None, 403),
        // PATCH /orders/{code}/status
        (
            "nobody",
            &nobody,
            Method::PATCH,
            &x_status,
            Some(cancel.clone()),
            403,
        ),
        (
            "other",
            &other,
            Method::PATCH,
            &x_status,
            Some(cancel.clone()),
            404,
        ),
        (
            "customer",
            &customer,
            Method::PATCH,
            &y_status,
            Some(confirm.clone()),
            403,
        ),
        (
            "customer",
            &customer,
            Method::PATCH,
            &x_status,
            Some(cancel.clone()),
            200,
        ),
        (
            "staff",
            &staff,
            Method::PATCH,
            &y_status,
            Some(confirm.clone()),
            200,
        ),
        // POST /products
        (
            "customer",
            &customer,
            Method::POST,
            "/products",
            Some(product_body("PRD-071", 1.0, true)),
            403,
        ),
        (
            "other",
            &other,
            Method::POST,
            "/products",
            Some(product_body("PRD-072", 1.0, true)),
            403,
        ),
        (
            "nobody",
            &nobody,
            Method::POST,
            "/products",
            Some(product_body("PRD-073", 1.0, true)),
            403,
        ),
        (
            "staff",
            &staff,
            Method::POST,
            "/products",
            Some(product_body("PRD-070", 1.0, true)),
            201,
        ),
        // GET /products, GET /products/{code}
        ("staff", &staff, Method::GET, "/products", None, 200),
        ("customer", &customer, Method::GET, "/products", None, 200),
        ("other", &other, Method::GET, "/products", None, 200),
        ("nobody", &nobody, Method::GET, "/products", None, 403),
        ("staff", &staff, Method::GET, "/products/PRD-001", None, 200),
        ("customer", &customer, Method::GET, "/products/PRD-001", None, 200),
        ("other", &other, Method::GET, "/products/PRD-001", None, 200),
        ("nobody", &nobody, Method::GET, "/products/PRD-001", None, 403),
        // PATCH /inventory/{productCode}
        (
            "customer",
            &customer,
            Method::PATCH,
            "/inventory/PRD-002",
            Some(stock(5)),
            403,
        ),
        (
            "other",
            &other,
            Method::PATCH,
            "/inventory/PRD-002",
            Some(stock(5)),
            403,
        ),
        (
            "nobody",
            &nobody,
            Method::PATCH,
            "/inventory/PRD-002",
            Some(stock(5)),
            403,
        ),
        (
            "staff",
            &staff,
            Method::PATCH,
            "/inventory/PRD-002",
            Some(stock(120)),
            200,
        ),
        // GET /inventory/{productCode}
        ("staff", &staff, Method::GET, "/inventory/PRD-002", None, 200),
        (
            "customer",
            &customer,
            Method::GET,
            "/inventory/PRD-002",
            None,
            200,
        ),
        ("other", &other, Method::GET, "/inventory/PRD-002", None, 200),
        ("nobody", &nobody, Method::GET, "/inventory/PRD-002", None, 403),
    ];
    for (who, token, method, path, body, status) in cases {
        let body = body.map(|b| b.to_string().into_bytes());
        let resp = api.send(method.clone(), path, Some(token), body).await;
        assert_eq!(resp.status, status, "{who}: {method} {path}: {:?}", resp.body);
        match status {
            403 => assert_error(&resp, 403, "forbidden"),
            404 => assert_error(&resp, 404, "not_found"),
            _ => {}
        }
    }
    // Every route of the API was covered, for every role.
    api.shop.engine.wait_idle().await;

    // Listing: staff see every order, a customer their own only.
    let owners = |items: &[Value]| -> BTreeSet<String> {
        items
            .iter()
            .map(|o| o["attributes"]["userId"].as_str().expect("a userId").to_owned())
            .collect()
    };
    let all = api.all_orders(&staff, "").await;
    assert_eq!(all.len(), 5, "x, y and one per allowed role");
    assert_eq!(
        owners(&all),
        BTreeSet::from(["cust-1".to_owned(), "cust-2".to_owned(), "staff-1".to_owned()])
    );
    let mine = api.all_orders(&customer, "").await;
    assert_eq!(mine.len(), 3, "{mine:?}");
    assert_eq!(owners(&mine), BTreeSet::from(["cust-1".to_owned()]));
    let theirs = api.all_orders(&other, "").await;
    assert_eq!(theirs.len(), 1, "{theirs:?}");
    assert_eq!(owners(&theirs), BTreeSet::from(["cust-2".to_owned()]));
    let cancelled = api.all_orders(&customer, "&status=cancelled").await;
    assert_eq!(codes(&cancelled), vec![x.clone()]);
    assert!(api.all_orders(&other, "&status=cancelled").await.is_empty());

    // What the refusals did not write.
    for code in ["PRD-071", "PRD-072", "PRD-073"] {
        assert_eq!(api.get(&format!("/products/{code}"), &staff).await.status, 404);
    }
    assert_eq!(api.stock(&staff, "PRD-002").await, (120, 0));
    let y_order = api.get(&y_path, &staff).await;
    assert_eq!(y_order.body["attributes"]["status"], "confirmed");
    assert_eq!(y_order.body["version"], 3);
    let x_order = api.get(&x_path, &staff).await;
    assert_eq!(x_order.body["attributes"]["status"], "cancelled");
}

/// No token, a garbage one, a forged one, an expired one: 401 JSON everywhere.
async fn authentication(api: &Api) {
    let a = api.token("shop-a");
    let zero_ttl = api.auth.token("shop-a", "user-1", ROLES, Duration::ZERO);
    let issued = Instant::now();
    let now = chrono::Utc::now().timestamp();
    let crafted = |exp: i64, secret: &[u8]| {
        let claims = json!({
            "sub": "user-1", "custom:tenant": "shop-a", "custom:roles": ROLES, "iat": exp - 3600, "exp": exp
        });
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret),
        )
        .expect("encoded")
    };
    // The crafted token is accepted while it is valid ...
    let valid = crafted(now + 3600, SECRET);
    assert_eq!(
        api.get("/orders", &valid).await.status,
        200,
        "a hand-made valid token is accepted"
    );

    let other_secret = Auth::new(b"another-secret-of-at-least-32-bytes").token(
        "shop-a",
        "user-1",
        ROLES,
        Duration::from_secs(3600),
    );
    let expired = crafted(now - 3600, SECRET);
    let just_expired = crafted(now - 120, SECRET);
    // shop-b's token with its tenant rewritten to shop-a, signature kept.
    let tampered = {
        let b = api.token("shop-b");
        let parts: Vec<&str> = b.split('.').collect();
        assert_eq!(parts.len(), 3, "a JWT");
        let mut claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("base64url"))
            .expect("JSON claims");
        assert_eq!(claims["custom:tenant"], "shop-b");
        claims["custom:tenant"] = json!("shop-a");
        format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            parts[2]
        )
    };
    // An unsigned token (alg none).
    let unsigned = {
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
        let claims = URL_SAFE_NO_PAD.encode(
            json!({ "sub": "user-1", "custom:tenant": "shop-a", "custom:roles": ROLES, "exp": now + 3600 })
                .to_string(),
        );
        format!("{header}.{claims}.")
    };
    // Tokens of the issue: never expiring, issued a year ahead; and the other
    // bounds: over 24 h, no exp, valid from the future. All correctly signed.
    let signed = |claims: Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET),
        )
        .expect("encoded")
    };
    let claims = |extra: Value| {
        let mut c = json!({ "sub": "user-1", "custom:tenant": "shop-a", "custom:roles": ROLES });
        for (k, v) in extra.as_object().expect("claims") {
            c[k] = v.clone();
        }
        signed(c)
    };
    let year = 365 * 24 * 3600;
    let never_expires = claims(json!({ "iat": now, "exp": u64::MAX }));
    let never_expires_no_iat = claims(json!({ "exp": u64::MAX }));
    let issued_next_year = claims(json!({ "iat": now + year, "exp": now + year + 3600 }));
    let lives_25_hours = claims(json!({ "iat": now, "exp": now + 25 * 3600 }));
    let lives_48_hours_no_iat = claims(json!({ "exp": now + 48 * 3600 }));
    let no_exp = claims(json!({ "iat": now }));
    let not_before_tomorrow = claims(json!({ "iat": now, "nbf": now + 24 * 3600, "exp": now + 3600 }));
    let issued_in_two_minutes = claims(json!({ "iat": now + 120, "exp": now + 3600 }));
    // A token of ttl 0 is expired two seconds later (no leeway).
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(issued.elapsed())).await;
    let bad_headers = [
        ("ttl 0, two seconds later", Some(format!("Bearer {zero_ttl}"))),
        ("no header", None),
        ("empty bearer", Some("Bearer ".to_owned())),
        ("garbage", Some("Bearer garbage".to_owned())),
        ("another secret", Some(format!("Bearer {other_secret}"))),
        ("expired an hour ago", Some(format!("Bearer {expired}"))),
        ("expired two minutes ago", Some(format!("Bearer {just_expired}"))),
        ("tampered tenant", Some(format!("Bearer {tampered}"))),
        ("alg none", Some(format!("Bearer {unsigned}"))),
        ("not bearer", Some(format!("Basic {a}"))),
        ("bare token", Some(a.clone())),
        ("exp u64::MAX", Some(format!("Bearer {never_expires}"))),
        (
            "exp u64::MAX, no iat",
            Some(format!("Bearer {never_expires_no_iat}")),
        ),
        ("iat a year ahead", Some(format!("Bearer {issued_next_year}"))),
        ("lifetime 25 h", Some(format!("Bearer {lives_25_hours}"))),
        (
            "48 h ahead, no iat",
            Some(format!("Bearer {lives_48_hours_no_iat}")),
        ),
        ("no exp", Some(format!("Bearer {no_exp}"))),
        ("nbf tomorrow", Some(format!("Bearer {not_before_tomorrow}"))),
        (
            "iat in two minutes",
            Some(format!("Bearer {issued_in_two_minutes}")),
        ),
    ];
    let order = order_body("PRD-001", 1, 29.99).to_string();
    let requests = [
        (Method::POST, "/orders", Some(order.clone())),
        (Method::GET, "/orders", None),
        (Method::GET, "/orders/ORD-000001", None),
        (
            Method::PATCH,
            "/orders/ORD-000001/status",
            Some(json!({ "status": "cancelled" }).to_string()),
        ),
        (
            Method::POST,
            "/products",
            Some(product_body("PRD-050", 1.0, true).to_string()),
        ),
        (Method::GET, "/products", None),
        (Method::GET, "/products/PRD-001", None),
        (
            Method::PATCH,
            "/inventory/PRD-001",
            Some(json!({ "quantity": 0, "warehouseCode": "WH-1" }).to_string()),
        ),
        (Method::GET, "/inventory/PRD-001", None),
    ];
    for (what, header) in &bad_headers {
        for (method, path, body) in &requests {
            let mut request = api.client.request(method.clone(), format!("{}{path}", api.base));
            if let Some(header) = header {
                request = request.header("authorization", header);
            }
            if let Some(body) = body {
                request = request
                    .header("content-type", "application/json")
                    .body(body.clone());
            }
            let response = request.send().await.expect("answered");
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let content_type = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let text = response.text().await.expect("a body");
            let body: Value = serde_json::from_str(&text)
                .unwrap_or_else(|_| panic!("{what} {method} {path}: not JSON: {text}"));
            assert_eq!(status, 401, "{what}: {method} {path} -> {status} {body}");
            assert_error(
                &Resp {
                    status,
                    content_type,
                    headers,
                    body,
                },
                401,
                "unauthorized",
            );
        }
    }
    // Nothing was written by any of them.
    api.shop.engine.wait_idle().await;
    assert_eq!(assert_list(&api.get("/orders", &a).await.body).len(), 0);
    assert_eq!(api.get("/products/PRD-050", &a).await.status, 404);
    assert_eq!(api.stock(&a, "PRD-001").await, (100, 0));
}

/// shop-b cannot see or touch shop-a's orders, products and stock.
async fn tenant_isolation(api: &Api) {
    let a = api.token("shop-a");
    let b = api.token("shop-b");
    let first = api.place(&a, "PRD-001", 2, 29.99).await;
    let second = api.place(&a, "PRD-002", 1, 89.5).await;
    assert_eq!((first.as_str(), second.as_str()), ("ORD-000001", "ORD-000002"));
    api.settled(&a, &second).await;
    let product = api
        .post("/products", &a, &product_body("PRD-100", 3.0, true))
        .await;
    assert_eq!(product.status, 201, "{:?}", product.body);
    let stocked = api
        .patch(
            "/inventory/PRD-100",
            &a,
            &json!({ "quantity": 30, "warehouseCode": "WH-A" }),
        )
        .await;
    assert_eq!(stocked.status, 200, "{:?}", stocked.body);

    // Reads of shop-a's things with shop-b's token: 404, and lists of shop-b only.
    assert_error(&api.get(&format!("/orders/{second}"), &b).await, 404, "not_found");
    assert_error(&api.get("/products/PRD-100", &b).await, 404, "not_found");
    assert_error(&api.get("/inventory/PRD-100", &b).await, 404, "not_found");
    assert_eq!(assert_list(&api.get("/orders", &b).await.body).len(), 0);
    let b_products = api.get("/products", &b).await;
    assert_eq!(
        codes(assert_list(&b_products.body)),
        ["PRD-001", "PRD-002", "PRD-003"]
    );
    for item in assert_list(&b_products.body) {
        assert_eq!(item["pk"], "TENANT#shop-b");
    }

    // Writes: 404, and shop-a's data is unchanged.
    let before = api.get(&format!("/orders/{second}"), &a).await.body;
    let cancel = api
        .patch(
            &format!("/orders/{second}/status"),
            &b,
            &json!({ "status": "cancelled" }),
        )
        .await;
    assert_error(&cancel, 404, "not_found");
    let cancel_at_version = api
        .patch(
            &format!("/orders/{second}/status"),
            &b,
            &json!({ "status": "cancelled", "version": before["version"] }),
        )
        .await;
    assert_error(&cancel_at_version, 404, "not_found");
    let restock = api
        .patch(
            "/inventory/PRD-100",
            &b,
            &json!({ "quantity": 0, "warehouseCode": "WH-B" }),
        )
        .await;
    assert_error(&restock, 404, "not_found");
    assert_eq!(api.get(&format!("/orders/{second}"), &a).await.body, before);
    assert_eq!(api.stock(&a, "PRD-100").await, (30, 0));
    // Nor does a tenant named outside the token count.
    let smuggled = api
        .client
        .get(format!(
            "{}/orders/{second}?tenant=shop-a&tenantCode=shop-a",
            api.base
        ))
        .header("authorization", format!("Bearer {b}"))
        .header("x-tenant-code", "shop-a")
        .header("x-tenant", "shop-a")
        .send()
        .await
        .expect("answered");
    assert_eq!(smuggled.status().as_u16(), 404);

    // shop-b's orders are its own: its own numbering, stock and prices.
    let b_first = api.place(&b, "PRD-001", 5, 29.99).await;
    assert_eq!(b_first, "ORD-000001");
    api.settled(&b, &b_first).await;
    let b_order = api.get("/orders/ORD-000001", &b).await;
    assert_eq!(b_order.body["pk"], "TENANT#shop-b");
    assert_eq!(b_order.body["attributes"]["items"][0]["quantity"], 5);
    let a_order = api.get("/orders/ORD-000001", &a).await;
    assert_eq!(a_order.body["pk"], "TENANT#shop-a");
    assert_eq!(a_order.body["attributes"]["items"][0]["quantity"], 2);
    assert_eq!(api.stock(&b, "PRD-001").await, (100, 5));
    assert_eq!(api.stock(&a, "PRD-001").await, (100, 2));
    let b_orders = api.all_orders(&b, "").await;
    assert_eq!(codes(&b_orders), ["ORD-000001"]);
    assert!(b_orders.iter().all(|o| o["pk"] == "TENANT#shop-b"));
    let a_orders = api.all_orders(&a, "").await;
    assert_eq!(codes(&a_orders), ["ORD-000001", "ORD-000002"]);
    assert!(a_orders.iter().all(|o| o["pk"] == "TENANT#shop-a"));
    // shop-a's product does not exist in shop-b's catalogue.
    let foreign_product = api.post("/orders", &b, &order_body("PRD-100", 1, 3.0)).await;
    assert_error(&foreign_product, 422, "unprocessable");
}

/// Malformed, mistyped and oversized bodies.
async fn bad_bodies(api: &Api) {
    let a = api.token("shop-a");
    let raw = |path: &'static str, method: Method, body: &str| {
        let token = a.clone();
        let body = body.as_bytes().to_vec();
        async move { api.send(method, path, Some(&token), Some(body)).await }
    };
    for (method, path) in [
        (Method::POST, "/orders"),
        (Method::PATCH, "/orders/ORD-000001/status"),
        (Method::POST, "/products"),
        (Method::PATCH, "/inventory/PRD-001"),
    ] {
        for body in ["{not json", "", "[]", "null", "{\"items\": [}"] {
            let resp = raw(path, method.clone(), body).await;
            assert_error(&resp, 400, "invalid_input");
        }
    }
    let mut two = order_body("PRD-001", 1, 29.99);
    two["items"][0]["quantity"] = json!("two");
    assert_error(&api.post("/orders", &a, &two).await, 400, "invalid_input");
    let mut negative = order_body("PRD-001", 1, 29.99);
    negative["items"][0]["quantity"] = json!(-1);
    assert_error(&api.post("/orders", &a, &negative).await, 400, "invalid_input");
    let mut string_price = order_body("PRD-001", 1, 29.99);
    string_price["items"][0]["price"] = json!("29.99");
    assert_error(
        &api.post("/orders", &a, &string_price).await,
        400,
        "invalid_input",
    );
    let bad_status = api
        .patch(
            "/orders/ORD-000001/status",
            &a,
            &json!({ "status": "teleported" }),
        )
        .await;
    assert_error(&bad_status, 400, "invalid_input");
    let mut inactive_as_text = product_body("PRD-020", 1.0, true);
    inactive_as_text["isActive"] = json!("yes");
    assert_error(
        &api.post("/products", &a, &inactive_as_text).await,
        400,
        "invalid_input",
    );
    let text_quantity = api
        .patch(
            "/inventory/PRD-001",
            &a,
            &json!({ "quantity": "lots", "warehouseCode": "WH-1" }),
        )
        .await;
    assert_error(&text_quantity, 400, "invalid_input");

    // Over 64 KiB: 413 JSON, whatever the endpoint.
    let mut huge = order_body("PRD-001", 1, 29.99);
    huge["customerId"] = json!("x".repeat(70 * 1024));
    assert_error(&api.post("/orders", &a, &huge).await, 413, "too_large");
    let mut huge_product = product_body("PRD-021", 1.0, true);
    huge_product["description"] = json!("x".repeat(65 * 1024));
    assert_error(&api.post("/products", &a, &huge_product).await, 413, "too_large");
    // Just under the limit is read (and refused by validation, not by size).
    let mut big = order_body("PRD-001", 1, 29.99);
    big["customerId"] = json!("x".repeat(60 * 1024));
    assert_error(&api.post("/orders", &a, &big).await, 400, "invalid_input");

    api.shop.engine.wait_idle().await;
    assert_eq!(assert_list(&api.get("/orders", &a).await.body).len(), 0);
    assert_eq!(api.get("/products/PRD-020", &a).await.status, 404);
    assert_eq!(api.get("/products/PRD-021", &a).await.status, 404);
    assert_eq!(api.stock(&a, "PRD-001").await, (100, 0));
}

/// Every order's reservation in `tenant`: order code → state.
async fn reservations(api: &Api, tenant: &str) -> std::collections::BTreeMap<String, String> {
    let mut held = std::collections::BTreeMap::new();
    let mut cursor = None;
    loop {
        let query = cqrs_core::ListQuery::new()
            .sk(cqrs_core::SkCondition::BeginsWith("RESERVATION#".into()))
            .limit(cqrs_core::MAX_LIMIT)
            .after(cursor);
        let page =
            DataService::list_items(&api.shop.engine, &format!("TENANT#{tenant}"), query, &ctx(tenant))
                .await
                .expect("listed");
        for item in page.items {
            let state = item.attributes["state"].as_str().expect("a state").to_owned();
            held.insert(item.code.to_string(), state);
        }
        match page.cursor {
            Some(next) => cursor = Some(next),
            None => return held,
        }
    }
}

/// 50 concurrent orders of one unit of a product with 10 in stock: exactly 10
/// reserved, never negative availability, never oversold.
async fn concurrent_orders(api: &Api, backend: Backend) {
    let a = api.token("shop-a");
    assert_eq!(api.stock(&a, "PRD-003").await, (10, 0));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Watches the stock while the orders come in.
    let sampler = {
        let done = done.clone();
        let client = api.client.clone();
        let url = format!("{}/inventory/PRD-003", api.base);
        let token = a.clone();
        tokio::spawn(async move {
            let mut samples = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let record: Value = client
                    .get(&url)
                    .header("authorization", format!("Bearer {token}"))
                    .send()
                    .await
                    .expect("answered")
                    .json()
                    .await
                    .expect("JSON");
                let (quantity, reserved) = (
                    record["attributes"]["quantity"].as_i64().expect("quantity"),
                    record["attributes"]["reservedQuantity"]
                        .as_i64()
                        .expect("reserved"),
                );
                assert_eq!(quantity, 10, "{record}");
                assert!(
                    (0..=10).contains(&reserved),
                    "availability went negative: {record}"
                );
                samples += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            samples
        })
    };

    let started = Instant::now();
    let posts = (0..50).map(|_| {
        let client = api.client.clone();
        let url = format!("{}/orders", api.base);
        let token = a.clone();
        tokio::spawn(async move {
            let response = client
                .post(url)
                .header("authorization", format!("Bearer {token}"))
                .json(&order_body("PRD-003", 1, 9.99))
                .send()
                .await
                .expect("answered");
            let status = response.status().as_u16();
            let body: Value = response.json().await.expect("JSON");
            assert_eq!(status, 201, "{body}");
            body["code"].as_str().expect("a code").to_owned()
        })
    });
    let mut placed = Vec::new();
    for post in futures::future::join_all(posts).await {
        placed.push(post.expect("the request task did not panic"));
    }
    let accepted = started.elapsed();
    let mut settled = Vec::new();
    for code in &placed {
        settled.push(api.settled(&a, code).await);
    }
    let elapsed = started.elapsed();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let samples = sampler.await.expect("the sampler saw no negative availability");
    eprintln!(
        "[{backend:?}] 50 concurrent orders on 10 units: all accepted in {accepted:?}, \
         all reservations settled in {elapsed:?} ({samples} stock samples)"
    );

    // Every order has its own number.
    let numbers: BTreeSet<&String> = placed.iter().collect();
    assert_eq!(numbers.len(), 50, "{placed:?}");
    let expected: BTreeSet<String> = (1..=50).map(|n| format!("ORD-{n:06}")).collect();
    assert_eq!(numbers.into_iter().cloned().collect::<BTreeSet<_>>(), expected);

    let by_state = |state: &str| -> BTreeSet<String> {
        settled
            .iter()
            .filter(|o| o["attributes"]["reservation"] == state)
            .map(|o| o["code"].as_str().expect("a code").to_owned())
            .collect()
    };
    let reserved = by_state("reserved");
    let failed = by_state("failed");
    assert_eq!(reserved.len(), 10, "exactly the stock is reserved: {reserved:?}");
    assert_eq!(failed.len(), 40, "{failed:?}");

    let record = api.get("/inventory/PRD-003", &a).await.body;
    assert_eq!(record["attributes"]["quantity"], 10);
    assert_eq!(record["attributes"]["reservedQuantity"], 10);
    // Counters only: the record does not grow with the orders.
    let fields: BTreeSet<&str> = record["attributes"]
        .as_object()
        .expect("attributes")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        fields,
        BTreeSet::from([
            "productCode",
            "quantity",
            "reservedQuantity",
            "warehouseCode",
            "lastRestockedAt"
        ]),
        "{record}"
    );
    // Reservations share commits: at most one version per reservation,
    // after the one that set the stock.
    let version = record["version"].as_u64().expect("a version");
    assert!((2..=11).contains(&version), "{record}");
    // Each order's reservation is an entity of its own, decided once.
    let held = reservations(api, "shop-a").await;
    let in_state = |state: &str| -> BTreeSet<String> {
        held.iter()
            .filter(|(_, s)| s.as_str() == state)
            .map(|(code, _)| code.clone())
            .collect()
    };
    assert_eq!(
        in_state("reserved"),
        reserved,
        "the reserved orders hold the stock"
    );
    assert_eq!(in_state("failed"), failed, "the refusals are recorded");
    // Never oversold in any version.
    let key = EntityKey::new("TENANT#shop-a", "INVENTORY#PRD-003");
    let history = DataService::list_history(&api.shop.engine, &key, &ctx("shop-a"))
        .await
        .expect("history");
    assert_eq!(history.len() as u64, version - 1);
    let mut before = 0;
    for (i, version) in history.iter().enumerate() {
        assert_eq!(version.version, i as u64 + 1);
        let reserved = version.attributes["reservedQuantity"].as_i64().expect("reserved");
        assert!(reserved >= before, "reservations only add up here");
        assert!(reserved <= version.attributes["quantity"].as_i64().expect("quantity"));
        before = reserved;
    }

    // A failed order cannot be confirmed; a reserved one can.
    let loser = failed.iter().next().expect("a failed order");
    assert_error(&api.move_to(&a, loser, "confirmed").await, 409, "conflict");
    let winner = reserved.iter().next().expect("a reserved order");
    assert_eq!(api.move_to(&a, winner, "confirmed").await.status, 200);
    let list = api.all_orders(&a, "").await;
    assert_eq!(list.len(), 50);
    assert_eq!(api.stock(&a, "PRD-003").await, (10, 10));
    let alerts = api
        .shop
        .notifier
        .sent()
        .into_iter()
        .filter(|n| n.kind == NotificationKind::InventoryReservationFailed)
        .count();
    assert_eq!(alerts, 40);
    let failures = CommandService::list_failures(&api.shop.engine, &ctx("shop-a"))
        .await
        .expect("listed");
    assert!(
        failures.is_empty(),
        "no handler gave up under contention: {failures:?}"
    );
}

/// Orders cancelled as soon as they exist, racing their own reservation: in
/// every interleaving, what was reserved is given back.
async fn cancel_races_reservation(api: &Api) {
    let a = api.token("shop-a");
    let started = Instant::now();
    let tasks = (0..20).map(|_| {
        let client = api.client.clone();
        let base = api.base.clone();
        let token = a.clone();
        tokio::spawn(async move {
            let created = client
                .post(format!("{base}/orders"))
                .bearer_auth(&token)
                .json(&order_body("PRD-001", 3, 29.99))
                .send()
                .await
                .expect("answered");
            assert_eq!(created.status().as_u16(), 201);
            let code = created.json::<Value>().await.expect("JSON")["code"]
                .as_str()
                .expect("a code")
                .to_owned();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let cancel = client
                    .patch(format!("{base}/orders/{code}/status"))
                    .bearer_auth(&token)
                    .json(&json!({ "status": "cancelled" }))
                    .send()
                    .await
                    .expect("answered");
                let status = cancel.status().as_u16();
                let body: Value = cancel.json().await.expect("JSON");
                match status {
                    200 => return (code, body["version"].as_u64().expect("a version")),
                    // Not applied yet: the data item does not exist.
                    404 => {}
                    _ => panic!("cancelling {code}: {status} {body}"),
                }
                assert!(Instant::now() < deadline, "{code} never became cancellable");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    });
    let mut cancelled = Vec::new();
    for task in futures::future::join_all(tasks).await {
        cancelled.push(task.expect("the task did not panic"));
    }
    api.shop.engine.wait_idle().await;
    let before_reservation = cancelled.iter().filter(|(_, version)| *version == 2).count();
    eprintln!(
        "cancel races reservation: {before_reservation} of 20 cancelled before their reservation was recorded, \
         {:?}",
        started.elapsed()
    );
    for (code, _) in &cancelled {
        let order = api.get(&format!("/orders/{code}"), &a).await.body;
        assert_eq!(order["attributes"]["status"], "cancelled", "{order}");
    }
    let record = api.get("/inventory/PRD-001", &a).await.body;
    assert_eq!(record["attributes"]["quantity"], 100, "{record}");
    assert_eq!(
        record["attributes"]["reservedQuantity"], 0,
        "everything reserved was released: {record}"
    );
    let held = reservations(api, "shop-a").await;
    assert!(
        held.values().all(|state| state != "reserved"),
        "no reservation holds stock: {held:?}"
    );
    let failures = CommandService::list_failures(&api.shop.engine, &ctx("shop-a"))
        .await
        .expect("listed");
    assert!(failures.is_empty(), "{failures:?}");
}

/// A redelivered event changes the stock once.
async fn redelivery(api: &Api) {
    let a = api.token("shop-a");
    let ctx = ctx("shop-a");
    let engine = &api.shop.engine;
    let code = api.place(&a, "PRD-001", 2, 29.99).await;
    let order = api.settled(&a, &code).await;
    assert_eq!(order["attributes"]["reservation"], "reserved");
    let key = EntityKey::new("TENANT#shop-a", format!("ORDER#{code}"));
    let inventory_key = EntityKey::new("TENANT#shop-a", "INVENTORY#PRD-001");
    let inventory = || async {
        let item = DataService::get_item(engine, &inventory_key, &ctx)
            .await
            .expect("read")
            .expect("exists");
        (
            item.version,
            item.attributes["quantity"].as_i64().unwrap(),
            item.attributes["reservedQuantity"].as_i64().unwrap(),
        )
    };
    let reserved_once = inventory().await;
    assert_eq!((reserved_once.1, reserved_once.2), (100, 2));

    let command = CommandService::get_command(engine, &key, 1, &ctx)
        .await
        .expect("read")
        .expect("version 1");
    assert_eq!(command.version, 1);
    // The pipeline asked again for version 1 (a stream redelivery).
    assert_eq!(
        engine.process(&key, 1).await.expect("processed"),
        CommandStatus::Finished
    );
    // Its handlers run again on purpose.
    assert_eq!(
        CommandService::reprocess(engine, &key, 1, &ctx)
            .await
            .expect("reprocessed"),
        CommandStatus::Finished
    );
    assert_eq!(
        CommandService::reprocess(engine, &key, 1, &ctx)
            .await
            .expect("reprocessed"),
        CommandStatus::Finished
    );
    // The handler itself receives the creation event twice more.
    let handler = OrderSyncHandler::new(engine.services());
    let history = DataService::list_history(engine, &key, &ctx)
        .await
        .expect("history");
    let version_1 = history
        .into_iter()
        .find(|h| h.version == 1)
        .expect("version 1 in the history");
    for attempt in 1..=2 {
        let event = DataSyncEvent {
            command: command.clone(),
            old: None,
            new: version_1.clone(),
            context: ctx.clone(),
            attempt,
        };
        handler.handle(&event).await.expect("handled");
    }
    engine.wait_idle().await;
    assert_eq!(inventory().await, reserved_once, "the stock changed once");
    let current = api.get(&format!("/orders/{code}"), &a).await.body;
    assert_eq!(
        current["version"], order["version"],
        "the order is not written again"
    );
    assert_eq!(current["attributes"]["reservation"], "reserved");

    // Cancelled: released once, however often the event comes.
    let cancelled = api.move_to(&a, &code, "cancelled").await;
    assert_eq!(cancelled.status, 200, "{:?}", cancelled.body);
    let cancelled_version = cancelled.body["version"].as_u64().expect("a version");
    engine.wait_idle().await;
    let released = inventory().await;
    assert_eq!((released.1, released.2), (100, 0));
    assert_eq!(released.0, reserved_once.0 + 1);
    assert_eq!(
        engine.process(&key, cancelled_version).await.expect("processed"),
        CommandStatus::Finished
    );
    for _ in 0..2 {
        assert_eq!(
            CommandService::reprocess(engine, &key, cancelled_version, &ctx)
                .await
                .expect("reprocessed"),
            CommandStatus::Finished
        );
    }
    // A late redelivery of the creation reserves nothing for a cancelled order.
    assert_eq!(
        CommandService::reprocess(engine, &key, 1, &ctx)
            .await
            .expect("reprocessed"),
        CommandStatus::Finished
    );
    engine.wait_idle().await;
    assert_eq!(inventory().await, released, "the stock changed once");

    // Shipped: taken out of stock once.
    let other = api.place(&a, "PRD-001", 3, 29.99).await;
    api.settled(&a, &other).await;
    for status in ["confirmed", "processing"] {
        assert_eq!(api.move_to(&a, &other, status).await.status, 200);
    }
    let shipped = api.move_to(&a, &other, "shipped").await;
    assert_eq!(shipped.status, 200, "{:?}", shipped.body);
    let shipped_version = shipped.body["version"].as_u64().expect("a version");
    let other_key = EntityKey::new("TENANT#shop-a", format!("ORDER#{other}"));
    let deducted = inventory().await;
    assert_eq!((deducted.1, deducted.2), (97, 0));
    // A sync publish records that its handlers completed: a processor seeing it does nothing.
    let command = CommandService::get_command(engine, &other_key, shipped_version, &ctx)
        .await
        .expect("read");
    assert_eq!(
        command.expect("the shipped version").status,
        CommandStatus::Finished
    );
    assert_eq!(
        engine
            .process(&other_key, shipped_version)
            .await
            .expect("processed"),
        CommandStatus::Finished
    );
    for _ in 0..2 {
        assert_eq!(
            CommandService::reprocess(engine, &other_key, shipped_version, &ctx)
                .await
                .expect("reprocessed"),
            CommandStatus::Finished
        );
    }
    assert_eq!(inventory().await, deducted, "the stock changed once");

    // The customer heard of each event once.
    let sent = api.shop.notifier.sent();
    let count = |code: &str, kind: NotificationKind| {
        sent.iter()
            .filter(|n| n.order_code == code && n.kind == kind)
            .count()
    };
    assert_eq!(count(&code, NotificationKind::OrderConfirmation), 1);
    assert_eq!(count(&code, NotificationKind::Cancellation), 1);
    assert_eq!(count(&other, NotificationKind::Shipping), 1);
    assert!(CommandService::list_failures(engine, &ctx)
        .await
        .expect("listed")
        .is_empty());
}

/// `POST /orders` with an `Idempotency-Key`: the same request again places
/// nothing and answers the first order, marked as a replay; the key with
/// another body, or from another user, is a 422 that writes nothing; a key
/// is per shop; invalid keys are 400s.
async fn idempotent_orders(api: &Api) {
    let a = api.token("shop-a");
    let b = api.token("shop-b");
    let body = order_body("PRD-001", 2, 29.99);

    let first = api.keyed(Method::POST, "/orders", &a, "order-key-1", &body).await;
    assert_eq!(first.status, 201, "{:?}", first.body);
    assert_eq!(first.body["code"], "ORD-000001");
    assert_eq!(
        first.header("idempotent-replayed"),
        None,
        "a first answer is no replay"
    );
    let again = api.keyed(Method::POST, "/orders", &a, "order-key-1", &body).await;
    assert_eq!(again.status, 201, "the first answer's status: {:?}", again.body);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(numbers_as_f64(&again.body), numbers_as_f64(&first.body));
    assert_eq!(again.header("location"), Some("/orders/ORD-000001"));
    // The same request written otherwise (its fields in another order, a
    // price spelt 29.990) is the same request.
    let respelt = br#"{"paymentMethod":"credit_card","shippingAddress":{"country":"JP","postalCode":"100-0001","city":"Tokyo","street":"123 Main St"},"items":[{"price":29.990,"quantity":2,"name":"Wireless Mouse","productCode":"PRD-001"}],"customerId":"CUST-001"}"#;
    let third = api
        .send_with(
            Method::POST,
            "/orders",
            Some(&a),
            Some(respelt.to_vec()),
            &[("idempotency-key", b"order-key-1")],
        )
        .await;
    assert_eq!(third.status, 201, "{:?}", third.body);
    assert_eq!(third.header("idempotent-replayed"), Some("true"));
    assert_eq!(third.body["code"], "ORD-000001");

    // One order; the retries took no number.
    api.shop.engine.wait_idle().await;
    assert_eq!(codes(&api.all_orders(&a, "").await), ["ORD-000001"]);
    assert_eq!(api.place(&a, "PRD-001", 1, 29.99).await, "ORD-000002");

    // The key with another body: 422, nothing written, no number taken.
    let other = api
        .keyed(
            Method::POST,
            "/orders",
            &a,
            "order-key-1",
            &order_body("PRD-001", 3, 29.99),
        )
        .await;
    assert_error(&other, 422, "idempotency_key_reused");
    assert!(
        !other.body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("ORD-"),
        "the message does not say which order holds the key: {:?}",
        other.body
    );
    // ... and from another user of the shop, with the same body.
    let someone_else = api
        .auth
        .token("shop-a", "user-2", &["customer"], Duration::from_secs(600));
    assert_error(
        &api.keyed(Method::POST, "/orders", &someone_else, "order-key-1", &body)
            .await,
        422,
        "idempotency_key_reused",
    );
    api.shop.engine.wait_idle().await;
    assert_eq!(codes(&api.all_orders(&a, "").await), ["ORD-000001", "ORD-000002"]);
    assert_eq!(api.place(&a, "PRD-001", 1, 29.99).await, "ORD-000003");

    // Keys are per shop: shop-b places its own order under shop-a's key.
    let in_b = api.keyed(Method::POST, "/orders", &b, "order-key-1", &body).await;
    assert_eq!(in_b.status, 201, "{:?}", in_b.body);
    assert_eq!(in_b.body["pk"], "TENANT#shop-b");
    assert_eq!(in_b.body["code"], "ORD-000001");
    assert_eq!(in_b.header("idempotent-replayed"), None);

    // Invalid keys: 400, nothing written.
    let too_long = "k".repeat(256);
    for bad in [
        too_long.as_bytes(),
        b"has space".as_slice(),
        "\u{e9}t\u{e9}".as_bytes(),
        b"".as_slice(),
        b"\xff\xfe".as_slice(),
    ] {
        let refused = api
            .send_with(
                Method::POST,
                "/orders",
                Some(&a),
                Some(body.to_string().into_bytes()),
                &[("idempotency-key", bad)],
            )
            .await;
        assert_error(&refused, 400, "invalid_input");
    }
    let twice = api
        .send_with(
            Method::POST,
            "/orders",
            Some(&a),
            Some(body.to_string().into_bytes()),
            &[("idempotency-key", b"k-1"), ("idempotency-key", b"k-2")],
        )
        .await;
    assert_error(&twice, 400, "invalid_input");

    // The same key sent by racing retries: one order, the same answer to all.
    let racing = (0..8).map(|_| {
        let client = api.client.clone();
        let url = format!("{}/orders", api.base);
        let token = a.clone();
        let body = order_body("PRD-002", 1, 89.5);
        tokio::spawn(async move {
            let response = client
                .post(url)
                .bearer_auth(token)
                .header("idempotency-key", "racing-key")
                .json(&body)
                .send()
                .await
                .expect("answered");
            let status = response.status().as_u16();
            let body: Value = response.json().await.expect("JSON");
            assert_eq!(status, 201, "{body}");
            body["code"].as_str().expect("a code").to_owned()
        })
    });
    let mut answered = BTreeSet::new();
    for code in futures::future::join_all(racing).await {
        answered.insert(code.expect("the request task did not panic"));
    }
    assert_eq!(answered.len(), 1, "every retry got the same order: {answered:?}");
    let raced = answered.into_iter().next().expect("an order");
    api.settled(&a, &raced).await;
    let orders = api.all_orders(&a, "").await;
    assert_eq!(orders.len(), 4, "{:?}", codes(&orders));
    assert!(codes(&orders).contains(&raced));

    // Every order reserved its stock once.
    api.settled(&a, "ORD-000001").await;
    assert_eq!(api.stock(&a, "PRD-001").await, (100, 4));
    assert_eq!(api.stock(&a, "PRD-002").await, (50, 1));
}

/// `PATCH /orders/{code}/status` with an `Idempotency-Key`: a retry answers
/// what the first request did and writes no new version, even though the
/// status machine would now refuse the move; the key with another body or
/// order is a 422.
async fn idempotent_status_changes(api: &Api) {
    let a = api.token("shop-a");
    let ctx = ctx("shop-a");
    let code = api.place(&a, "PRD-001", 2, 29.99).await;
    let other = api.place(&a, "PRD-002", 1, 89.5).await;
    api.settled(&a, &code).await;
    api.settled(&a, &other).await;
    let path = format!("/orders/{code}/status");
    let confirm = json!({ "status": "confirmed" });

    let first = api.keyed(Method::PATCH, &path, &a, "move-1", &confirm).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    assert_eq!(first.body["version"], 3);
    assert_eq!(first.body["attributes"]["status"], "confirmed");
    for _ in 0..2 {
        let again = api.keyed(Method::PATCH, &path, &a, "move-1", &confirm).await;
        assert_eq!(again.status, 200, "the first answer: {:?}", again.body);
        assert_eq!(numbers_as_f64(&again.body), numbers_as_f64(&first.body));
    }
    // Without the key, the same move is decided again, and refused.
    assert_error(
        &api.move_to(&a, &code, "confirmed").await,
        409,
        "invalid_transition",
    );
    // The key with another move, or on another order: 422.
    assert_error(
        &api.keyed(
            Method::PATCH,
            &path,
            &a,
            "move-1",
            &json!({ "status": "processing" }),
        )
        .await,
        422,
        "idempotency_key_reused",
    );
    assert_error(
        &api.keyed(
            Method::PATCH,
            &format!("/orders/{other}/status"),
            &a,
            "move-1",
            &confirm,
        )
        .await,
        422,
        "idempotency_key_reused",
    );
    assert_error(
        &api.keyed(
            Method::POST,
            "/orders",
            &a,
            "move-1",
            &order_body("PRD-001", 1, 29.99),
        )
        .await,
        422,
        "idempotency_key_reused",
    );
    // One new version only, for either order.
    let key = EntityKey::new("TENANT#shop-a", format!("ORDER#{code}"));
    let versions = CommandService::list_versions(&api.shop.engine, &key, &ctx)
        .await
        .expect("listed");
    assert_eq!(versions.len(), 3, "{versions:?}");
    let current = api.get(&format!("/orders/{code}"), &a).await;
    assert_eq!(current.body["version"], 3);
    assert_eq!(current.body["attributes"]["status"], "confirmed");
    let untouched = api.get(&format!("/orders/{other}"), &a).await;
    assert_eq!(untouched.body["version"], 2);
    assert_eq!(untouched.body["attributes"]["status"], "pending");

    // A key with the client's version: a retry answers the first result
    // even though that version is stale by then.
    let process = json!({ "status": "processing", "version": 3 });
    let processing = api.keyed(Method::PATCH, &path, &a, "move-2", &process).await;
    assert_eq!(processing.status, 200, "{:?}", processing.body);
    assert_eq!(processing.body["version"], 4);
    let retried = api.keyed(Method::PATCH, &path, &a, "move-2", &process).await;
    assert_eq!(retried.status, 200, "{:?}", retried.body);
    assert_eq!(numbers_as_f64(&retried.body), numbers_as_f64(&processing.body));
    // An invalid key: 400.
    let refused = api
        .send_with(
            Method::PATCH,
            &path,
            Some(&a),
            Some(confirm.to_string().into_bytes()),
            &[("idempotency-key", "k".repeat(256).as_bytes())],
        )
        .await;
    assert_error(&refused, 400, "invalid_input");
    api.shop.engine.wait_idle().await;
    assert_eq!(
        api.stock(&a, "PRD-001").await,
        (100, 2),
        "reserved once, still held"
    );
}

/// Ten concurrent `PATCH /orders/{code}/status` with one `Idempotency-Key`
/// (a client retrying before its first try was answered), on five orders:
/// every one answers the same 200 body — none the `invalid_transition` the
/// status machine gives the order a duplicate already moved — and one
/// version is written.
async fn racing_keyed_status_changes(api: &Api) {
    let a = api.token("shop-a");
    let ctx = ctx("shop-a");
    for round in 0..5 {
        let code = api.place(&a, "PRD-001", 1, 29.99).await;
        api.settled(&a, &code).await;
        let racing = (0..10).map(|_| {
            let client = api.client.clone();
            let url = format!("{}/orders/{code}/status", api.base);
            let token = a.clone();
            tokio::spawn(async move {
                let response = client
                    .patch(url)
                    .bearer_auth(token)
                    .header("idempotency-key", format!("confirm-{round}"))
                    .json(&json!({ "status": "confirmed" }))
                    .send()
                    .await
                    .expect("answered");
                let status = response.status().as_u16();
                let body: Value = response.json().await.expect("JSON");
                (status, numbers_as_f64(&body))
            })
        });
        let answers: Vec<(u16, Value)> = futures::future::join_all(racing)
            .await
            .into_iter()
            .map(|answer| answer.expect("the request task did not panic"))
            .collect();
        for (status, body) in &answers {
            assert_eq!(*status, 200, "round {round}: {body}");
            assert_eq!(
                body, &answers[0].1,
                "round {round}: every duplicate answers the same"
            );
        }
        assert_eq!(answers[0].1["version"], 3.0);
        assert_eq!(answers[0].1["attributes"]["status"], "confirmed");
        let key = EntityKey::new("TENANT#shop-a", format!("ORDER#{code}"));
        let versions = CommandService::list_versions(&api.shop.engine, &key, &ctx)
            .await
            .expect("listed");
        assert_eq!(versions.len(), 3, "round {round}: one move written");
    }
}

/// Read-your-writes: right after `POST /orders`, `GET /orders/{code}` shows
/// the order, before the pipeline applied it.
async fn read_your_writes(api: &Api) {
    let a = api.token("shop-a");
    for _ in 0..10 {
        let created = api.post("/orders", &a, &order_body("PRD-001", 1, 29.99)).await;
        assert_eq!(created.status, 201, "{:?}", created.body);
        let code = created.body["code"].as_str().expect("a code");
        let read = api.get(&format!("/orders/{code}"), &a).await;
        assert_eq!(read.status, 200, "{code} is readable at once: {:?}", read.body);
        assert_eq!(read.body["code"], code);
        assert!(read.body["version"].as_u64().expect("a version") >= 1);
        assert_eq!(read.body["attributes"]["customerId"], "CUST-001");
    }
}

/// [`read_your_writes`] with no pipeline at all (as when the stream
/// consumer is down): the orders are never applied, and still read back.
async fn read_your_writes_without_a_pipeline(api: &Api) {
    read_your_writes(api).await;
    let a = api.token("shop-a");
    let read = api.get("/orders/ORD-000001", &a).await;
    assert_eq!(read.status, 200, "{:?}", read.body);
    assert_eq!(read.body["version"], 1);
    assert_eq!(read.body["attributes"]["reservation"], "pending");
    // Not applied: the data table does not hold it.
    let key = EntityKey::new("TENANT#shop-a", "ORDER#ORD-000001");
    let applied = DataService::get_item(&api.shop.engine, &key, &ctx("shop-a"))
        .await
        .expect("read");
    assert_eq!(applied, None);
    // A customer reads their own pending order, and not another's.
    let ttl = Duration::from_secs(600);
    let mine = api.auth.token("shop-a", "cust-1", &["customer"], ttl);
    let theirs = api.auth.token("shop-a", "cust-2", &["customer"], ttl);
    let placed = api.place(&mine, "PRD-001", 1, 29.99).await;
    assert_eq!(api.get(&format!("/orders/{placed}"), &mine).await.status, 200);
    assert_error(
        &api.get(&format!("/orders/{placed}"), &theirs).await,
        404,
        "not_found",
    );
}

// ---- one test per scenario and backend -------------------------------------------

macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        on_backend!(memory, Memory, [any()], $($scenario),*);
        on_backend!(dynamodb, DynamoDb, [not(dynamodb_tests)], $($scenario),*);
    };
}

macro_rules! on_backend {
    ($module:ident, $backend:ident, [$skip:meta], $($scenario:ident),*) => {
        mod $module {
            $(
                #[cfg_attr($skip, ignore = "needs DynamoDB Local: run ./scripts/test")]
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $scenario() {
                    let Some(api) = super::Api::start(super::Backend::$backend, stringify!($scenario)).await
                    else {
                        return;
                    };
                    super::$scenario(&api).await;
                    api.stop().await;
                }
            )*

            #[cfg_attr($skip, ignore = "needs DynamoDB Local: run ./scripts/test")]

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn concurrent_orders() {
                let backend = super::Backend::$backend;
                let Some(api) = super::Api::start(backend, "concurrency").await else {
                    return;
                };
                super::concurrent_orders(&api, backend).await;
                api.stop().await;
            }

            #[cfg_attr($skip, ignore = "needs DynamoDB Local: run ./scripts/test")]

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn read_your_writes_without_a_pipeline() {
                let config = ecommerce::shop::ShopConfig {
                    dispatch: cqrs_core::AsyncDispatch::External,
                    ..ecommerce::shop::ShopConfig::default()
                };
                let Some(api) = super::Api::start_with(super::Backend::$backend, "nopipeline", config).await
                else {
                    return;
                };
                super::read_your_writes_without_a_pipeline(&api).await;
                api.stop().await;
            }

            #[cfg_attr($skip, ignore = "needs DynamoDB Local: run ./scripts/test")]

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn demo_runs() {
                let Some(fresh) = super::Backend::$backend.shop("demo").await else {
                    return;
                };
                super::demo_runs(&fresh.shop).await;
                fresh.clean_up().await;
            }
        }
    };
}

/// The demo runs to the end and tells what it did.
async fn demo_runs(shop: &Shop) {
    let mut out: Vec<u8> = Vec::new();
    ecommerce::demo::run(shop, &mut out)
        .await
        .expect("the demo succeeds");
    let text = String::from_utf8(out).expect("UTF-8 output");
    assert!(
        text.contains("ORD-000001"),
        "the demo shows the first order:\n{text}"
    );
}

/// One step of the way to a field in a request: a property, or every
/// element of an array.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Property(String),
    Elements,
}

/// A bound the OpenAPI document states on a request field: where (`GET
/// /orders` query `limit`, a path parameter, a header, or a body field),
/// which keyword, which value.
#[derive(Debug, Clone)]
struct DocumentedBound {
    method: String,
    path: String,
    /// A parameter's place (`query`, `path`, `header`) and name.
    parameter: Option<(String, String)>,
    field: Vec<Step>,
    keyword: String,
    value: i64,
}

const BOUND_KEYWORDS: [&str; 6] = [
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
];

/// Every bound of the schema `schema` (following `$ref`s into the
/// document's components) at `field`.
fn bounds_of(doc: &Value, schema: &Value, field: Vec<Step>, found: &mut Vec<(Vec<Step>, String, i64)>) {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.rsplit('/').next().unwrap_or_default();
        return bounds_of(doc, &doc["components"]["schemas"][name], field, found);
    }
    for keyword in BOUND_KEYWORDS {
        if let Some(value) = schema.get(keyword) {
            let value = value.as_f64().unwrap_or_else(|| panic!("{keyword} {value}"));
            found.push((field.clone(), keyword.to_owned(), value as i64));
        }
    }
    for combined in ["allOf", "oneOf", "anyOf"] {
        for part in schema[combined].as_array().into_iter().flatten() {
            bounds_of(doc, part, field.clone(), found);
        }
    }
    if let Some(items) = schema.get("items") {
        let mut inner = field.clone();
        inner.push(Step::Elements);
        bounds_of(doc, items, inner, found);
    }
    for (name, property) in schema["properties"].as_object().into_iter().flatten() {
        let mut inner = field.clone();
        inner.push(Step::Property(name.clone()));
        bounds_of(doc, property, inner, found);
    }
}

/// Every bound the document states on a request: query parameters and
/// request bodies of every operation.
fn documented_bounds(doc: &Value) -> Vec<DocumentedBound> {
    let mut bounds = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("a path item") {
            let mut found = Vec::new();
            for parameter in operation["parameters"].as_array().into_iter().flatten() {
                let mut of_parameter = Vec::new();
                bounds_of(doc, &parameter["schema"], Vec::new(), &mut of_parameter);
                for (_, keyword, value) in of_parameter {
                    let place = parameter["in"].as_str().expect("a parameter's place");
                    let name = parameter["name"].as_str().expect("a parameter's name");
                    bounds.push(DocumentedBound {
                        method: method.to_uppercase(),
                        path: path.clone(),
                        parameter: Some((place.to_owned(), name.to_owned())),
                        field: Vec::new(),
                        keyword,
                        value,
                    });
                }
            }
            let body = &operation["requestBody"]["content"]["application/json"]["schema"];
            if !body.is_null() {
                bounds_of(doc, body, Vec::new(), &mut found);
            }
            for (field, keyword, value) in found {
                bounds.push(DocumentedBound {
                    method: method.to_uppercase(),
                    path: path.clone(),
                    parameter: None,
                    field,
                    keyword,
                    value,
                });
            }
        }
    }
    bounds
}

/// Sets the field at `steps` of `body` (every element of an array) to
/// `value`.
fn set_field(body: &mut Value, steps: &[Step], value: &Value) {
    match steps.split_first() {
        None => *body = value.clone(),
        Some((Step::Property(name), rest)) => set_field(&mut body[name.as_str()], rest, value),
        Some((Step::Elements, rest)) => {
            for element in body.as_array_mut().expect("an array").iter_mut() {
                set_field(element, rest, value);
            }
        }
    }
}

/// The value at `steps` of `body` (the first element of an array).
fn get_field<'a>(body: &'a Value, steps: &[Step]) -> &'a Value {
    match steps.split_first() {
        None => body,
        Some((Step::Property(name), rest)) => get_field(&body[name.as_str()], rest),
        Some((Step::Elements, rest)) => get_field(&body[0], rest),
    }
}

/// The value of a field that meets `keyword` at `n`: the number, a string
/// of `n` letters, or an array of `n` copies of the field's element.
fn value_at(keyword: &str, n: i64, current: &Value) -> Value {
    match keyword {
        "minimum" | "maximum" => json!(n),
        "minLength" | "maxLength" => json!("A".repeat(usize::try_from(n).expect("a length"))),
        _ => {
            let element = current
                .as_array()
                .and_then(|a| a.first().cloned())
                .unwrap_or_else(|| json!("https://example.com/image.png"));
            Value::Array(vec![element; usize::try_from(n).expect("a count")])
        }
    }
}

/// Sends the request of `bound` with its field at `n`; answers the status.
async fn probe(api: &Api, token: &str, order_code: &str, bound: &DocumentedBound, n: i64, run: usize) -> u16 {
    // A length bound is met by a text of that length, a number's by the number.
    let text = || match bound.keyword.as_str() {
        "minLength" | "maxLength" => "A".repeat(usize::try_from(n).expect("a length")),
        _ => n.to_string(),
    };
    let (mut path, body) = match (bound.method.as_str(), bound.path.as_str()) {
        ("POST", "/orders") => ("/orders".to_owned(), Some(order_body("PRD-001", 1, 29.99))),
        ("POST", "/products") => (
            "/products".to_owned(),
            Some(json!({
                "code": format!("PRD-B{run}-{n}"), "name": "Bound", "categoryCode": "X", "sku": "S",
                "price": 1.5, "currency": "USD", "isActive": true,
                "images": ["https://example.com/image.png"]
            })),
        ),
        ("PATCH", "/inventory/{productCode}") => (
            "/inventory/PRD-002".to_owned(),
            Some(json!({ "quantity": 5, "warehouseCode": "W1" })),
        ),
        ("PATCH", "/orders/{code}/status") => (
            format!("/orders/{order_code}/status"),
            Some(json!({ "status": "cancelled" })),
        ),
        ("GET", path) => (
            path.replace("{code}", order_code)
                .replace("{productCode}", "PRD-002"),
            None,
        ),
        other => panic!("no request to probe the bound {bound:?} of {other:?} with: add one"),
    };
    let mut headers = Vec::new();
    let mut body = body.map(|mut body| {
        if bound.parameter.is_none() {
            let value = value_at(&bound.keyword, n, get_field(&body, &bound.field));
            set_field(&mut body, &bound.field, &value);
        }
        body
    });
    match bound
        .parameter
        .as_ref()
        .map(|(place, name)| (place.as_str(), name))
    {
        Some(("query", name)) => path = format!("{path}?{name}={}", text()),
        Some(("path", name)) => {
            let template = bound.path.replace(&format!("{{{name}}}"), &text());
            path = template
                .replace("{code}", order_code)
                .replace("{productCode}", "PRD-002");
        }
        Some(("header", name)) => headers.push((name.clone(), text())),
        Some(other) => panic!("a bound on a parameter in {other:?}"),
        None => {}
    }
    let headers: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes())).collect();
    let method = Method::from_bytes(bound.method.as_bytes()).expect("a method");
    let body = body.take().map(|b| b.to_string().into_bytes());
    api.send_with(method, &path, Some(token), body, &headers)
        .await
        .status
}

/// The OpenAPI document states the bounds the server enforces, exactly:
/// for every bound it states on a request field (walking every operation's
/// parameters, in the query, the path and the headers, and its body), a
/// value at the bound is accepted (no 400) and one past it is refused with
/// a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_documented_bound_is_the_servers() {
    let Some(api) = Api::start(Backend::Memory, "bounds").await else {
        return;
    };
    let token = api.token("shop-a");
    let doc = api.send(Method::GET, "/openapi.json", None, None).await.body;
    let bounds = documented_bounds(&doc);
    let find = |method: &str, path: &str, what: &str, keyword: &str| {
        bounds
            .iter()
            .find(|b| {
                b.method == method
                    && b.path == path
                    && b.keyword == keyword
                    && (b.parameter.as_ref().is_some_and(|(_, name)| name == what)
                        || b.field.last() == Some(&Step::Property(what.to_owned())))
            })
            .map(|b| b.value)
    };
    // The bounds the server checks are all stated.
    for path in ["/orders", "/products"] {
        assert_eq!(find("GET", path, "limit", "minimum"), Some(1), "{path}");
        assert_eq!(find("GET", path, "limit", "maximum"), Some(100), "{path}");
    }
    assert_eq!(find("POST", "/orders", "quantity", "minimum"), Some(1));
    assert_eq!(find("POST", "/orders", "quantity", "maximum"), Some(10_000));
    assert_eq!(find("POST", "/orders", "items", "minItems"), Some(1));
    assert_eq!(find("POST", "/orders", "items", "maxItems"), Some(100));
    assert_eq!(find("POST", "/products", "images", "maxItems"), Some(20));
    assert_eq!(
        find("PATCH", "/inventory/{productCode}", "quantity", "minimum"),
        Some(0)
    );
    assert_eq!(find("GET", "/orders/{code}", "code", "maxLength"), Some(64));
    assert_eq!(find("POST", "/orders", "Idempotency-Key", "maxLength"), Some(255));
    assert_eq!(find("POST", "/orders", "customerId", "minLength"), Some(1));
    assert_eq!(find("POST", "/products", "price", "maximum"), Some(1_000_000));
    assert_eq!(find("GET", "/orders/search", "q", "maxLength"), Some(100));

    let order_code = api.place(&token, "PRD-001", 1, 29.99).await;
    for (run, bound) in bounds.iter().enumerate() {
        let past = if bound.keyword.starts_with("min") {
            bound.value - 1
        } else {
            bound.value + 1
        };
        let at = probe(&api, &token, &order_code, bound, bound.value, run).await;
        assert_ne!(at, 400, "{bound:?}: the bound itself is refused");
        // A length or a count below zero cannot be sent, nor an empty
        // path segment (`/orders/` is another route).
        let in_path = matches!(&bound.parameter, Some((place, _)) if place == "path");
        let sendable = past >= 0 && !(in_path && past == 0);
        if sendable || bound.keyword.ends_with("imum") {
            let beyond = probe(&api, &token, &order_code, bound, past, run).await;
            assert_eq!(beyond, 400, "{bound:?}: {past} is accepted");
        }
    }
    api.stop().await;
}

/// The reference framework's own rows (`cqrs-dynamodb/tests/fixtures`):
/// the items MBC CQRS Serverless wrote into tables of this example.
const MBC_ROWS: &str = include_str!("../../../cqrs-dynamodb/tests/fixtures/mbc-items.json");

/// Sharing tables with MBC CQRS Serverless, through the HTTP API: the rows
/// its code wrote into the example's tables are served, listed and counted
/// on. On DynamoDB the items go in as they are; in memory through the
/// storage's primitives (`store_rows`: its products, its async command and
/// its counter).
mod mbc_rows {
    use super::*;

    fn rows() -> Vec<(String, cqrs_dynamodb::Item)> {
        cqrs_dynamodb::testing::rows_from_json(MBC_ROWS).expect("fixtures")
    }

    async fn served_listed_and_numbered_after(backend: Backend) {
        let Some(api) = Api::start(backend, "mbc").await else {
            return;
        };
        match &api.dynamodb {
            Some(storage) => cqrs_dynamodb::testing::put_rows(storage, &rows())
                .await
                .expect("stored"),
            None => {
                let storage = api.shop.engine.storage();
                cqrs_dynamodb::testing::store_rows(&**storage, &rows())
                    .await
                    .expect("stored");
            }
        }
        let token = api.token("shop-a");

        // Its products, written without isDeleted, or without a user.
        for (code, name) in [("PRD-100", "MBC Keyboard PRD-100"), ("PRD-103", "No user")] {
            let resp = api.get(&format!("/products/{code}"), &token).await;
            assert_eq!(resp.status, 200, "{code}: {:?}", resp.body);
            assert_item(&resp.body, "shop-a", &format!("PRODUCT#{code}"), 1);
            assert_eq!(resp.body["name"], name);
        }
        // The whole catalogue lists: ours and its.
        let resp = api.get("/products?limit=50", &token).await;
        assert_eq!(resp.status, 200, "{:?}", resp.body);
        let listed = codes(assert_list(&resp.body));
        for code in ["PRD-001", "PRD-002", "PRD-003", "PRD-100", "PRD-101", "PRD-103"] {
            assert!(listed.contains(&code.to_owned()), "{code} in {listed:?}");
        }
        assert!(resp.body.get("unreadable").is_none(), "{:?}", resp.body);

        // Numbers follow its counter (at 2): the next order is ORD-000003.
        let resp = api
            .post("/orders", &token, &order_body("PRD-001", 1, 29.99))
            .await;
        assert_eq!(resp.status, 201, "{:?}", resp.body);
        assert_eq!(resp.body["code"], "ORD-000003");

        // On DynamoDB, a row nobody can read is reported by key; the rest
        // still lists. (The memory backend holds typed rows only.)
        if let Some(storage) = &api.dynamodb {
            let broken = cqrs_dynamodb::testing::item_from_json(&json!({
                "pk": { "S": "TENANT#shop-a" },
                "sk": { "S": "PRODUCT#PRD-104" },
                "version": { "S": "one" }
            }))
            .expect("an item");
            cqrs_dynamodb::testing::put_rows(storage, &[("data".into(), broken)])
                .await
                .expect("stored");
            let resp = api.get("/products?limit=50", &token).await;
            assert_eq!(resp.status, 200, "{:?}", resp.body);
            assert_eq!(codes(assert_list(&resp.body)).len(), listed.len());
            assert_eq!(
                resp.body["unreadable"][0]["sk"], "PRODUCT#PRD-104",
                "{:?}",
                resp.body
            );
        }
        api.stop().await;
    }

    /// A data row another program wrote, with the command row of its
    /// version, as DynamoDB items: `attributes` a DynamoDB JSON map (`None`:
    /// no attributes at all, which the reference framework allows).
    fn written_by_another(
        sk: &str,
        code: &str,
        entity_type: &str,
        attributes: Option<Value>,
        deleted: bool,
    ) -> Vec<(String, cqrs_dynamodb::Item)> {
        let mut data = json!({
            "pk": { "S": "TENANT#shop-a" }, "sk": { "S": sk }, "id": { "S": format!("TENANT#shop-a#{sk}") },
            "code": { "S": code }, "name": { "S": format!("{code} by MBC") }, "version": { "N": "1" },
            "type": { "S": entity_type }, "tenantCode": { "S": "shop-a" }, "isDeleted": { "BOOL": deleted },
            "createdAt": { "S": "2026-12-01T02:08:29+00:00" }, "updatedAt": { "S": "2026-12-01T02:08:29+00:00" },
        });
        if let Some(attributes) = attributes {
            data["attributes"] = attributes;
        }
        let mut command = data.clone();
        command["sk"] = json!({ "S": format!("{sk}@1") });
        command["status"] = json!({ "S": "finish:FINISHED" });
        command["syncMode"] = json!({ "S": "SYNC" });
        let item = |json: &Value| cqrs_dynamodb::testing::item_from_json(json).expect("an item");
        vec![("command".into(), item(&command)), ("data".into(), item(&data))]
    }

    /// A product's attributes as the reference framework stores them.
    fn product_attributes() -> Value {
        json!({ "M": {
            "images": { "L": [] }, "price": { "N": "29.99" }, "description": { "S": "" },
            "currency": { "S": "USD" }, "categoryCode": { "S": "X" }, "isActive": { "BOOL": true },
            "sku": { "S": "SKU" }
        } })
    }

    /// Rows of another program that are not what the example's types say:
    /// without attributes, with attributes of another shape, or deleted.
    /// None is served as a product or an order: a deleted one is missing
    /// (and cannot be ordered), the others are reported by key — in a list
    /// among `unreadable`, read alone as a 409 `unreadable_row` naming the
    /// row, never a 500.
    async fn rows_that_are_not_the_examples_types(backend: Backend) {
        let Some(api) = Api::start(backend, "mbc-odd").await else {
            return;
        };
        let shape = Some(json!({ "M": { "shape": { "S": "not an order" } } }));
        let mut rows = Vec::new();
        rows.extend(written_by_another(
            "PRODUCT#PRD-200",
            "PRD-200",
            "PRODUCT",
            None,
            false,
        ));
        rows.extend(written_by_another(
            "PRODUCT#PRD-201",
            "PRD-201",
            "PRODUCT",
            Some(product_attributes()),
            true,
        ));
        rows.extend(written_by_another(
            "ORDER#ORD-900",
            "ORD-900",
            "ORDER",
            None,
            false,
        ));
        rows.extend(written_by_another(
            "ORDER#ORD-901",
            "ORD-901",
            "ORDER",
            shape.clone(),
            false,
        ));
        rows.extend(written_by_another(
            "ORDER#ORD-902",
            "ORD-902",
            "ORDER",
            shape,
            true,
        ));
        match &api.dynamodb {
            Some(storage) => cqrs_dynamodb::testing::put_rows(storage, &rows)
                .await
                .expect("stored"),
            None => {
                let stored = cqrs_dynamodb::testing::store_rows(&**api.shop.engine.storage(), &rows)
                    .await
                    .expect("stored");
                assert_eq!(stored, 10);
            }
        }
        let token = api.token("shop-a");

        // Read alone: an error naming the row, not a 500.
        for (path, sk) in [
            ("/products/PRD-200", "PRODUCT#PRD-200"),
            ("/orders/ORD-900", "ORDER#ORD-900"),
            ("/orders/ORD-901", "ORDER#ORD-901"),
        ] {
            let resp = api.get(path, &token).await;
            assert_eq!(resp.status, 409, "{path}: {:?}", resp.body);
            assert_eq!(resp.body["error"], "unreadable_row", "{path}: {:?}", resp.body);
            let message = resp.body["message"].as_str().unwrap_or_default();
            assert!(message.contains(sk), "{path}: {message}");
        }
        for code in ["ORD-900", "ORD-901"] {
            let resp = api
                .patch(
                    &format!("/orders/{code}/status"),
                    &token,
                    &json!({ "status": "cancelled" }),
                )
                .await;
            assert_eq!(resp.status, 409, "{code}: {:?}", resp.body);
            assert_eq!(resp.body["error"], "unreadable_row", "{code}: {:?}", resp.body);
        }

        // Listed: the odd rows among `unreadable`, the deleted ones nowhere.
        let resp = api.get("/products?limit=50", &token).await;
        assert_eq!(resp.status, 200, "{:?}", resp.body);
        let listed = codes(assert_list(&resp.body));
        assert!(listed.contains(&"PRD-001".to_owned()), "{listed:?}");
        for code in ["PRD-200", "PRD-201"] {
            assert!(!listed.contains(&code.to_owned()), "{code} in {listed:?}");
        }
        let unreadable: Vec<&str> = resp.body["unreadable"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|row| row["sk"].as_str())
            .collect();
        assert_eq!(unreadable, ["PRODUCT#PRD-200"], "{:?}", resp.body);

        let resp = api.get("/orders?limit=50", &token).await;
        assert_eq!(resp.status, 200, "{:?}", resp.body);
        let listed = codes(assert_list(&resp.body));
        assert!(
            listed.is_empty(),
            "no order of ours, none of its served: {listed:?}"
        );
        let mut unreadable: Vec<&str> = resp.body["unreadable"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|row| row["sk"].as_str())
            .collect();
        unreadable.sort_unstable();
        assert_eq!(unreadable, ["ORDER#ORD-900", "ORDER#ORD-901"], "{:?}", resp.body);

        // Deleted: not found, and not orderable.
        for path in ["/products/PRD-201", "/orders/ORD-902"] {
            let resp = api.get(path, &token).await;
            assert_eq!(resp.status, 404, "{path}: {:?}", resp.body);
        }
        let resp = api
            .post("/orders", &token, &order_body("PRD-201", 1, 29.99))
            .await;
        assert_eq!(resp.status, 422, "{:?}", resp.body);
        let message = resp.body["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("PRD-201") && message.contains("deleted"),
            "{message}"
        );
        api.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn odd_rows_memory() {
        rows_that_are_not_the_examples_types(Backend::Memory).await;
    }

    #[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn odd_rows_dynamodb() {
        rows_that_are_not_the_examples_types(Backend::DynamoDb).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn memory() {
        served_listed_and_numbered_after(Backend::Memory).await;
    }

    #[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn dynamodb() {
        served_listed_and_numbered_after(Backend::DynamoDb).await;
    }
}

on_both_backends!(
    every_endpoint,
    lifecycle,
    listing,
    catalogue_prices,
    authentication,
    tenant_isolation,
    bad_bodies,
    money_bounds,
    order_lines,
    roles,
    redelivery,
    cancel_races_reservation,
    idempotent_orders,
    idempotent_status_changes,
    racing_keyed_status_changes,
    read_your_writes,
);
