//! Mapping SDK errors to the framework's error, by error code, never by
//! message, with a [`DynamoDbError`] as the source of every backend error
//! that came from the SDK.

use std::error::Error as StdError;
use std::fmt;

use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{BuildError, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::RequestId;
use cqrs_core::{BoxError, Error};

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

/// Cancellation reasons of a transaction after which the same transaction
/// may succeed: a race with another transaction, throttling (the reason
/// codes of a cancellation differ from DynamoDB's error codes).
const RETRYABLE_REASONS: &[&str] = &[
    "TransactionConflict",
    "ThrottlingError",
    "ProvisionedThroughputExceeded",
    "RequestLimitExceeded",
];

/// Whether a transaction's cancellation reason names a transient condition.
pub(crate) fn is_retryable_reason(code: &str) -> bool {
    RETRYABLE_REASONS.contains(&code) || is_retryable_code(code)
}

/// What went wrong with a DynamoDB (or DynamoDB Streams) request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DynamoDbErrorKind {
    /// DynamoDB answered with an error: it has a [code](DynamoDbError::code)
    /// (`ResourceNotFoundException`, `ValidationException`, ...), a message
    /// and, from AWS, a request id.
    Service,
    /// The request never got an answer: the endpoint could not be reached
    /// (connection refused, DNS, TLS) or the connection broke.
    Unreachable,
    /// The request ran out of time (the SDK's attempt or operation timeout).
    Timeout,
    /// DynamoDB answered, but the SDK could not read the answer.
    Response,
    /// The SDK could not build the request (bad configuration or input).
    Request,
}

/// The source of a [`cqrs_core::Error::Backend`] from a DynamoDB request:
/// what failed, structured, with a `Display` that says it in one line.
///
/// - a service error: `DynamoDB ResourceNotFoundException in PutItem:
///   Cannot do operations on a non-existent table (request id …)`;
/// - an unreachable endpoint: `could not reach DynamoDB for GetItem: tcp
///   connect error: Connection refused (os error 111)`;
/// - a timeout: `DynamoDB GetItem timed out: …`.
///
/// Find it with [`DynamoDbError::find`]: it is the backend error's
/// `source()`, behind a [`cqrs_core::TransientCause`] when the error is
/// retryable. The original SDK error is its own `source()`.
#[derive(Debug)]
#[non_exhaustive]
pub struct DynamoDbError {
    kind: DynamoDbErrorKind,
    operation: Option<String>,
    code: Option<String>,
    message: String,
    request_id: Option<String>,
    endpoint: Option<String>,
    retryable: bool,
    source: Option<BoxError>,
}

impl DynamoDbError {
    /// What kind of failure this is.
    pub fn kind(&self) -> DynamoDbErrorKind {
        self.kind
    }

    /// The operation that failed (`GetItem`, `TransactWriteItems`,
    /// `GetRecords`, ...), when known.
    pub fn operation(&self) -> Option<&str> {
        self.operation.as_deref()
    }

    /// The DynamoDB error code (`ResourceNotFoundException`,
    /// `ThrottlingException`, ...): present for a service error only.
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    /// DynamoDB's message for a service error; for any other failure, its
    /// cause chain in one line (`tcp connect error: Connection refused (os
    /// error 111)`).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The request id DynamoDB gave its answer (`x-amzn-RequestId`), the one
    /// AWS support asks for; `None` when no answer came back.
    pub fn request_id(&self) -> Option<&str> {
        self.request_id.as_deref()
    }

