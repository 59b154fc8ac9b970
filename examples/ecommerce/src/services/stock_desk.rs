//! The stock desk: group commit of a tenant's stock changes.
//!
//! Every change to stock made through one desk — reserve, release, deduct,
//! set — is queued per tenant. The first caller that finds its tenant's
//! queue idle spawns a leader task; the leader drains the queue in batches
//! until it is empty, then ends. For each batch it reads the inventory
//! records the batch touches (once; a record its previous batch committed
//! is not read again: the commit checks its version), decides every
//! operation in turn against the running counters (an order's lines all or
//! nothing), and writes the accepted ones in one all-or-nothing commit: each
//! inventory record once, plus one reservation entity per order. Each
//! caller awaits its own outcome on a oneshot channel.
//!
//! Within one process there are therefore no version conflicts on a hot
//! product: N orders cost about N / 24 commits instead of N commits, each
//! of them retried after every conflict. Across processes (replicas, a
//! stream consumer, a Lambda) a commit can still conflict; the leader then
//! reads again and decides the whole batch again, a bounded number of times
//! ([`MAX_ATTEMPTS`]).
//!
//! Durability: a caller is answered only after its batch committed (or
//! failed: then with the error, which the order handler's pipeline
//! retries). A caller that stops waiting (its future dropped: a handler's
//! timeout, a client gone) changes nothing for the others: the leader is a
//! task of its own and its work is idempotent per order, so whatever it
//! committed for the dropped caller is found by the retry.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use cqrs_core::{
    tenant_pk, CommandInput, DataItem, EntityKey, ExpectedVersion, InvocationContext, Published, RetryPolicy,
    Services, Synced,
};
use tokio::sync::oneshot;

use super::inventory::{ReserveOutcome, SetInventory, MAX_ATTEMPTS};
use crate::domain::{
    inventory_sk, product_sk, reservation_sk, InventoryAttributes, ReservationAttributes, ReservationState,
    Shortfall,
};
use crate::error::{ShopError, ShopResult};

/// Most commands in one commit: a transaction holds at most 100 rows, and a
/// command writes up to 4 of them (command, data, history, and on DynamoDB
/// with a TTL on superseded commands the expiry of the previous command row).
pub const MAX_COMMANDS_PER_COMMIT: usize = 25;

/// The user recorded on a commit that carries the changes of several callers.
pub const DESK_USER: &str = "stock-desk";

/// Waits after a commit conflicted with another process: a random time
/// below 4 ms, 8 ms, ... 128 ms.
fn contended() -> RetryPolicy {
    RetryPolicy {
        max_attempts: MAX_ATTEMPTS,
        initial_backoff: Duration::from_millis(4),
        max_backoff: Duration::from_millis(128),
    }
}

/// A change to stock.
#[derive(Debug, Clone)]
pub(super) enum Op {
    /// Set a product's quantity on hand (creates its record).
    Set {
        product_code: String,
        request: SetInventory,
    },
    /// Reserve units per product for an order, all or nothing.
    Reserve {
        order_code: String,
        units: BTreeMap<String, i64>,
    },
    /// End an order's reservation.
    Settle { order_code: String, end: End },
}

/// How a reservation ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    /// Given back: `reservedQuantity` goes down.
    Release,
    /// Shipped: `reservedQuantity` and `quantity` go down.
    Deduct,
}

/// What an operation did.
#[derive(Debug)]
pub(super) enum Done {
    /// The inventory record after the commit that set it.
    Set(Box<DataItem>),
    /// How the reservation went.
    Reserve(ReserveOutcome),
    /// Settled (or there was nothing to settle).
    Settled,
}

struct Queued {
    op: Op,
    ctx: InvocationContext,
    reply: oneshot::Sender<ShopResult<Done>>,
}

#[derive(Default)]
struct TenantQueue {
    pending: VecDeque<Queued>,
    /// Whether a leader task is draining this queue.
    leading: bool,
}

/// The queue of the stock changes of a process, per tenant: the first
/// caller that finds its tenant's queue idle spawns a leader task, which
/// decides the queued changes in batches on the counters it read, commits
/// each batch at once (the inventory records plus one reservation entity
/// per order), answers every caller, and ends when the queue is empty
/// (`docs/hot-entities.md` in the repository explains the design).
///
/// Cheap to clone: clones share the queue. One desk per engine: the order
/// handler's and the HTTP API's inventory services share it
/// ([`InventoryService::with_desk`](super::InventoryService::with_desk)),
/// so that a restock waits for one batch, not for a storm of retries.
#[derive(Clone, Default)]
pub struct StockDesk {
    queues: Arc<Mutex<HashMap<String, TenantQueue>>>,
    counters: Arc<Counters>,
}

#[derive(Default)]
struct Counters {
    operations: AtomicU64,
    batches: AtomicU64,
    commits: AtomicU64,
    conflicts: AtomicU64,
}

