//! An entity's attributes, kept in the compact form they are stored in.

use std::cell::RefCell;
use std::fmt;
use std::ops::{Deref, DerefMut, Index, IndexMut};
use std::sync::{Arc, OnceLock};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Number, Value};
use smol_str::SmolStr;

use crate::canonical::write_string;
use crate::error::{Error, Result};
use crate::numbers::Integral;

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
/// A change made by indexing a top-level field (`attributes["status"] =
/// …`, `attributes["items"][0]["quantity"] = …`) is remembered: the
/// publish then writes only the fields so changed and copies the others
/// from the text they were read with.
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
    /// The numbers were checked against DynamoDB's range and the value
    /// brought to normal form (see [`Attributes::normalize`]): set by a
    /// publish and for stored rows, cleared by a change.
    normalized: bool,
    /// Where the top-level fields of the last normalized text are, and
    /// which of them were changed since: kept by the copy a publish
    /// normalized (never by stored rows), so that the next publish of it
    /// writes the changed fields only.
    patch: Option<Box<Patch>>,
}

/// The top-level fields of a canonical object text, and the changes made
/// to them by indexing since it was written.
#[derive(Debug, Default)]
struct Patch {
    /// The text the offsets describe, once a change has dropped it from
    /// [`Attributes::json`].
    stale: Option<Arc<str>>,
    /// The byte offset just past each top-level field of the text.
    ends: Vec<u32>,
    /// Room for the offsets of the next text, kept to save an allocation.
    next_ends: Vec<u32>,
    /// The top-level keys changed since, each with whether the text has it.
    touched: Vec<(SmolStr, bool)>,
}

impl Attributes {
    /// An empty object.
    pub fn new() -> Self {
        Value::Object(Map::new()).into()
    }

    /// The attributes of any serializable value.
    ///
    /// The value is written straight into the canonical text, without a
    /// [`Value`] tree: the text is the one the `Value` of the same content
    /// has, byte for byte. Numbers outside DynamoDB's range are refused
    /// when the attributes are published, naming the field.
    ///
    /// ```
    /// use cqrs_core::Attributes;
    ///
    /// #[derive(serde::Serialize)]
    /// #[serde(rename_all = "camelCase")]
    /// struct Product { price: f64, code: String, stock_level: u32 }
    ///
    /// let attributes = Attributes::from_serialize(&Product { price: 30.0, code: "PRD-1".into(), stock_level: 4 })?;
    /// assert_eq!(attributes.json(), r#"{"code":"PRD-1","price":30,"stockLevel":4}"#);
    /// # Ok::<(), cqrs_core::Error>(())
    /// ```
    pub fn from_serialize<T: Serialize + ?Sized>(value: &T) -> Result<Self> {
        if let Ok(json) = crate::canonical::to_canonical(value) {
            return Ok(Self {
                json: OnceLock::from(json),
                value: OnceLock::new(),
                normalized: true,
                patch: None,
            });
        }
        // What the direct writer leaves (errors, raw values, float keys):
        // through a `Value`, whose errors name what is wrong.
        serde_json::to_value(value)
            .map(Self::from)
            .map_err(|e| Error::invalid("attributes", e.to_string()))
    }

