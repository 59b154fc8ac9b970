//! Throughput against a DynamoDB endpoint (DynamoDB Local here): sequential
//! and concurrent publish-sync, get and sequence numbers.
//!
//! `./scripts/dynamodb-local` prints an endpoint; then
//! `DYNAMODB_ENDPOINT=http://127.0.0.1:PORT cargo bench -p cqrs-serverless-dynamodb --bench throughput`

use std::sync::Arc;
use std::time::{Duration, Instant};

use cqrs_core::{
    CommandInput, CommandService, DataService, Engine, EntityKey, InvocationContext, SequenceRequest,
    SequenceService,
};
use cqrs_dynamodb::{local_client, DynamoDbStorage, TableNames};
use serde_json::json;

const PK: &str = "TENANT#shop-a";
const RUN_FOR: Duration = Duration::from_secs(3);

fn order(i: usize) -> serde_json::Value {
    json!({
        "customerId": format!("CUST-{i}"),
        "items": [{"productCode": "PRD-001", "name": "Wireless Mouse", "quantity": 2, "price": 29.99}],
        "status": "pending", "total": 65.98,
    })
}

/// Runs `op` from `tasks` concurrent tasks for [`RUN_FOR`]; returns operations per second.
async fn measure<F, Fut>(tasks: usize, op: F) -> f64
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut done = 0usize;
                while start.elapsed() < RUN_FOR {
                    op(t * 1_000_000 + done).await;
                    done += 1;
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for handle in handles {
        total += handle.await.expect("task");
    }
    total as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let Ok(endpoint) = std::env::var("DYNAMODB_ENDPOINT") else {
        eprintln!("DYNAMODB_ENDPOINT is not set: start ./scripts/dynamodb-local and pass its endpoint");
        return;
    };
    let prefix = format!("bench-{}", std::process::id());
    let storage = DynamoDbStorage::new(local_client(&endpoint), TableNames::with_prefix(&prefix));
    storage.ensure_tables().await.expect("tables");
    let engine = Engine::builder(Arc::new(storage)).build();
    let ctx = InvocationContext::new("shop-a", "bench");

    println!("| operation | tasks | ops/s |\n|---|---|---|");
    for tasks in [1, 16] {
        let (e, c) = (engine.clone(), ctx.clone());
        let rate = measure(tasks, move |i| {
            let (e, c) = (e.clone(), c.clone());
            async move {
                let command = CommandInput::new(PK, format!("ORDER#{tasks:02}-{i:012}")).attributes(order(i));
                e.publish_sync(command, &c).await.expect("publish");
            }
        })
        .await;
        println!("| publish_sync (create) | {tasks} | {rate:.0} |");
    }
    let key = EntityKey::new(PK, "ORDER#01-000000000000");
    for tasks in [1, 16] {
        let (e, c, k) = (engine.clone(), ctx.clone(), key.clone());
        let rate = measure(tasks, move |_| {
            let (e, c, k) = (e.clone(), c.clone(), k.clone());
            async move {
                e.get_item(&k, &c).await.expect("get");
            }
        })
        .await;
        println!("| get_item | {tasks} | {rate:.0} |");
    }
    for tasks in [1, 16] {
        let (e, c) = (engine.clone(), ctx.clone());
        let rate = measure(tasks, move |_| {
            let (e, c) = (e.clone(), c.clone());
            async move {
                e.next(&SequenceRequest::new("ORDER").format("ORD-{no:06}"), &c)
                    .await
                    .expect("next");
            }
        })
        .await;
        println!("| sequence next | {tasks} | {rate:.0} |");
    }
}
