//! The trace context travels with the command (feature `opentelemetry`):
//! the engine that applies a command, in another process, continues the
//! trace of the publish. Each "process" here has its own engine and its own
//! tracer provider (exporting to memory) over one shared storage.

use std::sync::Arc;

use async_trait::async_trait;
use cqrs_core::{
    AsyncDispatch, BoxError, CommandInput, CommandService, DataSyncEvent, DataSyncHandler, Engine, EntityKey,
    InvocationContext, Storage,
};
use cqrs_memory::InMemory;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing::Instrument as _;
use tracing_subscriber::layer::SubscriberExt as _;

const PK: &str = "TENANT#shop-a";

struct Counts;

#[async_trait]
impl DataSyncHandler for Counts {
    fn name(&self) -> &str {
        "counts"
    }

    async fn handle(&self, _event: &DataSyncEvent) -> Result<(), BoxError> {
        Ok(())
    }
}

/// A process's tracing: its subscriber, and the spans it exported.
struct Process {
    provider: SdkTracerProvider,
    exporter: InMemorySpanExporter,
    subscriber: Arc<dyn tracing::Subscriber + Send + Sync>,
}

impl Process {
    fn traced(name: &'static str) -> Process {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer(name));
        let subscriber = Arc::new(tracing_subscriber::registry().with(layer));
        Process {
            provider,
            exporter,
            subscriber,
        }
    }

    /// Runs the work `start` makes with this process's subscriber (its
    /// spans are made under it too).
    async fn run<F: std::future::Future>(&self, start: impl FnOnce() -> F) -> F::Output {
        let _guard = tracing::subscriber::set_default(self.subscriber.clone());
        start().await
    }

    fn spans(&self) -> Vec<SpanData> {
        self.provider.force_flush().expect("flushed");
        self.exporter.get_finished_spans().expect("spans")
    }
}

fn named<'a>(spans: &'a [SpanData], name: &str) -> Vec<&'a SpanData> {
    spans.iter().filter(|s| s.name == name).collect()
}

fn one<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    let found = named(spans, name);
    assert_eq!(
        found.len(),
        1,
        "one {name} span: {:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    found[0]
}

fn engine(storage: Arc<dyn Storage>, dispatch: AsyncDispatch) -> Engine {
    Engine::builder(storage)
        .handler(Counts)
        .dispatch(dispatch)
        .build()
}

fn ctx() -> InvocationContext {
    InvocationContext::new("shop-a", "tester")
}

#[tokio::test]
async fn the_engine_that_applies_a_command_continues_the_publishers_trace() {
    let storage: Arc<dyn Storage> = Arc::new(InMemory::new());
    let publisher = Process::traced("publisher");
    let applier = Process::traced("applier");

    // The publisher only stores the command (the stream applies it).
    let publishing = engine(storage.clone(), AsyncDispatch::External);
    publisher
        .run(|| {
            async {
                publishing
                    .publish_async(
                        CommandInput::new(PK, "ORDER#1").attributes(serde_json::json!({"n": 1})),
                        &ctx(),
                    )
                    .await
                    .expect("published");
            }
            .instrument(tracing::info_span!("request"))
        })
        .await;
    let published = publisher.spans();
    let request = one(&published, "request");
    let command = one(&published, "command");
    assert_eq!(command.parent_span_id, request.span_context.span_id());
    let stored = storage
        .get_command(&EntityKey::new(PK, "ORDER#1"), 1)
        .await
        .expect("read")
        .expect("stored");
    let trace_id = request.span_context.trace_id();
    assert_eq!(
        stored.traceparent.as_deref(),
        Some(format!("00-{trace_id}-{}-01", command.span_context.span_id()).as_str()),
        "the row holds the publish span's context"
    );

    // Another engine, another tracer: it settles the command from the row.
    let applying = engine(storage.clone(), AsyncDispatch::External);
    applier
        .run(|| async {
            applying
                .settle(&EntityKey::new(PK, "ORDER#1"), 1)
                .await
                .expect("settled")
        })
        .await;
    let applied = applier.spans();
    let settle = one(&applied, "settle");
    assert_eq!(settle.span_context.trace_id(), trace_id, "the same trace");
    assert_eq!(settle.parent_span_id, command.span_context.span_id());
    assert!(settle.parent_span_is_remote);
    let process = one(&applied, "process");
    assert_eq!(process.parent_span_id, settle.span_context.span_id());
    let handler = one(&applied, "handler");
    assert_eq!(handler.parent_span_id, process.span_context.span_id());
    assert!(applied.iter().all(|s| s.span_context.trace_id() == trace_id));
}

#[tokio::test]
async fn the_in_process_worker_continues_the_trace_of_the_publish() {
    let storage: Arc<dyn Storage> = Arc::new(InMemory::new());
    let process = Process::traced("server");
    let engine = engine(storage, AsyncDispatch::InProcess);
    process
        .run(|| async {
            engine
                .publish_async(CommandInput::new(PK, "ORDER#2"), &ctx())
                .instrument(tracing::info_span!("request"))
                .await
                .expect("published");
            engine.wait_idle().await;
        })
        .await;
    let spans = process.spans();
    let command = one(&spans, "command");
    let worker = one(&spans, "process");
    assert_eq!(worker.span_context.trace_id(), command.span_context.trace_id());
    assert_eq!(worker.parent_span_id, command.span_context.span_id());
    let handler = one(&spans, "handler");
    assert_eq!(handler.parent_span_id, worker.span_context.span_id());
}

#[tokio::test]
async fn without_a_tracer_nothing_is_stored() {
    let storage: Arc<dyn Storage> = Arc::new(InMemory::new());
    let engine = engine(storage.clone(), AsyncDispatch::External);
    // Spans are recorded (a subscriber without OpenTelemetry), none exported.
    let _guard = tracing::subscriber::set_default(tracing_subscriber::registry());
    engine
        .publish_async(CommandInput::new(PK, "ORDER#3"), &ctx())
        .instrument(tracing::info_span!("request"))
        .await
        .expect("published");
    let stored = storage
        .get_command(&EntityKey::new(PK, "ORDER#3"), 1)
        .await
        .expect("read")
        .expect("stored");
    assert_eq!(stored.traceparent, None);
}
