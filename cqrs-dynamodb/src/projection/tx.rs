//! [`DynamoTx`]: one projection transaction, sent as one `TransactWriteItems`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, Delete, Put, TransactWriteItem, Update};
use aws_sdk_dynamodb::Client;
use cqrs_core::projection::{MetaDoc, ProjectionTx, Revised};
use cqrs_core::{EntityKey, Error, ExpectedVersion, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::layout::{checkpoint_key, doc_key, item_key};
use super::pending::{merge, overlay, Condition, Expression, Op};
use crate::error::{build_error, is_retryable_code, sdk_error, sdk_error_retryable_if, shape_error};
use crate::item::{check_size, n, s, version_of, Item};
use crate::storage::MAX_TRANSACTION_ITEMS;

/// An update expression for [`DynamoTx::update`]: `ADD units :n`,
/// `SET #status = :s REMOVE note`, with its placeholders.
///
/// ```
/// use cqrs_dynamodb::aws_sdk_dynamodb::types::AttributeValue;
/// use cqrs_dynamodb::projection::UpdateExpression;
///
/// let expression = UpdateExpression::new("ADD units :n SET #day = :day")
///     .value(":n", AttributeValue::N("3".into()))
///     .value(":day", AttributeValue::S("2026-12-05".into()))
///     .name("#day", "day");
/// # let _ = expression;
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateExpression(Expression);

impl UpdateExpression {
    /// An update expression (DynamoDB's `UpdateExpression` syntax).
    pub fn new(expression: impl Into<String>) -> Self {
        UpdateExpression(Expression {
            update: expression.into(),
            ..Expression::default()
        })
    }

    /// The value of a `:placeholder`.
    pub fn value(mut self, placeholder: impl Into<String>, value: AttributeValue) -> Self {
        self.0.values.insert(placeholder.into(), value);
        self
    }

    /// The attribute a `#placeholder` names.
    pub fn name(mut self, placeholder: impl Into<String>, attribute: impl Into<String>) -> Self {
        self.0.names.insert(placeholder.into(), attribute.into());
        self
    }
}

/// One write of the transaction, with what to call it in an error.
struct Pending {
    op: Op,
    /// `pk sk` as stored, for errors.
    name: String,
    /// The version or revision its condition expects, for a conflict.
    expected: u64,
}

/// A transaction of [`DynamoTarget`](super::DynamoTarget): the projection's
/// writes, the checkpoints and the check of the generations document,
/// committed as one `TransactWriteItems` (all or nothing).
///
/// A projection addresses its items by its own `pk` and `sk`; the
/// transaction stores them under the generation's prefix
/// (`{projection}#g{generation}#{pk}`, see [`DynamoTarget`](super::DynamoTarget)),
/// so generations never mix.
///
/// - [`put`](Self::put) / [`put_value`](Self::put_value): the whole item;
/// - [`add`](Self::add): integer deltas (`ADD`), commutative, no read: the
///   way to keep aggregates several entities write to;
/// - [`update`](Self::update): any update expression;
/// - [`delete`](Self::delete);
/// - [`get`](Self::get) / [`get_value`](Self::get_value): a consistent read
///   of the table **outside the transaction**, with this transaction's own
///   pending writes of the item applied. Nothing guards the value read
///   against another transaction's write before the commit: read items
///   only one entity writes (its checkpoint serialises them), and keep
///   shared aggregates with `add`.
///
/// DynamoDB takes one operation per item in a transaction: a second write
/// of an item merges with the first (deltas add up, a delta on a put changes
/// the put, a put or delete replaces); an update expression merges with
/// nothing, and another write of its item is an error. A transaction holds
/// at most 100 items (checkpoints and the generations check included):
/// more is [`Error::TooLarge`] at commit, and nothing is written. Dropping
/// a transaction writes nothing.
///
/// ```no_run
/// use async_trait::async_trait;
/// use cqrs_core::projection::{Change, Projection};
/// use cqrs_core::BoxError;
/// use cqrs_dynamodb::projection::DynamoTx;
/// use serde::Deserialize;
///
/// #[derive(Deserialize)]
/// struct Order { product: String, quantity: i64, day: String }
///
/// /// Units sold per product and day.
/// struct Sales;
///
/// #[async_trait]
/// impl Projection<DynamoTx> for Sales {
///     type State = Order;
///     fn name(&self) -> &str { "sales" }
///     async fn apply(&self, tx: &mut DynamoTx, change: &Change<Order>) -> Result<(), BoxError> {
///         if let Some(old) = change.old_state() {
///             tx.add(&format!("SALES#{}", old.day), &old.product, "units", -old.quantity)?;
///         }
///         if let Some(new) = change.new_state() {
///             tx.add(&format!("SALES#{}", new.day), &new.product, "units", new.quantity)?;
///         }
///         Ok(())
///     }
/// }
/// ```
pub struct DynamoTx {
    client: Client,
    table: Arc<str>,
    projection: String,
    generation: u64,
    /// One operation per item, by stored `(pk, sk)`.
    pending: BTreeMap<(String, String), Pending>,
}

fn key_strings(key: &Item) -> (String, String) {
    let text = |name: &str| match key.get(name) {
        Some(AttributeValue::S(value)) => value.clone(),
        _ => String::new(),
    };
    (text("pk"), text("sk"))
}

impl DynamoTx {
    pub(crate) fn new(
        client: Client,
        table: Arc<str>,
        projection: &str,
        generations: Option<&Revised>,
    ) -> Self {
        let mut tx = DynamoTx {
            client,
            table,
            projection: projection.to_owned(),
            generation: 0,
            pending: BTreeMap::new(),
        };
        // The commit fails if the generations changed since they were read.
        let revision = generations.map_or(0, |doc| doc.revision);
        tx.insert(
            doc_key(projection, MetaDoc::Generations),
            Op::Check(Condition::number_is("revision", revision)),
            revision,
        );
        tx
    }

    /// The read-model table.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The projection this transaction writes.
    pub fn projection(&self) -> &str {
        &self.projection
    }

    /// The stored key of the projection's item `pk`/`sk` in this
    /// transaction's generation.
    pub fn key(&self, pk: &str, sk: &str) -> HashMap<String, AttributeValue> {
        item_key(&self.projection, self.generation, pk, sk)
    }

    /// Writes the item `pk`/`sk` with `attributes` (its `pk` and `sk`
    /// attributes are the stored key's, whatever `attributes` says). An
    /// item over DynamoDB's 400 KB is [`Error::TooLarge`], not written.
    pub fn put(&mut self, pk: &str, sk: &str, attributes: HashMap<String, AttributeValue>) -> Result<()> {
        let key = self.key(pk, sk);
        let mut item = attributes;
        item.extend(key.clone());
        // Refused here, not by DynamoDB at commit along with everything else.
        check_size(&item)?;
        self.write(
            key,
            Op::Put {
                item,
                condition: None,
            },
        )
    }

    /// Writes the item `pk`/`sk` with the attributes of `value` (a struct
    /// or map, through `serde_dynamo`).
    pub fn put_value<T: Serialize + ?Sized>(&mut self, pk: &str, sk: &str, value: &T) -> Result<()> {
        let attributes: Item =
            serde_dynamo::to_item(value).map_err(|e| Error::invalid("projection item", e.to_string()))?;
        self.put(pk, sk, attributes)
    }

    /// Adds `delta` to the number attribute `attribute` of the item
    /// `pk`/`sk` (created if missing; a missing attribute counts as 0), with
    /// DynamoDB's `ADD`: no read, so concurrent deltas from other entities
    /// never overwrite each other.
    pub fn add(&mut self, pk: &str, sk: &str, attribute: &str, delta: i64) -> Result<()> {
        let key = self.key(pk, sk);
        self.write(key, Op::Add(BTreeMap::from([(attribute.to_owned(), delta)])))
    }

    /// Runs `expression` on the item `pk`/`sk` (created if missing, as
    /// `UpdateItem` does).
    pub fn update(&mut self, pk: &str, sk: &str, expression: UpdateExpression) -> Result<()> {
        let key = self.key(pk, sk);
        self.write(key, Op::Update(expression.0))
    }

    /// Removes the item `pk`/`sk`.
    pub fn delete(&mut self, pk: &str, sk: &str) -> Result<()> {
        let key = self.key(pk, sk);
        self.write(key, Op::Delete)
    }

    /// The item `pk`/`sk` of this generation: a consistent `GetItem`
    /// outside the transaction, with this transaction's pending writes of
    /// the item applied (an error when that is an update expression, whose
    /// result only DynamoDB knows). See the type's documentation for what
    /// may change it before the commit.
    pub async fn get(&mut self, pk: &str, sk: &str) -> Result<Option<HashMap<String, AttributeValue>>> {
        let key = self.key(pk, sk);
        self.read(key).await
    }

    /// [`get`](Self::get), decoded with `serde_dynamo`.
    pub async fn get_value<T: DeserializeOwned>(&mut self, pk: &str, sk: &str) -> Result<Option<T>> {
        let key = self.key(pk, sk);
        let name = format!("{pk} {sk}");
        match self.get(pk, sk).await? {
            Some(mut item) => {
                for attribute in key.keys() {
                    item.remove(attribute);
                }
                serde_dynamo::from_item(item)
                    .map(Some)
                    .map_err(|e| shape_error(&format!("projection item {name}"), e))
            }
            None => Ok(None),
        }
    }

    async fn read(&self, key: Item) -> Result<Option<Item>> {
        let stored = super::get_item(&self.client, &self.table, key.clone()).await?;
        match self.pending.get(&key_strings(&key)) {
            Some(pending) => overlay(stored, &pending.op, key, &pending.name),
            None => Ok(stored),
        }
    }

    fn write(&mut self, key: Item, op: Op) -> Result<()> {
        match self.pending.get_mut(&key_strings(&key)) {
            // A refused merge leaves the pending write as it was.
            Some(pending) => {
                pending.op = merge(pending.op.clone(), op, &pending.name)?;
                Ok(())
            }
            None => {
                self.insert(key, op, 0);
                Ok(())
            }
        }
    }

    fn insert(&mut self, key: Item, op: Op, expected: u64) {
        let slot = key_strings(&key);
        let name = format!("{} {}", slot.0, slot.1);
        self.pending.insert(slot, Pending { op, name, expected });
    }

    /// The request's item for the pending write of `key`.
    fn request_item(&self, key: Item, pending: Pending) -> Result<TransactWriteItem> {
        let build = build_error("TransactWriteItems");
        let table = &*self.table;
        Ok(match pending.op {
            Op::Put { item, condition } => {
                let mut put = Put::builder().table_name(table).set_item(Some(item));
                if let Some(condition) = condition {
                    put = put
                        .condition_expression(condition.expression)
                        .set_expression_attribute_values(non_empty(condition.values));
                }
                TransactWriteItem::builder()
                    .put(put.build().map_err(build)?)
                    .build()
            }
            Op::Delete => TransactWriteItem::builder()
                .delete(
                    Delete::builder()
                        .table_name(table)
                        .set_key(Some(key))
                        .build()
                        .map_err(build)?,
                )
                .build(),
            Op::Add(deltas) => {
                let mut names = HashMap::new();
                let mut values = HashMap::new();
                let mut clauses = Vec::new();
                for (i, (attribute, delta)) in deltas.into_iter().enumerate() {
                    names.insert(format!("#a{i}"), attribute);
                    values.insert(format!(":a{i}"), n(delta));
                    clauses.push(format!("#a{i} :a{i}"));
                }
                TransactWriteItem::builder()
                    .update(
                        Update::builder()
                            .table_name(table)
                            .set_key(Some(key))
                            .update_expression(format!("ADD {}", clauses.join(", ")))
                            .set_expression_attribute_names(Some(names))
                            .set_expression_attribute_values(Some(values))
                            .build()
                            .map_err(build)?,
                    )
                    .build()
            }
            Op::Update(expression) => TransactWriteItem::builder()
                .update(
                    Update::builder()
                        .table_name(table)
                        .set_key(Some(key))
                        .update_expression(expression.update)
                        .set_expression_attribute_names(non_empty(expression.names))
                        .set_expression_attribute_values(non_empty(expression.values))
                        .build()
                        .map_err(build)?,
                )
                .build(),
            Op::Check(condition) => TransactWriteItem::builder()
                .condition_check(
                    ConditionCheck::builder()
                        .table_name(table)
                        .set_key(Some(key))
                        .condition_expression(condition.expression)
                        .set_expression_attribute_values(non_empty(condition.values))
                        .build()
                        .map_err(build)?,
                )
                .build(),
        })
    }
}

/// Cancellation reasons after which the same transaction may succeed:
/// throttling (DynamoDB's reason codes differ from its error codes).
const RETRYABLE_REASONS: &[&str] = &[
    "ThrottlingError",
    "ProvisionedThroughputExceeded",
    "RequestLimitExceeded",
];

/// What a failed `TransactWriteItems` means, `names` giving each item's
/// name and expected version in request order: a failed condition, or a
/// race with another transaction on one of its items, is a conflict (the
/// projector starts over from `begin`); a cancellation for throttling is
/// retryable, like throttling, server errors and network failures.
fn commit_error(err: SdkError<TransactWriteItemsError, HttpResponse>, names: &[(String, u64)]) -> Error {
    let Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) = err.as_service_error()
    else {
        return sdk_error(err);
    };
    let reasons = cancelled.cancellation_reasons();
    let lost = reasons.iter().zip(names).find(|(reason, _)| {
        matches!(
            reason.code(),
            Some("ConditionalCheckFailed" | "TransactionConflict")
        )
    });
    if let Some((reason, (name, expected))) = lost {
        return Error::Conflict {
            key: name.clone(),
            expected: ExpectedVersion::Exactly(*expected),
            actual: reason
                .item()
                .and_then(|item| version_of(item).or_else(|| revision_of(item))),
        };
    }
    let retryable = reasons
        .iter()
        .filter_map(|r| r.code())
        .any(|code| RETRYABLE_REASONS.contains(&code) || is_retryable_code(code));
    sdk_error_retryable_if(err, retryable)
}

