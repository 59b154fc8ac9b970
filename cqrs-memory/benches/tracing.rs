//! What tracing costs a publish: off (no subscriber), spans recorded but not
//! exported (a subscriber without OpenTelemetry: how a server that only logs
//! runs), and exported through OpenTelemetry (every span built and handed to
//! the SDK, which batches it for export; nothing is sent).
//!
//! cqrs-core is built with its feature `opentelemetry` here (the tests' dev
//! dependency turns it on), so "off" is the cost of the feature compiled in
//! and not used; compare it with `publish`'s numbers of a build without it.
//!
//! `cargo bench -p cqrs-serverless-memory --bench tracing`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cqrs_core::{CommandInput, CommandService, InvocationContext};
use cqrs_memory::InMemory;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tracing::Instrument as _;
use tracing_subscriber::layer::SubscriberExt as _;

const PK: &str = "TENANT#shop-a";

/// A handler interested in everything, doing nothing.
struct Noop;

#[async_trait::async_trait]
impl cqrs_core::DataSyncHandler for Noop {
    fn name(&self) -> &str {
        "noop"
    }

    async fn handle(&self, _: &cqrs_core::DataSyncEvent) -> Result<(), cqrs_core::BoxError> {
        Ok(())
    }
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let ctx = InvocationContext::new("shop-a", "bench");
    let mut group = c.benchmark_group("tracing");
    group.throughput(Throughput::Elements(1));
    let engine = InMemory::engine().handler(Noop).build();
    let next = AtomicU64::new(0);
    let publish = || async {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let command =
            CommandInput::new(PK, format!("ORDER#{i:08}")).attributes(serde_json::json!({ "n": i }));
        engine
            .publish_sync(command, &ctx)
            .instrument(tracing::info_span!("request"))
            .await
            .expect("publish")
    };

    group.bench_function("publish_sync+handler/off", |b| b.to_async(&rt).iter(publish));

    let recorded = Arc::new(tracing_subscriber::registry());
    group.bench_function("publish_sync+handler/spans_recorded", |b| {
        let _guard = tracing::subscriber::set_default(recorded.clone());
        b.to_async(&rt).iter(publish)
    });

    // Batched as an exporting server's are; the in-memory exporter is
    // cleared between runs so that memory stays flat.
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter.clone())
        .build();
    let exported = Arc::new(
        tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("bench"))),
    );
    group.bench_function("publish_sync+handler/exported", |b| {
        let _guard = tracing::subscriber::set_default(exported.clone());
        b.to_async(&rt).iter(publish);
        exporter.reset();
    });
    group.finish();
    let _ = provider.shutdown();
}

criterion_group!(tracing_cost, benches);
criterion_main!(tracing_cost);
