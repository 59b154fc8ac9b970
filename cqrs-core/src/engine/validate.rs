//! Input checks shared by every write: keys, tenancy, ids and sizes.

use std::io;

use serde::Serialize;

use super::records::data_item;
use crate::attributes::Attributes;
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

/// An upper bound of the size of `item` in JSON (a string byte escapes to
/// at most 6 bytes, `\u001f`; the attributes count as their canonical text,
/// which is what they serialize to once normalized).
fn size_bound(item: &DataItem) -> usize {
    // pk, sk, id (pk#sk), code, name, tenant (part of the pk), type, cpk
    // (the pk), csk (sk@version), request id, creator, updater.
    let strings = [
        item.pk.len() * 4 + 1,
        item.sk.len() * 3,
        item.code.len(),
        item.name.len(),
        item.entity_type.len(),
        item.request_id.len(),
        item.created_by.len(),
        item.updated_by.len(),
        item.created_ip.as_ref().map_or(0, |ip| ip.len()),
        item.updated_ip.as_ref().map_or(0, |ip| ip.len()),
    ];
    bound_of(&strings, &item.attributes)
}

/// [`size_bound`] of `data_item(record, None)`: the update audit fields are
/// the creation ones.
fn record_size_bound(record: &CommandRecord) -> usize {
    let strings = [
        record.pk.len() * 4 + 1,
        record.sk.len() * 3,
        record.code.len(),
        record.name.len(),
        record.entity_type.len(),
        record.request_id.len(),
        record.created_by.len() * 2,
        record.created_ip.as_ref().map_or(0, |ip| ip.len()) * 2,
    ];
    bound_of(&strings, &record.attributes)
}

fn bound_of(string_bytes: &[usize], attributes: &Attributes) -> usize {
    // Eleven strings at most, each with its quotes.
    FIXED_FIELDS_BOUND
        .saturating_add(VERSION_BOUND)
        .saturating_add(string_bytes.iter().sum::<usize>().saturating_mul(6))
        .saturating_add(2 * 12)
        .saturating_add(attributes.json().len())
}

/// The digits of a version after `@` in `csk`.
const VERSION_BOUND: usize = 21;

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
    use serde_json::{json, Value};

    use super::*;

    fn item(attributes: Value, text: &str) -> DataItem {
        let max_time = Utc.with_ymd_and_hms(262_000, 12, 31, 23, 59, 59).unwrap()
            + chrono::Duration::nanoseconds(999_999_999);
        // As stored: the canonical text (the numbers here are not all in
        // DynamoDB's range, which is checked before sizes).
        let attributes = Attributes::from_canonical(Attributes::from(attributes).shared_json().clone());
        DataItem {
            pk: text.into(),
            sk: text.into(),
            code: text.into(),
            name: text.into(),
            version: u64::MAX,
            entity_type: text.into(),
            attributes,
            is_deleted: false,
            ttl: Some(i64::MIN),
            seq: Some(u64::MAX),
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
        let mut record = command_record(
            input,
            u64::MAX,
            CommandStatus::Published,
            &ctx,
            crate::clock::now(),
        );
        record.attributes.normalize().unwrap();
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
