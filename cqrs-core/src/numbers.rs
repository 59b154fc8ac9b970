//! Numbers as DynamoDB keeps them, for every backend.
//!
//! DynamoDB stores a number as a decimal and gives back its shortest form:
//! `6.0` comes back as `6`, `1e2` as `100`. The engine applies the same rule
//! to the attributes of every command before anything stores them or hands
//! them to a handler, so that on every backend the item a publish returns,
//! the item read back later and both images a handler sees are equal. It
//! also refuses, on every backend, the numbers DynamoDB cannot store.

use serde_json::{Number, Value};

use crate::error::{Error, Result};

/// The bound of the magnitudes DynamoDB stores, excluded: its largest is
/// 9.9999999999999999999999999999999999999E+125.
pub const MAX_NUMBER_MAGNITUDE: f64 = 1e126;
/// The smallest non-zero magnitude DynamoDB stores: 1E-130.
pub const MIN_NUMBER_MAGNITUDE: f64 = 1e-130;

/// Rewrites every number of `value` in the form DynamoDB gives it back (a
/// float with no fraction that an integer type holds becomes that integer)
/// and fails with [`Error::InvalidInput`] on a number outside DynamoDB's
/// range, naming where it is (`attributes.items[2].price`).
pub(crate) fn normalize_numbers(value: &mut Value) -> Result<()> {
    normalize_at(value, &mut String::from("attributes"))
}

fn normalize_at(value: &mut Value, path: &mut String) -> Result<()> {
    match value {
        Value::Number(number) => {
            if let Some(normal) = normalized(number, path)? {
                *number = normal;
            }
            Ok(())
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                normalize_at(item, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                let len = path.len();
                path.push('.');
                path.push_str(key);
                normalize_at(item, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The normal form of a float, `None` when it already is (integers are).
fn normalized(number: &Number, path: &str) -> Result<Option<Number>> {
    let Some(float) = number.as_f64().filter(|_| number.is_f64()) else {
        return Ok(None);
    };
    let magnitude = float.abs();
    if !float.is_finite()
        || (magnitude != 0.0 && !(MIN_NUMBER_MAGNITUDE..=MAX_NUMBER_MAGNITUDE).contains(&magnitude))
    {
        return Err(Error::invalid(
            path,
            format!(
                "{float} is outside the range a number can have (0, or a magnitude from {MIN_NUMBER_MAGNITUDE:e} to below {MAX_NUMBER_MAGNITUDE:e})"
            ),
        ));
    }
    if float.fract() != 0.0 {
        return Ok(None);
    }
    // The decimal DynamoDB keeps is the float's shortest form written out
    // (`1e19` is 10000000000000000000); it reads back as an integer when
    // an integer type holds it, and as a float otherwise.
    let decimal = format!("{float}");
    let integer = decimal
        .parse::<u64>()
        .map(Number::from)
        .or_else(|_| decimal.parse::<i64>().map(Number::from));
    Ok(integer.ok())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn floats_without_a_fraction_become_integers() {
        let mut value = json!({
            "tax": 6.0, "neg": -2.0, "zero": -0.0, "frac": 1.5, "int": 7,
            "big": 1e19, "huge": 1e20, "nested": [1.0, {"x": 3.0}]
        });
        normalize_numbers(&mut value).unwrap();
        assert_eq!(
            value,
            json!({
                "tax": 6, "neg": -2, "zero": 0, "frac": 1.5, "int": 7,
                "big": 10_000_000_000_000_000_000u64, "huge": 1e20, "nested": [1, {"x": 3}]
            })
        );
        assert!(value["tax"].is_u64() && value["neg"].is_i64() && value["huge"].is_f64());
    }

    #[test]
    fn numbers_outside_the_range_are_refused_with_their_place() {
        for bad in [json!({"a": [1, {"b": 1e200}]}), json!({"a": [1, {"b": -1e-200}]})] {
            let mut value = bad;
            match normalize_numbers(&mut value) {
                Err(Error::InvalidInput { what, why }) => {
                    assert_eq!(what, "attributes.a[1].b");
                    assert!(why.contains("range"), "{why}");
                }
                other => panic!("{other:?}"),
            }
        }
        let mut edge = json!([9.99e125, -1e-130, 0.0]);
        assert!(normalize_numbers(&mut edge).is_ok());
    }
}
