//! Every error of the API as one JSON body: `{"error": "<kind>", "message": "..."}`.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::AuthError;
use crate::error::{ErrorKind, ShopError, RETRY_AFTER_SECONDS};

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for programs.
    pub error: ErrorKind,
    /// What went wrong, for people.
    pub message: String,
}

/// An error answer of the API.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    status: StatusCode,
    kind: ErrorKind,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
        }
    }

    pub(crate) fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorKind::InvalidInput, message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorKind::NotFound, message)
    }

    /// A rejection of axum's extractors, by its status: an over-long body is
    /// 413, a body that is not declared JSON 415, anything else 400.
    fn from_rejection(status: StatusCode, text: String) -> Self {
        match status {
            StatusCode::PAYLOAD_TOO_LARGE => Self::new(
                status,
                ErrorKind::TooLarge,
                format!("the request body is larger than {} bytes", super::MAX_BODY_BYTES),
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::new(
                status,
                ErrorKind::UnsupportedMediaType,
                "the request body must be JSON, with `Content-Type: application/json`",
            ),
            _ => Self::invalid_input(text),
        }
    }
}

impl From<ShopError> for ApiError {
    fn from(e: ShopError) -> Self {
        let (code, kind) = e.status_and_kind();
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!(error = %e, %kind, "request failed");
        }
        Self::new(status, kind, e.client_message())
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        tracing::debug!(error = %e, "request refused");
        Self::new(StatusCode::UNAUTHORIZED, ErrorKind::Unauthorized, e.to_string())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        Self::from_rejection(r.status(), r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::from_rejection(r.status(), r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        // A path that does not fit its parameters names nothing.
        Self::invalid_input(r.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.kind,
            message: self.message,
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        // Only a 503 invites a retry; a 500 is an error a retry repeats.
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::body::{to_bytes, Body};
    use axum::http::{header, Request, StatusCode};
    use cqrs_core::testing::{Fault, FaultyStorage, Rule};
    use cqrs_memory::InMemory;
    use tower::ServiceExt as _;

    use super::*;
    use crate::auth::Auth;
    use crate::Shop;

    const SECRET: &[u8] = b"unit-test-secret-of-at-least-32-bytes";

    /// `GET /products` of a seeded shop whose storage fails every call with
    /// `fault`: status, `Retry-After` and body.
    async fn list_products_when(fault: Fault) -> (StatusCode, Option<String>, ErrorBody) {
        let storage = Arc::new(FaultyStorage::new(Arc::new(InMemory::new())));
        let shop = Shop::new(storage.clone());
        shop.seed_demo("shop-a").await.unwrap();
        storage.inject(Rule::new(fault));
        let auth = Auth::new(SECRET);
        let token = auth.token("shop-a", "user-1", &["staff"], std::time::Duration::from_secs(60));
        let request = Request::get("/products")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        let response = crate::http::router(shop, auth).oneshot(request).await.unwrap();
        let status = response.status();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, retry_after, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn a_permanent_backend_error_is_internal_and_invites_no_retry() {
        let (status, retry_after, body) = list_products_when(Fault::Rejected).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(retry_after, None);
        assert_eq!(body.error, ErrorKind::Internal);
        assert!(body.message.starts_with("internal error"), "{}", body.message);
        assert!(
            body.message.contains("retrying will not help"),
            "{}",
            body.message
        );
        assert!(!body.message.contains("unavailable"), "{}", body.message);
    }

    #[tokio::test]
    async fn a_transient_backend_error_is_unavailable_with_retry_after() {
        let (status, retry_after, body) = list_products_when(Fault::Unavailable).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(retry_after, Some(RETRY_AFTER_SECONDS.to_string()));
        assert_eq!(body.error, ErrorKind::Unavailable);
        assert!(body.message.contains("retry in"), "{}", body.message);
    }
}
