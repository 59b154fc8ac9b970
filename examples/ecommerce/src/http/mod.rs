//! The storefront over HTTP (axum): the seed's endpoints, authenticated with
//! bearer JWTs, documented by an OpenAPI document.
//!
//! | Method | Path | Answer |
//! |--------|------|--------|
//! | POST | `/orders` | 201, the published order (`Idempotency-Key` honoured) |
//! | GET | `/orders?status=&limit=&cursor=` | 200, a page of orders |
//! | GET | `/orders/search?product=&status=&from=&to=&q=&limit=&cursor=` | 200, a page of matching orders (the order search read model) |
//! | GET | `/orders/{code}` | 200, the order |
//! | PATCH | `/orders/{code}/status` | 200, the order at its new version (`Idempotency-Key` honoured) |
//! | POST | `/products` | 201, the product |
//! | GET | `/products?limit=&cursor=` | 200, a page of products |
//! | GET | `/products/{code}` | 200, the product |
//! | PATCH | `/inventory/{productCode}` | 200, the inventory record |
//! | GET | `/inventory/{productCode}` | 200, the inventory record |
//! | GET | `/reports/sales?from=&to=` | 200, units and revenue per day and product (the sales report read model; staff only) |
//! | GET | `/health` | 200 `{"status":"ok"}`, no token |
//! | GET | `/health/live` | 200 `{"status":"ok"}` (liveness, as `/health`), no token |
//! | GET | `/health/ready` | 200 when ready, 503 when not: each check (`storage`, `stream_consumer`, `projections`) with `ok` and its `reason` ([`ReadyReport`](crate::observe::ReadyReport)), no token |
//! | GET | `/metrics` | 200, the process's metrics in Prometheus text format (404 without a recorder: [`crate::observe`]), no token |
//! | GET | `/openapi.json` | 200, the OpenAPI document, no token |
//! | GET | `/docs` | the API page (Swagger UI, [`docs`]): a token pasted in its **Authorize** dialog, requests tried from the browser; no token to load it |
//!
//! Every other endpoint needs `Authorization: Bearer <JWT>` (see
//! [`crate::auth`]); the tenant is the token's, only. Errors are JSON
//! `{"error": "<kind>", "message": "..."}` ([`ErrorBody`], the kinds are
//! [`ErrorKind`](crate::ErrorKind)): 400 `invalid_input` for a request that
//! breaks the document (malformed bodies and queries, a value outside its
//! rule), 401 `unauthorized`, 404 `not_found` (also for unknown routes and
//! other tenants' entities), 413 `too_large` for bodies over
//! [`MAX_BODY_BYTES`], 415 `unsupported_media_type`, and the services'
//! errors by [`ShopError::status_and_kind`](crate::ShopError::status_and_kind):
//! 422 for a request the document allows and the shop's data refuses
//! (`unprocessable`, `invalid_cursor`, `idempotency_key_reused`), 409 for a
//! conflict with what is stored.
//!
//! The document ([`document`]) states every rule the server checks on a
//! request and every status each operation answers: see the example's
//! README, "The API contract".
//!
//! `POST /orders` and `PATCH /orders/{code}/status` take an
//! `Idempotency-Key` header (the IETF draft's): a retry with the same key
//! and body does the work once and answers as the first request did; a
//! replayed `POST /orders` says so with `Idempotent-Replayed: true`.

mod bounds;
pub mod docs;
mod error;
mod extract;
mod handlers;
mod links;
mod model;
mod observe;

pub use observe::ops_router;

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::Method;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post, MethodRouter};
use axum::Router;
use tokio::net::TcpListener;
use tracing::Instrument as _;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

pub use error::ErrorBody;
pub use model::{
    Health, Inventory, Order, OrderListQuery, OrderPage, OrderSearchParams, Product, ProductListQuery,
    ProductPage, SalesReportQuery, StatusChange, Unreadable,
};

use self::bounds::Bounds;
use self::links::Links;
use crate::auth::Auth;
use crate::Shop;

