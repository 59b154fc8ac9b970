//! The read side: [`DataService`] over the storage primitives.

use async_trait::async_trait;

use super::records::data_item;
use super::validate::check_key;
use super::Engine;
use crate::context::InvocationContext;
use crate::error::{Error, Result};
use crate::keys::{validate_pk, EntityKey};
use crate::model::DataItem;
use crate::query::{Cursor, ListQuery, Page, SkCondition, MAX_LIMIT};
use crate::services::DataService;
use crate::storage::RangeQuery;

/// Rows read per storage call while filtering: filters may drop many rows,
/// so read more than the page needs.
const FILTERED_BATCH: usize = 100;

#[async_trait]
impl DataService for Engine {
    async fn get_item(&self, key: &EntityKey, ctx: &InvocationContext) -> Result<Option<DataItem>> {
        check_key(self.tenancy(), key, ctx)?;
        self.storage_ref().get_data(key).await
    }

    async fn get_latest(&self, key: &EntityKey, ctx: &InvocationContext) -> Result<Option<DataItem>> {
        check_key(self.tenancy(), key, ctx)?;
        let applied = self.storage_ref().get_data(key).await?;
        let known = applied.as_ref().map_or(0, |item| item.version);
        match self.storage_ref().latest_command(key, Some(known)).await? {
            Some(pending) if pending.version > known => Ok(Some(data_item(&pending, applied.as_ref()))),
            _ => Ok(applied),
        }
    }

    async fn list_items(
        &self,
        pk: &str,
        query: ListQuery,
        ctx: &InvocationContext,
    ) -> Result<Page<DataItem>> {
        validate_pk(pk)?;
        self.tenancy().check_pk(ctx, pk)?;
        if !(1..=MAX_LIMIT).contains(&query.limit) {
            return Err(Error::invalid(
                "limit",
                format!("must be 1 to {MAX_LIMIT}, got {}", query.limit),
            ));
        }
        for filter in &query.filters {
            filter.check()?;
        }
        if let Some(SkCondition::Between(low, high)) = &query.sk {
            if low > high {
                return Err(Error::invalid(
                    "sk",
                    format!("between '{low}' and '{high}': low is above high"),
                ));
            }
        }
        let mut start_after = query.cursor.as_ref().map(|c| c.decode(pk)).transpose()?;
        if let (Some(after), Some(condition)) = (&start_after, &query.sk) {
            // A cursor of this query names a row the query matched; one
            // from elsewhere is refused here, the same on every backend
            // (DynamoDB would reject the request).
            if !condition.matches(after) {
                return Err(Error::invalid("cursor", "does not belong to this query"));
            }
        }
        // One match more than the page tells whether another page exists, so
        // the last page never carries a cursor.
        let wanted = query.limit + 1;
        let batch = if query.filters.is_empty() {
            wanted
        } else {
            wanted.max(FILTERED_BATCH)
        };
        let mut items = Vec::with_capacity(wanted.min(FILTERED_BATCH));
        loop {
            let page = self
                .storage_ref()
                .query_data(&RangeQuery {
                    pk: pk.to_owned(),
                    sk: query.sk.clone(),
                    order: query.order,
                    start_after: start_after.take(),
                    limit: batch,
                })
                .await?;
            for item in page.items {
                if query.filters.iter().all(|f| f.matches(&item)) {
                    items.push(item);
                    if items.len() == wanted {
                        break;
                    }
                }
            }
            match page.last_sk {
                Some(last) if items.len() < wanted => start_after = Some(last),
                _ => break,
            }
        }
        let cursor = if items.len() > query.limit {
            items.truncate(query.limit);
            items.last().map(|last| Cursor::encode(pk, &last.sk))
        } else {
            None
        };
        Ok(Page { items, cursor })
    }

    async fn list_history(&self, key: &EntityKey, ctx: &InvocationContext) -> Result<Vec<DataItem>> {
        check_key(self.tenancy(), key, ctx)?;
        self.storage_ref().list_history(key).await
    }
}
