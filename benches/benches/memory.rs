//! Workload 6, memory: resident memory per stored item in `cqrs-memory`, for
//! 1,000,000 small items (`ITEMS` to change it), against the JSON size of
//! those items. Target: at most 2× the JSON size of the item.
//!
//! Each item is created with `publish_sync` through the engine (no handler),
//! so the store holds exactly what the framework writes for a new entity:
//! its command row (`sk@1`) and its data row; no history row (version 1).
//! Item *i*: pk `TENANT#shop-a`, sk `ITEM#{i:07}`, attributes
//! `{"sku":"SKU-{i:06}","qty":i%10,"price":9.99,"active":true}`.
//!
//! Measured: VmRSS of this process before, after the inserts and after
//! dropping the store; and, through a counting global allocator, the live
//! heap (bytes requested, and bytes of malloc chunks: `malloc_usable_size` +
//! the 8-byte chunk header of glibc). The JSON size of an item is the length
//! of `serde_json::to_vec` of the `DataItem` returned (what a client gets).
//!
//! Then where the bytes go: each heap part of a row measured by cloning it
//! under the counting allocator, each row's struct at its inline size, and
//! the rest (the table structures of `InMemory`) as the difference.
//!
//! `cargo bench -p cqrs-benches --bench memory` (`ITEMS=100000` for a quick run;
//! `CQRS_BENCH_TYPED=1` publishes each item as a struct of its own,
//! `StoredItem`, with `publish_sync_typed`: the same rows).

use std::alloc::{GlobalAlloc, Layout, System};
use std::mem::size_of;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use cqrs_core::{
    tenant_pk, CommandInput, CommandService, CommandServiceExt, DataItem, InvocationContext, Storage,
};
use cqrs_memory::InMemory;

// ---------------------------------------------------------------------------
// Counting allocator.

static REQUESTED: AtomicIsize = AtomicIsize::new(0);
static CHUNKS: AtomicIsize = AtomicIsize::new(0);
static COUNT: AtomicIsize = AtomicIsize::new(0);

extern "C" {
    /// glibc: the usable size of a block returned by `malloc`.
    fn malloc_usable_size(ptr: *mut std::ffi::c_void) -> usize;
    /// glibc: gives free memory back to the system.
    fn malloc_trim(pad: usize) -> std::ffi::c_int;
}

/// glibc's per-chunk header (`SIZE_SZ`): a chunk is its usable size + 8.
const CHUNK_HEADER: usize = 8;

struct Counting;

fn chunk_of(ptr: *mut u8) -> isize {
    // SAFETY: `ptr` was returned by the system allocator (malloc family) and is live.
    (unsafe { malloc_usable_size(ptr.cast()) } + CHUNK_HEADER) as isize
}

