//! The read models under real faults: the e-commerce server (a process of
//! its own, on DynamoDB Local, with the stream pipeline) projecting its
//! orders into SQL while it is killed with SIGKILL mid-projection, while
//! its PostgreSQL is stopped, and while the stream consumer is made to
//! deliver every order record again, twice.
//!
//! Each test ends the same way: the sales report read from SQL
//! (`GET /reports/sales`) equals the report recomputed from the data table
//! (the orders as DynamoDB holds them, through the same contribution
//! logic: day of creation, per product, units and revenue, cancelled
//! orders out), row for row; and the order search (`GET /orders/search`)
//! lists every order of the data table exactly once, with its status. The
//! read models catch up on their own: the test polls until they are exact
//! or [`CATCH_UP_WITHIN`] has passed (then fails with the difference).
//! The counts are printed (`--no-capture`): rows compared, missing,
//! doubled or different.
//!
//! The read models' database: a PostgreSQL database of the test's own on
//! the server at `CQRS_POSTGRES_URL` (`./scripts/postgres` starts one), or
//! a SQLite file when no server is configured and none is required
//! (`CQRS_REQUIRE_POSTGRES` or `CI` make a missing server a failure). The
//! test that stops PostgreSQL starts a server of its own.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{NaiveDate, Utc};
use common::*;
use cqrs_core::CommandService;
use cqrs_dynamodb::{local_client, TableNames};
use cqrs_sql::sqlx;
use ecommerce::domain::{OrderAttributes, OrderStatus};
use ecommerce::read_models::{contributions, SalesRow, SEARCH_TABLE};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use serde_json::Value;

/// How long the read models may take to catch up once the fault is over.
const CATCH_UP_WITHIN: Duration = Duration::from_secs(90);

const POSTGRES_URL_VAR: &str = "CQRS_POSTGRES_URL";

/// Whether PostgreSQL must be there (a missing server fails the test).
fn postgres_required() -> bool {
    std::env::var_os("CQRS_REQUIRE_POSTGRES").is_some() || std::env::var_os("CI").is_some()
}

/// The read models' database of one test.
struct ReadDb {
    /// What the server is given as `--read-db`.
    url: String,
    /// What it is, for the printed counts.
    kind: &'static str,
}

impl ReadDb {
    /// A PostgreSQL database of its own on the server at
    /// `CQRS_POSTGRES_URL`, else (when PostgreSQL is not required) a SQLite
    /// file in a folder of its own.
    async fn fresh(test: &str) -> ReadDb {
        let name = format!("rm_{test}_{}", uuid::Uuid::new_v4().simple());
        match std::env::var(POSTGRES_URL_VAR).ok().filter(|url| !url.is_empty()) {
            Some(server) => ReadDb {
                url: create_database(&server, &name).await,
                kind: "PostgreSQL",
            },
            None => {
                assert!(
                    !postgres_required(),
                    "{POSTGRES_URL_VAR} is not set, but PostgreSQL tests are required here: \
                     eval \"$(./scripts/postgres)\""
                );
                eprintln!("\n*** {POSTGRES_URL_VAR} is not set: the read models are in a SQLite file. ***");
                let dir = std::env::temp_dir().join(&name);
                std::fs::create_dir_all(&dir).expect("a folder");
                ReadDb {
                    url: format!("sqlite://{}?mode=rwc", dir.join("read.db").display()),
                    kind: "SQLite",
                }
            }
        }
    }
}

/// Creates the database `name` on the PostgreSQL server of `server_url`
/// (a URL of one of its databases); the URL of the new one.
async fn create_database(server_url: &str, name: &str) -> String {
    let admin = sqlx::PgPool::connect(server_url)
        .await
        .expect("PostgreSQL reachable");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .expect("database created");
    admin.close().await;
    let (base, query) = server_url
        .split_once('?')
        .map_or((server_url, None), |(b, q)| (b, Some(q)));
    let (host, _db) = base.rsplit_once('/').expect("a URL with a database");
    match query {
        Some(query) => format!("{host}/{name}?{query}"),
        None => format!("{host}/{name}"),
    }
}

/// A PostgreSQL server of one test's own (`scripts/postgres`), stopped and
/// started with `pg_ctl` (as the `postgres` user when running as root),
/// stopped and removed when dropped.
struct OwnPostgres {
    url: String,
    bin_dir: PathBuf,
    data_dir: PathBuf,
}

