//! The storefront's errors, each with the HTTP status it answers with.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::OrderStatus;

/// Seconds a client should wait before retrying a request answered 503
/// (the `Retry-After` header).
pub const RETRY_AFTER_SECONDS: u64 = 2;

/// What can go wrong in the storefront.
#[derive(Debug, thiserror::Error)]
pub enum ShopError {
    /// The request is malformed: it breaks a rule the API document states
    /// (400).
    #[error("{0}")]
    InvalidInput(String),
    /// The request is well formed (the API document allows it), but the
    /// shop's rules refuse it: a line of an unknown, deleted or inactive
    /// product, a price that is not the catalogue's, a range that ends
    /// before it starts (422). The document cannot state these: they depend
    /// on the shop's data or on two fields together.
    #[error("{0}")]
    Unprocessable(String),
    /// The order cannot move from its current status to the one asked for
    /// (409: it conflicts with the order's state).
    #[error("cannot transition from {from} to {to}")]
    InvalidTransition {
        /// Current status.
        from: OrderStatus,
        /// Requested status.
        to: OrderStatus,
    },
    /// The caller's roles do not allow it (403).
    #[error("{0}")]
    Forbidden(String),
    /// Missing, or another tenant's (404: no existence leak).
    #[error("{0}")]
    NotFound(String),
    /// A version conflict or a business conflict such as stock (409).
    #[error("{0}")]
    Conflict(String),
    /// A stored row that does not read as what it was asked for: written by
    /// another program sharing the tables, its attributes are not an order
    /// (or a product) (409: the row must be repaired, a retry changes
    /// nothing).
    #[error("the stored {what} {pk} {sk} cannot be read: {reason}")]
    Unreadable {
        /// What it was read as ("order", "product").
        what: String,
        /// Its partition key.
        pk: String,
        /// Its sort key.
        sk: String,
        /// Why it does not read.
        reason: String,
    },
    /// This server has no read models (started without a read-model
    /// database): the report and the search cannot answer (503).
    #[error("the read models (sales report, order search) are not configured on this server")]
    ReadModelsUnavailable,
    /// The framework refused or failed, kept in the error's chain of
    /// sources, so that the pipeline sees a storage outage in a handler's
    /// error and retries it instead of recording a failure.
    #[error("{0}")]
    Core(#[from] cqrs_core::Error),
}

/// What went wrong, for programs: the `error` of every error body of the
/// API, with the status it comes with. The API document lists these values,
/// and only these: a client may match on them.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    ToSchema,
    strum::Display,
    strum::IntoStaticStr,
    strum::EnumIter,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum ErrorKind {
    /// 400: the request breaks a rule the API document states.
    InvalidInput,
    /// 401: no token, or not a valid one.
    Unauthorized,
    /// 403: the caller's roles do not allow it.
    Forbidden,
    /// 404: no such entity in the caller's shop, or no such route.
    NotFound,
    /// 405: the route exists, with other methods.
    MethodNotAllowed,
    /// 409: a business conflict (a product that exists, stock not reserved).
    Conflict,
    /// 409: the entity is not at the version the request names.
    VersionConflict,
    /// 409: the order's status machine does not allow the move.
    InvalidTransition,
    /// 409: the stored row is not what it should be (another program wrote it).
    UnreadableRow,
    /// 413: the body is too large.
    TooLarge,
    /// 415: the body is not sent as JSON.
    UnsupportedMediaType,
    /// 422: the document allows the request; the shop's rules refuse it.
    Unprocessable,
    /// 422: a `cursor` this server did not give for this query.
    InvalidCursor,
    /// 422: the `Idempotency-Key` was used for another request.
    IdempotencyKeyReused,
    /// 503 with `Retry-After`: the storage is failing for now.
    Unavailable,
    /// 503 with `Retry-After`: no answer in time.
    Timeout,
    /// 503: this server has no read models.
    ReadModelsUnavailable,
    /// 500: the storage refused the request for good.
    Internal,
}

impl ErrorKind {
    /// The name in the JSON body (`invalid_input`).
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

impl ShopError {
    /// The HTTP status and the error kind of the JSON body.
    pub fn status_and_kind(&self) -> (u16, ErrorKind) {
        use cqrs_core::Error as E;
        use ErrorKind as K;
        match self {
            ShopError::InvalidInput(_) => (400, K::InvalidInput),
            ShopError::Unprocessable(_) => (422, K::Unprocessable),
            ShopError::InvalidTransition { .. } => (409, K::InvalidTransition),
            ShopError::Forbidden(_) => (403, K::Forbidden),
            ShopError::NotFound(_) => (404, K::NotFound),
            ShopError::Conflict(_) => (409, K::Conflict),
            ShopError::Unreadable { .. } => (409, K::UnreadableRow),
            ShopError::ReadModelsUnavailable => (503, K::ReadModelsUnavailable),
            ShopError::Core(e) => match e {
                E::NotFound { .. } => (404, K::NotFound),
                // Never say that another tenant's item exists.
                E::TenantViolation { .. } => (404, K::NotFound),
                E::Conflict { .. } | E::ConflictRetriesExhausted { .. } => (409, K::VersionConflict),
                // A cursor is opaque: the document cannot tell one this
                // server issued from another string.
                E::InvalidInput { what, .. } if what == "cursor" => (422, K::InvalidCursor),
                E::InvalidInput { .. } => (400, K::InvalidInput),
                E::TooLarge { .. } => (413, K::TooLarge),
                E::IdempotencyKeyReused { .. } => (422, K::IdempotencyKeyReused),
                e if e.is_retryable() => (503, K::Unavailable),
                _ => (500, K::Internal),
            },
        }
    }

