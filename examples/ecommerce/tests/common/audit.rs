//! The audit of the process-level fault tests (`faults.rs`, `chaos.rs`):
//! waits until the accepted orders settle, then counts, over the tables,
//! the orders *lost* (never applied), *stranded* (applied, but their
//! reservation never settled or their command never finished), *doubled*
//! (stock reserved twice, a notification claimed twice), the stock *held by
//! nobody*, and the notifications *missing* or *unsent*.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use cqrs_core::{CommandService, DataItem};
use ecommerce::domain::{
    InventoryAttributes, OrderAttributes, OrderStatus, Reservation, ReservationAttributes, ReservationState,
};
use ecommerce::notify::NotificationKind;

use super::Inspector;

/// How long everything accepted may take to settle after the fault.
pub const SETTLE_WITHIN: Duration = Duration::from_secs(120);

/// What a fault did to the accepted orders.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub accepted: usize,
    pub lost: usize,
    pub stranded: usize,
    pub doubled: usize,
    pub held_by_nobody: i64,
    /// Notifications: every applied order's confirmation and every failed
    /// reservation's alert, claimed in the outbox and marked sent by its relay.
    pub notifications: NotificationCounts,
}

/// The notifications of the accepted orders, from the tables.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NotificationCounts {
    /// Confirmations claimed and marked sent.
    pub confirmations_sent: usize,
    /// Orders that failed to reserve, and their alerts claimed and marked sent.
    pub failed_reservations: usize,
    pub alerts_sent: usize,
    /// An applied order without a confirmation claim, a failed one without an alert claim.
    pub missing: usize,
    /// Claims the relay has not marked sent.
    pub unsent: usize,
}

impl Counts {
    pub fn assert_clean(&self, what: &str) {
        assert_eq!(
            (
                self.lost,
                self.stranded,
                self.doubled,
                self.held_by_nobody,
                self.notifications.missing,
                self.notifications.unsent
            ),
            (0, 0, 0, 0, 0, 0),
            "{what}: {self:?}"
        );
    }
}

/// Whether the order's stock reservation is still to be decided. An order
/// cancelled before its reservation was attempted never reserves (its
/// creation's handler finds it cancelled): `pending` is its final state.
fn reservation_unsettled(order: &OrderAttributes) -> bool {
    order.reservation == Reservation::Pending && order.status != OrderStatus::Cancelled
}

