//! Workload 9, allocations: heap allocations per operation on the
//! in-memory engine (`cqrs_memory::InMemory::engine().build()`, no
//! handler), and on the Rust peer, cqrs-es 0.5, for comparison.
//!
//! Counted by a counting global allocator around `std::alloc::System`
//! (`cqrs_benches::counting`): every `alloc`, `alloc_zeroed` and `realloc`
//! is one allocation of the size asked for (a `realloc` of its new size),
//! as dhat counts them; frees are not counted. Only the calls are counted:
//! the inputs (commands, keys, queries) are built before the counting
//! starts, the outputs dropped after it ends (the `list_items` pages
//! inside it: a drop allocates nothing). The cost of building an update
//! command is its own row.
//!
//! Single-threaded (`current_thread` Tokio runtime). Each operation runs
//! on `WARMUP` (1,000) orders first, uncounted, then on `N` more, counted,
//! and the totals are divided by `N` (10,000; `CQRS_BENCH_ITERATIONS`).
//! Orders are the `lifecycle` workload's (`peer_orders`): pk
//! `TENANT#shop-a`, sk `ORDER#ORD-000042`, customer, 1-2 lines, address,
//! payment, totals, status. The operations, in this order, on the same
//! engine, each order going through every step:
//!
//! 1. `publish_sync`, create (version 1);
//! 2. `publish_sync`, update: the full new state at
//!    `ExpectedVersion::Exactly(1)`, built from the item the create returned
//!    with `CommandInput::update_of(&item)` and the status set (version 2);
//! 3. `get_item` of the order; then again, reading its status as a
//!    `Value` (`item.attributes["status"]`, which parses the attributes);
//! 4. `list_items`: the first page of 20 orders of the partition
//!    (`sk` begins with `ORDER#`), which holds every order;
//! 5. `publish_partial_update_sync`: `{"status": "processing"}` at version 2;
//! 6. `publish_async` of the full new state at version 3, then
//!    `Engine::wait_idle` (the in-process pipeline applies it): counted together;
//! 7. the same orders as the caller's own struct (`OrderState`), on a
//!    second engine: `publish_sync_typed` create, typed update (the
//!    `Typed<OrderState>` the create returned, `Typed::update`, status set,
//!    `publish_sync_typed`), `get_typed`, `list_typed` (a page of 20);
//! 8. cqrs-es 0.5, `CqrsFramework::execute` on the peer's `QuietMemStore`
//!    (its `MemStore` without the `println!`s), no query: `Create`, then
//!    `Confirm` (load of the one event, replay, one new event).
//!
//! Growth of the stores' tables is in the counts, amortized over the run.
//!
//! `cargo bench -p cqrs-benches --bench allocations`
//!
//! Instructions per operation: each counted loop is also a Callgrind dump
//! of its own (`cqrs_benches::callgrind`, labelled with the operation);
//! `benches/callgrind.sh allocations` runs the bench under Callgrind twice
//! and prints them (the counting allocator is on in those loops: its few
//! instructions per allocation are in the counts).

#[allow(dead_code)]
#[path = "../src/backends.rs"]
mod backends;
mod peer_orders;

use cqrs_benches::counting::{set_counting, Counting};
use cqrs_benches::window::{measure, Measured, Window};
use cqrs_core::{
    CommandInput, CommandService, CommandServiceExt, DataItem, DataService, DataServiceExt, EntityKey,
    ExpectedVersion, InvocationContext, ListQuery, PartialUpdate, SkCondition,
};
use cqrs_es::CqrsFramework;
use peer_orders::{
    create_command, order_attributes, order_code, order_sk, order_state, Order, OrderCommand, OrderState,
    QuietMemStore, Status, PK,
};
use serde_json::{json, Value};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Counted operations of each kind, unless `CQRS_BENCH_ITERATIONS` says otherwise.
const ITERATIONS: usize = 10_000;
/// Uncounted operations of each kind before the counted ones.
const WARMUP: usize = 1_000;
/// The page size of `list_items`.
const PAGE: usize = 20;

fn iterations() -> usize {
    std::env::var("CQRS_BENCH_ITERATIONS")
        .ok()
        .map(|n| n.parse().expect("CQRS_BENCH_ITERATIONS: a number"))
        .unwrap_or(ITERATIONS)
        .max(1)
}

/// The new state of an order: `item`'s attributes with `status` set. The
/// only code here that reads an item's attributes (whatever their type,
/// as long as it derefs to a `Value`).
fn with_status(item: &DataItem, status: &str) -> Value {
    let mut attributes = Value::clone(&item.attributes);
    attributes["status"] = Value::from(status);
    attributes
}

/// The full new state of `item` with `status`, at its version.
fn update_command(item: &DataItem, status: &str) -> CommandInput {
    CommandInput::update_of(item).attributes(with_status(item, status))
}

