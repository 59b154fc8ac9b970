//! The DynamoDB projection target: read models in a DynamoDB table, each
//! event's writes and checkpoint in one `TransactWriteItems`.
//!
//! [`DynamoTarget`] implements [`ProjectionTarget`]; projections are
//! written against its transaction, [`DynamoTx`]. See the
//! [`Projector`](cqrs_core::projection::Projector) for the algorithm and
//! `docs/projections.md` for the guide.
//!
//! # The table
//!
//! One table of your choosing (`pk` S, `sk` S, on demand: created by
//! [`ProjectionTarget::prepare`] when missing) holds the read models of any
//! number of projections and their bookkeeping:
//!
//! | what | `pk` | `sk` | attributes |
//! |---|---|---|---|
//! | read-model item | `{projection}#g{generation}#{pk}` | `{sk}` | the projection's |
//! | checkpoint | `CHECKPOINT#{projection}#g{generation}#{entity pk}` | `{entity sk}` | `version` (N) |
//! | bookkeeping | `PROJECTION#{projection}` | `generations` or `rebuild` | `body` (S, JSON), `revision` (N) |
//!
//! A projection's items are addressed by the `pk`/`sk` it chooses, stored
//! under its generation's prefix, so that a rebuild fills a generation of
//! its own next to the live one. A projection's name has no `#` and is not
//! `CHECKPOINT` or `PROJECTION`.
//!
//! # Reading a read model
//!
//! Readers resolve the live generation from the generations document
//! ([`DynamoTarget::live_generation`], or [`DynamoTarget::live_pk`] for a
//! key), then `GetItem` / `Query` that generation's keys: a switch after a
//! rebuild is one conditional write of that document, so a reader sees one
//! complete generation or the other, never a mix. Caching the generation
//! for a few seconds is fine; a generation stays readable until the
//! rebuild that replaced it drops it, just after the switch, so a reader
//! holding an old generation for longer may find it gone.

mod layout;
mod pending;
mod tx;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, DeleteRequest, KeysAndAttributes, WriteRequest};
use aws_sdk_dynamodb::Client;
use cqrs_core::projection::{Generations, MetaDoc, ProjectionTarget, Revised};
use cqrs_core::{EntityKey, Error, ExpectedVersion, Result};

pub use tx::{DynamoTx, UpdateExpression};

use crate::error::{build_error, sdk_error, shape_error, DynamoDbError};
use crate::item::{n, s, string_attribute, version_of, Item};
use crate::tables::ensure_plain_table;
use layout::{check_name, checkpoint_key, checkpoints_prefix, doc_key, item_key, items_prefix};

/// Keys per `BatchGetItem` (DynamoDB's limit).
const BATCH_GET_KEYS: usize = 100;
/// Requests per `BatchWriteItem` (DynamoDB's limit).
const BATCH_WRITE_REQUESTS: usize = 25;
/// Rounds of resending what a batch left unprocessed (throttled) before
/// giving up with a retryable error.
const UNPROCESSED_ROUNDS: u32 = 12;

/// A projection target in one DynamoDB table (see the [module](self) for
/// its layout). Clones share the client.
///
/// ```no_run
/// # async fn demo(engine: cqrs_core::Engine, client: cqrs_dynamodb::aws_sdk_dynamodb::Client) -> cqrs_core::Result<()> {
/// # struct Sales;
/// # #[async_trait::async_trait]
/// # impl cqrs_core::projection::Projection<cqrs_dynamodb::projection::DynamoTx> for Sales {
/// #     type State = serde_json::Value;
/// #     fn name(&self) -> &str { "sales" }
/// #     async fn apply(&self, _: &mut cqrs_dynamodb::projection::DynamoTx, _: &cqrs_core::projection::Change<serde_json::Value>) -> Result<(), cqrs_core::BoxError> { Ok(()) }
/// # }
/// use cqrs_core::projection::Projector;
/// use cqrs_dynamodb::projection::DynamoTarget;
///
/// let target = DynamoTarget::new(client, "dev-shop-read-models");
/// let projector = Projector::new(Sales, target.clone(), engine.storage().clone());
/// projector.prepare().await?; // creates the table if missing
/// // Register `projector` as a data-sync handler; then readers:
/// let day = target.get_live("sales", "SALES#2026-12-05", "tea").await?;
/// # let _ = day; Ok(()) }
/// ```
#[derive(Clone)]
pub struct DynamoTarget {
    client: Client,
    table: Arc<str>,
}