/// What a [`StockDesk`] did since it was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeskStats {
    /// Operations answered.
    pub operations: u64,
    /// Batches decided (each answered its operations).
    pub batches: u64,
    /// Commits written (a batch that changes nothing writes none).
    pub commits: u64,
    /// Commits refused by a version conflict (another process wrote
    /// first, or a redelivered order's reservation existed), each followed
    /// by a new read and decision of the batch.
    pub conflicts: u64,
}

impl std::fmt::Debug for StockDesk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let queued: usize = self.lock().values().map(|q| q.pending.len()).sum();
        f.debug_struct("StockDesk")
            .field("queued", &queued)
            .field("stats", &self.stats())
            .finish()
    }
}

impl StockDesk {
    /// An empty desk.
    pub fn new() -> Self {
        Self::default()
    }

    /// What it did so far.
    pub fn stats(&self) -> DeskStats {
        let c = &self.counters;
        DeskStats {
            operations: c.operations.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            commits: c.commits.load(Ordering::Relaxed),
            conflicts: c.conflicts.load(Ordering::Relaxed),
        }
    }

    /// Whether nothing is queued and no leader task runs.
    pub fn is_idle(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, TenantQueue>> {
        // Nothing panics while holding the lock; a poisoned one is still consistent.
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `op` in the caller's tenant and waits for its outcome. The
    /// leader, if this call starts one, commits through `services`.
    pub(super) async fn submit(
        &self,
        services: &Services,
        op: Op,
        ctx: &InvocationContext,
    ) -> ShopResult<Done> {
        let (reply, answer) = oneshot::channel();
        let tenant = ctx.tenant_code.to_string();
        let lead = {
            let mut queues = self.lock();
            let queue = queues.entry(tenant.clone()).or_default();
            queue.pending.push_back(Queued {
                op,
                ctx: ctx.clone(),
                reply,
            });
            !std::mem::replace(&mut queue.leading, true)
        };
        if lead {
            let leader = Leader {
                desk: self.clone(),
                tenant,
                services: services.clone(),
                known: Known::default(),
                finished: false,
            };
            tokio::spawn(leader.run());
        }
        answer.await.unwrap_or_else(|_| {
            Err(ShopError::Core(cqrs_core::Error::backend(
                "the stock desk stopped before answering; retry",
                true,
            )))
        })
    }
}

/// The task that drains one tenant's queue.
struct Leader {
    desk: StockDesk,
    tenant: String,
    services: Services,
    /// What its earlier batches read and wrote.
    known: Known,
    /// Set when the queue was found empty and handed back.
    finished: bool,
}

/// What a leader knows from its earlier batches: the inventory records as
/// its last commit left them (or as it read them), and the products found
/// in the catalogue. A batch starts from them instead of reading them
/// again; every record it consults is then in its commit at the version
/// known — changed, or unchanged as a version check — so a record another
/// process changed meanwhile fails the commit, and the batch is read again
/// and decided again. A conflict or an error forgets everything.
#[derive(Default)]
struct Known {
    rows: HashMap<String, DataItem>,
    listed: HashSet<String>,
}

impl Known {
    fn forget(&mut self) {
        self.rows.clear();
        self.listed.clear();
    }
}

impl Leader {
    async fn run(mut self) {
        let mut deferred = Vec::new();
        while let Some(batch) = self.next_batch(std::mem::take(&mut deferred)) {
            deferred = run_batch(
                &self.services,
                &self.tenant,
                batch,
                &self.desk.counters,
                &mut self.known,
            )
            .await;
        }
    }

    /// The next batch, after putting `deferred` back at the head of the
    /// queue; `None` (and the queue handed back) when nothing is queued.
    fn next_batch(&mut self, deferred: Vec<Queued>) -> Option<Vec<Queued>> {
        let mut queues = self.desk.lock();
        let queue = queues.entry(self.tenant.clone()).or_default();
        for queued in deferred.into_iter().rev() {
            queue.pending.push_front(queued);
        }
        if queue.pending.is_empty() {
            queues.remove(&self.tenant);
            self.finished = true;
            return None;
        }
        // Stock settings first, wherever they are queued: every queued
        // operation is concurrent with the others (none was answered), so
        // any order is a valid one, and a restock then waits for the batch
        // in flight only, however many reservations are queued before it.
        let mut batch = Vec::with_capacity(MAX_COMMANDS_PER_COMMIT);
        let mut rest = VecDeque::with_capacity(queue.pending.len());
        for queued in queue.pending.drain(..) {
            if matches!(queued.op, Op::Set { .. }) && batch.len() < MAX_COMMANDS_PER_COMMIT {
                batch.push(queued);
            } else {
                rest.push_back(queued);
            }
        }
        let more = rest.len().min(MAX_COMMANDS_PER_COMMIT - batch.len());
        batch.extend(rest.drain(..more));
        queue.pending = rest;
        Some(batch)
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        if !self.finished {
            // The task panicked or its runtime shut down: the callers of its
            // batch got an error when their answers were dropped; the queued
            // ones get the same now, and the next caller leads again.
            self.desk.lock().remove(&self.tenant);
        }
    }
}

/// Decides and commits one batch, answering every caller in it; returns the
/// operations that did not fit in the commit, for the next batch.
async fn run_batch(
    services: &Services,
    tenant: &str,
    batch: Vec<Queued>,
    counters: &Counters,
    known: &mut Known,
) -> Vec<Queued> {
    let retry = contended();
    let mut attempt = 1;
    // The first attempt does not read the reservations of the orders to
    // reserve: they are created at version 0, so one that exists already (a
    // redelivery) fails the commit, and the next attempt reads them all.
    let mut read_all = false;
    let ops: Vec<&Op> = batch.iter().map(|q| &q.op).collect();
    let outcome = loop {
        let tried = attempt_batch(services, tenant, &batch, &ops, read_all, known).await;
        if tried.is_err() {
            known.forget();
        }
        match tried {
            Err(ShopError::Core(e)) if e.is_conflict() => {
                counters.conflicts.fetch_add(1, Ordering::Relaxed);
                if attempt >= retry.max_attempts {
                    tracing::warn!(
                        tenant,
                        attempts = attempt,
                        "stock batch still conflicting; giving up"
                    );
                    break Err(None);
                }
                let wait = retry.backoff(attempt).mul_f64(jitter());
                tracing::debug!(
                    tenant,
                    attempt,
                    ?wait,
                    "stock batch conflicted with another writer; deciding again"
                );
                tokio::time::sleep(wait).await;
                read_all = true;
                attempt += 1;
            }
            Err(e) => break Err(Some(e)),
            Ok(decided) => break Ok(decided),
        }
    };
    counters.batches.fetch_add(1, Ordering::Relaxed);
    match outcome {
        Ok(Decided {
            answers,
            deferred,
            committed,
        }) => {
            if committed {
                counters.commits.fetch_add(1, Ordering::Relaxed);
            }
            let answered = deferred.iter().filter(|d| !**d).count();
            counters.operations.fetch_add(answered as u64, Ordering::Relaxed);
            let mut later = Vec::new();
            for ((queued, answer), deferred) in batch.into_iter().zip(answers).zip(deferred) {
                if deferred {
                    later.push(queued);
                } else {
                    // A caller that stopped waiting is not an error.
                    let _ = queued.reply.send(answer);
                }
            }
            later
        }
        Err(error) => {
            counters
                .operations
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            for queued in batch {
                let answer = match &error {
                    None => Err(contended_for(&queued.op)),
                    Some(e) => Err(copy_error(e)),
                };
                let _ = queued.reply.send(answer);
            }
            Vec::new()
        }
    }
}

/// The error of an operation whose batch conflicted on every try.
fn contended_for(op: &Op) -> ShopError {
    match op {
        Op::Set { product_code, .. } => {
            ShopError::Conflict(format!("inventory of {product_code} is changing too fast, retry"))
        }
        Op::Reserve { order_code, .. } | Op::Settle { order_code, .. } => {
            ShopError::Conflict(format!("stock for order {order_code} is contended, retry"))
        }
    }
}

/// A batch's error, for each of its callers (errors are not `Clone`).
fn copy_error(error: &ShopError) -> ShopError {
    use cqrs_core::Error as E;
    match error {
        ShopError::InvalidInput(m) => ShopError::InvalidInput(m.clone()),
        ShopError::Unprocessable(m) => ShopError::Unprocessable(m.clone()),
        ShopError::InvalidTransition { from, to } => ShopError::InvalidTransition { from: *from, to: *to },
        ShopError::Forbidden(m) => ShopError::Forbidden(m.clone()),
        ShopError::NotFound(m) => ShopError::NotFound(m.clone()),
        ShopError::Conflict(m) => ShopError::Conflict(m.clone()),
        ShopError::ReadModelsUnavailable => ShopError::ReadModelsUnavailable,
        ShopError::Unreadable { what, pk, sk, reason } => ShopError::Unreadable {
            what: what.clone(),
            pk: pk.clone(),
            sk: sk.clone(),
            reason: reason.clone(),
        },
        ShopError::Core(e) => ShopError::Core(match e {
            E::NotFound { key } => E::NotFound { key: key.clone() },
            E::Conflict {
                key,
                expected,
                actual,
            } => E::Conflict {
                key: key.clone(),
                expected: *expected,
                actual: *actual,
            },
            E::ConflictRetriesExhausted {
                key,
                expected,
                actual,
                attempts,
            } => E::ConflictRetriesExhausted {
                key: key.clone(),
                expected: *expected,
                actual: *actual,
                attempts: *attempts,
            },
            E::InvalidInput { what, why } => E::InvalidInput {
                what: what.clone(),
                why: why.clone(),
            },
            E::TenantViolation {
                caller_tenant,
                key_tenant,
            } => E::TenantViolation {
                caller_tenant: caller_tenant.clone(),
                key_tenant: key_tenant.clone(),
            },
            E::TooLarge { what, size, limit } => E::TooLarge {
                what: what.clone(),
                size: *size,
                limit: *limit,
            },
            // Backend errors (and any other): the text, and whether a retry
            // may succeed — what the pipeline looks at.
            other => E::backend(other.to_string(), other.is_retryable()),
        }),
    }
}

/// A random number in `0.0..1.0` (for backoff jitter), from the thread's
/// generator: seeded by a deterministic simulation, random otherwise.
fn jitter() -> f64 {
    fastrand::f64()
}

/// A batch decided and committed.
struct Decided {
    /// Per operation (meaningless where deferred).
    answers: Vec<ShopResult<Done>>,
    /// Per operation: left for the next batch (it did not fit).
    deferred: Vec<bool>,
    /// Whether anything was written.
    committed: bool,
}

/// One try: read, decide, commit. A version conflict is returned as it is
/// (the caller tries again); any other error fails the whole batch.
async fn attempt_batch(
    services: &Services,
    tenant: &str,
    batch: &[Queued],
    ops: &[&Op],
    read_all: bool,
    known: &mut Known,
) -> ShopResult<Decided> {
    let pk = tenant_pk(tenant);
    let ctx = commit_context(tenant, batch);
    // What to read: the records of the products named, the catalogue
    // entries of the products whose stock is set (it must exist), and the
    // reservations of the orders to settle (and, after a conflict, of those
    // to reserve).
    let mut products = BTreeSet::new();
    let mut catalogue = BTreeSet::new();
    let mut orders = BTreeSet::new();
    for op in ops {
        match op {
            Op::Set { product_code, .. } => {
                products.insert(product_code.as_str());
                catalogue.insert(product_code.as_str());
            }
            Op::Reserve { order_code, units } => {
                products.extend(units.keys().map(String::as_str));
                if read_all {
                    orders.insert(order_code.as_str());
                }
            }
            Op::Settle { order_code, .. } => {
                orders.insert(order_code.as_str());
            }
        }
    }
    // What the leader knows already is not read again (see `Known`).
    let unknown_products: Vec<&str> = products
        .iter()
        .copied()
        .filter(|p| read_all || !known.rows.contains_key(*p))
        .collect();
    let unknown_listing: Vec<&str> = catalogue
        .iter()
        .copied()
        .filter(|p| read_all || !known.listed.contains(*p))
        .collect();
    let (rows, reservations, listing) = tokio::join!(
        read_all_of(
            services,
            &pk,
            unknown_products.iter().map(|p| inventory_sk(p)),
            &ctx
        ),
        read_all_of(services, &pk, orders.iter().map(|o| reservation_sk(o)), &ctx),
        read_all_of(services, &pk, unknown_listing.iter().map(|p| product_sk(p)), &ctx),
    );
    for (product, item) in unknown_listing.iter().zip(listing?) {
        if item.is_some() {
            known.listed.insert((*product).to_owned());
        }
    }
    let listed: BTreeSet<String> = catalogue
        .iter()
        .filter(|p| known.listed.contains(**p))
        .map(|p| (*p).to_owned())
        .collect();
    // Per product: the record, and whether it is known rather than read.
    let mut rows: BTreeMap<String, (Option<DataItem>, bool)> = unknown_products
        .iter()
        .map(|p| (*p).to_owned())
        .zip(rows?.into_iter().map(|item| (item, false)))
        .collect();
    for product in &products {
        if let (false, Some(item)) = (rows.contains_key(*product), known.rows.get(*product)) {
            rows.insert((*product).to_owned(), (Some(item.clone()), true));
        }
    }
    let reservations: BTreeMap<String, Option<DataItem>> = orders
        .iter()
        .map(|o| (*o).to_owned())
        .zip(reservations?)
        .collect();
    // The products of the reservations to settle, if not read yet.
    let mut missing = BTreeSet::new();
    for item in reservations.values().flatten() {
        if let Ok(reservation) = item.attributes_as::<ReservationAttributes>() {
            if reservation.state == ReservationState::Reserved {
                missing.extend(reservation.units.into_keys().filter(|p| !rows.contains_key(p)));
            }
        }
    }
    let missing: Vec<String> = missing
        .into_iter()
        .filter(|p| {
            let cached = known.rows.get(p).filter(|_| !read_all).cloned();
            match cached {
                Some(item) => {
                    rows.insert(p.clone(), (Some(item), true));
                    false
                }
                None => true,
            }
        })
        .collect();
    if !missing.is_empty() {
        let read = read_all_of(services, &pk, missing.iter().map(|p| inventory_sk(p)), &ctx).await?;
        rows.extend(
            missing
                .into_iter()
                .zip(read.into_iter().map(|item| (item, false))),
        );
    }

    let mut state = Batch::new(&pk, rows, reservations, listed);
    let mut answers = Vec::with_capacity(ops.len());
    let mut deferred = vec![false; ops.len()];
    // Stock is set first: every operation of a batch is concurrent with the
    // others (none was answered), so any order is a valid one, and a set at
    // the client's version must see the record as the client did.
    let mut order: Vec<usize> = (0..ops.len())
        .filter(|&i| matches!(ops[i], Op::Set { .. }))
        .collect();
    order.extend((0..ops.len()).filter(|&i| !matches!(ops[i], Op::Set { .. })));
    let mut decided: Vec<Option<Answer>> = (0..ops.len()).map(|_| None).collect();
    let mut full = false;
    for i in order {
        if full {
            deferred[i] = true;
            continue;
        }
        match state.decide(ops[i]) {
            Some(answer) => decided[i] = Some(answer),
            None => {
                // Did not fit: this one and every later one wait for the next
                // batch, in their order.
                full = true;
                deferred[i] = true;
            }
        }
    }
    let commands = state.commands()?;
    let published: Vec<(EntityKey, Published<DataItem>)> = if commands.is_empty() {
        Vec::new()
    } else {
        let keys: Vec<EntityKey> = commands.iter().map(CommandInput::key).collect();
        let published = services.commands.commit(commands, &ctx).await?;
        keys.into_iter()
            .zip(published.into_iter().map(Synced::into_published))
            .collect()
    };
    let committed = published.iter().any(|(_, p)| matches!(p, Published::Written(_)));
    // What the next batch may start from: the records as committed, or as read.
    for (product, row) in &state.rows {
        let committed = published
            .iter()
            .find(|(k, _)| *k == row.key)
            .map(|(_, p)| match p {
                Published::Written(item) | Published::Unchanged(item) => item.clone(),
            });
        match committed.or_else(|| row.read.clone()) {
            Some(item) => {
                known.rows.insert(product.clone(), item);
            }
            None => {
                known.rows.remove(product);
            }
        }
    }
    for answer in decided {
        answers.push(match answer {
            None => Err(ShopError::Conflict("deferred".into())),
            Some(Answer::Now(result)) => result,
            Some(Answer::Record(key)) => {
                let item = published
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, p)| match p {
                        Published::Written(item) | Published::Unchanged(item) => item.clone(),
                    })
                    .or_else(|| state.read_item(&key));
                item.map(|item| Done::Set(Box::new(item)))
                    .ok_or_else(|| ShopError::NotFound(format!("no inventory at {key}")))
            }
        });
    }
    Ok(Decided {
        answers,
        deferred,
        committed,
    })
}

