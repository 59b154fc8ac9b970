//! Throughput of the core operations on the in-memory backend.
//!
//! `cargo bench -p cqrs-serverless-memory --bench publish`

use std::sync::atomic::{AtomicU64, Ordering};

use cqrs_core::{
    CommandInput, CommandService, DataService, EntityKey, ExpectedVersion, InvocationContext, ListQuery,
    SequenceRequest, SequenceService, SkCondition,
};
use cqrs_memory::InMemory;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use serde_json::json;

const PK: &str = "TENANT#shop-a";

/// A handler interested in everything, doing nothing: the pipeline's own cost.
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

fn order_attributes(i: u64) -> serde_json::Value {
    json!({
        "customerId": format!("CUST-{i}"),
        "items": [{"productCode": "PRD-001", "name": "Wireless Mouse", "quantity": 2, "price": 29.99}],
        "shippingAddress": {"street": "123 Main St", "city": "Tokyo", "postalCode": "100-0001", "country": "JP"},
        "paymentMethod": "credit_card",
        "subtotal": 59.98, "tax": 6.0, "total": 65.98,
        "status": "pending",
    })
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let ctx = InvocationContext::new("shop-a", "bench");
    let mut group = c.benchmark_group("memory");
    group.throughput(Throughput::Elements(1));

    let engine = InMemory::engine().build();
    let next = AtomicU64::new(0);
    group.bench_function("publish_sync/create", |b| {
        b.to_async(&rt).iter(|| async {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let command = CommandInput::new(PK, format!("ORDER#{i:08}")).attributes(order_attributes(i));
            engine.publish_sync(command, &ctx).await.expect("publish")
        })
    });

    // With a handler interested: the write and the handler run on a task of
    // their own (a dropped caller cancels nothing), and completion is recorded.
    let engine = InMemory::engine().handler(Noop).build();
    group.bench_function("publish_sync/create+handler", |b| {
        b.to_async(&rt).iter(|| async {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let command = CommandInput::new(PK, format!("ORDER#{i:08}")).attributes(order_attributes(i));
            engine.publish_sync(command, &ctx).await.expect("publish")
        })
    });

    let engine = InMemory::engine().build();
    let key = EntityKey::new(PK, "ORDER#00000001");
    rt.block_on(engine.publish_sync(
        CommandInput::new(PK, &key.sk).attributes(order_attributes(0)),
        &ctx,
    ))
    .expect("seed");
    let version = AtomicU64::new(1);
    group.bench_function("publish_sync/update", |b| {
        b.to_async(&rt).iter(|| async {
            let v = version.fetch_add(1, Ordering::Relaxed);
            let command = CommandInput::new(PK, &key.sk)
                .attributes(order_attributes(v))
                .version(ExpectedVersion::Exactly(v));
            engine.publish_sync(command, &ctx).await.expect("publish")
        })
    });

    group.bench_function("get_item", |b| {
        b.to_async(&rt)
            .iter(|| async { engine.get_item(&key, &ctx).await.expect("get") })
    });

    // Read-your-writes: the data row and the latest command.
    group.bench_function("get_latest", |b| {
        b.to_async(&rt)
            .iter(|| async { engine.get_latest(&key, &ctx).await.expect("get") })
    });

    // Read, decide, write at the version read: no contention here, so the
    // cost over publish_sync/update is the read and the closure.
    let services = engine.services();
    group.bench_function("update_with", |b| {
        b.to_async(&rt).iter(|| async {
            services
                .update_with(&key, &ctx, |current| {
                    let item = current.ok_or_else(|| cqrs_core::Error::not_found(&key))?;
                    let n = item.attributes["n"].as_u64().unwrap_or(0);
                    let mut attributes = item.attributes.clone();
                    attributes["n"] = json!(n + 1);
                    Ok::<_, cqrs_core::Error>(Some(CommandInput::update_of(item).attributes(attributes)))
                })
                .await
                .expect("update")
        })
    });

    let engine = InMemory::engine().build();
    rt.block_on(async {
        for i in 0..1000 {
            let command = CommandInput::new(PK, format!("ORDER#{i:08}")).attributes(order_attributes(i));
            engine.publish_sync(command, &ctx).await.expect("seed");
        }
    });
    group.bench_function("list_items/page_of_20", |b| {
        b.to_async(&rt).iter(|| async {
            let query = ListQuery::new()
                .sk(SkCondition::BeginsWith("ORDER#".into()))
                .limit(20);
            engine.list_items(PK, query, &ctx).await.expect("list")
        })
    });

    // An idempotency key rides in the command's write: its cost is the key
    // row (and its fingerprint), not a read.
    let engine = InMemory::engine().build();
    group.bench_function("publish_sync/create+idempotency_key", |b| {
        b.to_async(&rt).iter(|| async {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let command = CommandInput::new(PK, format!("ORDER#{i:08}"))
                .attributes(order_attributes(i))
                .idempotency_key(format!("key-{i}"));
            engine.publish_sync(command, &ctx).await.expect("publish")
        })
    });
    let retried = CommandInput::new(PK, "ORDER#RETRIED")
        .attributes(order_attributes(0))
        .idempotency_key("retried");
    rt.block_on(engine.publish_sync(retried.clone(), &ctx))
        .expect("first");
    group.bench_function("publish_sync/idempotent_retry", |b| {
        b.to_async(&rt)
            .iter(|| async { engine.publish_sync(retried.clone(), &ctx).await.expect("retry") })
    });

    let request = SequenceRequest::new("ORDER").format("ORD-{no:06}");
    group.bench_function("sequence_next", |b| {
        b.to_async(&rt)
            .iter(|| async { engine.next(&request, &ctx).await.expect("next") })
    });

    let engine = InMemory::engine().build();
    group.bench_function("publish_async+apply/create", |b| {
        b.iter_batched(
            || {
                let i = next.fetch_add(1, Ordering::Relaxed);
                CommandInput::new(PK, format!("ORDER#{i:08}")).attributes(order_attributes(i))
            },
            |command| {
                rt.block_on(async {
                    engine.publish_async(command, &ctx).await.expect("publish");
                    engine.wait_idle().await;
                })
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(publish, benches);
criterion_main!(publish);
