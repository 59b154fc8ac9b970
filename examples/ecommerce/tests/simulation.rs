//! Deterministic simulation of the storefront: two API servers and two
//! stream consumers (the Lambda entry point's batch logic) run the shop's
//! real services and handlers over simulated storage and time, under
//! crashes at any storage call, lost answers, timeouts, outages, stalls
//! that cost leases, records delivered late or twice, and handlers that
//! hang, fail or panic — thousands of seeded schedules per run, each
//! followed by a calm period and a check of every invariant over the
//! tables (see `audit`).
//!
//! Replay a failing seed: `CQRS_SIM_SEED=<seed> cargo nextest run -p
//! ecommerce --test simulation simulated_schedules --no-capture` (prints
//! the schedule's trace). Long mode: `CQRS_SIM_SCHEDULES=100000`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cqrs_core::outbox::SENT_AT_ATTRIBUTE;
use cqrs_core::projection::{Change, MemoryTarget, MemoryTx, Projection, Projector};
use cqrs_core::regressions::{self, KEYED_RETRY_JUDGED_ON_MOVED_ENTITY, SYNC_PUBLISH_LEFT_TO_PUBLISHER};
use cqrs_core::testing::sim::{
    run_schedules, BatchOutcome, FaultyHandler, HandlerFaults, ProcessEnv, Schedules, Sim, SimConfig,
    SimStorage, SimStream, StorageFaults, StreamFaults, StreamRecord, World,
};
use cqrs_core::{
    tenant_pk, AsyncDispatch, BoxError, CommandService, CommandStatus, DataItem, EntityKey, Interest,
    InvocationContext, RangeQuery, SequenceRequest, SequenceService, SortOrder, Storage,
};
use cqrs_dynamodb::lambda::{handle_event_with, BatchOptions};
use cqrs_dynamodb::stream::MemoryLeases;
use cqrs_dynamodb::testing::sim::SimStreamSource;
use cqrs_dynamodb::StreamConsumer;
use ecommerce::domain::{
    Address, InventoryAttributes, OrderAttributes, OrderItem, OrderStatus, Reservation,
    ReservationAttributes, ReservationState,
};
use ecommerce::notify::{Notification, NotificationKind, OutboxNotifier};
use ecommerce::services::{access, NewOrder, NewProduct, SetInventory};
use ecommerce::shop::ShopConfig;
use ecommerce::{HandlerWrapper, Shop, ShopParts};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

const TENANTS: [&str; 2] = ["shop-a", "shop-b"];
/// Scarce stock, so that some reservations fail and alerts are raised.
const PRODUCTS: [(&str, i64); 2] = [("PRD-001", 7), ("PRD-002", 4)];
const PRICE: Decimal = Decimal::from_parts(1250, 0, 0, false, 2);
const APIS: [&str; 2] = ["api-1", "api-2"];
const CONSUMERS: [&str; 2] = ["consumer-1", "consumer-2"];
const CLIENTS: usize = 3;
const OPERATIONS_PER_CLIENT: usize = 3;
/// A client gives up waiting for an answer after this long (a lost answer).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);
/// Schedules per CI run.
const CI_SCHEDULES: u64 = 2_000;
/// At most this many schedules to find each reintroduced bug.
const BUG_BUDGET: u64 = 2_000;

// ---------------------------------------------------------------------------
// One schedule
// ---------------------------------------------------------------------------

/// What the schedule's callers were told: the ground truth the audit holds
/// the tables to. Lives outside every process (a crash loses none of it).
#[derive(Debug, Default)]
struct Ledger {
    /// Order requests: (tenant, request tag) -> what each try was answered.
    placed: BTreeMap<(String, String), Request>,
    /// Keyed status moves: (tenant, key) -> answers.
    moves: BTreeMap<(String, String), Vec<Answer>>,
    /// Reads that returned another tenant's order.
    cross_tenant_reads: Vec<String>,
}

#[derive(Debug, Default)]
struct Request {
    keyed: bool,
    answers: Vec<Answer>,
}

