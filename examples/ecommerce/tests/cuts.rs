//! The order handler cut off at every step of a new order — a write that
//! failed before landing, a write that landed but whose answer was lost, a
//! run dropped (as by its timeout) while a write that lands was in flight —
//! then run again from the start: the stock, the reservation, the order and
//! the notifications (the alert of a failed reservation, the confirmation)
//! end exactly as after an uncut run, each notification claimed once and
//! sent by the outbox's relay.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cqrs_core::testing::{Fault, FaultyStorage, Op, Rule};
use cqrs_core::{
    AsyncDispatch, CommandService, DataService, DataSyncEvent, DataSyncHandler, Engine, InvocationContext,
};
use ecommerce::domain::{
    InventoryAttributes, OrderAttributes, Reservation, ReservationAttributes, ReservationState,
};
use ecommerce::notify::NotificationKind;
use ecommerce::services::{NewOrder, NewProduct, SetInventory};
use ecommerce::shop::ShopConfig;
use ecommerce::sync::OrderSyncHandler;
use ecommerce::Shop;
use serde_json::json;

const TENANT: &str = "shop-a";
const PRODUCT: &str = "PRD-CUT";
/// Units on hand.
const STOCK: i64 = 3;

fn staff() -> InvocationContext {
    InvocationContext::new(TENANT, "staff-1").with_roles(["staff"])
}

fn customer() -> InvocationContext {
    InvocationContext::new(TENANT, "customer-1").with_roles(["customer"])
}

/// How a run is cut at the chosen write.
#[derive(Debug, Clone, Copy)]
enum Cut {
    /// The write fails without landing; the handler returns the error.
    NotLanded,
    /// The write lands, its answer is lost; the handler returns an error.
    AnswerLost,
    /// The write lands late; the run is dropped before (a handler timeout,
    /// a drain deadline).
    Dropped,
}

/// What an order's event left behind.
#[derive(Debug, PartialEq, Eq)]
struct Effects {
    reservation: (ReservationState, u64),
    reserved_quantity: i64,
    order_reservation: Reservation,
    /// Claimed notifications of the order: kind, message, sent.
    claims: Vec<(NotificationKind, String, bool)>,
    /// Notifications the relay's transport got for the order.
    delivered: HashMap<NotificationKind, usize>,
}

/// A shop over faulty in-memory storage whose order is stored but not yet
/// handled, and the order's creation event.
struct World {
    shop: Shop,
    storage: Arc<FaultyStorage>,
    event: DataSyncEvent,
    order_code: String,
}

async fn world(units: u32) -> World {
    let storage = Arc::new(FaultyStorage::new(Arc::new(cqrs_memory::InMemory::new())));
    // The shop's engine runs the outbox relay of the notifications claimed
    // through its services, and its in-process pipeline recovers the
    // commands whose writes lost their answers. The order is placed through
    // another (external dispatch: the order is only stored) and its event
    // handled here, by hand.
    let shop = Shop::new(storage.clone());
    let placer = Shop::with_config(
        storage.clone(),
        ShopConfig {
            dispatch: AsyncDispatch::External,
            ..ShopConfig::default()
        },
    );
    let product: NewProduct = serde_json::from_value(json!({
        "code": PRODUCT, "name": "Cut Item", "categoryCode": "CUT", "sku": "SKU-CUT",
        "price": 10.0, "currency": "USD", "isActive": true,
    }))
    .expect("a product");
    shop.products.create(product, &staff()).await.expect("created");
    let stock = SetInventory {
        quantity: STOCK,
        warehouse_code: "WH-1".into(),
        version: None,
    };
    shop.inventory
        .set(PRODUCT, stock, &staff())
        .await
        .expect("stocked");
    let order: NewOrder = serde_json::from_value(json!({
        "customerId": "CUST-001",
        "items": [{"productCode": PRODUCT, "quantity": units, "price": 10.0}],
        "shippingAddress": {"street": "1 Main St", "city": "Tokyo", "postalCode": "100-0001", "country": "JP"},
        "paymentMethod": "card"
    }))
    .expect("an order");
    let placed = placer.orders.create(order, &customer()).await.expect("placed");
    let bare = Engine::builder(storage.clone()).build();
    bare.process(&placed.key(), 1).await.expect("applied");
    let item = DataService::get_item(&bare, &placed.key(), &staff())
        .await
        .expect("read")
        .expect("applied");
    World {
        shop,
        storage,
        event: DataSyncEvent::of(None, item),
        order_code: placed.code.to_string(),
    }
}

impl World {
    fn handler(&self) -> OrderSyncHandler {
        OrderSyncHandler::new(self.shop.engine.services())
    }

