//! Extractors whose every rejection is an [`ApiError`] JSON body, and the
//! caller, verified from its bearer token.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, MatchedPath, Path, Query, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::Json;
use cqrs_core::InvocationContext;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::AppState;
use crate::auth::AuthError;

/// The caller, from the verified `Authorization: Bearer <JWT>` header. The
/// tenant comes from the token only.
pub(crate) struct Caller(pub(crate) InvocationContext);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer_token(&parts.headers)?;
        let mut ctx = state.auth.verify(token)?;
        let route = parts
            .extensions
            .get::<MatchedPath>()
            .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned());
        ctx = ctx.with_source(format!("{} {route}", parts.method));
        if let Some(ConnectInfo(addr)) = parts.extensions.get::<ConnectInfo<SocketAddr>>() {
            ctx = ctx.with_source_ip(addr.ip().to_string());
        }
        Ok(Caller(ctx))
    }
}

/// The name of the header of an idempotent request (as in the IETF draft
/// "The Idempotency-Key HTTP Header Field").
pub(crate) const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The response header that marks the answer of an earlier request with the
/// same `Idempotency-Key`, given again.
pub(crate) const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// The request's `Idempotency-Key`, if it has one. Two of them are a 400;
/// the key itself (1 to 255 bytes of visible ASCII) is checked by the
/// framework, whose refusal is a 400 too.
pub(crate) struct IdempotencyKeyHeader(pub(crate) Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKeyHeader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let mut values = parts.headers.get_all(IDEMPOTENCY_KEY).iter();
        match (values.next(), values.next()) {
            (None, _) => Ok(IdempotencyKeyHeader(None)),
            (Some(value), None) => String::from_utf8(value.as_bytes().to_vec())
                .map(|key| IdempotencyKeyHeader(Some(key)))
                .map_err(|_| ApiError::invalid_input("the Idempotency-Key header is not text")),
            (Some(_), Some(_)) => Err(ApiError::invalid_input(
                "send one Idempotency-Key header, not several",
            )),
        }
    }
}

/// The token of the one `Authorization: Bearer <token>` header.
fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(AuthError::Missing);
    };
    let value = value
        .to_str()
        .map_err(|_| AuthError::Invalid("the Authorization header is not text".to_owned()))?;
    match value.trim().split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => {
            Ok(token.trim())
        }
        _ => Err(AuthError::Missing),
    }
}

/// A JSON body; malformed JSON, wrong types and missing fields are 400, a
/// body over the limit 413.
pub(crate) struct ApiJson<T>(pub(crate) T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(value) = Json::<T>::from_request(req, state).await?;
        Ok(ApiJson(value))
    }
}

/// Query parameters; unknown or malformed values are 400.
pub(crate) struct ApiQuery<T>(pub(crate) T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Query(value) = Query::<T>::from_request_parts(parts, state).await?;
        Ok(ApiQuery(value))
    }
}

/// Path parameters; a parameter that does not decode is 400.
pub(crate) struct ApiPath<T>(pub(crate) T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(value) = Path::<T>::from_request_parts(parts, state).await?;
        Ok(ApiPath(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn the_bearer_token_is_read_strictly() {
        let headers = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            }
            h
        };
        assert_eq!(bearer_token(&headers(&["Bearer abc"])), Ok("abc"));
        assert_eq!(bearer_token(&headers(&["bearer  abc "])), Ok("abc"));
        for bad in [
            &[][..],
            &["Basic abc"],
            &["Bearer"],
            &["Bearer   "],
            &["abc"],
            &["Bearer a", "Bearer b"],
        ] {
            assert_eq!(bearer_token(&headers(bad)), Err(AuthError::Missing), "{bad:?}");
        }
    }
}