    /// The attributes of a canonical JSON text written by [`Attributes::json`].
    pub(crate) fn from_canonical(json: Arc<str>) -> Self {
        Self {
            json: OnceLock::from(json),
            value: OnceLock::new(),
            normalized: true,
            patch: None,
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
            canonical_text(value, None).0
        })
    }

    /// Deserializes the attributes into `T`: straight from the text when
    /// they have not been parsed, without building a [`Value`].
    pub fn deserialize_into<T: DeserializeOwned>(&self) -> Result<T> {
        let parsed = match (self.value.get(), self.json.get()) {
            (Some(value), _) => T::deserialize(value).map_err(|e| e.to_string()),
            (None, Some(json)) => serde_json::from_str(json).map_err(|e| e.to_string()),
            (None, None) => T::deserialize(Value::Null).map_err(|e| e.to_string()),
        };
        parsed.map_err(|why| Error::invalid("attributes", why))
    }

    /// The parsed value, for this copy to change: the shared text no
    /// longer describes it.
    fn value_to_change(&mut self) -> &mut Value {
        self.as_value();
        let text = self.json.take();
        // The text the patch describes is the one a publish wrote, not one
        // written for a reader since the first change.
        if let Some(patch) = self.patch.as_deref_mut().filter(|p| p.stale.is_none()) {
            patch.stale = text;
        }
        self.normalized = false;
        self.value.get_or_init(|| Value::Null);
        self.value.get_mut().expect("initialized above")
    }

    /// Notes that the top-level field `key` is about to change.
    fn touch(&mut self, key: &str) {
        let Some(patch) = self.patch.as_deref_mut() else {
            return;
        };
        if patch.touched.iter().any(|(touched, _)| touched == key) {
            return;
        }
        let present = self
            .value
            .get()
            .and_then(Value::as_object)
            .is_some_and(|map| map.contains_key(key));
        patch.touched.push((SmolStr::new(key), present));
    }

    /// Brings the numbers of the parsed value to the form DynamoDB gives
    /// back and refuses those it cannot store (see `numbers`); then writes
    /// the canonical text. Done by every publish, before anything is stored.
    pub(crate) fn normalize(&mut self) -> Result<()> {
        if self.normalized {
            return Ok(());
        }
        self.as_value();
        let Some(value) = self.value.get_mut() else {
            return Ok(());
        };
        // One walk writes the text and notices the numbers to look at; the
        // value is walked again only when there are some (seldom).
        let patch = self.patch.get_or_insert_with(Box::default);
        let (text, numbers) = canonical_text(value, Some(patch));
        if numbers.out_of_range || numbers.integral_floats {
            crate::numbers::normalize_numbers(value)?;
        }
        if patch.ends.is_empty() {
            // Not an object: nothing to patch next time.
            self.patch = None;
        }
        self.json = OnceLock::from(text);
        self.normalized = true;
        Ok(())
    }
}

impl Attributes {
    /// Deep-merges `patch` over the attributes (JSON merge patch, see
    /// [`merge_patch`](crate::merge_patch)). A patch of top-level fields
    /// over a stored text (a status change, say) is spliced into the text,
    /// the other fields copied as they are, without parsing it; any other
    /// merge goes through the parsed value.
    pub(crate) fn merge_patch(&mut self, patch: &Value) {
        if let (true, Some(text), Value::Object(fields)) = (self.normalized, self.json.get(), patch) {
            if let Some(merged) = crate::merge::merge_fields_into_text(text, fields) {
                *self = Self::from_canonical(merged);
                return;
            }
        }
        crate::merge::merge_patch(self, patch);
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
            normalized: false,
            patch: None,
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
            Some(json) => Self {
                json: OnceLock::from(json.clone()),
                value: OnceLock::new(),
                normalized: self.normalized,
                patch: None,
            },
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
        // Any part may change: the whole text is written again.
        self.patch = None;
        self.value_to_change()
    }
}

impl Index<&str> for Attributes {
    type Output = Value;

    /// The field `key`, or `null`, as [`Value`] indexes.
    fn index(&self, key: &str) -> &Value {
        &self.as_value()[key]
    }
}

impl IndexMut<&str> for Attributes {
    /// The field `key` to change, inserted as `null` if absent, as
    /// [`Value`] indexes (which panics when the value is not an object).
    /// Only this field is written again by the next publish.
    fn index_mut(&mut self, key: &str) -> &mut Value {
        self.touch(key);
        &mut self.value_to_change()[key]
    }
}

impl Index<&String> for Attributes {
    type Output = Value;

    fn index(&self, key: &String) -> &Value {
        &self[key.as_str()]
    }
}

impl IndexMut<&String> for Attributes {
    fn index_mut(&mut self, key: &String) -> &mut Value {
        &mut self[key.as_str()]
    }
}

impl Index<usize> for Attributes {
    type Output = Value;

    /// The element `index` of an array, or `null`, as [`Value`] indexes.
    fn index(&self, index: usize) -> &Value {
        &self.as_value()[index]
    }
}

