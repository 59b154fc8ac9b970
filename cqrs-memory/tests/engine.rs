//! Engine behaviour that does not depend on the backend, through the public API.

use async_trait::async_trait;
use cqrs_core::{
    BoxError, CommandInput, CommandService, CommandStatus, DataSyncEvent, DataSyncHandler, EntityKey,
    InvocationContext, RetryPolicy,
};
use cqrs_memory::InMemory;

struct Panics;

#[async_trait]
impl DataSyncHandler for Panics {
    fn name(&self) -> &str {
        "panics"
    }

    async fn handle(&self, _event: &DataSyncEvent) -> Result<(), BoxError> {
        panic!("handler bug")
    }
}

fn quick_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 2,
        initial_backoff: std::time::Duration::from_millis(1),
        max_backoff: std::time::Duration::from_millis(1),
    }
}

#[tokio::test]
async fn a_panicking_handler_is_a_recorded_failure_sync() {
    let engine = InMemory::engine().handler(Panics).retry(quick_retry()).build();
    let ctx = InvocationContext::new("shop-a", "u");
    let item = engine
        .publish_sync(CommandInput::new("TENANT#shop-a", "P#1"), &ctx)
        .await
        .expect("the publish itself succeeds")
        .into_item();
    let failures = engine.list_failures(&ctx).await.expect("list");
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].failures[0].handler, "panics");
    assert_eq!(failures[0].failures[0].error, "panicked: handler bug");
    assert_eq!(failures[0].failures[0].attempts, 2);
    let command = engine
        .get_command(&item.key(), 1, &ctx)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(command.status, CommandStatus::Failed);
}

#[tokio::test]
async fn a_panicking_handler_does_not_stop_the_background_processor() {
    let engine = InMemory::engine().handler(Panics).retry(quick_retry()).build();
    let ctx = InvocationContext::new("shop-a", "u");
    for sk in ["P#1", "P#2"] {
        let _ = engine
            .publish_async(CommandInput::new("TENANT#shop-a", sk), &ctx)
            .await
            .expect("publish");
    }
    engine.wait_idle().await;
    assert_eq!(engine.list_failures(&ctx).await.expect("list").len(), 2);
    let key = EntityKey::new("TENANT#shop-a", "P#2");
    assert_eq!(
        engine
            .get_command(&key, 1, &ctx)
            .await
            .expect("get")
            .expect("exists")
            .status,
        CommandStatus::Failed
    );
}

#[tokio::test]
async fn wait_idle_returns_at_once_without_async_work() {
    let engine = InMemory::engine().build();
    engine.wait_idle().await;
    assert!(format!("{engine:?}").contains("Engine"));
}

#[test]
#[should_panic(expected = "two data-sync handlers are named 'panics'")]
fn duplicate_handler_names_are_refused_at_build() {
    let _ = InMemory::engine().handler(Panics).handler(Panics).build();
}
