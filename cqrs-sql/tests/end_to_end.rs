//! A user's projection in plain SQL, kept by a `Projector` registered on an
//! engine: published commands reach the read model through the pipeline,
//! readers query the view, and a rebuild moves readers to a new generation.
//! The projection is written once against `SqlTx<Any>` and runs on SQLite
//! and on PostgreSQL.

#![cfg(feature = "any")]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use cqrs_core::projection::{Change, Projection, Projector, Scope};
use cqrs_core::{
    tenant_pk, BoxError, CommandInput, CommandServiceExt, Engine, EntityKey, Handled, Interest,
    InvocationContext, Storage,
};
use cqrs_sql::{SqlTarget, SqlTx};
use serde::{Deserialize, Serialize};
use sqlx::Any;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    product: String,
    quantity: i64,
    status: String,
}

/// Units ordered per product and tenant, cancelled orders taken out.
struct UnitsPerProduct;

fn units(order: &Order) -> i64 {
    if order.status == "cancelled" {
        0
    } else {
        order.quantity
    }
}

#[async_trait]
impl Projection<SqlTx<Any>> for UnitsPerProduct {
    type State = Order;

    fn name(&self) -> &str {
        "units-per-product"
    }

    fn interest(&self) -> Interest {
        Interest::SkPrefix("ORDER#".into())
    }

    fn tables(&self) -> Vec<String> {
        vec!["units_per_product".into()]
    }

    async fn create(&self, tx: &mut SqlTx<Any>) -> Result<(), BoxError> {
        let table = tx.table("units_per_product")?;
        sqlx::query(&format!(
            "CREATE TABLE {table} (tenant TEXT NOT NULL, product TEXT NOT NULL, units BIGINT NOT NULL, \
             PRIMARY KEY (tenant, product))"
        ))
        .execute(tx.conn())
        .await?;
        Ok(())
    }

    async fn apply(&self, tx: &mut SqlTx<Any>, change: &Change<Order>) -> Result<(), BoxError> {
        let table = tx.table("units_per_product")?;
        let upsert = format!(
            "INSERT INTO {table} (tenant, product, units) VALUES ($1, $2, $3) \
             ON CONFLICT (tenant, product) DO UPDATE SET units = {table}.units + excluded.units"
        );
        let old = change.old_state().map(|o| (o, -1));
        let new = change.new_state().map(|n| (n, 1));
        for (order, sign) in old.into_iter().chain(new) {
            sqlx::query(&upsert)
                .bind(change.tenant())
                .bind(&order.product)
                .bind(sign * units(order))
                .execute(tx.conn())
                .await?;
        }
        Ok(())
    }
}

async fn read(target: &SqlTarget<Any>) -> BTreeMap<String, i64> {
    sqlx::query_as::<_, (String, String, i64)>("SELECT tenant, product, units FROM units_per_product")
        .fetch_all(target.pool())
        .await
        .expect("the view exists")
        .into_iter()
        .map(|(tenant, product, units)| (format!("{tenant}/{product}"), units))
        .collect()
}

async fn tables(target: &SqlTarget<Any>, postgres: bool) -> Vec<String> {
    let sql = if postgres {
        "SELECT table_name::TEXT FROM information_schema.tables \
         WHERE table_schema = current_schema() AND table_name LIKE 'units_per_product%' ORDER BY 1"
    } else {
        "SELECT name FROM sqlite_master WHERE name LIKE 'units_per_product%' ORDER BY 1"
    };
    sqlx::query_scalar(sql).fetch_all(target.pool()).await.unwrap()
}

async fn published_orders_reach_the_view(target: SqlTarget<Any>, postgres: bool) {
    let storage: Arc<dyn Storage> = Arc::new(cqrs_memory::InMemory::new());
    let projector = Projector::new(UnitsPerProduct, target.clone(), Arc::clone(&storage));
    let engine = Engine::builder(storage).handler(projector.clone()).build();
    let ctx = InvocationContext::new("shop-a", "user-1");
    let order = |n: u32| EntityKey::new(tenant_pk("shop-a"), format!("ORDER#{n}"));
    let publish = |key: EntityKey, order: Order| {
        let (engine, ctx) = (&engine, &ctx);
        async move {
            let synced = engine
                .publish_sync_typed(CommandInput::new(&key.pk, &key.sk), order, ctx)
                .await
                .expect("published");
            assert_eq!(synced.handled(), &Handled::Finished);
            synced
        }
    };
    let placed = |product: &str, quantity: i64| Order {
        product: product.into(),
        quantity,
        status: "placed".into(),
    };

    publish(order(1), placed("tea", 2)).await;
    publish(order(2), placed("tea", 3)).await;
    let third = publish(order(3), placed("cake", 1)).await.into_item();
    let expected = BTreeMap::from([("shop-a/tea".to_owned(), 5), ("shop-a/cake".to_owned(), 1)]);
    assert_eq!(read(&target).await, expected);

    // An update, and a cancellation: "remove old, add new".
    let (command, mut cake) = third.update();
    cake.quantity = 4;
    let third = engine
        .publish_sync_typed(command, cake, &ctx)
        .await
        .unwrap()
        .into_item();
    let (command, mut cake) = third.update();
    cake.status = "cancelled".into();
    engine.publish_sync_typed(command, cake, &ctx).await.unwrap();
    let expected = BTreeMap::from([("shop-a/tea".to_owned(), 5), ("shop-a/cake".to_owned(), 0)]);
    assert_eq!(read(&target).await, expected);
    let stats = projector.stats();
    assert_eq!(
        (stats.events, stats.versions, stats.skipped, stats.failed),
        (5, 5, 0, 0)
    );
    assert_eq!(
        tables(&target, postgres).await,
        ["units_per_product", "units_per_product_g1"]
    );

    // A rebuild fills generation 2 from the data table; readers switch to it.
    let rebuilt = projector.rebuild(Scope::tenants(["shop-a"])).run().await.unwrap();
    assert_eq!((rebuilt.generation, rebuilt.replaced, rebuilt.rows), (2, 1, 3));
    assert_eq!(read(&target).await, expected);
    assert_eq!(
        tables(&target, postgres).await,
        ["units_per_product", "units_per_product_g2"],
        "generation 1 is dropped"
    );
    // And events keep reaching the view.
    publish(order(4), placed("cake", 7)).await;
    let expected = BTreeMap::from([("shop-a/tea".to_owned(), 5), ("shop-a/cake".to_owned(), 7)]);
    assert_eq!(read(&target).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_sqlite() {
    let target = SqlTarget::<Any>::connect(&common::sqlite_file_url())
        .await
        .unwrap();
    published_orders_reach_the_view(target, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_sqlite_in_memory() {
    let target = SqlTarget::<Any>::connect("sqlite::memory:").await.unwrap();
    published_orders_reach_the_view(target, false).await;
}

#[cfg_attr(not(postgres_tests), ignore = "needs PostgreSQL: run ./scripts/test")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_postgres() {
    if !common::postgres_available() {
        return;
    }
    let url = common::postgres_schema_url().await;
    let target = SqlTarget::<Any>::connect(&url).await.unwrap();
    published_orders_reach_the_view(target, true).await;
}