    /// The message for the client: a tenant violation reads as not found.
    pub fn client_message(&self) -> String {
        match self {
            ShopError::Core(cqrs_core::Error::TenantViolation { .. }) => "not found".to_owned(),
            // Not which entity the key was used on: that may be another
            // user's order.
            ShopError::Core(cqrs_core::Error::IdempotencyKeyReused { key, .. }) => format!(
                "the Idempotency-Key '{key}' was used for another request: send a new key with a new request"
            ),
            // What the storage said stays in the server's log (it names
            // tables and endpoints); the client learns whether a retry helps.
            ShopError::Core(e @ cqrs_core::Error::Backend { .. }) if e.is_retryable() => {
                tracing::error!(error = %e, "transient backend error");
                format!(
                    "the storage is temporarily unavailable: retry in {RETRY_AFTER_SECONDS} seconds \
                     (with the same Idempotency-Key, where the request takes one)"
                )
            }
            ShopError::Core(e @ cqrs_core::Error::Backend { .. }) => {
                tracing::error!(error = %e, "permanent backend error");
                "internal error: the storage refused the request, and would refuse it again; \
                 retrying will not help (the details are in the server's log)"
                    .to_owned()
            }
            other => other.to_string(),
        }
    }
}

impl From<crate::money::MoneyError> for ShopError {
    fn from(e: crate::money::MoneyError) -> Self {
        ShopError::InvalidInput(e.to_string())
    }
}

/// Result alias of the storefront.
pub type ShopResult<T> = Result<T, ShopError>;

#[cfg(test)]
mod tests {
    use cqrs_core::{Error, ExpectedVersion};

    use super::*;

    /// The body's name of a kind is its serde name: the document's enum.
    #[test]
    fn a_kind_is_written_as_its_name() {
        use strum::IntoEnumIterator as _;
        for kind in ErrorKind::iter() {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
    }

    #[test]
    fn every_conflict_is_409_and_a_backend_error_says_whether_a_retry_helps() {
        let spent = ShopError::Core(Error::ConflictRetriesExhausted {
            key: "TENANT#shop-a#INVENTORY#PRD-001".into(),
            expected: ExpectedVersion::Exactly(3),
            actual: Some(4),
            attempts: 20,
        });
        assert_eq!(spent.status_and_kind(), (409, ErrorKind::VersionConflict));
        assert!(spent.client_message().contains("still after 20 attempts"));

        let transient = ShopError::Core(Error::backend("throttled", true));
        assert_eq!(transient.status_and_kind(), (503, ErrorKind::Unavailable));
        let permanent = ShopError::Core(Error::backend("ValidationException", false));
        assert_eq!(permanent.status_and_kind(), (500, ErrorKind::Internal));
        assert!(permanent.client_message().contains("retrying will not help"));
        assert!(!permanent.client_message().contains("unavailable"));
    }
}
