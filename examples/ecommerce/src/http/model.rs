//! Request and response bodies of the API that are not the services' own.

use cqrs_core::{Attributes, CommandRecord, DataItem, Page, SmolStr, UnreadableRow};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::domain::{InventoryAttributes, OrderAttributes, OrderStatus, ProductAttributes};

/// An entity as the API returns it: the seed's six fields.
macro_rules! entity {
    ($(#[$meta:meta])* $name:ident, $attributes:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
        pub struct $name {
            /// Partition key: `TENANT#{tenant}`.
            #[schema(value_type = String)]
            pub pk: SmolStr,
            /// Sort key.
            #[schema(value_type = String)]
            pub sk: SmolStr,
            /// Business code.
            #[schema(value_type = String)]
            pub code: SmolStr,
            /// Display name.
            #[schema(value_type = String)]
            pub name: SmolStr,
            /// Version: 1 after creation, +1 per change. Send it back to
            /// update under an optimistic version check.
            pub version: u64,
            /// The entity's attributes.
            // The stored text, served as it is rather than as `$attributes`:
            // the services checked that it reads as one, and a passthrough
            // neither parses nor re-serializes it (nor drops a field another
            // program sharing the table added).
            #[schema(value_type = $attributes)]
            pub attributes: Attributes,
        }

        impl From<DataItem> for $name {
            fn from(item: DataItem) -> Self {
                Self {
                    pk: item.pk,
                    sk: item.sk,
                    code: item.code,
                    name: item.name,
                    version: item.version,
                    attributes: item.attributes,
                }
            }
        }

        impl From<CommandRecord> for $name {
            fn from(command: CommandRecord) -> Self {
                Self {
                    pk: command.pk,
                    sk: command.sk,
                    code: command.code,
                    name: command.name,
                    version: command.version,
                    attributes: command.attributes,
                }
            }
        }
    };
}

/// A stored row of the range that could not be read (written by another
/// program in a shape this one does not know): left out of `items`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Unreadable {
    /// Its partition key.
    pub pk: String,
    /// Its sort key.
    pub sk: String,
    /// Why it could not be read.
    pub reason: String,
}

impl From<UnreadableRow> for Unreadable {
    fn from(row: UnreadableRow) -> Self {
        Self {
            pk: row.pk,
            sk: row.sk,
            reason: row.reason,
        }
    }
}

/// A page of entities: `{"items": [...], "cursor": ...}`, and `unreadable`
/// when rows of the range could not be read.
macro_rules! page {
    ($(#[$meta:meta])* $name:ident, $item:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
        pub struct $name {
            /// The items of this page.
            pub items: Vec<$item>,
            /// Pass it as `cursor` to get the next page; `null` on the last page.
            pub cursor: Option<String>,
            /// Rows of this page's range that could not be read, by key
            /// (absent when there are none): one odd row does not fail the list.
            #[serde(default, skip_serializing_if = "Vec::is_empty")]
            pub unreadable: Vec<Unreadable>,
        }

        impl From<Page<DataItem>> for $name {
            fn from(page: Page<DataItem>) -> Self {
                Self {
                    items: page.items.into_iter().map($item::from).collect(),
                    cursor: page.cursor.map(|c| c.as_str().to_owned()),
                    unreadable: page.unreadable.into_iter().map(Unreadable::from).collect(),
                }
            }
        }
    };
}

entity!(
    /// An order.
    Order,
    OrderAttributes
);
entity!(
    /// A product of the catalogue.
    Product,
    ProductAttributes
);
entity!(
    /// The stock of a product.
    Inventory,
    InventoryAttributes
);
page!(
    /// A page of orders.
    OrderPage,
    Order
);
page!(
    /// A page of products.
    ProductPage,
    Product
);

/// `PATCH /orders/{code}/status`: the status to move to, and optionally the
/// version the client last saw (then checked: another version is a 409).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({ "status": "confirmed" }))]
pub struct StatusChange {
    /// The new status.
    pub status: OrderStatus,
    /// The order's current version, as last read.
    #[serde(default, deserialize_with = "crate::json_integer::option")]
    pub version: Option<u64>,
}

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: String,
}

/// Query of `GET /orders`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OrderListQuery {
    /// Only orders of this status.
    pub status: Option<OrderStatus>,
    /// Page size, 1 to 100 (default 20).
    pub limit: Option<usize>,
    /// The `cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Query of `GET /products`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ProductListQuery {
    /// Page size, 1 to 100 (default 20).
    pub limit: Option<usize>,
    /// The `cursor` of the previous page.
    pub cursor: Option<String>,
}

/// An empty cursor is no cursor (a client's `cursor=` on its first page).
pub(crate) fn cursor(cursor: Option<String>) -> Option<String> {
    cursor.filter(|c| !c.is_empty())
}

/// Query of `GET /reports/sales`.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SalesReportQuery {
    /// First UTC day of the report (`YYYY-MM-DD`), included.
    pub from: chrono::NaiveDate,
    /// Last UTC day of the report (`YYYY-MM-DD`), included: on or after
    /// `from`, at most 366 days from it (both included).
    pub to: chrono::NaiveDate,
}

/// Query of `GET /orders/search`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OrderSearchParams {
    /// Orders with a line of this product (its exact code, e.g. `PRD-001`).
    pub product: Option<String>,
    /// Only orders of this status.
    pub status: Option<OrderStatus>,
    /// Orders created on or after this UTC day (`YYYY-MM-DD`).
    pub from: Option<chrono::NaiveDate>,
    /// Orders created on or before this UTC day (`YYYY-MM-DD`); not before `from`.
    pub to: Option<chrono::NaiveDate>,
    /// Text the shipping address contains (street, city, postal code or
    /// country), matched in any case; `%` and `_` match themselves.
    pub q: Option<String>,
    /// Page size, 1 to 100 (default 20).
    pub limit: Option<usize>,
    /// The `cursor` of the previous page, as it was given.
    pub cursor: Option<String>,
}

impl From<OrderSearchParams> for crate::read_models::OrderSearchQuery {
    fn from(params: OrderSearchParams) -> Self {
        Self {
            product: params.product,
            status: params.status,
            from: params.from,
            to: params.to,
            text: params.q,
            limit: params.limit,
            cursor: cursor(params.cursor),
        }
    }
}