impl IndexMut<usize> for Attributes {
    fn index_mut(&mut self, index: usize) -> &mut Value {
        &mut (**self)[index]
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

impl Attributes {
    /// Deserializes attributes a row may lack: `null` reads as empty, as an
    /// absent field does (with `#[serde(default)]`). The reference framework
    /// stores commands without attributes.
    pub(crate) fn deserialize_or_empty<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        match Value::deserialize(deserializer)? {
            Value::Null => Ok(Self::new()),
            value => Ok(Self::from(value)),
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

/// Numbers a canonical text was written from that its value does not
/// hold in normal form.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Numbers {
    /// Floats with no fraction, written as integers.
    pub(crate) integral_floats: bool,
    /// Numbers outside DynamoDB's range.
    pub(crate) out_of_range: bool,
}

/// The canonical JSON text of `value`: written whole, or — when `patch`
/// holds the text `value` was read with and the top-level fields changed
/// since — with the other fields copied from that text. `patch` is left
/// describing the new text.
fn canonical_text(value: &Value, patch: Option<&mut Patch>) -> (Arc<str>, Numbers) {
    BUFFER.with(|buffer| {
        let mut buffer = match buffer.try_borrow_mut() {
            Ok(buffer) => buffer,
            // Re-entered (cannot happen: writing calls nothing of ours).
            Err(_) => return canonical_text_in(value, patch, &mut Vec::new()),
        };
        buffer.clear();
        let text = canonical_text_in(value, patch, &mut buffer);
        // A very large value should not keep its buffer alive.
        if buffer.capacity() > 64 * 1024 {
            *buffer = Vec::new();
        }
        text
    })
}

fn canonical_text_in(value: &Value, patch: Option<&mut Patch>, buffer: &mut Vec<u8>) -> (Arc<str>, Numbers) {
    let mut numbers = Numbers::default();
    match patch {
        None => write_canonical(value, buffer, &mut numbers),
        Some(patch) => {
            let patched = match (value, patch.stale.take()) {
                (Value::Object(map), Some(stale)) => write_patched(map, &stale, patch, buffer, &mut numbers),
                _ => false,
            };
            if !patched {
                buffer.clear();
                numbers = Numbers::default();
                patch.ends.clear();
                match value {
                    Value::Object(map) if maps_are_sorted() => {
                        write_object(map, buffer, &mut numbers, &mut patch.ends);
                    }
                    _ => write_canonical(value, buffer, &mut numbers),
                }
            }
            patch.touched.clear();
            if u32::try_from(buffer.len()).is_err() {
                patch.ends.clear();
            }
        }
    }
    // Only whole UTF-8 strings and ASCII are written.
    (Arc::from(std::str::from_utf8(buffer).unwrap_or("null")), numbers)
}

/// Writes a top-level object, noting in `ends` where each field ends.
fn write_object(map: &Map<String, Value>, out: &mut Vec<u8>, numbers: &mut Numbers, ends: &mut Vec<u32>) {
    out.push(b'{');
    for (i, (key, value)) in map.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(key, out);
        out.push(b':');
        write_canonical(value, out, numbers);
        ends.push(out.len() as u32);
    }
    out.push(b'}');
}

/// Whether `field` (`"key":value`) is the field of `key`.
fn is_field_of(field: &[u8], key: &str) -> bool {
    let key = key.as_bytes();
    field.get(1..=key.len()) == Some(key) && field.get(key.len() + 1..key.len() + 3) == Some(b"\":")
}

/// Writes `map` as [`write_object`] would, copying the fields not in
/// `patch.touched` from `stale`, the text `map` was read with, whose fields
/// end at `patch.ends`; leaves in `patch.ends` those of the new text. False
/// when `stale` does not match (the text is then to be written whole).
fn write_patched(
    map: &Map<String, Value>,
    stale: &str,
    patch: &mut Patch,
    out: &mut Vec<u8>,
    numbers: &mut Numbers,
) -> bool {
    if !maps_are_sorted() {
        return false;
    }
    let stale = stale.as_bytes();
    let old_ends = std::mem::take(&mut patch.ends);
    let mut ends = std::mem::take(&mut patch.next_ends);
    ends.clear();
    // The stale field `next` starts at `start`.
    let (mut next, mut start) = (0, 1);
    out.push(b'{');
    for (i, (key, value)) in map.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let touched = patch.touched.iter().find(|(touched, _)| touched == key);
        if touched.is_none_or(|(_, present)| *present) {
            let Some(end) = old_ends.get(next).map(|&end| end as usize) else {
                return false;
            };
            if touched.is_none() {
                // The stale field is this key's (a key that needs escapes
                // does not match: the text is then written whole).
                let Some(field) = stale.get(start..end).filter(|f| is_field_of(f, key)) else {
                    return false;
                };
                out.extend_from_slice(field);
            }
            (next, start) = (next + 1, end + 1);
        }
        if touched.is_some() {
            write_string(key, out);
            out.push(b':');
            write_canonical(value, out, numbers);
        }
        ends.push(out.len() as u32);
    }
    out.push(b'}');
    // Every stale field accounted for, and the text as long as told.
    let whole = next == old_ends.len() && start == stale.len();
    patch.ends = ends;
    patch.next_ends = old_ends;
    whole
}

/// Writes `value` in canonical form: object keys in order, numbers
/// normalized (a float with no fraction that an integer holds is written
/// as that integer, as DynamoDB gives it back), strings escaped as
/// serde_json escapes them, no spaces.
///
/// Written by hand rather than through serde: it runs on every publish, and
/// a plain walk that copies unescaped runs of a string whole is several
/// times faster than a serializer visiting every byte.
pub(crate) fn write_canonical(value: &Value, out: &mut Vec<u8>, numbers: &mut Numbers) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(number) => write_number(number, out, numbers),
        Value::String(text) => write_string(text, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out, numbers);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            out.push(b'{');
            if maps_are_sorted() {
                write_entries(map.iter(), out, numbers);
            } else {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
                write_entries(entries.into_iter(), out, numbers);
            }
            out.push(b'}');
        }
    }
}

