//! One trace from an HTTP request to the handlers in another process.
//!
//! The API server (`serve --pipeline external`: it only publishes) and a
//! stream consumer (`consume`) run as separate processes on DynamoDB Local,
//! both exporting spans over OTLP/HTTP (JSON) to a collector this test runs.
//! One order placed with a `traceparent` header must yield one trace: the
//! request and the publish in the server, the settle, the apply and every
//! handler in the consumer — with no attribute value in any span.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::post;
use axum::Router;
use common::{binary, dynamodb, free_port, order_body, prefix, read_db, token, SECRET};
use ecommerce::auth::SECRET_ENV;
use serde_json::Value;

/// The trace the test's client starts: the request continues it.
const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// A span as exported: the parts this test reads.
#[derive(Debug, Clone)]
struct Exported {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: Vec<(String, String)>,
}

impl Exported {
    fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// An OTLP/HTTP receiver of traces in JSON (`POST /v1/traces`).
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Exported>>>,
}

impl Collector {
    async fn start(self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let spans = self.spans.clone();
        let app = Router::new().route(
            "/v1/traces",
            post(move |body: axum::body::Bytes| {
                let spans = spans.clone();
                async move {
                    let request: Value = serde_json::from_slice(&body).expect("OTLP JSON");
                    spans.lock().expect("lock").extend(parse(&request));
                    "{}"
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    fn spans(&self) -> Vec<Exported> {
        self.spans.lock().expect("lock").clone()
    }
}

/// The spans of an `ExportTraceServiceRequest` in OTLP's JSON encoding.
fn parse(request: &Value) -> Vec<Exported> {
    let mut spans = Vec::new();
    for resource in request["resourceSpans"].as_array().into_iter().flatten() {
        let service = attributes(&resource["resource"]["attributes"])
            .into_iter()
            .find(|(k, _)| k == "service.name")
            .map(|(_, v)| v)
            .unwrap_or_default();
        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
            for span in scope["spans"].as_array().into_iter().flatten() {
                let text = |field: &str| span[field].as_str().unwrap_or_default().to_owned();
                spans.push(Exported {
                    service: service.clone(),
                    name: text("name"),
                    trace_id: text("traceId").to_lowercase(),
                    span_id: text("spanId").to_lowercase(),
                    parent_span_id: text("parentSpanId").to_lowercase(),
                    attributes: attributes(&span["attributes"]),
                });
            }
        }
    }
    spans
}

/// OTLP key-values as text (`stringValue`, `intValue` (a string in JSON), ...).
fn attributes(list: &Value) -> Vec<(String, String)> {
    list.as_array()
        .into_iter()
        .flatten()
        .map(|kv| {
            let value = kv["value"]
                .as_object()
                .and_then(|v| v.values().next())
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                .unwrap_or_default();
            (kv["key"].as_str().unwrap_or_default().to_owned(), value)
        })
        .collect()
}

/// A process of the example, exporting its spans to `collector` as `service`.
struct Process {
    child: Child,
    log: std::path::PathBuf,
}

impl Process {
    fn start(service: &str, collector: &str, args: &[&str]) -> Process {
        let log = std::env::temp_dir().join(format!("ecommerce-trace-{service}-{}.log", free_port()));
        let child = Command::new(binary())
            .args(args)
            .env(SECRET_ENV, SECRET)
            .env("RUST_LOG", "warn")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", collector)
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
            .env("OTEL_SERVICE_NAME", service)
            // Export within a tenth of a second, not the default five.
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("the process starts");
        Process { child, log }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM; a graceful shutdown exports what is left and exits 0.
    async fn terminate(mut self) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success());
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("waitable") {
                assert!(
                    status.success(),
                    "exit 0 after SIGTERM: {status}\n{}",
                    self.log_text()
                );
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no exit:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
async fn one_order_is_one_trace_from_the_request_to_the_handlers_in_the_consumer() {
    let Some(endpoint) = dynamodb() else {
        eprintln!("skipped: DYNAMODB_ENDPOINT not set");
        return;
    };
    let collector = Collector::default();
    let collector_url = collector.clone().start().await;
    let prefix = prefix("trace");
    let read_db = read_db(&prefix);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let shared = [
        "--backend",
        "dynamodb",
        "--dynamodb-endpoint",
        &endpoint,
        "--table-prefix",
        &prefix,
        "--read-db",
        &read_db,
        "--lease-duration",
        "2",
    ];
    let api_args: Vec<&str> = ["serve", "--pipeline", "external", "--addr", &addr]
        .into_iter()
        .chain(shared)
        .collect();
    let api = Process::start("api", &collector_url, &api_args);
    let url = format!("http://{addr}");
    wait_healthy(&url, &api).await;
    let consumer_args: Vec<&str> = ["consume"].into_iter().chain(shared).collect();
    let consumer = Process::start("consumer", &collector_url, &consumer_args);

    let client = reqwest::Client::new();
    let response = client
        .post(format!("{url}/orders"))
        .bearer_auth(token())
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .json(&order_body(0))
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 201, "{:?}", response.text().await);
    let order: Value = response.json().await.expect("json");
    let code = order["code"].as_str().expect("code").to_owned();

    // The consumer applies the order and runs its handlers: the order's
    // (which reserves stock, a sync publish of the order's next version, and
    // queues a confirmation that the outbox relay sends) and the two
    // projections. Spans are exported as they end.
    let handlers = ["order-search", "order-sync", "sales-report"];
    let started = Instant::now();
    loop {
        let spans: Vec<Exported> = collector
            .spans()
            .into_iter()
            .filter(|s| s.trace_id == CLIENT_TRACE)
            .collect();
        let relayed = spans.iter().any(|s| {
            s.name == "handler" && s.attribute("name").is_some_and(|n| n.starts_with("outbox-relay"))
        });
        if relayed && spans.iter().any(|s| s.name == "settle") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the consumer's spans not all exported within 60 s;\n\
             spans: {:#?}\napi log:\n{}\nconsumer log:\n{}",
            summary(&spans),
            api.log_text(),
            consumer.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Give the last spans of the trace (those ending with the relay's) time to arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let spans: Vec<Exported> = collector
        .spans()
        .into_iter()
        .filter(|s| s.trace_id == CLIENT_TRACE)
        .collect();

    let find = |service: &str, name: &str, parent: &str| -> Exported {
        let found: Vec<_> = spans
            .iter()
            .filter(|s| s.service == service && s.name == name && s.parent_span_id == parent)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "one {name} span in {service} under {parent}: {:#?}",
            summary(&spans)
        );
        found[0].clone()
    };
    // In the server: the request continues the client's trace, the publish
    // is its child.
    let request = find("api", "POST /orders", CLIENT_SPAN);
    assert_eq!(request.attribute("http.response.status_code"), Some("201"));
    assert_eq!(request.attribute("http.route"), Some("/orders"));
    let command = find("api", "command", &request.span_id);
    assert_eq!(command.attribute("mode"), Some("async"));
    assert_eq!(command.attribute("tenant"), Some(common::TENANT));
    assert_eq!(command.attribute("sk"), Some(format!("ORDER#{code}").as_str()));

    // In the consumer, another process: the settle continues the publish's
    // span, read from the command row; the apply and the handlers follow.
    let settle = find("consumer", "settle", &command.span_id);
    assert_eq!(settle.attribute("found"), Some("published"));
    assert_eq!(settle.attribute("outcome"), Some("finished"));
    assert_eq!(settle.attribute("version"), Some("1"));
    let process = find("consumer", "process", &settle.span_id);
    assert_eq!(process.attribute("outcome"), Some("finished"));
    assert_eq!(process.attribute("sk"), Some(format!("ORDER#{code}").as_str()));
    let mut ran: Vec<&str> = spans
        .iter()
        .filter(|s| s.name == "handler" && s.parent_span_id == process.span_id)
        .inspect(|s| {
            assert_eq!(s.service, "consumer");
            assert_eq!(s.attribute("outcome"), Some("ok"), "{s:?}");
            assert_eq!(s.attribute("attempt"), Some("1"), "{s:?}");
        })
        .filter_map(|s| s.attribute("name"))
        .collect();
    ran.sort_unstable();
    assert_eq!(ran, handlers, "each handler of the order ran once, in the trace");
    // What the order's handler did is in the trace too: its sync publish of
    // the order's next version, and the confirmation the relay sent.
    let order_sync = find_handler(&spans, &process, "order-sync");
    let published: Vec<(&str, &str)> = spans
        .iter()
        .filter(|s| s.name == "command" && s.parent_span_id == order_sync.span_id)
        .filter_map(|s| Some((s.attribute("sk")?, s.attribute("mode")?)))
        .collect();
    assert!(
        published.contains(&(format!("ORDER#{code}").as_str(), "sync")),
        "the reservation's publish of the order is in the trace: {published:?}"
    );
    let relays = spans
        .iter()
        .filter(|s| s.name == "handler" && s.attribute("name").is_some_and(|n| n.starts_with("outbox-relay")))
        .count();
    assert!(relays >= 1, "the confirmation's relay is in the trace");
    assert!(spans.iter().all(|s| s.trace_id == CLIENT_TRACE));
    // No attribute value of the order in any span: they may be personal data.
    let body = order_body(0);
    let personal = [
        body["customerId"].as_str().expect("customer"),
        body["shippingAddress"]["street"].as_str().expect("street"),
    ];
    for span in &collector.spans() {
        for (key, value) in &span.attributes {
            assert!(
                !personal.iter().any(|p| value.contains(p)),
                "span {} carries an attribute value in {key}={value}",
                span.name
            );
        }
    }
    print_trace(&spans);
    api.terminate().await;
    consumer.terminate().await;
}

/// The run of handler `name` under `process`.
fn find_handler(spans: &[Exported], process: &Exported, name: &str) -> Exported {
    spans
        .iter()
        .find(|s| {
            s.name == "handler" && s.parent_span_id == process.span_id && s.attribute("name") == Some(name)
        })
        .cloned()
        .expect("the handler ran")
}

/// One line per span, for failure messages.
fn summary(spans: &[Exported]) -> Vec<String> {
    spans
        .iter()
        .map(|s| {
            format!(
                "{} {} {} {}<-{} {:?}",
                s.service, s.name, s.trace_id, s.span_id, s.parent_span_id, s.attributes
            )
        })
        .collect()
}

/// Prints the trace as a tree (the operations guide shows one).
fn print_trace(spans: &[Exported]) {
    fn print(spans: &[Exported], parent: &str, depth: usize) {
        for span in spans.iter().filter(|s| s.parent_span_id == parent) {
            let fields: Vec<String> = span
                .attributes
                .iter()
                .filter(|(k, _)| {
                    !k.starts_with("code.")
                        && !k.starts_with("thread.")
                        && k != "busy_ns"
                        && k != "idle_ns"
                        && k != "target"
                })
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            println!(
                "{}{} [{}] {}",
                "  ".repeat(depth),
                span.name,
                span.service,
                fields.join(" ")
            );
            print(spans, &span.span_id, depth + 1);
        }
    }
    let trace: Vec<_> = spans
        .iter()
        .filter(|s| s.trace_id == CLIENT_TRACE)
        .cloned()
        .collect();
    println!("trace {CLIENT_TRACE}:");
    print(&trace, CLIENT_SPAN, 1);
}

async fn wait_healthy(url: &str, process: &Process) {
    let started = Instant::now();
    loop {
        if let Ok(response) = reqwest::get(format!("{url}/health")).await {
            if response.status() == 200 {
                return;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the server did not answer within 60 s:\n{}",
            process.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