/// Waits until every accepted order is applied, settled and finished (or
/// the time is up), then audits the whole tenant.
pub async fn settle_and_audit(inspector: &Inspector, accepted: &[String]) -> (Counts, Duration) {
    let started = Instant::now();
    let unique: HashSet<&String> = accepted.iter().collect();
    assert_eq!(unique.len(), accepted.len(), "order numbers are unique");
    loop {
        let orders = inspector.items("ORDER#").await;
        let by_code: HashMap<&str, &DataItem> = orders.iter().map(|o| (o.code.as_str(), o)).collect();
        let notifications = notification_counts(inspector, accepted).await;
        let mut pending = notifications.missing + notifications.unsent;
        for code in accepted {
            match by_code.get(code.as_str()) {
                None => pending += 1,
                Some(order) => {
                    let attributes: OrderAttributes = order.attributes_as().expect("an order");
                    if reservation_unsettled(&attributes) || !inspector.finished(order).await {
                        pending += 1;
                    }
                }
            }
        }
        if pending == 0 || started.elapsed() > SETTLE_WITHIN {
            let settle_time = started.elapsed();
            return (audit(inspector, accepted).await, settle_time);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Counts lost, stranded and doubled work, and stock held by nobody.
pub async fn audit(inspector: &Inspector, accepted: &[String]) -> Counts {
    let orders = inspector.items("ORDER#").await;
    let by_code: HashMap<String, (DataItem, OrderAttributes)> = orders
        .into_iter()
        .map(|o| {
            let attributes = o.attributes_as().expect("an order");
            (o.code.to_string(), (o, attributes))
        })
        .collect();
    let mut counts = Counts {
        accepted: accepted.len(),
        ..Counts::default()
    };
    for code in accepted {
        match by_code.get(code) {
            None => counts.lost += 1,
            Some((order, attributes)) => {
                if reservation_unsettled(attributes) || !inspector.finished(order).await {
                    counts.stranded += 1;
                }
            }
        }
    }
    // Stock: what the orders' reservations hold adds up to each product's
    // reserved quantity, and every unit held belongs to an order that holds it.
    let reservations: HashMap<String, ReservationAttributes> = inspector
        .items("RESERVATION#")
        .await
        .into_iter()
        .map(|r| {
            let attributes: ReservationAttributes = r.attributes_as().expect("a reservation");
            (attributes.order_code.clone(), attributes)
        })
        .collect();
    let mut held: HashMap<String, i64> = HashMap::new();
    for (order_code, reservation) in &reservations {
        if reservation.state != ReservationState::Reserved {
            continue;
        }
        let holds = by_code.get(order_code).is_some_and(|(_, o)| {
            o.reservation == Reservation::Reserved
                && !matches!(
                    o.status,
                    OrderStatus::Cancelled | OrderStatus::Shipped | OrderStatus::Delivered
                )
        });
        for (product, units) in &reservation.units {
            *held.entry(product.clone()).or_default() += units;
            if !holds {
                counts.held_by_nobody += units;
            }
        }
    }
    for item in inspector.items("INVENTORY#").await {
        let inventory: InventoryAttributes = item.attributes_as().expect("an inventory record");
        let listed = held.get(&inventory.product_code).copied().unwrap_or(0);
        if listed != inventory.reserved_quantity {
            counts.doubled += 1;
        }
    }
    // Every order that says "reserved" holds its units, once.
    for (code, (_, order)) in &by_code {
        let holding = order.reservation == Reservation::Reserved
            && matches!(
                order.status,
                OrderStatus::Pending | OrderStatus::Confirmed | OrderStatus::Processing
            );
        let holds = reservations
            .get(code)
            .is_some_and(|r| r.state == ReservationState::Reserved && r.units == order.units_per_product());
        if holding && !holds {
            counts.stranded += 1;
        }
    }
    // Notifications: one per order and kind, however often handlers ran.
    let notifications = inspector
        .shop
        .notifications
        .stored(&inspector.ctx)
        .await
        .expect("listed");
    let mut per_event: BTreeMap<(String, String), usize> = BTreeMap::new();
    for n in &notifications {
        *per_event
            .entry((n.order_code.clone(), format!("{:?}", n.kind)))
            .or_default() += 1;
    }
    counts.doubled += per_event.values().filter(|&&n| n > 1).count();
    counts.notifications = notification_counts(inspector, accepted).await;
    let failures = CommandService::list_failures(&inspector.shop.engine, &inspector.ctx)
        .await
        .expect("listed");
    assert!(failures.is_empty(), "no command failed: {failures:?}");
    counts
}

/// Counts, from the tables, the accepted orders' confirmations and their
/// failed reservations' alerts: claimed, and marked sent by the outbox relay.
pub async fn notification_counts(inspector: &Inspector, accepted: &[String]) -> NotificationCounts {
    let orders: HashMap<String, OrderAttributes> = inspector
        .items("ORDER#")
        .await
        .into_iter()
        .map(|o| (o.code.to_string(), o.attributes_as().expect("an order")))
        .collect();
    let claims = inspector
        .shop
        .notifications
        .claims(&inspector.ctx)
        .await
        .expect("listed");
    let claim = |code: &str, kind: NotificationKind| {
        claims
            .iter()
            .find(|(n, _)| n.order_code == code && n.kind == kind)
            .map(|(_, sent)| *sent)
    };
    let mut counts = NotificationCounts::default();
    let mut tally = |claimed: Option<bool>, sent: &mut usize| match claimed {
        None => counts.missing += 1,
        Some(false) => counts.unsent += 1,
        Some(true) => *sent += 1,
    };
    let (mut confirmations_sent, mut alerts_sent, mut failed_reservations) = (0, 0, 0);
    for code in accepted {
        let Some(order) = orders.get(code) else {
            // Not applied: counted as lost by the audit.
            continue;
        };
        tally(
            claim(code, NotificationKind::OrderConfirmation),
            &mut confirmations_sent,
        );
        if order.reservation == Reservation::Failed {
            failed_reservations += 1;
            tally(
                claim(code, NotificationKind::InventoryReservationFailed),
                &mut alerts_sent,
            );
        }
    }
    counts.confirmations_sent = confirmations_sent;
    counts.alerts_sent = alerts_sent;
    counts.failed_reservations = failed_reservations;
    counts
}