fn revision_of(item: &Item) -> Option<u64> {
    match item.get("revision") {
        Some(AttributeValue::N(number)) => number.parse().ok(),
        _ => None,
    }
}

fn non_empty<K, V>(map: HashMap<K, V>) -> Option<HashMap<K, V>> {
    (!map.is_empty()).then_some(map)
}

#[async_trait]
impl ProjectionTx for DynamoTx {
    fn generation(&self) -> u64 {
        self.generation
    }

    fn set_generation(&mut self, generation: u64) {
        self.generation = generation;
    }

    async fn checkpoint(&mut self, key: &EntityKey) -> Result<u64> {
        let key = checkpoint_key(&self.projection, self.generation, key);
        Ok(self.read(key).await?.as_ref().and_then(version_of).unwrap_or(0))
    }

    async fn set_checkpoint(&mut self, key: &EntityKey, previous: u64, version: u64) -> Result<()> {
        let stored_key = checkpoint_key(&self.projection, self.generation, key);
        let slot = key_strings(&stored_key);
        let mut item = stored_key.clone();
        item.insert("version".into(), n(version));
        // Moved twice in this transaction: the first move's condition stands.
        let (condition, expected) = match self.pending.remove(&slot) {
            Some(Pending {
                op:
                    Op::Put {
                        item: moved,
                        condition,
                    },
                expected,
                ..
            }) => {
                let current = version_of(&moved).unwrap_or(0);
                if current != previous {
                    return Err(Error::Conflict {
                        key: key.to_string(),
                        expected: ExpectedVersion::Exactly(previous),
                        actual: Some(current),
                    });
                }
                (condition, expected)
            }
            _ => (Some(Condition::number_is("version", previous)), previous),
        };
        self.insert(stored_key, Op::Put { item, condition }, expected);
        Ok(())
    }

