//! The simulated processes: API servers answering clients' calls, stream
//! consumers (embedded or Lambda), the clients themselves and an operator.

use super::*;

/// A call a client sends an API server.
pub(super) enum Call {
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

pub(super) struct Envelope {
    pub(super) ctx: InvocationContext,
    pub(super) call: Call,
    pub(super) reply: oneshot::Sender<Answer>,
}

/// The API servers' inboxes, replaced at each restart.
pub(super) type Inboxes = Arc<Mutex<BTreeMap<String, mpsc::UnboundedSender<Envelope>>>>;

/// Everything of one schedule that outlives its processes.
#[derive(Clone)]
pub(super) struct Shared {
    pub(super) storage: Arc<dyn Storage>,
    pub(super) stream: Arc<SimStream>,
    /// The mail service: what the outbox relays sent, across processes.
    pub(super) mail: Arc<OutboxNotifier>,
    pub(super) inboxes: Inboxes,
    pub(super) ledger: SharedLedger,
    pub(super) storage_faults: StorageFaults,
    pub(super) handler_faults: HandlerFaults,
    /// The projection's read model (another database: outlives processes).
    pub(super) read_model: MemoryTarget,
    /// The embedded consumers' leases and checkpoints (a table).
    pub(super) leases: Arc<MemoryLeases>,
    pub(super) pipeline: Pipeline,
}

pub(super) fn shop_config() -> ShopConfig {
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
pub(super) fn process_shop(shared: &Shared, env: &ProcessEnv) -> Shop {
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
pub(super) struct UnitsOrdered;

pub(super) const UNITS_ORDERED: &str = "units-ordered";

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

pub(super) fn units_ordered(order: &OrderAttributes) -> BTreeMap<String, i64> {
    if order.status == OrderStatus::Cancelled {
        BTreeMap::new()
    } else {
        order.units_per_product()
    }
}

pub(super) fn staff(tenant: &str) -> InvocationContext {
    InvocationContext::new(tenant, "staff").with_roles([access::STAFF])
}

pub(super) fn customer(tenant: &str, n: usize) -> InvocationContext {
    InvocationContext::new(tenant, format!("customer-{n}")).with_roles([access::CUSTOMER])
}

/// Products and stock of both tenants, written before the schedule starts.
pub(super) async fn seed_catalogue(storage: Arc<dyn Storage>) {
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
pub(super) async fn api_server(shared: Shared, env: ProcessEnv) {
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

pub(super) async fn serve(shop: &Shop, call: Call, ctx: &InvocationContext) -> Answer {
    let refused = |e: ecommerce::ShopError| {
        let (status, kind) = e.status_and_kind();
        Answer::Refused(status, kind.as_str())
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
pub(super) async fn send(shared: &Shared, world: &World, ctx: &InvocationContext, call: Call) -> Answer {
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
pub(super) async fn client(shared: Shared, world: Arc<World>, n: usize) {
    let tenant = TENANTS[n % TENANTS.len()];
    let ctx = customer(tenant, n);
    let mut mine: Vec<String> = Vec::new();
    for op in 0..OPERATIONS_PER_CLIENT {
        match world.below(10) {
            0..=5 => {
                let tag = format!("client-{n}-op-{op}");
                let keyed = world.chance(0.7);
                let order = new_order(&world, &tag, n);
                ledger(&shared.ledger)
                    .placed
                    .insert((tenant.to_owned(), tag.clone()), Vec::new());
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

pub(super) fn new_order(world: &World, tag: &str, n: usize) -> NewOrder {
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
pub(super) enum Pipeline {
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
pub(super) async fn embedded_consumer(shared: Shared, env: ProcessEnv) {
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
pub(super) async fn stream_consumer(shared: Shared, env: ProcessEnv) {
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
pub(super) fn lambda_event(batch: &[StreamRecord]) -> aws_lambda_events::event::dynamodb::Event {
    let records: Vec<Value> = batch
        .iter()
        .map(|record| {
            let sk = cqrs_core::command_sk(&record.key.sk, record.version);
            let keys = json!({ "pk": { "S": record.key.pk }, "sk": { "S": sk } });
            let mut image = keys.clone();
            let status = record.inserted.as_str();
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
pub(super) async fn operator(shared: Shared, env: ProcessEnv) {
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