#[derive(Debug, Clone, PartialEq)]
enum Answer {
    Placed(String),
    Moved {
        version: u64,
    },
    Read {
        pk: String,
    },
    /// An error answer: its HTTP status and kind.
    Refused(u16, &'static str),
    /// No answer: the server crashed or the client timed out.
    Lost,
}

type SharedLedger = Arc<Mutex<Ledger>>;

fn ledger(ledger: &SharedLedger) -> std::sync::MutexGuard<'_, Ledger> {
    ledger.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A call a client sends an API server.
enum Call {
    Place {
        order: NewOrder,
        key: Option<String>,
    },
    Move {
        code: String,
        next: OrderStatus,
        key: String,
    },
    Get {
        code: String,
    },
}

struct Envelope {
    ctx: InvocationContext,
    call: Call,
    reply: oneshot::Sender<Answer>,
}

/// The API servers' inboxes, replaced at each restart.
type Inboxes = Arc<Mutex<BTreeMap<String, mpsc::UnboundedSender<Envelope>>>>;

/// Everything of one schedule that outlives its processes.
#[derive(Clone)]
struct Shared {
    storage: Arc<dyn Storage>,
    stream: Arc<SimStream>,
    /// The mail service: what the outbox relays sent, across processes.
    mail: Arc<OutboxNotifier>,
    inboxes: Inboxes,
    ledger: SharedLedger,
    storage_faults: StorageFaults,
    handler_faults: HandlerFaults,
    /// The projection's read model (another database: outlives processes).
    read_model: MemoryTarget,
    /// The embedded consumers' leases and checkpoints (a table).
    leases: Arc<MemoryLeases>,
    pipeline: Pipeline,
}

fn shop_config() -> ShopConfig {
    ShopConfig {
        dispatch: AsyncDispatch::External,
        handler_timeout: Duration::from_secs(1),
        recovery_grace: Duration::from_secs(5),
        publisher_lease: Duration::from_secs(1),
    }
}

/// The shop a process runs: its own storage client (faults, crashes), the
/// shared mail service, the projection into the shared read model, and
/// handlers that misbehave.
fn process_shop(shared: &Shared, env: &ProcessEnv) -> Shop {
    let storage: Arc<dyn Storage> = Arc::new(SimStorage::new(
        shared.storage.clone(),
        env,
        Some(shared.stream.clone()),
        shared.storage_faults.clone(),
    ));
    let world = env.world.clone();
    let faults = shared.handler_faults.clone();
    let wrap: HandlerWrapper =
        Arc::new(move |handler| Arc::new(FaultyHandler::new(handler, world.clone(), faults.clone())));
    let projector = Arc::new(Projector::new(
        UnitsOrdered,
        shared.read_model.clone(),
        storage.clone(),
    ));
    let parts = ShopParts {
        notifier: Some(shared.mail.clone()),
        handlers: vec![wrap(projector)],
        wrap_handler: Some(wrap),
        ..ShopParts::default()
    };
    Shop::with_parts(storage, shop_config(), parts)
}

/// Units ordered per product (cancelled orders out), and how often each
/// order version was applied: the read model whose exactly-once the audit
/// checks against the orders.
struct UnitsOrdered;

const UNITS_ORDERED: &str = "units-ordered";

#[async_trait::async_trait]
impl Projection<MemoryTx> for UnitsOrdered {
    type State = OrderAttributes;

    fn name(&self) -> &str {
        UNITS_ORDERED
    }

    fn interest(&self) -> Interest {
        Interest::SkPrefix("ORDER#".into())
    }

