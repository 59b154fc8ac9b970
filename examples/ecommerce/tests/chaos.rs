//! A randomized schedule of process-level faults under order load, short
//! enough for every CI run: two replicas of the e-commerce server (each
//! with its stream consumer, sharing the stream by leases) on a DynamoDB
//! Local of the test's own that keeps its data on disk, while clients of
//! two shops place orders (half of them with an `Idempotency-Key`, retried
//! with the same key when the answer is lost or a 5xx; a quarter of those
//! first sent by a client that gives up after a few milliseconds), cancel some and
//! move others on to shipped and delivered. Meanwhile, for about two and a
//! half minutes, a schedule drawn from a seed kills a replica (SIGKILL) or
//! stops it (SIGTERM) and starts it again, pauses DynamoDB Local (SIGSTOP)
//! and resumes it, kills it and restarts it from its files.
//!
//! Afterwards, once everything has settled, the tables are audited: every
//! order answered 201 exists and settled; one order per idempotency key
//! and per attempt; versions contiguous from 1 for every entity; stock
//! conserved and never oversold; every confirmation and every alert of a
//! failed reservation claimed once and sent.
//!
//! The seed is printed first; `CQRS_CHAOS_SEED=<seed>` replays the same
//! schedule of steps (the timing of processes is not replayed).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use common::audit::{settle_and_audit, Counts};
use common::*;
use cqrs_core::DataItem;
use cqrs_dynamodb::testing::LocalDynamo;
use ecommerce::domain::{InventoryAttributes, OrderAttributes, ReservationAttributes, ReservationState};
use ecommerce::shop::DEMO_TENANTS;
use serde_json::{json, Value};

/// The variable that replays a schedule.
const SEED_VAR: &str = "CQRS_CHAOS_SEED";
/// How long the schedule's steps take, about (each step is drawn until
/// their estimated total passes this).
const SCHEDULE_BUDGET: Duration = Duration::from_secs(140);
/// Clients placing orders, per shop.
const CLIENTS_PER_SHOP: usize = 4;
/// How long a client retries a keyed request before it gives up (and the
/// test fails): longer than any outage of the schedule.
const RETRY_FOR: Duration = Duration::from_secs(90);
/// The servers' drain on SIGTERM: short, so that work is left to the stream.
const SERVER_EXTRA: [&str; 2] = ["--drain-timeout", "3"];

/// A small seeded generator (SplitMix64): the schedule and each client's
/// choices follow from the seed alone.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `[low, high)` seconds, to the millisecond.
    fn secs(&mut self, low: f64, high: f64) -> Duration {
        let millis = (low * 1000.0) as u64 + self.below(((high - low) * 1000.0) as u64);
        Duration::from_millis(millis)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// One fault of the schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// SIGKILL of a replica, started again after `down`.
    Kill { replica: usize, down: Duration },
    /// SIGTERM of a replica (a graceful shutdown), started again after `down`.
    Term { replica: usize, down: Duration },
    /// DynamoDB Local stopped (SIGSTOP) for `paused`, then resumed.
    PauseDynamo { paused: Duration },
    /// DynamoDB Local killed (SIGKILL), restarted from its files after `down`.
    KillDynamo { down: Duration },
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Kill { replica, down } => write!(f, "kill -9 replica {replica}, restart after {down:?}"),
            Fault::Term { replica, down } => write!(f, "SIGTERM replica {replica}, restart after {down:?}"),
            Fault::PauseDynamo { paused } => write!(f, "pause DynamoDB Local for {paused:?}"),
            Fault::KillDynamo { down } => write!(f, "kill -9 DynamoDB Local, restart after {down:?}"),
        }
    }
}

/// A step: a wait, then a fault.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Step {
    wait: Duration,
    fault: Fault,
}

