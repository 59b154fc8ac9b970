//! Where a projection's items live in its read-model table.
//!
//! | what | `pk` | `sk` | attributes |
//! |---|---|---|---|
//! | read-model item | `{projection}#g{generation}#{pk}` | `{sk}` | the projection's |
//! | checkpoint | `CHECKPOINT#{projection}#g{generation}#{entity pk}` | `{entity sk}` | `version` (N) |
//! | bookkeeping | `PROJECTION#{projection}` | `generations` or `rebuild` | `body` (S), `revision` (N) |
//!
//! A projection's name may not contain `#` (so that one projection's
//! prefix is never another's) and may not be `CHECKPOINT` or `PROJECTION`.

use cqrs_core::projection::MetaDoc;
use cqrs_core::{EntityKey, Error, Result};

use crate::item::{key, Item};

/// The partition key prefix of a generation's read-model items.
pub(crate) fn items_prefix(projection: &str, generation: u64) -> String {
    format!("{projection}#g{generation}#")
}

/// The partition key prefix of a generation's checkpoints.
pub(crate) fn checkpoints_prefix(projection: &str, generation: u64) -> String {
    format!("CHECKPOINT#{projection}#g{generation}#")
}

/// The key of a read-model item.
pub(crate) fn item_key(projection: &str, generation: u64, pk: &str, sk: &str) -> Item {
    key(&format!("{}{pk}", items_prefix(projection, generation)), sk)
}

/// The key of an entity's checkpoint.
pub(crate) fn checkpoint_key(projection: &str, generation: u64, entity: &EntityKey) -> Item {
    key(
        &format!("{}{}", checkpoints_prefix(projection, generation), entity.pk),
        &entity.sk,
    )
}

/// The key of a bookkeeping document.
pub(crate) fn doc_key(projection: &str, doc: MetaDoc) -> Item {
    key(&format!("PROJECTION#{projection}"), doc.as_str())
}

/// A projection name the layout can hold.
pub(crate) fn check_name(projection: &str) -> Result<()> {
    if projection.is_empty() || projection.contains('#') || ["CHECKPOINT", "PROJECTION"].contains(&projection)
    {
        return Err(Error::invalid(
            "projection name",
            format!(
                "'{projection}': a DynamoDB projection's name is not empty, has no '#' and is not \
                 CHECKPOINT or PROJECTION"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::item::s;

    #[test]
    fn generations_and_projections_never_share_a_prefix() {
        assert_eq!(
            item_key("sales", 1, "DAY#2026-12-05", "total")["pk"],
            s("sales#g1#DAY#2026-12-05")
        );
        // Generation 1's prefix is not generation 10's.
        assert!(!items_prefix("sales", 10).starts_with(&items_prefix("sales", 1)));
        assert_eq!(
            checkpoint_key("sales", 2, &EntityKey::new("TENANT#a", "ORDER#1"))["pk"],
            s("CHECKPOINT#sales#g2#TENANT#a")
        );
        assert!(check_name("sales").is_ok());
        for bad in ["", "a#g1", "CHECKPOINT", "PROJECTION"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
