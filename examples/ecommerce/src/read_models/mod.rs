//! The shop's read models, in SQL (SQLite or PostgreSQL, chosen by URL):
//! a daily sales report and an order search, kept by the framework's
//! projectors exactly once in effect, rebuildable while orders keep coming.
//!
//! - [`SalesReport`] (`sales_daily`): units and revenue per shop, UTC day
//!   of the order's creation and product, cancelled orders taken out.
//! - [`OrderSearch`] (`order_search`): one row per order, searched by
//!   product, status, day range and address text, newest first.
//!
//! The projectors are data-sync handlers: every process whose engine runs
//! handlers registers them ([`ReadModels::projectors`]), since a sync
//! publish (a status change) runs its handlers in the process that made it.
//! The read models follow the writes: they are eventually consistent (with
//! the in-process pipeline, settled once `engine.wait_idle()` returns).

mod order_search;
mod sales_report;

use std::sync::Arc;

use chrono::{NaiveDate, Utc};
use cqrs_core::projection::{Lag, Progress, Projector, Rebuilt, Scope};
use cqrs_core::{DataSyncHandler, Storage};
use cqrs_sql::sqlx::{self, Any};
use cqrs_sql::SqlTarget;

pub use order_search::{
    OrderSearch, OrderSearchPage, OrderSearchQuery, OrderSummary, SEARCH_PROJECTION, SEARCH_TABLE,
};
pub use sales_report::{contributions, Contribution, SalesReport, SalesRow, SALES_PROJECTION, SALES_TABLE};

use self::order_search::{like_escaped, Cursor};
use self::sales_report::{day_text, from_cents};
use crate::domain::OrderStatus;
use crate::error::{ShopError, ShopResult};
use crate::services::validate;

/// The longest span a sales report covers: 366 days, `from` and `to`
/// included.
pub const MAX_REPORT_DAYS: i64 = 366;

/// The sales report's projector.
pub type SalesProjector = Projector<SalesReport, SqlTarget<Any>>;

/// The order search's projector.
pub type SearchProjector = Projector<OrderSearch, SqlTarget<Any>>;

/// Which read model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadModel {
    /// [`SalesReport`].
    Sales,
    /// [`OrderSearch`].
    Search,
}

/// The read models' database and projectors. Clones share them.
#[derive(Clone)]
pub struct ReadModels {
    target: SqlTarget<Any>,
    sales: SalesProjector,
    search: SearchProjector,
}

impl std::fmt::Debug for ReadModels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadModels")
            .field("target", &self.target)
            .field("projections", &[self.sales.name(), self.search.name()])
            .finish()
    }
}

impl ReadModels {
    /// Connects to the database `url` names (`sqlite::memory:`,
    /// `sqlite://file.db?mode=rwc`, `postgres://...`) and prepares both
    /// read models (their tables on first use). `storage` is the shop's
    /// data store: rebuilds and gap fills read it.
    pub async fn connect(url: &str, storage: Arc<dyn Storage>) -> ShopResult<Self> {
        let target = SqlTarget::<Any>::connect(url).await?;
        let sales = Projector::new(SalesReport, target.clone(), Arc::clone(&storage));
        let search = Projector::new(OrderSearch, target.clone(), storage);
        sales.prepare().await?;
        search.prepare().await?;
        Ok(ReadModels {
            target,
            sales,
            search,
        })
    }

    /// The projectors, to register as data-sync handlers on the engine.
    pub fn projectors(&self) -> Vec<Arc<dyn DataSyncHandler>> {
        vec![Arc::new(self.sales.clone()), Arc::new(self.search.clone())]
    }

    /// The sales report's projector (its stats, generations, rebuilds).
    pub fn sales_projector(&self) -> &SalesProjector {
        &self.sales
    }

    /// The order search's projector.
    pub fn search_projector(&self) -> &SearchProjector {
        &self.search
    }

    /// The database.
    pub fn target(&self) -> &SqlTarget<Any> {
        &self.target
    }

