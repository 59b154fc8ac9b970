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
/// 9.9999999999999999999999999999999999999E+125. The float nearest this
/// bound is written `1e126` and refused; the float just below it is stored.
pub const MAX_NUMBER_MAGNITUDE: f64 = 1e126;
/// The smallest non-zero magnitude DynamoDB stores: 1E-130 (the float
/// nearest it is written `1e-130` and stored; the float below it is refused).
pub const MIN_NUMBER_MAGNITUDE: f64 = 1e-130;

/// The decimal exponents DynamoDB stores (of `d.ddd…e{exponent}`): from
/// 1E-130 to 9.99…E+125.
const DECIMAL_EXPONENTS: std::ops::RangeInclusive<i32> = -130..=125;

/// DynamoDB's range, written out for error messages.
const RANGE: &str = "0, or a magnitude from 1e-130 to 9.9999999999999999999999999999999999999e125";

/// Rewrites every number of `value` in the form DynamoDB gives it back (a
/// float with no fraction that an integer type holds becomes that integer)
/// and fails with [`Error::InvalidInput`] on a number outside DynamoDB's
/// range, naming where it is (`attributes.items[2].price`).
pub(crate) fn normalize_numbers(value: &mut Value) -> Result<()> {
    if normalize_at(value).is_ok() {
        return Ok(());
    }
    // Only now is the place of the bad number worth writing out.
    Err(find_out_of_range(value, &mut String::from("attributes"))
        .unwrap_or_else(|| Error::invalid("attributes", "a number is out of range")))
}

/// A number out of range, found.
struct OutOfRange;

fn normalize_at(value: &mut Value) -> std::result::Result<(), OutOfRange> {
    match value {
        Value::Number(number) if number.is_f64() => {
            let float = number.as_f64().unwrap_or(f64::NAN);
            if !in_range(float) {
                return Err(OutOfRange);
            }
            if let Some(integer) = integral(number) {
                *number = integer.into();
            }
            Ok(())
        }
        Value::Array(items) => items.iter_mut().try_for_each(normalize_at),
        Value::Object(map) => map.values_mut().try_for_each(normalize_at),
        _ => Ok(()),
    }
}

fn find_out_of_range(value: &Value, path: &mut String) -> Option<Error> {
    match value {
        Value::Number(number) => {
            let float = number.as_f64().filter(|_| number.is_f64())?;
            (!in_range(float)).then(|| {
                Error::invalid(
                    path.as_str(),
                    // `{:e}`: short for every float (5e-324, not 324 digits).
                    format!("{float:e} is outside the range of a DynamoDB number ({RANGE})"),
                )
            })
        }
        Value::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
            let len = path.len();
            path.push_str(&format!("[{i}]"));
            let found = find_out_of_range(item, path);
            path.truncate(len);
            found
        }),
        Value::Object(map) => map.iter().find_map(|(key, item)| {
            let len = path.len();
            path.push('.');
            path.push_str(key);
            let found = find_out_of_range(item, path);
            path.truncate(len);
            found
        }),
        _ => None,
    }
}

/// Whether DynamoDB stores `float`, decided on the decimal it is sent as.
///
/// serde_json and serde_dynamo write a float as its shortest round-trip
/// decimal (at most 17 significant digits, well within DynamoDB's 38), so
/// the decimal exponent of that text decides: the float nearest 1e126 is
/// sent as `1e126` (one past DynamoDB's largest number) although it is a
/// little less than 10^126.
pub(crate) fn in_range(float: f64) -> bool {
    let magnitude = float.abs();
    if !float.is_finite() {
        return false;
    }
    if magnitude == 0.0 || (1e-129..1e125).contains(&magnitude) {
        // Zero, or so far inside the range that its decimal is too.
        return true;
    }
    DECIMAL_EXPONENTS.contains(&decimal_exponent(magnitude))
}