    async fn store(&mut self, doc: MetaDoc, text: &str, expected: u64) -> Result<()> {
        let key = doc_key(&self.projection, doc);
        let slot = key_strings(&key);
        let conflict = |actual| Error::Conflict {
            key: format!("{}/{}", self.projection, doc.as_str()),
            expected: ExpectedVersion::Exactly(expected),
            actual: Some(actual),
        };
        // A document read at begin (the generations) or written before in
        // this transaction: its condition and this one must agree.
        let condition = match self.pending.get(&slot).map(|p| &p.op) {
            Some(Op::Check(_)) | None => {
                let checked = self.pending.get(&slot).map(|p| p.expected);
                if checked.is_some_and(|revision| revision != expected) {
                    return Err(conflict(checked.unwrap_or(0)));
                }
                Condition::number_is("revision", expected)
            }
            Some(Op::Put { item, condition }) => {
                let current = revision_of(item).unwrap_or(0);
                if current != expected {
                    return Err(conflict(current));
                }
                condition
                    .clone()
                    .unwrap_or_else(|| Condition::number_is("revision", expected))
            }
            Some(_) => return Err(shape_error("projection document", "written as an item")),
        };
        let first_expected = self.pending.get(&slot).map_or(expected, |p| p.expected);
        let mut item = key.clone();
        item.insert("body".into(), s(text));
        item.insert("revision".into(), n(expected + 1));
        self.pending.remove(&slot);
        self.insert(
            key,
            Op::Put {
                item,
                condition: Some(condition),
            },
            first_expected,
        );
        Ok(())
    }

