//! PostgreSQL going down under a projection, for real: a server of the
//! test's own is stopped as by a crash while commands are published, and
//! started again. Every command published is projected once, none is
//! recorded as failed, and the errors on the way are the retryable kind.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cqrs_core::projection::{Change, Projection, ProjectionTarget, Projector};
use cqrs_core::{
    tenant_pk, BoxError, CommandInput, CommandService, Engine, Handled, InvocationContext, RetryPolicy,
    Storage,
};
use cqrs_sql::{SqlTarget, SqlTx};
use serde::{Deserialize, Serialize};
use sqlx::Postgres;

#[derive(Serialize, Deserialize)]
struct Sale {
    amount: i64,
}

/// One row per sale: each version applied once shows as one row.
struct Sales;

#[async_trait]
impl Projection<SqlTx<Postgres>> for Sales {
    type State = Sale;

    fn name(&self) -> &str {
        "sales"
    }

    fn tables(&self) -> Vec<String> {
        vec!["sales".into()]
    }

    async fn create(&self, tx: &mut SqlTx<Postgres>) -> Result<(), BoxError> {
        let table = tx.table("sales")?;
        sqlx::query(&format!(
            "CREATE TABLE {table} (sk TEXT, version BIGINT, amount BIGINT, PRIMARY KEY (sk, version))"
        ))
        .execute(tx.conn())
        .await?;
        Ok(())
    }

    async fn apply(&self, tx: &mut SqlTx<Postgres>, change: &Change<Sale>) -> Result<(), BoxError> {
        let table = tx.table("sales")?;
        // A plain INSERT: a version applied twice fails on the primary key.
        sqlx::query(&format!(
            "INSERT INTO {table} (sk, version, amount) VALUES ($1, $2, $3)"
        ))
        .bind(change.key.sk.as_str())
        .bind(change.version as i64)
        .bind(change.new_state().map_or(0, |s| s.amount))
        .execute(tx.conn())
        .await?;
        Ok(())
    }
}

async fn publish(engine: &Engine, n: usize) -> Handled {
    let ctx = InvocationContext::new("shop-a", "user-1");
    let command = CommandInput::new(tenant_pk("shop-a"), format!("SALE#{n:03}"))
        .attributes(serde_json::json!({ "amount": n }));
    let synced = engine
        .publish_sync(command, &ctx)
        .await
        .expect("the data is written whatever the read model does");
    synced.handled().clone()
}

#[cfg_attr(not(postgres_tests), ignore = "needs PostgreSQL: run ./scripts/test")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn projection_survives_postgres_crashing() {
    if !common::postgres_available() {
        return;
    }
    let server = common::LocalPostgres::start();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(1))
        .connect(&server.url())
        .await
        .unwrap();
    let target = SqlTarget::new(pool.clone());
    let storage: Arc<dyn Storage> = Arc::new(cqrs_memory::InMemory::new());
    let projector = Projector::new(Sales, target.clone(), Arc::clone(&storage));
    let engine = Engine::builder(storage)
        .handler(projector.clone())
        .retry(RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
        })
        .build();

    const BEFORE: usize = 5;
    const DURING: usize = 5;
    for n in 0..BEFORE {
        assert_eq!(publish(&engine, n).await, Handled::Finished);
    }

    server.crash();
    // The target's own errors say "retry".
    let down = target.begin("sales").await.map(|_| ()).unwrap_err();
    assert!(down.is_retryable(), "{down}");
    let down = target
        .load("sales", cqrs_core::projection::MetaDoc::Generations)
        .await
        .unwrap_err();
    assert!(down.is_retryable(), "{down}");
    let mut handled = Vec::new();
    for n in BEFORE..BEFORE + DURING {
        handled.push(publish(&engine, n).await);
    }
    assert!(
        handled.iter().all(|h| *h == Handled::Recovering),
        "while PostgreSQL is down, publishes leave their handlers to recovery, none failed: {handled:?}"
    );

    server.up();
    let restarted = std::time::Instant::now();
    // The in-process processor retries until the read model takes them.
    tokio::time::timeout(Duration::from_secs(120), engine.wait_idle())
        .await
        .expect("recovered within 2 minutes of the restart");
    eprintln!("caught up {:?} after the restart", restarted.elapsed());
    let rows: Vec<(String, i64, i64)> = sqlx::query_as("SELECT sk, version, amount FROM sales ORDER BY sk")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(rows.len(), BEFORE + DURING, "every sale once: {rows:?}");
    for (n, (sk, version, amount)) in rows.iter().enumerate() {
        assert_eq!(
            (sk.as_str(), *version, *amount),
            (format!("SALE#{n:03}").as_str(), 1, n as i64)
        );
    }
    let failures = engine
        .list_failures(&InvocationContext::new("shop-a", "user-1"))
        .await
        .unwrap();
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(projector.stats().failed, 0);
}