/// The largest request body accepted: 64 KiB. A larger one is 413 `too_large`.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What every handler can reach.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) shop: Shop,
    pub(crate) auth: Auth,
    pub(crate) observe: crate::observe::Observe,
}

/// Every route of the API: its method, its path, whether it needs a token,
/// and its handler. The router is built from this table, and a test checks
/// it against the OpenAPI document both ways.
fn routes() -> Vec<(Method, &'static str, bool, MethodRouter<AppState>)> {
    use handlers::*;
    vec![
        (Method::POST, "/orders", true, post(create_order)),
        (Method::GET, "/orders", true, get(list_orders)),
        (Method::GET, "/orders/search", true, get(search_orders)),
        (Method::GET, "/orders/{code}", true, get(get_order)),
        (
            Method::PATCH,
            "/orders/{code}/status",
            true,
            patch(update_order_status),
        ),
        (Method::POST, "/products", true, post(create_product)),
        (Method::GET, "/products", true, get(list_products)),
        (Method::GET, "/products/{code}", true, get(get_product)),
        (
            Method::PATCH,
            "/inventory/{productCode}",
            true,
            patch(set_inventory),
        ),
        (Method::GET, "/inventory/{productCode}", true, get(get_inventory)),
        (Method::GET, "/reports/sales", true, get(sales_report)),
        (Method::GET, "/health", false, get(health)),
        (Method::GET, "/health/live", false, get(observe::live)),
        (Method::GET, "/health/ready", false, get(observe::ready)),
        (Method::GET, "/metrics", false, get(observe::metrics)),
        (Method::GET, docs::OPENAPI_PATH, false, get(openapi_json)),
    ]
}

/// The OpenAPI document of the API, served at `GET /openapi.json`.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "ecommerce",
        description = "The e-commerce example of the cqrs framework: orders, products and \
                       inventory of multi-tenant storefronts. Send `Authorization: Bearer <JWT>`; \
                       the shop is the token's `custom:tenant` claim."
    ),
    paths(
        handlers::create_order,
        handlers::list_orders,
        handlers::search_orders,
        handlers::get_order,
        handlers::update_order_status,
        handlers::create_product,
        handlers::list_products,
        handlers::get_product,
        handlers::set_inventory,
        handlers::get_inventory,
        handlers::sales_report,
        handlers::health,
        observe::live,
        observe::ready,
        observe::metrics,
        handlers::openapi_json,
    ),
    components(schemas(
        crate::services::NewOrder,
        crate::services::NewProduct,
        crate::services::SetInventory,
        crate::domain::OrderItem,
        crate::domain::Address,
        crate::domain::OrderStatus,
        crate::domain::Reservation,
        crate::domain::OrderAttributes,
        crate::domain::ProductAttributes,
        crate::domain::InventoryAttributes,
        Order,
        OrderPage,
        crate::read_models::OrderSummary,
        crate::read_models::OrderSearchPage,
        crate::read_models::SalesRow,
        Product,
        ProductPage,
        Unreadable,
        Inventory,
        StatusChange,
        Health,
        crate::observe::ReadyReport,
        crate::observe::Check,
        ErrorBody,
        crate::error::ErrorKind,
    )),
    modifiers(&BearerAuth, &Bounds, &BodyErrors, &ServerErrors, &Links),
    tags(
        (name = "orders", description = "Placing orders and moving them through their statuses"),
        (name = "products", description = "The catalogue"),
        (name = "inventory", description = "Stock"),
        (name = "reports", description = "Reports from the read models"),
        (name = "meta", description = "Health and this document"),
    )
)]
pub struct ApiDoc;

/// The OpenAPI document as `GET /openapi.json` serves it: [`ApiDoc`], as
/// JSON, spelled as OpenAPI spells it.
pub fn document() -> serde_json::Value {
    // Plain data (maps, strings, numbers): it always serializes.
    let mut document = serde_json::to_value(ApiDoc::openapi()).expect("the document serializes");
    links::spell_links(&mut document);
    document
}

