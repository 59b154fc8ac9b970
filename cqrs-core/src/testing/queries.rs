//! Queries: pagination, sort-key conditions, filters, cursors, typed reads.

use std::collections::HashSet;

use futures::future::try_join_all;
use serde::Deserialize;
use serde_json::json;

use super::fixtures::{cmd, ctx, engine, n, PK_A, PK_B};
use super::StorageFactory;
use crate::context::InvocationContext;
use crate::engine::Engine;
use crate::error::Error;
use crate::model::DataItem;
use crate::query::{Cursor, Filter, ListQuery, SkCondition, SortOrder, MAX_LIMIT};
use crate::services::{CommandService, DataService};
use crate::typed::DataServiceExt;

async fn create_all<A: Into<crate::Attributes>>(
    engine: &Engine,
    ctx: &InvocationContext,
    pk: &str,
    sks: impl IntoIterator<Item = (String, A)>,
) {
    try_join_all(
        sks.into_iter()
            .map(|(sk, attrs)| engine.publish_sync(cmd(pk, &sk, attrs), ctx)),
    )
    .await
    .unwrap();
}

/// Follows cursors to the end; checks every page's size.
async fn walk(
    engine: &Engine,
    ctx: &InvocationContext,
    pk: &str,
    query: ListQuery,
) -> (Vec<DataItem>, usize) {
    let limit = query.limit;
    let mut query = query;
    let mut items = Vec::new();
    let mut pages = 0;
    loop {
        let page = engine.list_items(pk, query.clone(), ctx).await.unwrap();
        pages += 1;
        assert!(page.items.len() <= limit, "page larger than its limit");
        items.extend(page.items);
        match page.cursor {
            Some(cursor) => query = query.after(Some(cursor)),
            None => return (items, pages),
        }
        assert!(pages < 10_000, "cursor loop");
    }
}

fn sks(items: &[DataItem]) -> Vec<String> {
    items.iter().map(|i| i.sk.to_string()).collect()
}

/// Walking the pages returns every item exactly once, in order, in both
/// directions, and the last page has no cursor.
pub async fn pagination_walks_every_item_once(factory: &dyn StorageFactory) {
    let engine = engine(factory).await;
    let a = ctx("shop-a");
    let orders: Vec<String> = (0..95).map(|i| format!("ORDER#{i:04}")).collect();
    create_all(&engine, &a, PK_A, orders.iter().map(|sk| (sk.clone(), n(1)))).await;
    create_all(&engine, &a, PK_A, (0..7).map(|i| (format!("PRODUCT#{i}"), n(1)))).await;
    create_all(
        &engine,
        &ctx("shop-b"),
        PK_B,
        (0..5).map(|i| (format!("ORDER#{i:04}"), n(1))),
    )
    .await;

    let query = ListQuery::new()
        .sk(SkCondition::BeginsWith("ORDER#".into()))
        .limit(10);
    let (items, pages) = walk(&engine, &a, PK_A, query.clone()).await;
    assert_eq!(sks(&items), orders);
    assert_eq!(pages, 10);

    let (items, _) = walk(&engine, &a, PK_A, query.order(SortOrder::Descending)).await;
    let mut reversed = orders.clone();
    reversed.reverse();
    assert_eq!(sks(&items), reversed);

    // A limit that divides the count exactly: the last full page has no cursor.
    let exact = ListQuery::new()
        .sk(SkCondition::BeginsWith("PRODUCT#".into()))
        .limit(7);
    let page = engine.list_items(PK_A, exact, &a).await.unwrap();
    assert_eq!((page.items.len(), page.cursor), (7, None));

    // Everything of the pk, products after orders.
    let (all, _) = walk(&engine, &a, PK_A, ListQuery::new().limit(MAX_LIMIT)).await;
    assert_eq!(all.len(), 102);
    let unique: HashSet<_> = all.iter().map(|i| i.sk.clone()).collect();
    assert_eq!(unique.len(), 102);

    let empty = engine
        .list_items(
            "TENANT#shop-a",
            ListQuery::new().sk(SkCondition::BeginsWith("NONE#".into())),
            &a,
        )
        .await
        .unwrap();
    assert!(empty.items.is_empty() && empty.cursor.is_none());
}

