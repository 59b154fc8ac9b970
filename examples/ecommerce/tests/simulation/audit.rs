//! The invariants, checked over the tables and the ledger once a schedule
//! has settled.

use super::*;
use ecommerce::ErrorKind;

/// Every row of a tenant's partition.
pub(super) async fn rows(storage: &dyn Storage, tenant: &str) -> Vec<DataItem> {
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
pub(super) async fn unsettled(storage: Arc<dyn Storage>, stream: Arc<SimStream>) -> Vec<String> {
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

/// Adds every row of both tenants (key, version, attributes) and every
/// command status to the trace.
pub(super) async fn trace_tables(shared: &Shared, world: &World) {
    for tenant in TENANTS {
        for row in rows(shared.storage.as_ref(), tenant).await {
            let statuses: Vec<CommandStatus> = shared
                .storage
                .list_commands(&row.key())
                .await
                .expect("commands")
                .iter()
                .map(|c| c.status)
                .collect();
            world.trace(format_args!(
                "{}/{}@{} {statuses:?} {}",
                row.pk,
                row.sk,
                row.version,
                row.attributes.json()
            ));
        }
    }
}

/// Every invariant, over the tables and the ledger. Panics with what broke.
pub(super) async fn audit(shared: &Shared, world: &World) {
    // The processes are done with it: taken, not held across the reads.
    let ledger = std::mem::take(&mut *ledger(&shared.ledger));
    assert!(
        ledger.cross_tenant_reads.is_empty(),
        "cross-tenant reads: {:?}",
        ledger.cross_tenant_reads
    );
    let shop = Shop::new(shared.storage.clone());
    let mut broken: Vec<String> = Vec::new();
    for tenant in TENANTS {
        let tables = Tables::read(shared, &shop, tenant).await;
        tables.entities(shared.storage.as_ref(), &mut broken).await;
        tables.one_order_per_request(&ledger, &mut broken);
        tables.sequences(&shop, world, &mut broken).await;
        tables.keyed_moves(&ledger, &mut broken);
        tables.stock(&mut broken);
        tables.reservations_and_notifications(&mut broken);
        tables.claims_sent(&shared.mail, &mut broken);
        tables.projection(&shared.read_model, &mut broken).await;
        let failures = shared
            .storage
            .list_failures(Some(tenant))
            .await
            .expect("failures");
        if !failures.is_empty() {
            broken.push(format!("{tenant}: {} failures left", failures.len()));
        }
    }
    assert!(broken.is_empty(), "invariants broken:\n  {}", broken.join("\n  "));
}

/// One tenant's rows, read once for every check.
struct Tables {
    tenant: &'static str,
    rows: Vec<DataItem>,
    orders: Vec<(DataItem, OrderAttributes)>,
    /// By order code.
    reservations: BTreeMap<String, ReservationAttributes>,
    /// Claimed notifications by key, with whether the relay marked them sent.
    claims: BTreeMap<String, (Notification, bool)>,
}

impl Tables {
    async fn read(shared: &Shared, shop: &Shop, tenant: &'static str) -> Self {
        let rows = rows(shared.storage.as_ref(), tenant).await;
        let of = |prefix: &'static str| rows.iter().filter(move |r| r.sk.starts_with(prefix));
        let orders = of("ORDER#")
            .map(|r| (r.clone(), r.attributes_as().expect("an order")))
            .collect();
        let reservations = of("RESERVATION#")
            .map(|r| {
                let reservation: ReservationAttributes = r.attributes_as().expect("a reservation");
                (reservation.order_code.clone(), reservation)
            })
            .collect();
        let claims = shop
            .notifications
            .claims(&staff(tenant))
            .await
            .expect("claims")
            .into_iter()
            .map(|(notification, sent)| (notification.key.clone(), (notification, sent)))
            .collect();
        Self {
            tenant,
            rows,
            orders,
            reservations,
            claims,
        }
    }

    /// Tenancy and versions: every row is its tenant's; every entity's
    /// commands are versions `1..=n`, its data row at `n`, its history `1..n`.
    async fn entities(&self, storage: &dyn Storage, broken: &mut Vec<String>) {
        let tenant = self.tenant;
        for row in &self.rows {
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
    }

    /// Orders: at most one per request however often it was retried (keyed
    /// or not), and the one its answers named. (Every command finished was
    /// checked when the schedule settled.)
    fn one_order_per_request(&self, ledger: &Ledger, broken: &mut Vec<String>) {
        let mut per_request: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (row, order) in &self.orders {
            per_request
                .entry(order.payment_method.as_str())
                .or_default()
                .push(row.code.as_str());
        }
        for ((t, tag), answers) in ledger.placed.iter().filter(|((t, _), _)| t == self.tenant) {
            let stored = per_request.get(tag.as_str()).cloned().unwrap_or_default();
            let answered: BTreeSet<&str> = answers
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
        }
    }

    /// Sequences: order numbers unique, and the counter issued every number
    /// once: the next one is one past the count of increments that landed.
    async fn sequences(&self, shop: &Shop, world: &World, broken: &mut Vec<String>) {
        let tenant = self.tenant;
        let codes: BTreeSet<&str> = self.orders.iter().map(|(r, _)| r.code.as_str()).collect();
        if codes.len() != self.orders.len() {
            broken.push(format!(
                "{tenant}: {} orders share {} codes",
                self.orders.len(),
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
    }

    /// Keyed status moves: a retry or racing duplicate answers what the
    /// first did, never a refusal of the move already made.
    fn keyed_moves(&self, ledger: &Ledger, broken: &mut Vec<String>) {
        for ((t, key), answers) in ledger.moves.iter().filter(|((t, _), _)| t == self.tenant) {
            let moved: BTreeSet<u64> = answers
                .iter()
                .filter_map(|a| match a {
                    Answer::Moved { version } => Some(*version),
                    _ => None,
                })
                .collect();
            let refused = answers.iter().any(
                |a| matches!(a, Answer::Refused(_, kind) if *kind == ErrorKind::InvalidTransition.as_str()),
            );
            if moved.len() > 1 || (!moved.is_empty() && refused) {
                broken.push(format!("{t} {key}: keyed move answered {answers:?}"));
            }
        }
    }

    /// Stock: every product's reserved units are its `reserved`
    /// reservations', its quantity the initial stock less its `deducted`
    /// ones; nothing oversold.
    fn stock(&self, broken: &mut Vec<String>) {
        let tenant = self.tenant;
        for (code, stock) in PRODUCTS {
            let inventory: InventoryAttributes = self
                .rows
                .iter()
                .find(|r| r.sk.starts_with("INVENTORY#") && r.code == code)
                .expect("inventory")
                .attributes_as()
                .expect("inventory attributes");
            let units = |state: ReservationState| -> i64 {
                self.reservations
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
    }

    /// Each order's reservation decided once and consistent with the order;
    /// one confirmation per order, one alert per failed reservation.
    fn reservations_and_notifications(&self, broken: &mut Vec<String>) {
        let tenant = self.tenant;
        let claimed = |order: &str, kind: NotificationKind| {
            self.claims
                .values()
                .filter(|(n, _)| n.order_code == order && n.kind == kind)
                .count()
        };
        for (row, order) in &self.orders {
            let code = row.code.as_str();
            let reservation = self.reservations.get(code);
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
    }

    /// Every claim marked sent by the relay and received by the mail service
    /// (sent at least once; the service drops repeats by id).
    fn claims_sent(&self, mail: &OutboxNotifier, broken: &mut Vec<String>) {
        let received: BTreeSet<String> = mail.sent().iter().map(|n| n.key.clone()).collect();
        for (key, (_, marked)) in &self.claims {
            if !marked || !received.contains(key) {
                broken.push(format!(
                    "{} {key}: claimed, marked sent {marked}, received {}",
                    self.tenant,
                    received.contains(key)
                ));
            }
        }
    }

    /// The projection: every order version applied exactly once, and the
    /// units equal to what the orders say.
    async fn projection(&self, read_model: &MemoryTarget, broken: &mut Vec<String>) {
        let tenant = self.tenant;
        let applied = read_model.rows(UNITS_ORDERED, "applied").await;
        let units = read_model.rows(UNITS_ORDERED, "units").await;
        let mut expected_units: BTreeMap<String, i64> = BTreeMap::new();
        for (row, order) in &self.orders {
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
        let prefix = format!("{tenant}/");
        let keys: BTreeSet<&String> = expected_units
            .keys()
            .chain(units.keys().filter(|k| k.starts_with(&prefix)))
            .collect();
        for key in keys {
            let projected = units.get(key).and_then(Value::as_i64).unwrap_or(0);
            let expected = expected_units.get(key).copied().unwrap_or(0);
            if projected != expected {
                broken.push(format!(
                    "projection: {key} has {projected} units, the orders say {expected}"
                ));
            }
        }
    }
}