/// The context a batch is committed with: its only caller's, or the desk's
/// when it carries the changes of several callers.
fn commit_context(tenant: &str, batch: &[Queued]) -> InvocationContext {
    match batch {
        [one] => one.ctx.clone(),
        _ => InvocationContext::new(tenant, DESK_USER).with_source(format!(
            "stock desk: {} operations of {} requests",
            batch.len(),
            batch
                .iter()
                .map(|q| q.ctx.request_id.as_str())
                .collect::<BTreeSet<_>>()
                .len()
        )),
    }
}

/// Reads the items of `sks` in the partition `pk`, concurrently.
async fn read_all_of(
    services: &Services,
    pk: &str,
    sks: impl Iterator<Item = String>,
    ctx: &InvocationContext,
) -> ShopResult<Vec<Option<DataItem>>> {
    let reads = sks.map(|sk| {
        let key = EntityKey::new(pk, sk);
        async move { services.data.get_item(&key, ctx).await }
    });
    Ok(join_all(reads).await.into_iter().collect::<Result<Vec<_>, _>>()?)
}

/// Runs the futures concurrently on this task and returns their outputs in
/// order (the reads are I/O: one task polls them all).
async fn join_all<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    use std::task::Poll;
    let mut futures: Vec<_> = futures.map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => done = false,
                }
            }
        }
        if done {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// What an operation answers once its batch committed.
enum Answer {
    /// This.
    Now(ShopResult<Done>),
    /// The inventory record at this key, as the commit left it.
    Record(EntityKey),
}

/// An inventory record as the batch has it.
struct Row {
    key: EntityKey,
    read: Option<DataItem>,
    /// `None`: no record (yet); `Err`: unreadable.
    attributes: Result<Option<InventoryAttributes>, String>,
    /// Known from an earlier batch, not read by this one.
    known: bool,
    /// Changed by an operation of this batch.
    changed: bool,
    /// In the commit: changed, or known and consulted (then committed
    /// unchanged, which checks its version).
    committed: bool,
}

/// An order's reservation as the batch has it.
struct Held {
    key: EntityKey,
    /// As read; `None` when absent or not read (then it is created at
    /// version 0, which fails the commit if it exists after all).
    read: Option<DataItem>,
    /// `None`: none (yet); `Err`: unreadable.
    attributes: Result<Option<ReservationAttributes>, String>,
    changed: bool,
}

/// Whether an operation's changes go into this batch's commit.
enum Room {
    Yes,
    /// Not with what the batch holds already: in the next batch.
    Later,
    /// Not even alone.
    Never(usize),
}

/// The running state of a batch: the records read, changed as the
/// operations are decided in turn.
struct Batch {
    pk: String,
    /// The products whose stock is set that are in the catalogue.
    listed: BTreeSet<String>,
    rows: BTreeMap<String, Row>,
    held: BTreeMap<String, Held>,
    /// Entities changed so far: the commands of the commit.
    changes: usize,
}

impl Batch {
    fn new(
        pk: &str,
        rows: BTreeMap<String, (Option<DataItem>, bool)>,
        reservations: BTreeMap<String, Option<DataItem>>,
        listed: BTreeSet<String>,
    ) -> Self {
        let rows = rows
            .into_iter()
            .map(|(product, (read, known))| {
                let row = Row {
                    key: EntityKey::new(pk, inventory_sk(&product)),
                    attributes: decode(read.as_ref(), || format!("inventory of {product}")),
                    read,
                    known,
                    changed: false,
                    committed: false,
                };
                (product, row)
            })
            .collect();
        let held = reservations
            .into_iter()
            .map(|(order, read)| {
                let held = Held {
                    key: EntityKey::new(pk, reservation_sk(&order)),
                    attributes: decode(read.as_ref(), || format!("reservation of {order}")),
                    read,
                    changed: false,
                };
                (order, held)
            })
            .collect();
        Self {
            pk: pk.to_owned(),
            listed,
            rows,
            held,
            changes: 0,
        }
    }

    /// Whether `more` more changed entities fit in the commit.
    fn room(&self, more: usize) -> Room {
        if more > MAX_COMMANDS_PER_COMMIT {
            Room::Never(more)
        } else if self.changes + more <= MAX_COMMANDS_PER_COMMIT {
            Room::Yes
        } else {
            Room::Later
        }
    }

    /// Decides `op` on the running state and applies it; `None` when its
    /// changes do not fit in this batch's commit (nothing applied).
    fn decide(&mut self, op: &Op) -> Option<Answer> {
        let answer = match op {
            Op::Set {
                product_code,
                request,
            } => self.set(product_code, request),
            Op::Reserve { order_code, units } => self.reserve(order_code, units),
            Op::Settle { order_code, end } => self.settle(order_code, *end),
        };
        match answer {
            Ok(answer) => Some(answer),
            Err(Room::Later) => None,
            Err(Room::Never(size)) => Some(Answer::Now(Err(ShopError::Core(cqrs_core::Error::TooLarge {
                what: "stock change (entities in one commit)".into(),
                size,
                limit: MAX_COMMANDS_PER_COMMIT,
            })))),
            Err(Room::Yes) => unreachable!("only refusals are errors"),
        }
    }

    /// The record of `product_code` (absent when it was not read: no
    /// operation names a product that is not read, so this is defensive).
    fn row(&mut self, product_code: &str) -> &mut Row {
        let pk = &self.pk;
        self.rows.entry(product_code.to_owned()).or_insert_with(|| Row {
            key: EntityKey::new(pk.as_str(), inventory_sk(product_code)),
            read: None,
            attributes: Ok(None),
            known: false,
            changed: false,
            committed: false,
        })
    }

    /// Marks `product_code`'s record changed with `attributes`.
    fn put_row(&mut self, product_code: &str, attributes: InventoryAttributes) {
        let row = self.row(product_code);
        row.attributes = Ok(Some(attributes));
        row.changed = true;
        if !std::mem::replace(&mut row.committed, true) {
            self.changes += 1;
        }
    }

    /// Puts a record a decision consulted into the commit, unchanged, when
    /// it was not read by this batch: its version is then checked.
    fn check_row(&mut self, product_code: &str) {
        let row = self.row(product_code);
        if row.known && !std::mem::replace(&mut row.committed, true) {
            self.changes += 1;
        }
    }

    /// Commands the records of `products` add to the commit: those not in
    /// it yet that will be changed, or (`check_only`) checked.
    fn rows_to_add<'a>(&self, products: impl Iterator<Item = &'a String>, check_only: bool) -> usize {
        products
            .filter(|p| match self.rows.get(p.as_str()) {
                Some(row) => !row.committed && (!check_only || row.known),
                None => !check_only,
            })
            .count()
    }

    /// Marks `order_code`'s reservation changed with `attributes`.
    fn put_held(&mut self, order_code: &str, attributes: ReservationAttributes) {
        let pk = &self.pk;
        let held = self.held.entry(order_code.to_owned()).or_insert_with(|| Held {
            key: EntityKey::new(pk.as_str(), reservation_sk(order_code)),
            read: None,
            attributes: Ok(None),
            changed: false,
        });
        held.attributes = Ok(Some(attributes));
        if !std::mem::replace(&mut held.changed, true) {
            self.changes += 1;
        }
    }

    fn set(&mut self, product_code: &str, request: &SetInventory) -> Result<Answer, Room> {
        if !self.listed.contains(product_code) {
            return Ok(Answer::Now(Err(ShopError::NotFound(format!(
                "product {product_code} not found"
            )))));
        }
        let row = self.row(product_code);
        let key = row.key.clone();
        let (known, committed) = (row.known, row.committed);
        let found = row.read.as_ref().map(|item| item.version);
        let decided = match &row.attributes {
            Err(why) => Err(unreadable(&key, why)),
            // The record as the client saw it: at that version, and not
            // changed by an earlier set of this batch.
            Ok(_)
                if request.version.is_some_and(|expected| {
                    let actual = if row.changed {
                        found.unwrap_or(0) + 1
                    } else {
                        found.unwrap_or(0)
                    };
                    actual != expected
                }) =>
            {
                Err(ShopError::Core(cqrs_core::Error::Conflict {
                    key: key.id(),
                    expected: ExpectedVersion::Exactly(request.version.unwrap_or(0)),
                    actual: if row.changed {
                        Some(found.unwrap_or(0) + 1)
                    } else {
                        found
                    },
                }))
            }
            Ok(None) => Ok(InventoryAttributes {
                product_code: product_code.to_owned(),
                quantity: request.quantity,
                reserved_quantity: 0,
                warehouse_code: request.warehouse_code.clone(),
                last_restocked_at: cqrs_core::clock::now(),
            }),
            Ok(Some(current)) if request.quantity < current.reserved_quantity => {
                Err(ShopError::Conflict(format!(
                    "quantity {} is below the {} units reserved for open orders",
                    request.quantity, current.reserved_quantity
                )))
            }
            Ok(Some(current)) => {
                let mut attributes = current.clone();
                attributes.quantity = request.quantity;
                attributes.warehouse_code = request.warehouse_code.clone();
                attributes.last_restocked_at = cqrs_core::clock::now();
                Ok(attributes)
            }
        };
        // A refusal decided on a record known from an earlier batch checks
        // its version in the commit.
        let more = usize::from(!committed && (decided.is_ok() || known));
        match self.room(more) {
            Room::Yes => {}
            refused => return Err(refused),
        }
        match decided {
            Ok(attributes) => {
                self.put_row(product_code, attributes);
                Ok(Answer::Record(key))
            }
            Err(refusal) => {
                self.check_row(product_code);
                Ok(Answer::Now(Err(refusal)))
            }
        }
    }

    fn reserve(&mut self, order_code: &str, units: &BTreeMap<String, i64>) -> Result<Answer, Room> {
        // Decided before: by an earlier delivery, or earlier in this batch.
        match self.held.get(order_code).map(|h| (&h.key, &h.attributes)) {
            Some((_, Ok(Some(attributes)))) => {
                return Ok(Answer::Now(Ok(Done::Reserve(outcome_of(attributes)))))
            }
            Some((key, Err(why))) => return Ok(Answer::Now(Err(unreadable(key, why)))),
            _ => {}
        }
        // The first line that does not fit, if any.
        let mut shortfall = None;
        let mut counters = Vec::with_capacity(units.len());
        for (product_code, &requested) in units {
            let row = self.row(product_code);
            let current = match &row.attributes {
                Ok(current) => current.clone(),
                Err(why) => return Ok(Answer::Now(Err(unreadable(&row.key, why)))),
            };
            let available = current.as_ref().map_or(0, InventoryAttributes::available);
            if available < requested {
                shortfall = Some(Shortfall {
                    product_code: product_code.clone(),
                    requested,
                    available,
                });
                break;
            }
            if let Some(mut attributes) = current {
                attributes.reserved_quantity += requested;
                counters.push((product_code, attributes));
            }
        }
        // A refusal decided on records known from an earlier batch checks
        // their versions in the commit.
        let more = 1 + self.rows_to_add(units.keys(), shortfall.is_some());
        match self.room(more) {
            Room::Yes => {}
            refused => return Err(refused),
        }
        let state = match shortfall {
            Some(_) => {
                for product_code in units.keys() {
                    self.check_row(product_code);
                }
                ReservationState::Failed
            }
            None => {
                for (product_code, attributes) in counters {
                    self.put_row(product_code, attributes);
                }
                ReservationState::Reserved
            }
        };
        let attributes = ReservationAttributes {
            order_code: order_code.to_owned(),
            units: units.clone(),
            state,
            shortfall,
        };
        let outcome = outcome_of(&attributes);
        self.put_held(order_code, attributes);
        Ok(Answer::Now(Ok(Done::Reserve(outcome))))
    }

    fn settle(&mut self, order_code: &str, end: End) -> Result<Answer, Room> {
        let (mut reservation, held_changed) = match self.held.get(order_code) {
            Some(Held {
                attributes: Ok(Some(reservation)),
                changed,
                ..
            }) if reservation.state == ReservationState::Reserved => (reservation.clone(), *changed),
            Some(Held {
                attributes: Err(why),
                key,
                ..
            }) => return Ok(Answer::Now(Err(unreadable(key, why)))),
            // Nothing held: never reserved, failed, or settled already.
            _ => return Ok(Answer::Now(Ok(Done::Settled))),
        };
        let mut counters = Vec::with_capacity(reservation.units.len());
        for (product_code, &units) in &reservation.units {
            let row = self.row(product_code);
            match &row.attributes {
                Ok(Some(attributes)) => {
                    let mut attributes = attributes.clone();
                    attributes.reserved_quantity -= units;
                    if end == End::Deduct {
                        attributes.quantity -= units;
                    }
                    counters.push((product_code.clone(), attributes));
                }
                // A record that disappeared holds nothing to give back.
                Ok(None) => {}
                Err(why) => return Ok(Answer::Now(Err(unreadable(&row.key, why)))),
            }
        }
        let more = usize::from(!held_changed) + self.rows_to_add(counters.iter().map(|(p, _)| p), false);
        match self.room(more) {
            Room::Yes => {}
            refused => return Err(refused),
        }
        for (product_code, attributes) in counters {
            self.put_row(&product_code, attributes);
        }
        reservation.state = match end {
            End::Release => ReservationState::Released,
            End::Deduct => ReservationState::Deducted,
        };
        self.put_held(order_code, reservation);
        Ok(Answer::Now(Ok(Done::Settled)))
    }

    /// The commands of the commit: every changed entity at the version read
    /// (0: created).
    fn commands(&self) -> ShopResult<Vec<CommandInput>> {
        let mut commands = Vec::with_capacity(self.changes);
        for (product_code, row) in &self.rows {
            if !row.committed {
                continue;
            }
            let command = match (&row.read, &row.attributes) {
                // Consulted, not changed: the record as known, which checks
                // its version and writes nothing.
                (Some(item), _) if !row.changed => CommandInput::update_of(item),
                (Some(item), Ok(Some(attributes))) => {
                    CommandInput::update_of(item).attributes_from(attributes)?
                }
                (None, Ok(Some(attributes))) => CommandInput::new(&row.key.pk, &row.key.sk)
                    .name(format!("Inventory {product_code}"))
                    .version(ExpectedVersion::NEW)
                    .attributes_from(attributes)?,
                _ => continue,
            };
            commands.push(command);
        }
        for (order_code, held) in &self.held {
            let (true, Ok(Some(attributes))) = (held.changed, &held.attributes) else {
                continue;
            };
            let command = match &held.read {
                Some(item) => CommandInput::update_of(item),
                None => CommandInput::new(&held.key.pk, &held.key.sk)
                    .name(format!("Reservation {order_code}"))
                    .version(ExpectedVersion::NEW),
            };
            commands.push(command.attributes_from(attributes)?);
        }
        Ok(commands)
    }

    /// The record at `key` as read (for a set whose commit left it out).
    fn read_item(&self, key: &EntityKey) -> Option<DataItem> {
        self.rows
            .values()
            .find(|r| r.key == *key)
            .and_then(|r| r.read.clone())
    }
}

