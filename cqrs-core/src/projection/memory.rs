//! An in-memory projection target, for unit tests of projections.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::target::{MetaDoc, ProjectionTarget, ProjectionTx, Revised};
use crate::error::{Error, Result};
use crate::keys::EntityKey;
use crate::model::ExpectedVersion;

/// A projection target in memory: tables of JSON values by string key,
/// per projection and generation. Transactions run one at a time (they
/// hold the whole store), and a dropped transaction leaves nothing.
///
/// ```
/// # async fn demo() -> cqrs_core::Result<()> {
/// use cqrs_core::projection::MemoryTarget;
///
/// let target = MemoryTarget::new();
/// // ... run a projector on it, then read what readers see:
/// let rows = target.rows("units-per-product", "units").await;
/// assert!(rows.is_empty());
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct MemoryTarget {
    store: Arc<Mutex<Store>>,
}

#[derive(Default)]
struct Store {
    docs: HashMap<(String, MetaDoc), Revised>,
    checkpoints: HashMap<(String, u64, EntityKey), u64>,
    tables: HashMap<(String, u64, String), BTreeMap<String, Value>>,
}

impl Store {
    fn live(&self, projection: &str) -> u64 {
        self.docs
            .get(&(projection.to_owned(), MetaDoc::Generations))
            .and_then(|doc| serde_json::from_str::<super::Generations>(&doc.text).ok())
            .map_or(0, |generations| generations.live)
    }

    fn store_doc(
        &mut self,
        projection: &str,
        doc: MetaDoc,
        text: &str,
        expected: u64,
    ) -> Result<Option<Revised>> {
        let slot = (projection.to_owned(), doc);
        let current = self.docs.get(&slot).map_or(0, |d| d.revision);
        if current != expected {
            return Err(conflict(
                format!("{projection}/{}", doc.as_str()),
                expected,
                current,
            ));
        }
        Ok(self.docs.insert(
            slot,
            Revised {
                text: text.to_owned(),
                revision: expected + 1,
            },
        ))
    }
}

fn conflict(key: String, expected: u64, actual: u64) -> Error {
    Error::Conflict {
        key,
        expected: ExpectedVersion::Exactly(expected),
        actual: Some(actual),
    }
}

impl MemoryTarget {
    /// An empty target.
    pub fn new() -> Self {
        Self::default()
    }

    /// The rows of `table` in the generation readers see.
    pub async fn rows(&self, projection: &str, table: &str) -> BTreeMap<String, Value> {
        let store = self.store.lock().await;
        let live = store.live(projection);
        store
            .tables
            .get(&(projection.to_owned(), live, table.to_owned()))
            .cloned()
            .unwrap_or_default()
    }
}

#[async_trait]
impl ProjectionTarget for MemoryTarget {
    type Tx = MemoryTx;

    async fn prepare(&self) -> Result<()> {
        Ok(())
    }

    async fn begin(&self, projection: &str) -> Result<(MemoryTx, Option<Revised>)> {
        let store = Arc::clone(&self.store).lock_owned().await;
        let generations = store
            .docs
            .get(&(projection.to_owned(), MetaDoc::Generations))
            .cloned();
        let tx = MemoryTx {
            store: Some(store),
            projection: projection.to_owned(),
            generation: 0,
            undo: Vec::new(),
        };
        Ok((tx, generations))
    }

    async fn load(&self, projection: &str, doc: MetaDoc) -> Result<Option<Revised>> {
        Ok(self
            .store
            .lock()
            .await
            .docs
            .get(&(projection.to_owned(), doc))
            .cloned())
    }

    async fn checkpoints(&self, projection: &str, generation: u64, keys: &[EntityKey]) -> Result<Vec<u64>> {
        let store = self.store.lock().await;
        Ok(keys
            .iter()
            .map(|key| {
                store
                    .checkpoints
                    .get(&(projection.to_owned(), generation, key.clone()))
                    .copied()
                    .unwrap_or(0)
            })
            .collect())
    }

    async fn switch(&self, projection: &str, text: &str, expected: u64, _: u64, _: &[String]) -> Result<()> {
        self.store
            .lock()
            .await
            .store_doc(projection, MetaDoc::Generations, text, expected)?;
        Ok(())
    }

    async fn drop_generation(&self, projection: &str, generation: u64, _: &[String]) -> Result<()> {
        let mut store = self.store.lock().await;
        store
            .tables
            .retain(|(p, g, _), _| !(p == projection && *g == generation));
        store
            .checkpoints
            .retain(|(p, g, _), _| !(p == projection && *g == generation));
        Ok(())
    }
}

