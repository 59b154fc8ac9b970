//! The rules on client input, each stated once: the services check a value
//! with a rule, and the API document states the same rule on the fields it
//! covers (`http::bounds`), so the two cannot disagree.
//!
//! A text rule is a length in characters and a pattern. The patterns use
//! only what the regular expressions of JSON Schema (ECMA-262), Rust and
//! Python read alike: anchors and character ranges written as `\xNN`, no
//! `\s` or `\d` (whose meaning differs between them).

use std::sync::OnceLock;

use regex::Regex;

use crate::error::{ShopError, ShopResult};

/// What a text field must be: `min_chars..=max_chars` characters (Unicode
/// scalar values, as JSON Schema counts them) matching `pattern`.
#[derive(Debug)]
pub struct TextRule {
    /// Fewest characters.
    pub min_chars: usize,
    /// Most characters.
    pub max_chars: usize,
    /// The pattern the whole value matches (anchored).
    pub pattern: &'static str,
    /// The rule in words, for error messages and the document.
    pub meaning: &'static str,
    compiled: OnceLock<Regex>,
}

impl TextRule {
    const fn new(min_chars: usize, max_chars: usize, pattern: &'static str, meaning: &'static str) -> Self {
        Self {
            min_chars,
            max_chars,
            pattern,
            meaning,
            compiled: OnceLock::new(),
        }
    }

    /// Whether `value` keeps the rule.
    pub fn allows(&self, value: &str) -> bool {
        let chars = value.chars().count();
        let regex = self
            .compiled
            .get_or_init(|| Regex::new(self.pattern).expect("the rules' patterns compile"));
        (self.min_chars..=self.max_chars).contains(&chars) && regex.is_match(value)
    }

    /// `Ok` when `value`, the field `what`, keeps the rule; else the
    /// refusal, naming the field and the rule.
    pub fn check(&self, what: &str, value: &str) -> ShopResult<()> {
        if self.allows(value) {
            Ok(())
        } else {
            Err(ShopError::InvalidInput(format!(
                "{what} must be {}",
                self.meaning
            )))
        }
    }
}

/// Characters that are not control characters (Unicode's `Cc`: U+0000 to
/// U+001F and U+007F to U+009F). Newlines, tabs, escapes and NULs would
/// reach logs, mails and other systems as they are.
macro_rules! printable {
    () => {
        r"[^\x00-\x1f\x7f-\x9f]"
    };
}

/// Printable characters other than the space.
macro_rules! visible {
    () => {
        r"[^\x00-\x20\x7f-\x9f]"
    };
}

/// A code that becomes part of a key (`PRD-001`, `ORD-000001`).
pub static CODE: TextRule = TextRule::new(1, 64, r"^[A-Za-z0-9_-]+$", "1 to 64 letters, digits, '-' or '_'");

/// A required text field (a name, a city, a customer id).
pub static TEXT: TextRule = TextRule::new(
    1,
    1024,
    concat!("^", printable!(), "*", visible!(), printable!(), "*$"),
    "1 to 1024 characters, not only spaces, without control characters",
);

/// A text that may be empty (a product's description).
pub static LONG_TEXT: TextRule = TextRule::new(
    0,
    4096,
    concat!("^", printable!(), "*$"),
    "at most 4096 characters, without control characters",
);

/// A text searched for (`GET /orders/search`'s `product` and `q`).
pub static SEARCH_TEXT: TextRule = TextRule::new(
    1,
    100,
    concat!("^", printable!(), "*", visible!(), printable!(), "*$"),
    "1 to 100 characters, not only spaces, without control characters",
);

/// An `Idempotency-Key` header, as the framework checks it
/// ([`cqrs_core::IdempotencyKey`]): visible ASCII, no spaces.
pub static IDEMPOTENCY_KEY: TextRule = TextRule::new(
    1,
    cqrs_core::MAX_IDEMPOTENCY_KEY_BYTES,
    r"^[\x21-\x7e]+$",
    "1 to 255 characters of visible ASCII, without spaces",
);