    /// The sales report of `tenant` from `from` to `to` (UTC days, both
    /// included, at most [`MAX_REPORT_DAYS`]), ordered by day then product.
    /// Rows whose orders were all cancelled are left out.
    pub async fn sales(&self, tenant: &str, from: NaiveDate, to: NaiveDate) -> ShopResult<Vec<SalesRow>> {
        check_report_days(from, to)?;
        let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(&format!(
            "SELECT day, product_code, units, revenue_cents FROM {SALES_TABLE} \
             WHERE tenant = $1 AND day >= $2 AND day <= $3 AND (units <> 0 OR revenue_cents <> 0) \
             ORDER BY day, product_code"
        ))
        .bind(tenant.to_owned())
        .bind(day_text(from))
        .bind(day_text(to))
        .fetch_all(self.target.pool())
        .await
        .map_err(query_error)?;
        rows.into_iter()
            .map(|(day, product_code, units, revenue_cents)| {
                Ok(SalesRow {
                    day: NaiveDate::parse_from_str(&day, "%Y-%m-%d")
                        .map_err(|e| unreadable(format!("day {day:?} in {SALES_TABLE}: {e}")))?,
                    product_code,
                    units,
                    revenue: from_cents(revenue_cents),
                })
            })
            .collect()
    }

    /// Orders of `tenant` matching `query`, newest first (by creation
    /// time, then code), a page at a time; only those `only_user` placed
    /// when given. Every value is bound as a parameter.
    pub async fn search(
        &self,
        tenant: &str,
        query: &OrderSearchQuery,
        only_user: Option<&str>,
    ) -> ShopResult<OrderSearchPage> {
        let (limit, cursor) = check_search(query)?;
        let mut sql = format!(
            "SELECT code, user_id, customer_id, status, created_at, total_cents, products \
             FROM {SEARCH_TABLE} WHERE tenant = $1"
        );
        let mut args: Vec<Arg> = vec![Arg::Text(tenant.to_owned())];
        let mut condition = |sql_part: &str, values: Vec<Arg>| {
            let mut part = sql_part.to_owned();
            for value in values {
                args.push(value);
                part = part.replacen('?', &format!("${}", args.len()), 1);
            }
            sql.push_str(" AND ");
            sql.push_str(&part);
        };
        if let Some(user) = only_user {
            condition("user_id = ?", vec![Arg::Text(user.to_owned())]);
        }
        if let Some(product) = query.product.as_deref() {
            let product = searched_text("product", product)?;
            // `,CODE,` within the products, matched as it is in both
            // databases: SQLite's LIKE ignores ASCII case, replace() does not.
            condition(
                "replace(products, ?, '') <> products",
                vec![Arg::Text(format!(",{product},"))],
            );
        }
        if let Some(status) = query.status {
            condition("status = ?", vec![Arg::Text(status.as_str().to_owned())]);
        }
        if let Some(from) = query.from {
            condition("day >= ?", vec![Arg::Text(day_text(from))]);
        }
        if let Some(to) = query.to {
            condition("day <= ?", vec![Arg::Text(day_text(to))]);
        }
        if let Some(text) = query.text.as_deref() {
            let text = searched_text("q", text)?.to_lowercase();
            condition(
                "address LIKE ? ESCAPE '\\'",
                vec![Arg::Text(format!("%{}%", like_escaped(&text)))],
            );
        }
        if let Some(cursor) = &cursor {
            condition(
                "(created_at < ? OR (created_at = ? AND code < ?))",
                vec![
                    Arg::Text(cursor.created_at.clone()),
                    Arg::Text(cursor.created_at.clone()),
                    Arg::Text(cursor.code.clone()),
                ],
            );
        }
        // One more than a page: whether there is a next one.
        let fetch = i64::try_from(limit + 1).unwrap_or(i64::MAX);
        args.push(Arg::Int(fetch));
        sql.push_str(&format!(
            " ORDER BY created_at DESC, code DESC LIMIT ${}",
            args.len()
        ));

        type Row = (String, String, String, String, String, i64, String);
        let mut statement = sqlx::query_as::<Any, Row>(&sql);
        for arg in args {
            statement = match arg {
                Arg::Text(text) => statement.bind(text),
                Arg::Int(n) => statement.bind(n),
            };
        }
        let mut rows = statement
            .fetch_all(self.target.pool())
            .await
            .map_err(query_error)?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        let cursor = match (more, rows.last()) {
            (true, Some(last)) => Some(
                Cursor {
                    created_at: last.4.clone(),
                    code: last.0.clone(),
                }
                .encode(),
            ),
            _ => None,
        };
        let items = rows
            .into_iter()
            .map(
                |(code, user_id, customer_id, status, created_at, total_cents, products)| {
                    Ok(OrderSummary {
                        status: parse_status(&status)?,
                        created_at: chrono::DateTime::parse_from_rfc3339(&created_at)
                            .map_err(|e| unreadable(format!("created_at {created_at:?} of {code}: {e}")))?
                            .with_timezone(&Utc),
                        total: from_cents(total_cents),
                        products: products
                            .split(',')
                            .filter(|p| !p.is_empty())
                            .map(str::to_owned)
                            .collect(),
                        code,
                        user_id,
                        customer_id,
                    })
                },
            )
            .collect::<ShopResult<Vec<_>>>()?;
        Ok(OrderSearchPage { items, cursor })
    }