    async fn effects(&self) -> Effects {
        let ctx = staff();
        self.shop.engine.wait_idle().await;
        let reservation = self
            .shop
            .inventory
            .reservation(&self.order_code, &ctx)
            .await
            .expect("read")
            .map(|r: ReservationAttributes| r.state);
        let reservation_version = DataService::get_item(
            &self.shop.engine,
            &cqrs_core::EntityKey::new(
                cqrs_core::tenant_pk(TENANT),
                ecommerce::domain::reservation_sk(&self.order_code),
            ),
            &ctx,
        )
        .await
        .expect("read")
        .map_or(0, |i| i.version);
        let inventory: InventoryAttributes = self
            .shop
            .inventory
            .get(PRODUCT, &ctx)
            .await
            .expect("stock")
            .attributes_as()
            .expect("inventory");
        let order: OrderAttributes = self
            .shop
            .orders
            .get(&self.order_code, &ctx)
            .await
            .expect("order")
            .attributes_as()
            .expect("an order");
        let claims = self
            .shop
            .notifications
            .claims(&ctx)
            .await
            .expect("listed")
            .into_iter()
            .filter(|(n, _)| n.order_code == self.order_code)
            .map(|(n, sent)| (n.kind, n.message, sent))
            .collect();
        let mut delivered = HashMap::new();
        for n in self.shop.notifier.sent() {
            if n.order_code == self.order_code {
                *delivered.entry(n.kind).or_default() += 1;
            }
        }
        let failures = CommandService::list_failures(&self.shop.engine, &ctx)
            .await
            .expect("listed");
        assert!(failures.is_empty(), "{failures:?}");
        Effects {
            reservation: (reservation.expect("a reservation"), reservation_version),
            reserved_quantity: inventory.reserved_quantity,
            order_reservation: order.reservation,
            claims,
            delivered,
        }
    }
}

/// Runs the handler on a new order of `units` uncut, then cut at each of
/// its writes in each way and run again: the effects are those of the
/// uncut run every time.
async fn cut_at_every_step(units: u32, expected_state: ReservationState) {
    let uncut = world(units).await;
    let before = uncut.storage.calls(Op::Apply);
    uncut.handler().handle(&uncut.event).await.expect("handled");
    let expected = uncut.effects().await;
    let steps = uncut.storage.calls(Op::Apply) - before;
    assert_eq!(expected.reservation, (expected_state, 1));
    assert!(expected.claims.iter().all(|(_, _, sent)| *sent), "{expected:?}");
    assert!(expected.delivered.values().all(|n| *n == 1), "{expected:?}");
    assert!(steps >= 4, "reserve, mark, claim(s), mark sent: {steps}");

    for cut in [Cut::NotLanded, Cut::AnswerLost, Cut::Dropped] {
        for step in 0..steps {
            let world = world(units).await;
            let fault = match cut {
                Cut::NotLanded => Fault::Unavailable,
                Cut::AnswerLost => Fault::LostResponse,
                Cut::Dropped => Fault::DelayResponse(Duration::from_millis(200)),
            };
            world
                .storage
                .inject(Rule::new(fault).on(&[Op::Apply]).after(step).times(1));
            let handler = world.handler();
            let run = handler.handle(&world.event);
            match cut {
                Cut::Dropped => {
                    let _ = tokio::time::timeout(Duration::from_millis(50), run).await;
                }
                _ => {
                    let _ = run.await;
                }
            }
            // Whatever the cut run left in flight lands; then the event
            // is handled again, from the start.
            world.shop.engine.wait_idle().await;
            tokio::time::sleep(Duration::from_millis(250)).await;
            world.storage.heal();
            handler
                .handle(&world.event)
                .await
                .unwrap_or_else(|e| panic!("{cut:?} at write {step}: the re-run failed: {e}"));
            let effects = world.effects().await;
            assert_eq!(effects, expected, "{cut:?} at write {step} of {steps}");
        }
    }
}

/// An order the stock cannot cover: the reservation fails, operations are
/// alerted once, the customer is confirmed once, whichever step was cut.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_reservation_alerts_once_whichever_step_is_cut() {
    cut_at_every_step(STOCK as u32 + 2, ReservationState::Failed).await;
}

/// An order the stock covers: reserved once, confirmed once, whichever
/// step was cut.
#[tokio::test(flavor = "multi_thread")]
async fn a_reservation_holds_once_whichever_step_is_cut() {
    cut_at_every_step(2, ReservationState::Reserved).await;
}

/// A run of a new order's event reserved its stock and was cut off before
/// marking the order; the order was cancelled meanwhile, and the
/// cancellation's own run came before that reservation (it found nothing to
/// release). The event's re-run finds the order cancelled and unmarked, and
/// releases what the cut run reserved: no stock stays held by a cancelled
/// order, and the customer is confirmed once. (Found by the deterministic
/// simulation, `tests/simulation.rs`.)
#[tokio::test(flavor = "multi_thread")]
async fn a_reservation_cut_off_before_its_mark_is_released_once_the_order_is_cancelled() {
    let world = world(2).await;
    let ctx = staff();
    let order: OrderAttributes = world.event.new.attributes_as().expect("an order");
    // What the cut run did before it was cut: the stock reserved.
    let reserved = world
        .shop
        .inventory
        .reserve(&world.order_code, &order.units_per_product(), &ctx)
        .await
        .expect("reserved");
    assert_eq!(reserved, ecommerce::services::ReserveOutcome::Reserved);
    // The cancellation, whose handler ran before the reservation existed:
    // written by an engine without handlers.
    let bare = Engine::builder(world.storage.clone()).build();
    bare.services()
        .update(&world.event.key())
        .publish_sync_typed(&ctx, |current: Option<OrderAttributes>| {
            Ok::<_, cqrs_core::Error>(current.map(|mut order| {
                order.status = ecommerce::domain::OrderStatus::Cancelled;
                order
            }))
        })
        .await
        .expect("cancelled");
    // The event handled again.
    world.handler().handle(&world.event).await.expect("handled");
    let effects = world.effects().await;
    assert_eq!(
        effects.reservation.0,
        ReservationState::Released,
        "the cancelled order's stock is released"
    );
    assert_eq!(effects.reserved_quantity, 0, "nothing held by a cancelled order");
    let confirmations = effects
        .claims
        .iter()
        .filter(|(kind, _, _)| *kind == NotificationKind::OrderConfirmation)
        .count();
    assert_eq!(confirmations, 1);
}
