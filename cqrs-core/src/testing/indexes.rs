//! Secondary indexes: items found by attribute values, in pages, kept in
//! step with every write path (sync, async, commit), within their tenant.
//!
//! Index reads may lag writes on a backend whose indexes are eventually
//! consistent (DynamoDB's global secondary indexes): the checks read until
//! the index shows what was written, within a bound.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::json;

use super::fixtures::{builder, cmd, cmd_at, ctx, PK_A, PK_B};
use super::StorageFactory;
use crate::engine::{AsyncDispatch, Engine};
use crate::error::Error;
use crate::index::{Index, IndexEntry, IndexLookup};
use crate::keys::EntityKey;
use crate::model::{CommandStatus, DataItem};
use crate::query::{Cursor, Filter, ListQuery, SkCondition, SortOrder};
use crate::services::{CommandService, DataService};
use crate::storage::{ApplyWrite, CommandWrite};

/// The indexes the checks declare: a backend whose indexes must exist
/// before they are used (DynamoDB's global secondary indexes) creates them
/// in the storage its factory gives.
pub const CONFORMANCE_INDEXES: [&str; 2] = ["orders-by-status", "orders-by-customer"];

/// How long an index may lag its writes in these checks.
const INDEX_LAG: Duration = Duration::from_secs(10);

fn by_status() -> Index {
    Index::new("orders-by-status")
        .entity_type("ORDER")
        .partition_by("attributes.status")
        .sort_by("attributes.placedAt")
}

fn by_customer() -> Index {
    Index::new("orders-by-customer")
        .entity_type("ORDER")
        .partition_by("attributes.customer")
        .sort_by("attributes.placedAt")
}

async fn indexed_engine(factory: &dyn StorageFactory) -> Engine {
    builder(factory)
        .await
        .index(by_status())
        .index(by_customer())
        .build()
}

fn order(n: u32, status: &str, customer: &str) -> serde_json::Value {
    json!({ "status": status, "customer": customer, "placedAt": format!("2026-12-{:02}T10:00:{:02}Z", 1 + n / 60, n % 60) })
}

fn sk(n: u32) -> String {
    format!("ORDER#{n:04}")
}

/// Every page of `lookup`, following cursors.
async fn all_pages(
    engine: &Engine,
    lookup: &IndexLookup,
    query: ListQuery,
    pk_tenant: &str,
) -> Vec<DataItem> {
    let c = ctx(pk_tenant);
    let mut query = query;
    let mut items = Vec::new();
    loop {
        let page = engine
            .list_by_index(lookup, query.clone(), &c)
            .await
            .expect("page");
        items.extend(page.items);
        match page.cursor {
            Some(cursor) => query = query.after(Some(cursor)),
            None => return items,
        }
    }
}

