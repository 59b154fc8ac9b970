//! Order search: one row per order, searchable by product, status, day
//! and address, paged newest first.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use cqrs_core::projection::{Change, Projection};
use cqrs_core::{BoxError, Interest};
use cqrs_sql::sqlx::Any;
use cqrs_sql::SqlTx;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::sales_report::{cents, day_text};
use crate::domain::{OrderAttributes, OrderStatus};
use crate::error::{ShopError, ShopResult};
use crate::money;
use crate::services::validate;

/// The search table (readers query this view of the live generation).
pub const SEARCH_TABLE: &str = "order_search";

/// The projection's name: it keys its checkpoints and generations.
pub const SEARCH_PROJECTION: &str = "order-search";

/// The order search table: upserted on every change of an order, its row
/// deleted when the order is.
#[derive(Debug, Clone, Copy, Default)]
pub struct OrderSearch;

/// A row of the search table, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SearchRow {
    pub(crate) code: String,
    pub(crate) user_id: String,
    pub(crate) customer_id: String,
    pub(crate) status: &'static str,
    pub(crate) created_at: String,
    pub(crate) day: String,
    pub(crate) total_cents: i64,
    pub(crate) products: String,
    pub(crate) address: String,
}

/// A time as stored: RFC 3339 in UTC with microseconds, always 27
/// characters, so that text order is time order.
pub(crate) fn time_text(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The products of an order as stored: `,PRD-001,PRD-002,` (sorted, each
/// once), so that `,PRD-001,` within it finds exactly that product.
pub(crate) fn products_text(order: &OrderAttributes) -> String {
    let mut codes: Vec<&str> = order.items.iter().map(|i| i.product_code.as_str()).collect();
    codes.sort_unstable();
    codes.dedup();
    format!(",{},", codes.join(","))
}

/// The searchable address: street, city, postal code and country, lower case.
pub(crate) fn address_text(order: &OrderAttributes) -> String {
    let a = &order.shipping_address;
    [&a.street, &a.city, &a.postal_code, &a.country]
        .map(|part| part.trim())
        .join(" ")
        .to_lowercase()
}

impl SearchRow {
    pub(crate) fn of(
        code: &str,
        order: &OrderAttributes,
        created_at: DateTime<Utc>,
    ) -> Result<Self, BoxError> {
        Ok(SearchRow {
            code: code.to_owned(),
            user_id: order.user_id.clone(),
            customer_id: order.customer_id.clone(),
            status: order.status.as_str(),
            created_at: time_text(created_at),
            day: day_text(created_at.date_naive()),
            total_cents: cents(order.total)?,
            products: products_text(order),
            address: address_text(order),
        })
    }
}

#[async_trait]
impl Projection<SqlTx<Any>> for OrderSearch {
    type State = OrderAttributes;

    fn name(&self) -> &str {
        SEARCH_PROJECTION
    }

    fn interest(&self) -> Interest {
        Interest::SkPrefix("ORDER#".into())
    }

    fn tables(&self) -> Vec<String> {
        vec![SEARCH_TABLE.to_owned()]
    }

    async fn create(&self, tx: &mut SqlTx<Any>) -> Result<(), BoxError> {
        let table = tx.table(SEARCH_TABLE)?;
        // Index names are per database (schema): one per generation.
        for statement in [
            format!(
                "CREATE TABLE IF NOT EXISTS {table} (\
                   tenant TEXT NOT NULL, code TEXT NOT NULL, user_id TEXT NOT NULL, \
                   customer_id TEXT NOT NULL, status TEXT NOT NULL, created_at TEXT NOT NULL, \
                   day TEXT NOT NULL, total_cents BIGINT NOT NULL, products TEXT NOT NULL, \
                   address TEXT NOT NULL, PRIMARY KEY (tenant, code))"
            ),
            format!("CREATE INDEX IF NOT EXISTS {table}_by_time ON {table} (tenant, created_at, code)"),
        ] {
            cqrs_sql::sqlx::query(&statement).execute(tx.conn()).await?;
        }
        Ok(())
    }

    async fn apply(&self, tx: &mut SqlTx<Any>, change: &Change<OrderAttributes>) -> Result<(), BoxError> {
        let table = tx.table(SEARCH_TABLE)?;
        let tenant = change.tenant().to_owned();
        let code = change.new.item.code.to_string();
        let Some(order) = change.new_state() else {
            cqrs_sql::sqlx::query(&format!("DELETE FROM {table} WHERE tenant = $1 AND code = $2"))
                .bind(tenant)
                .bind(code)
                .execute(tx.conn())
                .await?;
            return Ok(());
        };
        let row = SearchRow::of(&code, order, change.new.item.created_at)?;
        cqrs_sql::sqlx::query(&format!(
            "INSERT INTO {table} (tenant, code, user_id, customer_id, status, created_at, day, \
               total_cents, products, address) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (tenant, code) DO UPDATE SET user_id = excluded.user_id, \
               customer_id = excluded.customer_id, status = excluded.status, \
               created_at = excluded.created_at, day = excluded.day, \
               total_cents = excluded.total_cents, products = excluded.products, \
               address = excluded.address"
        ))
        .bind(tenant)
        .bind(row.code)
        .bind(row.user_id)
        .bind(row.customer_id)
        .bind(row.status)
        .bind(row.created_at)
        .bind(row.day)
        .bind(row.total_cents)
        .bind(row.products)
        .bind(row.address)
        .execute(tx.conn())
        .await?;
        Ok(())
    }
}

/// What to search for; every field narrows the search.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderSearchQuery {
    /// Orders with a line of this product (exact code).
    pub product: Option<String>,
    /// Orders of this status.
    pub status: Option<OrderStatus>,
    /// Orders created on or after this UTC day.
    pub from: Option<NaiveDate>,
    /// Orders created on or before this UTC day.
    pub to: Option<NaiveDate>,
    /// Text the shipping address contains (street, city, postal code or
    /// country), any case.
    pub text: Option<String>,
    /// Page size, 1 to 100 (default 20).
    pub limit: Option<usize>,
    /// The `cursor` of the previous page.
    pub cursor: Option<String>,
}

/// An order as the search finds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderSummary {
    /// The order's code (`GET /orders/{code}` has the whole order).
    pub code: String,
    /// The user who placed it.
    pub user_id: String,
    /// The customer.
    pub customer_id: String,
    /// Its status.
    pub status: OrderStatus,
    /// When it was created (UTC).
    pub created_at: DateTime<Utc>,
    /// Its total, tax included.
    #[serde(with = "money::json")]
    #[schema(value_type = f64)]
    pub total: Decimal,
    /// The products it has lines of.
    pub products: Vec<String>,
}