/// A transaction of [`MemoryTarget`]: the projection reads and writes rows
/// of its tables (in the transaction's generation) with [`MemoryTx::get`],
/// [`MemoryTx::put`] and [`MemoryTx::delete`].
pub struct MemoryTx {
    /// `None` once committed.
    store: Option<OwnedMutexGuard<Store>>,
    projection: String,
    generation: u64,
    /// What to restore when the transaction is dropped uncommitted, newest last.
    undo: Vec<Undo>,
}

enum Undo {
    Row {
        table: (String, u64, String),
        key: String,
        previous: Option<Value>,
    },
    Checkpoint {
        key: (String, u64, EntityKey),
        previous: Option<u64>,
    },
    Doc {
        key: (String, MetaDoc),
        previous: Option<Revised>,
    },
}

impl MemoryTx {
    fn store(&mut self) -> &mut Store {
        self.store.as_mut().expect("a committed transaction is consumed")
    }

    fn table_key(&self, table: &str) -> (String, u64, String) {
        (self.projection.clone(), self.generation, table.to_owned())
    }

    /// The row `key` of `table`.
    pub fn get(&self, table: &str, key: &str) -> Option<&Value> {
        let store = self.store.as_ref().expect("a committed transaction is consumed");
        store.tables.get(&self.table_key(table))?.get(key)
    }

    /// Every row of `table`, by key.
    pub fn rows(&self, table: &str) -> impl Iterator<Item = (&String, &Value)> {
        let store = self.store.as_ref().expect("a committed transaction is consumed");
        store.tables.get(&self.table_key(table)).into_iter().flatten()
    }

    /// Writes the row `key` of `table`.
    pub fn put(&mut self, table: &str, key: &str, value: Value) {
        self.write(table, key, Some(value));
    }

    /// Removes the row `key` of `table`.
    pub fn delete(&mut self, table: &str, key: &str) {
        self.write(table, key, None);
    }

    fn write(&mut self, table: &str, key: &str, value: Option<Value>) {
        let table = self.table_key(table);
        let rows = self.store().tables.entry(table.clone()).or_default();
        let previous = match value {
            Some(value) => rows.insert(key.to_owned(), value),
            None => rows.remove(key),
        };
        self.undo.push(Undo::Row {
            table,
            key: key.to_owned(),
            previous,
        });
    }
}

#[async_trait]
impl ProjectionTx for MemoryTx {
    fn generation(&self) -> u64 {
        self.generation
    }

    fn set_generation(&mut self, generation: u64) {
        self.generation = generation;
    }

    async fn checkpoint(&mut self, key: &EntityKey) -> Result<u64> {
        let slot = (self.projection.clone(), self.generation, key.clone());
        Ok(self.store().checkpoints.get(&slot).copied().unwrap_or(0))
    }

    async fn set_checkpoint(&mut self, key: &EntityKey, previous: u64, version: u64) -> Result<()> {
        let slot = (self.projection.clone(), self.generation, key.clone());
        let current = self.store().checkpoints.get(&slot).copied().unwrap_or(0);
        if current != previous {
            return Err(conflict(key.to_string(), previous, current));
        }
        let before = self.store().checkpoints.insert(slot.clone(), version);
        self.undo.push(Undo::Checkpoint {
            key: slot,
            previous: before,
        });
        Ok(())
    }

    async fn store(&mut self, doc: MetaDoc, text: &str, expected: u64) -> Result<()> {
        let projection = self.projection.clone();
        let previous = self.store().store_doc(&projection, doc, text, expected)?;
        self.undo.push(Undo::Doc {
            key: (projection, doc),
            previous,
        });
        Ok(())
    }

    async fn commit(mut self) -> Result<()> {
        self.undo.clear();
        self.store = None;
        Ok(())
    }
}

impl Drop for MemoryTx {
    fn drop(&mut self) {
        let Some(store) = self.store.as_mut() else { return };
        for undo in self.undo.drain(..).rev() {
            match undo {
                Undo::Row { table, key, previous } => {
                    let rows = store.tables.entry(table).or_default();
                    match previous {
                        Some(value) => rows.insert(key, value),
                        None => rows.remove(&key),
                    };
                }
                Undo::Checkpoint { key, previous } => match previous {
                    Some(version) => store.checkpoints.insert(key, version),
                    None => store.checkpoints.remove(&key),
                }
                .map_or((), |_| ()),
                Undo::Doc { key, previous } => match previous {
                    Some(doc) => store.docs.insert(key, doc),
                    None => store.docs.remove(&key),
                }
                .map_or((), |_| ()),
            }
        }
    }
}