    /// Rebuilds `which` from the data table for `tenants` into a new
    /// generation while orders keep flowing, then points readers at it;
    /// `progress` is called after every batch.
    pub async fn rebuild(
        &self,
        which: ReadModel,
        tenants: &[String],
        progress: impl FnMut(Progress) + Send + Sync,
    ) -> ShopResult<Rebuilt> {
        let scope = Scope::tenants(tenants.iter().cloned());
        let rebuilt = match which {
            ReadModel::Sales => self.sales.rebuild(scope).on_progress(progress).run().await?,
            ReadModel::Search => self.search.rebuild(scope).on_progress(progress).run().await?,
        };
        Ok(rebuilt)
    }

    /// How far `which` is behind the data table for `tenants`.
    pub async fn lag(&self, which: ReadModel, tenants: &[String]) -> ShopResult<Lag> {
        let scope = Scope::tenants(tenants.iter().cloned());
        let lag = match which {
            ReadModel::Sales => self.sales.lag(&scope).await?,
            ReadModel::Search => self.search.lag(&scope).await?,
        };
        Ok(lag)
    }
}

/// Checks a report's days: `from` not after `to`, at most
/// [`MAX_REPORT_DAYS`] days.
pub(crate) fn check_report_days(from: NaiveDate, to: NaiveDate) -> ShopResult<()> {
    if from > to {
        return Err(ShopError::Unprocessable(format!(
            "from ({from}) must not be after to ({to})"
        )));
    }
    let days = (to - from).num_days() + 1;
    if days > MAX_REPORT_DAYS {
        return Err(ShopError::Unprocessable(format!(
            "a report covers at most {MAX_REPORT_DAYS} days; {from} to {to} is {days}"
        )));
    }
    Ok(())
}

/// Checks a search: its page size, cursor, days and texts. Answers the page
/// size and the cursor.
pub(crate) fn check_search(query: &OrderSearchQuery) -> ShopResult<(usize, Option<Cursor>)> {
    let limit = validate::limit(query.limit)?;
    let cursor = match query.cursor.as_deref().filter(|c| !c.is_empty()) {
        Some(text) => Some(Cursor::decode(text)?),
        None => None,
    };
    if let (Some(from), Some(to)) = (query.from, query.to) {
        if from > to {
            return Err(ShopError::Unprocessable(format!(
                "from ({from}) must not be after to ({to})"
            )));
        }
    }
    if let Some(product) = query.product.as_deref() {
        searched_text("product", product)?;
    }
    if let Some(text) = query.text.as_deref() {
        searched_text("q", text)?;
    }
    Ok((limit, cursor))
}

/// A value bound to a search statement.
enum Arg {
    Text(String),
    Int(i64),
}

/// A searched text, as [`validate::SEARCH_TEXT`] allows it, without the
/// spaces around it.
fn searched_text<'a>(what: &str, text: &'a str) -> ShopResult<&'a str> {
    validate::SEARCH_TEXT.check(what, text)?;
    Ok(text.trim())
}

fn parse_status(status: &str) -> ShopResult<OrderStatus> {
    serde_json::from_value(serde_json::Value::String(status.to_owned()))
        .map_err(|e| unreadable(format!("status {status:?} in {SEARCH_TABLE}: {e}")))
}

/// A read-model row that does not read: the table holds what this program
/// did not write.
fn unreadable(reason: String) -> ShopError {
    ShopError::Core(cqrs_core::Error::backend(
        format!("unreadable read-model row: {reason}"),
        false,
    ))
}

/// A failed read-model query: an unreachable or busy database is retryable
/// (503, as a storage outage), anything else is not (500).
fn query_error(error: sqlx::Error) -> ShopError {
    let retryable = match &error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // SQLite: busy or locked (extended codes too). PostgreSQL:
            // connection exceptions, insufficient resources, shutdowns.
            matches!(code.parse::<i32>().map(|c| c & 0xff), Ok(5 | 6))
                || code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57P")
        }
        _ => false,
    };
    ShopError::Core(cqrs_core::Error::backend(error, retryable))
}
