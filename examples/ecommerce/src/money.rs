//! Money: exact decimals, the tax rule, and JSON numbers.

use rust_decimal::{Decimal, RoundingStrategy};

/// The tax rate: 10 %.
pub const TAX_RATE: Decimal = Decimal::from_parts(10, 0, 0, false, 2);

/// Rounds to cents, half away from zero (half-up for prices).
pub fn to_cents(amount: Decimal) -> Decimal {
    amount.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
}

/// Subtotal, tax and total of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// Sum of price × quantity.
    pub subtotal: Decimal,
    /// 10 % of the subtotal, rounded half-up to cents.
    pub tax: Decimal,
    /// Subtotal plus tax.
    pub total: Decimal,
}

/// The totals of `(price, quantity)` lines.
pub fn totals(lines: impl IntoIterator<Item = (Decimal, u32)>) -> Totals {
    let subtotal = to_cents(
        lines
            .into_iter()
            .map(|(price, quantity)| price * Decimal::from(quantity))
            .sum(),
    );
    let tax = to_cents(subtotal * TAX_RATE);
    Totals {
        subtotal,
        tax,
        total: subtotal + tax,
    }
}

/// Money as a JSON number (`29.99`), exact both ways: a number is read
/// through its shortest decimal form, never through binary arithmetic.
pub mod json {
    use std::str::FromStr;

    use rust_decimal::prelude::ToPrimitive;
    use rust_decimal::Decimal;
    use serde::{de, Deserialize, Deserializer, Serializer};

    /// Writes the amount as a JSON number.
    pub fn serialize<S: Serializer>(amount: &Decimal, s: S) -> Result<S::Ok, S::Error> {
        match amount.to_f64() {
            Some(value) => s.serialize_f64(value),
            None => Err(serde::ser::Error::custom("amount out of range")),
        }
    }

    /// Reads a JSON number as an exact amount.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
        let value = f64::deserialize(d)?;
        if !value.is_finite() {
            return Err(de::Error::custom("amount must be a finite number"));
        }
        // f64's Display is the shortest text that reads back to the same
        // number: 29.99 stays 29.99.
        Decimal::from_str(&value.to_string()).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn the_seed_order_totals() {
        let t = totals([(d("29.99"), 2)]);
        assert_eq!((t.subtotal, t.tax, t.total), (d("59.98"), d("6.00"), d("65.98")));
    }

    #[test]
    fn tax_rounds_half_up() {
        // 0.05 subtotal → 0.005 tax → 0.01
        assert_eq!(totals([(d("0.05"), 1)]).tax, d("0.01"));
        assert_eq!(totals([(d("0.04"), 1)]).tax, d("0.00"));
        assert_eq!(totals([(d("10.15"), 1)]).tax, d("1.02"));
    }

    #[test]
    fn json_numbers_round_trip_exactly() {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct P {
            #[serde(with = "json")]
            price: Decimal,
        }
        for text in ["29.99", "0.1", "65.98", "1234567.89", "6.5"] {
            let p: P = serde_json::from_str(&format!("{{\"price\": {text}}}")).unwrap();
            assert_eq!(p.price, d(text));
            let back: serde_json::Value = serde_json::to_value(&p).unwrap();
            assert_eq!(back["price"].to_string(), text.to_string());
        }
        assert!(serde_json::from_str::<P>(r#"{"price": "29.99"}"#).is_err());
    }
}
