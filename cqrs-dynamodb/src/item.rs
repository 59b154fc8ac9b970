//! Rows as DynamoDB items, with the reference framework's field names.
//!
//! Conversion goes through serde (serde_dynamo); only the sort key of
//! versioned rows (`{sk}@{version}`) is rewritten here.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use cqrs_core::{
    command_sk, parse_command_sk, CommandRecord, CommandStatus, DataItem, EntityKey, Error, FailedCommand,
    IdempotencyRecord, Result,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::shape_error;

/// A DynamoDB item.
pub type Item = HashMap<String, AttributeValue>;

/// DynamoDB's limit on the size of one item.
pub const MAX_ITEM_BYTES: usize = 400 * 1024;

/// Prefix of the partition key of failure records in the sequences table.
pub(crate) const FAILURE_PK_PREFIX: &str = "FAILURE#";

pub(crate) fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

pub(crate) fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// The primary key `{pk, sk}`.
pub(crate) fn key(pk: &str, sk: &str) -> Item {
    HashMap::from([("pk".to_owned(), s(pk)), ("sk".to_owned(), s(sk))])
}

fn to_item<T: Serialize>(value: &T) -> Result<Item> {
    serde_dynamo::to_item(value).map_err(|e| Error::invalid("item", e.to_string()))
}

/// Decodes a row; an error names the row by its key, so that a row another
/// program wrote in an unexpected shape can be found.
fn from_item<T: DeserializeOwned>(what: &str, item: Item) -> Result<T> {
    let key = format!(
        "{} {}",
        string_attribute(&item, "pk"),
        string_attribute(&item, "sk")
    );
    serde_dynamo::from_item(item).map_err(|e| shape_error(&format!("{what} {key}"), e))
}

/// The string attribute `name` of `item`, or `""`.
pub(crate) fn string_attribute(item: &Item, name: &str) -> String {
    match item.get(name) {
        Some(AttributeValue::S(value)) => value.clone(),
        _ => String::new(),
    }
}

/// Moves a versioned sort key `{sk}@{n}` back to the bare `sk`.
fn unversion(what: &str, mut item: Item) -> Result<Item> {
    let bare = match item.get("sk") {
        Some(AttributeValue::S(sk)) => parse_command_sk(sk)
            .map(|(bare, _)| bare.to_owned())
            .ok_or_else(|| shape_error(what, format!("sort key '{sk}' has no version")))?,
        _ => return Err(shape_error(what, "no string sort key")),
    };
    item.insert("sk".into(), s(bare));
    Ok(item)
}

/// Attribute by which the reference framework's stream consumer tells a
/// sync publish (`"SYNC"`, which it leaves alone) from an async one (for
/// which it starts its Step Functions pipeline).
pub const SYNC_MODE_ATTRIBUTE: &str = "syncMode";

/// A command row: the record at `{sk}@{version}`. A row not inserted
/// `published` was applied in the same write (a sync publish or a commit):
/// it carries `syncMode: "SYNC"`, so that the reference framework's stream
/// consumer, if one reads the table, does not process it again.
pub(crate) fn command_to_item(command: &CommandRecord) -> Result<Item> {
    let mut item = to_item(command)?;
    item.insert("sk".into(), s(command.command_sk()));
    if command.foreign_status.is_none() && command.status != CommandStatus::Published {
        item.insert(SYNC_MODE_ATTRIBUTE.into(), s("SYNC"));
    }
    Ok(item)
}

/// Reads a command row (`{sk}@{version}`), as this framework or the
/// reference framework wrote it: for a stream image or a `Scan` of one's own.
pub fn command_from_item(item: Item) -> Result<CommandRecord> {
    from_item("command row", unversion("command row", item)?)
}

pub(crate) fn data_to_item(data: &DataItem) -> Result<Item> {
    to_item(data)
}

/// Reads a data row, as this framework or the reference framework wrote it.
pub fn data_from_item(item: Item) -> Result<DataItem> {
    from_item("data row", item)
}