/// A code that becomes part of a key.
pub(crate) fn code(what: &str, code: &str) -> ShopResult<()> {
    CODE.check(what, code)
}

/// A required text field.
pub(crate) fn text(what: &str, value: &str) -> ShopResult<()> {
    TEXT.check(what, value)
}

/// The smallest page size a listing accepts.
pub const MIN_PAGE_SIZE: usize = 1;
/// The largest page size a listing accepts.
pub const MAX_PAGE_SIZE: usize = 100;
/// The page size of a listing that asks for none.
pub const DEFAULT_PAGE_SIZE: usize = 20;

/// The largest version a client may send: 2^53 - 1, the largest integer
/// every JSON reader (JavaScript's numbers too) holds exactly. An entity
/// gets there after 9 × 10^15 changes.
pub const MAX_VERSION: u64 = (1 << 53) - 1;

/// A page size.
pub(crate) fn limit(limit: Option<usize>) -> ShopResult<usize> {
    match limit.unwrap_or(DEFAULT_PAGE_SIZE) {
        l if (MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&l) => Ok(l),
        l => Err(ShopError::InvalidInput(format!(
            "limit must be {MIN_PAGE_SIZE} to {MAX_PAGE_SIZE}, got {l}"
        ))),
    }
}

/// A version a client sent.
pub(crate) fn version(version: Option<u64>) -> ShopResult<Option<u64>> {
    match version {
        Some(v) if v > MAX_VERSION => Err(ShopError::InvalidInput(format!(
            "version must be 0 to {MAX_VERSION}, got {v}"
        ))),
        v => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        for ok in ["PRD-001", "a", "A_b-9", &"x".repeat(64)] {
            assert!(CODE.allows(ok), "{ok:?}");
        }
        for bad in ["", "PRD 001", "PRD/1", "é", "PRD-001\n", &"x".repeat(65)] {
            assert!(!CODE.allows(bad), "{bad:?}");
        }
    }

    #[test]
    fn texts_are_not_blank_and_hold_no_control_characters() {
        for ok in ["Tokyo", " a ", "東京", "a\u{a0}b", &"é".repeat(1024)] {
            assert!(TEXT.allows(ok), "{ok:?}");
        }
        for bad in [
            "",
            " ",
            "   ",
            "a\nb",
            "a\tb",
            "\u{7f}",
            "a\u{85}",
            "abc\n",
            &"é".repeat(1025),
        ] {
            assert!(!TEXT.allows(bad), "{bad:?}");
        }
        assert!(LONG_TEXT.allows(""));
        assert!(LONG_TEXT.allows("  "));
        assert!(!LONG_TEXT.allows("line\nbreak"));
        assert!(!LONG_TEXT.allows(&"a".repeat(4097)));
    }

    /// Lengths are characters, as JSON Schema's `maxLength` counts them,
    /// not bytes.
    #[test]
    fn lengths_count_characters() {
        let four_bytes_each = "𝄞".repeat(100);
        assert_eq!(four_bytes_each.len(), 400);
        assert!(SEARCH_TEXT.allows(&four_bytes_each));
        assert!(!SEARCH_TEXT.allows(&format!("{four_bytes_each}a")));
    }

    /// The document's rule for the header is the framework's check.
    #[test]
    fn the_idempotency_key_rule_is_the_frameworks() {
        for key in [
            "k",
            "a-b_c.9~!",
            "with space",
            "",
            "é",
            "tab\tkey",
            &"k".repeat(255),
            &"k".repeat(256),
        ] {
            assert_eq!(
                IDEMPOTENCY_KEY.allows(key),
                cqrs_core::IdempotencyKey::new(key).validate().is_ok(),
                "{key:?}"
            );
        }
    }

    #[test]
    fn the_error_names_the_field_and_the_rule() {
        let error = TEXT.check("shippingAddress.city", " ").unwrap_err();
        assert_eq!(
            error.to_string(),
            "shippingAddress.city must be 1 to 1024 characters, not only spaces, without control characters"
        );
    }
}
