//! An entity's attributes, kept in the compact form they are stored in.

use std::cell::RefCell;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, OnceLock};

use serde::de::DeserializeOwned;
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The attributes of an entity: a JSON value, usually an object.
///
/// Stored rows share one compact, canonical JSON text (keys sorted, numbers
/// in the form DynamoDB gives back, no spaces) behind an [`Arc`]: the
/// command row, the data row, the history row and every item read from
/// them hold the same text, so copying a row never copies its attributes.
/// The parsed [`Value`] is built on first use and kept with the copy that
/// built it.
///
/// It reads like a [`Value`] (it dereferences to one) and changes like
/// one: the first change takes the parsed value for itself and drops the
/// shared text, which is written anew when the attributes are published.
///
/// ```
/// use cqrs_core::Attributes;
/// use serde_json::json;
///
/// let mut attributes = Attributes::from(json!({ "status": "new", "total": 6.0 }));
/// assert_eq!(attributes["status"], "new");
/// attributes["status"] = json!("paid");
/// // Canonical text: sorted keys, `6.0` as DynamoDB gives it back.
/// assert_eq!(attributes.json(), r#"{"status":"paid","total":6}"#);
/// assert_eq!(attributes, json!({ "total": 6, "status": "paid" }));
/// ```
pub struct Attributes {
    /// The canonical JSON text, shared with every copy.
    json: OnceLock<Arc<str>>,
    /// The parsed value, owned by this copy.
    value: OnceLock<Value>,
}

impl Attributes {
    /// An empty object.
    pub fn new() -> Self {
        Value::Object(Map::new()).into()
    }

    /// The attributes of any serializable value.
    pub fn from_serialize<T: Serialize + ?Sized>(value: &T) -> Result<Self> {
        serde_json::to_value(value)
            .map(Self::from)
            .map_err(|e| Error::invalid("attributes", e.to_string()))
    }

    /// The attributes of a canonical JSON text written by [`Attributes::json`].
    pub(crate) fn from_canonical(json: Arc<str>) -> Self {
        Self {
            json: OnceLock::from(json),
            value: OnceLock::new(),
        }
    }

    /// The parsed value.
    pub fn as_value(&self) -> &Value {
        self.value.get_or_init(|| match self.json.get() {
            // The text is always one this type wrote: it parses.
            Some(json) => serde_json::from_str(json).unwrap_or(Value::Null),
            None => Value::Null,
        })
    }

    /// The parsed value, owned.
    pub fn into_value(mut self) -> Value {
        self.as_value();
        self.value.take().unwrap_or(Value::Null)
    }

    /// The canonical JSON text: object keys sorted, numbers in the form
    /// DynamoDB gives back (`6.0` is `6`), no spaces. Equal attributes have
    /// equal texts.
    pub fn json(&self) -> &str {
        self.shared_json()
    }

    /// The canonical text, as shared by every copy.
    pub(crate) fn shared_json(&self) -> &Arc<str> {
        self.json.get_or_init(|| {
            let value = self.value.get().unwrap_or(&Value::Null);
            canonical_text(value)
        })
    }

    /// Deserializes the attributes into `T`.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T> {
        let parsed = match (self.value.get(), self.json.get()) {
            (Some(value), _) => T::deserialize(value).map_err(|e| e.to_string()),
            (None, Some(json)) => serde_json::from_str(json).map_err(|e| e.to_string()),
            (None, None) => T::deserialize(Value::Null).map_err(|e| e.to_string()),
        };
        parsed.map_err(|why| Error::invalid("attributes", why))
    }

    /// Brings the numbers of the parsed value to the form DynamoDB gives
    /// back and refuses those it cannot store (see `numbers`); then writes
    /// the canonical text. Done by every publish, before anything is stored.
    pub(crate) fn normalize(&mut self) -> Result<()> {
        if let Some(value) = self.value.get_mut() {
            if self.json.get().is_none() {
                crate::numbers::normalize_numbers(value)?;
            }
        }
        self.shared_json();
        Ok(())
    }

    /// Size of the canonical text, in bytes.
    pub(crate) fn json_len(&self) -> usize {
        self.shared_json().len()
    }
}

impl Default for Attributes {
    fn default() -> Self {
        Self::new()
    }
}

impl From<Value> for Attributes {
    fn from(value: Value) -> Self {
        Self {
            json: OnceLock::new(),
            value: OnceLock::from(value),
        }
    }
}

impl From<Attributes> for Value {
    fn from(attributes: Attributes) -> Self {
        attributes.into_value()
    }
}

impl Clone for Attributes {
    /// Shares the canonical text when there is one (a stored row's
    /// attributes always have it): no copy of the value.
    fn clone(&self) -> Self {
        match self.json.get() {
            Some(json) => Self::from_canonical(json.clone()),
            None => Self::from(self.as_value().clone()),
        }
    }
}

impl Deref for Attributes {
    type Target = Value;

    fn deref(&self) -> &Value {
        self.as_value()
    }
}

impl DerefMut for Attributes {
    /// Takes the parsed value for this copy and drops the canonical text,
    /// which no longer describes it.
    fn deref_mut(&mut self) -> &mut Value {
        self.as_value();
        self.json.take();
        self.value.get_or_init(|| Value::Null);
        self.value.get_mut().expect("initialized above")
    }
}

impl PartialEq for Attributes {
    /// Equal values: numbers compare by value, as DynamoDB keeps them.
    fn eq(&self, other: &Self) -> bool {
        match (self.json.get(), other.json.get()) {
            (Some(a), Some(b)) if Arc::ptr_eq(a, b) => true,
            _ => self.json() == other.json(),
        }
    }
}

