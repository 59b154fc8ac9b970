//! The operator's toolbox from the command line, on DynamoDB Local: an
//! order whose stock handler failed for real (a wrapper fails it while "the
//! stock service is down") is listed, shown, dry-run, reprocessed by the
//! binary — its stock gets reserved — and a second reprocess finds it done;
//! `rebuild`, `lag` and `leases` answer JSON that agrees with the tables.

mod common;

use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use common::*;
use cqrs_core::{
    tenant_pk, AsyncDispatch, BoxError, CommandService, CommandStatus, DataSyncEvent, DataSyncHandler,
    EntityKey, Interest, InvocationContext,
};
use cqrs_dynamodb::{local_client, DynamoDbStorage, TableNames};
use ecommerce::services::NewOrder;
use ecommerce::shop::{ShopConfig, ShopParts};
use ecommerce::Shop;
use serde_json::{json, Value};

/// Fails the order handler while `down` is set, as a stock service that is
/// down would; counts its runs.
struct StockServiceDown {
    inner: Arc<dyn DataSyncHandler>,
    down: Arc<AtomicBool>,
    runs: Arc<AtomicU32>,
}

#[async_trait]
impl DataSyncHandler for StockServiceDown {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn interest(&self) -> Interest {
        self.inner.interest()
    }

    async fn handle(&self, event: &DataSyncEvent) -> Result<(), BoxError> {
        if self.inner.name() == "order-sync" {
            self.runs.fetch_add(1, Ordering::SeqCst);
            if self.down.load(Ordering::SeqCst) {
                return Err("stock service unavailable (injected)".into());
            }
        }
        self.inner.handle(event).await
    }
}

/// The binary on the test's tables, with `args`; its output.
fn toolbox(endpoint: &str, prefix: &str, args: &[&str]) -> Output {
    Command::new(binary())
        .args(["--backend", "dynamodb", "--dynamodb-endpoint", endpoint])
        .args(["--table-prefix", prefix, "--read-db", &read_db(prefix)])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("the binary runs")
}