/// An error answer of the document: `description`, and an [`ErrorBody`].
fn error_answer(description: impl Into<String>) -> utoipa::openapi::ResponseBuilder {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};

    let body = ContentBuilder::new()
        .schema(Some(Ref::from_schema_name("ErrorBody")))
        .build();
    ResponseBuilder::new()
        .description(description)
        .content("application/json", body)
}

/// Adds to every operation that reaches the shop (all but `meta`) the two
/// answers of a failed storage: 503, which a retry may get past, and 500,
/// which it will not.
struct ServerErrors;

impl Modify for ServerErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{HeaderBuilder, Type};

        let unavailable = error_answer(
            "`unavailable`: the storage is failing for now (throttling, an outage), or \
             `timeout`: no answer in time. A retry may succeed: wait `Retry-After` seconds, \
             and resend with the same `Idempotency-Key` where the operation takes one",
        )
        .header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(utoipa::openapi::ObjectBuilder::new().schema_type(Type::Integer))
                .description(Some("Seconds to wait before retrying"))
                .build(),
        )
        .build();
        let internal = error_answer(
            "`internal`: the storage refused the request for good; a retry would fail the same way",
        )
        .build();
        for operation in bounds::operations(openapi) {
            if operation.tags.iter().flatten().any(|tag| tag == "meta") {
                continue;
            }
            let responses = &mut operation.responses.responses;
            // An operation's own 503 (a cause of its own) keeps its
            // description, followed by the storage's.
            let own = match responses.get("503") {
                Some(utoipa::openapi::RefOr::T(own)) => Some(own.description.clone()),
                _ => None,
            };
            let mut answer = unavailable.clone();
            if let Some(own) = own {
                answer.description = format!("{own}. {}", answer.description);
            }
            responses.insert("503".to_owned(), answer.into());
            responses.insert("500".to_owned(), internal.clone().into());
        }
    }
}

/// Adds to every operation that takes a body the answers of a body the
/// server does not read ([`extract::ApiJson`]'s refusals, before the
/// handler runs): 413 over [`MAX_BODY_BYTES`], 415 when it is not JSON.
struct BodyErrors;

impl Modify for BodyErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let too_large = error_answer(format!(
            "`too_large`: the body is over {} KiB",
            MAX_BODY_BYTES / 1024
        ))
        .build();
        let not_json = error_answer(
            "`unsupported_media_type`: the body is not sent as `Content-Type: application/json`",
        )
        .build();
        for operation in bounds::operations(openapi) {
            if operation.request_body.is_some() {
                let responses = &mut operation.responses.responses;
                responses.insert("413".to_owned(), too_large.clone().into());
                responses.insert("415".to_owned(), not_json.clone().into());
            }
        }
    }
}

/// Declares the `bearer` security scheme (a JWT) the operations refer to.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// How long a request may take by default before it is answered 503
/// `timeout` ([`router_with_timeout`]).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The API over `shop`, authenticating with `auth`: state applied, ready to
/// serve (`axum::serve(listener, router(shop, auth))`), with the
/// [`DEFAULT_REQUEST_TIMEOUT`].
pub fn router(shop: Shop, auth: Auth) -> Router {
    router_with_timeout(shop, auth, DEFAULT_REQUEST_TIMEOUT)
}

/// [`router`], answering a request that takes longer than `request_timeout`
/// (storage that hangs, say) with 503 `timeout`. The work of a publish the
/// request started goes on: the framework finishes what it wrote.
pub fn router_with_timeout(shop: Shop, auth: Auth, request_timeout: Duration) -> Router {
    let observe = crate::observe::Observe::new(None, crate::observe::Readiness::new(&shop));
    router_observed(shop, auth, request_timeout, observe)
}

/// [`router_with_timeout`], with `/metrics` and `/health/ready` answered
/// from `observe` (the process's metrics recorder and readiness checks).
pub fn router_observed(
    shop: Shop,
    auth: Auth,
    request_timeout: Duration,
    observe: crate::observe::Observe,
) -> Router {
    let mut app = Router::new();
    for (_, path, _, handler) in routes() {
        app = app.route(path, handler);
    }
    app.merge(docs::routes())
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .fallback(handlers::not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            time_limit(request_timeout, request, next)
        }))
        .layer(middleware::from_fn(log_request))
        .with_state(AppState { shop, auth, observe })
}

