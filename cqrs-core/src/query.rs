//! Typed queries of the data table: sort-key conditions, attribute filters,
//! order, limits and opaque cursors.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::DataItem;

/// The default page size of [`ListQuery`].
pub const DEFAULT_LIMIT: usize = 10;
/// The largest page size a [`ListQuery`] may ask for.
pub const MAX_LIMIT: usize = 1000;

/// A condition on the sort key of a query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SkCondition {
    /// `sk = value`
    Equals(String),
    /// `sk` starts with the value.
    BeginsWith(String),
    /// `low <= sk <= high`
    Between(String, String),
    /// `sk < value`
    LessThan(String),
    /// `sk <= value`
    LessOrEqual(String),
    /// `sk > value`
    GreaterThan(String),
    /// `sk >= value`
    GreaterOrEqual(String),
}

impl SkCondition {
    /// Whether `sk` satisfies the condition (byte-wise order, as DynamoDB compares strings).
    pub fn matches(&self, sk: &str) -> bool {
        match self {
            SkCondition::Equals(v) => sk == v,
            SkCondition::BeginsWith(v) => sk.starts_with(v.as_str()),
            SkCondition::Between(low, high) => low.as_str() <= sk && sk <= high.as_str(),
            SkCondition::LessThan(v) => sk < v.as_str(),
            SkCondition::LessOrEqual(v) => sk <= v.as_str(),
            SkCondition::GreaterThan(v) => sk > v.as_str(),
            SkCondition::GreaterOrEqual(v) => sk >= v.as_str(),
        }
    }
}

/// An attribute filter, applied to items after the key condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Filter {
    /// The value at `path` equals `value`.
    Equals {
        /// Dotted path, e.g. `attributes.status` (see [`DataItem::field`]).
        path: String,
        /// The value to compare with.
        value: Value,
    },
    /// The value at `path` differs from `value` (or is absent).
    NotEquals {
        /// Dotted path.
        path: String,
        /// The value to compare with.
        value: Value,
    },
    /// The value at `path` is one of `values`.
    In {
        /// Dotted path.
        path: String,
        /// Accepted values.
        values: Vec<Value>,
    },
    /// A value exists at `path`.
    Exists {
        /// Dotted path.
        path: String,
    },
    /// A filter whose value could not be turned into JSON (a map with
    /// non-string keys, say): a query with it is refused with
    /// [`Error::InvalidInput`] and reads nothing.
    Unusable {
        /// Dotted path.
        path: String,
        /// Why the value could not be used.
        why: String,
    },
}

impl Filter {
    /// `path == value`, `value` being anything serializable: a string, a
    /// number, a `serde_json::Value`, or your own enum as it is stored.
    ///
    /// ```
    /// use cqrs_core::Filter;
    /// #[derive(serde::Serialize)]
    /// #[serde(rename_all = "lowercase")]
    /// enum Status { Pending, Shipped }
    ///
    /// assert_eq!(Filter::eq("attributes.status", Status::Shipped), Filter::eq("attributes.status", "shipped"));
    /// ```
    pub fn eq(path: impl Into<String>, value: impl Serialize) -> Self {
        let path = path.into();
        match serde_json::to_value(value) {
            Ok(value) => Filter::Equals { path, value },
            Err(e) => Filter::Unusable {
                path,
                why: e.to_string(),
            },
        }
    }

    /// `path != value` (see [`Filter::eq`] for the value).
    pub fn ne(path: impl Into<String>, value: impl Serialize) -> Self {
        let path = path.into();
        match serde_json::to_value(value) {
            Ok(value) => Filter::NotEquals { path, value },
            Err(e) => Filter::Unusable {
                path,
                why: e.to_string(),
            },
        }
    }

    /// `path IN values` (see [`Filter::eq`] for the values).
    pub fn is_in<V: Serialize>(path: impl Into<String>, values: impl IntoIterator<Item = V>) -> Self {
        let path = path.into();
        match values.into_iter().map(serde_json::to_value).collect() {
            Ok(values) => Filter::In { path, values },
            Err(e) => Filter::Unusable {
                path,
                why: e.to_string(),
            },
        }
    }

