//! The read models over HTTP, on the memory backend: `GET /reports/sales`
//! and `GET /orders/search` against a recomputation from the orders
//! themselves (read back through `GET /orders`), their roles, filters and
//! paging, and rebuilds (alone, and racing new orders).
//!
//! Every scenario runs twice, as `sqlite::<scenario>` (SQLite in memory)
//! and `postgres::<scenario>` (a fresh schema of the server at
//! `CQRS_POSTGRES_URL`, which `./scripts/postgres` starts; without it the
//! PostgreSQL variant skips loudly, or fails when `CQRS_REQUIRE_POSTGRES`
//! or `CI` is set).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{NaiveDate, Utc};
use cqrs_core::projection::Scope;
use cqrs_core::{tenant_pk, CommandService, CommandStatus, EntityKey, InvocationContext};
use ecommerce::auth::Auth;
use ecommerce::read_models::{ReadModel, ReadModels};
use ecommerce::shop::{ShopConfig, DEMO_TENANTS};
use ecommerce::Shop;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use tokio::sync::oneshot;

const SECRET: &[u8] = b"test-secret-of-at-least-32-bytes";
const TENANT: &str = "shop-a";

/// The read models' database of a scenario.
#[derive(Debug, Clone, Copy)]
enum ReadDb {
    /// SQLite in memory.
    Sqlite,
    /// A fresh schema of the PostgreSQL server at `CQRS_POSTGRES_URL`.
    Postgres,
}

const POSTGRES_URL_VAR: &str = "CQRS_POSTGRES_URL";

impl ReadDb {
    /// A shop on the memory backend with its read models here; `None` when
    /// this database is not available (PostgreSQL without a server).
    async fn shop(self) -> Option<Shop> {
        match self {
            ReadDb::Sqlite => Some(Shop::in_memory_with_read_models().await.expect("read models")),
            ReadDb::Postgres => {
                let url = postgres_url()?;
                let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
                let admin = cqrs_sql::sqlx::PgPool::connect(&url)
                    .await
                    .expect("PostgreSQL reachable");
                cqrs_sql::sqlx::query(&format!("CREATE SCHEMA {schema}"))
                    .execute(&admin)
                    .await
                    .expect("schema created");
                admin.close().await;
                let separator = if url.contains('?') { '&' } else { '?' };
                let url = format!("{url}{separator}options=-c%20search_path%3D{schema}");
                let storage: Arc<dyn cqrs_core::Storage> = Arc::new(cqrs_memory::InMemory::new());
                let read_models = ReadModels::connect(&url, Arc::clone(&storage))
                    .await
                    .expect("read models");
                Some(Shop::with_read_models(
                    storage,
                    ShopConfig::default(),
                    Some(read_models),
                ))
            }
        }
    }
}

/// The PostgreSQL server's URL; `None` (a loud skip) without one, a
/// failure where PostgreSQL is required.
fn postgres_url() -> Option<String> {
    if let Some(url) = std::env::var(POSTGRES_URL_VAR).ok().filter(|url| !url.is_empty()) {
        return Some(url);
    }
    let required = std::env::var_os("CQRS_REQUIRE_POSTGRES").is_some() || std::env::var_os("CI").is_some();
    assert!(
        !required,
        "{POSTGRES_URL_VAR} is not set, but PostgreSQL tests are required here: eval \"$(./scripts/postgres)\""
    );
    eprintln!("\n*** SKIPPED: {POSTGRES_URL_VAR} is not set, so this PostgreSQL test did not run. ***");
    None
}

/// Runs each scenario on SQLite and on PostgreSQL.
macro_rules! on_both_databases {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $scenario() {
                    super::$scenario(super::ReadDb::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[cfg_attr(not(postgres_tests), ignore = "needs PostgreSQL: eval \"$(./scripts/postgres)\"")]
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $scenario() {
                    super::$scenario(super::ReadDb::Postgres).await;
                }
            )*
        }
    };
}