/// Answers 503 `timeout` when the request takes longer than `limit`.
async fn time_limit(limit: Duration, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => error::ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            crate::error::ErrorKind::Timeout,
            format!("no answer within {limit:?}; the request may still take effect, retry with care"),
        )
        .into_response(),
    }
}

/// Logs each request (method, path, status and time taken), in a `request`
/// span named after its route that continues the caller's trace (its
/// `traceparent` header) when traces are exported.
async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |matched| matched.as_str());
    let span = tracing::info_span!(
        "request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = route,
        http.response.status_code = tracing::field::Empty,
    );
    let traceparent = request.headers().get("traceparent").and_then(|v| v.to_str().ok());
    cqrs_core::trace::continue_trace(&span, traceparent);
    let started = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    let elapsed = started.elapsed();
    if response.status().is_server_error() {
        tracing::warn!(%method, %path, status, ?elapsed, "request");
    } else {
        tracing::info!(%method, %path, status, ?elapsed, "request");
    }
    response
}

/// Serves the API on `listener` until the process ends.
pub async fn serve(listener: TcpListener, shop: Shop, auth: Auth) -> std::io::Result<()> {
    let app = router(shop, auth).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app).await
}

/// Serves the API on `listener` until `shutdown` completes, then lets the
/// requests in flight finish.
pub async fn serve_with_shutdown(
    listener: TcpListener,
    shop: Shop,
    auth: Auth,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_until(listener, router(shop, auth), shutdown).await
}