/// A row of the table: the operation and what one costs.
fn row(operation: &str, m: &Measured) -> Vec<String> {
    vec![
        operation.to_owned(),
        format!("{:.1}", m.calls_per_op()),
        format!("{:.1}", m.reallocs_per_op()),
        format!("{:.0}", m.bytes_per_op()),
    ]
}

async fn run(n: usize) -> Vec<Vec<String>> {
    let orders = WARMUP + n;
    let engine = cqrs_memory::InMemory::engine().build();
    let ctx = InvocationContext::new("shop-a", "bench");
    let (engine, ctx) = (&engine, &ctx);
    let mut rows = Vec::new();

    // 1. Create.
    let creates = (0..orders)
        .map(|i| CommandInput::new(PK, order_sk(i)).attributes(order_attributes(i)))
        .collect();
    let (m, items) = measure(
        "publish_sync create",
        WARMUP,
        true,
        creates,
        |command| async move {
            engine
                .publish_sync(command, ctx)
                .await
                .expect("create")
                .into_item()
        },
    )
    .await;
    rows.push(row("`publish_sync`, create", &m));

    // 2. Update: the full new state. Building the command is the caller's.
    let mut updates = Vec::with_capacity(orders);
    for item in &items[..WARMUP] {
        updates.push(update_command(item, "confirmed"));
    }
    set_counting(true);
    let window = Window::open("build update command");
    for item in &items[WARMUP..] {
        updates.push(update_command(item, "confirmed"));
    }
    let building = window.close(n);
    set_counting(false);
    drop(items);
    let (m, items) = measure(
        "publish_sync update",
        WARMUP,
        true,
        updates,
        |command| async move {
            engine
                .publish_sync(command, ctx)
                .await
                .expect("update")
                .written()
                .expect("a new version")
        },
    )
    .await;
    assert!(items.iter().all(|item| item.version == 2));
    rows.push(row("`publish_sync`, update (full new state at `Exactly(1)`)", &m));
    rows.push(row(
        "(caller, not in the row above: `CommandInput::update_of(&item)` + new attributes)",
        &building,
    ));
    drop(items);

    // 3. Get.
    let keys = (0..orders).map(|i| EntityKey::new(PK, order_sk(i))).collect();
    let (m, _) = measure("get_item", WARMUP, true, keys, |key| async move {
        engine.get_item(&key, ctx).await.expect("get").expect("stored");
    })
    .await;
    rows.push(row("`get_item`", &m));
    let keys = (0..orders).map(|i| EntityKey::new(PK, order_sk(i))).collect();
    let (m, _) = measure("get_item + read status", WARMUP, true, keys, |key| async move {
        let item = engine.get_item(&key, ctx).await.expect("get").expect("stored");
        assert_eq!(item.attributes["status"], "confirmed");
    })
    .await;
    rows.push(row(
        "`get_item` + `item.attributes[\"status\"]` (parses the `Value`)",
        &m,
    ));

    // 4. A page of the partition.
    let queries = (0..orders)
        .map(|_| {
            ListQuery::new()
                .sk(SkCondition::BeginsWith("ORDER#".into()))
                .limit(PAGE)
        })
        .collect();
    let (m, _) = measure("list_items", WARMUP, true, queries, |query| async move {
        let page = engine.list_items(PK, query, ctx).await.expect("list");
        assert_eq!(page.items.len(), PAGE);
    })
    .await;
    rows.push(row(&format!("`list_items`, a page of {PAGE}"), &m));

    // 5. Partial update.
    let partials = (0..orders)
        .map(|i| {
            PartialUpdate::new(PK, order_sk(i), ExpectedVersion::Exactly(2))
                .attributes(json!({ "status": "processing" }))
        })
        .collect();
    let (m, items) = measure(
        "publish_partial_update_sync",
        WARMUP,
        true,
        partials,
        |update| async move {
            engine
                .publish_partial_update_sync(update, ctx)
                .await
                .expect("partial update")
                .written()
                .expect("a new version")
        },
    )
    .await;
    assert!(items.iter().all(|item| item.version == 3));
    rows.push(row("`publish_partial_update_sync`", &m));

    // 6. Async publish, applied by the in-process pipeline.
    let updates: Vec<_> = items.iter().map(|item| update_command(item, "shipped")).collect();
    drop(items);
    let (m, _) = measure(
        "publish_async + wait_idle",
        WARMUP,
        true,
        updates,
        |command| async move {
            engine
                .publish_async(command, ctx)
                .await
                .expect("async publish")
                .written()
                .expect("a new version");
            engine.wait_idle().await;
        },
    )
    .await;
    rows.push(row(
        "`publish_async` + pipeline apply (`wait_idle`), full new state",
        &m,
    ));
    for i in [0, orders - 1] {
        let item = engine
            .get_item(&EntityKey::new(PK, order_sk(i)), ctx)
            .await
            .expect("get")
            .expect("stored");
        assert_eq!(item.version, 4);
        assert_eq!(item.field("attributes.status"), Some(Value::from("shipped")));
    }

    // 7. Typed orders.
    rows.extend(typed_rows(n).await);

    // 8. The peer.
    let cqrs = CqrsFramework::new(QuietMemStore::<Order>::default(), vec![], ());
    let cqrs = &cqrs;
    let creates = (0..orders).map(|i| (order_code(i), create_command(i))).collect();
    let (m, _) = measure(
        "cqrs-es create",
        WARMUP,
        true,
        creates,
        |(id, command)| async move {
            cqrs.execute(&id, command).await.expect("create");
        },
    )
    .await;
    rows.push(row("cqrs-es 0.5 `execute`, `Create`", &m));
    let confirms = (0..orders)
        .map(|i| (order_code(i), OrderCommand::Confirm))
        .collect();
    let (m, _) = measure(
        "cqrs-es update",
        WARMUP,
        true,
        confirms,
        |(id, command)| async move {
            cqrs.execute(&id, command).await.expect("confirm");
        },
    )
    .await;
    rows.push(row(
        "cqrs-es 0.5 `execute`, `Confirm` (1 event loaded and replayed)",
        &m,
    ));
    rows
}

