//! Property tests of the request bodies (issue 10): arbitrary JSON-ish bodies
//! for `POST /orders`, `POST /products`, `PATCH /orders/{code}/status` and
//! `PATCH /inventory/{productCode}`, sent through the router in memory (no
//! socket). No input panics; every answer is a 2xx, or a JSON error body
//! `{"error", "message"}` with a 4xx status, never a 5xx; and after a 4xx the
//! shop's tables hold exactly what they held before.

use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use cqrs_core::{DataService, ListQuery};
use ecommerce::auth::Auth;
use ecommerce::Shop;
use proptest::prelude::*;
use serde_json::{json, Value};
use tower::ServiceExt;

const CASES: u32 = 256;

struct World {
    runtime: tokio::runtime::Runtime,
    shop: Shop,
    app: axum::Router,
    token: String,
}

/// One shop for every case: seeded, with three orders to move.
fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let auth = Auth::new(b"property-test-secret-of-32-bytes!");
        let token = auth.token("shop-a", "prop-user", &["staff"], Duration::from_secs(3600));
        let (shop, app) = runtime.block_on(async {
            let shop = Shop::in_memory();
            shop.seed_demo("shop-a").await.expect("seeded");
            let app = ecommerce::http::router(shop.clone(), auth);
            (shop, app)
        });
        let world = World {
            runtime,
            shop,
            app,
            token,
        };
        for _ in 0..3 {
            let (status, _) = world.send("POST", "/orders", valid_order().to_string().into_bytes());
            assert_eq!(status, 201);
        }
        world
    })
}

impl World {
    fn send(&self, method: &str, path: &str, body: Vec<u8>) -> (u16, Value) {
        self.runtime.block_on(async {
            let request = Request::builder()
                .method(method)
                .uri(path)
                .header("authorization", format!("Bearer {}", self.token))
                .header("content-type", "application/json")
                .body(Body::from(body))
                .expect("a request");
            let response = self.app.clone().oneshot(request).await.expect("infallible");
            let status = response.status().as_u16();
            let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .expect("a body");
            let body = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "status {status}: not JSON ({e}): {}",
                    String::from_utf8_lossy(&bytes)
                )
            });
            (status, body)
        })
    }

    /// Every data item of shop-a, once the pipeline is idle.
    fn snapshot(&self) -> Vec<Value> {
        self.runtime.block_on(async {
            self.shop.engine.wait_idle().await;
            let ctx = cqrs_core::InvocationContext::new("shop-a", "prop-user");
            let mut items = Vec::new();
            let mut cursor = None;
            loop {
                let query = ListQuery::new().limit(cqrs_core::MAX_LIMIT).after(cursor);
                let page = DataService::list_items(&self.shop.engine, "TENANT#shop-a", query, &ctx)
                    .await
                    .expect("listed");
                items.extend(
                    page.items
                        .into_iter()
                        .map(|i| serde_json::to_value(i).expect("JSON")),
                );
                match page.cursor {
                    Some(c) => cursor = Some(c),
                    None => return items,
                }
            }
        })
    }

    /// Sends, and checks the answer: 2xx, or 4xx with an error body and
    /// nothing written.
    fn check(&self, method: &str, path: &str, body: Vec<u8>) -> Result<(), TestCaseError> {
        // The tests share the shop: one request at a time, or "nothing
        // written" would see another test's writes.
        static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let before = self.snapshot();
        let (status, answer) = self.send(method, path, body);
        let status = StatusCode::from_u16(status).expect("a status");
        prop_assert!(
            status.is_success() || status.is_client_error(),
            "{method} {path}: {status} {answer}"
        );
        if status.is_client_error() {
            prop_assert!(answer["error"].is_string(), "{status} {answer}");
            prop_assert!(answer["message"].is_string(), "{status} {answer}");
            prop_assert!(
                self.snapshot() == before,
                "{method} {path}: {status} {answer} wrote something"
            );
        }
        Ok(())
    }
}

fn valid_order() -> Value {
    json!({
        "customerId": "CUST-001",
        "items": [{ "productCode": "PRD-001", "name": "Wireless Mouse", "quantity": 1, "price": 29.99 }],
        "shippingAddress": { "street": "123 Main St", "city": "Tokyo", "postalCode": "100-0001", "country": "JP" },
        "paymentMethod": "credit_card"
    })
}

fn valid_product() -> Value {
    json!({
        "code": "PRD-100", "name": "Stand", "categoryCode": "ACCESSORIES", "sku": "SKU-100",
        "price": 45.0, "currency": "USD", "description": "Aluminium", "images": [], "isActive": true
    })
}

