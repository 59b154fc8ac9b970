//! Reads a JSON integer as JSON Schema counts one: a number without a
//! fractional part, so `2.0` is the integer `2`. A client whose JSON library
//! writes every number with a point (or in exponent form: `1e3`) sends valid
//! integers, and the document's `type: integer` must not refuse them.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, Visitor};

/// The largest magnitude of a float read as an integer: 2^126, well inside
/// `i128`, and far above every bound the API states.
const MAX_FLOAT: f64 = 85_070_591_730_234_615_865_843_651_857_942_052_864.0;

struct Integer<T>(PhantomData<T>);

impl<T: TryFrom<i128>> Integer<T> {
    fn fit<E: de::Error>(value: i128) -> Result<T, E> {
        T::try_from(value).map_err(|_| E::custom(format!("integer {value} out of range")))
    }
}

impl<T: TryFrom<i128>> Visitor<'_> for Integer<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an integer")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        Self::fit(i128::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        Self::fit(i128::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        if v.is_finite() && v.fract() == 0.0 && v.abs() <= MAX_FLOAT {
            // Exact: an integral float of this size converts without loss.
            Self::fit(v as i128)
        } else {
            Err(E::invalid_type(de::Unexpected::Float(v), &self))
        }
    }
}

/// `#[serde(deserialize_with = "crate::json_integer::deserialize")]`.
pub fn deserialize<'de, D: Deserializer<'de>, T: TryFrom<i128>>(d: D) -> Result<T, D::Error> {
    d.deserialize_any(Integer(PhantomData))
}

/// The same for an optional field (`null` or absent: `None`); use with
/// `#[serde(default)]`.
pub fn option<'de, D: Deserializer<'de>, T: TryFrom<i128>>(d: D) -> Result<Option<T>, D::Error> {
    struct Optional<T>(PhantomData<T>);

    impl<'de, T: TryFrom<i128>> Visitor<'de> for Optional<T> {
        type Value = Option<T>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an integer or null")
        }

        fn visit_none<E: de::Error>(self) -> Result<Option<T>, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Option<T>, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<T>, D::Error> {
            deserialize(d).map(Some)
        }
    }

    d.deserialize_option(Optional(PhantomData))
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    struct Body {
        #[serde(deserialize_with = "super::deserialize")]
        quantity: u32,
        #[serde(default, deserialize_with = "super::option")]
        version: Option<u64>,
    }

    fn read(json: &str) -> Result<Body, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn integral_numbers_are_integers_however_written() {
        for (json, quantity) in [
            (r#"{"quantity": 2}"#, 2),
            (r#"{"quantity": 2.0}"#, 2),
            (r#"{"quantity": 1e3}"#, 1000),
            (r#"{"quantity": -0.0}"#, 0),
        ] {
            assert_eq!(read(json).unwrap().quantity, quantity, "{json}");
        }
        assert_eq!(
            read(r#"{"quantity": 1, "version": 7.0}"#).unwrap().version,
            Some(7)
        );
        assert_eq!(read(r#"{"quantity": 1, "version": null}"#).unwrap().version, None);
        assert_eq!(read(r#"{"quantity": 1}"#).unwrap().version, None);
    }

    #[test]
    fn fractions_other_types_and_out_of_range_are_refused() {
        for json in [
            r#"{"quantity": 2.5}"#,
            r#"{"quantity": -1}"#,
            r#"{"quantity": 4294967296}"#,
            r#"{"quantity": 1e300}"#,
            r#"{"quantity": "2"}"#,
            r#"{"quantity": null}"#,
            r#"{"quantity": 1, "version": -1}"#,
            r#"{"quantity": 1, "version": 0.5}"#,
        ] {
            assert!(read(json).is_err(), "{json}");
        }
    }
}
