//! Mapping SDK errors to the framework's error, by error code, never by message.

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use cqrs_core::Error;

/// Error codes after which the same request may succeed: throttling,
/// transaction contention and server-side failures.
const RETRYABLE_CODES: &[&str] = &[
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
    "InternalServerError",
    "ServiceUnavailable",
    "TransactionConflictException",
    "TransactionInProgressException",
    "LimitExceededException",
];

/// Whether a DynamoDB error code names a transient condition.
pub(crate) fn is_retryable_code(code: &str) -> bool {
    RETRYABLE_CODES.contains(&code)
}

/// A backend error for any SDK error: transport failures, timeouts, 5xx and
/// the codes above are retryable; everything else is not.
pub(crate) fn sdk_error<E, R>(err: SdkError<E, R>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let retryable = match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => true,
        SdkError::ServiceError(service) => service.err().code().is_some_and(is_retryable_code),
        _ => false,
    };
    Error::backend(err, retryable)
}

/// A backend error for an item this crate could not read or write (a row
/// another program wrote in another shape, say).
pub(crate) fn shape_error(what: &str, err: impl std::fmt::Display) -> Error {
    Error::backend(format!("{what}: {err}"), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_contention_and_server_errors_are_retryable() {
        for code in [
            "ThrottlingException",
            "ProvisionedThroughputExceededException",
            "TransactionConflictException",
            "InternalServerError",
        ] {
            assert!(is_retryable_code(code), "{code}");
        }
        for code in [
            "ConditionalCheckFailedException",
            "ValidationException",
            "ResourceNotFoundException",
        ] {
            assert!(!is_retryable_code(code), "{code}");
        }
    }
}
