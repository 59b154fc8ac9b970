//! Logs, and traces exported over OTLP when configured.
//!
//! Logs always go to stderr (filtered by `RUST_LOG`). Traces are exported
//! when an OTLP endpoint is given — `--otlp-endpoint URL`, or the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` — to
//! an OpenTelemetry collector (or Jaeger, Tempo, Honeycomb... anything that
//! takes OTLP over HTTP). The exporter reads the other standard variables
//! itself: `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf`, the default, or
//! `http/json`), `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_SCHEDULE_DELAY`...;
//! `OTEL_SERVICE_NAME` names the process (default `ecommerce`).
//!
//! With export on, every request is a `request` span that continues the
//! caller's trace when it sends a `traceparent` header, and the framework
//! stores each command's trace context with it, so the stream consumer (or
//! Lambda) that applies it continues the same trace: one trace per request,
//! across processes (see `cqrs_core::trace`). Off, no span is exported and
//! nothing is stored with the commands.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{SpanExporter, WithExportConfig as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// The service name when `OTEL_SERVICE_NAME` is not set.
pub const DEFAULT_SERVICE_NAME: &str = "ecommerce";

/// The environment variables that switch trace export on by themselves.
const ENDPOINT_VARIABLES: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// How this process logs and traces.
#[derive(Debug, Clone, Default)]
pub struct TelemetryConfig {
    /// The log filter when `RUST_LOG` is not set (`info`, `error`...).
    pub default_log_filter: String,
    /// The OTLP/HTTP base URL (`/v1/traces` is appended); `None`: the
    /// standard environment variables decide.
    pub otlp_endpoint: Option<String>,
}

/// The installed subscriber; [`Telemetry::shutdown`] exports the spans
/// still buffered (call it before the process exits).
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Installs the global `tracing` subscriber: logs to stderr, and an
    /// OpenTelemetry layer when export is configured. Fails when the
    /// exporter cannot be built (a malformed endpoint, say).
    pub fn init(config: &TelemetryConfig) -> Result<Telemetry, String> {
        let filter =
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.default_log_filter));
        let logs = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(filter);
        let provider = match exporting(config) {
            Some(endpoint) => Some(provider(endpoint)?),
            None => None,
        };
        // Spans of the framework and of the shop at `info`, whatever the log
        // filter says: the trace is whole even when the logs are quiet.
        let traces = provider.as_ref().map(|provider| {
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("ecommerce"))
                .with_filter(EnvFilter::new("info"))
        });
        tracing_subscriber::registry()
            .with(logs)
            .with(traces)
            .try_init()
            .map_err(|e| format!("cannot install the tracing subscriber: {e}"))?;
        Ok(Telemetry { provider })
    }

    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// A function that exports the spans buffered so far (a no-op when
    /// spans are not exported): what the Lambda function calls after each
    /// invocation, before Lambda freezes the process. Call it from a
    /// multi-threaded Tokio runtime (it blocks while the spans are sent).
    pub fn flusher(&self) -> impl Fn() + Send + Sync + 'static {
        let provider = self.provider.clone();
        move || {
            if let Some(provider) = &provider {
                let flushed = tokio::task::block_in_place(|| provider.force_flush());
                if let Err(error) = flushed {
                    tracing::warn!(%error, "spans not exported");
                }
            }
        }
    }

    /// Exports what is buffered and stops the exporter.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(error) = provider.shutdown() {
                eprintln!("warning: traces not all exported: {error}");
            }
        }
    }
}

/// `Some(endpoint)` when spans are to be exported: the endpoint given, or
/// `Some(None)` when the environment names one.
fn exporting(config: &TelemetryConfig) -> Option<Option<&str>> {
    match config.otlp_endpoint.as_deref() {
        Some(endpoint) => Some(Some(endpoint)),
        None => ENDPOINT_VARIABLES
            .iter()
            .any(|name| std::env::var_os(name).is_some_and(|value| !value.is_empty()))
            .then_some(None),
    }
}

fn provider(endpoint: Option<&str>) -> Result<SdkTracerProvider, String> {
    let mut exporter = SpanExporter::builder().with_http();
    if let Some(endpoint) = endpoint {
        exporter = exporter.with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')));
    }
    let exporter = exporter
        .build()
        .map_err(|e| format!("cannot set up the OTLP trace exporter: {e}"))?;
    let service = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned());
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service).build())
        .build())
}