    async fn apply(&self, tx: &mut MemoryTx, change: &Change<OrderAttributes>) -> Result<(), BoxError> {
        let tenant = change.tenant().to_owned();
        let mut add = |table: &str, key: String, delta: i64| {
            let now = tx.get(table, &key).and_then(Value::as_i64).unwrap_or(0);
            tx.put(table, &key, (now + delta).into());
        };
        let old = change.old_state().map(|o| (o, -1));
        let new = change.new_state().map(|n| (n, 1));
        for (order, sign) in old.into_iter().chain(new) {
            for (product, units) in units_ordered(order) {
                add("units", format!("{tenant}/{product}"), sign * units);
            }
        }
        add(
            "applied",
            format!("{tenant}/{}@{}", change.key.sk, change.version),
            1,
        );
        Ok(())
    }
}

fn units_ordered(order: &OrderAttributes) -> BTreeMap<String, i64> {
    if order.status == OrderStatus::Cancelled {
        BTreeMap::new()
    } else {
        order.units_per_product()
    }
}

fn staff(tenant: &str) -> InvocationContext {
    InvocationContext::new(tenant, "staff").with_roles([access::STAFF])
}

fn customer(tenant: &str, n: usize) -> InvocationContext {
    InvocationContext::new(tenant, format!("customer-{n}")).with_roles([access::CUSTOMER])
}

/// Products and stock of both tenants, written before the schedule starts.
async fn seed_catalogue(storage: Arc<dyn Storage>) {
    let shop = Shop::new(storage);
    for tenant in TENANTS {
        let ctx = staff(tenant);
        for (code, stock) in PRODUCTS {
            let product = NewProduct {
                code: code.to_owned(),
                name: format!("Product {code}"),
                category_code: "SIM".to_owned(),
                sku: format!("SKU-{code}"),
                price: PRICE,
                currency: "USD".to_owned(),
                description: String::new(),
                images: Vec::new(),
                is_active: true,
            };
            shop.products.create(product, &ctx).await.expect("product");
            let stock = SetInventory {
                quantity: stock,
                warehouse_code: "WH-1".to_owned(),
                version: Some(0),
            };
            shop.inventory.set(code, stock, &ctx).await.expect("stock");
        }
    }
}

/// An API server: answers calls from its inbox, each on a task of its own.
async fn api_server(shared: Shared, env: ProcessEnv) {
    let shop = process_shop(&shared, &env);
    let (sender, mut inbox) = mpsc::unbounded_channel();
    shared
        .inboxes
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(env.name.to_string(), sender);
    while let Some(envelope) = inbox.recv().await {
        let shop = shop.clone();
        tokio::spawn(async move {
            let answer = serve(&shop, envelope.call, &envelope.ctx).await;
            let _ = envelope.reply.send(answer);
        });
    }
}

async fn serve(shop: &Shop, call: Call, ctx: &InvocationContext) -> Answer {
    let refused = |e: ecommerce::ShopError| {
        let (status, kind) = e.status_and_kind();
        Answer::Refused(status, kind)
    };
    match call {
        Call::Place { order, key } => match shop.orders.place(order, key.as_deref(), ctx).await {
            Ok(placed) => Answer::Placed(placed.order.code.to_string()),
            Err(e) => refused(e),
        },
        Call::Move { code, next, key } => {
            match shop
                .orders
                .update_status(&code, next, None, Some(&key), ctx)
                .await
            {
                Ok(item) => Answer::Moved {
                    version: item.version,
                },
                Err(e) => refused(e),
            }
        }
        Call::Get { code } => match shop.orders.get(&code, ctx).await {
            Ok(item) => Answer::Read {
                pk: item.pk.to_string(),
            },
            Err(e) => refused(e),
        },
    }
}

/// Sends `call` to one API server and waits for its answer, at most
/// [`CLIENT_TIMEOUT`].
async fn send(shared: &Shared, world: &World, ctx: &InvocationContext, call: Call) -> Answer {
    let api = APIS[world.below(APIS.len() as u64) as usize];
    let inbox = shared
        .inboxes
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(api)
        .cloned();
    let what = match &call {
        Call::Place { order, key } => format!("place {} key {key:?}", order.payment_method),
        Call::Move { code, next, key } => format!("move {code} to {next} key {key}"),
        Call::Get { code } => format!("get {code}"),
    };
    let (reply, answer) = oneshot::channel();
    let envelope = Envelope {
        ctx: ctx.clone(),
        call,
        reply,
    };
    if inbox.is_none_or(|inbox| inbox.send(envelope).is_err()) {
        // Connection refused: nothing was done.
        world.trace(format_args!(
            "{} {} via {api}: {what} -> refused",
            ctx.tenant_code, ctx.user_id
        ));
        tokio::time::sleep(Duration::from_millis(100)).await;
        return Answer::Refused(503, "connection_refused");
    }
    let answer = match tokio::time::timeout(CLIENT_TIMEOUT, answer).await {
        Ok(Ok(answer)) => answer,
        _ => Answer::Lost,
    };
    world.trace(format_args!(
        "{} {} via {api}: {what} -> {answer:?}",
        ctx.tenant_code, ctx.user_id
    ));
    answer
}

/// A client placing orders (keyed or not, retrying keyed ones until
/// answered), moving them with keyed status changes (sometimes two racing
/// copies), and reading them — with its own and the other tenant's context.
async fn client(shared: Shared, world: Arc<World>, n: usize) {
    let tenant = TENANTS[n % TENANTS.len()];
    let ctx = customer(tenant, n);
    let mut mine: Vec<String> = Vec::new();
    for op in 0..OPERATIONS_PER_CLIENT {
        match world.below(10) {
            0..=5 => {
                let tag = format!("client-{n}-op-{op}");
                let keyed = world.chance(0.7);
                let order = new_order(&world, &tag, n);
                ledger(&shared.ledger).placed.insert(
                    (tenant.to_owned(), tag.clone()),
                    Request {
                        keyed,
                        answers: Vec::new(),
                    },
                );
                let key = keyed.then(|| format!("key-{tag}"));
                for _try in 0..if keyed { 6 } else { 1 } {
                    let call = Call::Place {
                        order: order.clone(),
                        key: key.clone(),
                    };
                    let answer = send(&shared, &world, &ctx, call).await;
                    ledger(&shared.ledger)
                        .placed
                        .get_mut(&(tenant.to_owned(), tag.clone()))
                        .expect("recorded")
                        .answers
                        .push(answer.clone());
                    if let Answer::Placed(code) = &answer {
                        mine.push(code.clone());
                    }
                    if matches!(answer, Answer::Placed(_)) || matches!(answer, Answer::Refused(400..=499, _))
                    {
                        break;
                    }
                }
            }
            6..=8 => {
                let Some(code) = world.pick(&mine).cloned() else {
                    continue;
                };
                let staff = staff(tenant);
                let next = *world
                    .pick(&[
                        OrderStatus::Confirmed,
                        OrderStatus::Cancelled,
                        OrderStatus::Processing,
                        OrderStatus::Shipped,
                    ])
                    .expect("a status");
                let key = format!("move-{n}-{op}");
                let copies = if world.chance(0.5) { 2 } else { 1 };
                let moves = (0..copies).map(|_| {
                    let (shared, world, staff, code, key) = (
                        shared.clone(),
                        world.clone(),
                        staff.clone(),
                        code.clone(),
                        key.clone(),
                    );
                    async move {
                        let mut answers = Vec::new();
                        for _try in 0..4 {
                            let call = Call::Move {
                                code: code.clone(),
                                next,
                                key: key.clone(),
                            };
                            let answer = send(&shared, &world, &staff, call).await;
                            answers.push(answer.clone());
                            if !matches!(answer, Answer::Lost | Answer::Refused(500..=599, _)) {
                                break;
                            }
                        }
                        answers
                    }
                });
                let answers: Vec<Answer> = futures::future::join_all(moves).await.concat();
                ledger(&shared.ledger)
                    .moves
                    .entry((tenant.to_owned(), key))
                    .or_default()
                    .extend(answers);
            }
            _ => {
                // A read of one of this client's orders from the other tenant
                // must never return this tenant's order.
                let Some(code) = world.pick(&mine).cloned() else {
                    continue;
                };
                let other = TENANTS[(n + 1) % TENANTS.len()];
                let answer = send(&shared, &world, &staff(other), Call::Get { code: code.clone() }).await;
                if let Answer::Read { pk } = &answer {
                    if *pk != tenant_pk(other) {
                        ledger(&shared.ledger)
                            .cross_tenant_reads
                            .push(format!("{other} read {code} of {pk}"));
                    }
                }
            }
        }
        tokio::time::sleep(world.between(Duration::ZERO, Duration::from_millis(300))).await;
    }
}

fn new_order(world: &World, tag: &str, n: usize) -> NewOrder {
    let lines = 1 + world.below(2) as usize;
    let items = PRODUCTS
        .iter()
        .take(lines)
        .map(|(code, _)| OrderItem {
            product_code: (*code).to_owned(),
            name: String::new(),
            quantity: 1 + world.below(3) as u32,
            price: PRICE,
        })
        .collect();
    NewOrder {
        customer_id: format!("customer-{n}"),
        items,
        shipping_address: Address {
            street: "1 Sim Street".to_owned(),
            city: "Simcity".to_owned(),
            postal_code: "00000".to_owned(),
            country: "US".to_owned(),
        },
        // The request's tag: the audit counts orders per request by it.
        payment_method: tag.to_owned(),
    }
}

/// Who consumes the command table's stream in a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pipeline {
    /// Lambda: the entry point's batch logic, fed by the simulated stream's
    /// own leases and checkpoints (as the event source mapping would).
    Lambda,
    /// The stream consumer embedded in each replica (`StreamConsumer`): its
    /// own leases (shared `MemoryLeases`), lanes and checkpoints, reading
    /// the simulated stream as DynamoDB Streams.
    Embedded,
}

