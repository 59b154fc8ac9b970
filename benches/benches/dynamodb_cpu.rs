//! Workload 10, DynamoDB CPU: the client-side CPU of one `publish_sync` on
//! the DynamoDB backend, the network left out.
//!
//! The engine is `cqrs_dynamodb::DynamoDbStorage::engine()` (no handler)
//! on a real `aws_sdk_dynamodb::Client` — the crate's own settings
//! (`cqrs_dynamodb::local_config`: static credentials, region `us-east-1`,
//! standard retries, timeouts), no endpoint override, so the endpoint is
//! resolved as for AWS — whose HTTP client is an in-process stand-in that
//! answers at once, in the calling thread, with what DynamoDB answers: no
//! socket, no TLS, no HTTP framing. Everything else runs as in production:
//! the engine, the item conversions, the SDK's serialization, endpoint
//! resolution, SigV4 signing, retry and timeout machinery, and
//! deserialization of the answers.
//!
//! A `publish_sync` without a handler sends `GetItem` (the data row) and
//! `TransactWriteItems` (command row, data row, and for an update the
//! history row). The answers: `TransactWriteItems` → `{}`; `GetItem` → `{}`
//! for a create (no item), and for an update the data row the engine wrote
//! at the previous version: the `Item` of the data table's `Put` in a
//! `TransactWriteItems` request this engine sent for the same order,
//! recorded beforehand, answered as `{"Item": …}`. Each answer carries
//! `content-type` and `x-amzn-requestid` headers, as DynamoDB's do (not its
//! `x-amz-crc32`, which this SDK does not check). The stand-in's own cost is
//! measured apart (its last row).
//!
//! The orders are the `lifecycle` workload's (`peer_orders`): pk
//! `TENANT#shop-a`, sk `ORDER#ORD-000042`. Single-threaded (`current_thread`
//! Tokio runtime). Each run: `WARMUP` (1,000) publishes, then `N` (10,000;
//! `CQRS_BENCH_ITERATIONS`) measured:
//!
//! - **create**: `CommandInput::new(pk, sk)` with the order's attributes;
//! - **update**: the full new state (status `confirmed`) at
//!   `ExpectedVersion::Exactly(1)`, `CommandInput::update_of` the item the
//!   create returned.
//!
//! - **typed create**, **typed update**: the same, with the order as the
//!   caller's own struct (`OrderState`) and `publish_sync_typed` (the
//!   serialization of the order is measured: it happens in the call); the
//!   update is `Typed::update` of what the typed create returned, status
//!   set. The rows sent are those of the `Value` publishes, byte for byte.
//!
//! Commands are built before the measurement; results dropped after it.
//! Measured per publish: CPU time of the bench's thread
//! (`clock_gettime(CLOCK_THREAD_CPUTIME_ID)`) — the process's is shown too,
//! to show nothing ran elsewhere — and wall time, over `CQRS_BENCH_REPS`
//! (3) runs, median and best; then one more run with a counting allocator
//! on (off during the timed runs): allocations and bytes requested per
//! publish, counted as in `allocations`.
//!
//! `cargo bench -p cqrs-benches --bench dynamodb_cpu`
//!
//! Instructions per publish: `benches/callgrind.sh dynamodb_cpu` (each
//! measured loop is a Callgrind dump of its own, see `allocations`). Under
//! Valgrind the `sha2` crate (SigV4 signing) runs its portable SHA-256, as
//! Valgrind does not offer the CPU's SHA extensions that it uses natively:
//! the SHA-256 share of those counts (`sha2::sha256::soft`) is larger than
//! that of a native run.

#[allow(dead_code)]
#[path = "../src/backends.rs"]
mod backends;
mod peer_orders;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::http::StatusCode;
use aws_smithy_types::body::SdkBody;
use bytes::Bytes;
use cqrs_benches::counting::Counting;
use cqrs_benches::window::{measure, Measured};
use cqrs_core::{
    CommandInput, CommandService, CommandServiceExt, DataItem, Engine, InvocationContext, Typed,
};
use cqrs_dynamodb::{DynamoDbStorage, TableNames};
use peer_orders::{order_attributes, order_sk, order_state, OrderState, Status, PK};
use serde_json::{json, Value};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Measured publishes of each kind, unless `CQRS_BENCH_ITERATIONS` says otherwise.
const ITERATIONS: usize = 10_000;
/// Unmeasured publishes before the measured ones, in every run.
const WARMUP: usize = 1_000;
/// Timed runs of each kind, unless `CQRS_BENCH_REPS` says otherwise.
const REPS: usize = 3;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|n| n.parse().unwrap_or_else(|_| panic!("{name}: a number")))
        .unwrap_or(default)
        .max(1)
}

