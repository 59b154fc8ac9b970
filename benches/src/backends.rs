//! The storage backends a workload runs on: `cqrs-memory`, and DynamoDB
//! (DynamoDB Local) when `DYNAMODB_ENDPOINT` is set, over tables of its own.
//! Also a Markdown table printer for the results.
//!
//! Not a module of the `cqrs_benches` library: the cqrs crates are
//! dev-dependencies of this package, which the library cannot see. The
//! workloads include it with `#[path = "../src/backends.rs"] mod backends;`.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use cqrs_core::Storage;
use cqrs_dynamodb::{local_client, DynamoDbStorage, TableNames};
use cqrs_memory::InMemory;

/// The variable naming the DynamoDB endpoint (DynamoDB Local).
pub const ENDPOINT_VAR: &str = "DYNAMODB_ENDPOINT";

/// What a DynamoDB row of a table says when no endpoint is configured.
pub const SKIPPED: &str = "skipped (DYNAMODB_ENDPOINT not set)";

/// A storage backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `cqrs_memory::InMemory`.
    Memory,
    /// `cqrs_dynamodb::DynamoDbStorage` on the endpoint of `DYNAMODB_ENDPOINT`.
    DynamoDb,
}

impl Backend {
    /// Both backends, memory first.
    pub const ALL: [Backend; 2] = [Backend::Memory, Backend::DynamoDb];

    /// The name shown in tables.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::DynamoDb => "DynamoDB Local",
        }
    }
}

/// The DynamoDB endpoint, if one is configured.
pub fn dynamodb_endpoint() -> Option<String> {
    std::env::var(ENDPOINT_VAR).ok().filter(|e| !e.is_empty())
}

/// A table prefix no other run uses: `bench-{workload}-{pid}-{nanos}`.
pub fn unique_prefix(workload: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("bench-{workload}-{}-{nanos}", std::process::id())
}

/// A storage for one workload run.
#[derive(Debug, Clone)]
pub struct BenchStorage {
    /// The storage to build engines on.
    pub storage: Arc<dyn Storage>,
    dynamodb: Option<DynamoDbStorage>,
}

impl BenchStorage {
    /// Deletes the DynamoDB tables of this run (best effort; nothing for memory).
    pub async fn cleanup(self) {
        let Some(dynamodb) = self.dynamodb else {
            return;
        };
        let tables = dynamodb.tables();
        for table in [&tables.command, &tables.data, &tables.history, &tables.sequences] {
            if let Err(error) = dynamodb.client().delete_table().table_name(table).send().await {
                eprintln!("could not delete table {table}: {error}");
            }
        }
    }
}

/// A fresh, empty storage of `backend` for `workload`; `None` for DynamoDB
/// when `DYNAMODB_ENDPOINT` is not set. DynamoDB tables get a unique prefix.
///
/// # Panics
///
/// When the DynamoDB tables cannot be created.
pub async fn storage(backend: Backend, workload: &str) -> Option<BenchStorage> {
    match backend {
        Backend::Memory => Some(BenchStorage {
            storage: Arc::new(InMemory::new()),
            dynamodb: None,
        }),
        Backend::DynamoDb => {
            let endpoint = dynamodb_endpoint()?;
            let dynamodb = DynamoDbStorage::new(
                local_client(&endpoint),
                ecommerce::shop::dynamodb_tables(TableNames::with_prefix(&unique_prefix(workload))),
            );
            dynamodb
                .ensure_tables()
                .await
                .unwrap_or_else(|e| panic!("creating DynamoDB tables on {endpoint}: {e}"));
            Some(BenchStorage {
                storage: Arc::new(dynamodb.clone()),
                dynamodb: Some(dynamodb),
            })
        }
    }
}

/// A Markdown table of `rows` under `headers`.
pub fn markdown_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = format!("| {} |\n", headers.join(" | "));
    out.push_str(&format!("|{}\n", "---|".repeat(headers.len())));
    for row in rows {
        out.push_str(&format!("| {} |\n", row.join(" | ")));
    }
    out
}

/// A row of `headers.len()` cells: the backend's name, then [`SKIPPED`] and
/// empty cells.
pub fn skipped_row(backend: Backend, columns: usize) -> Vec<String> {
    let mut row = vec![backend.name().to_owned(), SKIPPED.to_owned()];
    row.resize(columns.max(2), String::new());
    row
}
