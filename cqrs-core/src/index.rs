//! Secondary read paths over the data table: items found by the values of
//! their attributes (orders by status, a customer's orders) in pages, the
//! way `list_items` finds them by sort key.
//!
//! An [`Index`] is declared on the engine. For every data row it writes, the
//! engine works out the row's entry in each index — a partition (the
//! entity's pk and the values of the partition fields) and a sort key (the
//! values of the sort fields, then the item's sk) — and the backend stores
//! it with the row, atomically (on DynamoDB: attributes of the data item
//! that a global secondary index is keyed on). Reading is
//! [`DataService::list_by_index`](crate::DataService::list_by_index).

use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::keys::MAX_PK_BYTES;
use crate::model::DataItem;
use crate::query::SkCondition;

/// Separates the parts of an index key. Lower than any character an
/// indexed value may hold, so index keys sort by their first part first.
pub const INDEX_KEY_SEPARATOR: char = '\u{1}';

/// Above every character, to close a range after a sort value.
const HIGHEST: char = char::MAX;

/// Longest index sort key, in bytes (DynamoDB's limit on a sort key).
pub const MAX_INDEX_SK_BYTES: usize = 1024;

/// Most indexes an engine may declare (DynamoDB: 20 global secondary
/// indexes per table).
pub const MAX_INDEXES: usize = 20;

/// A declared secondary read path: which items it holds, what they are
/// found by and in which order.
///
/// ```
/// use cqrs_core::Index;
/// let by_status = Index::new("orders-by-status")
///     .entity_type("ORDER")
///     .partition_by("attributes.status")
///     .sort_by("attributes.placedAt");
/// assert_eq!(by_status.name(), "orders-by-status");
/// ```
///
/// Field paths are those of [`DataItem::field`]. An item is in the index when
/// it matches the entity type (if one is set) and has a string, number or
/// boolean at every partition and sort field; others are left out (a sparse
/// index, as DynamoDB's). Sort values compare as text: use sortable strings
/// (RFC 3339 timestamps, zero-padded numbers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    name: String,
    entity_type: Option<String>,
    partition: Vec<String>,
    sort: Vec<String>,
}

impl Index {
    /// An index named `name` (3 to 255 characters of `A-Z a-z 0-9 _ - .`,
    /// DynamoDB's rule for index names), holding every item, partitioned by
    /// nothing yet.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            entity_type: None,
            partition: Vec::new(),
            sort: Vec::new(),
        }
    }

    /// Holds only the items of this entity type.
    pub fn entity_type(mut self, entity_type: impl Into<String>) -> Self {
        self.entity_type = Some(entity_type.into());
        self
    }

    /// Adds a partition field: items are found by its value.
    pub fn partition_by(mut self, path: impl Into<String>) -> Self {
        self.partition.push(path.into());
        self
    }

    /// Adds a sort field: items of one partition come in its order (then by sk).
    pub fn sort_by(mut self, path: impl Into<String>) -> Self {
        self.sort.push(path.into());
        self
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The partition fields.
    pub fn partition_fields(&self) -> &[String] {
        &self.partition
    }

    /// The sort fields.
    pub fn sort_fields(&self) -> &[String] {
        &self.sort
    }

    /// Checks the declaration.
    pub(crate) fn validate(&self) -> Result<()> {
        let name = &self.name;
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
        if !(3..=255).contains(&name.len()) || !name.chars().all(allowed) {
            return Err(Error::invalid(
                "index",
                format!("name '{name}' must be 3 to 255 characters of A-Z a-z 0-9 _ - ."),
            ));
        }
        if self.partition.is_empty() {
            return Err(Error::invalid("index", format!("{name} has no partition field")));
        }
        Ok(())
    }

    /// The entry of `item` in this index, `None` when it is not in it: what
    /// the engine writes with the item (to backfill an index declared after
    /// its items were written, write each item's entry the same way).
    ///
    /// Fails when an indexed value holds U+0000 or U+0001, or the entry's
    /// keys exceed DynamoDB's key sizes.
    pub fn entry(&self, item: &DataItem) -> Result<Option<IndexEntry>> {
        if self.entity_type.as_ref().is_some_and(|t| *t != item.entity_type) {
            return Ok(None);
        }
        let Some(values) = values_of(item, &self.partition)? else {
            return Ok(None);
        };
        let Some(sort) = values_of(item, &self.sort)? else {
            return Ok(None);
        };
        let pk = partition_key(&item.pk, &values);
        let mut sk = sort.join(&INDEX_KEY_SEPARATOR.to_string());
        sk.push(INDEX_KEY_SEPARATOR);
        sk.push_str(&item.sk);
        for (what, key, limit) in [
            ("index pk", &pk, MAX_PK_BYTES),
            ("index sk", &sk, MAX_INDEX_SK_BYTES),
        ] {
            if key.len() > limit {
                return Err(Error::TooLarge {
                    what: format!("{what} of {}", self.name),
                    size: key.len(),
                    limit,
                });
            }
        }
        Ok(Some(IndexEntry {
            index: self.name.clone(),
            pk,
            sk,
        }))
    }
}

