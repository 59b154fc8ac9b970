//! Input checks shared by every write: keys, tenancy, ids and sizes.

use std::io;
use std::sync::OnceLock;

use serde::Serialize;
use serde_json::Value;

use super::records::data_item;
use crate::context::{InvocationContext, TenancyPolicy};
use crate::error::{Error, Result};
use crate::keys::EntityKey;
use crate::model::{CommandInput, CommandRecord, DataItem};
use crate::storage::{ApplyWrite, StorageLimits};

/// Checks a key and that `ctx` may touch it.
pub(crate) fn check_key(tenancy: &TenancyPolicy, key: &EntityKey, ctx: &InvocationContext) -> Result<()> {
    key.validate()?;
    tenancy.check_pk(ctx, &key.pk)
}

/// Checks everything about a command that can be checked without reading.
pub(crate) fn check_command(
    tenancy: &TenancyPolicy,
    command: &CommandInput,
    ctx: &InvocationContext,
) -> Result<EntityKey> {
    let key = command.key();
    check_key(tenancy, &key, ctx)?;
    if let Some(id) = &command.id {
        if *id != key.id() {
            return Err(Error::invalid("id", format!("'{id}' is not '{}'", key.id())));
        }
    }
    if let Some(tenant) = &command.tenant_code {
        if Some(tenant.as_str()) != key.tenant() {
            return Err(Error::invalid(
                "tenantCode",
                format!("'{tenant}' is not the tenant of pk '{}'", key.pk),
            ));
        }
    }
    if command.code.is_empty() {
        return Err(Error::invalid("code", "must not be empty"));
    }
    if let Some(idempotency) = &command.idempotency_key {
        idempotency.validate()?;
    }
    Ok(key)
}

/// Checks that the stored form of `item` fits the backend.
///
/// Serializing the item to count its bytes costs about a tenth of a publish
/// (every number and timestamp is formatted). A bound from the lengths of
/// its strings settles every item well under the limit without it; only an
/// item whose bound is over the limit is serialized and counted exactly, so
/// the outcome is the same.
pub(crate) fn check_size(limits: &StorageLimits, item: &DataItem) -> Result<()> {
    if size_bound(item) <= limits.max_item_bytes {
        return Ok(());
    }
    check_exact_size(limits, item)
}

/// [`check_size`] of the data row that `record` will produce when it is
/// applied over nothing (the largest it can be), without building it unless
/// its bound is over the limit.
pub(crate) fn check_size_as_data(limits: &StorageLimits, record: &CommandRecord) -> Result<()> {
    if record_size_bound(record) <= limits.max_item_bytes {
        return Ok(());
    }
    check_exact_size(limits, &data_item(record, None))
}

/// Checks that the rows of one atomic write fit the backend's transaction
/// size, counting each data row for its command row too (the data row is
/// the larger). Exact sizes are computed only when the bound is over.
pub(crate) fn check_transaction_size(limits: &StorageLimits, writes: &[ApplyWrite]) -> Result<()> {
    let rows = |size: fn(&DataItem) -> Result<usize>| -> Result<usize> {
        writes.iter().try_fold(0usize, |sum, write| {
            let history = write.history.as_ref().map(size).transpose()?.unwrap_or(0);
            Ok(sum
                .saturating_add(size(&write.data)?.saturating_mul(2))
                .saturating_add(history))
        })
    };
    if rows(|item| Ok(size_bound(item)))? <= limits.max_transaction_bytes {
        return Ok(());
    }
    let size = rows(serialized_size::<DataItem>)?;
    if size > limits.max_transaction_bytes {
        return Err(Error::TooLarge {
            what: "transaction bytes".into(),
            size,
            limit: limits.max_transaction_bytes,
        });
    }
    Ok(())
}

fn check_exact_size(limits: &StorageLimits, item: &DataItem) -> Result<()> {
    let size = serialized_size(item)?;
    if size > limits.max_item_bytes {
        return Err(Error::TooLarge {
            what: "item".into(),
            size,
            limit: limits.max_item_bytes,
        });
    }
    Ok(())
}

/// The exact size of `value` in JSON.
fn serialized_size<T: Serialize + ?Sized>(value: &T) -> Result<usize> {
    let mut counter = ByteCounter(0);
    serde_json::to_writer(&mut counter, value).map_err(|e| Error::invalid("attributes", e.to_string()))?;
    Ok(counter.0)
}

/// What a data item's JSON takes besides its strings and attributes, at
/// most: field names, quotes, colons and commas (about 250 bytes), three
/// optional numbers and a flag (65), two timestamps of at most 35 bytes.
const FIXED_FIELDS_BOUND: usize = 1024;

/// The longest JSON form of a number without `arbitrary_precision`: an
/// `i64`/`u64` takes at most 20 bytes, an `f64` (shortest round trip) 24.
const NUMBER_BOUND: usize = 32;

/// An upper bound of the size of `item` in JSON (a string byte escapes to
/// at most 6 bytes, `\u001f`).
fn size_bound(item: &DataItem) -> usize {
    let strings = [
        &item.pk,
        &item.sk,
        &item.id,
        &item.code,
        &item.name,
        &item.tenant_code,
        &item.entity_type,
        &item.cpk,
        &item.csk,
        &item.request_id,
        &item.created_by,
        &item.updated_by,
    ];
    let optional = [&item.created_ip, &item.updated_ip];
    bound_of(&strings, &optional, 0, &item.attributes)
}

