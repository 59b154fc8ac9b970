//! `StorageDecorator`: a decorator that overrides nothing is the backend it
//! wraps (the whole conformance suite passes through it), and one that
//! overrides a single method keeps every other behaviour of the backend.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use cqrs_core::{
    tenant_pk, ApplyWrite, CommandInput, CommandService, Engine, InvocationContext, Result, Storage,
    StorageDecorator, StorageLimits,
};
use cqrs_memory::InMemory;
use serde_json::json;

/// Forwards every call.
#[derive(Debug)]
struct PassThrough(Arc<dyn Storage>);

impl StorageDecorator for PassThrough {
    fn inner(&self) -> &dyn Storage {
        self.0.as_ref()
    }
}

mod pass_through {
    use super::*;

    cqrs_core::conformance_tests!(|| async {
        Arc::new(PassThrough(Arc::new(InMemory::new()))) as Arc<dyn Storage>
    });
}

/// Counts atomic writes and overrides nothing else.
#[derive(Debug)]
struct CountWrites {
    inner: Arc<dyn Storage>,
    writes: AtomicUsize,
}

#[async_trait]
impl StorageDecorator for CountWrites {
    fn inner(&self) -> &dyn Storage {
        self.inner.as_ref()
    }

    async fn apply(&self, writes: &[ApplyWrite]) -> Result<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.apply(writes).await
    }
}

#[tokio::test]
async fn a_decorator_of_apply_sees_every_write_and_keeps_the_backends_limits() {
    let limits = StorageLimits {
        max_item_bytes: 1_000,
        ..StorageLimits::default()
    };
    let storage = Arc::new(CountWrites {
        inner: Arc::new(InMemory::with_limits(limits)),
        writes: AtomicUsize::new(0),
    });
    assert_eq!(
        Storage::limits(storage.as_ref()),
        limits,
        "limits come from the inner backend"
    );

    // No handler: the engine writes through `apply_one`, which a decorator
    // that changes `apply` must see too.
    let engine = Engine::builder(storage.clone()).build();
    let ctx = InvocationContext::new("shop-a", "user-1");
    for n in 0..3 {
        let command =
            CommandInput::new(tenant_pk("shop-a"), format!("ORDER#{n}")).attributes(json!({ "n": n }));
        engine.publish_sync(command, &ctx).await.unwrap();
    }
    assert_eq!(storage.writes.load(Ordering::Relaxed), 3);

    // The inner backend's limit, not DynamoDB's default, refuses this one.
    let large = CommandInput::new(tenant_pk("shop-a"), "ORDER#large")
        .attributes(json!({ "text": "x".repeat(2_000) }));
    let error = engine.publish_sync(large, &ctx).await.unwrap_err();
    assert!(
        matches!(error, cqrs_core::Error::TooLarge { limit: 1_000, .. }),
        "{error}"
    );
}
