//! Rows read as the storefront's types.
//!
//! The tables may hold rows another program wrote (the reference framework
//! shares them): an entity it deleted (`isDeleted`), or one whose
//! attributes are not an order or a product at all. Such rows are never
//! served as orders or products: a deleted one is missing, and one that
//! does not read as its type is reported by its key — in a list, among the
//! page's `unreadable` rows; read alone, as an error naming it.

use cqrs_core::{DataItem, Filter, Page, UnreadableRow};
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
/// its `unreadable` rows.
pub(crate) fn page<T: DeserializeOwned>(page: Page<DataItem>, what: &str) -> Page<DataItem> {
    let Page {
        items,
        cursor,
        mut unreadable,
    } = page;
    let mut readable = Vec::with_capacity(items.len());
    for item in items {
        match item.attributes_as::<T>() {
            Ok(_) => readable.push(item),
            Err(error) => {
                tracing::warn!(pk = %item.pk, sk = %item.sk, %error, "a row that is not a {what} left out of a page");
                unreadable.push(UnreadableRow {
                    pk: item.pk.to_string(),
                    sk: item.sk.to_string(),
                    reason: format!("not a {what}: {error}"),
                });
            }
        }
    }
    Page {
        items: readable,
        cursor,
        unreadable,
    }
}