    /// Refuses a filter whose value could not be used.
    pub(crate) fn check(&self) -> Result<()> {
        match self {
            Filter::Unusable { path, why } => {
                Err(Error::invalid("filter", format!("value of {path}: {why}")))
            }
            _ => Ok(()),
        }
    }

    /// `exists(path)`
    pub fn exists(path: impl Into<String>) -> Self {
        Filter::Exists { path: path.into() }
    }

    /// Whether `item` passes the filter.
    ///
    /// Numbers compare by value: `6`, `6.0` and `6e0` are equal, as they are
    /// to DynamoDB, which does not keep how a number was written.
    pub fn matches(&self, item: &DataItem) -> bool {
        let equals = |found: &Value, wanted: &Value| same_value(found, wanted);
        match self {
            Filter::Equals { path, value } => item.field(path).is_some_and(|v| equals(&v, value)),
            Filter::NotEquals { path, value } => !item.field(path).is_some_and(|v| equals(&v, value)),
            Filter::In { path, values } => item
                .field(path)
                .is_some_and(|v| values.iter().any(|wanted| equals(&v, wanted))),
            Filter::Exists { path } => item.field(path).is_some(),
            Filter::Unusable { .. } => false,
        }
    }
}

/// JSON equality with numbers compared by value.
pub(crate) fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64(), x.as_u64(), y.as_u64()) {
            (Some(x), Some(y), _, _) => x == y,
            (_, _, Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64(),
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_value(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            if x.len() != y.len() {
                return false;
            }
            // Both maps iterate in key order (without serde_json's
            // `preserve_order`): walk them side by side, and look keys up
            // only when the orders differ.
            for ((k, v), (l, w)) in x.iter().zip(y) {
                if k != l {
                    return x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same_value(v, w)));
                }
                if !same_value(v, w) {
                    return false;
                }
            }
            true
        }
        _ => a == b,
    }
}

/// Order of the sort keys in a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SortOrder {
    /// Smallest sort key first.
    #[default]
    Ascending,
    /// Largest sort key first.
    Descending,
}

/// A query of the items of one partition key.
///
/// ```
/// use cqrs_core::{ListQuery, SkCondition, Filter};
/// let query = ListQuery::new()
///     .sk(SkCondition::BeginsWith("ORDER#".into()))
///     .filter(Filter::eq("attributes.status", "pending"))
///     .limit(20);
/// assert_eq!(query.limit, 20);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    /// Condition on the sort key.
    pub sk: Option<SkCondition>,
    /// Filters an item must all pass.
    pub filters: Vec<Filter>,
    /// Page size, 1 to [`MAX_LIMIT`].
    pub limit: usize,
    /// Order of the page.
    pub order: SortOrder,
    /// Where the previous page ended.
    pub cursor: Option<Cursor>,
}

impl Default for ListQuery {
    fn default() -> Self {
        Self {
            sk: None,
            filters: Vec::new(),
            limit: DEFAULT_LIMIT,
            order: SortOrder::Ascending,
            cursor: None,
        }
    }
}

impl ListQuery {
    /// All items of the pk, ten at a time, ascending.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the sort-key condition.
    pub fn sk(mut self, condition: SkCondition) -> Self {
        self.sk = Some(condition);
        self
    }

    /// Adds a filter.
    pub fn filter(mut self, filter: Filter) -> Self {
        self.filters.push(filter);
        self
    }

    /// Sets the page size.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// Sets the order.
    pub fn order(mut self, order: SortOrder) -> Self {
        self.order = order;
        self
    }

    /// Continues after the page that returned `cursor`.
    pub fn after(mut self, cursor: Option<Cursor>) -> Self {
        self.cursor = cursor;
        self
    }
}

