//! The API keeps its OpenAPI document exactly: Schemathesis derives
//! requests from the document (its examples, every boundary and invalid
//! value of every rule, random valid and invalid data, and chains of
//! requests along the document's links), sends them to the storefront on
//! the memory backend, as a staff member and as a customer, and checks
//! every answer against the document with all its checks: no 5xx, every
//! status and header documented, every body of its schema, every request
//! the document allows accepted (or refused by the shop's data, a 422, or
//! for its size, a 413: see `schemathesis.toml`), every request it forbids
//! refused, created
//! resources readable. Any failure fails the test, with Schemathesis'
//! report of it.
//!
//! Schemathesis comes from `scripts/api-tools` (a pinned version in a
//! virtualenv; `scripts/test` runs it and sets `CQRS_API_TOOLS`). Without
//! it, the test skips loudly, or fails when `CQRS_REQUIRE_API_TOOLS` or
//! `CI` is set. The seed is fixed, so a failure replays; the examples per
//! operation are bounded, so the run takes a minute or two. A longer run
//! (more examples, DynamoDB) is in the example's README, "The API contract".

mod api_tools;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::middleware::{self, Next};
use ecommerce::auth::Auth;
use ecommerce::shop::DEMO_TENANTS;
use ecommerce::Shop;
use tokio::net::TcpListener;

use self::api_tools::api_tools;

const SECRET: &[u8] = b"contract-test-secret-of-at-least-32-bytes";
/// The seed of every run: the same requests each time.
const SEED: &str = "20261205";
/// Test cases per operation and phase (the coverage phase makes every
/// boundary case of the document whatever this is).
const MAX_EXAMPLES: &str = "100";

/// The storefront on a free port, over a fresh in-memory shop with the demo
/// catalogue and its read models (in SQLite, as `cargo run` has them); its
/// URL and the count of requests it has answered.
async fn start(auth: Auth) -> (String, Arc<AtomicUsize>) {
    let shop = Shop::in_memory_with_read_models().await.expect("a shop");
    for tenant in DEMO_TENANTS {
        shop.seed_demo(tenant).await.unwrap();
    }
    let answered = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&answered);
    let app = ecommerce::http::router(shop, auth).layer(middleware::from_fn(
        move |request: Request, next: Next| {
            let counter = Arc::clone(&counter);
            async move {
                let response = next.run(request).await;
                counter.fetch_add(1, Ordering::Relaxed);
                response
            }
        },
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, answered)
}

/// Runs Schemathesis with `token` against `url`; panics with its report
/// when it finds anything.
async fn schemathesis(tools: &Path, url: &str, token: &str, who: &str) {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemathesis.toml");
    let mut command = std::process::Command::new(tools.join("schemathesis"));
    command
        .arg("--config-file")
        .arg(&config)
        .args(["--no-color", "run"])
        .arg(format!("{url}/openapi.json"))
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--checks", "all"])
        .args(["--phases", "examples,coverage,fuzzing,stateful"])
        .args(["--seed", SEED, "--max-examples", MAX_EXAMPLES])
        // One worker: the same requests in the same order each run.
        .args(["--workers", "1"])
        // Whatever it writes (it should write nothing) lands out of the tree.
        .current_dir(std::env::temp_dir());
    // The server runs on this runtime's other worker meanwhile.
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("Schemathesis starts");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "Schemathesis found failures as {who} (seed {SEED}):\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for phase in ["Examples", "Coverage", "Fuzzing", "Stateful"] {
        assert!(
            report.contains(&format!("✅ {phase}")),
            "the {phase} phase did not pass as {who}:\n{report}"
        );
    }
    let summary = report
        .lines()
        .find(|line| line.contains("generated,"))
        .unwrap_or("(no summary)")
        .trim();
    eprintln!("Schemathesis as {who}: {summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_the_document_does_not_say() {
    let Some(tools) = api_tools("schemathesis", "the API contract test") else {
        return;
    };
    let auth = Auth::new(SECRET);
    let day = Duration::from_secs(24 * 3600);
    let staff = auth.token("shop-a", "contract-staff", &["staff"], day);
    let customer = auth.token("shop-a", "contract-customer", &["customer"], day);
    let (url, answered) = start(auth).await;

    let started = Instant::now();
    schemathesis(&tools, &url, &staff, "staff").await;
    let as_staff = answered.load(Ordering::Relaxed);
    schemathesis(&tools, &url, &customer, "customer").await;
    let total = answered.load(Ordering::Relaxed);
    eprintln!(
        "Schemathesis made {total} requests ({as_staff} as staff, {} as a customer) in {:.0?}, 0 failures",
        total - as_staff,
        started.elapsed()
    );
    // Each run sends at least the examples and boundaries of every
    // operation: far more than a few hundred requests.
    assert!(
        as_staff > 1_000 && total - as_staff > 1_000,
        "{as_staff} / {total}"
    );
}