impl OwnPostgres {
    /// Starts one; `None` (the test skips, loudly) when PostgreSQL is not
    /// installed and not required (`scripts/postgres` installs it otherwise).
    fn start() -> Option<OwnPostgres> {
        let installed = std::fs::read_dir("/usr/lib/postgresql")
            .map(|versions| versions.flatten().any(|v| v.path().join("bin/postgres").exists()))
            .unwrap_or(false);
        if !installed && !postgres_required() {
            eprintln!("\n*** SKIPPED: PostgreSQL is not installed, so this PostgreSQL test did not run. ***");
            return None;
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres");
        let output = Command::new(script).output().expect("scripts/postgres runs");
        assert!(
            output.status.success(),
            "scripts/postgres failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let exports: HashMap<String, String> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let get = |key: &str| {
            exports
                .get(key)
                .cloned()
                .unwrap_or_else(|| panic!("{key} printed"))
        };
        Some(OwnPostgres {
            url: get("CQRS_POSTGRES_URL"),
            bin_dir: PathBuf::from(get("POSTGRES_BIN_DIR")),
            data_dir: PathBuf::from(get("POSTGRES_DATA_DIR")),
        })
    }

    fn pg_ctl(&self, args: &[&str]) -> bool {
        let pg_ctl = self.bin_dir.join("pg_ctl");
        let log = self.data_dir.with_file_name("postgres.log");
        let mut command = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(pg_ctl);
            c
        } else {
            Command::new(pg_ctl)
        };
        command
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(log)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// `pg_ctl stop -m fast`: connections are closed, the server exits.
    fn stop(&self) {
        assert!(self.pg_ctl(&["-w", "stop", "-m", "fast"]), "PostgreSQL stopped");
    }

    fn start_again(&self) {
        assert!(
            self.pg_ctl(&["-w", "-t", "60", "start"]),
            "PostgreSQL started again"
        );
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        self.pg_ctl(&["-w", "stop", "-m", "immediate"]);
        if let Some(dir) = self.data_dir.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// One row of a sales report: (day, product) → (units, revenue in cents).
type ReportRows = BTreeMap<(NaiveDate, String), (i64, i64)>;

/// How the read models compare with the data table.
#[derive(Debug, Default)]
struct Comparison {
    /// Report rows compared (the union of both sides).
    rows_compared: usize,
    /// Rows of the recomputation the report lacks.
    missing: usize,
    /// Rows whose units or revenue differ (doubled, or an order not taken
    /// out), and rows the report has that the recomputation does not.
    different: usize,
    /// Orders in the data table.
    orders: usize,
    /// Orders the search does not list.
    search_missing: usize,
    /// Orders the search lists more than once, or with another status, or
    /// that the data table does not hold.
    search_different: usize,
    /// The differences, for the failure message.
    diff: Vec<String>,
}

impl Comparison {
    fn exact(&self) -> bool {
        self.missing == 0 && self.different == 0 && self.search_missing == 0 && self.search_different == 0
    }

    fn line(&self) -> String {
        format!(
            "sales report: rows compared {}, missing {}, doubled/different {}; \
             order search: {} orders, missing {}, doubled/different {}",
            self.rows_compared,
            self.missing,
            self.different,
            self.orders,
            self.search_missing,
            self.search_different
        )
    }
}

/// The days a test's orders fall on (they are created now, in UTC; a day
/// either side covers a test that crosses midnight).
fn report_days() -> (NaiveDate, NaiveDate) {
    let today = Utc::now().date_naive();
    (today.pred_opt().expect("a day"), today.succ_opt().expect("a day"))
}

/// The report recomputed from the data table, and each order's status.
async fn recomputed(inspector: &Inspector) -> (ReportRows, HashMap<String, OrderStatus>) {
    let mut rows = ReportRows::new();
    let mut statuses = HashMap::new();
    for item in inspector.items("ORDER#").await {
        if item.is_deleted {
            continue;
        }
        let order: OrderAttributes = item.attributes_as().expect("an order");
        for c in contributions(&order, item.created_at).expect("contributions") {
            let row = rows.entry((c.day, c.product_code)).or_default();
            row.0 += c.units;
            row.1 += c.revenue_cents;
        }
        statuses.insert(item.code.to_string(), order.status);
    }
    rows.retain(|_, row| *row != (0, 0));
    (rows, statuses)
}

/// The sales report as the server serves it from SQL.
async fn served_report(client: &reqwest::Client, url: &str) -> Result<ReportRows, String> {
    let (from, to) = report_days();
    let response = client
        .get(format!("{url}/reports/sales?from={from}&to={to}"))
        .bearer_auth(token())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    if status != 200 {
        return Err(format!(
            "GET /reports/sales: {status} {}",
            response.text().await.unwrap_or_default()
        ));
    }
    let rows: Vec<SalesRow> = response.json().await.map_err(|e| e.to_string())?;
    let mut report = ReportRows::new();
    for row in rows {
        let cents = (row.revenue * Decimal::ONE_HUNDRED).to_i64().expect("cents");
        let previous = report.insert((row.day, row.product_code.clone()), (row.units, cents));
        assert!(previous.is_none(), "one report row per day and product: {row:?}");
    }
    Ok(report)
}

/// Every order the search lists (every page), with the status of each
/// listing.
async fn served_search(client: &reqwest::Client, url: &str) -> Result<HashMap<String, Vec<String>>, String> {
    let mut listed: HashMap<String, Vec<String>> = HashMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut page_url = format!("{url}/orders/search?limit=100");
        if let Some(cursor) = &cursor {
            // A cursor is URL-safe base64; encoded anyway.
            let encoded: String = cursor
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
                    other => format!("%{other:02X}"),
                })
                .collect();
            page_url.push_str(&format!("&cursor={encoded}"));
        }
        let response = client
            .get(page_url)
            .bearer_auth(token())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        if status != 200 {
            return Err(format!(
                "GET /orders/search: {status} {}",
                response.text().await.unwrap_or_default()
            ));
        }
        let page: Value = response.json().await.map_err(|e| e.to_string())?;
        for item in page["items"].as_array().expect("items") {
            let code = item["code"].as_str().expect("a code").to_owned();
            let status = item["status"].as_str().expect("a status").to_owned();
            listed.entry(code).or_default().push(status);
        }
        match page["cursor"].as_str() {
            Some(next) if cursor.as_deref() != Some(next) => cursor = Some(next.to_owned()),
            Some(_) => return Err("the search repeated its cursor".into()),
            None => return Ok(listed),
        }
    }
}