// ---------------------------------------------------------------------------
// The stand-in for DynamoDB.

/// What DynamoDB answers to a `GetItem` that finds nothing, and to a
/// `TransactWriteItems` or `PutItem` that succeeds.
const EMPTY: &[u8] = b"{}";
/// A request id in DynamoDB's format (52 characters).
const REQUEST_ID: &str = "K2QH8DNOU907N97FNA2GTVP6HJVV4KQNSO5AEMVJF66Q9ASUAAJG";

/// A DynamoDB that answers from memory, in the caller's thread.
#[derive(Debug, Clone, Default)]
struct Canned(Arc<CannedState>);

#[derive(Debug, Default)]
struct CannedState {
    /// The bodies of the next `GetItem` answers, in order; `{}` once empty.
    get_items: Mutex<VecDeque<Bytes>>,
    /// While recording: the bodies of the `TransactWriteItems` requests.
    recorded: Mutex<Option<Vec<Bytes>>>,
    /// Requests answered.
    requests: AtomicUsize,
}

impl Canned {
    /// Answers the next `GetItem`s with `bodies`, in order.
    fn answer_get_items(&self, bodies: impl IntoIterator<Item = Bytes>) {
        let mut queue = self.0.get_items.lock().unwrap_or_else(PoisonError::into_inner);
        assert!(queue.is_empty(), "answers left from the previous run");
        queue.extend(bodies);
    }

    /// `GetItem` answers not given yet.
    fn get_items_left(&self) -> usize {
        self.0
            .get_items
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn start_recording(&self) {
        *self.0.recorded.lock().unwrap_or_else(PoisonError::into_inner) = Some(Vec::new());
    }

    fn stop_recording(&self) -> Vec<Bytes> {
        self.0
            .recorded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .unwrap_or_default()
    }

    fn requests(&self) -> usize {
        self.0.requests.load(Ordering::Relaxed)
    }

    fn answer(&self, request: &HttpRequest) -> Bytes {
        let target = request.headers().get("x-amz-target").unwrap_or_default();
        let operation = target.rsplit('.').next().unwrap_or_default();
        match operation {
            "GetItem" => self
                .0
                .get_items
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop_front()
                .unwrap_or(Bytes::from_static(EMPTY)),
            "TransactWriteItems" | "PutItem" => {
                if let Some(recorded) = self
                    .0
                    .recorded
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .as_mut()
                {
                    let body = request.body().bytes().expect("an in-memory request body");
                    recorded.push(Bytes::copy_from_slice(body));
                }
                Bytes::from_static(EMPTY)
            }
            other => panic!("no canned answer for {other:?}"),
        }
    }
}

impl HttpConnector for Canned {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let body = self.answer(&request);
        self.0.requests.fetch_add(1, Ordering::Relaxed);
        let mut response = HttpResponse::new(StatusCode::try_from(200).expect("200"), SdkBody::from(body));
        let headers = response.headers_mut();
        headers.insert("content-type", "application/x-amz-json-1.0");
        headers.insert("x-amzn-requestid", REQUEST_ID);
        HttpConnectorFuture::ready(Ok(response))
    }
}

impl HttpClient for Canned {
    fn http_connector(&self, _: &HttpConnectorSettings, _: &RuntimeComponents) -> SharedHttpConnector {
        SharedHttpConnector::new(self.clone())
    }
}

/// The `GetItem` answers with the data rows in recorded `TransactWriteItems`
/// requests (the `Put`s into `data_table`), by sort key.
fn data_rows(recorded: &[Bytes], data_table: &str) -> HashMap<String, Bytes> {
    let mut rows = HashMap::new();
    for body in recorded {
        let request: Value = serde_json::from_slice(body).expect("a JSON request");
        let items = request["TransactItems"].as_array().expect("TransactItems");
        for put in items.iter().filter_map(|item| item.get("Put")) {
            if put["TableName"] != data_table {
                continue;
            }
            let row = &put["Item"];
            let sk = row["sk"]["S"].as_str().expect("a string sk").to_owned();
            let answer = serde_json::to_vec(&json!({ "Item": row })).expect("JSON");
            rows.insert(sk, Bytes::from(answer));
        }
    }
    rows
}

// ---------------------------------------------------------------------------
// The workload.