on_both_databases!(
    the_sales_report_equals_a_recomputation_from_the_orders_and_cancelling_takes_an_order_out_once,
    the_report_is_for_staff_and_the_search_shows_a_customer_their_own_orders_only,
    search_by_product_status_text_and_days,
    paging_walks_every_order_once_newest_first_and_bad_queries_are_refused,
    a_rebuild_yields_the_same_read_models,
    a_rebuild_racing_new_orders_ends_equal_to_the_recomputation,
);

/// The API on a real socket over a seeded shop.
struct Api {
    shop: Shop,
    auth: Auth,
    base: String,
    client: reqwest::Client,
    _shutdown: oneshot::Sender<()>,
}

impl Api {
    async fn start(shop: Shop) -> Api {
        for tenant in DEMO_TENANTS {
            shop.seed_demo(tenant).await.expect("seeded");
        }
        let auth = Auth::new(SECRET);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (shutdown, stopped) = oneshot::channel::<()>();
        tokio::spawn(ecommerce::http::serve_with_shutdown(
            listener,
            shop.clone(),
            auth.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        Api {
            shop,
            auth,
            base,
            client: reqwest::Client::new(),
            _shutdown: shutdown,
        }
    }

    async fn with_read_models(db: ReadDb) -> Option<Api> {
        Some(Api::start(db.shop().await?).await)
    }

    fn token(&self, user: &str, roles: &[&str]) -> String {
        self.auth.token(TENANT, user, roles, Duration::from_secs(600))
    }

    fn staff(&self) -> String {
        self.token("staff-1", &["staff"])
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("answered");
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, token, None).await
    }

    /// Places an order of `lines` (product, quantity) shipped to `city`;
    /// its code.
    async fn place(&self, token: &str, lines: &[(&str, u32)], street: &str, city: &str) -> String {
        let items: Vec<Value> = lines
            .iter()
            .map(
                |(code, quantity)| json!({ "productCode": code, "quantity": quantity, "price": price(code) }),
            )
            .collect();
        let body = json!({
            "customerId": "CUST-001",
            "items": items,
            "shippingAddress": { "street": street, "city": city, "postalCode": "100-0001", "country": "JP" },
            "paymentMethod": "credit_card"
        });
        let (status, order) = self
            .send(reqwest::Method::POST, "/orders", token, Some(body))
            .await;
        assert_eq!(status, 201, "{order}");
        order["code"].as_str().unwrap().to_owned()
    }

    async fn set_status(&self, code: &str, status: &str, token: &str) {
        let (answer, body) = self
            .send(
                reqwest::Method::PATCH,
                &format!("/orders/{code}/status"),
                token,
                Some(json!({ "status": status })),
            )
            .await;
        assert_eq!(answer, 200, "{body}");
    }

    /// Every order of the shop, through `GET /orders` (staff).
    async fn all_orders(&self) -> Vec<Value> {
        let mut orders = Vec::new();
        let mut cursor = String::new();
        loop {
            let (status, page) = self
                .get(&format!("/orders?limit=100&cursor={cursor}"), &self.staff())
                .await;
            assert_eq!(status, 200, "{page}");
            orders.extend(page["items"].as_array().unwrap().iter().cloned());
            match page["cursor"].as_str() {
                Some(next) => cursor = next.to_owned(),
                None => return orders,
            }
        }
    }

    /// The report from `from` to `to`: (day, product) → (units, revenue).
    async fn report(&self, from: NaiveDate, to: NaiveDate) -> BTreeMap<(String, String), (i64, Decimal)> {
        let (status, rows) = self
            .get(&format!("/reports/sales?from={from}&to={to}"), &self.staff())
            .await;
        assert_eq!(status, 200, "{rows}");
        rows.as_array()
            .unwrap()
            .iter()
            .map(|row| {
                (
                    (
                        row["day"].as_str().unwrap().to_owned(),
                        row["productCode"].as_str().unwrap().to_owned(),
                    ),
                    (row["units"].as_i64().unwrap(), decimal(&row["revenue"])),
                )
            })
            .collect()
    }

    /// The report recomputed from the orders: every order not cancelled,
    /// per day placed and product.
    async fn recomputed(&self) -> BTreeMap<(String, String), (i64, Decimal)> {
        let mut rows: BTreeMap<(String, String), (i64, Decimal)> = BTreeMap::new();
        for order in self.all_orders().await {
            let attributes = &order["attributes"];
            if attributes["status"] == "cancelled" {
                continue;
            }
            let day = attributes["placedAt"].as_str().unwrap()[..10].to_owned();
            for item in attributes["items"].as_array().unwrap() {
                let units = item["quantity"].as_i64().unwrap();
                let row = rows
                    .entry((day.clone(), item["productCode"].as_str().unwrap().to_owned()))
                    .or_insert((0, Decimal::ZERO));
                row.0 += units;
                row.1 += decimal(&item["price"]) * Decimal::from(units);
            }
        }
        rows
    }

    /// Every order code a search finds, walking its pages of `limit`.
    async fn search_all(&self, query: &str, limit: usize, token: &str) -> Vec<String> {
        let mut codes = Vec::new();
        let mut cursor = String::new();
        loop {
            let (status, page) = self
                .get(
                    &format!("/orders/search?{query}&limit={limit}&cursor={cursor}"),
                    token,
                )
                .await;
            assert_eq!(status, 200, "{query}: {page}");
            let items = page["items"].as_array().unwrap();
            assert!(items.len() <= limit);
            codes.extend(items.iter().map(|o| o["code"].as_str().unwrap().to_owned()));
            // A walk that comes back to a page it read never ends: stop it.
            assert!(codes.len() <= 1_000, "{query}: the walk does not end: {codes:?}");
            match page["cursor"].as_str() {
                Some(next) => {
                    assert_ne!(next, cursor, "{query}: the same cursor twice");
                    cursor = next.to_owned();
                }
                None => return codes,
            }
        }
    }
}

fn price(code: &str) -> f64 {
    match code {
        "PRD-001" => 29.99,
        "PRD-002" => 89.50,
        _ => 9.99,
    }
}

fn decimal(value: &Value) -> Decimal {
    value.to_string().parse().unwrap()
}

fn today() -> NaiveDate {
    Utc::now().date_naive()
}

/// Yesterday to tomorrow: today's orders, whatever the clock did meanwhile.
fn around_today() -> (NaiveDate, NaiveDate) {
    (today().pred_opt().unwrap(), today().succ_opt().unwrap())
}

fn sorted(mut codes: Vec<String>) -> Vec<String> {
    codes.sort();
    codes
}

async fn the_sales_report_equals_a_recomputation_from_the_orders_and_cancelling_takes_an_order_out_once(
    db: ReadDb,
) {
    let Some(api) = Api::with_read_models(db).await else {
        return;
    };
    let staff = api.staff();
    let customer = api.token("cust-1", &["customer"]);
    api.place(&staff, &[("PRD-001", 2), ("PRD-002", 1)], "1 Main St", "Tokyo")
        .await;
    api.place(&customer, &[("PRD-001", 3)], "2 Main St", "Osaka")
        .await;
    let cancelled = api
        .place(&customer, &[("PRD-002", 4), ("PRD-001", 1)], "3 Main St", "Kyoto")
        .await;
    api.place(&staff, &[("PRD-002", 1), ("PRD-002", 2)], "4 Main St", "Nara")
        .await;
    api.shop.engine.wait_idle().await;
    let (from, to) = around_today();
    let before = api.report(from, to).await;
    assert_eq!(before, api.recomputed().await);
    let day = |row: &(String, String)| row.0.clone();
    assert!(before.keys().all(|row| day(row) >= from.to_string()));
    let total_units: i64 = before.values().map(|(units, _)| units).sum();
    assert_eq!(total_units, 2 + 1 + 3 + 4 + 1 + 1 + 2);

    api.set_status(&cancelled, "cancelled", &customer).await;
    api.shop.engine.wait_idle().await;
    let after = api.report(from, to).await;
    assert_eq!(after, api.recomputed().await);
    let units = |report: &BTreeMap<(String, String), (i64, Decimal)>, product: &str| -> i64 {
        report
            .iter()
            .filter(|(k, _)| k.1 == product)
            .map(|(_, v)| v.0)
            .sum()
    };
    // Exactly the cancelled order's lines came out, once.
    assert_eq!(units(&after, "PRD-002"), units(&before, "PRD-002") - 4);
    assert_eq!(units(&after, "PRD-001"), units(&before, "PRD-001") - 1);
    // The cancellation delivered twice more: the report does not move.
    let read_models = api.shop.read_models.as_ref().unwrap();
    let skipped = read_models.sales_projector().stats().skipped;
    let (_, order) = api.get(&format!("/orders/{cancelled}"), &staff).await;
    let version = order["version"].as_u64().unwrap();
    let key = EntityKey::new(tenant_pk(TENANT), format!("ORDER#{cancelled}"));
    let ctx = InvocationContext::new(TENANT, "staff-1").with_roles(["staff"]);
    for _ in 0..2 {
        let status = CommandService::reprocess(&api.shop.engine, &key, version, &ctx)
            .await
            .expect("reprocessed");
        assert_eq!(status, CommandStatus::Finished);
    }
    assert_eq!(read_models.sales_projector().stats().skipped, skipped + 2);
    assert_eq!(api.report(from, to).await, after);
    let revenue: Decimal = after.values().map(|(_, revenue)| *revenue).sum();
    assert_eq!(
        revenue,
        Decimal::new(2999, 2) * Decimal::from(5) + Decimal::new(8950, 2) * Decimal::from(4)
    );

    // Another day range holds nothing; the other shop sees nothing of these.
    let long_ago = NaiveDate::from_ymd_opt(2020, 1, 1).unwrap();
    assert!(api.report(long_ago, long_ago).await.is_empty());
    let other = api
        .auth
        .token("shop-b", "staff-b", &["staff"], Duration::from_secs(600));
    let (status, rows) = api
        .get(&format!("/reports/sales?from={from}&to={to}"), &other)
        .await;
    assert_eq!((status, rows), (200, json!([])));

    // The projectors applied each change once and failed none.
    let stats = read_models.sales_projector().stats();
    assert_eq!(stats.failed, 0, "{stats:?}");
    let lag = read_models
        .lag(ReadModel::Sales, &[TENANT.to_owned()])
        .await
        .unwrap();
    assert_eq!((lag.entities, lag.entities_behind), (4, 0), "{lag:?}");
}

async fn the_report_is_for_staff_and_the_search_shows_a_customer_their_own_orders_only(db: ReadDb) {
    let Some(api) = Api::with_read_models(db).await else {
        return;
    };
    let staff = api.staff();
    let alice = api.token("alice", &["customer"]);
    let bob = api.token("bob", &["customer"]);
    let nobody = api.token("nobody", &[]);
    let alices = vec![
        api.place(&alice, &[("PRD-001", 1)], "1 Main St", "Tokyo").await,
        api.place(&alice, &[("PRD-002", 1)], "1 Main St", "Tokyo").await,
    ];
    let bobs = vec![api.place(&bob, &[("PRD-001", 1)], "2 Side St", "Osaka").await];
    let staffs = vec![api.place(&staff, &[("PRD-003", 1)], "3 Back St", "Nara").await];
    api.shop.engine.wait_idle().await;

    let (from, to) = around_today();
    let report = format!("/reports/sales?from={from}&to={to}");
    for token in [&alice, &nobody] {
        let (status, body) = api.get(&report, token).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (403, Some("forbidden")),
            "{body}"
        );
    }
    let (status, body) = api.get("/orders/search", &nobody).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );

    assert_eq!(
        sorted(api.search_all("", 10, &alice).await),
        sorted(alices.clone())
    );
    assert_eq!(api.search_all("", 10, &bob).await, bobs);
    let everyone: Vec<String> = alices.iter().chain(&bobs).chain(&staffs).cloned().collect();
    assert_eq!(sorted(api.search_all("", 10, &staff).await), sorted(everyone));
    // A filter does not widen a customer's view.
    assert_eq!(
        api.search_all("product=PRD-001", 10, &alice).await,
        [alices[0].clone()]
    );
    assert_eq!(api.search_all("q=osaka", 10, &alice).await, Vec::<String>::new());
}

