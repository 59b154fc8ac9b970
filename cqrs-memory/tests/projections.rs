//! The target conformance suite on `MemoryTarget`, over in-memory storage.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use cqrs_core::projection::{MemoryTarget, MemoryTx};
use cqrs_core::testing::projections::TargetHarness;
use cqrs_core::{BoxError, Storage};
use cqrs_memory::InMemory;

#[derive(Clone)]
struct Memory;

#[async_trait]
impl TargetHarness for Memory {
    type Target = MemoryTarget;

    async fn target(&self) -> MemoryTarget {
        MemoryTarget::new()
    }

    async fn storage(&self) -> Arc<dyn Storage> {
        Arc::new(InMemory::new())
    }

    async fn create_table(&self, _: &mut MemoryTx, _: &str) -> Result<(), BoxError> {
        Ok(())
    }

    async fn get(&self, tx: &mut MemoryTx, table: &str, key: &str) -> Result<Option<i64>, BoxError> {
        Ok(tx.get(table, key).and_then(|v| v.as_i64()))
    }

    async fn add(&self, tx: &mut MemoryTx, table: &str, key: &str, delta: i64) -> Result<(), BoxError> {
        let value = tx.get(table, key).and_then(|v| v.as_i64()).unwrap_or(0) + delta;
        tx.put(table, key, value.into());
        Ok(())
    }

    async fn read(&self, target: &MemoryTarget, projection: &str, table: &str) -> BTreeMap<String, i64> {
        let rows = target.rows(projection, table).await;
        rows.into_iter()
            .map(|(k, v)| (k, v.as_i64().unwrap_or_default()))
            .collect()
    }
}

cqrs_core::projection_target_tests!(Memory);