/// A replica's embedded stream consumer, as the server runs it, over the
/// simulated stream; its leases expire in simulated time.
async fn embedded_consumer(shared: Shared, env: ProcessEnv) {
    let shop = process_shop(&shared, &env);
    let source = Arc::new(SimStreamSource::new(
        shared.stream.clone(),
        env.world.clone(),
        0.01,
    ));
    StreamConsumer::with_source(shop.engine.clone(), source, shared.leases.clone(), "sim-command")
        .consumer_id(format!("{}#{}", env.name, env.incarnation))
        .lease_duration(Duration::from_secs(2))
        .poll_interval(Duration::from_millis(50))
        .describe_interval(Duration::from_secs(1))
        .checkpoint_interval(Duration::from_millis(100))
        .retry_backoff(Duration::from_millis(50), Duration::from_secs(1))
        .drain_deadline(Duration::from_secs(1))
        .run(std::future::pending::<()>())
        .await;
}

/// A stream consumer: the Lambda entry point's batch logic over the
/// simulated stream.
async fn stream_consumer(shared: Shared, env: ProcessEnv) {
    let shop = process_shop(&shared, &env);
    let engine = shop.engine.clone();
    let consumer = format!("{}#{}", env.name, env.incarnation);
    let options = BatchOptions::default();
    shared
        .stream
        .clone()
        .consume(consumer, move |batch| {
            let engine = engine.clone();
            let options = options.clone();
            async move {
                match handle_event_with(&engine, lambda_event(&batch), &options).await {
                    Ok(response) => match response.batch_item_failures.first() {
                        None => BatchOutcome::Done,
                        Some(failure) => failure
                            .item_identifier
                            .as_deref()
                            .and_then(|s| s.parse().ok())
                            .map_or(BatchOutcome::Failed, BatchOutcome::RetryFrom),
                    },
                    Err(_) => BatchOutcome::Failed,
                }
            }
        })
        .await;
}

/// A batch as Lambda hands it to the function: inserts of command rows
/// (keys, the status they were inserted with, sequence numbers).
fn lambda_event(batch: &[StreamRecord]) -> aws_lambda_events::event::dynamodb::Event {
    let records: Vec<Value> = batch
        .iter()
        .map(|record| {
            let sk = cqrs_core::command_sk(&record.key.sk, record.version);
            let keys = json!({ "pk": { "S": record.key.pk }, "sk": { "S": sk } });
            let mut image = keys.clone();
            let status = match record.inserted {
                CommandStatus::Published => "published",
                CommandStatus::Applied => "applied",
                CommandStatus::Finished => "finished",
                CommandStatus::Failed => "failed",
            };
            image["status"] = json!({ "S": status });
            json!({
                "eventID": format!("event-{}", record.sequence),
                "eventName": "INSERT",
                "eventVersion": "1.1",
                "eventSource": "aws:dynamodb",
                "awsRegion": "us-east-1",
                "dynamodb": {
                    "ApproximateCreationDateTime": 1_767_225_600.0,
                    "Keys": keys,
                    "NewImage": image,
                    "SequenceNumber": record.sequence.to_string(),
                    "SizeBytes": 128,
                    "StreamViewType": "NEW_AND_OLD_IMAGES",
                },
                "eventSourceARN": "arn:aws:dynamodb:us-east-1:000000000000:table/sim/stream/1",
            })
        })
        .collect();
    serde_json::from_value(json!({ "Records": records })).expect("a DynamoDB stream event")
}