/// Compares what the server serves with the data table, once.
async fn compare(inspector: &Inspector, client: &reqwest::Client, url: &str) -> Result<Comparison, String> {
    let (expected, statuses) = recomputed(inspector).await;
    let served = served_report(client, url).await?;
    let listed = served_search(client, url).await?;
    let mut c = Comparison {
        orders: statuses.len(),
        ..Comparison::default()
    };
    let keys: BTreeSet<_> = expected.keys().chain(served.keys()).collect();
    c.rows_compared = keys.len();
    for key in keys {
        match (expected.get(key), served.get(key)) {
            (Some(want), None) => {
                c.missing += 1;
                c.diff.push(format!("missing {key:?}: {want:?}"));
            }
            (want, got) if want != got => {
                c.different += 1;
                c.diff
                    .push(format!("{key:?}: recomputed {want:?}, served {got:?}"));
            }
            _ => {}
        }
    }
    for (code, status) in &statuses {
        let want = serde_json::to_value(status).expect("a status");
        match listed.get(code).map(Vec::as_slice) {
            None | Some([]) => {
                c.search_missing += 1;
                c.diff.push(format!("search: {code} missing"));
            }
            Some([one]) if want.as_str() == Some(one.as_str()) => {}
            Some(found) => {
                c.search_different += 1;
                c.diff
                    .push(format!("search: {code} listed as {found:?}, is {want}"));
            }
        }
    }
    for code in listed.keys().filter(|code| !statuses.contains_key(*code)) {
        c.search_different += 1;
        c.diff
            .push(format!("search: {code} listed, not in the data table"));
    }
    Ok(c)
}