    /// The address of the DynamoDB endpoint, when the error names it (the
    /// SDK reports it only for a connection that was established).
    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }

    /// Whether the same request may succeed when retried: throttling,
    /// transaction conflicts, server errors (decided by code), timeouts and
    /// transport failures. The same answer as the backend error's
    /// [`is_retryable`](cqrs_core::Error::is_retryable).
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// The first `DynamoDbError` in `error`'s source chain, `error` itself
    /// included: `DynamoDbError::find(&backend_error)` on a
    /// [`cqrs_core::Error`].
    pub fn find<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a DynamoDbError> {
        let mut current = Some(error);
        while let Some(e) = current {
            if let Some(found) = e.downcast_ref::<DynamoDbError>() {
                return Some(found);
            }
            current = e.source();
        }
        None
    }

    /// The error for an SDK error, which it keeps as its source.
    fn from_sdk<E>(err: SdkError<E, HttpResponse>) -> Self
    where
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    {
        let operation = operation_name::<E>();
        let request_id = err
            .request_id()
            .or_else(|| err.as_service_error().and_then(|e| e.meta().request_id()))
            .map(str::to_owned);
        let (kind, code, message, endpoint, retryable) = match &err {
            SdkError::ServiceError(service) => {
                let meta = service.err().meta();
                let code = meta.code().map(str::to_owned);
                let message = match meta.message() {
                    Some(message) => message.to_owned(),
                    None => format!("HTTP {}", service.raw().status()),
                };
                let retryable = meta.code().is_some_and(is_retryable_code);
                (DynamoDbErrorKind::Service, code, message, None, retryable)
            }
            SdkError::DispatchFailure(failure) => {
                let connector = failure.as_connector_error();
                let endpoint = connector
                    .and_then(|c| c.connection_metadata())
                    .map(|m| m.remote_addr().map(|a| a.to_string()))
                    .and_then(|a| a);
                let message = match connector {
                    Some(c) if c.is_timeout() => format!("timed out: {}", chain(c.source())),
                    Some(c) => chain(c.source()),
                    None => chain(err.source()),
                };
                (DynamoDbErrorKind::Unreachable, None, message, endpoint, true)
            }
            SdkError::TimeoutError(_) => (DynamoDbErrorKind::Timeout, None, chain(err.source()), None, true),
            SdkError::ResponseError(response) => {
                let message = format!("HTTP {}: {}", response.raw().status(), chain(err.source()));
                (DynamoDbErrorKind::Response, None, message, None, true)
            }
            _ => (DynamoDbErrorKind::Request, None, chain(err.source()), None, false),
        };
        Self {
            kind,
            operation,
            code,
            message,
            request_id,
            endpoint,
            retryable,
            source: Some(Box::new(err)),
        }
    }
}

impl fmt::Display for DynamoDbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let operation = self.operation.as_deref();
        match self.kind {
            DynamoDbErrorKind::Service => {
                f.write_str("DynamoDB ")?;
                f.write_str(self.code.as_deref().unwrap_or("error"))?;
                if let Some(operation) = operation {
                    write!(f, " in {operation}")?;
                }
                write!(f, ": {}", self.message)?;
            }
            DynamoDbErrorKind::Unreachable => {
                f.write_str("could not reach DynamoDB")?;
                if let Some(endpoint) = &self.endpoint {
                    write!(f, " at {endpoint}")?;
                }
                if let Some(operation) = operation {
                    write!(f, " for {operation}")?;
                }
                write!(f, ": {}", self.message)?;
            }
            DynamoDbErrorKind::Timeout => {
                f.write_str("DynamoDB ")?;
                f.write_str(operation.unwrap_or("request"))?;
                write!(f, " timed out: {}", self.message)?;
            }
            DynamoDbErrorKind::Response => {
                f.write_str("unreadable DynamoDB response")?;
                if let Some(operation) = operation {
                    write!(f, " to {operation}")?;
                }
                write!(f, ": {}", self.message)?;
            }
            DynamoDbErrorKind::Request => {
                f.write_str("could not build the DynamoDB request")?;
                if let Some(operation) = operation {
                    write!(f, " for {operation}")?;
                }
                write!(f, ": {}", self.message)?;
            }
        }
        if let Some(id) = &self.request_id {
            write!(f, " (request id {id})")?;
        }
        Ok(())
    }
}

impl StdError for DynamoDbError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn StdError + 'static))
    }
}

/// The operation an SDK error type belongs to, from its name:
/// `aws_sdk_dynamodb::operation::get_item::GetItemError` is `GetItem`.
fn operation_name<E>() -> Option<String> {
    let name = std::any::type_name::<E>();
    if !name.contains("::operation::") {
        return None;
    }
    let last = name.rsplit("::").next()?;
    let operation = last.strip_suffix("Error")?;
    (!operation.is_empty()).then(|| operation.to_owned())
}

/// An error and its sources in one line, `a: b: c`, leaving out the
/// connection pool's wrapper (`client error (Connect)`) and any message the
/// line already carries (an error that prints its source).
fn chain(first: Option<&(dyn StdError + 'static)>) -> String {
    let mut line = String::new();
    let mut current = first;
    while let Some(e) = current {
        let text = e.to_string();
        let wrapper = text.starts_with("client error (") && e.source().is_some();
        if !text.is_empty() && !wrapper && !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
        current = e.source();
    }
    if line.is_empty() {
        line.push_str("no cause given");
    }
    line
}

/// A backend error for any SDK error, with a [`DynamoDbError`] as its
/// source: transport failures, timeouts, unreadable responses and the codes
/// above are retryable; everything else is not.
pub(crate) fn sdk_error<E>(err: SdkError<E, HttpResponse>) -> Error
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    let error = DynamoDbError::from_sdk(err);
    let retryable = error.retryable;
    Error::backend(error, retryable)
}