/// Serves `app` (a [`router`]) on `listener` until `shutdown` completes:
/// then it takes no new connection and lets the requests in flight finish
/// (each bounded by the router's request timeout).
pub async fn serve_until(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use serde_json::{json, Value};

    use super::*;

    fn routed() -> BTreeSet<(String, String)> {
        routes()
            .into_iter()
            .map(|(method, path, _, _)| (method.to_string(), path.to_owned()))
            .collect()
    }

    fn documented() -> BTreeSet<(String, String)> {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let mut found = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in [
                "get", "put", "post", "delete", "options", "head", "patch", "trace",
            ] {
                if item.get(method).is_some() {
                    found.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
        found
    }

    #[test]
    fn every_route_is_documented_and_every_documented_route_is_served() {
        let (routed, documented) = (routed(), documented());
        assert_eq!(routed.len(), routes().len(), "a route is listed twice");
        assert_eq!(
            routed.difference(&documented).collect::<Vec<_>>(),
            Vec::<&(String, String)>::new(),
            "routes missing from the OpenAPI document"
        );
        assert_eq!(
            documented.difference(&routed).collect::<Vec<_>>(),
            Vec::<&(String, String)>::new(),
            "documented paths that are not served"
        );
        // The seed's table, plus the reads a client needs.
        for (method, path) in [
            ("POST", "/orders"),
            ("GET", "/orders"),
            ("GET", "/orders/{code}"),
            ("PATCH", "/orders/{code}/status"),
            ("POST", "/products"),
            ("GET", "/products"),
            ("PATCH", "/inventory/{productCode}"),
        ] {
            assert!(
                routed.contains(&(method.to_owned(), path.to_owned())),
                "{method} {path}"
            );
        }
    }

    #[test]
    fn the_document_declares_the_bearer_scheme_on_protected_routes_only() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
        for (method, path, protected, _) in routes() {
            let op = &doc["paths"][path][method.as_str().to_lowercase()];
            let security = op["security"].as_array().cloned().unwrap_or_default();
            let wants_bearer = security.iter().any(|s| s.get("bearer").is_some());
            assert_eq!(wants_bearer, protected, "{method} {path}");
        }
    }

    #[test]
    fn the_document_states_the_roles_of_every_protected_operation() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        for (method, path, protected, _) in routes() {
            let op = &doc["paths"][path][method.as_str().to_lowercase()];
            let description = op["description"].as_str().unwrap_or_default();
            assert_eq!(
                description.contains("Roles:"),
                protected,
                "{method} {path}: {description}"
            );
            assert_eq!(op["responses"].get("403").is_some(), protected, "{method} {path}");
        }
    }

    #[test]
    fn the_document_declares_the_idempotency_key_where_it_is_honoured() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        for (method, path, _, _) in routes() {
            let op = &doc["paths"][path][method.as_str().to_lowercase()];
            let header = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["name"] == "Idempotency-Key");
            let honoured = matches!(
                (method.as_str(), path),
                ("POST", "/orders") | ("PATCH", "/orders/{code}/status")
            );
            assert_eq!(header.is_some(), honoured, "{method} {path}");
            if let Some(header) = header {
                assert_eq!(header["in"], "header", "{method} {path}");
                assert_ne!(header["required"], true, "{method} {path}: optional");
                assert!(op["responses"].get("422").is_some(), "{method} {path}");
            }
        }
        let replayed = &doc["paths"]["/orders"]["post"]["responses"]["201"]["headers"];
        assert!(replayed.get("Idempotent-Replayed").is_some(), "{replayed}");
    }

    /// A server on a free port over a fresh in-memory shop with the demo
    /// catalogue; its base URL, a token of shop-a and one of shop-b.
    async fn start() -> (String, String, String) {
        let shop = Shop::in_memory();
        for tenant in crate::shop::DEMO_TENANTS {
            shop.seed_demo(tenant).await.unwrap();
        }
        let auth = Auth::new(b"unit-test-secret-of-at-least-32-bytes");
        let a = auth.token("shop-a", "user-a", &["staff"], Duration::from_secs(600));
        let b = auth.token("shop-b", "user-b", &["staff"], Duration::from_secs(600));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(serve(listener, shop, auth));
        (url, a, b)
    }

    fn order_body() -> Value {
        json!({
            "customerId": "CUST-001",
            "items": [{ "productCode": "PRD-001", "name": "Wireless Mouse", "quantity": 2, "price": 29.99 }],
            "shippingAddress": { "street": "123 Main St", "city": "Tokyo", "postalCode": "100-0001", "country": "JP" },
            "paymentMethod": "credit_card"
        })
    }

    async fn error_of(response: reqwest::Response) -> (u16, String) {
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        assert!(body["message"].is_string(), "{body}");
        (status, body["error"].as_str().unwrap().to_owned())
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn every_protected_route_needs_a_token_and_public_ones_do_not() {
        let (url, _, _) = start().await;
        let client = reqwest::Client::new();
        for (method, path, protected, _) in routes() {
            let path = path.replace("{code}", "X-1").replace("{productCode}", "PRD-001");
            let response = client
                .request(method.clone(), format!("{url}{path}"))
                .send()
                .await
                .unwrap();
            if protected {
                assert_eq!(response.headers()["www-authenticate"], "Bearer");
                assert_eq!(
                    error_of(response).await,
                    (401, "unauthorized".to_owned()),
                    "{method} {path}"
                );
            } else {
                // This router has no metrics recorder: /metrics says so, without a token too.
                let expected = if path == "/metrics" { 404 } else { 200 };
                assert_eq!(response.status().as_u16(), expected, "{method} {path}");
            }
        }
        let bad = client
            .get(format!("{url}/orders"))
            .bearer_auth("garbage")
            .send()
            .await
            .unwrap();
        assert_eq!(error_of(bad).await, (401, "unauthorized".to_owned()));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn errors_are_json() {
        let (url, a, b) = start().await;
        let client = reqwest::Client::new();
        let post = |body: String| {
            client
                .post(format!("{url}/orders"))
                .bearer_auth(&a)
                .header("content-type", "application/json")
                .body(body)
        };

        let created = post(order_body().to_string()).send().await.unwrap();
        assert_eq!(created.status().as_u16(), 201);
        assert_eq!(created.headers()["location"], "/orders/ORD-000001");
        let order: Value = created.json().await.unwrap();
        assert_eq!(order["pk"], "TENANT#shop-a");
        assert_eq!(order["sk"], "ORDER#ORD-000001");
        assert_eq!(order["name"], "Order ORD-000001");
        assert_eq!(order["version"], 1);
        assert_eq!(order["attributes"]["total"], json!(65.98));

        let cases = [
            ("{", 400, "invalid_input"),
            ("[]", 400, "invalid_input"),
            (r#"{"customerId": "C"}"#, 400, "invalid_input"),
        ];
        for (body, status, kind) in cases {
            let response = post(body.to_owned()).send().await.unwrap();
            assert_eq!(error_of(response).await, (status, kind.to_owned()), "{body}");
        }
        let mut wrong_type = order_body();
        wrong_type["items"][0]["quantity"] = json!("two");
        let response = post(wrong_type.to_string()).send().await.unwrap();
        assert_eq!(error_of(response).await, (400, "invalid_input".to_owned()));

        let mut huge = order_body();
        huge["customerId"] = json!("x".repeat(MAX_BODY_BYTES));
        let response = post(huge.to_string()).send().await.unwrap();
        assert_eq!(error_of(response).await, (413, "too_large".to_owned()));

        let no_type = client
            .post(format!("{url}/orders"))
            .bearer_auth(&a)
            .body(order_body().to_string());
        let response = no_type.send().await.unwrap();
        assert_eq!(
            error_of(response).await,
            (415, "unsupported_media_type".to_owned())
        );

        for query in ["status=lost", "limit=many", "limit=0", "colour=red"] {
            let response = client
                .get(format!("{url}/orders?{query}"))
                .bearer_auth(&a)
                .send()
                .await
                .unwrap();
            assert_eq!(
                error_of(response).await,
                (400, "invalid_input".to_owned()),
                "{query}"
            );
        }

        // A cursor is opaque: the document allows any string, the server
        // only its own.
        let response = client
            .get(format!("{url}/orders?cursor=nonsense"))
            .bearer_auth(&a)
            .send()
            .await
            .unwrap();
        assert_eq!(error_of(response).await, (422, "invalid_cursor".to_owned()));

        let status = |code: &str, body: Value| {
            client
                .patch(format!("{url}/orders/{code}/status"))
                .bearer_auth(&a)
                .json(&body)
        };
        let response = status("ORD-000001", json!({ "status": "lost" }))
            .send()
            .await
            .unwrap();
        assert_eq!(error_of(response).await, (400, "invalid_input".to_owned()));
        let response = status("ORD-000001", json!({ "status": "shipped" }))
            .send()
            .await
            .unwrap();
        assert_eq!(error_of(response).await, (409, "invalid_transition".to_owned()));
        let response = status("ORD-000001", json!({ "status": "cancelled", "version": 7 }))
            .send()
            .await
            .unwrap();
        assert_eq!(error_of(response).await, (409, "version_conflict".to_owned()));

        // Another tenant's order does not exist for shop-b.
        let response = client
            .get(format!("{url}/orders/ORD-000001"))
            .bearer_auth(&b)
            .send()
            .await
            .unwrap();
        assert_eq!(error_of(response).await, (404, "not_found".to_owned()));

        let response = client
            .get(format!("{url}/nowhere"))
            .bearer_auth(&a)
            .send()
            .await
            .unwrap();
        assert_eq!(error_of(response).await, (404, "not_found".to_owned()));
        let response = client
            .delete(format!("{url}/orders"))
            .bearer_auth(&a)
            .send()
            .await
            .unwrap();
        assert_eq!(error_of(response).await, (405, "method_not_allowed".to_owned()));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn lists_page_with_a_cursor() {
        let (url, a, _) = start().await;
        let client = reqwest::Client::new();
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            // Cursors are URL-safe base64: no escaping needed.
            let query = cursor
                .as_ref()
                .map(|c| format!("&cursor={c}"))
                .unwrap_or_default();
            let request = client
                .get(format!("{url}/products?limit=2{query}"))
                .bearer_auth(&a);
            let page: Value = request.send().await.unwrap().json().await.unwrap();
            seen.extend(
                page["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p["code"].as_str().unwrap().to_owned()),
            );
            match page["cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        assert_eq!(seen, ["PRD-001", "PRD-002", "PRD-003"]);
    }
}