impl DynamoTarget {
    /// A target writing to the table `table` through `client`.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoTarget {
            client,
            table: Arc::from(table.into()),
        }
    }

    /// The read-model table.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The client, for readers' own queries of the table.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The generation readers of `projection` see, `None` before its first.
    /// A consistent read of its generations document.
    pub async fn live_generation(&self, projection: &str) -> Result<Option<u64>> {
        match self.load(projection, MetaDoc::Generations).await? {
            Some(doc) => {
                let generations: Generations =
                    serde_json::from_str(&doc.text).map_err(|e| shape_error("projection generations", e))?;
                Ok(Some(generations.live))
            }
            None => Ok(None),
        }
    }

    /// The stored partition key of the projection's `pk` in `generation`:
    /// `{projection}#g{generation}#{pk}`.
    ///
    /// ```
    /// use cqrs_dynamodb::projection::DynamoTarget;
    /// assert_eq!(DynamoTarget::generation_pk("sales", 2, "SALES#2026-12-05"), "sales#g2#SALES#2026-12-05");
    /// ```
    pub fn generation_pk(projection: &str, generation: u64, pk: &str) -> String {
        format!("{}{pk}", items_prefix(projection, generation))
    }

    /// The stored partition key of the projection's `pk` in the live
    /// generation (for a `Query` or `GetItem`), `None` before the first
    /// generation.
    pub async fn live_pk(&self, projection: &str, pk: &str) -> Result<Option<String>> {
        Ok(self
            .live_generation(projection)
            .await?
            .map(|generation| Self::generation_pk(projection, generation, pk)))
    }

    /// The projection's item `pk`/`sk` in the live generation (consistent
    /// read), with its stored `pk` and `sk`.
    pub async fn get_live(
        &self,
        projection: &str,
        pk: &str,
        sk: &str,
    ) -> Result<Option<HashMap<String, AttributeValue>>> {
        match self.live_generation(projection).await? {
            Some(generation) => {
                get_item(
                    &self.client,
                    &self.table,
                    item_key(projection, generation, pk, sk),
                )
                .await
            }
            None => Ok(None),
        }
    }

    /// Deletes every item whose `pk` starts with one of `prefixes` (a scan
    /// of the table: the prefixes span many partitions).
    async fn delete_prefixed(&self, prefixes: [String; 2]) -> Result<u64> {
        let mut deleted = 0;
        let mut start: Option<Item> = None;
        loop {
            let page = self
                .client
                .scan()
                .table_name(&*self.table)
                .filter_expression("begins_with(pk, :items) OR begins_with(pk, :checkpoints)")
                .expression_attribute_values(":items", s(&prefixes[0]))
                .expression_attribute_values(":checkpoints", s(&prefixes[1]))
                .projection_expression("pk, sk")
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(sdk_error)?;
            let keys: Vec<Item> = page.items().to_vec();
            for chunk in keys.chunks(BATCH_WRITE_REQUESTS) {
                self.delete_batch(chunk).await?;
                deleted += chunk.len() as u64;
            }
            match page.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => return Ok(deleted),
            }
        }
    }

    /// One `BatchWriteItem` of deletes, resending what it leaves unprocessed.
    async fn delete_batch(&self, keys: &[Item]) -> Result<()> {
        let mut requests = keys
            .iter()
            .map(|key| {
                let delete = DeleteRequest::builder()
                    .set_key(Some(key.clone()))
                    .build()
                    .map_err(build_error("BatchWriteItem"))?;
                Ok(WriteRequest::builder().delete_request(delete).build())
            })
            .collect::<Result<Vec<_>>>()?;
        for round in 0..UNPROCESSED_ROUNDS {
            let answer = self
                .client
                .batch_write_item()
                .request_items(&*self.table, requests)
                .send()
                .await
                .map_err(sdk_error)?;
            requests = answer
                .unprocessed_items
                .and_then(|mut left| left.remove(&*self.table))
                .unwrap_or_default();
            if requests.is_empty() {
                return Ok(());
            }
            tokio::time::sleep(backoff(round)).await;
        }
        Err(Error::backend(
            format!(
                "{} deletes left unprocessed by DynamoDB (throttled)",
                requests.len()
            ),
            true,
        ))
    }

    /// One `BatchGetItem` of checkpoints, resending what it leaves
    /// unprocessed. The found ones, by `(pk, sk)`.
    async fn get_batch(&self, keys: Vec<Item>, found: &mut HashMap<(String, String), u64>) -> Result<()> {
        let mut request = Some(
            KeysAndAttributes::builder()
                .set_keys(Some(keys))
                .consistent_read(true)
                .build()
                .map_err(build_error("BatchGetItem"))?,
        );
        let mut round = 0;
        while let Some(keys) = request.take() {
            let answer = self
                .client
                .batch_get_item()
                .request_items(&*self.table, keys)
                .send()
                .await
                .map_err(sdk_error)?;
            for item in answer
                .responses
                .and_then(|mut r| r.remove(&*self.table))
                .unwrap_or_default()
            {
                let version = version_of(&item).ok_or_else(|| shape_error("checkpoint", "no version"))?;
                found.insert(
                    (string_attribute(&item, "pk"), string_attribute(&item, "sk")),
                    version,
                );
            }
            request = answer
                .unprocessed_keys
                .and_then(|mut left| left.remove(&*self.table))
                .filter(|left| !left.keys().is_empty());
            if request.is_some() {
                if round == UNPROCESSED_ROUNDS {
                    return Err(Error::backend(
                        "checkpoint reads left unprocessed by DynamoDB (throttled)",
                        true,
                    ));
                }
                tokio::time::sleep(backoff(round)).await;
                round += 1;
            }
        }
        Ok(())
    }
}

