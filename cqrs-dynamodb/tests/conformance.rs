//! The whole conformance suite against DynamoDB (DynamoDB Local in CI).

mod common;

cqrs_core::conformance_tests!(|| common::fresh("conformance"), guard = common::available());
