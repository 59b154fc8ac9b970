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
/// an HTTP layer maps [`Error::NotFound`] to 404, [`Error::Conflict`] (and
/// [`Error::ConflictRetriesExhausted`]: see [`Error::is_conflict`]) to 409,
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

    /// A read-modify-write ([`Services::update_with`](crate::Services::update_with),
    /// `commit_with`) or a `Latest` publish met a version conflict on every
    /// one of its `attempts`: the entity is written faster than this writer
    /// can read and decide. Nothing was written by the last attempt. A
    /// conflict ([`Error::is_conflict`]): map it as one (409).
    #[error(
        "version conflict on {key}: expected {expected}, actual {}, still after {attempts} attempts (raise the conflict retry's max_attempts, or spread the writes: see hot entities)",
        DisplayActual(*.actual)
    )]
    ConflictRetriesExhausted {
        /// `pk#sk` of the entity of the last conflict.
        key: String,
        /// The version the last attempt expected.
        expected: ExpectedVersion,
        /// The version the last attempt found, `None` when the entity did
        /// not exist.
        actual: Option<u64>,
        /// Attempts made, each ended by a conflict.
        attempts: u32,
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
        /// The underlying error. Built with [`Error::backend`], a retryable
        /// error's is a [`TransientCause`] wrapping it (it displays as the
        /// error it wraps, which is its own `source()`); walk the chain of
        /// sources to find a backend's own error type.
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

    /// `true` for a version conflict: [`Error::Conflict`], or
    /// [`Error::ConflictRetriesExhausted`] when retries did not get past it.
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            Error::Conflict { .. } | Error::ConflictRetriesExhausted { .. }
        )
    }

    /// A conflict that ended a retry loop after `attempts` attempts, as
    /// [`Error::ConflictRetriesExhausted`]; any other error unchanged.
    pub(crate) fn after_conflict_retries(self, attempts: u32) -> Self {
        match self {
            Error::Conflict {
                key,
                expected,
                actual,
            }
            | Error::ConflictRetriesExhausted {
                key,
                expected,
                actual,
                ..
            } => Error::ConflictRetriesExhausted {
                key,
                expected,
                actual,
                attempts,
            },
            other => other,
        }
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

    /// Builds an [`Error::Backend`] from any error; a retryable one keeps it
    /// in a [`TransientCause`], so that it is recognised as transient even
    /// behind a `#[error(transparent)]` wrapper of the caller's own.
    pub fn backend(source: impl Into<BoxError>, retryable: bool) -> Self {
        let source = source.into();
        let source = if retryable && !source.is::<TransientCause>() {
            Box::new(TransientCause(source))
        } else {
            source
        };
        Error::Backend { source, retryable }
    }
}

/// The cause of a retryable [`Error::Backend`], marked as transient: what
/// [`Error::backend`] keeps as the `source` of a retryable error.
///
/// A handler's error is retried as transient when a retryable [`Error`] is
/// in its chain of sources. A user's error enum that wraps [`Error`] with
/// `#[error(transparent)]` forwards `source()` to the wrapped error's
/// source, so the chain skips the [`Error`] itself; this marker, its
/// source, is still in the chain, and [`TransientCause::in_chain`] finds
/// either. It displays as the error it wraps, which is its `source()`.
#[derive(Debug)]
pub struct TransientCause(BoxError);

impl TransientCause {
    /// The error it wraps (the backend's own).
    pub fn cause(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self.0.as_ref()
    }

    /// Whether `error`'s chain of sources, `error` included, holds a
    /// retryable [`Error`] or a [`TransientCause`]: whether the failure
    /// came from storage being unavailable for now.
    pub fn in_chain(error: &(dyn std::error::Error + 'static)) -> bool {
        let mut current = Some(error);
        while let Some(e) = current {
            if e.is::<TransientCause>() || e.downcast_ref::<Error>().is_some_and(Error::is_retryable) {
                return true;
            }
            current = e.source();
        }
        false
    }
}

impl fmt::Display for TransientCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for TransientCause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.0.as_ref())
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

    /// A user's error enum, as the guide writes it.
    #[derive(Debug, thiserror::Error)]
    enum UserError {
        #[error(transparent)]
        Cqrs(#[from] Error),
        #[error("out of stock")]
        OutOfStock,
    }

    #[test]
    fn a_retryable_error_is_found_through_a_transparent_wrapper() {
        use std::error::Error as _;

        let cause = std::io::Error::other("throttled");
        let wrapped = UserError::from(Error::backend(cause, true));
        // The wrapper forwards source() past the framework's error...
        assert!(wrapped.source().unwrap().downcast_ref::<Error>().is_none());
        // ...and the marker is still in the chain, with the cause behind it.
        assert!(TransientCause::in_chain(&wrapped));
        let marker = wrapped
            .source()
            .unwrap()
            .downcast_ref::<TransientCause>()
            .unwrap();
        assert!(marker.cause().is::<std::io::Error>());
        assert!(marker.source().unwrap().is::<std::io::Error>());

        let permanent = UserError::from(Error::backend(std::io::Error::other("bad request"), false));
        assert!(!TransientCause::in_chain(&permanent));
        assert!(!TransientCause::in_chain(&UserError::OutOfStock));
        assert!(!TransientCause::in_chain(&UserError::from(Error::invalid(
            "pk", "empty"
        ))));
    }

    #[test]
    fn a_retryable_error_displays_as_before() {
        let error = Error::backend("throttled", true);
        assert_eq!(error.to_string(), "backend error: throttled");
        // Built again from its own source: one marker, not two.
        let Error::Backend { source, .. } = error else {
            unreachable!()
        };
        let again = Error::backend(source, true);
        let Error::Backend { source, .. } = &again else {
            unreachable!()
        };
        assert!(source
            .downcast_ref::<TransientCause>()
            .unwrap()
            .cause()
            .downcast_ref::<TransientCause>()
            .is_none());
    }

    #[test]
    fn exhausted_conflict_retries_say_how_many_attempts_were_made() {
        let e = Error::Conflict {
            key: "TENANT#a#STOCK#1".into(),
            expected: ExpectedVersion::Exactly(7),
            actual: Some(9),
        }
        .after_conflict_retries(20);
        assert!(e.is_conflict());
        assert!(!e.is_retryable());
        assert!(
            e.to_string().starts_with(
                "version conflict on TENANT#a#STOCK#1: expected 7, actual 9, still after 20 attempts"
            ),
            "{e}"
        );
        assert!(matches!(e, Error::ConflictRetriesExhausted { attempts: 20, .. }));
        let other = Error::invalid("pk", "empty").after_conflict_retries(3);
        assert!(matches!(other, Error::InvalidInput { .. }));
    }

    #[test]
    fn only_retryable_backend_errors_are_retryable() {
        assert!(Error::backend("throttled", true).is_retryable());
        assert!(!Error::backend("bad request", false).is_retryable());
        assert!(!Error::invalid("pk", "empty").is_retryable());
    }
}