/// The attributes of `item`, if any.
fn decode<T: serde::de::DeserializeOwned>(
    item: Option<&DataItem>,
    what: impl FnOnce() -> String,
) -> Result<Option<T>, String> {
    match item {
        None => Ok(None),
        Some(item) => item
            .attributes_as()
            .map(Some)
            .map_err(|e| format!("{} is unreadable: {e}", what())),
    }
}

/// What a reservation in `attributes` answers to its order's reserve.
fn outcome_of(attributes: &ReservationAttributes) -> ReserveOutcome {
    match (&attributes.state, &attributes.shortfall) {
        (ReservationState::Failed, Some(s)) => ReserveOutcome::Insufficient {
            product_code: s.product_code.clone(),
            requested: s.requested,
            available: s.available,
        },
        (ReservationState::Failed, None) => {
            let (product_code, requested) = attributes
                .units
                .iter()
                .next()
                .map_or((String::new(), 0), |(p, u)| (p.clone(), *u));
            ReserveOutcome::Insufficient {
                product_code,
                requested,
                available: 0,
            }
        }
        // Reserved now, or by an earlier delivery (and maybe ended since).
        _ => ReserveOutcome::Reserved,
    }
}

/// A stored inventory record or reservation that does not read (another
/// program wrote it): 409 `unreadable_row` over HTTP, a failure of the
/// order's handler in the pipeline (a retry reads the same row).
fn unreadable(key: &EntityKey, why: &str) -> ShopError {
    ShopError::Unreadable {
        what: "stock".to_owned(),
        pk: key.pk.to_string(),
        sk: key.sk.to_string(),
        reason: why.to_owned(),
    }
}
