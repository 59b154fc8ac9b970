//! A client generated from the OpenAPI document works against the server:
//! `openapi-python-client` turns the document (`ecommerce::http::document()`, served
//! at `GET /openapi.json`) into a Python package, and a script
//! (`tests/client/tour.py`) uses only that package to list, read and create
//! products, set stock, place an order as a customer, read it back, list
//! orders page by page, move the order through its statuses as staff, and
//! provoke the documented errors. Every answer must parse into the
//! generated model its status code documents.
//!
//! The tools come from `scripts/api-tools` (a Python virtual environment
//! with the pinned `openapi-python-client`): `eval "$(./scripts/api-tools)"`
//! sets `CQRS_API_TOOLS` to its `bin` folder. Without it, the test skips
//! loudly, or fails when `CQRS_REQUIRE_API_TOOLS` or `CI` is set
//! (`scripts/test` sets both).

mod api_tools;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use cqrs_core::InvocationContext;
use ecommerce::auth::Auth;
use ecommerce::domain::{OrderAttributes, OrderStatus};
use ecommerce::shop::DEMO_TENANTS;
use ecommerce::Shop;
use serde_json::Value;
use tokio::net::TcpListener;

use self::api_tools::api_tools;

const SECRET: &[u8] = b"client-test-secret-of-at-least-32-bytes";
/// The generated package's name (set in the generator's configuration).
const PACKAGE: &str = "ecommerce_client";

/// A folder of this test's own, removed when the test passes (a failed
/// test keeps it, with the document and the generated client, to look at).
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let dir =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("client-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn clean_up(self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Output's stdout and stderr, for a failure message.
fn shown(output: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Generates the client package from the document into `dir/ecommerce_client`,
/// with no post-processing (no formatter: the package is used as generated).
/// Fails on any warning: a schema the generator cannot turn into a model is
/// a schema a client of the API cannot use.
fn generate(tools: &Path, dir: &Path) {
    let doc = serde_json::to_string_pretty(&ecommerce::http::document()).unwrap();
    let doc_path = dir.join("openapi.json");
    std::fs::write(&doc_path, doc).unwrap();
    let config = dir.join("generator.yaml");
    std::fs::write(
        &config,
        format!("project_name_override: {PACKAGE}\npackage_name_override: {PACKAGE}\npost_hooks: []\n"),
    )
    .unwrap();
    let output = Command::new(tools.join("openapi-python-client"))
        .arg("generate")
        .arg("--path")
        .arg(&doc_path)
        .arg("--config")
        .arg(&config)
        .args(["--meta", "none", "--fail-on-warning"])
        .arg("--output-path")
        .arg(dir.join(PACKAGE))
        .output()
        .expect("running openapi-python-client");
    assert!(
        output.status.success(),
        "openapi-python-client failed on the document ({}):\n{}",
        doc_path.display(),
        shown(&output)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_generated_client_places_reads_lists_and_moves_an_order() {
    let Some(tools) = api_tools("openapi-python-client", "the generated client's test") else {
        return;
    };
    let started = Instant::now();
    let scratch = Scratch::new();
    let generating = {
        let (tools, dir) = (tools.clone(), scratch.0.clone());
        tokio::task::spawn_blocking(move || generate(&tools, &dir))
    };

    let shop = Shop::in_memory();
    for tenant in DEMO_TENANTS {
        shop.seed_demo(tenant).await.unwrap();
    }
    let auth = Auth::new(SECRET);
    let ttl = Duration::from_secs(600);
    let staff = auth.token("shop-a", "client-staff", &["staff"], ttl);
    let customer = auth.token("shop-a", "client-customer", &["customer"], ttl);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(ecommerce::http::serve(listener, shop.clone(), auth));

    if let Err(panic) = generating.await {
        std::panic::resume_unwind(panic.into_panic());
    }
    let tour = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/client/tour.py");
    let mut command = Command::new(tools.join("python"));
    command
        .arg(&tour)
        .args([
            "--url",
            &url,
            "--staff-token",
            &staff,
            "--customer-token",
            &customer,
        ])
        .env("PYTHONPATH", &scratch.0)
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let output = tokio::task::spawn_blocking(move || command.output().expect("running python"))
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "the tour failed (document and client kept in {}):\n{}",
        scratch.0.display(),
        shown(&output)
    );

    // The summary: the last line of stdout.
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary: Value = stdout
        .lines()
        .last()
        .and_then(|line| serde_json::from_str(line).ok())
        .unwrap_or_else(|| panic!("no JSON summary on the last line:\n{}", shown(&output)));
    let calls = &summary["calls"];
    let count = |operation: &str| calls[operation].as_u64().unwrap_or(0);
    // Every operation of the tour was called: the lists page by page (and
    // again while the pipeline catches up), the order polled until its stock
    // was reserved.
    for operation in [
        "health",
        "openapi_json",
        "list_products",
        "get_product",
        "set_inventory",
        "get_inventory",
        "get_order",
    ] {
        assert!(count(operation) >= 1, "{operation} not called: {summary}");
    }
    assert!(count("list_products") >= 2, "the products in pages: {summary}");
    // The pending orders one per page, the customer's, the shipped one.
    assert!(count("list_orders") >= 6, "the orders in pages: {summary}");
    // Refused to a customer, then created by staff.
    assert_eq!(count("create_product"), 2, "{summary}");
    // The order, its replay with the same Idempotency-Key, and two more.
    assert_eq!(count("create_order"), 4, "{summary}");
    // confirmed, processing, shipped, and the stale version refused.
    assert_eq!(count("update_order_status"), 4, "{summary}");
    let errors: Vec<&str> = summary["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("{summary}"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        errors,
        ["403 forbidden", "409 version_conflict", "404 not_found"],
        "{summary}"
    );
    let total: u64 = calls
        .as_object()
        .unwrap()
        .values()
        .filter_map(Value::as_u64)
        .sum();
    assert_eq!(summary["total"].as_u64(), Some(total), "{summary}");
    // The shop agrees: the order the tour moved is shipped, at the version
    // the tour last saw, with the customer as its owner.
    let code = summary["order"].as_str().unwrap_or_else(|| panic!("{summary}"));
    let staff_ctx = InvocationContext::new("shop-a", "check").with_roles(["staff"]);
    let order = shop.orders.get(code, &staff_ctx).await.unwrap();
    let attributes: OrderAttributes = serde_json::from_value(order.attributes.as_value().clone()).unwrap();
    assert_eq!(attributes.status, OrderStatus::Shipped, "{attributes:?}");
    assert_eq!(attributes.user_id, "client-customer", "{attributes:?}");
    assert_eq!(Some(order.version), summary["version"].as_u64(), "{summary}");
    shop.engine.wait_idle().await;
    let _ = writeln!(
        std::io::stderr(),
        "generated client test: {total} calls, {:.1?}",
        started.elapsed()
    );
    scratch.clean_up();
}