/// Every sort-key condition selects exactly its range.
pub async fn sort_key_conditions(factory: &dyn StorageFactory) {
    let engine = engine(factory).await;
    let a = ctx("shop-a");
    create_all(
        &engine,
        &a,
        PK_A,
        ["A#1", "A#2", "A#3", "B#1", "B#2", "C#1"].map(|s| (s.to_owned(), n(1))),
    )
    .await;
    let select = |condition: SkCondition| {
        let engine = engine.clone();
        let a = a.clone();
        async move {
            let (items, _) = walk(&engine, &a, PK_A, ListQuery::new().sk(condition).limit(2)).await;
            sks(&items)
        }
    };
    assert_eq!(select(SkCondition::Equals("B#1".into())).await, ["B#1"]);
    assert_eq!(
        select(SkCondition::BeginsWith("A#".into())).await,
        ["A#1", "A#2", "A#3"]
    );
    assert_eq!(
        select(SkCondition::Between("A#2".into(), "B#1".into())).await,
        ["A#2", "A#3", "B#1"]
    );
    assert_eq!(select(SkCondition::LessThan("A#3".into())).await, ["A#1", "A#2"]);
    assert_eq!(
        select(SkCondition::LessOrEqual("A#3".into())).await,
        ["A#1", "A#2", "A#3"]
    );
    assert_eq!(select(SkCondition::GreaterThan("B#2".into())).await, ["C#1"]);
    assert_eq!(
        select(SkCondition::GreaterOrEqual("B#2".into())).await,
        ["B#2", "C#1"]
    );
    assert!(select(SkCondition::Equals("Z".into())).await.is_empty());
    let err = engine
        .list_items(
            PK_A,
            ListQuery::new().sk(SkCondition::Between("B".into(), "A".into())),
            &a,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "{err:?}");
}

/// Filters on nested attribute paths, combined with pagination, return every
/// match exactly once.
pub async fn filters_on_nested_attributes(factory: &dyn StorageFactory) {
    let engine = engine(factory).await;
    let a = ctx("shop-a");
    let statuses = ["pending", "confirmed", "shipped"];
    let cities = ["Tokyo", "Osaka"];
    create_all(
        &engine,
        &a,
        PK_A,
        (0..60).map(|i| {
            let mut attrs = json!({"status": statuses[i % 3], "address": {"city": cities[i % 2]}});
            if i % 5 == 0 {
                attrs["gift"] = json!(true);
            }
            (format!("ORDER#{i:03}"), attrs)
        }),
    )
    .await;
    let orders = ListQuery::new()
        .sk(SkCondition::BeginsWith("ORDER#".into()))
        .limit(3);
    let count = |filter: Filter| {
        let (engine, a, orders) = (engine.clone(), a.clone(), orders.clone());
        async move {
            let (items, _) = walk(&engine, &a, PK_A, orders.filter(filter.clone())).await;
            assert!(
                items.iter().all(|i| filter.matches(i)),
                "an item fails its filter"
            );
            let unique: HashSet<_> = items.iter().map(|i| i.sk.clone()).collect();
            assert_eq!(unique.len(), items.len(), "an item was returned twice");
            items.len()
        }
    };
    assert_eq!(count(Filter::eq("attributes.status", "pending")).await, 20);
    assert_eq!(count(Filter::ne("attributes.status", "pending")).await, 40);
    assert_eq!(
        count(Filter::is_in("attributes.status", ["pending", "shipped"])).await,
        40
    );
    assert_eq!(count(Filter::eq("attributes.address.city", "Osaka")).await, 30);
    assert_eq!(count(Filter::exists("attributes.gift")).await, 12);
    assert_eq!(count(Filter::eq("code", "045")).await, 1);
    assert_eq!(count(Filter::eq("attributes.status", "unknown")).await, 0);
    // Several filters all apply: pending (i % 3 == 0) in Osaka (odd i).
    let (items, _) = walk(
        &engine,
        &a,
        PK_A,
        orders
            .filter(Filter::eq("attributes.status", "pending"))
            .filter(Filter::eq("attributes.address.city", "Osaka")),
    )
    .await;
    assert_eq!(items.len(), 10);
}

