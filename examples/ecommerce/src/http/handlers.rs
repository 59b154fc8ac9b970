//! The handlers: each reads the caller from its token, calls a service and
//! answers with the entity, a page of entities, or an error body.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiPath, ApiQuery, Caller, IdempotencyKeyHeader, IDEMPOTENT_REPLAYED};
use super::model::{
    cursor, Health, Inventory, Order, OrderListQuery, OrderPage, OrderSearchParams, Product,
    ProductListQuery, ProductPage, SalesReportQuery, StatusChange,
};
use super::AppState;
use crate::read_models::{OrderSearchPage, SalesRow};
use crate::services::{NewOrder, NewProduct, SetInventory};

/// 201 with a `Location` header and the created entity.
fn created<T: serde::Serialize>(location: String, body: T) -> Response {
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// Places an order.
///
/// Its lines must match the catalogue (active products, current prices). The
/// order is numbered `ORD-000001`, `ORD-000002`, ... per shop and published
/// asynchronously: the answer is the published command (version 1, status
/// `pending`, reservation `pending`); the pipeline then reserves its stock,
/// and `GET /orders/{code}` shows the reservation `reserved` or `failed`.
///
/// With an `Idempotency-Key`, retrying the request (after a timeout or a
/// lost answer) places the order once: while the key is held (24 hours),
/// the same request with the same key answers the first order again, with
/// `Idempotent-Replayed: true`, and places nothing. The key with another
/// body, or from another user of the shop, is a 422.
///
/// Roles: `staff` or `customer`; the order records the caller (`userId`, the token's `sub`).
#[utoipa::path(
    post,
    path = "/orders",
    tag = "orders",
    params(
        ("Idempotency-Key" = Option<String>, Header,
            description = "A unique key of this request (a UUID, say: 1 to 255 bytes of visible ASCII), \
                           so that a retry of it places the order once. Keys are per shop, held 24 hours."),
    ),
    request_body = NewOrder,
    responses(
        (status = 201, description = "Order placed (or, with a held `Idempotency-Key`, the order the first request placed)", body = Order,
            headers(
                ("Location" = String, description = "`/orders/{code}`"),
                ("Idempotent-Replayed" = String, description = "`true` when this is the answer of an earlier request with the same `Idempotency-Key`"),
            )),
        (status = 400, description = "`invalid_input`: a field breaks its rule in this document, or an invalid `Idempotency-Key`", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not allowed to this role (a token without `staff` or `customer`)", body = ErrorBody),
        (status = 409, description = "`unreadable_row`: a stored row it reads is not what it should be (another program wrote it); a retry reads the same row", body = ErrorBody),
        (status = 422, description = "`unprocessable`: a line's product is unknown, deleted or not for sale, or its price \
                                      is not the catalogue's; or `idempotency_key_reused`: the `Idempotency-Key` was used for another request", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn create_order(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    IdempotencyKeyHeader(key): IdempotencyKeyHeader,
    ApiJson(order): ApiJson<NewOrder>,
) -> Result<Response, ApiError> {
    let placed = state.shop.orders.place(order, key.as_deref(), &ctx).await?;
    let location = format!("/orders/{}", placed.order.code);
    let mut response = created(location, Order::from(placed.order));
    if placed.replayed {
        response
            .headers_mut()
            .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    } else {
        metrics::counter!(crate::observe::ORDERS_PLACED).increment(1);
    }
    Ok(response)
}

/// Lists the shop's orders, optionally of one status, a page at a time.
///
/// Roles: `staff` see every order of the shop; a `customer` sees only the orders they placed.
#[utoipa::path(
    get,
    path = "/orders",
    tag = "orders",
    params(OrderListQuery),
    responses(
        (status = 200, description = "A page of orders", body = OrderPage),
        (status = 400, description = "Invalid query: an unknown parameter, or a value that breaks its rule", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not allowed to this role (a token without `staff` or `customer`)", body = ErrorBody),
        (status = 422, description = "`invalid_cursor`: a `cursor` this server did not give for this query", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list_orders(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    ApiQuery(query): ApiQuery<OrderListQuery>,
) -> Result<Json<OrderPage>, ApiError> {
    let page = state
        .shop
        .orders
        .list(query.status, query.limit, cursor(query.cursor), &ctx)
        .await?;
    Ok(Json(page.into()))
}

/// Searches the shop's orders by product, status, creation day and
/// shipping address text, newest first (creation time, then code), a page
/// at a time.
///
/// Served by the order search read model, which follows the orders a
/// moment behind their writes (eventually consistent): an order just
/// placed or changed may be found as it was, or not yet, for that moment.
///
/// Roles: `staff` search every order of the shop; a `customer` only the orders they placed.
#[utoipa::path(
    get,
    path = "/orders/search",
    tag = "orders",
    params(OrderSearchParams),
    responses(
        (status = 200, description = "A page of matching orders", body = OrderSearchPage),
        (status = 400, description = "Invalid query: an unknown parameter, a malformed day or status, \
                                      `limit` out of bounds, `product` or `q` empty, blank or too long", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not allowed to this role (a token without `staff` or `customer`)", body = ErrorBody),
        (status = 422, description = "`unprocessable`: `from` after `to`; or `invalid_cursor`: a `cursor` this server did not give for this query", body = ErrorBody),
        (status = 503, description = "`read_models_unavailable`: this server was started without a read-model database \
                                      (retrying this server will not help); or, from the read-model database as from the storage", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn search_orders(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    ApiQuery(params): ApiQuery<OrderSearchParams>,
) -> Result<Json<OrderSearchPage>, ApiError> {
    Ok(Json(state.shop.search_orders(&params.into(), &ctx).await?))
}

/// The shop's sales per UTC day and product: units ordered and their
/// revenue (quantity × unit price, before tax), cancelled orders not
/// counted. An order counts on the day it was created. Days and products
/// without sales have no row.
///
/// Served by the sales report read model, which follows the orders a
/// moment behind their writes (eventually consistent).
///
/// Roles: `staff` only.
#[utoipa::path(
    get,
    path = "/reports/sales",
    tag = "reports",
    params(SalesReportQuery),
    responses(
        (status = 200, description = "The report's rows, by day then product", body = [SalesRow]),
        (status = 400, description = "Invalid query: `from` or `to` missing or not a `YYYY-MM-DD` day, or an unknown parameter", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not allowed to this role (a token without `staff`)", body = ErrorBody),
        (status = 422, description = "`unprocessable`: `from` after `to`, or more than 366 days", body = ErrorBody),
        (status = 503, description = "`read_models_unavailable`: this server was started without a read-model database \
                                      (retrying this server will not help); or, from the read-model database as from the storage", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn sales_report(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    ApiQuery(query): ApiQuery<SalesReportQuery>,
) -> Result<Json<Vec<SalesRow>>, ApiError> {
    Ok(Json(state.shop.sales_report(query.from, query.to, &ctx).await?))
}

/// One order of the shop.
///
/// Roles: `staff` read any order; a `customer` only their own (another's is a 404).
#[utoipa::path(
    get,
    path = "/orders/{code}",
    tag = "orders",
    params(("code" = String, Path, description = "Order code, e.g. `ORD-000001`", example = "ORD-000001")),
    responses(
        (status = 200, description = "The order", body = Order),
        (status = 400, description = "Invalid code", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not allowed to this role (a token without `staff` or `customer`)", body = ErrorBody),
        (status = 404, description = "No such order in this shop", body = ErrorBody),
        (status = 409, description = "`unreadable_row`: a stored row it reads is not what it should be (another program wrote it); a retry reads the same row", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn get_order(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    ApiPath(code): ApiPath<String>,
) -> Result<Json<Order>, ApiError> {
    Ok(Json(state.shop.orders.get(&code, &ctx).await?.into()))
}

/// Moves an order to another status, as the status machine allows:
/// pending → confirmed | cancelled, confirmed → processing | cancelled,
/// processing → shipped | cancelled, shipped → delivered. Confirming needs
/// the stock reserved. With `version`, the order must be at that version.
///
/// With an `Idempotency-Key`, a retry of the request answers what the first
/// one did (the order at the version it wrote), even though the status
/// machine would now refuse the same move, and writes nothing. The key with
/// another body, order or user is a 422.
///
/// Roles: `staff` make any move; a `customer` may only cancel their own order (another status is a 403, another's order a 404).
#[utoipa::path(
    patch,
    path = "/orders/{code}/status",
    tag = "orders",
    params(
        ("code" = String, Path, description = "Order code, e.g. `ORD-000001`", example = "ORD-000001"),
        ("Idempotency-Key" = Option<String>, Header,
            description = "A unique key of this request (1 to 255 bytes of visible ASCII), so that a retry \
                           of it moves the order once and gets the first answer. Keys are per shop, held 24 hours."),
    ),
    request_body = StatusChange,
    responses(
        (status = 200, description = "The order at its new version (with a held `Idempotency-Key`: at the version the first request wrote)", body = Order),
        (status = 400, description = "`invalid_input`: an unknown status, a field that breaks its rule, or an invalid `Idempotency-Key`", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not allowed to this role (a customer moving an order to other than cancelled)", body = ErrorBody),
        (status = 404, description = "No such order in this shop", body = ErrorBody),
        (status = 409, description = "`invalid_transition`: the status machine does not allow the move from the order's status; \
                                      `version_conflict`: the order is not at `version`; `conflict`: its stock is not reserved; \
                                      `unreadable_row`: a stored row it reads is not what it should be (another program wrote it); a retry reads the same row", body = ErrorBody),
        (status = 422, description = "`idempotency_key_reused`: the `Idempotency-Key` was used for another request", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn update_order_status(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    IdempotencyKeyHeader(key): IdempotencyKeyHeader,
    ApiPath(code): ApiPath<String>,
    ApiJson(change): ApiJson<StatusChange>,
) -> Result<Json<Order>, ApiError> {
    let item = state
        .shop
        .orders
        .update_status(&code, change.status, change.version, key.as_deref(), &ctx)
        .await?;
    Ok(Json(item.into()))
}

/// Adds a product to the catalogue (without stock: see `PATCH /inventory/{productCode}`).
///
/// Roles: `staff` only.
#[utoipa::path(
    post,
    path = "/products",
    tag = "products",
    request_body = NewProduct,
    responses(
        (status = 201, description = "Product created", body = Product,
            headers(("Location" = String, description = "`/products/{code}`"))),
        (status = 400, description = "Invalid product", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not allowed to this role (a token without `staff`)", body = ErrorBody),
        (status = 409, description = "A product with this code exists", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn create_product(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    ApiJson(product): ApiJson<NewProduct>,
) -> Result<Response, ApiError> {
    let item = state.shop.products.create(product, &ctx).await?;
    let location = format!("/products/{}", item.code);
    Ok(created(location, Product::from(item)))
}

/// Lists the shop's catalogue, a page at a time.
///
/// Roles: `staff` or `customer`.
#[utoipa::path(
    get,
    path = "/products",
    tag = "products",
    params(ProductListQuery),
    responses(
        (status = 200, description = "A page of products", body = ProductPage),
        (status = 400, description = "Invalid query: an unknown parameter, or a value that breaks its rule", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not allowed to this role (a token without `staff` or `customer`)", body = ErrorBody),
        (status = 422, description = "`invalid_cursor`: a `cursor` this server did not give for this query", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list_products(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    ApiQuery(query): ApiQuery<ProductListQuery>,
) -> Result<Json<ProductPage>, ApiError> {
    let page = state
        .shop
        .products
        .list(query.limit, cursor(query.cursor), &ctx)
        .await?;
    Ok(Json(page.into()))
}

/// One product of the shop.
///
/// Roles: `staff` or `customer`.
#[utoipa::path(
    get,
    path = "/products/{code}",
    tag = "products",
    params(("code" = String, Path, description = "Product code, e.g. `PRD-001`", example = "PRD-001")),
    responses(
        (status = 200, description = "The product", body = Product),
        (status = 400, description = "Invalid code", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not allowed to this role (a token without `staff` or `customer`)", body = ErrorBody),
        (status = 404, description = "No such product in this shop", body = ErrorBody),
        (status = 409, description = "`unreadable_row`: a stored row it reads is not what it should be (another program wrote it); a retry reads the same row", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn get_product(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    ApiPath(code): ApiPath<String>,
) -> Result<Json<Product>, ApiError> {
    Ok(Json(state.shop.products.get(&code, &ctx).await?.into()))
}

/// Sets the units on hand of a product (not below the units reserved),
/// creating its inventory record on first use. With `version`, the record
/// must be at that version.
///
/// Roles: `staff` only.
#[utoipa::path(
    patch,
    path = "/inventory/{productCode}",
    tag = "inventory",
    params(("productCode" = String, Path, description = "Product code, e.g. `PRD-001`", example = "PRD-001")),
    request_body = SetInventory,
    responses(
        (status = 200, description = "The inventory record at its new version", body = Inventory),
        (status = 400, description = "Invalid quantity or warehouse", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not allowed to this role (a token without `staff`)", body = ErrorBody),
        (status = 404, description = "No such product in this shop", body = ErrorBody),
        (status = 409, description = "`version_conflict`: the record is not at `version`; `conflict`: below the units reserved; \
                                      `unreadable_row`: a stored row it reads is not what it should be (another program wrote it); a retry reads the same row", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn set_inventory(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    ApiPath(product_code): ApiPath<String>,
    ApiJson(request): ApiJson<SetInventory>,
) -> Result<Json<Inventory>, ApiError> {
    Ok(Json(
        state
            .shop
            .inventory
            .set(&product_code, request, &ctx)
            .await?
            .into(),
    ))
}

/// The stock of a product: on hand, reserved, and reserved per order.
///
/// Roles: `staff` or `customer`.
#[utoipa::path(
    get,
    path = "/inventory/{productCode}",
    tag = "inventory",
    params(("productCode" = String, Path, description = "Product code, e.g. `PRD-001`", example = "PRD-001")),
    responses(
        (status = 200, description = "The inventory record", body = Inventory),
        (status = 400, description = "Invalid code", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not allowed to this role (a token without `staff` or `customer`)", body = ErrorBody),
        (status = 404, description = "No inventory for this product in this shop", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn get_inventory(
    State(state): State<AppState>,
    Caller(ctx): Caller,
    ApiPath(product_code): ApiPath<String>,
) -> Result<Json<Inventory>, ApiError> {
    Ok(Json(state.shop.inventory.get(&product_code, &ctx).await?.into()))
}

/// Whether the server is up. No token needed.
#[utoipa::path(
    get,
    path = "/health",
    tag = "meta",
    responses((status = 200, description = "The server is up", body = Health)),
)]
pub(crate) async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".to_owned(),
    })
}

/// This document. No token needed.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "meta",
    responses((status = 200, description = "The OpenAPI document", body = Object, content_type = "application/json")),
)]
pub(crate) async fn openapi_json() -> Json<serde_json::Value> {
    Json(super::document())
}

/// No such route.
pub(crate) async fn not_found(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route for {method} {}", uri.path()))
}

/// A route that exists, with another method.
pub(crate) async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        crate::error::ErrorKind::MethodNotAllowed,
        format!("{method} is not allowed on {}", uri.path()),
    )
}