/// A data row's place in one index, written with the row.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IndexEntry {
    /// The index's name.
    pub index: String,
    /// The partition: the entity's pk, then the partition values, separated
    /// by [`INDEX_KEY_SEPARATOR`].
    pub pk: String,
    /// The sort key: the sort values, then the item's sk, separated by
    /// [`INDEX_KEY_SEPARATOR`]; unique within the partition.
    pub sk: String,
}

impl IndexEntry {
    /// The item's sort key, the last part of the entry's.
    pub fn item_sk(&self) -> &str {
        self.sk.rsplit(INDEX_KEY_SEPARATOR).next().unwrap_or_default()
    }
}

/// Which partition of an index to read: the index, the entity pk (the
/// tenant's partition, checked as `list_items` checks it) and the values of
/// the partition fields, in their declared order.
///
/// ```
/// use cqrs_core::IndexLookup;
/// #[derive(serde::Serialize)]
/// #[serde(rename_all = "lowercase")]
/// enum Status { Pending }
///
/// let pending = IndexLookup::new("orders-by-status", "TENANT#shop-a").value(Status::Pending);
/// assert_eq!(pending.values(), ["pending"]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexLookup {
    index: String,
    pk: String,
    values: Vec<String>,
    unusable: Option<String>,
}

impl IndexLookup {
    /// A lookup in `index`, within the entity partition `pk`.
    pub fn new(index: impl Into<String>, pk: impl Into<String>) -> Self {
        Self {
            index: index.into(),
            pk: pk.into(),
            values: Vec::new(),
            unusable: None,
        }
    }

    /// Adds the value of the next partition field: a string, number, bool or
    /// anything serializing to one (your enum as it is stored).
    pub fn value(mut self, value: impl Serialize) -> Self {
        match serde_json::to_value(value)
            .map_err(|e| e.to_string())
            .and_then(|v| rendered(&v).ok_or_else(|| format!("{v} is not a string, number or boolean")))
        {
            Ok(text) => self.values.push(text),
            Err(why) => self.unusable = Some(why),
        }
        self
    }

    /// The index's name.
    pub fn index(&self) -> &str {
        &self.index
    }

    /// The entity partition.
    pub fn pk(&self) -> &str {
        &self.pk
    }

    /// The partition values, as indexed.
    pub fn values(&self) -> &[String] {
        &self.values
    }

