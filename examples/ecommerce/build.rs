//! Sets `cfg(dynamodb_tests)` when this build's DynamoDB tests can run or
//! must: a DynamoDB endpoint is given (`DYNAMODB_ENDPOINT`), or DynamoDB is
//! required (`CQRS_REQUIRE_DYNAMODB` or `CI`, where a missing endpoint fails
//! the tests). Without it the DynamoDB tests are marked ignored, so that a
//! plain `cargo test` counts them as ignored in its summary instead of as
//! passed. (Left out of the published package, which has no tests.) And
//! `cfg(postgres_tests)` for the read models' PostgreSQL tests, the same way.

fn main() {
    postgres_tests();
    println!("cargo::rustc-check-cfg=cfg(dynamodb_tests)");
    for var in ["DYNAMODB_ENDPOINT", "CQRS_REQUIRE_DYNAMODB", "CI"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    let set = |var: &str| std::env::var_os(var).is_some_and(|value| !value.is_empty());
    if set("DYNAMODB_ENDPOINT") || set("CQRS_REQUIRE_DYNAMODB") || set("CI") {
        println!("cargo::rustc-cfg=dynamodb_tests");
    }
}

/// Sets `cfg(postgres_tests)` likewise for the read models' PostgreSQL
/// tests: a server is given (`CQRS_POSTGRES_URL`), or PostgreSQL is
/// required (`CQRS_REQUIRE_POSTGRES` or `CI`).
fn postgres_tests() {
    println!("cargo::rustc-check-cfg=cfg(postgres_tests)");
    for var in ["CQRS_POSTGRES_URL", "CQRS_REQUIRE_POSTGRES"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    let set = |var: &str| std::env::var_os(var).is_some_and(|value| !value.is_empty());
    if set("CQRS_POSTGRES_URL") || set("CQRS_REQUIRE_POSTGRES") || set("CI") {
        println!("cargo::rustc-cfg=postgres_tests");
    }
}
