//! The storefront's errors, each with the HTTP status it answers with.

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

impl ShopError {
    /// The HTTP status and the error kind of the JSON body.
    pub fn status_and_kind(&self) -> (u16, &'static str) {
        use cqrs_core::Error as E;
        match self {
            ShopError::InvalidInput(_) => (400, "invalid_input"),
            ShopError::Unprocessable(_) => (422, "unprocessable"),
            ShopError::InvalidTransition { .. } => (409, "invalid_transition"),
            ShopError::Forbidden(_) => (403, "forbidden"),
            ShopError::NotFound(_) => (404, "not_found"),
            ShopError::Conflict(_) => (409, "conflict"),
            ShopError::Unreadable { .. } => (409, "unreadable_row"),
            ShopError::ReadModelsUnavailable => (503, "read_models_unavailable"),
            ShopError::Core(e) => match e {
                E::NotFound { .. } => (404, "not_found"),
                // Never say that another tenant's item exists.
                E::TenantViolation { .. } => (404, "not_found"),
                E::Conflict { .. } | E::ConflictRetriesExhausted { .. } => (409, "version_conflict"),
                // A cursor is opaque: the document cannot tell one this
                // server issued from another string.
                E::InvalidInput { what, .. } if what == "cursor" => (422, "invalid_cursor"),
                E::InvalidInput { .. } => (400, "invalid_input"),
                E::TooLarge { .. } => (413, "too_large"),
                E::IdempotencyKeyReused { .. } => (422, "idempotency_key_reused"),
                e if e.is_retryable() => (503, "unavailable"),
                _ => (500, "internal"),
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

    #[test]
    fn every_conflict_is_409_and_a_backend_error_says_whether_a_retry_helps() {
        let spent = ShopError::Core(Error::ConflictRetriesExhausted {
            key: "TENANT#shop-a#INVENTORY#PRD-001".into(),
            expected: ExpectedVersion::Exactly(3),
            actual: Some(4),
            attempts: 20,
        });
        assert_eq!(spent.status_and_kind(), (409, "version_conflict"));
        assert!(spent.client_message().contains("still after 20 attempts"));

        let transient = ShopError::Core(Error::backend("throttled", true));
        assert_eq!(transient.status_and_kind(), (503, "unavailable"));
        let permanent = ShopError::Core(Error::backend("ValidationException", false));
        assert_eq!(permanent.status_and_kind(), (500, "internal"));
        assert!(permanent.client_message().contains("retrying will not help"));
        assert!(!permanent.client_message().contains("unavailable"));
    }
}