/// [`size_bound`] of `data_item(record, None)`: `cpk` is the pk, `csk` the
/// sk with `@` and the version (at most 21 more bytes), the update audit
/// fields are the creation ones.
fn record_size_bound(record: &CommandRecord) -> usize {
    let strings = [
        &record.pk,
        &record.sk,
        &record.id,
        &record.code,
        &record.name,
        &record.tenant_code,
        &record.entity_type,
        &record.pk,
        &record.sk,
        &record.request_id,
        &record.created_by,
        &record.created_by,
    ];
    let optional = [&record.created_ip, &record.created_ip];
    bound_of(&strings, &optional, 6 * 21, &record.attributes)
}

fn bound_of(strings: &[&String], optional: &[&Option<String>], extra: usize, attributes: &Value) -> usize {
    FIXED_FIELDS_BOUND
        .saturating_add(extra)
        .saturating_add(strings.iter().map(|s| string_bound(s)).sum::<usize>())
        .saturating_add(
            optional
                .iter()
                .filter_map(|s| s.as_deref())
                .map(string_bound)
                .sum::<usize>(),
        )
        .saturating_add(value_bound(attributes))
}

fn string_bound(s: &str) -> usize {
    s.len().saturating_mul(6).saturating_add(2)
}

fn value_bound(value: &Value) -> usize {
    match value {
        Value::Null => 4,
        Value::Bool(_) => 5,
        Value::Number(n) if numbers_keep_text() => serialized_size(n).unwrap_or(usize::MAX),
        Value::Number(_) => NUMBER_BOUND,
        Value::String(s) => string_bound(s),
        // Brackets, and a comma after each element (one more than needed).
        Value::Array(items) => items
            .iter()
            .fold(2 + items.len(), |sum, v| sum.saturating_add(value_bound(v))),
        // Braces, and a colon and a comma per entry.
        Value::Object(map) => map.iter().fold(2, |sum, (k, v)| {
            sum.saturating_add(string_bound(k))
                .saturating_add(2)
                .saturating_add(value_bound(v))
        }),
    }
}

/// Whether numbers keep their text, with no bound on its length: serde_json's
/// `arbitrary_precision` feature, which any crate of a build can turn on.
/// Checked once, by behaviour.
fn numbers_keep_text() -> bool {
    static KEEP: OnceLock<bool> = OnceLock::new();
    *KEEP.get_or_init(|| {
        let long = "0.10000000000000000000000000000000000000000000001";
        serde_json::from_str::<serde_json::Number>(long).is_ok_and(|n| n.to_string().len() >= long.len())
    })
}

/// Counts serialized bytes without keeping them.
struct ByteCounter(usize);

impl io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use serde_json::json;

    use super::*;

    fn item(attributes: Value, text: &str) -> DataItem {
        let max_time = Utc.with_ymd_and_hms(262_000, 12, 31, 23, 59, 59).unwrap()
            + chrono::Duration::nanoseconds(999_999_999);
        DataItem {
            pk: text.into(),
            sk: text.into(),
            id: text.into(),
            code: text.into(),
            name: text.into(),
            version: u64::MAX,
            tenant_code: text.into(),
            entity_type: text.into(),
            attributes,
            is_deleted: false,
            ttl: Some(i64::MIN),
            seq: Some(u64::MAX),
            cpk: text.into(),
            csk: text.into(),
            request_id: text.into(),
            created_at: max_time,
            created_by: text.into(),
            created_ip: Some(text.into()),
            updated_at: max_time,
            updated_by: text.into(),
            updated_ip: Some(text.into()),
        }
    }

    #[test]
    fn the_bound_is_never_below_the_exact_size() {
        let escapes: String = (0u8..32).map(char::from).chain("\\\"é😀".chars()).collect();
        let attributes = [
            json!(null),
            json!({}),
            json!([]),
            json!({ "a": [1, -1, u64::MAX, i64::MIN, 0.1, -1.7976931348623157e308, 5e-324, true, null] }),
            json!({ escapes.clone(): [escapes.clone(), { "": "" }, [[[]]]] }),
            json!({ "deep": { "deeper": { "deepest": [f64::MAX, f64::MIN_POSITIVE, 123_456_789.123_456_79, -0.000_001_234_567_890_123_4] } } }),
        ];
        for attributes in attributes {
            for text in ["", "x", escapes.as_str()] {
                let item = item(attributes.clone(), text);
                let exact = serialized_size(&item).unwrap();
                assert!(size_bound(&item) >= exact, "{exact} bytes: {item:?}");
            }
        }
    }

    #[test]
    fn the_bound_of_a_record_covers_its_data_row() {
        use crate::context::InvocationContext;
        use crate::engine::records::command_record;
        use crate::model::{CommandInput, CommandStatus};
        let escapes: String = (0u8..32).map(char::from).collect();
        let ctx = InvocationContext::new("a", escapes.clone()).with_request_id(escapes.clone());
        let input = CommandInput::new("TENANT#a", format!("X#{escapes}"))
            .attributes(json!({ "n": [0.1, u64::MAX], escapes.clone(): escapes.clone() }));
        let record = command_record(input, u64::MAX, CommandStatus::Published, &ctx, Utc::now());
        let exact = serialized_size(&data_item(&record, None)).unwrap();
        assert!(record_size_bound(&record) >= exact);
    }

    #[test]
    fn an_item_over_the_limit_is_rejected_with_its_exact_size() {
        let item = item(json!({ "text": "x".repeat(1000) }), "k");
        let exact = serialized_size(&item).unwrap();
        let limits = |max_item_bytes| StorageLimits {
            max_item_bytes,
            ..StorageLimits::default()
        };
        check_size(&limits(exact), &item).unwrap();
        match check_size(&limits(exact - 1), &item) {
            Err(Error::TooLarge { size, limit, .. }) => assert_eq!((size, limit), (exact, exact - 1)),
            other => panic!("{other:?}"),
        }
    }
}
