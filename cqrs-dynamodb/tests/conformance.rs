//! The whole conformance suite against DynamoDB (DynamoDB Local in CI).
//! Without an endpoint (`DYNAMODB_ENDPOINT`, see `build.rs`) every check is
//! marked ignored, so a plain `cargo test` counts them as ignored.

mod common;

#[cfg(dynamodb_tests)]
cqrs_core::conformance_tests!(|| common::fresh("conformance"), guard = common::available());
#[cfg(not(dynamodb_tests))]
cqrs_core::conformance_tests!(
    || common::fresh("conformance"),
    ignore = "needs DynamoDB Local: run ./scripts/test"
);