/// One page of a query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    /// The items of this page.
    pub items: Vec<T>,
    /// Where to continue; `None` on the last page.
    pub cursor: Option<Cursor>,
    /// Rows of the range that could not be read (left out of `items`): one
    /// odd row, written by another program or damaged, does not fail the
    /// page. A row near the end of a page may be reported on the next one
    /// too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<UnreadableRow>,
}

/// A row a backend found but could not read as an item, by its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnreadableRow {
    /// Its partition key.
    pub pk: String,
    /// Its sort key.
    pub sk: String,
    /// Why it could not be read.
    pub reason: String,
}

/// An opaque position in a query, handed to the client and back.
///
/// It is bound to the partition key it was issued for: a cursor of another
/// pk (or tenant) is rejected as invalid input.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Cursor(String);

#[derive(Serialize, Deserialize)]
struct CursorBody {
    pk: String,
    sk: String,
}

impl Cursor {
    pub(crate) fn encode(pk: &str, sk: &str) -> Self {
        let body = CursorBody {
            pk: pk.to_owned(),
            sk: sk.to_owned(),
        };
        // Serializing two strings cannot fail.
        let json = serde_json::to_vec(&body).unwrap_or_default();
        Cursor(URL_SAFE_NO_PAD.encode(json))
    }

    /// The sort key after which the next page starts, checked against `pk`.
    pub(crate) fn decode(&self, pk: &str) -> Result<String> {
        let invalid = || Error::invalid("cursor", "not a cursor issued by this service");
        let bytes = URL_SAFE_NO_PAD.decode(&self.0).map_err(|_| invalid())?;
        let body: CursorBody = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
        if body.pk != pk {
            return Err(Error::invalid("cursor", "issued for another partition key"));
        }
        Ok(body.sk)
    }

    /// The cursor as text, to hand to a client.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for Cursor {
    fn from(value: String) -> Self {
        Cursor(value)
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_is_bound_to_its_pk() {
        let cursor = Cursor::encode("TENANT#a", "ORDER#5");
        assert_eq!(cursor.decode("TENANT#a").unwrap(), "ORDER#5");
        assert!(cursor.decode("TENANT#b").is_err());
        assert!(Cursor::from("garbage!".to_owned()).decode("TENANT#a").is_err());
    }

    #[test]
    fn numbers_compare_by_value() {
        use serde_json::json;
        assert!(same_value(&json!(6), &json!(6.0)));
        assert!(same_value(&json!({"a": [1, 2.5]}), &json!({"a": [1.0, 2.5]})));
        assert!(!same_value(&json!(6), &json!(6.5)));
        assert!(!same_value(&json!(6), &json!("6")));
        assert!(same_value(&json!(u64::MAX), &json!(u64::MAX)));
        assert!(same_value(
            &json!({"a": 1, "b": {"c": 2}}),
            &json!({"b": {"c": 2.0}, "a": 1})
        ));
        assert!(!same_value(&json!({"a": 1, "b": 2}), &json!({"a": 1, "c": 2})));
        assert!(!same_value(&json!({"a": 1, "b": 2}), &json!({"a": 2, "b": 2})));
        assert!(!same_value(&json!({"a": 1}), &json!({"a": 1, "b": 2})));
        assert!(!same_value(&json!(-1), &json!(u64::MAX)));
    }

    #[test]
    fn sk_conditions() {
        assert!(SkCondition::BeginsWith("ORDER#".into()).matches("ORDER#1"));
        assert!(!SkCondition::BeginsWith("ORDER#".into()).matches("PRODUCT#1"));
        assert!(SkCondition::Between("B".into(), "D".into()).matches("D"));
        assert!(!SkCondition::Between("B".into(), "D".into()).matches("DA"));
        assert!(SkCondition::LessThan("B".into()).matches("A"));
        assert!(!SkCondition::GreaterThan("B".into()).matches("B"));
        assert!(SkCondition::GreaterOrEqual("B".into()).matches("B"));
    }
}