async fn search_by_product_status_text_and_days(db: ReadDb) {
    let Some(api) = Api::with_read_models(db).await else {
        return;
    };
    let staff = api.staff();
    let tokyo = api
        .place(&staff, &[("PRD-001", 1), ("PRD-002", 1)], "123 Main St", "Tokyo")
        .await;
    let paris = api
        .place(&staff, &[("PRD-002", 2)], "9 Rue de la Paix", "Paris")
        .await;
    let sale = api
        .place(&staff, &[("PRD-003", 1)], "50%_Off Avenue", "Kyoto")
        .await;
    let wild = api
        .place(&staff, &[("PRD-001", 1)], "50 X Off Avenue", "Kyoto")
        .await;
    api.set_status(&paris, "cancelled", &staff).await;
    api.shop.engine.wait_idle().await;
    let find = |query: &'static str| {
        let api = &api;
        let staff = staff.clone();
        async move { sorted(api.search_all(query, 100, &staff).await) }
    };

    assert_eq!(
        find("product=PRD-001").await,
        sorted(vec![tokyo.clone(), wild.clone()])
    );
    assert_eq!(
        find("product=PRD-002").await,
        sorted(vec![tokyo.clone(), paris.clone()])
    );
    // A code is matched whole: a prefix or a LIKE wildcard finds nothing.
    assert!(find("product=PRD-00").await.is_empty());
    assert!(find("product=PRD-00_").await.is_empty());
    assert!(find("product=%25").await.is_empty());
    // Codes are matched with their case, on SQLite as on PostgreSQL.
    assert!(find("product=prd-001").await.is_empty());
    assert_eq!(find("status=cancelled").await, [paris.as_str()]);
    assert_eq!(find("status=pending&product=PRD-002").await, [tokyo.as_str()]);
    // Text: any case, any part of the address; `%` and `_` match themselves.
    assert_eq!(find("q=MAIN%20st").await, [tokyo.as_str()]);
    assert_eq!(find("q=paris").await, [paris.as_str()]);
    assert_eq!(find("q=kyoto").await, sorted(vec![sale.clone(), wild.clone()]));
    assert_eq!(find("q=50%25_off").await, [sale.as_str()]);
    assert_eq!(find("q=%25").await, [sale.as_str()]);
    assert_eq!(find("q=100-0001").await.len(), 4);
    // Days: today's orders are all in today; none before, none after.
    let (yesterday, tomorrow) = around_today();
    let all = sorted(vec![tokyo, paris, sale, wild]);
    let staff_search = |query: String| {
        let api = &api;
        let staff = staff.clone();
        async move { sorted(api.search_all(&query, 100, &staff).await) }
    };
    assert_eq!(
        staff_search(format!("from={}&to={}", today(), today())).await,
        all
    );
    assert_eq!(staff_search(format!("from={yesterday}&to={tomorrow}")).await, all);
    assert!(staff_search(format!("to={yesterday}")).await.is_empty());
    assert!(staff_search(format!("from={tomorrow}")).await.is_empty());

    // A summary says what the order is.
    let (_, page) = api.get("/orders/search?status=cancelled", &staff).await;
    let summary = &page["items"][0];
    assert_eq!(summary["status"], "cancelled");
    assert_eq!(summary["products"], json!(["PRD-002"]));
    assert_eq!(decimal(&summary["total"]), Decimal::new(19690, 2));
    assert_eq!(summary["userId"], "staff-1");
}