/// A pause before resending unprocessed requests: 25 ms doubling, at most 1 s.
fn backoff(round: u32) -> Duration {
    Duration::from_millis((25u64 << round.min(6)).min(1000))
}

/// A consistent `GetItem`.
pub(crate) async fn get_item(client: &Client, table: &str, key: Item) -> Result<Option<Item>> {
    client
        .get_item()
        .table_name(table)
        .set_key(Some(key))
        .consistent_read(true)
        .send()
        .await
        .map(|answer| answer.item)
        .map_err(sdk_error)
}

fn revised(item: Item) -> Result<Revised> {
    let text = match item.get("body") {
        Some(AttributeValue::S(text)) => text.clone(),
        _ => return Err(shape_error("projection document", "no body")),
    };
    let revision = match item.get("revision") {
        Some(AttributeValue::N(number)) => number
            .parse()
            .map_err(|e| shape_error("projection document revision", e))?,
        _ => return Err(shape_error("projection document", "no revision")),
    };
    Ok(Revised { text, revision })
}

#[async_trait]
impl ProjectionTarget for DynamoTarget {
    type Tx = DynamoTx;

    async fn prepare(&self) -> Result<()> {
        ensure_plain_table(&self.client, &self.table).await
    }

    async fn begin(&self, projection: &str) -> Result<(DynamoTx, Option<Revised>)> {
        let generations = self.load(projection, MetaDoc::Generations).await?;
        let tx = DynamoTx::new(
            self.client.clone(),
            Arc::clone(&self.table),
            projection,
            generations.as_ref(),
        );
        Ok((tx, generations))
    }