/// [`sdk_error`], retryable also when `retryable` says so: for a cancelled
/// transaction, whose reasons (`TransactionConflict`, throttling) decide.
pub(crate) fn sdk_error_retryable_if<E>(err: SdkError<E, HttpResponse>, retryable: bool) -> Error
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    let mut error = DynamoDbError::from_sdk(err);
    error.retryable |= retryable;
    let retryable = error.retryable;
    Error::backend(error, retryable)
}

/// A backend error for a request of `operation` the SDK's builders refused
/// (a required field missing): not retryable.
pub(crate) fn build_error(operation: &'static str) -> impl Fn(BuildError) -> Error + Copy {
    move |err| {
        let error = DynamoDbError {
            kind: DynamoDbErrorKind::Request,
            operation: Some(operation.to_owned()),
            code: None,
            message: err.to_string(),
            request_id: None,
            endpoint: None,
            retryable: false,
            source: Some(Box::new(err)),
        };
        Error::backend(error, false)
    }
}

/// A backend error for an item this crate could not read or write (a row
/// another program wrote in another shape, say).
pub(crate) fn shape_error(what: &str, err: impl std::fmt::Display) -> Error {
    Error::backend(format!("{what}: {err}"), false)
}

#[cfg(test)]
mod tests {
    use aws_sdk_dynamodb::error::ErrorMetadata;
    use aws_sdk_dynamodb::operation::get_item::GetItemError;
    use aws_smithy_runtime_api::client::result::ConnectorError;
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;

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

    /// A transaction cancelled for throttling names it with reason codes
    /// that are not error codes: they are transient too.
    #[test]
    fn cancellation_reasons_of_throttling_and_races_are_retryable() {
        for code in [
            "ThrottlingError",
            "ProvisionedThroughputExceeded",
            "RequestLimitExceeded",
            "TransactionConflict",
        ] {
            assert!(is_retryable_reason(code), "{code}");
        }
        for code in [
            "ConditionalCheckFailed",
            "ValidationError",
            "ItemCollectionSizeLimitExceeded",
            "None",
        ] {
            assert!(!is_retryable_reason(code), "{code}");
        }
    }

    fn response(status: u16, request_id: Option<&str>) -> HttpResponse {
        let mut response = HttpResponse::new(StatusCode::try_from(status).unwrap(), SdkBody::empty());
        if let Some(id) = request_id {
            response.headers_mut().insert("x-amzn-RequestId", id.to_owned());
        }
        response
    }

    fn service(code: &str, message: &str, request_id: Option<&str>) -> SdkError<GetItemError, HttpResponse> {
        let meta = ErrorMetadata::builder().code(code).message(message).build();
        SdkError::service_error(GetItemError::generic(meta), response(400, request_id))
    }

    /// The backend error's source, as this crate's error: itself for a
    /// permanent error, behind the transient marker for a retryable one.
    fn structured(error: &Error) -> &DynamoDbError {
        let mut source = StdError::source(error).expect("a source");
        if let Some(marker) = source.downcast_ref::<cqrs_core::TransientCause>() {
            assert!(error.is_retryable());
            source = StdError::source(marker).expect("the marked cause");
        }
        source.downcast_ref::<DynamoDbError>().expect("a DynamoDbError")
    }

    #[test]
    fn a_service_error_shows_code_message_and_request_id() {
        let error = sdk_error(service(
            "ResourceNotFoundException",
            "Requested resource not found",
            Some("REQ123"),
        ));
        assert_eq!(
            error.to_string(),
            "backend error: DynamoDB ResourceNotFoundException in GetItem: Requested resource not found \
             (request id REQ123)"
        );
        assert!(!error.is_retryable());
        let dynamo = structured(&error);
        assert_eq!(dynamo.kind(), DynamoDbErrorKind::Service);
        assert_eq!(dynamo.operation(), Some("GetItem"));
        assert_eq!(dynamo.code(), Some("ResourceNotFoundException"));
        assert_eq!(dynamo.message(), "Requested resource not found");
        assert_eq!(dynamo.request_id(), Some("REQ123"));
        assert!(!dynamo.is_retryable());
        assert!(std::ptr::eq(DynamoDbError::find(&error).unwrap(), dynamo));
        let sdk = StdError::source(dynamo).expect("the SDK error");
        assert!(sdk
            .downcast_ref::<SdkError<GetItemError, HttpResponse>>()
            .is_some());
    }