/// A history row: the superseded data item at `{sk}@{version}`, with an
/// optional time to live (seconds since the epoch) replacing the entity's.
pub(crate) fn history_to_item(data: &DataItem, ttl: Option<i64>) -> Result<Item> {
    let mut item = to_item(data)?;
    item.insert("sk".into(), s(command_sk(&data.sk, data.version)));
    if let Some(ttl) = ttl {
        item.insert("ttl".into(), n(ttl));
    }
    Ok(item)
}

/// Reads a history row (`{sk}@{version}`), as either framework wrote it.
pub fn history_from_item(item: Item) -> Result<DataItem> {
    from_item("history row", unversion("history row", item)?)
}

/// The key of a failure record in the sequences table.
pub(crate) fn failure_key(key: &EntityKey, version: u64) -> Result<Item> {
    let tenant = key
        .tenant()
        .ok_or_else(|| Error::invalid("pk", format!("'{}' names no tenant", key.pk)))?;
    Ok(self::key(
        &format!("{FAILURE_PK_PREFIX}{tenant}"),
        &format!("{}@{version}", key.id()),
    ))
}

/// A failure record: its key, and the record itself under `failure`.
pub(crate) fn failure_to_item(failure: &FailedCommand) -> Result<Item> {
    let mut item = failure_key(&failure.key(), failure.version)?;
    item.insert("failure".into(), AttributeValue::M(to_item(failure)?));
    Ok(item)
}

pub(crate) fn failure_from_item(mut item: Item) -> Result<FailedCommand> {
    match item.remove("failure") {
        Some(AttributeValue::M(map)) => from_item("failure record", map),
        _ => Err(shape_error("failure record", "no 'failure' map")),
    }
}

/// Prefix of the partition key of idempotency keys in the sequences table.
pub(crate) const IDEMPOTENCY_PK_PREFIX: &str = "IDEMPOTENCY#";

/// Attributes holding the entity of an idempotency key's command (the
/// record's own `pk` and `sk` are the row's key in the sequences table).
const ENTITY_PK: &str = "entityPk";
const ENTITY_SK: &str = "entitySk";

/// The key of an idempotency key's row in the sequences table.
pub(crate) fn idempotency_key(tenant_code: &str, key: &str) -> Item {
    self::key(&format!("{IDEMPOTENCY_PK_PREFIX}{tenant_code}"), key)
}

/// An idempotency key's row: pk `IDEMPOTENCY#{tenantCode}`, sk the key, the
/// record's fields (its entity under `entityPk`/`entitySk`), and `ttl` =
/// `expiresAt`, so that DynamoDB's time to live deletes it once expired.
pub(crate) fn idempotency_to_item(record: &IdempotencyRecord) -> Result<Item> {
    let mut item = to_item(record)?;
    if let Some(pk) = item.remove("pk") {
        item.insert(ENTITY_PK.into(), pk);
    }
    if let Some(sk) = item.remove("sk") {
        item.insert(ENTITY_SK.into(), sk);
    }
    item.extend(idempotency_key(&record.tenant_code, &record.key));
    item.insert(crate::tables::TTL_ATTRIBUTE.into(), n(record.expires_at));
    Ok(item)
}

pub(crate) fn idempotency_from_item(mut item: Item) -> Result<IdempotencyRecord> {
    item.remove("pk");
    item.remove("sk");
    item.remove(crate::tables::TTL_ATTRIBUTE);
    let (Some(pk), Some(sk)) = (item.remove(ENTITY_PK), item.remove(ENTITY_SK)) else {
        return Err(shape_error("idempotency key", "no entityPk or entitySk"));
    };
    item.insert("pk".into(), pk);
    item.insert("sk".into(), sk);
    from_item("idempotency key", item)
}

/// The `version` number of an item, if it has one.
pub(crate) fn version_of(item: &Item) -> Option<u64> {
    match item.get("version") {
        Some(AttributeValue::N(v)) => v.parse().ok(),
        _ => None,
    }
}

