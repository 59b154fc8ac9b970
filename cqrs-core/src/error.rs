//! The one error type every service of the framework returns.

use std::fmt;

use crate::model::ExpectedVersion;

/// A boxed error from a storage backend or a handler.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result alias used throughout the framework.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong when publishing, reading or numbering.
///
/// Variants are structured so callers can map them without parsing messages:
/// an HTTP layer maps [`Error::NotFound`] to 404, [`Error::Conflict`] to 409,
/// [`Error::InvalidInput`] to 400, [`Error::TenantViolation`] to 403 (or 404 to
/// hide existence), [`Error::TooLarge`] to 413, [`Error::IdempotencyKeyReused`]
/// to 422 and [`Error::Backend`] to 503 when [`Error::is_retryable`] says so.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The item or command does not exist.
    #[error("not found: {key}")]
    NotFound {
        /// `pk#sk` of the missing item (with `@version` for a command).
        key: String,
    },

    /// Optimistic concurrency check failed: the entity is not at the expected version.
    #[error("version conflict on {key}: expected {expected}, actual {}", DisplayActual(*.actual))]
    Conflict {
        /// `pk#sk` of the entity.
        key: String,
        /// The version the caller expected.
        expected: ExpectedVersion,
        /// The version found, `None` when the entity does not exist.
        actual: Option<u64>,
    },

    /// The input was rejected before anything was written.
    #[error("invalid {what}: {why}")]
    InvalidInput {
        /// Which part of the input (`pk`, `sk`, `cursor`, `format`, ...).
        what: String,
        /// Why it was rejected.
        why: String,
    },

    /// The caller's tenant may not touch a key of another tenant.
    #[error("tenant violation: caller of tenant '{caller_tenant}' may not access tenant '{key_tenant}'")]
    TenantViolation {
        /// Tenant of the invocation context.
        caller_tenant: String,
        /// Tenant the key belongs to.
        key_tenant: String,
    },

    /// An item, key or batch exceeds a limit of the storage.
    #[error("{what} too large: {size} > {limit}")]
    TooLarge {
        /// What was measured (`item`, `pk`, `sk`, `transaction`).
        what: String,
        /// The measured size (bytes, or items for a transaction).
        size: usize,
        /// The limit.
        limit: usize,
    },

    /// The idempotency key was used for another request (another
    /// fingerprint) within its retention: nothing was written.
    #[error("idempotency key '{key}' was used for another request (on {original})")]
    IdempotencyKeyReused {
        /// The key.
        key: String,
        /// `pk#sk@version` of the command its first request wrote.
        original: String,
    },

    /// The storage backend failed.
    #[error("backend error: {source}")]
    Backend {
        /// The underlying error.
        #[source]
        source: BoxError,
        /// Whether the same call may succeed when retried (throttling,
        /// transaction conflicts, 5xx).
        retryable: bool,
    },
}

impl Error {
    /// `true` when retrying the same call may succeed: a retryable backend error.
    ///
    /// A [`Error::Conflict`] is *not* retryable as such: the caller must re-read
    /// the entity and decide again.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Backend { retryable: true, .. })
    }

    /// `true` for a version conflict.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Conflict { .. })
    }

    /// `true` for a missing item.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }

    /// Builds an [`Error::NotFound`] for an entity.
    pub fn not_found(key: &crate::keys::EntityKey) -> Self {
        Error::NotFound { key: key.id() }
    }

    /// Builds an [`Error::InvalidInput`].
    pub fn invalid(what: impl Into<String>, why: impl Into<String>) -> Self {
        Error::InvalidInput {
            what: what.into(),
            why: why.into(),
        }
    }

    /// Builds an [`Error::Backend`] from any error.
    pub fn backend(source: impl Into<BoxError>, retryable: bool) -> Self {
        Error::Backend {
            source: source.into(),
            retryable,
        }
    }
}

struct DisplayActual(Option<u64>);

impl fmt::Display for DisplayActual {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(v) => write!(f, "{v}"),
            None => f.write_str("none (entity does not exist)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_message_names_both_versions() {
        let e = Error::Conflict {
            key: "TENANT#a#ORDER#1".into(),
            expected: ExpectedVersion::Exactly(2),
            actual: Some(3),
        };
        assert_eq!(
            e.to_string(),
            "version conflict on TENANT#a#ORDER#1: expected 2, actual 3"
        );
        assert!(e.is_conflict());
        assert!(!e.is_retryable());
    }

    #[test]
    fn only_retryable_backend_errors_are_retryable() {
        assert!(Error::backend("throttled", true).is_retryable());
        assert!(!Error::backend("bad request", false).is_retryable());
        assert!(!Error::invalid("pk", "empty").is_retryable());
    }
}