/// Reads `lookup` until it lists exactly `expected` sort keys (in order), or
/// the lag bound passes.
async fn eventually_lists(engine: &Engine, lookup: &IndexLookup, tenant: &str, expected: &[String]) {
    let deadline = Instant::now() + INDEX_LAG;
    loop {
        let found: Vec<String> = all_pages(engine, lookup, ListQuery::new().limit(7), tenant)
            .await
            .into_iter()
            .map(|i| i.sk.to_string())
            .collect();
        if found == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{lookup:?}: found {found:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Items are found by their values, in sort order, a page at a time; each
/// item once across pages, in both orders; a status change moves the item.
pub async fn indexes_find_items_by_value(factory: &dyn StorageFactory) {
    let engine = indexed_engine(factory).await;
    let a = ctx("shop-a");
    for n in 0..30 {
        let status = if n % 3 == 0 { "shipped" } else { "pending" };
        engine
            .publish_sync(cmd(PK_A, &sk(n), order(n, status, &format!("c{}", n % 2))), &a)
            .await
            .expect("order");
    }
    // Not an order: never in the order indexes.
    engine
        .publish_sync(
            cmd(
                PK_A,
                "PRODUCT#1",
                json!({ "status": "pending", "placedAt": "2026" }),
            ),
            &a,
        )
        .await
        .expect("product");
    let pending = IndexLookup::new("orders-by-status", PK_A).value("pending");
    let expected: Vec<String> = (0..30).filter(|n| n % 3 != 0).map(sk).collect();
    eventually_lists(&engine, &pending, "shop-a", &expected).await;

    let descending = all_pages(
        &engine,
        &pending,
        ListQuery::new().limit(6).order(SortOrder::Descending),
        "shop-a",
    )
    .await;
    let mut reversed = expected.clone();
    reversed.reverse();
    assert_eq!(
        descending.iter().map(|i| i.sk.clone()).collect::<Vec<_>>(),
        reversed
    );

    // A page costs the page: 20 items, and a cursor for the rest.
    let page = engine
        .list_by_index(&pending, ListQuery::new().limit(5), &a)
        .await
        .expect("page");
    assert_eq!(page.items.len(), 5);
    assert!(page.cursor.is_some());

    // Two partition values, a sort condition, a filter.
    let customer = IndexLookup::new("orders-by-customer", PK_A).value("c1");
    let december_1 = all_pages(
        &engine,
        &customer,
        ListQuery::new()
            .sk(SkCondition::BeginsWith("2026-12-01".into()))
            .filter(Filter::eq("attributes.status", "pending")),
        "shop-a",
    )
    .await;
    let expected_c1: Vec<String> = (0..30).filter(|n| n % 2 == 1 && n % 3 != 0).map(sk).collect();
    assert_eq!(
        december_1.iter().map(|i| i.sk.clone()).collect::<Vec<_>>(),
        expected_c1
    );

    // Shipping order 1 moves it from "pending" to "shipped".
    let one = engine
        .get_item(&EntityKey::new(PK_A, sk(1)), &a)
        .await
        .expect("read")
        .expect("order 1");
    engine
        .publish_sync(cmd_at(PK_A, &sk(1), one.version, order(1, "shipped", "c1")), &a)
        .await
        .expect("ship");
    let still_pending: Vec<String> = expected.iter().filter(|s| **s != sk(1)).cloned().collect();
    eventually_lists(&engine, &pending, "shop-a", &still_pending).await;
    let shipped: Vec<String> = (0..30).filter(|n| n % 3 == 0 || *n == 1).map(sk).collect();
    eventually_lists(
        &engine,
        &IndexLookup::new("orders-by-status", PK_A).value("shipped"),
        "shop-a",
        &shipped,
    )
    .await;
}

/// Async publishes (when applied) and commits keep the index in step; an
/// item that loses an indexed value leaves the index.
pub async fn indexes_follow_every_write_path(factory: &dyn StorageFactory) {
    let engine = builder(factory)
        .await
        .index(by_status())
        .dispatch(AsyncDispatch::InProcess)
        .build();
    let a = ctx("shop-a");
    engine
        .publish_async(cmd(PK_A, &sk(1), order(1, "pending", "c")), &a)
        .await
        .expect("async");
    engine.wait_idle().await;
    engine
        .commit(
            vec![
                cmd(PK_A, &sk(2), order(2, "pending", "c")),
                cmd(PK_A, &sk(3), order(3, "pending", "c")),
            ],
            &a,
        )
        .await
        .expect("commit");
    let pending = IndexLookup::new("orders-by-status", PK_A).value("pending");
    eventually_lists(&engine, &pending, "shop-a", &[sk(1), sk(2), sk(3)]).await;
    // No status any more: out of the index (a sparse index).
    engine
        .publish_sync(
            cmd_at(PK_A, &sk(2), 1, json!({ "placedAt": "2026-12-01T10:00:02Z" })),
            &a,
        )
        .await
        .expect("drop status");
    eventually_lists(&engine, &pending, "shop-a", &[sk(1), sk(3)]).await;
    let sorted_at = all_pages(
        &engine,
        &pending,
        ListQuery::new().sk(SkCondition::Equals("2026-12-01T10:00:03Z".into())),
        "shop-a",
    )
    .await;
    assert_eq!(
        sorted_at.iter().map(|i| i.sk.clone()).collect::<Vec<_>>(),
        [sk(3)]
    );
}

/// An index partition is within its tenant: another tenant's items with
/// the same values are not found, another tenant's pk is refused, a cursor
/// of another partition is refused.
pub async fn indexes_keep_tenants_apart(factory: &dyn StorageFactory) {
    let engine = indexed_engine(factory).await;
    let (a, b) = (ctx("shop-a"), ctx("shop-b"));
    for n in 0..3 {
        engine
            .publish_sync(cmd(PK_A, &sk(n), order(n, "pending", "c")), &a)
            .await
            .expect("a");
        engine
            .publish_sync(cmd(PK_B, &sk(n + 10), order(n, "pending", "c")), &b)
            .await
            .expect("b");
    }
    let in_a = IndexLookup::new("orders-by-status", PK_A).value("pending");
    eventually_lists(&engine, &in_a, "shop-a", &[sk(0), sk(1), sk(2)]).await;
    let in_b = IndexLookup::new("orders-by-status", PK_B).value("pending");
    eventually_lists(&engine, &in_b, "shop-b", &[sk(10), sk(11), sk(12)]).await;
    let error = engine
        .list_by_index(&in_b, ListQuery::new(), &a)
        .await
        .expect_err("another tenant's partition");
    assert!(matches!(error, Error::TenantViolation { .. }), "{error}");
    let page = engine
        .list_by_index(&in_a, ListQuery::new().limit(1), &a)
        .await
        .expect("page");
    let cursor: Cursor = page.cursor.expect("more");
    let shipped = IndexLookup::new("orders-by-status", PK_A).value("shipped");
    let error = engine
        .list_by_index(&shipped, ListQuery::new().after(Some(cursor)), &a)
        .await
        .expect_err("a cursor of another partition");
    assert!(
        matches!(&error, Error::InvalidInput { what, .. } if what == "cursor"),
        "{error}"
    );
}

/// Lookups are checked before anything is read: an unknown index, the
/// wrong number of values, a value that cannot be indexed; an indexed value
/// an index key cannot hold is refused at publish, with nothing written.
pub async fn index_lookups_are_validated(factory: &dyn StorageFactory) {
    let engine = indexed_engine(factory).await;
    let a = ctx("shop-a");
    let cases = [
        ("index", IndexLookup::new("no-such-index", PK_A).value("x")),
        ("index value", IndexLookup::new("orders-by-status", PK_A)),
        (
            "index value",
            IndexLookup::new("orders-by-status", PK_A).value("a").value("b"),
        ),
        (
            "index value",
            IndexLookup::new("orders-by-status", PK_A).value(json!({ "not": "a scalar" })),
        ),
    ];
    for (what_expected, lookup) in cases {
        let error = engine
            .list_by_index(&lookup, ListQuery::new(), &a)
            .await
            .expect_err("refused");
        assert!(
            matches!(&error, Error::InvalidInput { what, .. } if what == what_expected),
            "{lookup:?}: {error}"
        );
    }
    let error = engine
        .publish_sync(
            cmd(
                PK_A,
                &sk(1),
                json!({ "status": "bad\u{1}value", "placedAt": "x" }),
            ),
            &a,
        )
        .await
        .expect_err("unindexable value");
    assert!(matches!(error, Error::InvalidInput { .. }), "{error}");
    let long = "x".repeat(1100);
    let error = engine
        .publish_sync(
            cmd(PK_A, &sk(2), json!({ "status": "pending", "placedAt": long })),
            &a,
        )
        .await
        .expect_err("index sort key too long");
    assert!(matches!(error, Error::TooLarge { .. }), "{error}");
    let written: BTreeSet<String> = engine
        .list_items(PK_A, ListQuery::new(), &a)
        .await
        .expect("list")
        .items
        .into_iter()
        .map(|i| i.sk.to_string())
        .collect();
    assert!(written.is_empty(), "nothing written: {written:?}");
}

/// A write of another program sharing the table (the reference framework),
/// through the storage primitives: the command row and the data row of
/// `new` (over `previous`, kept in history), with the index entries it
/// wrote, which are not the engine's (none, or those it copied).
async fn foreign_write(
    engine: &Engine,
    previous: Option<&DataItem>,
    new: &DataItem,
    entries: Vec<IndexEntry>,
) {
    let write = ApplyWrite {
        command: CommandWrite::Insert(Box::new(new.command(CommandStatus::Finished, None))),
        data: new.clone(),
        expected_data_version: previous.map_or(0, |p| p.version),
        history: previous.cloned(),
        idempotency: None,
        indexes: entries,
    };
    engine
        .storage()
        .apply(std::slice::from_ref(&write))
        .await
        .expect("another program's write");
}

/// Reads `lookup` until it lists exactly `expected`, checking on every read
/// that each item listed has the status it was looked up by.
async fn lists_only_matching(engine: &Engine, status: &str, expected: &[String]) {
    let lookup = IndexLookup::new("orders-by-status", PK_A).value(status);
    let deadline = Instant::now() + INDEX_LAG;
    loop {
        let items = all_pages(engine, &lookup, ListQuery::new().limit(2), "shop-a").await;
        for item in &items {
            assert_eq!(
                item.field("attributes.status"),
                Some(json!(status)),
                "{} listed under '{status}' at version {}: {:?}",
                item.sk,
                item.version,
                item.attributes
            );
        }
        let found: Vec<String> = items.iter().map(|i| i.sk.to_string()).collect();
        if found == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "'{status}': found {found:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Rows another program wrote with index entries that are not the
/// engine's: an order it moved to `delivered` keeping the `shipped` entry
/// it copied, and orders it created without entries. An index page never
/// lists an item under an entry its values do not give; the stale entry is
/// repaired by the read that finds it, a single entity by
/// [`Engine::repair_indexes`], a partition by [`Engine::reindex`]; a
/// repair is conditioned on the data version it was computed from.
pub async fn index_entries_of_other_writers_are_checked_and_repaired(factory: &dyn StorageFactory) {
    let engine = builder(factory).await.index(by_status()).build();
    let a = ctx("shop-a");
    for n in 1..=2 {
        engine
            .publish_sync(cmd(PK_A, &sk(n), order(n, "shipped", "c")), &a)
            .await
            .expect("order");
    }
    lists_only_matching(&engine, "shipped", &[sk(1), sk(2)]).await;

    // Order 1 moved to delivered, with the entries of version 1 copied.
    let v1 = engine
        .get_item(&EntityKey::new(PK_A, sk(1)), &a)
        .await
        .expect("read")
        .expect("order 1");
    let copied = by_status().entry(&v1).expect("entry").into_iter().collect();
    let mut v2 = v1.clone();
    v2.version = 2;
    v2.attributes = order(1, "delivered", "c").into();
    foreign_write(&engine, Some(&v1), &v2, copied).await;
    // Orders 3 and 4 created delivered, without entries.
    let created = |n: u32| {
        DataItem::builder(PK_A, sk(n))
            .entity_type("ORDER")
            .attributes(order(n, "delivered", "c"))
            .build()
    };
    for n in [3, 4] {
        foreign_write(&engine, None, &created(n), Vec::new()).await;
    }

    // Never listed under the entry it no longer matches; the read that
    // found it there repaired it.
    lists_only_matching(&engine, "shipped", &[sk(2)]).await;
    lists_only_matching(&engine, "delivered", &[sk(1)]).await;

    // One entity repaired: its current version.
    let version = engine
        .repair_indexes(&EntityKey::new(PK_A, sk(3)))
        .await
        .expect("repair");
    assert_eq!(version, Some(1));
    lists_only_matching(&engine, "delivered", &[sk(1), sk(3)]).await;
    assert_eq!(
        engine
            .repair_indexes(&EntityKey::new(PK_A, "ORDER#none"))
            .await
            .expect("nothing to repair"),
        None
    );

    // The backfill of the partition: every data row, once.
    let done = engine.reindex(PK_A, &a).await.expect("reindex");
    assert_eq!((done.rewritten, done.unreadable), (4, 0));
    lists_only_matching(&engine, "delivered", &[sk(1), sk(3), sk(4)]).await;
    lists_only_matching(&engine, "shipped", &[sk(2)]).await;
    let error = engine
        .reindex(PK_B, &a)
        .await
        .expect_err("another tenant's partition");
    assert!(matches!(error, Error::TenantViolation { .. }), "{error}");

    // The primitive is conditioned on the data version: entries computed
    // from version 1 never replace those of version 2.
    let names = vec!["orders-by-status".to_owned()];
    let stale = by_status()
        .entry(&v1)
        .expect("entry")
        .into_iter()
        .collect::<Vec<_>>();
    let error = engine
        .storage()
        .put_index_entries(&v1.key(), 1, &names, &stale)
        .await
        .expect_err("a stale version");
    assert!(
        matches!(error, Error::Conflict { actual: Some(2), .. }),
        "{error}"
    );
    let error = engine
        .storage()
        .put_index_entries(&EntityKey::new(PK_A, "ORDER#none"), 1, &names, &[])
        .await
        .expect_err("no data row");
    assert!(matches!(error, Error::Conflict { actual: None, .. }), "{error}");
    lists_only_matching(&engine, "shipped", &[sk(2)]).await;
    lists_only_matching(&engine, "delivered", &[sk(1), sk(3), sk(4)]).await;

    // Our next write of a repaired row keeps it where it belongs.
    let v2 = engine
        .get_item(&EntityKey::new(PK_A, sk(1)), &a)
        .await
        .expect("read")
        .expect("order 1");
    engine
        .publish_sync(cmd_at(PK_A, &sk(1), v2.version, order(1, "shipped", "c")), &a)
        .await
        .expect("back to shipped");
    lists_only_matching(&engine, "shipped", &[sk(1), sk(2)]).await;
    lists_only_matching(&engine, "delivered", &[sk(3), sk(4)]).await;
}
