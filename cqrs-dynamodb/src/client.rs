//! Building SDK clients: HTTPS with rustls on ring, the SDK's retries, and
//! timeouts on every request.

use std::time::Duration;

use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};

/// Attempts the SDK makes for a throttled or transient request before the
/// error reaches the framework (as a retryable backend error).
pub const SDK_MAX_ATTEMPTS: u32 = 5;

/// Longest wait for a TCP (and TLS) connection to DynamoDB: 3 seconds.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Longest time one attempt of a request may take, from sending it to the
/// end of its response: 5 seconds. A hung endpoint fails the attempt, which
/// the SDK retries like any transient failure (up to [`SDK_MAX_ATTEMPTS`]).
/// DynamoDB answers in milliseconds; a large transaction or query page in
/// well under a second.
pub const OPERATION_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest time one request may take, all its attempts and the waits between
/// them included: 20 seconds. Past it the call fails with a timeout (a
/// retryable backend error), so nothing waits forever on a hung endpoint.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(20);

/// The timeouts of every SDK client this crate builds: [`CONNECT_TIMEOUT`],
/// [`OPERATION_ATTEMPT_TIMEOUT`] and [`OPERATION_TIMEOUT`]. Give it to a
/// client built elsewhere with `.timeout_config(cqrs_dynamodb::timeout_config())`.
pub fn timeout_config() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_attempt_timeout(OPERATION_ATTEMPT_TIMEOUT)
        .operation_timeout(OPERATION_TIMEOUT)
        .build()
}

/// The HTTP client every SDK client of this crate uses: hyper with rustls on ring.
pub fn http_client() -> aws_sdk_dynamodb::config::SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

/// A DynamoDB client config builder for a local endpoint (DynamoDB Local):
/// static credentials, region `us-east-1`, standard retries
/// ([`SDK_MAX_ATTEMPTS`]) and this crate's [timeouts](timeout_config).
pub fn local_config(endpoint: &str) -> aws_sdk_dynamodb::config::Builder {
    aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("local", "local", None, None, "cqrs-dynamodb"))
        .retry_config(RetryConfig::standard().with_max_attempts(SDK_MAX_ATTEMPTS))
        .timeout_config(timeout_config())
        .http_client(http_client())
}

/// A DynamoDB client for a local endpoint, e.g. `http://127.0.0.1:8000`.
pub fn local_client(endpoint: &str) -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::from_conf(local_config(endpoint).build())
}

/// A DynamoDB Streams client for the same local endpoint, with the same
/// retries and [timeouts](timeout_config).
pub fn local_streams_client(endpoint: &str) -> aws_sdk_dynamodbstreams::Client {
    let config = aws_sdk_dynamodbstreams::Config::builder()
        .behavior_version(aws_sdk_dynamodbstreams::config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_sdk_dynamodbstreams::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodbstreams::config::Credentials::new(
            "local",
            "local",
            None,
            None,
            "cqrs-dynamodb",
        ))
        .retry_config(
            aws_sdk_dynamodbstreams::config::retry::RetryConfig::standard()
                .with_max_attempts(SDK_MAX_ATTEMPTS),
        )
        .timeout_config(timeout_config())
        .http_client(http_client())
        .build();
    aws_sdk_dynamodbstreams::Client::from_conf(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_have_timeouts() {
        let config = local_config("http://127.0.0.1:1").build();
        let timeouts = config
            .timeout_config()
            .cloned()
            .unwrap_or_else(TimeoutConfig::disabled);
        assert_eq!(timeouts.connect_timeout(), Some(CONNECT_TIMEOUT));
        assert_eq!(
            timeouts.operation_attempt_timeout(),
            Some(OPERATION_ATTEMPT_TIMEOUT)
        );
        assert_eq!(timeouts.operation_timeout(), Some(OPERATION_TIMEOUT));
    }
}
