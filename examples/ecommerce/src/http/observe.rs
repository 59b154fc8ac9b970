//! `GET /metrics`, `GET /health/live` and `GET /health/ready`: no token, as
//! `/health` (a scraper and a load balancer have none).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::error::ApiError;
use super::AppState;
use crate::observe::{Observe, ReadyReport};

impl axum::extract::FromRef<AppState> for Observe {
    fn from_ref(state: &AppState) -> Self {
        state.observe.clone()
    }
}

/// The operator's routes alone (`/metrics`, `/health`, `/health/live`,
/// `/health/ready`), for a process that serves no API (`ecommerce consume`).
pub fn ops_router(observe: Observe) -> axum::Router {
    use axum::routing::get;
    axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(live))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .fallback(super::handlers::not_found)
        .with_state(observe)
}

/// The content type of Prometheus' text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The process's metrics in Prometheus' text format: the framework's
/// (`cqrs_*`) and the example's (`ecommerce_*`). No token needed.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "meta",
    responses(
        (status = 200, description = "Prometheus text exposition format", content_type = "text/plain", body = String),
        (status = 404, description = "`not_found`: no metrics recorder in this process", body = super::ErrorBody),
    ),
)]
pub(crate) async fn metrics(State(observe): State<Observe>) -> Response {
    match observe.render() {
        Some(text) => ([(header::CONTENT_TYPE, PROMETHEUS_TEXT)], text).into_response(),
        None => ApiError::not_found("no metrics recorder in this process").into_response(),
    }
}

/// Whether the server is up (liveness: the same as `/health`). No token needed.
#[utoipa::path(
    get,
    path = "/health/live",
    tag = "meta",
    responses((status = 200, description = "The server is up", body = super::Health)),
)]
pub(crate) async fn live() -> Json<super::Health> {
    super::handlers::health().await
}

/// Whether the server can serve: its storage answers, its stream consumer
/// (if it runs one) holds or can take its leases, its read models are within
/// the lag bound (if one is set). Each check says why when it fails, or
/// that it does not apply. No token needed.
#[utoipa::path(
    get,
    path = "/health/ready",
    tag = "meta",
    responses(
        (status = 200, description = "Ready: every check passes", body = ReadyReport),
        (status = 503, description = "Not ready: a check fails (see its `reason`)", body = ReadyReport),
    ),
)]
pub(crate) async fn ready(State(observe): State<Observe>) -> (StatusCode, Json<ReadyReport>) {
    let report = observe.readiness().check().await;
    let status = if report.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report))
}
