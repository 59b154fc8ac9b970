//! Building SDK clients: HTTPS with rustls on ring, and the SDK's retries.

use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};

/// Attempts the SDK makes for a throttled or transient request before the
/// error reaches the framework (as a retryable backend error).
pub const SDK_MAX_ATTEMPTS: u32 = 5;

/// The HTTP client every SDK client of this crate uses: hyper with rustls on ring.
pub fn http_client() -> aws_sdk_dynamodb::config::SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

/// A DynamoDB client config builder for a local endpoint (DynamoDB Local):
/// static credentials, region `us-east-1`, standard retries.
pub fn local_config(endpoint: &str) -> aws_sdk_dynamodb::config::Builder {
    aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("local", "local", None, None, "cqrs-dynamodb"))
        .retry_config(RetryConfig::standard().with_max_attempts(SDK_MAX_ATTEMPTS))
        .http_client(http_client())
}

/// A DynamoDB client for a local endpoint, e.g. `http://127.0.0.1:8000`.
pub fn local_client(endpoint: &str) -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::from_conf(local_config(endpoint).build())
}

/// A DynamoDB Streams client for the same local endpoint.
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
        .http_client(http_client())
        .build();
    aws_sdk_dynamodbstreams::Client::from_conf(config)
}