async fn paging_walks_every_order_once_newest_first_and_bad_queries_are_refused(db: ReadDb) {
    let Some(api) = Api::with_read_models(db).await else {
        return;
    };
    let staff = api.staff();
    let mut placed = Vec::new();
    for n in 0..7 {
        let product = if n % 2 == 0 { "PRD-001" } else { "PRD-002" };
        placed.push(api.place(&staff, &[(product, 1)], "1 Main St", "Tokyo").await);
    }
    api.shop.engine.wait_idle().await;
    // One page of all: newest first (creation time, then code).
    let (_, page) = api.get("/orders/search?limit=100", &staff).await;
    let keys: Vec<(chrono::DateTime<Utc>, String)> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            let created: chrono::DateTime<Utc> = o["createdAt"].as_str().unwrap().parse().unwrap();
            (created, o["code"].as_str().unwrap().to_owned())
        })
        .collect();
    let mut newest_first = keys.clone();
    newest_first.sort_by(|a, b| b.cmp(a));
    assert_eq!(keys, newest_first);
    let full: Vec<String> = keys.into_iter().map(|(_, code)| code).collect();
    assert_eq!(sorted(full.clone()), sorted(placed.clone()));
    for limit in [1, 2, 3, 6, 7, 100] {
        let walked = api.search_all("", limit, &staff).await;
        assert_eq!(
            walked.iter().collect::<BTreeSet<_>>().len(),
            placed.len(),
            "limit {limit}: {walked:?}"
        );
        assert_eq!(walked, full, "limit {limit}: each once, in order");
    }
    let filtered = api.search_all("product=PRD-001", 2, &staff).await;
    assert_eq!(filtered.len(), 4);

    // Well formed, but no cursor of this server, or a range that ends
    // before it starts: 422.
    for (query, kind) in [
        ("cursor=nonsense", "invalid_cursor"),
        ("cursor=0a", "invalid_cursor"),
        ("from=2026-12-05&to=2026-12-04", "unprocessable"),
    ] {
        let (status, body) = api.get(&format!("/orders/search?{query}"), &staff).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (422, Some(kind)),
            "{query}: {body}"
        );
    }
    for query in [
        "limit=0",
        "limit=101",
        "limit=many",
        "status=lost",
        "from=2026-13-01",
        "q=",
        "q=%20%20",
        "product=",
        &format!("q={}", "x".repeat(101)),
        "colour=red",
    ] {
        let (status, body) = api.get(&format!("/orders/search?{query}"), &staff).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_input")),
            "{query}: {body}"
        );
    }
    for query in ["from=2026-12-05&to=2026-12-04", "from=2025-01-01&to=2026-01-02"] {
        let (status, body) = api.get(&format!("/reports/sales?{query}"), &staff).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (422, Some("unprocessable")),
            "{query}: {body}"
        );
    }
    for query in [
        "",
        "from=2026-12-01",
        "from=yesterday&to=2026-12-01",
        "from=2026-12-01&to=2026-12-01&extra=1",
    ] {
        let (status, body) = api.get(&format!("/reports/sales?{query}"), &staff).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_input")),
            "{query}: {body}"
        );
    }
    // 366 days, both ends included, is the longest report.
    let (status, _) = api
        .get("/reports/sales?from=2025-01-01&to=2026-01-01", &staff)
        .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_read_models_both_endpoints_answer_503_read_models_unavailable() {
    let api = Api::start(Shop::in_memory()).await;
    let staff = api.staff();
    for path in ["/reports/sales?from=2026-12-01&to=2026-12-05", "/orders/search"] {
        let (status, body) = api.get(path, &staff).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (503, Some("read_models_unavailable")),
            "{path}: {body}"
        );
    }
    // Roles come first: a customer is refused the report either way.
    let customer = api.token("cust", &["customer"]);
    let (status, _) = api
        .get("/reports/sales?from=2026-12-01&to=2026-12-05", &customer)
        .await;
    assert_eq!(status, 403);
}

