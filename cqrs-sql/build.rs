//! Sets `cfg(postgres_tests)` when this build's PostgreSQL tests can run or
//! must: a server is given (`CQRS_POSTGRES_URL`), or PostgreSQL is required
//! (`CQRS_REQUIRE_POSTGRES` or `CI`, where a missing server fails the
//! tests). Without it the PostgreSQL tests are marked ignored, so that a
//! plain `cargo test` counts them as ignored in its summary instead of as
//! passed. (Left out of the published package, which has no tests.)

fn main() {
    println!("cargo::rustc-check-cfg=cfg(postgres_tests)");
    for var in ["CQRS_POSTGRES_URL", "CQRS_REQUIRE_POSTGRES", "CI"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    let set = |var: &str| std::env::var_os(var).is_some_and(|value| !value.is_empty());
    if set("CQRS_POSTGRES_URL") || set("CQRS_REQUIRE_POSTGRES") || set("CI") {
        println!("cargo::rustc-cfg=postgres_tests");
    }
}
