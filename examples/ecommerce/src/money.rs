//! Money: exact decimals, the tax rule, and JSON numbers.

use rust_decimal::{Decimal, RoundingStrategy};

/// The tax rate: 10 %.
pub const TAX_RATE: Decimal = Decimal::from_parts(10, 0, 0, false, 2);

/// Rounds to cents, half away from zero (half-up for prices).
pub fn to_cents(amount: Decimal) -> Decimal {
    amount.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
}

/// The highest unit price of a product: 1,000,000.00.
pub const MAX_PRICE: Decimal = Decimal::from_parts(100_000_000, 0, 0, false, 2);

/// Decimal places a price may have (cents).
pub const PRICE_SCALE: u32 = 2;

/// Money out of bounds: a typed error, answered 400 `invalid_input`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// A price that is not above 0, above [`MAX_PRICE`], or finer than cents.
    #[error(
        "price {0} must be above 0 and at most {MAX_PRICE}, in cents (at most {PRICE_SCALE} decimal places)"
    )]
    InvalidPrice(Decimal),
    /// A sum or product of amounts that does not fit a decimal.
    #[error("the amounts of the order are too large to add up")]
    Overflow,
}

/// Checks a unit price: `0 < price <= MAX_PRICE`, at most two decimal places.
pub fn check_price(price: Decimal) -> Result<Decimal, MoneyError> {
    if price > Decimal::ZERO && price <= MAX_PRICE && price.normalize().scale() <= PRICE_SCALE {
        Ok(price)
    } else {
        Err(MoneyError::InvalidPrice(price))
    }
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

/// The totals of `(price, quantity)` lines, with checked arithmetic: amounts
/// that do not fit a decimal are [`MoneyError::Overflow`], never a panic.
pub fn totals(lines: impl IntoIterator<Item = (Decimal, u32)>) -> Result<Totals, MoneyError> {
    let mut sum = Decimal::ZERO;
    for (price, quantity) in lines {
        let line = price
            .checked_mul(Decimal::from(quantity))
            .ok_or(MoneyError::Overflow)?;
        sum = sum.checked_add(line).ok_or(MoneyError::Overflow)?;
    }
    let subtotal = to_cents(sum);
    let tax = to_cents(subtotal.checked_mul(TAX_RATE).ok_or(MoneyError::Overflow)?);
    let total = subtotal.checked_add(tax).ok_or(MoneyError::Overflow)?;
    Ok(Totals { subtotal, tax, total })
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
        let t = totals([(d("29.99"), 2)]).unwrap();
        assert_eq!((t.subtotal, t.tax, t.total), (d("59.98"), d("6.00"), d("65.98")));
    }

    #[test]
    fn tax_rounds_half_up() {
        // 0.05 subtotal → 0.005 tax → 0.01
        assert_eq!(totals([(d("0.05"), 1)]).unwrap().tax, d("0.01"));
        assert_eq!(totals([(d("0.04"), 1)]).unwrap().tax, d("0.00"));
        assert_eq!(totals([(d("10.15"), 1)]).unwrap().tax, d("1.02"));
    }

    #[test]
    fn totals_that_do_not_fit_are_an_error_not_a_panic() {
        let huge = d("79000000000000000000000000000");
        assert_eq!(totals([(huge, 2)]), Err(MoneyError::Overflow));
        assert_eq!(totals([(huge, 1), (huge, 1)]), Err(MoneyError::Overflow));
        // The tax of a subtotal near the top does not fit either.
        assert_eq!(totals([(huge, 1)]), Err(MoneyError::Overflow));
        assert_eq!(totals([(Decimal::MAX, u32::MAX)]), Err(MoneyError::Overflow));
        // The bounded worst case adds up.
        assert!(totals(std::iter::repeat_n((MAX_PRICE, 10_000), 100)).is_ok());
    }

    #[test]
    fn prices_are_bounded() {
        for ok in ["0.01", "29.99", "1000000", "1000000.00", "5.10"] {
            assert_eq!(check_price(d(ok)), Ok(d(ok)), "{ok}");
        }
        for bad in [
            "0",
            "-1",
            "1000000.01",
            "79000000000000000000000000000",
            "1.001",
            "0.001",
        ] {
            assert!(check_price(d(bad)).is_err(), "{bad}");
        }
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