/// The schedule of `seed`: every kind of fault at least once, in a random
/// order, then random ones, until their estimated time passes the budget.
fn schedule(seed: u64) -> Vec<Step> {
    let mut rng = Rng(seed);
    let draw = |rng: &mut Rng, kind: u64| match kind {
        0 => Fault::Kill {
            replica: rng.below(2) as usize,
            down: rng.secs(0.5, 4.0),
        },
        1 => Fault::Term {
            replica: rng.below(2) as usize,
            down: rng.secs(0.5, 4.0),
        },
        2 => Fault::PauseDynamo {
            paused: rng.secs(1.0, 6.0),
        },
        _ => Fault::KillDynamo {
            down: rng.secs(1.0, 5.0),
        },
    };
    let mut kinds = [0, 1, 2, 3];
    // Fisher-Yates.
    for i in (1..kinds.len()).rev() {
        kinds.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut steps = Vec::new();
    let mut estimated = Duration::ZERO;
    let mut next = 0;
    while estimated < SCHEDULE_BUDGET {
        let kind = kinds.get(next).copied().unwrap_or_else(|| rng.below(4));
        next += 1;
        let step = Step {
            wait: rng.secs(3.0, 12.0),
            fault: draw(&mut rng, kind),
        };
        // A restart takes a few seconds on top of the drawn times.
        estimated += step.wait
            + match step.fault {
                Fault::Kill { down, .. } | Fault::Term { down, .. } => down + Duration::from_secs(3),
                Fault::PauseDynamo { paused } => paused,
                Fault::KillDynamo { down } => down + Duration::from_secs(4),
            };
        steps.push(step);
    }
    steps
}

/// The seed: [`SEED_VAR`] if set, else a fresh one.
fn seed() -> u64 {
    match std::env::var(SEED_VAR) {
        Ok(seed) => seed
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{SEED_VAR} must be a number, got {seed:?}")),
        Err(_) => (uuid::Uuid::new_v4().as_u128() % 1_000_000_000) as u64,
    }
}

/// The catalogue the servers seed (`Shop::seed_demo`): code and unit price.
const PRODUCTS: [(&str, f64); 3] = [("PRD-001", 29.99), ("PRD-002", 89.5), ("PRD-003", 9.99)];

/// The body of an order of `customer`: one or two products, 1 to 3 units each.
fn order_of(customer: &str, rng: &mut Rng) -> Value {
    let first = rng.below(3) as usize;
    let mut lines = vec![first];
    if rng.chance(30) {
        lines.push((first + 1 + rng.below(2) as usize) % 3);
    }
    let items: Vec<Value> = lines
        .into_iter()
        .map(|p| {
            let (code, price) = PRODUCTS[p];
            json!({ "productCode": code, "quantity": 1 + rng.below(3), "price": price })
        })
        .collect();
    json!({
        "customerId": customer,
        "items": items,
        "shippingAddress": { "street": "1 Main St", "city": "Tokyo", "postalCode": "100-0001", "country": "JP" },
        "paymentMethod": "credit_card"
    })
}

/// The replicas' addresses; `None` while one is down, so that clients send
/// their requests to the other.
#[derive(Clone, Default)]
struct Replicas(Arc<RwLock<[Option<String>; 2]>>);

impl Replicas {
    fn set(&self, replica: usize, url: Option<String>) {
        self.0.write().expect("not poisoned")[replica] = url;
    }

    /// One of the replicas that are up (the first try's pick is random);
    /// when none is, the last known address, which fails and is retried.
    fn pick(&self, rng: &mut Rng) -> String {
        let urls = self.0.read().expect("not poisoned");
        let up: Vec<&String> = urls.iter().flatten().collect();
        match up.len() {
            0 => "http://127.0.0.1:9".to_owned(),
            n => up[rng.below(n as u64) as usize].clone(),
        }
    }
}

/// What the clients did and were told.
#[derive(Debug, Default)]
struct Load {
    /// Per shop: each order answered 201, with the customer of its attempt.
    accepted: BTreeMap<String, Vec<(String, String)>>,
    /// Orders sent.
    attempts: usize,
    keyed: usize,
    /// Keyed orders answered by a retry (their first try's answer lost or a 5xx).
    keyed_retried: usize,
    /// Answers `Idempotent-Replayed: true`.
    replayed: usize,
    /// Orders without a key whose answer was lost or a 5xx (they may exist).
    unanswered: usize,
    /// Status moves answered 200, and refused with 409 (a reservation not
    /// yet reserved, an order changing too fast).
    moves: usize,
    moves_refused: usize,
    /// Answers no request of the load should get: each a failure.
    unexpected: Vec<String>,
}

/// How a request ended.
enum Answer {
    Status(u16, Value, bool),
    /// No answer: the connection failed or timed out.
    Lost(String),
}

async fn send(request: reqwest::RequestBuilder) -> Answer {
    match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let replayed = response.headers().get("idempotent-replayed").is_some();
            let body = response.json().await.unwrap_or(Value::Null);
            Answer::Status(status, body, replayed)
        }
        Err(e) => Answer::Lost(e.to_string()),
    }
}