fn write_entries<'a>(
    entries: impl Iterator<Item = (&'a String, &'a Value)>,
    out: &mut Vec<u8>,
    numbers: &mut Numbers,
) {
    for (i, (key, value)) in entries.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(key, out);
        out.push(b':');
        write_canonical(value, out, numbers);
    }
}

fn write_number(number: &Number, out: &mut Vec<u8>, numbers: &mut Numbers) {
    let mut digits = itoa::Buffer::new();
    if let Some(n) = number.as_u64() {
        out.extend_from_slice(digits.format(n).as_bytes());
    } else if let Some(n) = number.as_i64() {
        out.extend_from_slice(digits.format(n).as_bytes());
    } else {
        let float = number.as_f64().unwrap_or(f64::NAN);
        numbers.out_of_range |= !crate::numbers::in_range(float);
        let integral = crate::numbers::integral(number);
        numbers.integral_floats |= integral.is_some();
        match integral {
            Some(Integral::Unsigned(n)) => out.extend_from_slice(digits.format(n).as_bytes()),
            Some(Integral::Signed(n)) => out.extend_from_slice(digits.format(n).as_bytes()),
            // Floats as serde_json writes them (shortest round trip).
            None => {
                let _ = serde_json::to_writer(&mut *out, number);
            }
        }
    }
}