fn record(ptr: *mut u8, size: usize, sign: isize) {
    if !ptr.is_null() {
        REQUESTED.fetch_add(sign * size as isize, Ordering::Relaxed);
        CHUNKS.fetch_add(sign * chunk_of(ptr), Ordering::Relaxed);
        COUNT.fetch_add(sign, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded to `System` unchanged; only counters are kept.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = System.alloc(layout);
        record(ptr, layout.size(), 1);
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = System.alloc_zeroed(layout);
        record(ptr, layout.size(), 1);
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        record(ptr, layout.size(), -1);
        System.dealloc(ptr, layout);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old_chunk = chunk_of(ptr);
        let new = System.realloc(ptr, layout, new_size);
        if !new.is_null() {
            REQUESTED.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
            CHUNKS.fetch_add(chunk_of(new) - old_chunk, Ordering::Relaxed);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Live heap: bytes requested, bytes of malloc chunks, allocations.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Heap {
    requested: isize,
    chunks: isize,
    count: isize,
}

impl Heap {
    fn now() -> Self {
        Self {
            requested: REQUESTED.load(Ordering::Relaxed),
            chunks: CHUNKS.load(Ordering::Relaxed),
            count: COUNT.load(Ordering::Relaxed),
        }
    }

    fn since(self, before: Heap) -> Heap {
        Heap {
            requested: self.requested - before.requested,
            chunks: self.chunks - before.chunks,
            count: self.count - before.count,
        }
    }

    fn per(self, n: usize) -> (f64, f64, f64) {
        let n = n as f64;
        (
            self.requested as f64 / n,
            self.chunks as f64 / n,
            self.count as f64 / n,
        )
    }
}

/// The heap `make` leaves allocated (what the value it returns holds).
fn heap_of<T>(make: impl FnOnce() -> T) -> Heap {
    let before = Heap::now();
    let value = make();
    let held = Heap::now().since(before);
    drop(value);
    held
}

// ---------------------------------------------------------------------------
// Process memory.

/// VmRSS of this process, in bytes.
fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS line");
    let kb: usize = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmRSS value");
    kb * 1024
}

fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

// ---------------------------------------------------------------------------
// The workload.

const TENANT: &str = "shop-a";

fn sk(i: usize) -> String {
    format!("ITEM#{i:07}")
}

fn attributes(i: usize) -> serde_json::Value {
    serde_json::json!({ "sku": format!("SKU-{i:06}"), "qty": i % 10, "price": 9.99, "active": true })
}

/// The attributes of item `i` as a struct of its own (`CQRS_BENCH_TYPED=1`).
#[derive(serde::Serialize)]
struct StoredItem {
    sku: String,
    qty: usize,
    price: f64,
    active: bool,
}

fn stored_item(i: usize) -> StoredItem {
    StoredItem {
        sku: format!("SKU-{i:06}"),
        qty: i % 10,
        price: 9.99,
        active: true,
    }
}

fn typed() -> bool {
    std::env::var("CQRS_BENCH_TYPED").is_ok_and(|v| v == "1")
}

/// What the inserts measured.
struct Measured {
    items: usize,
    insert_secs: f64,
    rss_before: usize,
    rss_after: usize,
    rss_dropped: usize,
    heap: Heap,
    item_json: usize,
    attributes_json: usize,
    command_json: usize,
    sample_data: DataItem,
}

async fn insert(items: usize) -> Measured {
    let ctx = InvocationContext::new(TENANT, "user-1");
    let pk = tenant_pk(TENANT);
    let rss_before = rss();
    let heap_before = Heap::now();
    let store = InMemory::new();
    let engine = cqrs_core::Engine::builder(Arc::new(store.clone())).build();

    let started = Instant::now();
    let (mut item_json, mut attributes_json) = (0, 0);
    let mut sample_data = None;
    for i in 0..items {
        let command = CommandInput::new(&pk, sk(i));
        let item = if typed() {
            let synced = engine.publish_sync_typed(command, stored_item(i), &ctx).await;
            synced.expect("publish").into_item().item
        } else {
            let command = command.attributes(attributes(i));
            engine
                .publish_sync(command, &ctx)
                .await
                .expect("publish")
                .into_item()
        };
        item_json += serde_json::to_vec(&item).expect("json").len();
        attributes_json += serde_json::to_vec(&item.attributes).expect("json").len();
        if i == items / 2 {
            sample_data = Some(item);
        }
    }
    let insert_secs = started.elapsed().as_secs_f64();
    let sample_data = sample_data.expect("sample");
    let sample_command = store
        .get_command(&sample_data.key(), 1)
        .await
        .expect("read")
        .expect("command row");
    let command_json = serde_json::to_vec(&sample_command).expect("json").len();
    assert_eq!(store.data_len(), items);

    // What the store holds: everything allocated since `heap_before` that is
    // still live, the two sample rows (cloned out) excepted.
    let samples = heap_of(|| (sample_data.clone(), sample_command.clone()));
    let heap = Heap::now().since(heap_before).since(samples);
    let rss_after = rss();
    drop(engine);
    drop(store);
    // SAFETY: plain glibc call, no pointers involved.
    unsafe { malloc_trim(0) };
    let rss_dropped = rss();
    Measured {
        items,
        insert_secs,
        rss_before,
        rss_after,
        rss_dropped,
        heap,
        item_json: item_json / items,
        attributes_json: attributes_json / items,
        command_json,
        sample_data,
    }
}

/// One line of the breakdown: what, and its requested / chunk bytes per item.
struct Part {
    what: String,
    heap: (f64, f64, f64),
}

/// The heap of each part of an item's rows and of the table structures around them.
///
/// The store keeps one entry per entity: its data row (a `DataItem`, whose
/// strings are inline up to 23 bytes), its command row of version 1 as a
/// status (its content is the data row's) and the attributes' canonical
/// text, shared by both.
fn breakdown(m: &Measured) -> Vec<Part> {
    let d = &m.sample_data;
    let text = d.attributes.json().to_owned();
    let attributes = heap_of(|| std::sync::Arc::<str>::from(text.as_str()));
    let heap_strings: Vec<&str> = [
        ("pk", &d.pk),
        ("sk", &d.sk),
        ("code", &d.code),
        ("name", &d.name),
        ("type", &d.entity_type),
        ("createdBy", &d.created_by),
        ("updatedBy", &d.updated_by),
    ]
    .iter()
    .filter(|(_, s)| s.is_heap_allocated())
    .map(|(n, _)| *n)
    .collect();
    let inline = |bytes: usize| (bytes as f64, bytes as f64, 0.0);
    let mut parts = vec![
        Part {
            what: format!(
                "attributes: the canonical JSON text ({} bytes), one `Arc<str>` shared by the data and command rows",
                text.len()
            ),
            heap: attributes.per(1),
        },
        Part {
            what: format!(
                "data row: the `DataItem` struct (inline in the entity's entry; strings inline up to 23 bytes; \
                 on the heap here: {}; the request id is shared by every row of its request)",
                if heap_strings.is_empty() { "none".to_owned() } else { heap_strings.join(", ") }
            ),
            heap: inline(size_of::<DataItem>()),
        },
    ];
    let rows = parts.iter().fold((0.0, 0.0, 0.0), |a, p| {
        (a.0 + p.heap.0, a.1 + p.heap.1, a.2 + p.heap.2)
    });
    let (requested, chunks, count) = m.heap.per(m.items);
    parts.push(Part {
        what: "rest: the entity's entry around the data row (history and command vectors, the \
               command row as a status, index entries), the partition's tree nodes and spare \
               capacity (allocations holding inline rows counted here, their row bytes above)"
            .into(),
        heap: (requested - rows.0, chunks - rows.1, count - rows.2),
    });
    parts
}

fn main() {
    let items: usize = std::env::var("ITEMS")
        .ok()
        .map(|v| v.parse().expect("ITEMS is a number"))
        .unwrap_or(1_000_000)
        .max(1);
    // One thread: every allocation in glibc's main arena.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let m = runtime.block_on(insert(items));
    let parts = breakdown(&m);

    let rss_per_item = (m.rss_after - m.rss_before) as f64 / items as f64;
    let (requested, chunks, count) = m.heap.per(items);
    let ratio_item = rss_per_item / m.item_json as f64;
    let ratio_attributes = rss_per_item / m.attributes_json as f64;
    let verdict = if ratio_item <= 2.0 { "met" } else { "missed" };

    println!(
        "\n### Memory: resident memory per item in `cqrs-memory`\n\n\
         {items} items created with `{}` (engine, no handler) into one `InMemory`; the store \
         holds per item its command row (`sk@1`) and its data row (no history: every item is at \
         version 1). RSS: VmRSS of the process; heap: live allocations by a counting allocator \
         (requested bytes; malloc chunks = `malloc_usable_size` + 8 B header). Insert time: {:.2} s \
         ({:.0} items/s).\n",
        if typed() {
            "publish_sync_typed"
        } else {
            "publish_sync"
        },
        m.insert_secs,
        items as f64 / m.insert_secs
    );
    let table = |headers: &[&str], rows: Vec<Vec<String>>| {
        let mut out = format!("| {} |\n|{}\n", headers.join(" | "), "---|".repeat(headers.len()));
        for row in rows {
            out.push_str(&format!("| {} |\n", row.join(" | ")));
        }
        out
    };
    print!(
        "{}",
        table(
            &[
                "items",
                "RSS before",
                "RSS after",
                "RSS after drop + `malloc_trim`",
                "RSS / item",
                "heap chunks / item",
                "heap requested / item",
                "allocations / item",
            ],
            vec![vec![
                items.to_string(),
                mib(m.rss_before),
                mib(m.rss_after),
                mib(m.rss_dropped),
                format!("{rss_per_item:.0} B"),
                format!("{chunks:.0} B"),
                format!("{requested:.0} B"),
                format!("{count:.1}"),
            ]],
        )
    );
    println!();
    print!(
        "{}",
        table(
            &["JSON of", "bytes / item", "RSS / item ÷ it", "target ≤ 2×"],
            vec![
                vec![
                    "the data item (`DataItem`, as a client gets it)".into(),
                    m.item_json.to_string(),
                    format!("{ratio_item:.1}×"),
                    verdict.into(),
                ],
                vec![
                    "its attributes only".into(),
                    m.attributes_json.to_string(),
                    format!("{ratio_attributes:.1}×"),
                    "(for reference)".into(),
                ],
                vec![
                    "data item + command row (both rows stored)".into(),
                    (m.item_json + m.command_json).to_string(),
                    format!("{:.1}×", rss_per_item / (m.item_json + m.command_json) as f64),
                    "(for reference)".into(),
                ],
            ],
        )
    );

    println!(
        "\n### Where the bytes of one item go\n\n\
         Each heap part of a row measured by cloning it under the counting allocator (malloc chunk: \
         what glibc uses for it, at least 32 B); each row's struct counted at its inline size; the \
         rest is the measured live heap of the store minus the rows.\n"
    );
    let mut rows: Vec<Vec<String>> = parts
        .iter()
        .map(|p| {
            vec![
                p.what.clone(),
                format!("{:.0}", p.heap.0),
                format!("{:.0}", p.heap.1),
                format!("{:.1}", p.heap.2),
            ]
        })
        .collect();
    rows.push(vec![
        "**measured: live heap of the store** (sum of the above)".into(),
        format!("{requested:.0}"),
        format!("{chunks:.0}"),
        format!("{count:.1}"),
    ]);
    rows.push(vec![
        "measured: RSS growth".into(),
        String::new(),
        format!("{rss_per_item:.0}"),
        String::new(),
    ]);
    print!(
        "{}",
        table(
            &[
                "part",
                "requested B / item",
                "malloc chunk B / item",
                "allocations / item"
            ],
            rows
        )
    );
}
