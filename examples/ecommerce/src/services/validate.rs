//! Checks of client input shared by the services.

use crate::error::{ShopError, ShopResult};

/// A code that becomes part of a key (`PRD-001`, `ORD-000001`).
pub(crate) fn code(what: &str, code: &str) -> ShopResult<()> {
    let ok = !code.is_empty()
        && code.len() <= 64
        && code
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ShopError::InvalidInput(format!(
            "{what} '{code}' must be 1 to 64 letters, digits, '-' or '_'"
        )))
    }
}

/// A required text field: not blank, at most 1024 bytes, no control
/// characters.
pub(crate) fn text(what: &str, value: &str) -> ShopResult<()> {
    if value.trim().is_empty() {
        return Err(ShopError::InvalidInput(format!("{what} must not be empty")));
    }
    optional_text(what, value, 1024)
}

/// A text field that may be empty: at most `max` bytes, no control
/// characters (no newlines, tabs, escapes or NULs either: they would reach
/// logs, mails and other systems as they are).
pub(crate) fn optional_text(what: &str, value: &str, max: usize) -> ShopResult<()> {
    if value.len() > max {
        return Err(ShopError::InvalidInput(format!(
            "{what} is longer than {max} bytes"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(ShopError::InvalidInput(format!(
            "{what} must not hold control characters"
        )));
    }
    Ok(())
}

/// The smallest page size a listing accepts.
pub const MIN_PAGE_SIZE: usize = 1;
/// The largest page size a listing accepts.
pub const MAX_PAGE_SIZE: usize = 100;
/// The page size of a listing that asks for none.
pub const DEFAULT_PAGE_SIZE: usize = 20;

/// A page size.
pub(crate) fn limit(limit: Option<usize>) -> ShopResult<usize> {
    match limit.unwrap_or(DEFAULT_PAGE_SIZE) {
        l if (MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&l) => Ok(l),
        l => Err(ShopError::InvalidInput(format!(
            "limit must be {MIN_PAGE_SIZE} to {MAX_PAGE_SIZE}, got {l}"
        ))),
    }
}