/// A client of the shop `tenant`: places orders until `stop`, half of them
/// keyed; moves on some of those it placed.
struct Client {
    id: usize,
    tenant: &'static str,
    run: String,
    rng: Rng,
    http: reqwest::Client,
    token: String,
    replicas: Replicas,
    load: Arc<Mutex<Load>>,
}

impl Client {
    async fn run(mut self, stop: Arc<AtomicBool>) {
        let mut n = 0;
        while !stop.load(Ordering::SeqCst) {
            n += 1;
            let customer = format!("CHAOS-{}-{n:04}", self.id);
            if let Some(code) = self.place(&customer).await {
                if self.rng.chance(40) {
                    self.move_on(&code).await;
                }
            }
            tokio::time::sleep(self.rng.secs(0.1, 0.6)).await;
        }
    }

    /// For a quarter of the keyed requests' first tries, a client that
    /// gives up after 5 to 80 ms: before or after the write, so that the
    /// retry sometimes finds the first try's work done.
    fn hasty(&mut self) -> Option<Duration> {
        self.rng
            .chance(25)
            .then(|| Duration::from_millis(5 + self.rng.below(75)))
    }

    fn note(&self, change: impl FnOnce(&mut Load)) {
        change(&mut self.load.lock().expect("not poisoned"));
    }