    /// The index partition this lookup reads, checked against `index`.
    pub(crate) fn partition(&self, index: &Index) -> Result<String> {
        if let Some(why) = &self.unusable {
            return Err(Error::invalid("index value", why.clone()));
        }
        if self.values.len() != index.partition.len() {
            return Err(Error::invalid(
                "index value",
                format!(
                    "{} is partitioned by {} field(s) ({}), {} value(s) given",
                    index.name,
                    index.partition.len(),
                    index.partition.join(", "),
                    self.values.len()
                ),
            ));
        }
        if let Some(bad) = self.values.iter().find(|v| v.contains(INDEX_KEY_SEPARATOR)) {
            return Err(Error::invalid("index value", format!("{bad:?} holds U+0001")));
        }
        Ok(partition_key(&self.pk, &self.values))
    }
}

/// `condition` on an index's sort values, as a condition on its sort keys
/// (which end with the item's sk): `Equals(v)` finds every item sorted at `v`.
pub(crate) fn sort_condition(condition: &SkCondition) -> SkCondition {
    let after = |v: &str| format!("{v}{INDEX_KEY_SEPARATOR}{HIGHEST}");
    match condition {
        SkCondition::Equals(v) => SkCondition::BeginsWith(format!("{v}{INDEX_KEY_SEPARATOR}")),
        SkCondition::BeginsWith(v) => SkCondition::BeginsWith(v.clone()),
        SkCondition::Between(low, high) => SkCondition::Between(low.clone(), after(high)),
        SkCondition::LessThan(v) => SkCondition::LessThan(v.clone()),
        SkCondition::LessOrEqual(v) => SkCondition::LessOrEqual(after(v)),
        SkCondition::GreaterThan(v) => SkCondition::GreaterThan(after(v)),
        SkCondition::GreaterOrEqual(v) => SkCondition::GreaterOrEqual(v.clone()),
    }
}

fn partition_key(pk: &str, values: &[String]) -> String {
    let mut key = pk.to_owned();
    for value in values {
        key.push(INDEX_KEY_SEPARATOR);
        key.push_str(value);
    }
    key
}

/// The text of each field of `item`, `None` when one is absent or not a
/// string, number or boolean.
fn values_of(item: &DataItem, paths: &[String]) -> Result<Option<Vec<String>>> {
    let mut values = Vec::with_capacity(paths.len());
    for path in paths {
        let Some(text) = item.field(path).as_ref().and_then(rendered) else {
            return Ok(None);
        };
        if text.contains(|c: char| c <= INDEX_KEY_SEPARATOR) {
            return Err(Error::invalid(
                path.clone(),
                "an indexed value may not hold U+0000 or U+0001",
            ));
        }
        values.push(text);
    }
    Ok(Some(values))
}

/// An indexable value as text.
fn rendered(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sort_conditions_select_by_sort_value_whatever_the_sk() {
        let key = |sort: &str, sk: &str| format!("{sort}{INDEX_KEY_SEPARATOR}{sk}");
        let rows = [
            key("2026-11-30", "ORDER#9"),
            key("2026-12-01", "ORDER#1"),
            key("2026-12-01", "ORDER#2"),
            key("2026-12-02", "ORDER#3"),
        ];
        let selected = |c: SkCondition| -> Vec<usize> {
            let c = sort_condition(&c);
            (0..rows.len()).filter(|&i| c.matches(&rows[i])).collect()
        };
        assert_eq!(selected(SkCondition::Equals("2026-12-01".into())), [1, 2]);
        assert_eq!(selected(SkCondition::LessOrEqual("2026-12-01".into())), [0, 1, 2]);
        assert_eq!(selected(SkCondition::LessThan("2026-12-01".into())), [0]);
        assert_eq!(selected(SkCondition::GreaterThan("2026-12-01".into())), [3]);
        assert_eq!(
            selected(SkCondition::GreaterOrEqual("2026-12-01".into())),
            [1, 2, 3]
        );
        assert_eq!(
            selected(SkCondition::Between("2026-12-01".into(), "2026-12-01".into())),
            [1, 2]
        );
        assert_eq!(selected(SkCondition::BeginsWith("2026-12".into())), [1, 2, 3]);
    }
}