/// The rows of typed orders (`OrderState`), on an engine of their own.
async fn typed_rows(n: usize) -> Vec<Vec<String>> {
    let orders = WARMUP + n;
    let engine = cqrs_memory::InMemory::engine().build();
    let ctx = InvocationContext::new("shop-a", "bench");
    let (engine, ctx) = (&engine, &ctx);
    let mut rows = Vec::new();

    let creates = (0..orders)
        .map(|i| (CommandInput::new(PK, order_sk(i)), order_state(i)))
        .collect();
    let (m, orders_created) = measure(
        "publish_sync_typed create",
        WARMUP,
        true,
        creates,
        |(command, order)| async move {
            engine
                .publish_sync_typed(command, order, ctx)
                .await
                .expect("create")
                .into_item()
        },
    )
    .await;
    rows.push(row(
        "typed: `publish_sync_typed`, create (serialization included)",
        &m,
    ));

    // The caller's step: the order the create returned, its status set.
    let step = |order: cqrs_core::Typed<OrderState>| {
        let (command, mut state) = order.update();
        state.status = Status::Confirmed;
        (command, state)
    };
    let mut orders_created = orders_created.into_iter();
    let mut updates: Vec<_> = orders_created.by_ref().take(WARMUP).map(step).collect();
    set_counting(true);
    let window = Window::open("typed build update");
    updates.extend(orders_created.map(step));
    let building = window.close(n);
    set_counting(false);
    let (m, updated) = measure(
        "publish_sync_typed update",
        WARMUP,
        true,
        updates,
        |(command, order)| async move {
            engine
                .publish_sync_typed(command, order, ctx)
                .await
                .expect("update")
                .written()
                .expect("a new version")
        },
    )
    .await;
    assert!(updated.iter().all(|order| order.item.version == 2));
    rows.push(row(
        "typed: `publish_sync_typed`, update (full new state at `Exactly(1)`)",
        &m,
    ));
    rows.push(row(
        "(caller, not in the row above: `Typed::update` + status set)",
        &building,
    ));
    drop(updated);

    let keys = (0..orders).map(|i| EntityKey::new(PK, order_sk(i))).collect();
    let (m, _) = measure("get_typed", WARMUP, true, keys, |key| async move {
        let order = engine
            .get_typed::<OrderState>(&key, ctx)
            .await
            .expect("get")
            .expect("stored");
        assert_eq!(order.attributes.status, Status::Confirmed);
    })
    .await;
    rows.push(row("typed: `get_typed`", &m));

    let queries = (0..orders)
        .map(|_| {
            ListQuery::new()
                .sk(SkCondition::BeginsWith("ORDER#".into()))
                .limit(PAGE)
        })
        .collect();
    let (m, _) = measure("list_typed", WARMUP, true, queries, |query| async move {
        let page = engine
            .list_typed::<OrderState>(PK, query, ctx)
            .await
            .expect("list");
        assert_eq!(page.items.len(), PAGE);
    })
    .await;
    rows.push(row(&format!("typed: `list_typed`, a page of {PAGE}"), &m));
    rows
}

fn main() {
    let n = iterations();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let rows = runtime.block_on(run(n));
    println!(
        "\n### Allocations per operation (in memory, one thread)\n\n\
         {n} operations of each kind counted after {WARMUP} uncounted; every `alloc` and `realloc` \
         is one allocation of the size asked for. Inputs built before counting, outputs dropped after.\n"
    );
    print!(
        "{}",
        backends::markdown_table(
            &[
                "operation",
                "allocations / op",
                "of which `realloc`",
                "bytes requested / op"
            ],
            &rows
        )
    );
}