/// Reprocesses recorded failures until there are none (what an operator
/// does once the faults are over).
async fn operator(shared: Shared, env: ProcessEnv) {
    let shop = process_shop(&shared, &env);
    loop {
        for tenant in TENANTS {
            let ctx = staff(tenant);
            if let Ok(failures) = shop.engine.list_failures(&ctx).await {
                for failure in failures {
                    let _ = shop.engine.reprocess(&failure.key(), failure.version, &ctx).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// How one schedule misbehaves, drawn from its seed.
fn draw_faults(world: &World) -> (StorageFaults, HandlerFaults, StreamFaults) {
    // Some schedules are rough, some nearly calm: bugs that need one rare
    // fault and bugs that need many are both found.
    let roughness = [0.0, 0.5, 1.0, 2.0, 4.0][world.below(5) as usize];
    let storage = StorageFaults::default().scaled(roughness);
    let handlers = if world.chance(0.7) {
        HandlerFaults::default()
    } else {
        HandlerFaults::none()
    };
    let stream = StreamFaults::default();
    (storage, handlers, stream)
}

/// Runs the schedule of `seed` and checks every invariant. Returns the
/// run's trace hash.
fn schedule(seed: u64) -> u64 {
    let mut sim = Sim::new(seed, SimConfig::default());
    let world = sim.world().clone();
    let _trace = PrintTraceOnReplay(world.clone());
    let storage: Arc<dyn Storage> = Arc::new(cqrs_memory::InMemory::new());
    sim.inspect(seed_catalogue(storage.clone()));
    let (storage_faults, handler_faults, stream_faults) = draw_faults(&world);
    let shared = Shared {
        storage: storage.clone(),
        stream: Arc::new(SimStream::new(world.clone(), stream_faults)),
        mail: Arc::new(OutboxNotifier::new()),
        inboxes: Inboxes::default(),
        ledger: SharedLedger::default(),
        storage_faults,
        handler_faults,
        read_model: MemoryTarget::new(),
        leases: Arc::new(MemoryLeases::new()),
        pipeline: if world.chance(0.5) {
            Pipeline::Embedded
        } else {
            Pipeline::Lambda
        },
    };
    world.trace(format_args!("pipeline: {:?}", shared.pipeline));
    let mut apis = Vec::new();
    for name in APIS {
        let shared = shared.clone();
        apis.push(sim.spawn(name, move |env| api_server(shared.clone(), env)));
    }
    let mut consumers = Vec::new();
    for name in CONSUMERS {
        let shared = shared.clone();
        consumers.push(match shared.pipeline {
            Pipeline::Lambda => sim.spawn(name, move |env| stream_consumer(shared.clone(), env)),
            Pipeline::Embedded => sim.spawn(name, move |env| embedded_consumer(shared.clone(), env)),
        });
    }
    let clients_done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let shared = shared.clone();
        let done = clients_done.clone();
        sim.spawn("clients", move |env| {
            let (shared, done) = (shared.clone(), done.clone());
            async move {
                let clients = (0..CLIENTS).map(|n| client(shared.clone(), env.world.clone(), n));
                futures::future::join_all(clients).await;
                done.store(CLIENTS, std::sync::atomic::Ordering::Release);
            }
        });
    }
    // Process-level faults while the clients work: crashes, stalls (a
    // stalled consumer loses its leases), storage outages.
    let workload_limit = Duration::from_secs(30);
    let faults_end = sim.now() + workload_limit;
    while clients_done.load(std::sync::atomic::Ordering::Acquire) < CLIENTS && sim.now() < faults_end {
        sim.run_for(Duration::from_millis(100));
        if world.chance(0.03) {
            let all: Vec<_> = apis.iter().chain(&consumers).copied().collect();
            let victim = *world.pick(&all).expect("a process");
            match world.below(3) {
                0 => sim.crash(
                    victim,
                    Some(world.between(Duration::from_millis(100), Duration::from_secs(3))),
                ),
                1 => sim.stall(
                    victim,
                    world.between(Duration::from_millis(500), Duration::from_secs(4)),
                ),
                _ => world.storage_outage(world.between(Duration::from_millis(100), Duration::from_secs(2))),
            }
        }
    }
    assert!(
        clients_done.load(std::sync::atomic::Ordering::Acquire) == CLIENTS,
        "the clients did not finish within {workload_limit:?} of simulated time"
    );
    // The calm: no more faults, every process up, an operator reprocessing
    // failures. Everything must settle.
    world.calm();
    sim.revive_all();
    {
        let shared = shared.clone();
        sim.spawn("operator", move |env| operator(shared.clone(), env));
    }
    let settle_limit = Duration::from_secs(90);
    let settled = sim.run_until(Duration::from_millis(500), settle_limit, |sim| {
        // The simulated stream's own checkpoints move under Lambda only.
        (shared.pipeline == Pipeline::Embedded || shared.stream.behind() == 0)
            && sim
                .inspect(unsettled(storage.clone(), shared.stream.clone()))
                .is_empty()
    });
    if !settled {
        let left = sim.inspect(unsettled(storage.clone(), shared.stream.clone()));
        panic!(
            "not settled {settle_limit:?} after the faults ended: {left:?} unsettled, {} stream records behind",
            shared.stream.behind()
        );
    }
    sim.inspect(audit(&shared, &world));
    world.trace_hash()
}

/// Prints the schedule's trace when a single seed is replayed
/// (`CQRS_SIM_SEED`), whether it passed or failed.
struct PrintTraceOnReplay(Arc<World>);

impl Drop for PrintTraceOnReplay {
    fn drop(&mut self) {
        if std::env::var_os("CQRS_SIM_SEED").is_some() {
            for line in self.0.trace_lines() {
                eprintln!("{line}");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The invariants
// ---------------------------------------------------------------------------

/// Every row of a tenant's partition.
async fn rows(storage: &dyn Storage, tenant: &str) -> Vec<DataItem> {
    let mut rows = Vec::new();
    let mut query = RangeQuery {
        pk: tenant_pk(tenant),
        sk: None,
        order: SortOrder::Ascending,
        start_after: None,
        limit: 1_000,
    };
    loop {
        let page = storage.query_data(&query).await.expect("rows");
        rows.extend(page.items);
        match page.last_sk {
            Some(last) => query.start_after = Some(last),
            None => return rows,
        }
    }
}

/// Commands not finished yet (of every entity a command row landed for,
/// applied or not), claimed notifications not yet sent, and recorded
/// failures.
async fn unsettled(storage: Arc<dyn Storage>, stream: Arc<SimStream>) -> Vec<String> {
    let mut left = Vec::new();
    let entities: BTreeSet<EntityKey> = stream.records().into_iter().map(|r| r.key).collect();
    for key in &entities {
        let commands = storage.list_commands(key).await.expect("commands");
        for command in commands.iter().filter(|c| c.status != CommandStatus::Finished) {
            left.push(format!(
                "{}/{}@{} {:?}",
                command.pk, command.sk, command.version, command.status
            ));
        }
    }
    for tenant in TENANTS {
        for row in rows(storage.as_ref(), tenant).await {
            if row.sk.starts_with("NOTIFICATION#")
                && row
                    .attributes
                    .as_value()
                    .get(SENT_AT_ATTRIBUTE)
                    .is_none_or(Value::is_null)
            {
                left.push(format!("{} not sent", row.sk));
            }
        }
        for failure in storage.list_failures(Some(tenant)).await.expect("failures") {
            left.push(format!(
                "{}@{} failed: {:?}",
                failure.sk, failure.version, failure.failures
            ));
        }
    }
    left
}

/// Every invariant, over the tables and the ledger. Panics with what broke.
async fn audit(shared: &Shared, world: &World) {
    let storage = shared.storage.as_ref();
    // The processes are done with it: taken, not held across the reads.
    let ledger = std::mem::take(&mut *ledger(&shared.ledger));
    let mut broken: Vec<String> = Vec::new();
    assert!(
        ledger.cross_tenant_reads.is_empty(),
        "cross-tenant reads: {:?}",
        ledger.cross_tenant_reads
    );
    let shop = Shop::new(shared.storage.clone());
    for tenant in TENANTS {
        let rows = rows(storage, tenant).await;
        let of = |prefix: &'static str| rows.iter().filter(move |r| r.sk.starts_with(prefix));
        // Tenancy and versions: every row is its tenant's; every entity's
        // commands are versions 1..=n, all finished, its data row at n and
        // its history 1..n.
        for row in &rows {
            if row.tenant_code() != tenant {
                broken.push(format!("{}/{} is in {tenant}'s partition", row.pk, row.sk));
            }
            let key = row.key();
            let commands = storage.list_commands(&key).await.expect("commands");
            let versions: Vec<u64> = commands.iter().map(|c| c.version).collect();
            if versions != (1..=row.version).collect::<Vec<_>>() {
                broken.push(format!(
                    "{}: commands {versions:?}, data at {}",
                    row.sk, row.version
                ));
            }
            let history: Vec<u64> = storage
                .list_history(&key)
                .await
                .expect("history")
                .iter()
                .map(|h| h.version)
                .collect();
            if history != (1..row.version).collect::<Vec<_>>() {
                broken.push(format!(
                    "{}: history {history:?}, data at {}",
                    row.sk, row.version
                ));
            }
        }
        // Orders: one per request (one per key however often retried),
        // every placed answer applied, codes unique.
        let orders: Vec<(DataItem, OrderAttributes)> = of("ORDER#")
            .map(|r| (r.clone(), r.attributes_as().expect("an order")))
            .collect();
        let mut per_request: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (row, order) in &orders {
            per_request
                .entry(order.payment_method.as_str())
                .or_default()
                .push(row.code.as_str());
        }
        for ((t, tag), request) in ledger.placed.iter().filter(|((t, _), _)| t == tenant) {
            let stored = per_request.get(tag.as_str()).cloned().unwrap_or_default();
            let answered: BTreeSet<&str> = request
                .answers
                .iter()
                .filter_map(|a| match a {
                    Answer::Placed(code) => Some(code.as_str()),
                    _ => None,
                })
                .collect();
            if stored.len() > 1 {
                broken.push(format!("{t} {tag}: {} orders placed ({stored:?})", stored.len()));
            }
            if answered.len() > 1 || answered.iter().any(|code| !stored.contains(code)) {
                broken.push(format!("{t} {tag}: answered {answered:?}, stored {stored:?}"));
            }
            if request.keyed
                && stored.len() == 1
                && answered.is_empty()
                && request.answers.iter().all(|a| *a == Answer::Lost)
            {
                // Placed, never answered: allowed (the client gave up).
            }
        }
        // Sequences: order numbers unique, and the counter issued every
        // number once: the next one is one past the highest it gave out.
        let codes: BTreeSet<&str> = orders.iter().map(|(r, _)| r.code.as_str()).collect();
        if codes.len() != orders.len() {
            broken.push(format!(
                "{tenant}: {} orders share {} codes",
                orders.len(),
                codes.len()
            ));
        }
        let issued = world.counted(&format!("next_counter SEQ#{tenant}"));
        let next = SequenceService::next(&shop.engine, &SequenceRequest::new("ORDER"), &staff(tenant))
            .await
            .expect("a number");
        if next.no != issued + 1 {
            broken.push(format!(
                "{tenant}: order counter issued {issued} numbers, then {}",
                next.no
            ));
        }
        // Keyed status moves: a retry or racing duplicate answers what the
        // first did, never a refusal of the move already made.
        for ((t, key), answers) in ledger.moves.iter().filter(|((t, _), _)| t == tenant) {
            let moved: BTreeSet<u64> = answers
                .iter()
                .filter_map(|a| match a {
                    Answer::Moved { version } => Some(*version),
                    _ => None,
                })
                .collect();
            let refused = answers
                .iter()
                .any(|a| matches!(a, Answer::Refused(400, "invalid_transition")));
            if moved.len() > 1 || (!moved.is_empty() && refused) {
                broken.push(format!("{t} {key}: keyed move answered {answers:?}"));
            }
        }
        // Stock: each reservation moved the counters once; nothing oversold.
        let reservations: BTreeMap<String, ReservationAttributes> = of("RESERVATION#")
            .map(|r| {
                let reservation: ReservationAttributes = r.attributes_as().expect("a reservation");
                (reservation.order_code.clone(), reservation)
            })
            .collect();
        for (code, stock) in PRODUCTS {
            let inventory: InventoryAttributes = of("INVENTORY#")
                .find(|r| r.code == code)
                .expect("inventory")
                .attributes_as()
                .expect("inventory attributes");
            let units = |state: ReservationState| -> i64 {
                reservations
                    .values()
                    .filter(|r| r.state == state)
                    .filter_map(|r| r.units.get(code))
                    .sum()
            };
            let (reserved, deducted) = (
                units(ReservationState::Reserved),
                units(ReservationState::Deducted),
            );
            if inventory.reserved_quantity != reserved || inventory.quantity != stock - deducted {
                broken.push(format!(
                    "{tenant} {code}: quantity {} reserved {}, reservations say {} and {reserved}",
                    inventory.quantity,
                    inventory.reserved_quantity,
                    stock - deducted
                ));
            }
            if inventory.available() < 0 || inventory.quantity < 0 {
                broken.push(format!("{tenant} {code}: oversold ({inventory:?})"));
            }
        }
        // Each order's reservation decided once, matching the order.
        let claims: BTreeMap<String, (Notification, bool)> = shop
            .notifications
            .claims(&staff(tenant))
            .await
            .expect("claims")
            .into_iter()
            .map(|(notification, sent)| (notification.key.clone(), (notification, sent)))
            .collect();
        let claimed = |order: &str, kind: NotificationKind| {
            claims
                .values()
                .filter(|(n, _)| n.order_code == order && n.kind == kind)
                .count()
        };
        for (row, order) in &orders {
            let code = row.code.as_str();
            let reservation = reservations.get(code);
            let holding = matches!(
                order.status,
                OrderStatus::Pending | OrderStatus::Confirmed | OrderStatus::Processing
            );
            let consistent = match (order.reservation, reservation.map(|r| r.state)) {
                (Reservation::Reserved, Some(ReservationState::Reserved)) => holding,
                (Reservation::Reserved, Some(ReservationState::Deducted)) => {
                    matches!(order.status, OrderStatus::Shipped | OrderStatus::Delivered)
                }
                (Reservation::Failed, Some(ReservationState::Failed)) => true,
                // Cancelled while its reservation was failing: never marked.
                (Reservation::Pending, Some(ReservationState::Failed)) => {
                    order.status == OrderStatus::Cancelled
                }
                // Cancelled before its stock was reserved (nothing held), or
                // while it was (released at once, the order never marked).
                (Reservation::Pending, None | Some(ReservationState::Released))
                | (Reservation::Reserved, Some(ReservationState::Released)) => {
                    order.status == OrderStatus::Cancelled
                }
                _ => false,
            };
            if !consistent {
                broken.push(format!(
                    "{tenant} {code}: order {:?}/{:?}, reservation {:?}",
                    order.status,
                    order.reservation,
                    reservation.map(|r| r.state)
                ));
            }
            // Notifications: a confirmation for every order handled, an
            // alert for every failed reservation, each claimed once.
            let confirmations = claimed(code, NotificationKind::OrderConfirmation);
            let alerts = claimed(code, NotificationKind::InventoryReservationFailed);
            let expected_alerts =
                usize::from(reservation.is_some_and(|r| r.state == ReservationState::Failed));
            if confirmations != 1 || alerts != expected_alerts {
                broken.push(format!(
                    "{tenant} {code}: {confirmations} confirmations and {alerts} alerts claimed (reservation {:?})",
                    order.reservation
                ));
            }
        }
        // Every claim sent (at least once; the mail service drops repeats by id).
        let sent: BTreeSet<String> = shared.mail.sent().iter().map(|n| n.key.clone()).collect();
        for (sk, (notification, marked)) in &claims {
            if !marked || !sent.contains(&notification.key) {
                broken.push(format!(
                    "{tenant} {sk}: claimed, marked sent {marked}, received {}",
                    sent.contains(&notification.key)
                ));
            }
        }
        // The projection: every order version applied exactly once, and the
        // units equal to what the orders say.
        let applied = shared.read_model.rows(UNITS_ORDERED, "applied").await;
        let units = shared.read_model.rows(UNITS_ORDERED, "units").await;
        let mut expected_units: BTreeMap<String, i64> = BTreeMap::new();
        for (row, order) in &orders {
            for (product, n) in units_ordered(order) {
                *expected_units.entry(format!("{tenant}/{product}")).or_default() += n;
            }
            for version in 1..=row.version {
                let key = format!("{tenant}/{}@{version}", row.sk);
                let times = applied.get(&key).and_then(Value::as_i64).unwrap_or(0);
                if times != 1 {
                    broken.push(format!("projection: {key} applied {times} times"));
                }
            }
        }
        let keys: BTreeSet<&String> = expected_units
            .keys()
            .chain(units.keys().filter(|k| k.starts_with(&format!("{tenant}/"))))
            .collect();
        for key in keys {
            let (projected, expected) = (
                units.get(key).and_then(Value::as_i64).unwrap_or(0),
                expected_units.get(key).copied().unwrap_or(0),
            );
            if projected != expected {
                broken.push(format!(
                    "projection: {key} has {projected} units, the orders say {expected}"
                ));
            }
        }
        let failures = storage.list_failures(Some(tenant)).await.expect("failures");
        if !failures.is_empty() {
            broken.push(format!("{tenant}: {} failures left", failures.len()));
        }
    }
    assert!(broken.is_empty(), "invariants broken:\n  {}", broken.join("\n  "));
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

const REPLAY: &str =
    "CQRS_SIM_SEED={seed} cargo nextest run -p ecommerce --test simulation simulated_schedules --no-capture";

#[test]
fn simulated_schedules_keep_every_invariant() {
    let schedules = Schedules::from_env(1, CI_SCHEDULES, REPLAY);
    let replaying = schedules.count == 1;
    let report = run_schedules(&schedules, |seed| {
        let hash = schedule(seed);
        if replaying {
            eprintln!("seed {seed}: trace hash {hash:016x}");
        }
    });
    report.assert_passed(&schedules);
    assert_eq!(report.ran, schedules.count);
}

/// Replays of a seed, side by side on two threads and once more after them,
/// do the same things in the same order, event for event (one trace hash).
#[test]
fn the_same_seed_makes_the_same_run() {
    for seed in [7, 1_001, 424_242] {
        let (first, second) = std::thread::scope(|scope| {
            let first = scope.spawn(|| schedule(seed));
            let second = scope.spawn(|| schedule(seed));
            (first.join().expect("ran"), second.join().expect("ran"))
        });
        let third = schedule(seed);
        assert_eq!((first, second), (third, third), "seed {seed} ran differently");
    }
}

/// Schedules over which the share of schedules that catch a reintroduced
/// bug is measured.
const CATCH_RATE_OVER: u64 = 200;

/// Runs schedules with `bug` switched back on until one fails (the number
/// it took is the note's figure), then counts how many of the first
/// [`CATCH_RATE_OVER`] schedules catch it.
fn find(bug: &'static str) {
    let schedules = Schedules::from_env(1, BUG_BUDGET, format!("{REPLAY} (with {bug} reintroduced)"));
    let report = run_schedules(&schedules, |seed| {
        let _bug = regressions::reintroduce(bug);
        schedule(seed);
    });
    let failure = report
        .failure
        .unwrap_or_else(|| panic!("{bug}: not found in {} schedules", report.ran));
    let rate = Schedules::from_env(1, CATCH_RATE_OVER, REPLAY);
    let caught = std::sync::atomic::AtomicU64::new(0);
    run_schedules(&rate, |seed| {
        let _bug = regressions::reintroduce(bug);
        if std::panic::catch_unwind(|| schedule(seed)).is_err() {
            caught.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    eprintln!(
        "{bug}: found at schedule {} (seed {}) in {:.1} s; caught by {} of the first {} schedules; {}",
        failure.index + 1,
        failure.seed,
        report.elapsed.as_secs_f64(),
        caught.into_inner(),
        rate.count,
        failure.message.lines().take(3).collect::<Vec<_>>().join(" | ")
    );
}

#[test]
fn finds_the_keyed_retry_judged_on_the_moved_entity() {
    find(KEYED_RETRY_JUDGED_ON_MOVED_ENTITY);
}

#[test]
fn finds_the_alert_lost_after_a_cut_off() {
    find(ecommerce::sync::LOST_ALERT);
}

#[test]
fn finds_the_sync_publish_lost_after_its_commit() {
    find(SYNC_PUBLISH_LEFT_TO_PUBLISHER);
}
