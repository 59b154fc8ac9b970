//! The API page: Swagger UI at [`DOCS_PATH`], over the document served at
//! [`OPENAPI_PATH`].
//!
//! Its assets are compiled into the binary (`utoipa-swagger-ui`'s `vendored`
//! feature), so the page works offline, and it asks nothing of any other
//! host: the online validator badge is off. The page needs no token; its
//! **Authorize** button takes one (the document declares the `bearer`
//! scheme), which the page then sends with every "Try it out" request, and
//! keeps in the browser's local storage across reloads.

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use utoipa_swagger_ui::{Config, SwaggerUi};

use super::AppState;

/// Where the page is served. `/docs` redirects to `/docs/`, the page itself;
/// its assets are under `/docs/`.
pub const DOCS_PATH: &str = "/docs";

/// Where the OpenAPI document is served, and where the page reads it from.
pub const OPENAPI_PATH: &str = "/openapi.json";

/// The page's routes: the page and its assets only. The document it shows is
/// the API's own route ([`OPENAPI_PATH`]), not a second copy.
pub(crate) fn routes() -> Router<AppState> {
    let config = Config::new([OPENAPI_PATH])
        // A pasted token survives a reload of the page.
        .persist_authorization(true)
        .display_request_duration(true)
        // No request to validator.swagger.io for a badge.
        .validator_url("none");
    Router::from(SwaggerUi::new(DOCS_PATH).config(config)).layer(middleware::from_fn(api_not_found))
}

/// A missing asset is the API's 404 `not_found` body, not Swagger UI's
/// empty one.
async fn api_not_found(request: Request, next: Next) -> Response {
    let (method, uri) = (request.method().clone(), request.uri().clone());
    let response = next.run(request).await;
    if response.status() == StatusCode::NOT_FOUND {
        return super::handlers::not_found(method, uri).await.into_response();
    }
    response
}

#[cfg(test)]
mod tests {
    use axum::body::{to_bytes, Body};
    use axum::http::{header, Request, StatusCode};
    use tower::ServiceExt as _;

    use crate::auth::Auth;
    use crate::Shop;

    async fn get(path: &str) -> (StatusCode, Option<String>, String) {
        let app = super::super::router(
            Shop::in_memory(),
            Auth::new(b"unit-test-secret-of-at-least-32-bytes"),
        );
        let response = app
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let location = response
            .headers()
            .get(header::LOCATION)
            .map(|l| l.to_str().unwrap().to_owned());
        let body = to_bytes(response.into_body(), 16 << 20).await.unwrap();
        (status, location, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn the_page_is_served_without_a_token() {
        let (status, location, _) = get("/docs").await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert_eq!(location.as_deref(), Some("/docs/"));
        let (status, _, page) = get("/docs/").await;
        assert_eq!(status, StatusCode::OK);
        assert!(page.contains("swagger-ui"), "{page}");
        for asset in [
            "swagger-ui.css",
            "swagger-ui-bundle.js",
            "swagger-ui-standalone-preset.js",
        ] {
            let (status, _, body) = get(&format!("/docs/{asset}")).await;
            assert_eq!(status, StatusCode::OK, "{asset}");
            assert!(!body.is_empty(), "{asset}");
        }
    }

    #[tokio::test]
    async fn the_page_reads_the_api_document_and_keeps_the_token() {
        let (status, _, initializer) = get("/docs/swagger-initializer.js").await;
        assert_eq!(status, StatusCode::OK);
        assert!(initializer.contains(r#""url": "/openapi.json""#), "{initializer}");
        assert!(
            initializer.contains(r#""persistAuthorization": true"#),
            "{initializer}"
        );
        assert!(initializer.contains(r#""validatorUrl": "none""#), "{initializer}");
        // The document is the API's route, served once.
        let (status, _, doc) = get("/openapi.json").await;
        assert_eq!(status, StatusCode::OK);
        assert!(doc.contains(r#""bearer""#), "{doc}");
    }

    /// The document says what the API answers on a failed storage: 503
    /// with `Retry-After` (a retry may help) and 500 (it will not), on every
    /// operation that reaches the shop, and not on the health check.
    #[tokio::test]
    async fn the_document_lists_the_answers_of_a_failed_storage() {
        let (_, _, doc) = get("/openapi.json").await;
        let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
        for (path, method) in [
            ("/orders", "post"),
            ("/orders/{code}/status", "patch"),
            ("/products", "get"),
        ] {
            let responses = &doc["paths"][path][method]["responses"];
            let unavailable = &responses["503"];
            assert!(
                unavailable["headers"]["Retry-After"].is_object(),
                "{path} {method}: {responses}"
            );
            assert!(unavailable["description"]
                .as_str()
                .unwrap()
                .contains("retry may succeed"));
            let internal = responses["500"]["description"].as_str().unwrap();
            assert!(internal.contains("would fail the same way"), "{internal}");
            assert!(!internal.contains("unavailable"), "{internal}");
        }
        assert!(doc["paths"]["/health"]["get"]["responses"]["503"].is_null());
    }

    #[tokio::test]
    async fn a_missing_asset_is_the_apis_404() {
        let (status, _, body) = get("/docs/no-such-file.js").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"], "not_found", "{body}");
    }
}