/// A JSON leaf: edge numbers, arbitrary text (control characters included),
/// and values the API knows.
fn leaf() -> BoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
        prop::sample::select(vec![
            0.0,
            -0.01,
            0.001,
            0.01,
            9.99,
            29.99,
            89.5,
            1e6,
            1_000_000.01,
            7.9e28,
            8e28,
            1e200,
            1e-200,
            4_294_967_296.0,
            1e9,
            1e9 + 1.0,
        ])
        .prop_map(|f| json!(f)),
        any::<String>().prop_map(Value::from),
        prop::sample::select(vec![
            "PRD-001",
            "PRD-002",
            "PRD-003",
            "PRD-404",
            "ORD-000001",
            "pending",
            "confirmed",
            "processing",
            "shipped",
            "delivered",
            "cancelled",
            "WH-1",
            "USD",
            "",
            " ",
            "a\nb",
            "\u{0}",
            "x#y",
        ])
        .prop_map(Value::from),
    ]
    .boxed()
}

/// Arbitrary JSON, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    any::<String>(),
                    prop::sample::select(vec![
                        "customerId",
                        "items",
                        "productCode",
                        "quantity",
                        "price",
                        "name",
                        "status",
                        "version",
                        "warehouseCode",
                        "code",
                        "isActive",
                    ])
                    .prop_map(str::to_owned),
                ],
                inner,
                0..5,
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// `base` with a few of its fields (JSON pointers) removed or replaced.
fn mutated(base: Value, pointers: &'static [&'static str]) -> impl Strategy<Value = Value> {
    prop::collection::vec(
        (prop::sample::select(pointers), prop::option::of(any_json())),
        0..4,
    )
    .prop_map(move |edits| {
        let mut body = base.clone();
        for (pointer, value) in edits {
            let (parent, field) = pointer.rsplit_once('/').expect("a pointer");
            let Some(parent) = body.pointer_mut(parent) else {
                continue;
            };
            match (parent, value) {
                (Value::Object(map), None) => {
                    map.remove(field);
                }
                (Value::Object(map), Some(v)) => {
                    map.insert(field.to_owned(), v);
                }
                (Value::Array(items), value) => {
                    if let Ok(i) = field.parse::<usize>() {
                        match value {
                            None if i < items.len() => {
                                items.remove(i);
                            }
                            Some(v) if i < items.len() => items[i] = v,
                            Some(v) => items.push(v),
                            None => {}
                        }
                    }
                }
                _ => {}
            }
        }
        body
    })
}

/// A body: a mutated valid one, any JSON, or any bytes.
fn body(base: Value, pointers: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => mutated(base, pointers).prop_map(|v| v.to_string().into_bytes()),
        2 => any_json().prop_map(|v| v.to_string().into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
}

const ORDER_FIELDS: &[&str] = &[
    "/customerId",
    "/items",
    "/items/0",
    "/items/1",
    "/items/0/productCode",
    "/items/0/name",
    "/items/0/quantity",
    "/items/0/price",
    "/shippingAddress",
    "/shippingAddress/street",
    "/shippingAddress/city",
    "/shippingAddress/postalCode",
    "/shippingAddress/country",
    "/paymentMethod",
    "/extra",
];

const PRODUCT_FIELDS: &[&str] = &[
    "/code",
    "/name",
    "/categoryCode",
    "/sku",
    "/price",
    "/currency",
    "/description",
    "/images",
    "/images/0",
    "/isActive",
    "/extra",
];

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn post_orders(body in body(valid_order(), ORDER_FIELDS)) {
        world().check("POST", "/orders", body)?;
    }

    #[test]
    fn post_products(body in body(valid_product(), PRODUCT_FIELDS)) {
        world().check("POST", "/products", body)?;
    }

    #[test]
    fn patch_order_status(
        code in prop::sample::select(vec!["ORD-000001", "ORD-000002", "ORD-000003", "ORD-999999", "X_1"]),
        body in body(json!({ "status": "cancelled", "version": 1 }), &["/status", "/version", "/extra"]),
    ) {
        world().check("PATCH", &format!("/orders/{code}/status"), body)?;
    }

    #[test]
    fn patch_inventory(
        code in prop::sample::select(vec!["PRD-001", "PRD-002", "PRD-003", "PRD-404"]),
        body in body(json!({ "quantity": 500, "warehouseCode": "WH-1" }), &["/quantity", "/warehouseCode", "/version", "/extra"]),
    ) {
        world().check("PATCH", &format!("/inventory/{code}"), body)?;
    }
}