/// `args` with `--json`, expected to succeed: its one JSON document.
fn json_of(endpoint: &str, prefix: &str, args: &[&str]) -> Value {
    let args: Vec<&str> = args.iter().copied().chain(["--json"]).collect();
    let out = toolbox(endpoint, prefix, &args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{args:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{args:?} printed no JSON document ({e}):\n{stdout}"))
}

fn new_order() -> NewOrder {
    serde_json::from_value(json!({
        "customerId": "CUST-TOOLBOX",
        "items": [{"productCode": "PRD-002", "name": "Mechanical Keyboard", "quantity": 2, "price": 89.50}],
        "shippingAddress": {"street": "1 Secret Lane", "city": "Tokyo", "postalCode": "100-0001", "country": "JP"},
        "paymentMethod": "credit_card"
    }))
    .expect("a valid order")
}

#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test(flavor = "multi_thread")]
async fn toolbox_lists_shows_and_reprocesses_a_failed_command() {
    let Some(endpoint) = dynamodb() else { return };
    let prefix = prefix("toolbox");
    let started = chrono::Utc::now();

    // The shop of the test, its order handler failing for real.
    let storage = DynamoDbStorage::new(
        local_client(&endpoint),
        ecommerce::shop::dynamodb_tables(TableNames::with_prefix(&prefix)),
    );
    storage.ensure_tables().await.expect("tables");
    let down = Arc::new(AtomicBool::new(true));
    let runs = Arc::new(AtomicU32::new(0));
    let (wrap_down, wrap_runs) = (down.clone(), runs.clone());
    let parts = ShopParts {
        wrap_handler: Some(Arc::new(move |inner| {
            Arc::new(StockServiceDown {
                inner,
                down: wrap_down.clone(),
                runs: wrap_runs.clone(),
            }) as Arc<dyn DataSyncHandler>
        })),
        ..ShopParts::default()
    };
    let config = ShopConfig {
        dispatch: AsyncDispatch::InProcess,
        ..ShopConfig::default()
    };
    let shop = Shop::with_parts(Arc::new(storage), config, parts);
    shop.seed_demo(TENANT).await.expect("seeded");
    let staff = InvocationContext::new(TENANT, "toolbox-test").with_roles(["staff"]);
    let order = shop.orders.create(new_order(), &staff).await.expect("placed");
    shop.engine.wait_idle().await;
    let key = EntityKey::new(order.pk.clone(), order.sk.clone());
    let row = |shop: &Shop| {
        let (shop, key, staff) = (shop.clone(), key.clone(), staff.clone());
        async move {
            CommandService::get_command(&shop.engine, &key, 1, &staff)
                .await
                .expect("read")
                .expect("stored")
        }
    };
    assert_eq!(
        row(&shop).await.status,
        CommandStatus::Failed,
        "the order's handler failed for real"
    );
    let failed_runs = runs.load(Ordering::SeqCst);
    assert!(
        failed_runs >= 2,
        "retried before it was marked failed: {failed_runs}"
    );
    let code = order.code.to_string();
    let reservation = |shop: &Shop| {
        let (shop, code, staff) = (shop.clone(), code.clone(), staff.clone());
        async move { shop.inventory.reservation(&code, &staff).await.expect("read") }
    };
    assert!(
        reservation(&shop).await.is_none(),
        "no stock reserved while it failed"
    );
    let (pk, sk) = (order.pk.to_string(), order.sk.to_string());
    let target = [pk.as_str(), sk.as_str(), "1"];

    // list: it, and the filters that exclude it.
    let listed = json_of(&endpoint, &prefix, &["failures", "list"]);
    assert_eq!(listed["count"], 1, "{listed}");
    let first = &listed["failures"][0];
    assert_eq!(
        (
            first["pk"].as_str(),
            first["sk"].as_str(),
            first["version"].as_u64()
        ),
        (Some(&*pk), Some(&*sk), Some(1))
    );
    assert_eq!(first["tenantCode"], TENANT);
    for (filter, expected) in [
        (vec!["--tenant", TENANT], 1),
        (vec!["--handler", "order-sync"], 1),
        (vec!["--older-than", "0s"], 1),
        (vec!["--tenant", "shop-b"], 0),
        (vec!["--handler", "notify-relay"], 0),
        (vec!["--older-than", "1h"], 0),
    ] {
        let args: Vec<&str> = ["failures", "list"]
            .into_iter()
            .chain(filter.iter().copied())
            .collect();
        assert_eq!(
            json_of(&endpoint, &prefix, &args)["count"],
            expected,
            "{filter:?}"
        );
    }
    let table = toolbox(&endpoint, &prefix, &["failures", "list"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains(&sk) && table.contains("order-sync"), "{table}");

    // show: the error and its attempts, no attribute value.
    let shown = json_of(
        &endpoint,
        &prefix,
        &["failures", "show", target[0], target[1], target[2]],
    );
    let failure = &shown["failure"]["failures"][0];
    assert_eq!(failure["handler"], "order-sync");
    assert_eq!(failure["attempts"].as_u64(), Some(u64::from(failed_runs)));
    assert!(
        failure["error"]
            .as_str()
            .unwrap()
            .contains("stock service unavailable"),
        "{shown}"
    );
    assert_eq!(shown["command"]["status"], "failed");
    assert_eq!(shown["command"]["tenantCode"], TENANT);
    assert_eq!(shown["appliedVersion"], 1);
    let text = shown.to_string();
    assert!(
        !text.contains("Secret Lane") && !text.contains("CUST-TOOLBOX"),
        "attribute values shown: {text}"
    );
    let human = toolbox(
        &endpoint,
        &prefix,
        &["failures", "show", target[0], target[1], target[2]],
    );
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(
        human.contains("order-sync") && human.contains("stock service unavailable"),
        "{human}"
    );
    assert!(
        !human.contains("Secret Lane") && !human.contains("CUST-TOOLBOX"),
        "{human}"
    );
    let with = json_of(
        &endpoint,
        &prefix,
        &[
            "failures",
            "show",
            target[0],
            target[1],
            target[2],
            "--attributes",
        ],
    );
    assert_eq!(with["command"]["attributes"]["customerId"], "CUST-TOOLBOX");

    // A dry run changes nothing.
    let planned = json_of(
        &endpoint,
        &prefix,
        &[
            "failures",
            "reprocess",
            target[0],
            target[1],
            target[2],
            "--dry-run",
        ],
    );
    assert_eq!(planned["outcome"], "wouldReprocess", "{planned}");
    assert_eq!(
        planned["plan"],
        json!({"action": "rerun", "handlers": ["order-sync"]})
    );
    let human = toolbox(
        &endpoint,
        &prefix,
        &["failures", "reprocess", "--all", "--dry-run"],
    );
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(
        human.contains("would run again order-sync") && human.contains("1 would be reprocessed"),
        "{human}"
    );
    assert_eq!(row(&shop).await.status, CommandStatus::Failed);
    assert!(reservation(&shop).await.is_none(), "a dry run reserves nothing");
    assert_eq!(json_of(&endpoint, &prefix, &["failures", "list"])["count"], 1);

    // The binary's order handler works (the stock service is back): the
    // reprocess finishes it and its effect happens.
    let order_before = shop.orders.get(&code, &staff).await.expect("order");
    let done = json_of(
        &endpoint,
        &prefix,
        &["failures", "reprocess", target[0], target[1], target[2]],
    );
    assert_eq!(done["outcome"], "finished", "{done}");
    assert_eq!(done["status"], "finished");
    assert_eq!(row(&shop).await.status, CommandStatus::Finished);
    let reserved = reservation(&shop)
        .await
        .expect("the stock is reserved by the reprocess");
    assert_eq!(
        serde_json::to_value(&reserved).unwrap()["state"],
        "reserved",
        "{reserved:?}"
    );
    let order_after = shop.orders.get(&code, &staff).await.expect("order");
    assert_eq!(
        order_after.attributes.clone().into_value()["reservation"],
        "reserved"
    );
    assert!(order_after.version > order_before.version);

    // Again: already done, nothing run (the order is not written again).
    let again = json_of(
        &endpoint,
        &prefix,
        &["failures", "reprocess", target[0], target[1], target[2]],
    );
    assert_eq!(again["outcome"], "alreadyDone", "{again}");
    assert_eq!(
        shop.orders.get(&code, &staff).await.expect("order").version,
        order_after.version
    );
    assert_eq!(json_of(&endpoint, &prefix, &["failures", "list"])["count"], 0);
    let all = json_of(&endpoint, &prefix, &["failures", "reprocess", "--all"]);
    assert_eq!(
        (all["matched"].as_u64(), all["dryRun"].as_bool()),
        (Some(0), Some(false)),
        "{all}"
    );
    assert_eq!(
        runs.load(Ordering::SeqCst),
        failed_runs,
        "the test's shop ran nothing more"
    );

    // Errors: a clear message and a non-zero exit, no panic.
    let missing = toolbox(&endpoint, &prefix, &["failures", "show", &pk, &sk, "9"]);
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        !missing.status.success() && stderr.contains("error:") && stderr.contains("not found"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let neither = toolbox(&endpoint, &prefix, &["failures", "reprocess"]);
    assert!(!neither.status.success());
    assert!(!String::from_utf8_lossy(&neither.stderr).contains("panicked"));

    // rebuild, lag: the read model holds the order; nothing behind.
    let rebuilt = json_of(
        &endpoint,
        &prefix,
        &["rebuild", "--projection", "sales", "--tenant", TENANT],
    );
    assert_eq!(rebuilt["projection"], "sales");
    assert!(rebuilt["rows"].as_u64().unwrap() >= 1, "{rebuilt}");
    let lag = json_of(&endpoint, &prefix, &["lag", "--tenant", TENANT]);
    assert_eq!(lag["projections"]["sales"]["entitiesBehind"], 0, "{lag}");
    assert!(
        lag["projections"]["sales"]["entities"].as_u64().unwrap() >= 1,
        "{lag}"
    );

    // No consumer ever ran: every stream record is behind, no shard is leased.
    let pipeline = &lag["pipeline"];
    let behind = pipeline["recordsBehind"].as_u64().unwrap();
    assert!(behind >= 1, "{pipeline}");
    let oldest: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(pipeline["oldestBehindAt"].clone()).unwrap();
    // Stream records are dated to the second on AWS, to the minute by DynamoDB Local.
    assert!(
        oldest >= started - chrono::Duration::seconds(60) && oldest <= chrono::Utc::now(),
        "{oldest}"
    );
    let leases = json_of(&endpoint, &prefix, &["leases"]);
    let shards = leases["shards"].as_array().unwrap();
    assert!(!shards.is_empty(), "{leases}");
    assert!(
        shards
            .iter()
            .all(|s| s["leased"] == false && s["checkpoint"].is_null()),
        "{leases}"
    );
    let summed: u64 = shards
        .iter()
        .map(|s| s["behind"]["records"].as_u64().unwrap())
        .sum();
    assert_eq!(summed, behind, "leases and lag read the same stream");

    // A consumer takes the shards and catches up: leased, nothing behind.
    let mut consumer = Command::new(binary())
        .args([
            "consume",
            "--backend",
            "dynamodb",
            "--dynamodb-endpoint",
            &endpoint,
        ])
        .args([
            "--table-prefix",
            &prefix,
            "--read-db",
            &read_db(&prefix),
            "--lease-duration",
            "5",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the consumer starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    let (leases, lag) = loop {
        let leases = json_of(&endpoint, &prefix, &["leases"]);
        let lag = json_of(&endpoint, &prefix, &["lag", "--tenant", TENANT]);
        let held = leases["shards"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["leased"] == true && s["owner"].is_string() && s["leaseExpiresAt"].is_string());
        if held && lag["pipeline"]["recordsBehind"] == 0 {
            break (leases, lag);
        }
        assert!(
            Instant::now() < deadline,
            "the consumer did not catch up: {leases}\n{lag}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let _ = consumer.kill();
    let _ = consumer.wait();
    assert!(lag["pipeline"]["oldestBehindAt"].is_null(), "{lag}");
    assert!(
        leases["shards"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["checkpoint"].is_string()),
        "{leases}"
    );
    assert_eq!(
        CommandService::get_command(
            &shop.engine,
            &EntityKey::new(tenant_pk(TENANT), sk.clone()),
            1,
            &staff
        )
        .await
        .unwrap()
        .unwrap()
        .status,
        CommandStatus::Finished,
        "the consumer left the reprocessed command as it was"
    );
}