/// The exponent of the shortest decimal that reads back as `float`: the
/// digits `Display` (what serde_dynamo sends) and ryu (what serde_json
/// writes) produce, which `LowerExp` writes as `d.ddde{exponent}`.
fn decimal_exponent(float: f64) -> i32 {
    let text = format!("{float:e}");
    text.rsplit_once('e')
        .and_then(|(_, exponent)| exponent.parse().ok())
        .unwrap_or(0)
}

/// An integer a float normalizes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Integral {
    Unsigned(u64),
    Signed(i64),
}

impl From<Integral> for Number {
    fn from(integral: Integral) -> Self {
        match integral {
            Integral::Unsigned(n) => n.into(),
            Integral::Signed(n) => n.into(),
        }
    }
}

/// The integer DynamoDB gives a float back as: `None` for an integer, a
/// float with a fraction, or one no integer type holds.
pub(crate) fn integral(number: &Number) -> Option<Integral> {
    let float = number.as_f64().filter(|_| number.is_f64())?;
    if !float.is_finite() || float.fract() != 0.0 {
        return None;
    }
    // Below 2^53 every float with no fraction is an integer written the
    // same way; the shortest form of a larger one may differ from its
    // exact value (2^60 is written 1152921504606847000), and that decimal
    // is what DynamoDB keeps.
    const EXACT: f64 = (1u64 << 53) as f64;
    if float.abs() < EXACT {
        let integer = float as i64;
        return Some(match u64::try_from(integer) {
            Ok(unsigned) => Integral::Unsigned(unsigned),
            Err(_) => Integral::Signed(integer),
        });
    }
    let decimal = format!("{float}");
    decimal
        .parse::<u64>()
        .map(Integral::Unsigned)
        .or_else(|_| decimal.parse::<i64>().map(Integral::Signed))
        .ok()
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

    fn below(x: f64) -> f64 {
        f64::from_bits(x.to_bits() - 1)
    }

    /// The significant digits and exponent of a plain decimal text (what
    /// `Display` writes: `999…800…0`, `0.000…1`), by reading its digits.
    fn plain_decimal(text: &str) -> (String, i32) {
        let text = text.trim_start_matches('-');
        let (int, frac) = text.split_once('.').unwrap_or((text, ""));
        let all: String = format!("{int}{frac}");
        let leading = all.len() - all.trim_start_matches('0').len();
        let digits = all.trim_matches('0').to_owned();
        (digits, int.len() as i32 - 1 - leading as i32)
    }

    #[test]
    fn the_range_is_decided_on_the_text_dynamodb_receives() {
        let edges = [
            (1e126, false),
            (below(1e126), true),
            (1e-130, true),
            (below(1e-130), false),
            (f64::from_bits(1e-130f64.to_bits() + 1), true),
            (5e-324, false),
            (f64::MAX, false),
            (f64::MIN_POSITIVE, false),
            (1e125, true),
            // This text reads as the float nearest 1e126.
            ("9.999999999999999e125".parse().unwrap(), false),
        ];
        for (x, stored) in edges {
            for x in [x, -x] {
                assert_eq!(in_range(x), stored, "{x:e}");
                // The digits DynamoDB gets (Display, serde_dynamo's text) are
                // those the decision read (LowerExp).
                let (digits, exponent) = plain_decimal(&x.to_string());
                let exp = format!("{:e}", x.abs());
                let (mantissa, e) = exp.split_once('e').unwrap();
                assert_eq!(digits, mantissa.replace('.', ""), "{x:e}");
                assert_eq!(exponent, e.parse::<i32>().unwrap(), "{x:e}");
                // And serde_json writes and reads it back as the same float.
                let json = serde_json::to_string(&x).unwrap();
                assert_eq!(serde_json::from_str::<f64>(&json).unwrap(), x, "{json}");
            }
        }
    }

    #[test]
    fn an_out_of_range_number_has_a_short_message() {
        for x in [5e-324, 1e126, -f64::MAX] {
            let error = normalize_numbers(&mut json!({ "x": x })).unwrap_err();
            let message = error.to_string();
            assert!(message.len() < 200, "{message}");
            assert!(message.starts_with("invalid attributes.x: "), "{message}");
            assert!(message.contains(&format!("{x:e}")), "{message}");
        }
    }
}
