//! Shared by the DynamoDB tests: the endpoint, and fresh tables per test.

#![allow(dead_code)]

use std::io::Write as _;
use std::sync::Arc;

use cqrs_core::Storage;
use cqrs_dynamodb::{local_client, DynamoDbStorage, TableNames};

/// The variable naming the DynamoDB endpoint (DynamoDB Local in tests).
pub const ENDPOINT_VAR: &str = "DYNAMODB_ENDPOINT";
/// Set by `scripts/test` (and so by CI): a missing endpoint is a failure, not a skip.
pub const REQUIRE_VAR: &str = "CQRS_REQUIRE_DYNAMODB";

/// The endpoint, if one is configured.
pub fn endpoint() -> Option<String> {
    std::env::var(ENDPOINT_VAR).ok().filter(|e| !e.is_empty())
}

/// Whether DynamoDB tests can run. Without an endpoint they skip loudly under
/// plain `cargo test`, and fail under `scripts/test` and in CI, so that a
/// backend that was never tested can never pass as green.
pub fn available() -> bool {
    if endpoint().is_some() {
        return true;
    }
    let required = std::env::var_os(REQUIRE_VAR).is_some() || std::env::var_os("CI").is_some();
    assert!(
        !required,
        "{ENDPOINT_VAR} is not set, but DynamoDB tests are required here ({REQUIRE_VAR} or CI is set): \
         run them through ./scripts/test, which starts DynamoDB Local"
    );
    // Straight to the process's stderr: the test harness captures eprintln!.
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED: {ENDPOINT_VAR} is not set, so this DynamoDB test did not run. \
         Run ./scripts/test to start DynamoDB Local and run it. ***"
    );
    false
}

/// A unique table prefix for one test.
pub fn prefix(test: &str) -> String {
    format!("t-{test}-{}", uuid::Uuid::new_v4().simple())
}

/// Storage over freshly created tables of their own.
pub async fn fresh_storage(test: &str) -> DynamoDbStorage {
    let endpoint = endpoint().expect("checked by available()");
    let storage = DynamoDbStorage::new(local_client(&endpoint), TableNames::with_prefix(&prefix(test)));
    storage.ensure_tables().await.expect("tables created");
    storage
}

/// A conformance-suite factory: fresh tables for every check.
pub async fn fresh(test: &str) -> Arc<dyn Storage> {
    Arc::new(fresh_storage(test).await)
}