/// Whether serde_json's maps keep their keys in order (they do unless a
/// crate of the build turns on its `preserve_order`). Checked once, by
/// behaviour.
fn maps_are_sorted() -> bool {
    static SORTED: OnceLock<bool> = OnceLock::new();
    *SORTED.get_or_init(|| {
        let mut map = Map::new();
        map.insert("b".into(), Value::Null);
        map.insert("a".into(), Value::Null);
        map.keys().next().is_some_and(|k| k == "a")
    })
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
    fn the_text_is_what_serde_json_writes_of_the_normalized_value() {
        let escapes: String = (0u8..0x80).map(char::from).chain("é😀\u{2028}".chars()).collect();
        let mut value = json!({
            "z": [escapes.clone(), {"b": 1, "a": [true, false, null]}],
            escapes.clone(): -7,
            "floats": [0.1, -2.5e-7, 1e120, 6.0, -0.0, 1e19, u64::MAX, i64::MIN],
            "": {}
        });
        let text = Attributes::from(value.clone()).json().to_owned();
        crate::numbers::normalize_numbers(&mut value).unwrap();
        assert_eq!(text, serde_json::to_string(&value).unwrap());
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), value);
    }

    #[test]
    fn escapes_are_found_wherever_they_are() {
        for special in ['"', '\\', '\n', '\u{1}', '\u{1f}', 'é', ' ', '~', '\u{7f}'] {
            for at in 0..20 {
                let text: String = (0..24).map(|i| if i == at { special } else { 'a' }).collect();
                let attributes = Attributes::from(Value::String(text.clone()));
                assert_eq!(
                    attributes.json(),
                    serde_json::to_string(&text).unwrap(),
                    "{special:?} at {at}"
                );
            }
        }
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
    fn a_text_written_before_the_publish_does_not_skip_its_checks() {
        let mut attributes = Attributes::from(json!({"huge": 1e200, "six": 6.0}));
        assert_eq!(attributes.json(), r#"{"huge":1e+200,"six":6}"#);
        let mut copy = attributes.clone();
        assert!(matches!(attributes.normalize(), Err(Error::InvalidInput { .. })));
        assert!(matches!(copy.normalize(), Err(Error::InvalidInput { .. })));
        let mut fine = Attributes::from(json!({"six": 6.0}));
        fine.json();
        fine.normalize().unwrap();
        assert!(fine["six"].is_u64(), "the parsed value is normalized too");
    }

    /// The text a publish writes of `attributes`, and the one written
    /// whole from a fresh copy of its value: they must be the same.
    fn patched_and_whole(attributes: &mut Attributes) -> (String, String) {
        attributes.normalize().unwrap();
        let whole = Attributes::from(attributes.as_value().clone()).json().to_owned();
        (attributes.json().to_owned(), whole)
    }

    #[test]
    fn a_publish_writes_only_the_fields_changed_by_indexing() {
        let mut attributes = Attributes::from(json!({
            "b": {"n": [1, 2]}, "d": "four", "f": 6.5, "\u{1}esc": 1, "h": [true]
        }));
        attributes.normalize().unwrap();
        attributes["d"] = json!("changed");
        assert!(
            attributes.patch.as_ref().is_some_and(|p| p.stale.is_some()),
            "the publish will patch"
        );
        attributes["b"]["n"][0] = json!(7.0);
        attributes["a"] = json!("inserted first");
        attributes["e"] = json!({"inserted": "between"});
        attributes["z"] = json!(null);
        let (patched, whole) = patched_and_whole(&mut attributes);
        assert_eq!(patched, whole);
        assert!(
            patched.contains(r#""n":[7,2]"#),
            "touched numbers are normalized: {patched}"
        );
        assert!(attributes["b"]["n"][0].is_u64(), "and so is the parsed value");
        // And again, from the text just written.
        attributes["h"][0] = json!(false);
        attributes["\u{1}esc"] = json!(2);
        let (patched, whole) = patched_and_whole(&mut attributes);
        assert_eq!(patched, whole);
    }

    #[test]
    fn patched_texts_match_whole_ones_whatever_the_changes() {
        let mut rng = fastrand::Rng::with_seed(13);
        let keys = ["a", "b", "c", "d", "e", "f", "g", "h", "quote\"d"];
        let leaf = |rng: &mut fastrand::Rng| match rng.u8(0..5) {
            0 => json!(rng.i64(-1000..1000)),
            1 => json!(f64::from(rng.i32(-100..100)) / 4.0),
            2 => json!("x".repeat(rng.usize(0..12))),
            3 => json!([rng.bool(), {"k": rng.u8(..)}]),
            _ => Value::Null,
        };
        for round in 0..300 {
            let mut attributes = Attributes::from(json!({"m": 1}));
            for step in 0..12 {
                let key = keys[rng.usize(..keys.len())];
                match rng.u8(0..10) {
                    0 => {
                        // A change through DerefMut: written whole next time.
                        attributes.as_object_mut().unwrap().remove(key);
                    }
                    1 => {
                        // A reader asks for the text between changes.
                        attributes.json();
                    }
                    2 => {
                        // A copy starts without the patch.
                        attributes = attributes.clone();
                    }
                    3 if attributes.get(key).is_some_and(Value::is_array) => {
                        attributes[key][0] = leaf(&mut rng);
                    }
                    _ => attributes[key] = leaf(&mut rng),
                }
                if rng.bool() {
                    let (patched, whole) = patched_and_whole(&mut attributes);
                    assert_eq!(patched, whole, "round {round}, step {step}");
                }
            }
        }
    }

    #[test]
    fn a_touched_number_out_of_range_is_refused_and_the_next_text_is_whole() {
        let mut attributes = Attributes::from(json!({"a": 1, "b": 2}));
        attributes.normalize().unwrap();
        attributes["b"] = json!(1e200);
        assert!(matches!(attributes.normalize(), Err(Error::InvalidInput { .. })));
        attributes["b"] = json!(3);
        let (patched, whole) = patched_and_whole(&mut attributes);
        assert_eq!(patched, whole);
        assert_eq!(patched, r#"{"a":1,"b":3}"#);
    }

    #[test]
    fn a_stale_text_that_does_not_match_is_not_copied() {
        let mut attributes = Attributes::from(json!({"a": 1, "b": 2}));
        attributes.normalize().unwrap();
        attributes["b"] = json!(5);
        // Offsets that do not describe the stale text: written whole.
        if let Some(patch) = attributes.patch.as_deref_mut() {
            patch.ends = vec![3, 5];
        }
        let (patched, whole) = patched_and_whole(&mut attributes);
        assert_eq!(patched, whole);
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
        assert_eq!(
            from_text.deserialize_into::<Stock>().unwrap(),
            Stock { quantity: 3 }
        );
        assert_eq!(
            normalized.deserialize_into::<Stock>().unwrap(),
            Stock { quantity: 3 }
        );
    }
}
