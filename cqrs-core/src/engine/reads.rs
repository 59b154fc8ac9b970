//! The read side: [`DataService`] over the storage primitives.

use async_trait::async_trait;

use super::records::data_item;
use super::validate::check_key;
use super::Engine;
use crate::context::InvocationContext;
use crate::error::{Error, Result};
use crate::index::{sort_condition, Index, IndexLookup};
use crate::keys::{validate_pk, EntityKey};
use crate::model::DataItem;
use crate::query::{Cursor, ListQuery, Page, SkCondition, MAX_LIMIT};
use crate::services::DataService;
use crate::storage::{RangePage, RangeQuery};

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
        check_query(&query)?;
        let storage = self.storage_ref();
        let sk = query.sk.clone();
        let fetch = |range: RangeQuery| async move { storage.query_data(&range).await };
        self.paged(pk, sk, &query, fetch, |item| Some(item.sk.to_string()))
            .await
    }

    async fn list_by_index(
        &self,
        lookup: &IndexLookup,
        query: ListQuery,
        ctx: &InvocationContext,
    ) -> Result<Page<DataItem>> {
        validate_pk(lookup.pk())?;
        self.tenancy().check_pk(ctx, lookup.pk())?;
        let index = self
            .inner
            .pipeline
            .indexes
            .iter()
            .find(|index| index.name() == lookup.index())
            .ok_or_else(|| Error::invalid("index", format!("no index is named '{}'", lookup.index())))?;
        let partition = lookup.partition(index)?;
        check_query(&query)?;
        let storage = self.storage_ref();
        let sk = query.sk.as_ref().map(sort_condition);
        let position = |item: &DataItem| index.entry(item).ok().flatten().map(|entry| entry.sk);
        let partition_ref = partition.as_str();
        self.paged(
            &partition,
            sk,
            &query,
            |range: RangeQuery| async move {
                let page = storage.query_index(index.name(), &range).await?;
                Ok(self.current_entries_only(index, partition_ref, page).await)
            },
            position,
        )
        .await
    }

    async fn list_history(&self, key: &EntityKey, ctx: &InvocationContext) -> Result<Vec<DataItem>> {
        check_key(self.tenancy(), key, ctx)?;
        self.storage_ref().list_history(key).await
    }
}

impl Engine {
    /// The items of an index page whose current values give the entry they
    /// were found by. Another program writing the table (the reference
    /// framework) may leave a row with entries copied from an earlier
    /// version, or an index may lag its rows: an item found under an entry
    /// it no longer has is left out, logged, and its entries repaired
    /// (conditioned on the version found, so a newer write is never undone;
    /// a repair that fails is logged, the read still answers).
    async fn current_entries_only(&self, index: &Index, partition: &str, page: RangePage) -> RangePage {
        let RangePage {
            items,
            last_sk,
            unreadable,
            index_keys,
        } = page;
        let mut kept = Vec::with_capacity(items.len());
        let mut kept_keys = Vec::with_capacity(index_keys.len());
        let mut stale = Vec::new();
        for (n, item) in items.into_iter().enumerate() {
            let found_by = index_keys.get(n);
            let current = index.entry(&item).ok().flatten();
            let matches = current.as_ref().is_some_and(|entry| {
                entry.pk == partition && found_by.is_none_or(|found| *found == entry.sk)
            });
            if matches {
                kept.push(item);
                kept_keys.extend(found_by.cloned());
            } else {
                tracing::warn!(index = index.name(), pk = %item.pk, sk = %item.sk, version = item.version,
                    found_in = partition, found_at = found_by.map(String::as_str).unwrap_or(""),
                    "an index entry does not match its item's values: the item is left out of the page");
                stale.push(item);
            }
        }
        if !stale.is_empty() {
            tracing::warn!(
                index = index.name(),
                partition,
                stale = stale.len(),
                "stale index entries left out of a page"
            );
        }
        for item in &stale {
            match self.rewrite_entries(item).await {
                Ok(()) => {}
                // Written since: a read that finds the newer version under
                // an entry it does not have repairs it then.
                Err(Error::Conflict { .. }) => {}
                Err(error) => {
                    tracing::warn!(pk = %item.pk, sk = %item.sk, %error, "stale index entries not repaired");
                }
            }
        }
        RangePage {
            items: kept,
            last_sk,
            unreadable,
            index_keys: kept_keys,
        }
    }

    /// A page of `query` over the rows `fetch` reads from `partition` in
    /// the order of their positions (sort keys, or index sort keys), with
    /// `sk` on those positions. Reads one match more than the page, so that
    /// the last page carries no cursor, and batches of 100 when filters may
    /// drop rows.
    async fn paged<F, Fut>(
        &self,
        partition: &str,
        sk: Option<SkCondition>,
        query: &ListQuery,
        fetch: F,
        position: impl Fn(&DataItem) -> Option<String>,
    ) -> Result<Page<DataItem>>
    where
        F: Fn(RangeQuery) -> Fut,
        Fut: std::future::Future<Output = Result<RangePage>>,
    {
        let mut start_after = query.cursor.as_ref().map(|c| c.decode(partition)).transpose()?;
        if let (Some(after), Some(condition)) = (&start_after, &sk) {
            // A cursor of this query names a row the query matched; one
            // from elsewhere is refused here, the same on every backend
            // (DynamoDB would reject the request).
            if !condition.matches(after) {
                return Err(Error::invalid("cursor", "does not belong to this query"));
            }
        }
        let wanted = query.limit + 1;
        let batch = if query.filters.is_empty() {
            wanted
        } else {
            wanted.max(FILTERED_BATCH)
        };
        let mut items = Vec::with_capacity(wanted.min(FILTERED_BATCH));
        let mut unreadable = Vec::new();
        loop {
            let range = RangeQuery {
                pk: partition.to_owned(),
                sk: sk.clone(),
                order: query.order,
                start_after: start_after.take(),
                limit: batch,
            };
            let page = fetch(range).await?;
            for row in &page.unreadable {
                tracing::warn!(pk = %row.pk, sk = %row.sk, reason = %row.reason, "unreadable row left out of a page");
            }
            unreadable.extend(page.unreadable);
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
            items
                .last()
                .and_then(&position)
                .map(|last| Cursor::encode(partition, &last))
        } else {
            None
        };
        Ok(Page {
            items,
            cursor,
            unreadable,
        })
    }
}

/// Checks a query's limit, filters and sort-key range before anything is read.
fn check_query(query: &ListQuery) -> Result<()> {
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
    Ok(())
}