/// A page of search results, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OrderSearchPage {
    /// The orders of this page.
    pub items: Vec<OrderSummary>,
    /// Pass it as `cursor` to get the next page; `null` on the last page.
    pub cursor: Option<String>,
}

/// Where a page ends: the last order's creation time and code. Sent to
/// clients as hex text, which they pass back as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub(crate) created_at: String,
    pub(crate) code: String,
}

impl Cursor {
    pub(crate) fn encode(&self) -> String {
        format!("{}\n{}", self.created_at, self.code)
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Reads a cursor this module wrote; anything else is the framework's
    /// invalid cursor (a 422, as a listing's).
    pub(crate) fn decode(text: &str) -> ShopResult<Self> {
        let invalid = || {
            ShopError::Core(cqrs_core::Error::invalid(
                "cursor",
                "pass the `cursor` of the previous page as it is",
            ))
        };
        // A creation time (27 bytes at most), a newline and a code, in hex.
        if !text.len().is_multiple_of(2) || text.len() > 2 * (27 + 1 + validate::CODE.max_chars) {
            return Err(invalid());
        }
        let bytes = (0..text.len())
            .step_by(2)
            .map(|i| {
                text.get(i..i + 2)
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            })
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(invalid)?;
        let text = String::from_utf8(bytes).map_err(|_| invalid())?;
        let (created_at, code) = text.split_once('\n').ok_or_else(invalid)?;
        let parsed = DateTime::parse_from_rfc3339(created_at).map_err(|_| invalid())?;
        // Only the stored form compares as a time.
        if time_text(parsed.with_timezone(&Utc)) != created_at || code.is_empty() {
            return Err(invalid());
        }
        Ok(Cursor {
            created_at: created_at.to_owned(),
            code: code.to_owned(),
        })
    }
}

/// `text` for a `LIKE` pattern: `\`, `%` and `_` escaped with `\`
/// (the statement says `ESCAPE '\'`), so that they match themselves.
pub(crate) fn like_escaped(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '\\' | '%' | '_') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn stored_times_have_one_width_and_sort_as_times() {
        let times = [
            Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap(),
            Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap() + chrono::Duration::microseconds(7),
            Utc.with_ymd_and_hms(2026, 11, 2, 3, 4, 5).unwrap() + chrono::Duration::milliseconds(120),
        ];
        let texts: Vec<String> = times.iter().copied().map(time_text).collect();
        assert!(texts.iter().all(|t| t.len() == 27), "{texts:?}");
        assert_eq!(texts[0], "2026-01-02T03:04:05.000000Z");
        let mut sorted = texts.clone();
        sorted.sort();
        assert_eq!(sorted, texts);
    }

    #[test]
    fn cursors_round_trip_and_anything_else_is_refused() {
        let cursor = Cursor {
            created_at: "2026-12-05T06:07:08.123456Z".into(),
            code: "ORD-000042".into(),
        };
        assert_eq!(Cursor::decode(&cursor.encode()).unwrap(), cursor);
        for bad in [
            "",
            "nonsense",
            "abc",
            "zz",
            &hex("2026-12-05T06:07:08Z\nORD-1"),
            &hex("2026-12-05T06:07:08.123456Z\n"),
            &hex("2026-12-05T06:07:08.123456Z"),
            &hex("yesterday\nORD-1"),
        ] {
            assert!(
                matches!(
                    Cursor::decode(bad),
                    Err(ShopError::Core(cqrs_core::Error::InvalidInput { what, .. })) if what == "cursor"
                ),
                "{bad:?}"
            );
        }
    }

    fn hex(text: &str) -> String {
        text.bytes().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn like_wildcards_in_user_text_match_themselves() {
        assert_eq!(like_escaped("100%_a\\b"), "100\\%\\_a\\\\b");
        assert_eq!(like_escaped("main st"), "main st");
    }
}