    /// Places one order; its code if answered 201.
    async fn place(&mut self, customer: &str) -> Option<String> {
        let body = order_of(customer, &mut self.rng);
        let key = self
            .rng
            .chance(50)
            .then(|| format!("chaos-{}-{customer}", self.run));
        self.note(|l| {
            l.attempts += 1;
            l.keyed += usize::from(key.is_some());
        });
        let started = Instant::now();
        let mut tries = 0;
        loop {
            tries += 1;
            let url = self.replicas.pick(&mut self.rng);
            let mut request = self
                .http
                .post(format!("{url}/orders"))
                .bearer_auth(&self.token)
                .json(&body);
            if let Some(key) = &key {
                request = request.header("idempotency-key", key);
                if tries == 1 {
                    if let Some(patience) = self.hasty() {
                        request = request.timeout(patience);
                    }
                }
            }
            let failed = match send(request).await {
                Answer::Status(201, answer, replayed) => {
                    let code = answer["code"].as_str().map(str::to_owned);
                    let (tenant, customer) = (self.tenant.to_owned(), customer.to_owned());
                    self.note(|l| {
                        l.replayed += usize::from(replayed);
                        l.keyed_retried += usize::from(tries > 1);
                        match &code {
                            Some(code) => l
                                .accepted
                                .entry(tenant)
                                .or_default()
                                .push((code.clone(), customer)),
                            None => l.unexpected.push(format!("201 without a code: {answer}")),
                        }
                    });
                    return code;
                }
                Answer::Status(status, answer, _) if status >= 500 => format!("{status} {answer}"),
                Answer::Status(status, answer, _) => {
                    let what = format!("POST /orders ({customer}): {status} {answer}");
                    self.note(|l| l.unexpected.push(what));
                    return None;
                }
                Answer::Lost(why) => why,
            };
            if key.is_none() {
                self.note(|l| l.unanswered += 1);
                return None;
            }
            if started.elapsed() > RETRY_FOR {
                let what = format!("POST /orders ({customer}) unanswered for {RETRY_FOR:?}: {failed}");
                self.note(|l| l.unexpected.push(what));
                return None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Moves the order on: cancels it at once, or confirms it once its
    /// stock is reserved, then further (processing, shipped, delivered),
    /// maybe cancelling on the way. Every move is keyed and retried.
    async fn move_on(&mut self, code: &str) {
        if self.rng.chance(40) {
            self.change(code, "cancelled").await;
            return;
        }
        if !self.reserved(code).await {
            self.change(code, "cancelled").await;
            return;
        }
        let depth = 1 + self.rng.below(4);
        for status in ["confirmed", "processing", "shipped", "delivered"]
            .into_iter()
            .take(depth as usize)
        {
            if !self.change(code, status).await {
                return;
            }
        }
        if depth < 3 && self.rng.chance(50) {
            self.change(code, "cancelled").await;
        }
    }

    /// Whether the order's stock got reserved (waits, bounded, while it is pending).
    async fn reserved(&mut self, code: &str) -> bool {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(15) {
            let url = self.replicas.pick(&mut self.rng);
            let request = self
                .http
                .get(format!("{url}/orders/{code}"))
                .bearer_auth(&self.token);
            if let Answer::Status(200, order, _) = send(request).await {
                match order["attributes"]["reservation"].as_str() {
                    Some("reserved") => return true,
                    Some("failed") => return false,
                    _ => {}
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        false
    }

    /// `PATCH /orders/{code}/status`, keyed, retried until answered; whether it moved.
    async fn change(&mut self, code: &str, status: &str) -> bool {
        let key = format!("chaos-{}-{}-{code}-{status}", self.run, self.tenant);
        let started = Instant::now();
        let mut tries = 0;
        loop {
            tries += 1;
            let url = self.replicas.pick(&mut self.rng);
            let mut request = self
                .http
                .patch(format!("{url}/orders/{code}/status"))
                .bearer_auth(&self.token)
                .header("idempotency-key", &key)
                .json(&json!({ "status": status }));
            if tries == 1 {
                if let Some(patience) = self.hasty() {
                    request = request.timeout(patience);
                }
            }
            let failed = match send(request).await {
                Answer::Status(200, _, _) => {
                    self.note(|l| l.moves += 1);
                    return true;
                }
                Answer::Status(409, _, _) => {
                    self.note(|l| l.moves_refused += 1);
                    return false;
                }
                Answer::Status(s, answer, _) if s >= 500 => format!("{s} {answer}"),
                Answer::Status(s, answer, _) => {
                    let what = format!("PATCH {code} to {status}: {s} {answer}");
                    self.note(|l| l.unexpected.push(what));
                    return false;
                }
                Answer::Lost(why) => why,
            };
            if started.elapsed() > RETRY_FOR {
                let what = format!("PATCH {code} to {status} unanswered for {RETRY_FOR:?}: {failed}");
                self.note(|l| l.unexpected.push(what));
                return false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Prints a line of the run, with its time since `start`.
fn say(start: Instant, line: impl fmt::Display) {
    report(format!("chaos [{:>6.1} s] {line}", start.elapsed().as_secs_f64()));
}

/// What the schedule did.
#[derive(Debug, Default)]
struct Faults {
    kills: usize,
    terms: usize,
    pauses: usize,
    dynamo_restarts: usize,
}

/// Runs `steps` against the replicas and DynamoDB Local.
async fn run_schedule(
    steps: &[Step],
    start: Instant,
    servers: &mut [Server; 2],
    replicas: &Replicas,
    local: &mut LocalDynamo,
    prefix: &str,
) -> Faults {
    let endpoint = local.endpoint();
    let mut done = Faults::default();
    for (i, step) in steps.iter().enumerate() {
        tokio::time::sleep(step.wait).await;
        say(
            start,
            format_args!("step {}/{}: {}", i + 1, steps.len(), step.fault),
        );
        match step.fault {
            Fault::Kill { replica, down } => {
                replicas.set(replica, None);
                servers[replica].kill();
                done.kills += 1;
                tokio::time::sleep(down).await;
                servers[replica] = Server::start(&endpoint, prefix, &SERVER_EXTRA).await;
                replicas.set(replica, Some(servers[replica].url.clone()));
            }
            Fault::Term { replica, down } => {
                // Taken out of the clients' picks first, as a load balancer would.
                replicas.set(replica, None);
                let took = servers[replica].terminate().await;
                done.terms += 1;
                say(
                    start,
                    format_args!("  replica {replica} exited 0 after {took:.1?}"),
                );
                tokio::time::sleep(down).await;
                servers[replica] = Server::start(&endpoint, prefix, &SERVER_EXTRA).await;
                replicas.set(replica, Some(servers[replica].url.clone()));
            }
            Fault::PauseDynamo { paused } => {
                local.pause().expect("DynamoDB Local paused");
                done.pauses += 1;
                tokio::time::sleep(paused).await;
                local.resume().expect("DynamoDB Local resumed");
            }
            Fault::KillDynamo { down } => {
                local.kill();
                tokio::time::sleep(down).await;
                local
                    .restart()
                    .await
                    .expect("DynamoDB Local restarts from its files");
                done.dynamo_restarts += 1;
            }
        }
        say(start, format_args!("  step {} done", i + 1));
    }
    done
}

/// Entities whose versions are not contiguous: commands 1..=n, the data
/// row at n, history rows 1..n.
async fn version_gaps(inspector: &Inspector, prefixes: &[&str]) -> (usize, Vec<String>) {
    let storage = inspector.shop.engine.storage();
    let mut checked = 0;
    let mut gaps = Vec::new();
    for prefix in prefixes {
        for item in inspector.items(prefix).await {
            checked += 1;
            let key = item.key();
            let commands: Vec<u64> = storage
                .list_commands(&key)
                .await
                .expect("listed")
                .iter()
                .map(|c| c.version)
                .collect();
            let history: Vec<u64> = storage
                .list_history(&key)
                .await
                .expect("listed")
                .iter()
                .map(|h| h.version)
                .collect();
            let n = item.version;
            if commands != (1..=n).collect::<Vec<_>>() || history != (1..n).collect::<Vec<_>>() {
                gaps.push(format!(
                    "{}: data at {n}, commands {commands:?}, history {history:?}",
                    key.id()
                ));
            }
        }
    }
    (checked, gaps)
}

/// Per product: units reserved by the reservations that hold them, units
/// deducted by those shipped, against the inventory record's counters.
/// Returns the products checked and those whose counters are off: units
/// on hand other than the first stock less what was shipped, or more
/// reserved than on hand (oversold), or below zero.
async fn stock_off(inspector: &Inspector) -> (usize, Vec<String>) {
    let mut reserved: HashMap<String, i64> = HashMap::new();
    let mut deducted: HashMap<String, i64> = HashMap::new();
    for item in inspector.items("RESERVATION#").await {
        let reservation: ReservationAttributes = item.attributes_as().expect("a reservation");
        let into = match reservation.state {
            ReservationState::Reserved => &mut reserved,
            ReservationState::Deducted => &mut deducted,
            ReservationState::Failed | ReservationState::Released => continue,
        };
        for (product, units) in reservation.units {
            *into.entry(product).or_default() += units;
        }
    }
    let storage = inspector.shop.engine.storage();
    let mut off = Vec::new();
    let inventory = inspector.items("INVENTORY#").await;
    for item in &inventory {
        let now: InventoryAttributes = item.attributes_as().expect("an inventory record");
        // The first version: the stock the server seeded (no restock follows).
        let first: InventoryAttributes = match storage.get_history(&item.key(), 1).await.expect("read") {
            Some(first) => first.attributes_as().expect("an inventory record"),
            None => now.clone(),
        };
        let product = &now.product_code;
        let shipped = deducted.get(product).copied().unwrap_or(0);
        let held = reserved.get(product).copied().unwrap_or(0);
        if now.quantity != first.quantity - shipped
            || now.reserved_quantity != held
            || now.reserved_quantity > now.quantity
            || now.reserved_quantity < 0
        {
            off.push(format!(
                "{product}: first {} on hand; now {} on hand, {} reserved; reservations hold {held}, shipped {shipped}",
                first.quantity, now.quantity, now.reserved_quantity
            ));
        }
    }
    (inventory.len(), off)
}

/// Orders per customer: each attempt has a customer of its own, so more
/// than one order of a customer is an attempt placed twice (a keyed retry
/// not recognised, say). Returns those customers, and the accepted orders
/// whose customer's order is another than the one answered.
fn doubled_and_mismatched(orders: &[DataItem], accepted: &[(String, String)]) -> (Vec<String>, Vec<String>) {
    let mut per_customer: HashMap<String, Vec<String>> = HashMap::new();
    for order in orders {
        let attributes: OrderAttributes = order.attributes_as().expect("an order");
        per_customer
            .entry(attributes.customer_id)
            .or_default()
            .push(order.code.to_string());
    }
    let doubled = per_customer
        .iter()
        .filter(|(_, codes)| codes.len() > 1)
        .map(|(customer, codes)| format!("{customer}: {codes:?}"))
        .collect();
    let mismatched = accepted
        .iter()
        .filter(|(code, customer)| {
            per_customer
                .get(customer)
                .is_some_and(|codes| codes.as_slice() != std::slice::from_ref(code))
        })
        .map(|(code, customer)| format!("{customer} answered {code}, has {:?}", per_customer[customer]))
        .collect();
    (doubled, mismatched)
}

#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test(flavor = "multi_thread")]
async fn randomized_chaos_schedule_keeps_every_invariant() {
    if dynamodb().is_none() || !LocalDynamo::available() {
        return;
    }
    let seed = seed();
    report(format!(
        "chaos seed: {seed}; replay: {SEED_VAR}={seed} cargo nextest run -p ecommerce --test chaos"
    ));
    let steps = schedule(seed);
    for (i, step) in steps.iter().enumerate() {
        report(format!(
            "chaos schedule {}/{}: wait {:?}, then {}",
            i + 1,
            steps.len(),
            step.wait,
            step.fault
        ));
    }
    // The example's binary first: a build it needs is not the schedule's time.
    let built = Instant::now();
    binary();
    report(format!(
        "chaos: the example's binary is ready after {:.1?}",
        built.elapsed()
    ));
    let test_started = Instant::now();
    let mut local = LocalDynamo::start().await.expect("DynamoDB Local starts");
    let endpoint = local.endpoint();
    let prefix = prefix("chaos");
    let (a, b) = tokio::join!(
        Server::start(&endpoint, &prefix, &SERVER_EXTRA),
        Server::start(&endpoint, &prefix, &SERVER_EXTRA)
    );
    let mut servers = [a, b];
    let replicas = Replicas::default();
    for (i, server) in servers.iter().enumerate() {
        replicas.set(i, Some(server.url.clone()));
    }
    let start = Instant::now();
    say(
        start,
        format_args!(
            "DynamoDB Local and both replicas up after {:.1?}; the load starts",
            test_started.elapsed()
        ),
    );

    let load = Arc::new(Mutex::new(Load::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let run = uuid::Uuid::new_v4().simple().to_string();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client");
    let clients: Vec<_> = (0..CLIENTS_PER_SHOP * DEMO_TENANTS.len())
        .map(|id| {
            let tenant = DEMO_TENANTS[id % DEMO_TENANTS.len()];
            let client = Client {
                id,
                tenant,
                run: run.clone(),
                rng: Rng(seed ^ (id as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407)),
                http: http.clone(),
                token: token_for(tenant, &format!("chaos-client-{id}")),
                replicas: replicas.clone(),
                load: load.clone(),
            };
            tokio::spawn(client.run(stop.clone()))
        })
        .collect();

    let faults = run_schedule(&steps, start, &mut servers, &replicas, &mut local, &prefix).await;
    // A last few seconds of load on a healthy system, then the clients stop
    // (a keyed order in flight is retried until answered).
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.await.expect("a client ends");
    }
    let load = std::mem::take(&mut *load.lock().expect("not poisoned"));
    say(
        start,
        format_args!(
            "load stopped: {} orders sent, {} answered 201, {} unanswered without a key; faults {faults:?}",
            load.attempts,
            load.accepted.values().map(Vec::len).sum::<usize>(),
            load.unanswered
        ),
    );

    // Everything is up (each step restarts what it stopped): let it settle, then audit.
    let mut totals = Counts::default();
    let (mut entities, mut gaps, mut products, mut stock) = (0, Vec::new(), 0, Vec::new());
    let (mut doubled, mut mismatched, mut orders_total) = (Vec::new(), Vec::new(), 0);
    let mut settle_times = Vec::new();
    for tenant in DEMO_TENANTS {
        let inspector = Inspector::for_tenant(&endpoint, &prefix, tenant);
        let accepted = load.accepted.get(tenant).cloned().unwrap_or_default();
        let answered: Vec<String> = accepted.iter().map(|(code, _)| code.clone()).collect();
        let (counts, settle_time) = settle_and_audit(&inspector, &answered).await;
        settle_times.push(settle_time);
        // The orders placed without an answer settle too.
        let orders = inspector.items("ORDER#").await;
        orders_total += orders.len();
        let unanswered: Vec<String> = orders
            .iter()
            .map(|o| o.code.to_string())
            .filter(|code| !answered.contains(code))
            .collect();
        let (others, _) = settle_and_audit(&inspector, &unanswered).await;
        say(
            start,
            format_args!(
                "{tenant}: {counts:?}, settled {settle_time:.1?}; {} orders placed without an answer: {others:?}",
                unanswered.len()
            ),
        );
        totals.accepted += counts.accepted;
        totals.lost += counts.lost;
        totals.stranded += counts.stranded + others.stranded;
        totals.doubled += counts.doubled;
        totals.held_by_nobody += counts.held_by_nobody;
        let n = &mut totals.notifications;
        n.confirmations_sent += counts.notifications.confirmations_sent;
        n.failed_reservations += counts.notifications.failed_reservations;
        n.alerts_sent += counts.notifications.alerts_sent;
        n.missing += counts.notifications.missing + others.notifications.missing;
        n.unsent += counts.notifications.unsent + others.notifications.unsent;

        let (d, m) = doubled_and_mismatched(&orders, &accepted);
        doubled.extend(d);
        mismatched.extend(m);
        let (checked, g) =
            version_gaps(&inspector, &["ORDER#", "RESERVATION#", "PRODUCT#", "INVENTORY#"]).await;
        entities += checked;
        gaps.extend(g);
        let (checked, s) = stock_off(&inspector).await;
        products += checked;
        stock.extend(s.into_iter().map(|s| format!("{tenant} {s}")));
    }

    report(format!(
        "chaos summary (seed {seed}): {} orders sent ({} keyed, {} answered by a retry, {} replayed), \
         {} accepted, {} in the tables ({} sent without an answer), {} moves ({} refused); \
         faults: {} kill -9, {} SIGTERM, {} DynamoDB pauses, {} DynamoDB restarts; \
         lost {}, stranded {}, doubled {}, held by nobody {}, doubled attempts {}, wrong answers {}, \
         version gaps {} of {} entities, stock off {} of {} products; notifications: {} confirmations sent, \
         {} alerts sent for {} failed reservations, {} missing, {} unsent; unexpected answers {}; \
         settled in {:.1?}; {:.0?} in all",
        load.attempts,
        load.keyed,
        load.keyed_retried,
        load.replayed,
        totals.accepted,
        orders_total,
        load.unanswered,
        load.moves,
        load.moves_refused,
        faults.kills,
        faults.terms,
        faults.pauses,
        faults.dynamo_restarts,
        totals.lost,
        totals.stranded,
        totals.doubled,
        totals.held_by_nobody,
        doubled.len(),
        mismatched.len(),
        gaps.len(),
        entities,
        stock.len(),
        products,
        totals.notifications.confirmations_sent,
        totals.notifications.alerts_sent,
        totals.notifications.failed_reservations,
        totals.notifications.missing,
        totals.notifications.unsent,
        load.unexpected.len(),
        settle_times,
        test_started.elapsed(),
    ));
    assert!(
        load.unexpected.is_empty(),
        "unexpected answers: {:#?}",
        load.unexpected
    );
    assert!(totals.accepted > 0, "orders were accepted");
    totals.assert_clean(&format!("chaos seed {seed}"));
    assert!(doubled.is_empty(), "attempts placed twice: {doubled:#?}");
    assert!(
        mismatched.is_empty(),
        "answers naming another order: {mismatched:#?}"
    );
    assert!(
        gaps.is_empty(),
        "versions not contiguous, {} of {entities}: {gaps:#?}",
        gaps.len()
    );
    assert!(
        stock.is_empty(),
        "stock off, {} of {products} products: {stock:#?}",
        stock.len()
    );
    assert!(
        faults.kills > 0 && faults.terms > 0 && faults.pauses > 0 && faults.dynamo_restarts > 0,
        "the schedule ran every kind of fault: {faults:?}"
    );
    drop(servers);
    drop(local);
}

#[test]
fn a_seed_gives_one_schedule_with_every_kind_of_fault() {
    for seed in [0, 1, 42, 987_654_321] {
        let steps = schedule(seed);
        assert_eq!(steps, schedule(seed), "seed {seed} replays");
        let kinds = |f: fn(&Fault) -> bool| steps.iter().filter(|s| f(&s.fault)).count();
        assert!(
            kinds(|f| matches!(f, Fault::Kill { .. })) >= 1,
            "seed {seed}: {steps:?}"
        );
        assert!(
            kinds(|f| matches!(f, Fault::Term { .. })) >= 1,
            "seed {seed}: {steps:?}"
        );
        assert!(
            kinds(|f| matches!(f, Fault::PauseDynamo { .. })) >= 1,
            "seed {seed}: {steps:?}"
        );
        assert!(
            kinds(|f| matches!(f, Fault::KillDynamo { .. })) >= 1,
            "seed {seed}: {steps:?}"
        );
    }
    assert_ne!(schedule(1), schedule(2));
}