impl PartialEq<Value> for Attributes {
    fn eq(&self, other: &Value) -> bool {
        crate::query::same_value(self.as_value(), other)
    }
}

impl PartialEq<Attributes> for Value {
    fn eq(&self, other: &Attributes) -> bool {
        other == self
    }
}

impl fmt::Debug for Attributes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.value.get() {
            Some(value) => fmt::Debug::fmt(value, f),
            None => f.write_str(self.json()),
        }
    }
}

impl fmt::Display for Attributes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.json())
    }
}

impl Serialize for Attributes {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        match (self.value.get(), self.json.get()) {
            (Some(value), _) => value.serialize(serializer),
            // Straight from the text to the serializer, without a tree.
            (None, Some(json)) => {
                let mut reader = serde_json::Deserializer::from_str(json);
                serde_transcode::transcode(&mut reader, serializer)
            }
            (None, None) => Value::Null.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Attributes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        Value::deserialize(deserializer).map(Self::from)
    }
}

thread_local! {
    /// The buffer canonical texts are written into before they are shared:
    /// one allocation per text, of its exact size.
    static BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The canonical JSON text of `value`.
fn canonical_text(value: &Value) -> Arc<str> {
    BUFFER.with(|buffer| {
        let mut buffer = match buffer.try_borrow_mut() {
            Ok(buffer) => buffer,
            // Re-entered (cannot happen: writing calls nothing of ours).
            Err(_) => return canonical_text_in(value, &mut Vec::new()),
        };
        buffer.clear();
        let text = canonical_text_in(value, &mut buffer);
        // A very large value should not keep its buffer alive.
        if buffer.capacity() > 64 * 1024 {
            *buffer = Vec::new();
        }
        text
    })
}

fn canonical_text_in(value: &Value, buffer: &mut Vec<u8>) -> Arc<str> {
    // Writing a `Value` into memory cannot fail, and serde_json writes UTF-8.
    let _ = serde_json::to_writer(&mut *buffer, &Canonical(value));
    Arc::from(std::str::from_utf8(buffer).unwrap_or("null"))
}

/// A value serialized in canonical form: object keys in order, numbers
/// normalized (a float with no fraction that an integer holds is written
/// as that integer, as DynamoDB gives it back).
struct Canonical<'a>(&'a Value);

impl Serialize for Canonical<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        match self.0 {
            Value::Number(number) => match crate::numbers::integral(number) {
                Some(integer) => integer.serialize(serializer),
                None => number.serialize(serializer),
            },
            Value::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&Canonical(item))?;
                }
                seq.end()
            }
            Value::Object(map) => {
                let mut out = serializer.serialize_map(Some(map.len()))?;
                // serde_json keeps maps sorted unless a crate of the build
                // enables its `preserve_order`: sort only then.
                let sorted = map.keys().zip(map.keys().skip(1)).all(|(a, b)| a < b);
                if sorted {
                    for (key, value) in map {
                        out.serialize_entry(key, &Canonical(value))?;
                    }
                } else {
                    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
                    for (key, value) in entries {
                        out.serialize_entry(key, &Canonical(value))?;
                    }
                }
                out.end()
            }
            other => other.serialize(serializer),
        }
    }
}

impl Serialize for crate::numbers::Integral {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        match *self {
            crate::numbers::Integral::Unsigned(n) => serializer.serialize_u64(n),
            crate::numbers::Integral::Signed(n) => serializer.serialize_i64(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn canonical_text_is_sorted_and_normalized() {
        let attributes = Attributes::from(json!({"b": [1.0, {"z": 2, "a": -3.0}], "a": 1.5, "c": null}));
        assert_eq!(attributes.json(), r#"{"a":1.5,"b":[1,{"a":-3,"z":2}],"c":null}"#);
    }

    #[test]
    fn copies_share_the_text_and_changes_drop_it() {
        let original = Attributes::from(json!({"status": "new"}));
        let text = original.shared_json().clone();
        let copy = original.clone();
        assert!(Arc::ptr_eq(copy.shared_json(), &text));
        assert_eq!(copy["status"], "new");
        let mut changed = copy.clone();
        changed["status"] = json!("paid");
        assert_eq!(changed.json(), r#"{"status":"paid"}"#);
        assert_eq!(copy.json(), r#"{"status":"new"}"#);
        assert_ne!(changed, copy);
    }

    #[test]
    fn equality_is_by_value() {
        let a = Attributes::from(json!({"x": 6.0, "y": [1]}));
        let b = Attributes::from(json!({"y": [1.0], "x": 6}));
        assert_eq!(a, b);
        assert_eq!(a, json!({"x": 6, "y": [1]}));
    }

    #[test]
    fn serializes_the_same_from_text_or_value() {
        let value = json!({"b": "two", "a": [1, 2.5, true, null], "n": {"k": "v"}});
        let from_value = serde_json::to_string(&Attributes::from(value.clone())).unwrap();
        let from_text = serde_json::to_string(&Attributes::from_canonical(
            Attributes::from(value).shared_json().clone(),
        ))
        .unwrap();
        assert_eq!(from_value, from_text);
    }

    #[test]
    fn deserializes_typed_from_either_form() {
        #[derive(Deserialize, PartialEq, Debug)]
        struct Stock {
            quantity: u32,
        }
        let from_value = Attributes::from(json!({"quantity": 3.0}));
        let mut normalized = from_value.clone();
        normalized.normalize().unwrap();
        let from_text = Attributes::from_canonical(normalized.shared_json().clone());
        assert_eq!(from_text.deserialize::<Stock>().unwrap(), Stock { quantity: 3 });
        assert_eq!(normalized.deserialize::<Stock>().unwrap(), Stock { quantity: 3 });
    }
}