/// An engine on DynamoDB through `canned`.
fn engine(canned: &Canned, tables: &TableNames) -> Engine {
    let mut config = cqrs_dynamodb::local_config("http://127.0.0.1:8000");
    // No endpoint override: resolved from the region, as on AWS.
    config.set_endpoint_url(None);
    let client = aws_sdk_dynamodb::Client::from_conf(config.http_client(canned.clone()).build());
    DynamoDbStorage::new(client, tables.clone()).engine().build()
}

/// The full new state of `item` with `status`, at its version. The only
/// code here that reads an item's attributes.
fn update_command(item: &DataItem, status: &str) -> CommandInput {
    let mut attributes = Value::clone(&item.attributes);
    attributes["status"] = Value::from(status);
    CommandInput::update_of(item).attributes(attributes)
}

/// The timed runs and the counted run of one kind of publish.
struct Runs {
    timed: Vec<Measured>,
    counted: Measured,
}

fn median_and_best(values: impl Iterator<Item = f64>) -> String {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    format!("{:.1} (best {:.1})", values[values.len() / 2], values[0])
}

fn row(what: &str, runs: &Runs) -> Vec<String> {
    vec![
        what.to_owned(),
        median_and_best(runs.timed.iter().map(Measured::thread_micros_per_op)),
        median_and_best(runs.timed.iter().map(Measured::process_micros_per_op)),
        median_and_best(runs.timed.iter().map(Measured::wall_micros_per_op)),
        format!("{:.1}", runs.counted.calls_per_op()),
        format!("{:.0}", runs.counted.bytes_per_op()),
    ]
}

async fn publish_all(
    engine: &Engine,
    ctx: &InvocationContext,
    label: &str,
    count: bool,
    commands: Vec<CommandInput>,
) -> (Measured, Vec<DataItem>) {
    measure(label, WARMUP, count, commands, |command| async move {
        engine
            .publish_sync(command, ctx)
            .await
            .expect("publish")
            .written()
            .expect("a new version")
    })
    .await
}

async fn publish_all_typed(
    engine: &Engine,
    ctx: &InvocationContext,
    label: &str,
    count: bool,
    commands: Vec<(CommandInput, OrderState)>,
) -> (Measured, Vec<Typed<OrderState>>) {
    measure(label, WARMUP, count, commands, |(command, order)| async move {
        engine
            .publish_sync_typed(command, order, ctx)
            .await
            .expect("publish")
            .written()
            .expect("a new version")
    })
    .await
}

/// The stand-in alone: a `GetItem` and a `TransactWriteItems` answered
/// (`{}` both), `n` times; CPU per pair.
async fn canned_alone(n: usize, count: bool, label: &str) -> Measured {
    let canned = Canned::default();
    let request = |operation: &str| {
        let mut request = HttpRequest::new(SdkBody::from(Bytes::from_static(EMPTY)));
        request
            .headers_mut()
            .insert("x-amz-target", format!("DynamoDB_20120810.{operation}"));
        request
    };
    let pairs = (0..WARMUP + n)
        .map(|_| [request("GetItem"), request("TransactWriteItems")])
        .collect();
    let (measured, _) = measure(label, WARMUP, count, pairs, |pair| {
        let canned = canned.clone();
        async move {
            for request in pair {
                let response = canned.call(request).await.expect("an answer");
                assert_eq!(response.status().as_u16(), 200);
            }
        }
    })
    .await;
    measured
}