    async fn commit(mut self) -> Result<()> {
        if !self.pending.values().any(|p| p.op.writes()) {
            // Only the generations check: nothing to protect.
            return Ok(());
        }
        if self.pending.len() > MAX_TRANSACTION_ITEMS {
            return Err(Error::TooLarge {
                what: "transaction".into(),
                size: self.pending.len(),
                limit: MAX_TRANSACTION_ITEMS,
            });
        }
        let mut items = Vec::with_capacity(self.pending.len());
        let mut names = Vec::with_capacity(self.pending.len());
        for ((pk, sk), entry) in std::mem::take(&mut self.pending) {
            names.push((entry.name.clone(), entry.expected));
            items.push(self.request_item(crate::item::key(&pk, &sk), entry)?);
        }
        let sent = self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            // The SDK's retry of a request whose answer was lost is then
            // answered with the first one's outcome, not a failed condition.
            .client_request_token(uuid::Uuid::new_v4().to_string())
            .send()
            .await;
        sent.map(|_| ()).map_err(|e| commit_error(e, &names))
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_dynamodb::error::ErrorMetadata;
    use aws_sdk_dynamodb::types::error::TransactionCanceledException;
    use aws_sdk_dynamodb::types::CancellationReason;
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;

    use super::*;

    fn cancelled(codes: &[&str]) -> SdkError<TransactWriteItemsError, HttpResponse> {
        let mut exception = TransactionCanceledException::builder()
            .message("Transaction cancelled")
            .meta(
                ErrorMetadata::builder()
                    .code("TransactionCanceledException")
                    .build(),
            );
        for code in codes {
            exception = exception.cancellation_reasons(CancellationReason::builder().code(*code).build());
        }
        SdkError::service_error(
            TransactWriteItemsError::TransactionCanceledException(exception.build()),
            HttpResponse::new(StatusCode::try_from(400).unwrap(), SdkBody::empty()),
        )
    }

    fn names() -> Vec<(String, u64)> {
        vec![
            ("PROJECTION#p generations".into(), 3),
            ("CHECKPOINT#p#g1#T a".into(), 7),
        ]
    }

    #[test]
    fn a_failed_condition_is_a_conflict_naming_the_item() {
        match commit_error(cancelled(&["None", "ConditionalCheckFailed"]), &names()) {
            Error::Conflict { key, expected, .. } => {
                assert_eq!(key, "CHECKPOINT#p#g1#T a");
                assert_eq!(expected, ExpectedVersion::Exactly(7));
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
    }

    #[test]
    fn a_race_with_another_transaction_is_a_conflict() {
        assert!(commit_error(cancelled(&["TransactionConflict", "None"]), &names()).is_conflict());
    }

    #[test]
    fn throttling_is_retryable_and_a_validation_error_is_not() {
        for code in ["ThrottlingError", "ProvisionedThroughputExceeded"] {
            let error = commit_error(cancelled(&["None", code]), &names());
            assert!(!error.is_conflict() && error.is_retryable(), "{code}: {error:?}");
        }
        let error = commit_error(cancelled(&["ValidationError", "None"]), &names());
        assert!(!error.is_conflict() && !error.is_retryable(), "{error:?}");
    }
}
