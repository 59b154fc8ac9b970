//! Table names: validated, since they are written into SQL text (SQL has no
//! parameters for identifiers).

use cqrs_core::Error;

/// PostgreSQL's identifier limit (longer names are silently truncated,
/// which would make two generations' tables one).
const MAX_IDENTIFIER_BYTES: usize = 63;

/// Checks that `table` is a plain identifier: an ASCII letter or `_`
/// first, then letters, digits and `_`. Anything else (quotes, spaces,
/// dots, `;`) is refused, so a name can never change the SQL it is put in.
pub(crate) fn validate(table: &str) -> Result<(), Error> {
    let mut chars = table.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(Error::invalid(
            "table",
            format!("{table:?} is not a plain SQL name (letters, digits and '_', not starting with a digit)"),
        ));
    }
    Ok(())
}

/// The physical table of `table` in `generation`: `table_g{generation}`.
pub(crate) fn generation_table(table: &str, generation: u64) -> Result<String, Error> {
    validate(table)?;
    let physical = format!("{table}_g{generation}");
    if physical.len() > MAX_IDENTIFIER_BYTES {
        return Err(Error::invalid(
            "table",
            format!(
                "{table:?} is too long: with its generation suffix ({physical}) it exceeds {MAX_IDENTIFIER_BYTES} bytes"
            ),
        ));
    }
    Ok(physical)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_get_their_generation_suffix() {
        assert_eq!(generation_table("sales_daily", 3).unwrap(), "sales_daily_g3");
        assert_eq!(generation_table("_t1", 12).unwrap(), "_t1_g12");
        assert_eq!(generation_table("Totals", 1).unwrap(), "Totals_g1");
    }

    #[test]
    fn anything_but_a_plain_name_is_refused() {
        for bad in [
            "",
            "1table",
            "sales daily",
            "sales-daily",
            "sales.daily",
            "\"sales\"",
            "t; DROP TABLE cqrs_projection_checkpoints; --",
            "t'",
            "tablé",
            "t\0",
        ] {
            let error = generation_table(bad, 1).unwrap_err();
            assert!(
                matches!(&error, Error::InvalidInput { what, .. } if what == "table"),
                "{bad:?}: {error}"
            );
        }
    }

    #[test]
    fn names_too_long_for_postgres_are_refused() {
        let longest = "t".repeat(MAX_IDENTIFIER_BYTES - "_g1".len());
        assert!(generation_table(&longest, 1).is_ok());
        assert!(generation_table(&longest, 10).is_err());
        assert!(generation_table(&format!("{longest}x"), 1).is_err());
    }
}