async fn run(n: usize, reps: usize) -> Vec<Vec<String>> {
    let orders = WARMUP + n;
    let tables = TableNames::with_prefix("bench");
    let canned = Canned::default();
    let engine = engine(&canned, &tables);
    let ctx = InvocationContext::new("shop-a", "bench");
    let creates = || -> Vec<CommandInput> {
        (0..orders)
            .map(|i| CommandInput::new(PK, order_sk(i)).attributes(order_attributes(i)))
            .collect()
    };

    // The data rows of version 1, as the engine writes them (a first warm-up too).
    canned.start_recording();
    publish_all(&engine, &ctx, "record", false, creates()).await;
    let rows = data_rows(&canned.stop_recording(), &tables.data);
    assert_eq!(rows.len(), orders);

    // Creates: every GetItem finds nothing.
    let mut timed = Vec::new();
    for rep in 1..=reps {
        let (m, _) = publish_all(&engine, &ctx, &format!("create #{rep}"), false, creates()).await;
        timed.push(m);
    }
    let before = canned.requests();
    let (counted, items) = publish_all(&engine, &ctx, "create counted", true, creates()).await;
    assert_eq!(
        canned.requests() - before,
        2 * orders,
        "GetItem + TransactWriteItems"
    );
    assert!(items.iter().all(|item| item.version == 1));
    let create = Runs { timed, counted };

    // Updates at version 1: every GetItem finds the order's data row.
    let updates = |canned: &Canned| -> Vec<CommandInput> {
        canned.answer_get_items(items.iter().map(|item| rows[item.sk.as_str()].clone()));
        items
            .iter()
            .map(|item| update_command(item, "confirmed"))
            .collect()
    };
    let mut timed = Vec::new();
    for rep in 1..=reps {
        let commands = updates(&canned);
        let (m, updated) = publish_all(&engine, &ctx, &format!("update #{rep}"), false, commands).await;
        assert!(updated.iter().all(|item| item.version == 2));
        timed.push(m);
    }
    let commands = updates(&canned);
    let before = canned.requests();
    let (counted, updated) = publish_all(&engine, &ctx, "update counted", true, commands).await;
    assert_eq!(
        canned.requests() - before,
        2 * orders,
        "GetItem + TransactWriteItems"
    );
    assert!(updated.iter().all(|item| item.version == 2));
    assert_eq!(canned.get_items_left(), 0);
    let update = Runs { timed, counted };

    // Typed creates and updates.
    let typed_creates = || -> Vec<(CommandInput, OrderState)> {
        (0..orders)
            .map(|i| (CommandInput::new(PK, order_sk(i)), order_state(i)))
            .collect()
    };
    let mut timed = Vec::new();
    for rep in 1..=reps {
        let label = format!("typed create #{rep}");
        timed.push(
            publish_all_typed(&engine, &ctx, &label, false, typed_creates())
                .await
                .0,
        );
    }
    let (counted, typed_items) =
        publish_all_typed(&engine, &ctx, "typed create counted", true, typed_creates()).await;
    let typed_create = Runs { timed, counted };
    let typed_updates = |canned: &Canned| -> Vec<(CommandInput, OrderState)> {
        canned.answer_get_items(
            typed_items
                .iter()
                .map(|order| rows[order.item.sk.as_str()].clone()),
        );
        typed_items
            .iter()
            .map(|order| {
                let (command, mut state) = order.clone().update();
                state.status = Status::Confirmed;
                (command, state)
            })
            .collect()
    };
    let mut timed = Vec::new();
    for rep in 1..=reps {
        let commands = typed_updates(&canned);
        let label = format!("typed update #{rep}");
        let (m, updated) = publish_all_typed(&engine, &ctx, &label, false, commands).await;
        assert!(updated.iter().all(|order| order.item.version == 2));
        timed.push(m);
    }
    let commands = typed_updates(&canned);
    let (counted, updated) = publish_all_typed(&engine, &ctx, "typed update counted", true, commands).await;
    assert!(updated.iter().all(|order| order.item.version == 2));
    assert_eq!(canned.get_items_left(), 0);
    let typed_update = Runs { timed, counted };

    // The stand-in alone.
    let mut timed = Vec::new();
    for rep in 1..=reps {
        timed.push(canned_alone(n, false, &format!("canned #{rep}")).await);
    }
    let counted = canned_alone(n, true, "canned counted").await;
    let alone = Runs { timed, counted };

    vec![
        row("create (`GetItem` → `{}`)", &create),
        row("update at `Exactly(1)` (`GetItem` → the data row)", &update),
        row(
            "typed create (`publish_sync_typed`, serialization included)",
            &typed_create,
        ),
        row(
            "typed update at `Exactly(1)` (`publish_sync_typed`)",
            &typed_update,
        ),
        row(
            "the stand-in HTTP client alone: 2 answers (included in each row above)",
            &alone,
        ),
    ]
}

/// The CPU's model name, from `/proc/cpuinfo`.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn main() {
    let n = env_number("CQRS_BENCH_ITERATIONS", ITERATIONS);
    let reps = env_number("CQRS_BENCH_REPS", REPS);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let started = cqrs_benches::cpu::process();
    let rows = runtime.block_on(run(n, reps));
    let total: Duration = cqrs_benches::cpu::process() - started;
    println!(
        "\n### DynamoDB: client CPU per `publish_sync`, network excluded\n\n\
         In-process stand-in for DynamoDB (canned answers, no socket); one thread. {n} publishes per run \
         after {WARMUP} unmeasured; {reps} timed runs (median, best), then one run counting allocations. \
         CPU: {}. Process CPU of the whole bench: {:.1} s.\n",
        cpu_model(),
        total.as_secs_f64()
    );
    print!(
        "{}",
        backends::markdown_table(
            &[
                "publish_sync",
                "thread CPU µs / op",
                "process CPU µs / op",
                "wall µs / op",
                "allocations / op",
                "bytes requested / op",
            ],
            &rows
        )
    );
}