    async fn load(&self, projection: &str, doc: MetaDoc) -> Result<Option<Revised>> {
        check_name(projection)?;
        get_item(&self.client, &self.table, doc_key(projection, doc))
            .await?
            .map(revised)
            .transpose()
    }

    async fn checkpoints(&self, projection: &str, generation: u64, keys: &[EntityKey]) -> Result<Vec<u64>> {
        check_name(projection)?;
        let stored: Vec<Item> = keys
            .iter()
            .map(|key| checkpoint_key(projection, generation, key))
            .collect();
        // BatchGetItem refuses a key named twice in one request.
        let mut unique: Vec<Item> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for key in &stored {
            if seen.insert((string_attribute(key, "pk"), string_attribute(key, "sk"))) {
                unique.push(key.clone());
            }
        }
        let mut found = HashMap::new();
        for chunk in unique.chunks(BATCH_GET_KEYS) {
            self.get_batch(chunk.to_vec(), &mut found).await?;
        }
        Ok(stored
            .iter()
            .map(|key| {
                found
                    .get(&(string_attribute(key, "pk"), string_attribute(key, "sk")))
                    .copied()
                    .unwrap_or(0)
            })
            .collect())
    }

    async fn switch(&self, projection: &str, text: &str, expected: u64, _: u64, _: &[String]) -> Result<()> {
        check_name(projection)?;
        let mut item = doc_key(projection, MetaDoc::Generations);
        item.insert("body".into(), s(text));
        item.insert("revision".into(), n(expected + 1));
        let mut put = self
            .client
            .put_item()
            .table_name(&*self.table)
            .set_item(Some(item));
        put = if expected == 0 {
            put.condition_expression("attribute_not_exists(pk)")
        } else {
            put.condition_expression("revision = :expected")
                .expression_attribute_values(":expected", n(expected))
        };
        match put.send().await {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Err(Error::Conflict {
                    key: format!("{projection}/{}", MetaDoc::Generations.as_str()),
                    expected: ExpectedVersion::Exactly(expected),
                    actual: None,
                })
            }
            Err(e) => Err(sdk_error(e)),
        }
    }

    /// Whether a projection's error came from DynamoDB being unreachable,
    /// throttling or failing (a retryable error of this crate, or of the
    /// framework from a [`DynamoTx`] call).
    fn is_transient(&self, error: &(dyn std::error::Error + 'static)) -> bool {
        let mut current = Some(error);
        while let Some(e) = current {
            if let Some(dynamo) = e.downcast_ref::<DynamoDbError>() {
                return dynamo.is_retryable();
            }
            if e.downcast_ref::<Error>().is_some_and(Error::is_retryable) {
                return true;
            }
            current = e.source();
        }
        false
    }

    async fn drop_generation(&self, projection: &str, generation: u64, _: &[String]) -> Result<()> {
        check_name(projection)?;
        let deleted = self
            .delete_prefixed([
                items_prefix(projection, generation),
                checkpoints_prefix(projection, generation),
            ])
            .await?;
        tracing::debug!(projection, generation, deleted, "projection generation dropped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use cqrs_core::BoxError;

    use super::*;

    #[tokio::test]
    async fn outages_are_transient_and_projection_errors_are_not() {
        let target = DynamoTarget::new(crate::local_client("http://127.0.0.1:9"), "read-models");
        // What a DynamoTx call returns when DynamoDB is unreachable or throttles,
        // as the projection hands it back (boxed).
        let outage: BoxError = Box::new(Error::backend("DynamoDB unreachable", true));
        assert!(target.is_transient(outage.as_ref()));
        let own: BoxError = "no price for this product".into();
        assert!(!target.is_transient(own.as_ref()));
        let refused: BoxError = Box::new(Error::invalid("projection write", "two writes"));
        assert!(!target.is_transient(refused.as_ref()));
    }
}
