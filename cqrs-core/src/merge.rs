//! Deep merge of attributes for partial updates (JSON merge patch, RFC 7386).

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::attributes::{write_canonical, Numbers};
use crate::canonical::{first_escaped, write_string};

/// Merges `patch` into `target`: objects merge key by key, recursively; any
/// other patch value replaces the target; `null` removes the key.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    if let Value::Object(target_map) = target {
        for (key, value) in patch_map {
            if value.is_null() {
                target_map.remove(key);
            } else {
                merge_patch(target_map.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// The canonical text of the object `text` (canonical itself) with the
/// top-level `fields` of a merge patch laid over: each field replaces,
/// adds, or (`null`) removes the field of its key, the others are copied
/// as they are. `None` — the caller then merges the parsed value — when a
/// merge needs more than that: `text` is not an object, a patch value is
/// an object (merged deeply), a number is outside DynamoDB's range (refused
/// with its place by the value's path), or a key has escapes (its text does
/// not sort as it reads).
pub(crate) fn merge_fields_into_text(text: &str, fields: &Map<String, Value>) -> Option<Arc<str>> {
    let text = text.as_bytes();
    if text.first() != Some(&b'{') {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() + 64);
    let mut numbers = Numbers::default();
    let mut patch = fields.iter().peekable();
    let mut pos = 1;
    let mut written = false;
    let mut separate = |out: &mut Vec<u8>| {
        if std::mem::replace(&mut written, true) {
            out.push(b',');
        }
    };
    out.push(b'{');
    loop {
        // The next field of the text: its key, and where it ends.
        let field = match text.get(pos)? {
            b'}' => None,
            b'"' => {
                let key_end = string_end(text, pos)?;
                let key = &text[pos + 1..key_end];
                if key.contains(&b'\\') {
                    return None;
                }
                Some((key, value_end(text, key_end + 2)?))
            }
            _ => return None,
        };
        // The patch's fields before it are added.
        while let Some((key, value)) = patch.next_if(|(key, _)| field.is_none_or(|(k, _)| key.as_bytes() < k))
        {
            if key.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') || value.is_object() {
                return None;
            }
            if !value.is_null() {
                separate(&mut out);
                write_field(key, value, &mut out, &mut numbers);
            }
        }
        let Some((key, end)) = field else {
            break;
        };
        match patch.next_if(|(k, _)| k.as_bytes() == key) {
            // The patch's value replaces this one, or removes it.
            Some((_, value)) => {
                if value.is_object() {
                    return None;
                }
                if !value.is_null() {
                    separate(&mut out);
                    write_field(std::str::from_utf8(key).ok()?, value, &mut out, &mut numbers);
                }
            }
            None => {
                separate(&mut out);
                out.extend_from_slice(&text[pos..end]);
            }
        }
        pos = match text.get(end)? {
            b',' => end + 1,
            _ => end,
        };
    }
    out.push(b'}');
    if numbers.out_of_range || pos + 1 != text.len() {
        return None;
    }
    Some(Arc::from(std::str::from_utf8(&out).ok()?))
}

fn write_field(key: &str, value: &Value, out: &mut Vec<u8>, numbers: &mut Numbers) {
    write_string(key, out);
    out.push(b':');
    write_canonical(value, out, numbers);
}

/// Where the string opened by the quote at `open` closes: its closing
/// quote. (A canonical text has no raw control character: the first byte
/// to escape in a string is its closing quote or an escape.)
fn string_end(text: &[u8], open: usize) -> Option<usize> {
    let mut at = open + 1;
    loop {
        at += first_escaped(text.get(at..)?)?;
        if text[at] == b'"' {
            return Some(at);
        }
        // An escape: the next byte is escaped (`\u` is followed by hex
        // digits alone).
        at += 2;
    }
}

/// Where the value starting at `start` ends: just past it.
fn value_end(text: &[u8], start: usize) -> Option<usize> {
    let mut depth = 0u32;
    let mut at = start;
    loop {
        match *text.get(at)? {
            b'"' => at = string_end(text, at)?,
            b'{' | b'[' => depth += 1,
            b'}' | b']' if depth == 0 => return Some(at),
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return Some(at + 1);
                }
            }
            b',' if depth == 0 => return Some(at),
            _ => {}
        }
        at += 1;
        if depth == 0 && text[at - 1] == b'"' {
            return Some(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    use crate::Attributes;

    /// What the text path makes of `patch` over `target`, and what the
    /// parsed value's merge makes of it; `None` for the first when the text
    /// path leaves it to the value.
    fn both(target: &Value, patch: &Value) -> (Option<String>, Option<String>) {
        let mut stored = Attributes::from(target.clone());
        let by_value = stored.normalize().ok().and_then(|()| {
            let mut merged = Attributes::from(stored.as_value().clone());
            merge_patch(&mut merged, patch);
            merged.normalize().ok().map(|()| merged.json().to_owned())
        });
        let by_text = match patch {
            Value::Object(fields) if by_value.is_some() => {
                merge_fields_into_text(stored.json(), fields).map(|text| text.to_string())
            }
            _ => None,
        };
        (by_text, by_value)
    }

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            (-1e6..1e6f64).prop_map(Value::from),
            Just(Value::from(6.0)),
            "[a-z\"\\\\\n é{}\\[\\],:]{0,6}".prop_map(Value::from),
        ]
    }

    fn value() -> impl Strategy<Value = Value> {
        leaf().prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::btree_map("[a-f]{1,2}|q\"|b\\\\", inner, 0..4)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    /// Keys, now and then one with escapes.
    fn key() -> impl Strategy<Value = String> {
        prop_oneof![20 => "[a-f]{1,2}", 1 => "q\"|b\\\\"]
    }

    fn object() -> impl Strategy<Value = Value> {
        proptest::collection::btree_map(key(), value(), 0..6)
            .prop_map(|map| Value::Object(map.into_iter().collect()))
    }

    /// Patches: mostly top-level fields, now and then a nested object or a
    /// number DynamoDB refuses.
    fn patch() -> impl Strategy<Value = Value> {
        let field = prop_oneof![12 => leaf(), 2 => value(), 1 => Just(Value::from(1e200))];
        proptest::collection::btree_map(key(), field, 0..4)
            .prop_map(|map| Value::Object(map.into_iter().collect()))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3_000))]

        #[test]
        fn a_patch_spliced_into_the_text_is_the_merge_of_the_values(target in object(), patch in patch()) {
            let (by_text, by_value) = both(&target, &patch);
            spliced(by_text.is_some());
            if let Some(by_text) = by_text {
                prop_assert_eq!(Some(by_text), by_value);
            }
        }
    }

    /// Counts the patches spliced and not: most must be, for the property
    /// to be about the text path.
    fn spliced(yes: bool) {
        use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
        static COUNTS: [AtomicU32; 2] = [AtomicU32::new(0), AtomicU32::new(0)];
        COUNTS[usize::from(yes)].fetch_add(1, Relaxed);
        let (no, yes) = (COUNTS[0].load(Relaxed), COUNTS[1].load(Relaxed));
        if no + yes >= 1_000 {
            assert!(yes * 3 > no, "{yes} spliced, {no} not");
        }
    }

    #[test]
    fn top_level_changes_are_spliced() {
        let target = json!({"a": {"x": [1, "}"]}, "m": "q\"}", "s": "new", "z": 1.5});
        let patch = json!({"s": "paid", "b": 6.0, "m": null, "zz": [1, {"k": null}]});
        let (by_text, by_value) = both(&target, &patch);
        assert!(by_text.is_some(), "spliced");
        assert_eq!(by_text, by_value);
        assert_eq!(
            by_text.unwrap(),
            r#"{"a":{"x":[1,"}"]},"b":6,"s":"paid","z":1.5,"zz":[1,{"k":null}]}"#
        );
        // A nested object is merged deeply, by the value.
        assert_eq!(both(&target, &json!({"a": {"y": 1}})).0, None);
    }

    #[test]
    fn merges_nested_objects_and_removes_nulls() {
        let mut target = json!({"a": 1, "b": {"c": 2, "d": 3}, "e": [1, 2], "f": "x"});
        merge_patch(
            &mut target,
            &json!({"b": {"c": 20, "g": 4}, "e": [3], "f": null, "h": {"i": 1}}),
        );
        assert_eq!(
            target,
            json!({"a": 1, "b": {"c": 20, "d": 3, "g": 4}, "e": [3], "h": {"i": 1}})
        );
    }

    #[test]
    fn rfc7386_examples() {
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "b"}), json!({"b": "c"}), json!({"a": "b", "b": "c"})),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (json!({"a": [{"b": "c"}]}), json!({"a": [1]}), json!({"a": [1]})),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a": "foo"}), json!("bar"), json!("bar")),
            (json!({"e": null}), json!({"a": 1}), json!({"e": null, "a": 1})),
            (json!([1, 2]), json!({"a": "b", "c": null}), json!({"a": "b"})),
        ];
        for (mut target, patch, expected) in cases {
            merge_patch(&mut target, &patch);
            assert_eq!(target, expected, "patch {patch}");
        }
    }
}