    #[test]
    fn a_service_error_is_retryable_by_code_only() {
        let throttled = sdk_error(service("ThrottlingException", "Rate exceeded", None));
        assert!(throttled.is_retryable());
        assert!(structured(&throttled).is_retryable());
        assert_eq!(
            throttled.to_string(),
            "backend error: DynamoDB ThrottlingException in GetItem: Rate exceeded"
        );
        // A message that sounds transient does not make an error retryable.
        let validation = sdk_error(service(
            "ValidationException",
            "Throttling: try again later",
            None,
        ));
        assert!(!validation.is_retryable());
    }

    #[test]
    fn an_unreachable_endpoint_shows_the_cause_chain_in_one_line() {
        let refused = std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        );
        let connect = ConnectError("tcp connect error", Box::new(refused));
        let client = ConnectError("client error (Connect)", Box::new(connect));
        let err: SdkError<GetItemError, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::io(Box::new(client)));
        let error = sdk_error(err);
        assert_eq!(
            error.to_string(),
            "backend error: could not reach DynamoDB for GetItem: tcp connect error: Connection refused (os error 111)"
        );
        assert!(error.is_retryable());
        let dynamo = structured(&error);
        assert_eq!(dynamo.kind(), DynamoDbErrorKind::Unreachable);
        assert_eq!(dynamo.code(), None);
        assert_eq!(dynamo.request_id(), None);
        assert_eq!(
            dynamo.message(),
            "tcp connect error: Connection refused (os error 111)"
        );
    }

    #[test]
    fn a_connect_timeout_says_it_timed_out() {
        let err: SdkError<GetItemError, HttpResponse> = SdkError::dispatch_failure(ConnectorError::timeout(
            "HTTP connect timeout occurred after 3s".into(),
        ));
        let error = sdk_error(err);
        assert_eq!(
            error.to_string(),
            "backend error: could not reach DynamoDB for GetItem: timed out: HTTP connect timeout occurred after 3s"
        );
        assert!(error.is_retryable());
    }

    #[test]
    fn a_timeout_names_the_operation_and_the_limit() {
        let err: SdkError<GetItemError, HttpResponse> =
            SdkError::timeout_error("operation timeout (all attempts including retries) occurred after 20s");
        let error = sdk_error(err);
        assert_eq!(
            error.to_string(),
            "backend error: DynamoDB GetItem timed out: operation timeout (all attempts including retries) \
             occurred after 20s"
        );
        assert!(error.is_retryable());
        assert_eq!(structured(&error).kind(), DynamoDbErrorKind::Timeout);
    }

    #[test]
    fn an_unreadable_response_shows_its_status_and_request_id() {
        let err: SdkError<GetItemError, HttpResponse> =
            SdkError::response_error("invalid JSON", response(200, Some("REQ9")));
        let error = sdk_error(err);
        assert_eq!(
            error.to_string(),
            "backend error: unreadable DynamoDB response to GetItem: HTTP 200: invalid JSON (request id REQ9)"
        );
        assert!(error.is_retryable());
        assert_eq!(structured(&error).request_id(), Some("REQ9"));
    }

    #[test]
    fn a_request_that_could_not_be_built_is_not_retryable() {
        let err: SdkError<GetItemError, HttpResponse> =
            SdkError::construction_failure("no region configured");
        let error = sdk_error(err);
        assert_eq!(
            error.to_string(),
            "backend error: could not build the DynamoDB request for GetItem: no region configured"
        );
        assert!(!error.is_retryable());
        assert_eq!(structured(&error).kind(), DynamoDbErrorKind::Request);
    }

    #[test]
    fn operation_names_come_from_the_error_type() {
        assert_eq!(operation_name::<GetItemError>().as_deref(), Some("GetItem"));
        assert_eq!(
            operation_name::<aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError>()
                .as_deref(),
            Some("TransactWriteItems")
        );
        assert_eq!(
            operation_name::<aws_sdk_dynamodbstreams::operation::get_records::GetRecordsError>().as_deref(),
            Some("GetRecords")
        );
        assert_eq!(operation_name::<std::io::Error>(), None);
    }

    /// An error with a message and a source, like hyper's.
    #[derive(Debug)]
    struct ConnectError(&'static str, BoxError);

    impl fmt::Display for ConnectError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl StdError for ConnectError {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(self.1.as_ref())
        }
    }
}
