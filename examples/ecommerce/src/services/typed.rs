//! Rows read as the storefront's types.
//!
//! The tables may hold rows another program wrote (the reference framework
//! shares them): an entity it deleted (`isDeleted`), or one whose
//! attributes are not an order or a product at all. Such rows are never
//! served as orders or products: a deleted one is missing, and one that
//! does not read as its type is reported by its key — in a list, among the
//! page's `unreadable` rows; read alone, as an error naming it.

use cqrs_core::{DataItem, Filter, Page};
use serde::de::DeserializeOwned;

use crate::error::{ShopError, ShopResult};

/// The filter of a listing that leaves out deleted rows.
pub(crate) fn not_deleted() -> Filter {
    Filter::eq("isDeleted", false)
}

/// `item`'s attributes as `T`, or the error naming the row (`what`: "order",
/// "product").
pub(crate) fn attributes<T: DeserializeOwned>(item: &DataItem, what: &str) -> ShopResult<T> {
    item.attributes_as().map_err(|e| ShopError::Unreadable {
        what: what.to_owned(),
        pk: item.pk.to_string(),
        sk: item.sk.to_string(),
        reason: e.to_string(),
    })
}

/// `item`, once its attributes are checked to read as `T`.
pub(crate) fn checked<T: DeserializeOwned>(item: DataItem, what: &str) -> ShopResult<DataItem> {
    attributes::<T>(&item, what)?;
    Ok(item)
}

/// The page with the items whose attributes do not read as `T` moved to
/// its `unreadable` rows ([`Page::typed`]); the items served as they are
/// stored.
pub(crate) fn page<T: DeserializeOwned>(page: Page<DataItem>) -> Page<DataItem> {
    let typed = page.typed::<T>();
    Page {
        items: typed.items.into_iter().map(|typed| typed.item).collect(),
        cursor: typed.cursor,
        unreadable: typed.unreadable,
    }
}