/// Waits (bounded) until every accepted order is in the data table and the
/// read models equal the data table; the last comparison and the wait.
async fn caught_up(inspector: &Inspector, url: &str, accepted: &[String]) -> (Comparison, Duration) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let started = Instant::now();
    loop {
        let applied: HashSet<String> = inspector
            .items("ORDER#")
            .await
            .into_iter()
            .map(|o| o.code.to_string())
            .collect();
        let lost = accepted.iter().filter(|code| !applied.contains(*code)).count();
        match compare(inspector, &client, url).await {
            Ok(c) if c.exact() && lost == 0 => return (c, started.elapsed()),
            Ok(c) if started.elapsed() > CATCH_UP_WITHIN => panic!(
                "not caught up within {CATCH_UP_WITHIN:?}: {lost} accepted orders not applied; {}\n{}",
                c.line(),
                c.diff.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
            ),
            Err(e) if started.elapsed() > CATCH_UP_WITHIN => panic!("the read models do not answer: {e}"),
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// No command ended recorded as failed (a projection's target outage is
/// transient: the pipeline waits and retries; it does not give up).
async fn assert_no_failures(inspector: &Inspector) {
    let failures = CommandService::list_failures(&inspector.shop.engine, &inspector.ctx)
        .await
        .expect("listed");
    assert!(failures.is_empty(), "commands recorded as failed: {failures:?}");
}

/// Counts the orders the order search table holds, read directly (the
/// server may be dead).
struct SearchCounter {
    target: cqrs_sql::SqlTarget<sqlx::Any>,
}

impl SearchCounter {
    async fn new(read_db: &str) -> SearchCounter {
        SearchCounter {
            target: cqrs_sql::SqlTarget::<sqlx::Any>::connect(read_db)
                .await
                .expect("the read models' database"),
        }
    }

    /// `0` until the server has created the table.
    async fn count(&self) -> usize {
        let count: Result<i64, _> =
            sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {SEARCH_TABLE} WHERE tenant = $1"))
                .bind(TENANT)
                .fetch_one(self.target.pool())
                .await;
        count.unwrap_or(0).try_into().unwrap_or(0)
    }
}

/// Places orders, a burst of 5 after another, until `stop`; the codes
/// accepted. `refused` counts the requests not answered 201.
async fn keep_ordering(url: String, stop: Arc<AtomicBool>, refused: Arc<AtomicUsize>) -> Vec<String> {
    let mut accepted = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let codes = burst(std::slice::from_ref(&url), 5, |_| {}).await;
        refused.fetch_add(5 - codes.len(), Ordering::SeqCst);
        accepted.extend(codes);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    accepted
}

/// SIGKILL of the server three times while its stream consumer projects
/// orders into SQL — orders coming in and some cancelled meanwhile; the
/// kill comes as soon as the round's first order reaches the order search
/// — each time restarted: the sales report equals its recomputation from
/// the data table, row for row, and the search lists every order once.
#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_projection_batch_report_exact() {
    let Some(endpoint) = dynamodb() else { return };
    let test_started = Instant::now();
    let prefix = prefix("rmkill9");
    let db = ReadDb::fresh("kill9").await;
    let read_db = ["--read-db", db.url.as_str()];
    let inspector = Inspector::new(&endpoint, &prefix);
    let mut server = Server::start(&endpoint, &prefix, &read_db).await;
    let projected = SearchCounter::new(&db.url).await;
    let mut accepted: Vec<String> = Vec::new();
    for round in 1..=3 {
        let before = projected.count().await;
        // A burst, then orders flowing, and a third of the orders accepted
        // so far cancelled meanwhile.
        let mut codes = burst(std::slice::from_ref(&server.url), 30, |_| {}).await;
        let (stop, refused) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let flow = tokio::spawn(keep_ordering(server.url.clone(), stop.clone(), refused));
        let to_cancel: Vec<String> = accepted.iter().skip(round % 3).step_by(3).cloned().collect();
        let cancels = tokio::spawn({
            let url = server.url.clone();
            async move { cancel_burst(&url, &to_cancel, |_| {}).await }
        });
        let waiting = Instant::now();
        while projected.count().await == before {
            assert!(
                waiting.elapsed() < Duration::from_secs(30),
                "the consumer projected the round's orders"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        server.kill();
        let at_kill = projected.count().await;
        stop.store(true, Ordering::SeqCst);
        codes.extend(flow.await.expect("the orders flowed"));
        let _ = cancels.await;
        let applied = inspector.items("ORDER#").await.len();
        report(format!(
            "read models, kill -9 round {round}: {} orders accepted this round; at the kill {at_kill} \
             orders in the order search ({} this round), {applied} in the data table",
            codes.len(),
            at_kill - before
        ));
        accepted.extend(codes);
        server = Server::start(&endpoint, &prefix, &read_db).await;
    }
    let last_cancels: Vec<String> = accepted.iter().step_by(5).cloned().collect();
    cancel_burst(&server.url, &last_cancels, |_| {}).await;
    let (comparison, took) = caught_up(&inspector, &server.url, &accepted).await;
    report(format!(
        "read models ({}), kill -9 x3: {} accepted; {}; caught up {took:?} after the last restart; \
         test took {:?}",
        db.kind,
        accepted.len(),
        comparison.line(),
        test_started.elapsed()
    ));
    assert!(comparison.exact());
    assert_no_failures(&inspector).await;
}

/// PostgreSQL (the read models' database, a server of the test's own)
/// stopped with `pg_ctl stop -m fast` while orders flow, orders placed for
/// five seconds without it (they are accepted: DynamoDB is up), then
/// started again: the projections wait and retry, no command ends failed,
/// and the report is exact.
#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test(flavor = "multi_thread")]
async fn postgres_stopped_mid_stream_report_exact() {
    let Some(endpoint) = dynamodb() else { return };
    let Some(postgres) = OwnPostgres::start() else {
        return;
    };
    let test_started = Instant::now();
    let prefix = prefix("rmpgstop");
    let inspector = Inspector::new(&endpoint, &prefix);
    let server = Server::start(&endpoint, &prefix, &["--read-db", postgres.url.as_str()]).await;
    let mut accepted = burst(std::slice::from_ref(&server.url), 20, |_| {}).await;
    let (stop, refused) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let flow = tokio::spawn(keep_ordering(server.url.clone(), stop.clone(), refused.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    postgres.stop();
    let stopped = Instant::now();
    let applied_at_stop = inspector.items("ORDER#").await.len();
    // Meanwhile the report is unavailable (an error, not a wrong answer).
    let report_meanwhile = tokio::spawn({
        let url = server.url.clone();
        async move {
            let asked = Instant::now();
            let (from, to) = report_days();
            let status = reqwest::Client::new()
                .get(format!("{url}/reports/sales?from={from}&to={to}"))
                .bearer_auth(token())
                .send()
                .await
                .map(|r| r.status().as_u16())
                .ok();
            (status, asked.elapsed())
        }
    });
    tokio::time::sleep(Duration::from_secs(5)).await;
    let applied_while_down = inspector.items("ORDER#").await.len() - applied_at_stop;
    postgres.start_again();
    let outage = stopped.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    let flowed = flow.await.expect("the orders flowed");
    let (during, answered_in) = report_meanwhile.await.expect("asked");
    let refused = refused.load(Ordering::SeqCst);
    accepted.extend(flowed.iter().cloned());
    let cancelled: Vec<String> = accepted.iter().step_by(4).cloned().collect();
    cancel_burst(&server.url, &cancelled, |_| {}).await;
    let (comparison, took) = caught_up(&inspector, &server.url, &accepted).await;
    report(format!(
        "read models (PostgreSQL), stopped {outage:?} mid-stream: {} orders accepted ({} while they \
         flowed, {refused} refused; {applied_while_down} applied to DynamoDB while PostgreSQL was down; \
         the report asked meanwhile answered {during:?} in {answered_in:?}), {} cancelled; {}; caught up {took:?}; test took {:?}",
        accepted.len(),
        flowed.len(),
        cancelled.len(),
        comparison.line(),
        test_started.elapsed()
    ));
    assert_eq!(
        refused, 0,
        "orders are accepted while the read models' database is down"
    );
    assert!(
        applied_while_down > 0,
        "orders were applied while PostgreSQL was down"
    );
    assert_ne!(during, Some(500), "an outage is not an internal error");
    assert!(comparison.exact());
    assert_no_failures(&inspector).await;
}

/// Scans the command rows of the orders with `filter` (over `#status` and
/// `:finished`); their keys.
async fn order_command_rows(
    endpoint: &str,
    prefix: &str,
    filter: &str,
) -> Vec<(AttributeValue, AttributeValue)> {
    let tables = ecommerce::shop::dynamodb_tables(TableNames::with_prefix(prefix));
    let client = local_client(endpoint);
    let mut rows = Vec::new();
    let mut start: Option<HashMap<String, AttributeValue>> = None;
    loop {
        let page = client
            .scan()
            .table_name(&tables.command)
            .filter_expression(format!("begins_with(sk, :order) AND {filter}"))
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":order", AttributeValue::S("ORDER#".into()))
            .expression_attribute_values(":finished", AttributeValue::S("finished".into()))
            .set_exclusive_start_key(start.take())
            .consistent_read(true)
            .send()
            .await
            .expect("scanned");
        for item in page.items() {
            rows.push((item["pk"].clone(), item["sk"].clone()));
        }
        match page.last_evaluated_key() {
            Some(key) => start = Some(key.clone()),
            None => return rows,
        }
    }
}

/// Puts every command row of the orders back to what a crash between
/// applying it and finishing its handlers leaves — status `applied`, no
/// live publisher — and removes the stream consumer's checkpoints and
/// leases (the sequences table's items at `STREAM#{command table}`), so
/// that the next consumer reads the stream again from its oldest record
/// and runs every order's handlers (the projectors among them) again.
/// Returns the rows put back.
async fn redeliver_every_order_record(endpoint: &str, prefix: &str) -> usize {
    let tables = ecommerce::shop::dynamodb_tables(TableNames::with_prefix(prefix));
    let client = local_client(endpoint);
    let rows = order_command_rows(endpoint, prefix, "#status = :finished").await;
    for (pk, sk) in &rows {
        client
            .update_item()
            .table_name(&tables.command)
            .key("pk", pk.clone())
            .key("sk", sk.clone())
            .update_expression("SET #status = :applied REMOVE publisher")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":applied", AttributeValue::S("applied".into()))
            .send()
            .await
            .expect("put back");
    }
    let checkpoints = client
        .query()
        .table_name(&tables.sequences)
        .key_condition_expression("pk = :pk")
        .expression_attribute_values(
            ":pk",
            AttributeValue::S(format!(
                "{}{}",
                cqrs_dynamodb::stream::CHECKPOINT_PK_PREFIX,
                tables.command
            )),
        )
        .consistent_read(true)
        .send()
        .await
        .expect("queried");
    assert!(!checkpoints.items().is_empty(), "the consumer had checkpointed");
    for item in checkpoints.items() {
        client
            .delete_item()
            .table_name(&tables.sequences)
            .key("pk", item["pk"].clone())
            .key("sk", item["sk"].clone())
            .send()
            .await
            .expect("deleted");
    }
    rows.len()
}

/// Once the orders have settled and the report is exact, the stream
/// consumer is made to deliver every order record again, twice (the
/// server stopped, every order command put back to `applied` and its
/// checkpoints and leases removed, the server restarted): the projectors
/// see every version again and skip it — the report stays exact, nothing
/// doubled.
#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test(flavor = "multi_thread")]
async fn every_event_redelivered_twice_report_exact() {
    let Some(endpoint) = dynamodb() else { return };
    let test_started = Instant::now();
    let prefix = prefix("rmredeliver");
    let db = ReadDb::fresh("redeliver").await;
    let read_db = ["--read-db", db.url.as_str()];
    let inspector = Inspector::new(&endpoint, &prefix);
    let mut server = Server::start(&endpoint, &prefix, &read_db).await;
    let accepted = burst(std::slice::from_ref(&server.url), 40, |_| {}).await;
    let placed_in = test_started.elapsed();
    caught_up(&inspector, &server.url, &accepted).await;
    let cancelled: Vec<String> = accepted.iter().step_by(3).cloned().collect();
    let cancelling = Instant::now();
    cancel_burst(&server.url, &cancelled, |_| {}).await;
    let cancelled_in = cancelling.elapsed();
    let (before, took) = caught_up(&inspector, &server.url, &accepted).await;
    report(format!(
        "read models ({}), before redelivery: {} orders, {} cancelled (placed in {placed_in:?}, cancelled in {cancelled_in:?}); {}; \
         caught up {took:?}",
        db.kind,
        accepted.len(),
        cancelled.len(),
        before.line()
    ));
    for round in 1..=2 {
        server.terminate().await;
        let redelivered = redeliver_every_order_record(&endpoint, &prefix).await;
        server = Server::start(&endpoint, &prefix, &read_db).await;
        let started = Instant::now();
        loop {
            let left = order_command_rows(&endpoint, &prefix, "#status <> :finished")
                .await
                .len();
            if left == 0 {
                break;
            }
            assert!(
                started.elapsed() < CATCH_UP_WITHIN,
                "{left} order commands not finished again:\n{}",
                server.log_text()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let finished_in = started.elapsed();
        let rerun = server.log_text().matches("running them again").count();
        let (comparison, took) = caught_up(&inspector, &server.url, &accepted).await;
        report(format!(
            "read models ({}), redelivery {round}: {redelivered} order records delivered again, their \
             handlers run again {rerun} times (all finished again in {finished_in:?}); {}; checked {took:?} \
             later; test so far {:?}",
            db.kind,
            comparison.line(),
            test_started.elapsed()
        ));
        assert!(
            redelivered >= accepted.len(),
            "every order's records were put back"
        );
        assert_eq!(
            rerun, redelivered,
            "every record put back reached its handlers again"
        );
        assert!(comparison.exact());
    }
    assert_no_failures(&inspector).await;
}