async fn a_rebuild_yields_the_same_read_models(db: ReadDb) {
    let Some(api) = Api::with_read_models(db).await else {
        return;
    };
    let staff = api.staff();
    let mut codes = Vec::new();
    for n in 0..12u32 {
        let product = ["PRD-001", "PRD-002", "PRD-003"][n as usize % 3];
        codes.push(
            api.place(&staff, &[(product, 1 + n % 4)], "1 Main St", "Tokyo")
                .await,
        );
    }
    api.set_status(&codes[3], "cancelled", &staff).await;
    api.set_status(&codes[4], "confirmed", &staff).await;
    api.shop.engine.wait_idle().await;
    let (from, to) = around_today();
    let report = api.report(from, to).await;
    let search = api.search_all("", 5, &staff).await;
    let read_models = api.shop.read_models.clone().unwrap();

    let tenants = [TENANT.to_owned()];
    let mut calls = 0;
    let rebuilt = read_models
        .rebuild(ReadModel::Sales, &tenants, |p| {
            calls += 1;
            assert!(p.done <= p.total, "{p:?}");
        })
        .await
        .unwrap();
    assert_eq!((rebuilt.generation, rebuilt.replaced, rebuilt.rows), (2, 1, 12));
    assert_eq!(
        rebuilt.applied, 12,
        "every order is applied to the new generation"
    );
    assert!(calls >= 1);
    let rebuilt = read_models
        .rebuild(ReadModel::Search, &tenants, |_| {})
        .await
        .unwrap();
    assert_eq!((rebuilt.generation, rebuilt.rows), (2, 12));

    assert_eq!(api.report(from, to).await, report);
    assert_eq!(report, api.recomputed().await);
    assert_eq!(api.search_all("", 5, &staff).await, search);
    // And changes keep reaching the new generations.
    api.set_status(&codes[5], "cancelled", &staff).await;
    api.shop.engine.wait_idle().await;
    assert_eq!(api.report(from, to).await, api.recomputed().await);
    assert_eq!(api.search_all("status=cancelled", 5, &staff).await.len(), 2);
}