/// The size DynamoDB counts for an item: attribute names plus values.
pub fn item_size(item: &Item) -> usize {
    item.iter()
        .map(|(name, value)| name.len() + value_size(value))
        .sum()
}

fn value_size(value: &AttributeValue) -> usize {
    match value {
        AttributeValue::S(s) => s.len(),
        AttributeValue::N(n) => number_size(n),
        AttributeValue::B(b) => b.as_ref().len(),
        AttributeValue::Bool(_) | AttributeValue::Null(_) => 1,
        AttributeValue::Ss(v) => v.iter().map(String::len).sum(),
        AttributeValue::Ns(v) => v.iter().map(|n| number_size(n)).sum(),
        AttributeValue::Bs(v) => v.iter().map(|b| b.as_ref().len()).sum(),
        AttributeValue::L(v) => 3 + v.iter().map(|e| 1 + value_size(e)).sum::<usize>(),
        AttributeValue::M(m) => 3 + m.iter().map(|(k, v)| 1 + k.len() + value_size(v)).sum::<usize>(),
        _ => 0,
    }
}

/// Numbers take one byte per two significant digits, plus one.
fn number_size(number: &str) -> usize {
    let digits = number.chars().filter(char::is_ascii_digit).count();
    digits.div_ceil(2) + 1
}

/// Rejects an item DynamoDB would refuse for its size, before sending it;
/// returns the size.
pub(crate) fn check_size(item: &Item) -> Result<usize> {
    let size = item_size(item);
    if size > MAX_ITEM_BYTES {
        return Err(Error::TooLarge {
            what: "item".into(),
            size,
            limit: MAX_ITEM_BYTES,
        });
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_dynamodb_rules() {
        let item: Item = HashMap::from([
            ("pk".to_owned(), s("TENANT#a")),
            ("n".to_owned(), n(12345)),
            (
                "m".to_owned(),
                AttributeValue::M(HashMap::from([("k".to_owned(), AttributeValue::Bool(true))])),
            ),
        ]);
        // "pk" 2 + 8, "n" 1 + 4 (5 digits), "m" 1 + 3 + (1 + 1 + 1)
        assert_eq!(item_size(&item), 10 + 5 + 7);
    }

    #[test]
    fn idempotency_rows_keep_the_entity_apart_from_their_key() {
        let record = IdempotencyRecord {
            tenant_code: "shop-a".into(),
            key: "req-1".into(),
            fingerprint: "f".repeat(64),
            pk: "TENANT#shop-a".into(),
            sk: "ORDER#1".into(),
            version: 3,
            created_at: chrono::Utc::now(),
            expires_at: 1_700_000_000,
            commit: Vec::new(),
        };
        let item = idempotency_to_item(&record).unwrap();
        assert!(
            !item.contains_key("commit"),
            "a single publish's row has no members"
        );
        assert_eq!(item["pk"], s("IDEMPOTENCY#shop-a"));
        assert_eq!(item["sk"], s("req-1"));
        assert_eq!(item["entityPk"], s("TENANT#shop-a"));
        assert_eq!(item["entitySk"], s("ORDER#1"));
        assert_eq!(item["expiresAt"], n(1_700_000_000));
        assert_eq!(item["ttl"], n(1_700_000_000));
        assert_eq!(idempotency_from_item(item).unwrap(), record);

        // A keyed commit's row keeps its members, in order.
        let members = [("ORDER#1", 3, true), ("STOCK#1", 7, false)];
        let commit = IdempotencyRecord {
            commit: members
                .iter()
                .map(|(sk, version, written)| cqrs_core::CommitMember {
                    pk: "TENANT#shop-a".into(),
                    sk: (*sk).into(),
                    version: *version,
                    written: *written,
                })
                .collect(),
            ..record
        };
        let item = idempotency_to_item(&commit).unwrap();
        assert_eq!(idempotency_from_item(item).unwrap(), commit);
    }
}