/// Bad cursors and limits are invalid input.
pub async fn cursors_and_limits_are_validated(factory: &dyn StorageFactory) {
    let engine = engine(factory).await;
    let a = ctx("shop-a");
    create_all(&engine, &a, PK_A, (0..3).map(|i| (format!("P#{i}"), n(1)))).await;
    let page = engine
        .list_items(PK_A, ListQuery::new().limit(1), &a)
        .await
        .unwrap();
    let cursor = page.cursor.expect("more pages");
    let invalid = |e: Error| matches!(e, Error::InvalidInput { .. });
    let garbage = ListQuery::new().after(Some(Cursor::from("not-a-cursor".to_owned())));
    assert!(invalid(engine.list_items(PK_A, garbage, &a).await.unwrap_err()));
    let other_pk = ListQuery::new().after(Some(cursor.clone()));
    assert!(invalid(
        engine
            .list_items("TENANT#shop-a2", other_pk, &ctx("shop-a2"))
            .await
            .unwrap_err()
    ));
    assert!(invalid(
        engine
            .list_items(PK_A, ListQuery::new().limit(0), &a)
            .await
            .unwrap_err()
    ));
    assert!(invalid(
        engine
            .list_items(PK_A, ListQuery::new().limit(MAX_LIMIT + 1), &a)
            .await
            .unwrap_err()
    ));
    let next = engine
        .list_items(PK_A, ListQuery::new().limit(1).after(Some(cursor)), &a)
        .await
        .unwrap();
    assert_eq!(sks(&next.items), ["P#1"]);
}

/// Typed helpers deserialize attributes; a shape mismatch is invalid input
/// read alone, and an unreadable row of the page in a list.
pub async fn typed_reads(factory: &dyn StorageFactory) {
    #[derive(Debug, Deserialize, PartialEq)]
    struct Stock {
        quantity: i64,
    }
    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Wrong {
        missing: String,
    }
    let engine = engine(factory).await;
    let a = ctx("shop-a");
    create_all(
        &engine,
        &a,
        PK_A,
        (1..=3).map(|i| (format!("INVENTORY#{i}"), json!({"quantity": i}))),
    )
    .await;
    let key = crate::EntityKey::new(PK_A, "INVENTORY#2");
    let typed = engine.get_typed::<Stock>(&key, &a).await.unwrap().unwrap();
    assert_eq!(typed.attributes, Stock { quantity: 2 });
    assert_eq!(typed.item.version, 1);
    let page = engine
        .list_typed::<Stock>(PK_A, ListQuery::new(), &a)
        .await
        .unwrap();
    let quantities: Vec<_> = page.items.iter().map(|t| t.attributes.quantity).collect();
    assert_eq!(quantities, [1, 2, 3]);
    assert!(matches!(
        engine.get_typed::<Wrong>(&key, &a).await,
        Err(Error::InvalidInput { .. })
    ));
    // In a page, rows that are not of the type are reported by key, and the
    // others served.
    create_all(
        &engine,
        &a,
        PK_A,
        [("INVENTORY#4".to_owned(), json!({"quantity": "four"}))],
    )
    .await;
    let page = engine
        .list_typed::<Stock>(PK_A, ListQuery::new(), &a)
        .await
        .unwrap();
    let quantities: Vec<_> = page.items.iter().map(|t| t.attributes.quantity).collect();
    assert_eq!(quantities, [1, 2, 3]);
    let unreadable: Vec<_> = page.unreadable.iter().map(|row| row.sk.as_str()).collect();
    assert_eq!(unreadable, ["INVENTORY#4"]);
    assert!(
        page.unreadable[0].reason.contains("four"),
        "{:?}",
        page.unreadable[0]
    );
}

/// Numbers compare by value, however they were written and whatever the
/// backend gives back (DynamoDB keeps no difference between `6` and `6.0`):
/// in filters and in the dirty check.
pub async fn numbers_compare_by_value(factory: &dyn StorageFactory) {
    let engine = engine(factory).await;
    let a = ctx("shop-a");
    create_all(
        &engine,
        &a,
        PK_A,
        [("P#1".to_owned(), json!({"price": 6.0, "tags": [1.0]}))],
    )
    .await;
    let query = ListQuery::new().filter(Filter::eq("attributes.price", 6));
    assert_eq!(engine.list_items(PK_A, query, &a).await.unwrap().items.len(), 1);
    let query = ListQuery::new().filter(Filter::is_in("attributes.price", [5.0, 6.0]));
    assert_eq!(engine.list_items(PK_A, query, &a).await.unwrap().items.len(), 1);
    let same = crate::CommandInput::new(PK_A, "P#1")
        .attributes(json!({"price": 6, "tags": [1]}))
        .version(crate::ExpectedVersion::Exactly(1));
    assert!(engine.publish_sync(same, &a).await.unwrap().is_unchanged());
}