async fn a_rebuild_racing_new_orders_ends_equal_to_the_recomputation(db: ReadDb) {
    let Some(api) = Api::with_read_models(db).await else {
        return;
    };
    let staff = api.staff();
    for n in 0..20u32 {
        let product = if n % 2 == 0 { "PRD-001" } else { "PRD-002" };
        api.place(&staff, &[(product, 1)], "1 Main St", "Tokyo").await;
    }
    api.shop.engine.wait_idle().await;
    let read_models = api.shop.read_models.clone().unwrap();
    let projector = read_models.sales_projector().clone();
    // One row per batch: the rebuild takes many transactions, between which
    // new orders and cancellations land in both generations. (Polled side
    // by side in this task: a rebuild's future is not `Send`.)
    let mut batches = 0u64;
    let rebuild = projector
        .rebuild(Scope::tenants([TENANT]))
        .batch(1)
        .on_progress(|_| batches += 1)
        .run();
    let writes = async {
        let mut placed = Vec::new();
        for n in 0..20u32 {
            let product = if n % 2 == 0 { "PRD-002" } else { "PRD-001" };
            placed.push(api.place(&staff, &[(product, 2)], "1 Main St", "Tokyo").await);
            if n % 5 == 0 {
                api.set_status(&format!("ORD-{:06}", n + 1), "cancelled", &staff)
                    .await;
            }
        }
        placed
    };
    let (rebuilt, placed_during) = tokio::join!(rebuild, writes);
    let rebuilt = rebuilt.expect("rebuilt");
    api.shop.engine.wait_idle().await;
    assert_eq!(rebuilt.generation, 2);
    assert!(rebuilt.rows >= 20, "{rebuilt:?}");
    assert!(batches >= 20, "{batches} batches");
    assert_eq!(placed_during.len(), 20);
    let (from, to) = around_today();
    let report = api.report(from, to).await;
    assert_eq!(report, api.recomputed().await);
    let units: i64 = report.values().map(|(units, _)| units).sum();
    assert_eq!(units, 20 + 40 - 4, "four first-round orders cancelled");
    let lag = read_models
        .lag(ReadModel::Sales, &[TENANT.to_owned()])
        .await
        .unwrap();
    assert_eq!((lag.entities, lag.entities_behind), (40, 0), "{lag:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_document_states_the_endpoints_bounds_roles_and_answers() {
    let api = Api::start(Shop::in_memory()).await;
    let response = api
        .client
        .get(format!("{}/openapi.json", api.base))
        .send()
        .await
        .unwrap();
    let doc: Value = response.json().await.unwrap();
    let search = &doc["paths"]["/orders/search"]["get"];
    let report = &doc["paths"]["/reports/sales"]["get"];
    let parameter = |op: &Value, name: &str| -> Value {
        op["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("parameter {name}"))
            .clone()
    };
    let limit = parameter(search, "limit");
    assert_eq!(
        (
            limit["schema"]["minimum"].as_i64(),
            limit["schema"]["maximum"].as_i64()
        ),
        (Some(1), Some(100))
    );
    for name in ["product", "q"] {
        let text = parameter(search, name);
        assert_eq!(
            (
                text["schema"]["minLength"].as_i64(),
                text["schema"]["maxLength"].as_i64()
            ),
            (Some(1), Some(100)),
            "{name}"
        );
    }
    for name in ["from", "to"] {
        assert_eq!(parameter(report, name)["required"], true, "{name}");
        assert!(
            parameter(report, name)["schema"].to_string().contains("date"),
            "{name}"
        );
        assert!(
            parameter(search, name)["schema"].to_string().contains("date"),
            "{name}"
        );
    }
    assert!(report["description"]
        .as_str()
        .unwrap()
        .contains("Roles: `staff` only"));
    for op in [search, report] {
        for status in ["200", "400", "401", "403", "422", "500", "503"] {
            assert!(op["responses"].get(status).is_some(), "{status}: {op}");
        }
        let unavailable = op["responses"]["503"]["description"].as_str().unwrap();
        assert!(unavailable.contains("read_models_unavailable"), "{unavailable}");
        assert!(unavailable.contains("`unavailable`"), "{unavailable}");
        assert!(op["responses"]["503"]["headers"].get("Retry-After").is_some());
    }
    assert!(report["parameters"].to_string().contains("366"));
}

/// The read models' database gone (its pool closed): both endpoints answer
/// 503 `unavailable` with `Retry-After`, as for a storage outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_model_outage_is_a_503_worth_retrying() {
    let Some(api) = Api::with_read_models(ReadDb::Sqlite).await else {
        return;
    };
    let staff = api.staff();
    let (status, _) = api.get("/orders/search", &staff).await;
    assert_eq!(status, 200);
    api.shop
        .read_models
        .as_ref()
        .unwrap()
        .target()
        .pool()
        .close()
        .await;
    for path in ["/reports/sales?from=2026-12-01&to=2026-12-05", "/orders/search"] {
        let response = api
            .client
            .get(format!("{}{path}", api.base))
            .bearer_auth(&staff)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 503, "{path}");
        assert!(response.headers().get("retry-after").is_some(), "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "unavailable", "{path}: {body}");
    }
}
