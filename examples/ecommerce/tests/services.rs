//! Unit tests of the storefront's services against mocks of the framework's
//! services: what they publish, and what they refuse to publish.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use cqrs_core::{
    CommandInput, CommandRecord, CommandStatus, DataItem, DataSyncEvent, DataSyncHandler, EntityKey, Error,
    ExpectedVersion, IdempotencyKey, InvocationContext, MockCommandService, MockDataService,
    MockSequenceService, Published, SequenceValue, Services, Synced,
};
use ecommerce::domain::OrderStatus;
use ecommerce::error::ErrorKind;
use ecommerce::services::{InventoryService, NewOrder, OrderService, ReserveOutcome};
use ecommerce::sync::OrderSyncHandler;
use ecommerce::ShopError;
use serde_json::{json, Value};

const PK: &str = "TENANT#shop-a";

fn ctx() -> InvocationContext {
    InvocationContext::new("shop-a", "user-1").with_roles(["staff"])
}

/// A data item of shop-a.
fn item(sk: &str, name: &str, version: u64, attributes: Value) -> DataItem {
    DataItem::builder(PK, sk)
        .name(name)
        .version(version)
        .attributes(attributes)
        .build()
}

fn product(code: &str, price: f64, is_active: bool) -> DataItem {
    item(
        &format!("PRODUCT#{code}"),
        "Wireless Mouse",
        1,
        json!({
            "categoryCode": "ACCESSORIES", "sku": format!("SKU-{code}"), "price": price,
            "currency": "USD", "description": "d", "images": [], "isActive": is_active
        }),
    )
}

fn inventory(code: &str, quantity: i64, reserved: i64, version: u64) -> DataItem {
    item(
        &format!("INVENTORY#{code}"),
        &format!("Inventory {code}"),
        version,
        json!({
            "productCode": code, "quantity": quantity, "reservedQuantity": reserved,
            "warehouseCode": "WH-1", "lastRestockedAt": "2024-01-15T10:30:00Z"
        }),
    )
}

fn order_attributes(status: &str, reservation: &str) -> Value {
    json!({
        "customerId": "CUST-001",
        "userId": "user-1",
        "items": [{"productCode": "PRD-001", "name": "Wireless Mouse", "quantity": 2, "price": 29.99}],
        "shippingAddress": {"street": "123 Main St", "city": "Tokyo", "postalCode": "100-0001", "country": "JP"},
        "paymentMethod": "credit_card",
        "subtotal": 59.98, "tax": 6.0, "total": 65.98,
        "status": status, "placedAt": "2024-01-15T10:30:00Z", "reservation": reservation
    })
}

fn order(code: &str, status: &str, reservation: &str, version: u64) -> DataItem {
    item(
        &format!("ORDER#{code}"),
        &format!("Order {code}"),
        version,
        order_attributes(status, reservation),
    )
}

/// The data item a sync publish of `command` would produce.
fn applied(command: &CommandInput) -> DataItem {
    let version = match command.version {
        ExpectedVersion::Exactly(v) => v + 1,
        ExpectedVersion::Latest => 99,
    };
    DataItem::builder(&command.pk, &command.sk)
        .code(&command.code)
        .name(&command.name)
        .version(version)
        .attributes(command.attributes.clone())
        .build()
}

/// The command row an async publish of `command` would store.
fn record(command: &CommandInput) -> CommandRecord {
    CommandRecord::builder(&command.pk, &command.sk)
        .code(&command.code)
        .name(&command.name)
        .attributes(command.attributes.clone())
        .status(CommandStatus::Published)
        .build()
}

fn new_order(product_code: &str, quantity: Value, price: f64) -> NewOrder {
    serde_json::from_value(json!({
        "customerId": "CUST-001",
        "items": [{"productCode": product_code, "name": "Wireless Mouse", "quantity": quantity, "price": price}],
        "shippingAddress": {"street": "123 Main St", "city": "Tokyo", "postalCode": "100-0001", "country": "JP"},
        "paymentMethod": "credit_card"
    }))
    .expect("a valid order")
}

fn services(commands: MockCommandService, data: MockDataService, sequences: MockSequenceService) -> Services {
    Services::new(Arc::new(commands), Arc::new(data), Arc::new(sequences))
}

/// Data returning `catalogue` for product keys, nothing for other keys.
fn catalogue(products: Vec<DataItem>) -> MockDataService {
    let mut data = MockDataService::new();
    data.expect_get_item()
        .returning(move |key: &EntityKey, _| Ok(products.iter().find(|p| p.sk == key.sk).cloned()));
    data
}

/// Mocks that must neither number nor publish anything.
fn nothing_published() -> (MockCommandService, MockSequenceService) {
    let mut commands = MockCommandService::new();
    commands.expect_find_idempotent().never();
    commands.expect_publish_async().never();
    commands.expect_publish_sync().never();
    commands.expect_publish_partial_update_async().never();
    commands.expect_publish_partial_update_sync().never();
    commands.expect_commit().never();
    let mut sequences = MockSequenceService::new();
    sequences.expect_next().never();
    (commands, sequences)
}

async fn create_refused(products: Vec<DataItem>, order: NewOrder) -> ShopError {
    let (commands, sequences) = nothing_published();
    let service = OrderService::new(services(commands, catalogue(products), sequences));
    service
        .create(order, &ctx())
        .await
        .expect_err("the order is refused")
}

fn assert_invalid_input(err: &ShopError, needle: &str) {
    assert!(matches!(err, ShopError::InvalidInput(_)), "{err:?}");
    assert_eq!(err.status_and_kind(), (400, ErrorKind::InvalidInput));
    assert!(
        err.to_string().contains(needle),
        "'{err}' should mention '{needle}'"
    );
}

/// A request the API document allows, which the shop's data refuses.
fn assert_unprocessable(err: &ShopError, needle: &str) {
    assert!(matches!(err, ShopError::Unprocessable(_)), "{err:?}");
    assert_eq!(err.status_and_kind(), (422, ErrorKind::Unprocessable));
    assert!(
        err.to_string().contains(needle),
        "'{err}' should mention '{needle}'"
    );
}

// ---- OrderService::create ---------------------------------------------------

#[tokio::test]
async fn create_rejects_a_price_other_than_the_catalogue() {
    let err = create_refused(
        vec![product("PRD-001", 29.99, true)],
        new_order("PRD-001", json!(2), 19.99),
    )
    .await;
    assert_unprocessable(&err, "29.99");
}

#[tokio::test]
async fn create_rejects_an_unknown_product() {
    let err = create_refused(
        vec![product("PRD-001", 29.99, true)],
        new_order("PRD-404", json!(2), 29.99),
    )
    .await;
    assert_unprocessable(&err, "unknown product PRD-404");
}

#[tokio::test]
async fn create_rejects_an_inactive_product() {
    let err = create_refused(
        vec![product("PRD-001", 29.99, false)],
        new_order("PRD-001", json!(2), 29.99),
    )
    .await;
    assert_unprocessable(&err, "PRD-001");
}

#[tokio::test]
async fn create_rejects_quantity_zero() {
    let err = create_refused(
        vec![product("PRD-001", 29.99, true)],
        new_order("PRD-001", json!(0), 29.99),
    )
    .await;
    assert_invalid_input(&err, "quantity");
}

#[tokio::test]
async fn create_numbers_totals_and_publishes_a_valid_order_once() {
    let mut sequences = MockSequenceService::new();
    sequences
        .expect_next()
        .withf(|request, ctx| request.type_code == "ORDER" && ctx.tenant_code == "shop-a")
        .times(1)
        .returning(|_, _| {
            Ok(SequenceValue {
                no: 1,
                formatted: "ORD-000001".into(),
                issued_at: chrono::Utc::now(),
            })
        });
    let mut commands = MockCommandService::new();
    commands
        .expect_publish_async()
        .withf(|cmd, _| {
            let a = &cmd.attributes;
            cmd.pk == PK
                && cmd.sk == "ORDER#ORD-000001"
                && cmd.code == "ORD-000001"
                && cmd.name == "Order ORD-000001"
                && cmd.version == ExpectedVersion::NEW
                && a["subtotal"].as_f64() == Some(59.98)
                && a["tax"].as_f64() == Some(6.0)
                && a["total"].as_f64() == Some(65.98)
                && a["status"] == "pending"
                && a["reservation"] == "pending"
                && a["items"][0]["quantity"] == 2
                && a["items"][0]["price"].as_f64() == Some(29.99)
                && a.get("shippedAt").is_none()
        })
        .times(1)
        .returning(|cmd, _| Ok(Published::Written(record(&cmd))));
    commands.expect_publish_sync().never();
    let service = OrderService::new(services(
        commands,
        catalogue(vec![product("PRD-001", 29.99, true)]),
        sequences,
    ));
    let created = service
        .create(new_order("PRD-001", json!(2), 29.99), &ctx())
        .await
        .expect("created");
    assert_eq!(created.code, "ORD-000001");
    assert_eq!(created.sk, "ORDER#ORD-000001");
    assert_eq!(created.attributes["total"].as_f64(), Some(65.98));
}

// ---- OrderService::update_status --------------------------------------------

/// An order service whose data holds `current`, and which must not publish.
fn order_service_without_publish(current: DataItem) -> OrderService {
    let (commands, sequences) = nothing_published();
    let mut data = MockDataService::new();
    data.expect_get_item()
        .returning(move |_, _| Ok(Some(current.clone())));
    OrderService::new(services(commands, data, sequences))
}

#[tokio::test]
async fn update_status_refuses_an_invalid_transition() {
    let service = order_service_without_publish(order("ORD-000001", "pending", "reserved", 2));
    let err = service
        .update_status("ORD-000001", OrderStatus::Shipped, None, None, &ctx())
        .await
        .expect_err("pending cannot become shipped");
    assert!(
        matches!(
            err,
            ShopError::InvalidTransition {
                from: OrderStatus::Pending,
                to: OrderStatus::Shipped
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.status_and_kind(), (409, ErrorKind::InvalidTransition));
    assert_eq!(err.to_string(), "cannot transition from pending to shipped");
}

#[tokio::test]
async fn update_status_refuses_to_confirm_an_order_without_reserved_stock() {
    for reservation in ["pending", "failed"] {
        let service = order_service_without_publish(order("ORD-000001", "pending", reservation, 2));
        let err = service
            .update_status("ORD-000001", OrderStatus::Confirmed, None, None, &ctx())
            .await
            .expect_err("not reserved");
        assert!(matches!(err, ShopError::Conflict(_)), "{err:?}");
        assert_eq!(err.status_and_kind(), (409, ErrorKind::Conflict));
        assert!(err.to_string().contains(reservation), "{err}");
    }
}

#[tokio::test]
async fn update_status_with_a_stale_version_is_a_conflict_without_publishing() {
    let service = order_service_without_publish(order("ORD-000001", "pending", "reserved", 3));
    let err = service
        .update_status("ORD-000001", OrderStatus::Confirmed, Some(2), None, &ctx())
        .await
        .expect_err("stale version");
    assert!(
        matches!(
            err,
            ShopError::Core(Error::Conflict {
                expected: ExpectedVersion::Exactly(2),
                actual: Some(3),
                ..
            })
        ),
        "{err:?}"
    );
    assert_eq!(err.status_and_kind(), (409, ErrorKind::VersionConflict));
}

#[tokio::test]
async fn update_status_to_shipped_sets_shipped_at_at_the_current_version() {
    let mut data = MockDataService::new();
    data.expect_get_item()
        .returning(|_, _| Ok(Some(order("ORD-000001", "processing", "reserved", 4))));
    let mut commands = MockCommandService::new();
    commands
        .expect_publish_sync()
        .withf(|cmd, _| {
            cmd.sk == "ORDER#ORD-000001"
                && cmd.version == ExpectedVersion::Exactly(4)
                && cmd.attributes["status"] == "shipped"
                && cmd.attributes["shippedAt"].is_string()
                && cmd.attributes.get("deliveredAt").is_none()
                && cmd.attributes["total"].as_f64() == Some(65.98)
                && cmd.attributes["reservation"] == "reserved"
        })
        .times(1)
        .returning(|cmd, _| Ok(Synced::finished(applied(&cmd))));
    commands.expect_publish_async().never();
    let mut sequences = MockSequenceService::new();
    sequences.expect_next().never();
    let service = OrderService::new(services(commands, data, sequences));
    let before = chrono::Utc::now();
    let shipped = service
        .update_status("ORD-000001", OrderStatus::Shipped, Some(4), None, &ctx())
        .await
        .expect("shipped");
    assert_eq!(shipped.version, 5);
    assert_eq!(shipped.attributes["status"], "shipped");
    let at: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(shipped.attributes["shippedAt"].clone()).expect("a timestamp");
    assert!(at >= before - chrono::Duration::seconds(1), "{at} vs {before}");
}

#[tokio::test]
async fn update_status_to_delivered_sets_delivered_at() {
    let mut data = MockDataService::new();
    data.expect_get_item()
        .returning(|_, _| Ok(Some(order("ORD-000001", "shipped", "reserved", 5))));
    let mut commands = MockCommandService::new();
    commands
        .expect_publish_sync()
        .withf(|cmd, _| {
            cmd.version == ExpectedVersion::Exactly(5)
                && cmd.attributes["status"] == "delivered"
                && cmd.attributes["deliveredAt"].is_string()
        })
        .times(1)
        .returning(|cmd, _| Ok(Synced::finished(applied(&cmd))));
    let service = OrderService::new(services(commands, data, MockSequenceService::new()));
    let delivered = service
        .update_status("ORD-000001", OrderStatus::Delivered, None, None, &ctx())
        .await
        .expect("delivered");
    assert_eq!(delivered.attributes["status"], "delivered");
}

#[tokio::test]
async fn update_status_of_a_missing_order_is_not_found() {
    let (commands, sequences) = nothing_published();
    let mut data = MockDataService::new();
    data.expect_get_item().returning(|_, _| Ok(None));
    // Not even a creation waiting in the pipeline.
    data.expect_get_latest().returning(|_, _| Ok(None));
    let service = OrderService::new(services(commands, data, sequences));
    let err = service
        .update_status("ORD-000009", OrderStatus::Cancelled, None, None, &ctx())
        .await
        .expect_err("missing");
    assert_eq!(err.status_and_kind(), (404, ErrorKind::NotFound));
}

// ---- InventoryService::reserve, release, deduct ---------------------------------

fn units(product_code: &str, n: i64) -> BTreeMap<String, i64> {
    BTreeMap::from([(product_code.to_owned(), n)])
}

fn reservation(order_code: &str, product_code: &str, units: i64, state: &str, version: u64) -> DataItem {
    item(
        &format!("RESERVATION#{order_code}"),
        &format!("Reservation {order_code}"),
        version,
        json!({ "orderCode": order_code, "units": { product_code: units }, "state": state }),
    )
}

/// Data whose inventory reads return `stock(n)` and whose reservation reads
/// return `held(n)` (n: the read's number, per kind), counting both.
struct StockReads {
    inventory: Arc<AtomicUsize>,
    reservations: Arc<AtomicUsize>,
}

fn stock_and_reservations(
    stock: impl Fn(usize) -> Option<DataItem> + Send + Sync + 'static,
    held: impl Fn(usize) -> Option<DataItem> + Send + Sync + 'static,
) -> (MockDataService, StockReads) {
    let reads = StockReads {
        inventory: Arc::new(AtomicUsize::new(0)),
        reservations: Arc::new(AtomicUsize::new(0)),
    };
    let (inventory, reservations) = (reads.inventory.clone(), reads.reservations.clone());
    let mut data = MockDataService::new();
    data.expect_get_item().returning(move |key, _| {
        Ok(if key.sk.starts_with("INVENTORY#") {
            stock(inventory.fetch_add(1, Ordering::SeqCst))
        } else if key.sk.starts_with("RESERVATION#") {
            held(reservations.fetch_add(1, Ordering::SeqCst))
        } else if key.sk.starts_with("PRODUCT#") {
            Some(product("PRD-001", 29.99, true))
        } else {
            panic!("unexpected read of {key}")
        })
    });
    // Nothing is read "latest": stock is written synchronously only.
    data.expect_get_latest().never();
    (data, reads)
}

/// Commands that answer each commit with `answer(n, commands)` (n: the
/// commit's number), recording what was committed.
fn committing(
    answer: impl Fn(usize, &[CommandInput]) -> cqrs_core::Result<()> + Send + Sync + 'static,
) -> (MockCommandService, Arc<Mutex<Vec<Vec<CommandInput>>>>) {
    let committed = Arc::new(Mutex::new(Vec::new()));
    let record = committed.clone();
    let mut commands = MockCommandService::new();
    commands.expect_publish_sync().never();
    commands.expect_commit().returning(move |cmds, _| {
        let n = {
            let mut committed = record.lock().unwrap();
            committed.push(cmds.clone());
            committed.len() - 1
        };
        answer(n, &cmds)?;
        Ok(cmds.iter().map(|c| Synced::finished(applied(c))).collect())
    });
    (commands, committed)
}

fn conflict_on(command: &CommandInput) -> Error {
    Error::Conflict {
        key: command.key().id(),
        expected: command.version,
        actual: Some(1),
    }
}

#[tokio::test]
async fn reserve_commits_the_counters_and_a_new_reservation_together() {
    let (data, reads) = stock_and_reservations(|_| Some(inventory("PRD-001", 100, 5, 3)), |_| None);
    let (commands, committed) = committing(|_, _| Ok(()));
    let service = InventoryService::new(services(commands, data, MockSequenceService::new()));
    let outcome = service
        .reserve("ORD-000001", &units("PRD-001", 2), &ctx())
        .await
        .expect("reserved");
    assert_eq!(outcome, ReserveOutcome::Reserved);
    let committed = committed.lock().unwrap();
    assert_eq!(committed.len(), 1, "one commit");
    let [counters, held] = &committed[0][..] else {
        panic!("two commands: {:?}", committed[0]);
    };
    assert_eq!(counters.sk, "INVENTORY#PRD-001");
    assert_eq!(counters.version, ExpectedVersion::Exactly(3));
    assert_eq!(counters.attributes["quantity"], 100);
    assert_eq!(counters.attributes["reservedQuantity"], 7);
    assert!(
        counters.attributes.get("reservations").is_none(),
        "counters only: {}",
        counters.attributes
    );
    assert_eq!(held.sk, "RESERVATION#ORD-000001");
    assert_eq!(held.version, ExpectedVersion::NEW, "created at version 0");
    assert_eq!(
        held.attributes,
        json!({ "orderCode": "ORD-000001", "units": { "PRD-001": 2 }, "state": "reserved" })
    );
    assert_eq!(reads.inventory.load(Ordering::SeqCst), 1);
    assert_eq!(
        reads.reservations.load(Ordering::SeqCst),
        0,
        "the reservation is not read first: version 0 checks that it is new"
    );
}

#[tokio::test]
async fn reserve_reads_again_and_decides_again_after_a_conflict() {
    // Another process reserved 90 units between the first read and the commit.
    let (data, reads) = stock_and_reservations(
        |n| {
            Some(inventory(
                "PRD-001",
                100,
                if n == 0 { 5 } else { 95 },
                3 + n as u64,
            ))
        },
        |_| None,
    );
    let (commands, committed) = committing(|n, cmds| {
        if n == 0 {
            Err(conflict_on(&cmds[0]))
        } else {
            Ok(())
        }
    });
    let service = InventoryService::new(services(commands, data, MockSequenceService::new()));
    let outcome = service
        .reserve("ORD-000001", &units("PRD-001", 2), &ctx())
        .await
        .expect("reserved");
    assert_eq!(outcome, ReserveOutcome::Reserved);
    let committed = committed.lock().unwrap();
    assert_eq!(committed.len(), 2, "committed again after the conflict");
    assert_eq!(committed[1][0].version, ExpectedVersion::Exactly(4));
    assert_eq!(committed[1][0].attributes["reservedQuantity"], 97);
    assert_eq!(reads.inventory.load(Ordering::SeqCst), 2, "read again");
    assert_eq!(
        reads.reservations.load(Ordering::SeqCst),
        1,
        "after a conflict the reservation is read too"
    );
}

#[tokio::test]
async fn reserve_without_enough_stock_records_the_refusal_only() {
    let (data, _) = stock_and_reservations(|_| Some(inventory("PRD-003", 10, 9, 7)), |_| None);
    let (commands, committed) = committing(|_, _| Ok(()));
    let service = InventoryService::new(services(commands, data, MockSequenceService::new()));
    let outcome = service
        .reserve("ORD-000002", &units("PRD-003", 2), &ctx())
        .await
        .expect("answered");
    let refused = ReserveOutcome::Insufficient {
        product_code: "PRD-003".into(),
        requested: 2,
        available: 1,
    };
    assert_eq!(outcome, refused);
    let committed = committed.lock().unwrap();
    let [held] = &committed[0][..] else {
        panic!("the reservation only, the stock untouched: {:?}", committed[0]);
    };
    assert_eq!(held.sk, "RESERVATION#ORD-000002");
    assert_eq!(held.version, ExpectedVersion::NEW);
    assert_eq!(held.attributes["state"], "failed");
    assert_eq!(
        held.attributes["shortfall"],
        json!({ "productCode": "PRD-003", "requested": 2, "available": 1 })
    );
}

#[tokio::test]
async fn reserve_without_an_inventory_record_is_insufficient() {
    let (data, _) = stock_and_reservations(|_| None, |_| None);
    let (commands, committed) = committing(|_, _| Ok(()));
    let service = InventoryService::new(services(commands, data, MockSequenceService::new()));
    let outcome = service
        .reserve("ORD-000002", &units("PRD-009", 1), &ctx())
        .await
        .expect("answered");
    assert_eq!(
        outcome,
        ReserveOutcome::Insufficient {
            product_code: "PRD-009".into(),
            requested: 1,
            available: 0,
        }
    );
    let committed = committed.lock().unwrap();
    assert_eq!(committed.len(), 1);
    assert!(committed[0].iter().all(|c| c.sk == "RESERVATION#ORD-000002"));
}

#[tokio::test]
async fn reserve_again_for_the_same_order_answers_the_first_outcome_and_changes_nothing() {
    for (state, expected) in [
        ("reserved", ReserveOutcome::Reserved),
        ("released", ReserveOutcome::Reserved),
        (
            "failed",
            ReserveOutcome::Insufficient {
                product_code: "PRD-001".into(),
                requested: 2,
                available: 0,
            },
        ),
    ] {
        let (data, reads) = stock_and_reservations(
            |_| Some(inventory("PRD-001", 100, 2, 2)),
            move |_| Some(reservation("ORD-000001", "PRD-001", 2, state, 1)),
        );
        // The reservation exists: its creation at version 0 conflicts.
        let (commands, committed) = committing(|_, cmds| Err(conflict_on(&cmds[0])));
        let service = InventoryService::new(services(commands, data, MockSequenceService::new()));
        let outcome = service
            .reserve("ORD-000001", &units("PRD-001", 2), &ctx())
            .await
            .expect("answered");
        assert_eq!(outcome, expected, "{state}");
        assert_eq!(
            committed.lock().unwrap().len(),
            1,
            "{state}: nothing committed after the read"
        );
        assert_eq!(reads.reservations.load(Ordering::SeqCst), 1, "{state}");
    }
}

#[tokio::test]
async fn release_and_deduct_move_the_counters_and_the_reservation_together_once() {
    for (end, quantity) in [("released", 100), ("deducted", 98)] {
        let (data, _) = stock_and_reservations(
            |_| Some(inventory("PRD-001", 100, 2, 4)),
            |_| Some(reservation("ORD-000001", "PRD-001", 2, "reserved", 1)),
        );
        let (commands, committed) = committing(|_, _| Ok(()));
        let service = InventoryService::new(services(commands, data, MockSequenceService::new()));
        match end {
            "released" => service.release("ORD-000001", &ctx()).await,
            _ => service.deduct("ORD-000001", &ctx()).await,
        }
        .expect("settled");
        let committed = committed.lock().unwrap();
        let [counters, held] = &committed[0][..] else {
            panic!("two commands: {:?}", committed[0]);
        };
        assert_eq!(counters.version, ExpectedVersion::Exactly(4));
        assert_eq!(counters.attributes["reservedQuantity"], 0, "{end}");
        assert_eq!(counters.attributes["quantity"], quantity, "{end}");
        assert_eq!(held.version, ExpectedVersion::Exactly(1));
        assert_eq!(held.attributes["state"], end);
    }
    // A reservation ended already, or refused, or none: nothing is written.
    for held in [Some("released"), Some("deducted"), Some("failed"), None] {
        let (data, _) = stock_and_reservations(
            |_| Some(inventory("PRD-001", 100, 0, 5)),
            move |_| held.map(|state| reservation("ORD-000001", "PRD-001", 2, state, 2)),
        );
        let (commands, _) = nothing_published();
        let service = InventoryService::new(services(commands, data, MockSequenceService::new()));
        service
            .release("ORD-000001", &ctx())
            .await
            .expect("nothing to release");
        service
            .deduct("ORD-000001", &ctx())
            .await
            .expect("nothing to deduct");
    }
}

#[tokio::test]
async fn a_leader_starts_its_next_batch_from_what_it_committed_and_reads_again_after_a_conflict() {
    // Read 0: the record before the burst; read 1: after another process
    // reserved 90 units (it conflicts with the second batch).
    let (data, reads) = stock_and_reservations(
        |n| {
            Some(inventory(
                "PRD-001",
                100,
                if n == 0 { 0 } else { 90 },
                if n == 0 { 3 } else { 5 },
            ))
        },
        |_| None,
    );
    let (commands, committed) = committing(|n, cmds| {
        if n == 1 {
            Err(conflict_on(&cmds[0]))
        } else {
            Ok(())
        }
    });
    let service = InventoryService::new(services(commands, data, MockSequenceService::new()));
    // 31 orders queued before the leader runs (this runtime has one
    // thread): a batch of 24 (1 record + 24 reservations fill a commit),
    // then the other 7.
    let orders: Vec<String> = (1..=31).map(|n| format!("ORD-{n:06}")).collect();
    let (ctx, one) = (ctx(), units("PRD-001", 1));
    let outcomes =
        futures::future::join_all(orders.iter().map(|order| service.reserve(order, &one, &ctx))).await;
    assert!(
        outcomes.iter().all(|o| matches!(o, Ok(ReserveOutcome::Reserved))),
        "{outcomes:?}"
    );
    let committed = committed.lock().unwrap();
    let records: Vec<(ExpectedVersion, Value, usize)> = committed
        .iter()
        .map(|c| (c[0].version, c[0].attributes["reservedQuantity"].clone(), c.len()))
        .collect();
    assert_eq!(
        records,
        vec![
            (ExpectedVersion::Exactly(3), json!(24), 25),
            // From what the first commit left (version 4), without reading.
            (ExpectedVersion::Exactly(4), json!(31), 8),
            // Refused: read again, decided again on the other process's 90.
            (ExpectedVersion::Exactly(5), json!(97), 8),
        ]
    );
    assert_eq!(
        reads.inventory.load(Ordering::SeqCst),
        2,
        "read before the first batch and after the conflict"
    );
    assert_eq!(
        reads.reservations.load(Ordering::SeqCst),
        7,
        "after the conflict, the batch's reservations"
    );
}

#[tokio::test]
async fn a_refusal_decided_on_what_a_leader_knows_checks_the_records_version() {
    // 24 units: the first batch takes them all.
    let (data, reads) = stock_and_reservations(|_| Some(inventory("PRD-001", 24, 0, 3)), |_| None);
    let (commands, committed) = committing(|_, _| Ok(()));
    let service = InventoryService::new(services(commands, data, MockSequenceService::new()));
    let orders: Vec<String> = (1..=31).map(|n| format!("ORD-{n:06}")).collect();
    let (ctx, one) = (ctx(), units("PRD-001", 1));
    let outcomes =
        futures::future::join_all(orders.iter().map(|order| service.reserve(order, &one, &ctx))).await;
    let refused = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(ReserveOutcome::Insufficient { available: 0, .. })))
        .count();
    assert_eq!(refused, 7, "{outcomes:?}");
    let committed = committed.lock().unwrap();
    assert_eq!(committed.len(), 2);
    // The refusals were decided on the record as the first commit left it
    // (not read again): it rides in their commit unchanged, at that version.
    let check = &committed[1][0];
    assert_eq!(check.sk, "INVENTORY#PRD-001");
    assert_eq!(check.version, ExpectedVersion::Exactly(4));
    assert_eq!(check.attributes["reservedQuantity"], 24);
    assert_eq!(committed[1].len(), 8, "the record and 7 refusals");
    assert!(committed[1][1..]
        .iter()
        .all(|c| c.attributes["state"] == "failed"));
    assert_eq!(reads.inventory.load(Ordering::SeqCst), 1);
}

// ---- idempotency keys ---------------------------------------------------------

/// A sequence that hands out `ORD-00000n`, counting the calls.
fn numbering(start: u64, calls: Arc<AtomicUsize>) -> MockSequenceService {
    let mut sequences = MockSequenceService::new();
    sequences.expect_next().returning(move |_, _| {
        let no = start + calls.fetch_add(1, Ordering::SeqCst) as u64;
        Ok(SequenceValue {
            no,
            formatted: format!("ORD-{no:06}"),
            issued_at: chrono::Utc::now(),
        })
    });
    sequences
}

/// The order ORD-000001 as its first, keyed publish stored it.
fn first_order() -> CommandRecord {
    CommandRecord::builder(PK, "ORDER#ORD-000001")
        .name("Order ORD-000001")
        .attributes(order_attributes("pending", "pending"))
        .status(CommandStatus::Published)
        .build()
}

#[tokio::test]
async fn place_with_a_held_key_answers_the_first_order_and_takes_no_number() {
    let mut sequences = MockSequenceService::new();
    sequences.expect_next().never();
    let mut commands = MockCommandService::new();
    commands
        .expect_find_idempotent()
        .withf(|key, ctx| key.key == "retry-1" && key.fingerprint.is_some() && ctx.tenant_code == "shop-a")
        .times(1)
        .returning(|_, _| Ok(Some(first_order())));
    commands.expect_publish_async().never();
    let service = OrderService::new(services(
        commands,
        catalogue(vec![product("PRD-001", 29.99, true)]),
        sequences,
    ));
    let placed = service
        .place(new_order("PRD-001", json!(2), 29.99), Some("retry-1"), &ctx())
        .await
        .expect("answered");
    assert!(placed.replayed);
    assert_eq!(placed.order, first_order());
}

#[tokio::test]
async fn place_with_a_fresh_key_publishes_it_with_the_order() {
    let mut commands = MockCommandService::new();
    commands
        .expect_find_idempotent()
        .times(1)
        .returning(|_, _| Ok(None));
    commands
        .expect_publish_async()
        .withf(|cmd, _| {
            cmd.sk == "ORDER#ORD-000001"
                && cmd
                    .idempotency_key
                    .as_ref()
                    .is_some_and(|k| k.key == "retry-1" && k.fingerprint.is_some())
        })
        .times(1)
        .returning(|cmd, _| Ok(Published::Written(record(&cmd))));
    let numbers = Arc::new(AtomicUsize::new(0));
    let service = OrderService::new(services(
        commands,
        catalogue(vec![product("PRD-001", 29.99, true)]),
        numbering(1, numbers.clone()),
    ));
    let placed = service
        .place(new_order("PRD-001", json!(2), 29.99), Some("retry-1"), &ctx())
        .await
        .expect("placed");
    assert!(!placed.replayed);
    assert_eq!(placed.order.code, "ORD-000001");
    assert_eq!(numbers.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn place_that_loses_to_a_concurrent_retry_answers_the_first_order() {
    let mut commands = MockCommandService::new();
    // Both tries looked the key up before either published.
    commands.expect_find_idempotent().returning(|_, _| Ok(None));
    // The framework resolves the second keyed publish to the first one's order.
    commands
        .expect_publish_async()
        .withf(|cmd, _| cmd.sk == "ORDER#ORD-000002")
        .times(1)
        .returning(|_, _| Ok(Published::Written(first_order())));
    let service = OrderService::new(services(
        commands,
        catalogue(vec![product("PRD-001", 29.99, true)]),
        numbering(2, Arc::new(AtomicUsize::new(0))),
    ));
    let placed = service
        .place(new_order("PRD-001", json!(2), 29.99), Some("retry-1"), &ctx())
        .await
        .expect("answered");
    assert!(placed.replayed, "ORD-000002 was burnt, ORD-000001 is the order");
    assert_eq!(placed.order.code, "ORD-000001");
}

#[tokio::test]
async fn an_idempotency_key_fingerprints_the_body_and_the_user() {
    let seen = Arc::new(Mutex::new(Vec::<IdempotencyKey>::new()));
    let mut commands = MockCommandService::new();
    let record = seen.clone();
    commands.expect_find_idempotent().returning(move |key, _| {
        record.lock().unwrap().push(key.clone());
        Ok(Some(first_order()))
    });
    let service = OrderService::new(services(
        commands,
        MockDataService::new(),
        MockSequenceService::new(),
    ));
    let other_user = InvocationContext::new("shop-a", "user-2").with_roles(["customer"]);
    for (order, ctx) in [
        (new_order("PRD-001", json!(2), 29.99), ctx()),
        (new_order("PRD-001", json!(2), 29.99), ctx()),
        (new_order("PRD-001", json!(3), 29.99), ctx()),
        (new_order("PRD-001", json!(2), 29.99), other_user),
    ] {
        service.place(order, Some("k-1"), &ctx).await.expect("answered");
    }
    let seen = seen.lock().unwrap();
    let prints: Vec<&str> = seen
        .iter()
        .map(|k| k.fingerprint.as_deref().expect("a fingerprint"))
        .collect();
    assert!(seen.iter().all(|k| k.key == "k-1"));
    assert_eq!(prints[0], prints[1], "the same request");
    assert_ne!(prints[0], prints[2], "another body");
    assert_ne!(prints[0], prints[3], "another user");
}

#[tokio::test]
async fn update_status_with_a_held_key_answers_the_first_move_without_deciding_again() {
    let mut commands = MockCommandService::new();
    commands
        .expect_find_idempotent()
        .withf(|key, _| key.key == "cancel-1")
        .times(1)
        .returning(|_, _| {
            Ok(Some(
                CommandRecord::builder(PK, "ORDER#ORD-000001")
                    .name("Order ORD-000001")
                    .version(3)
                    .attributes(order_attributes("cancelled", "reserved"))
                    .build(),
            ))
        });
    commands.expect_publish_sync().never();
    let mut data = MockDataService::new();
    // Cancelled already: the status machine would refuse cancelling again.
    data.expect_get_item()
        .returning(|_, _| Ok(Some(order("ORD-000001", "cancelled", "reserved", 3))));
    let service = OrderService::new(services(commands, data, MockSequenceService::new()));
    let again = service
        .update_status(
            "ORD-000001",
            OrderStatus::Cancelled,
            None,
            Some("cancel-1"),
            &ctx(),
        )
        .await
        .expect("the first answer");
    assert_eq!(again.version, 3);
    assert_eq!(again.attributes["status"], "cancelled");
}

#[tokio::test]
async fn update_status_with_a_fresh_key_publishes_it_with_the_move() {
    let mut commands = MockCommandService::new();
    commands.expect_find_idempotent().returning(|_, _| Ok(None));
    commands
        .expect_publish_sync()
        .withf(|cmd, _| {
            cmd.version == ExpectedVersion::Exactly(2)
                && cmd.attributes["status"] == "confirmed"
                && cmd.idempotency_key.as_ref().is_some_and(|k| k.key == "confirm-1")
        })
        .times(1)
        .returning(|cmd, _| Ok(Synced::finished(applied(&cmd))));
    let mut data = MockDataService::new();
    data.expect_get_item()
        .returning(|_, _| Ok(Some(order("ORD-000001", "pending", "reserved", 2))));
    let service = OrderService::new(services(commands, data, MockSequenceService::new()));
    let confirmed = service
        .update_status(
            "ORD-000001",
            OrderStatus::Confirmed,
            None,
            Some("confirm-1"),
            &ctx(),
        )
        .await
        .expect("confirmed");
    assert_eq!(confirmed.version, 3);
}

#[tokio::test]
async fn update_status_at_the_clients_version_refuses_what_a_conflict_reveals() {
    let reads = Arc::new(AtomicUsize::new(0));
    let counted = reads.clone();
    let mut data = MockDataService::new();
    data.expect_get_item().returning(move |_, _| {
        // Another writer moved the order between the first read and its publish.
        let version = if counted.fetch_add(1, Ordering::SeqCst) == 0 {
            2
        } else {
            3
        };
        Ok(Some(order("ORD-000001", "pending", "reserved", version)))
    });
    let mut commands = MockCommandService::new();
    commands.expect_publish_sync().times(1).returning(|cmd, _| {
        Err(Error::Conflict {
            key: cmd.key().id(),
            expected: cmd.version,
            actual: Some(3),
        })
    });
    let service = OrderService::new(services(commands, data, MockSequenceService::new()));
    let err = service
        .update_status("ORD-000001", OrderStatus::Confirmed, Some(2), None, &ctx())
        .await
        .expect_err("the order moved");
    assert!(
        matches!(
            err,
            ShopError::Core(Error::Conflict {
                expected: ExpectedVersion::Exactly(2),
                actual: Some(3),
                ..
            })
        ),
        "{err:?}"
    );
    assert_eq!(reads.load(Ordering::SeqCst), 2);
}

// ---- InventoryService::set ------------------------------------------------------

fn set_request(quantity: i64, version: Option<u64>) -> ecommerce::services::SetInventory {
    ecommerce::services::SetInventory {
        quantity,
        warehouse_code: "WH-1".to_owned(),
        version,
    }
}

#[tokio::test]
async fn set_inventory_at_a_stale_version_is_a_version_conflict_without_publishing() {
    let (commands, sequences) = nothing_published();
    let (data, _) = stock_and_reservations(|_| Some(inventory("PRD-001", 100, 0, 3)), |_| None);
    let service = InventoryService::new(services(commands, data, sequences));
    let err = service
        .set("PRD-001", set_request(7, Some(2)), &ctx())
        .await
        .expect_err("stale");
    assert_eq!(err.status_and_kind(), (409, ErrorKind::VersionConflict));
    let err = service
        .set("PRD-001", set_request(7, Some(0)), &ctx())
        .await
        .expect_err("exists already");
    assert!(
        matches!(err, ShopError::Core(Error::Conflict { actual: Some(3), .. })),
        "{err:?}"
    );
}

#[tokio::test]
async fn set_inventory_creates_the_record_at_version_zero() {
    let (data, _) = stock_and_reservations(|_| None, |_| None);
    let (commands, committed) = committing(|_, _| Ok(()));
    let service = InventoryService::new(services(commands, data, MockSequenceService::new()));
    let created = service
        .set("PRD-001", set_request(5, Some(0)), &ctx())
        .await
        .expect("created");
    assert_eq!(created.version, 1);
    assert_eq!(created.attributes["quantity"], 5);
    let committed = committed.lock().unwrap();
    let [command] = &committed[0][..] else {
        panic!("one command: {:?}", committed[0]);
    };
    assert_eq!(command.sk, "INVENTORY#PRD-001");
    assert_eq!(command.version, ExpectedVersion::NEW);
    assert_eq!(command.attributes["reservedQuantity"], 0);
}

#[tokio::test]
async fn set_inventory_without_a_version_decides_again_after_a_conflict() {
    // Reserved 0, then 6 by the time of the retry: 5 units would be below it.
    let (data, _) = stock_and_reservations(
        |read| {
            Some(inventory(
                "PRD-001",
                100,
                if read == 0 { 0 } else { 6 },
                1 + read as u64,
            ))
        },
        |_| None,
    );
    let (commands, committed) = committing(|_, cmds| Err(conflict_on(&cmds[0])));
    let service = InventoryService::new(services(commands, data, MockSequenceService::new()));
    let err = service
        .set("PRD-001", set_request(5, None), &ctx())
        .await
        .expect_err("below the units reserved");
    assert!(
        matches!(err, ShopError::Conflict(ref m) if m.contains("6 units reserved")),
        "{err:?}"
    );
    assert_eq!(
        committed.lock().unwrap().len(),
        1,
        "tried once, refused on the second read"
    );
}

// ---- the order handler ------------------------------------------------------------

/// The handler over mocks whose order, inventory and reservation reads
/// return `orders`, `stock` and `held` in turn (the last one again when
/// exhausted; no reservation when `held` is empty); what it publishes and
/// commits is recorded.
struct HandlerWorld {
    handler: OrderSyncHandler,
    published: Arc<Mutex<Vec<CommandInput>>>,
    committed: Arc<Mutex<Vec<Vec<CommandInput>>>>,
}

fn handler_world(orders: Vec<DataItem>, stock: Vec<DataItem>, held: Vec<DataItem>) -> HandlerWorld {
    let (order_reads, stock_reads, held_reads) =
        (AtomicUsize::new(0), AtomicUsize::new(0), AtomicUsize::new(0));
    let mut data = MockDataService::new();
    data.expect_get_item().returning(move |key, _| {
        let (items, reads) = if key.sk.starts_with("ORDER#") {
            (&orders, &order_reads)
        } else if key.sk.starts_with("RESERVATION#") {
            (&held, &held_reads)
        } else {
            (&stock, &stock_reads)
        };
        if items.is_empty() {
            return Ok(None);
        }
        let n = reads.fetch_add(1, Ordering::SeqCst).min(items.len() - 1);
        Ok(Some(items[n].clone()))
    });
    let published = Arc::new(Mutex::new(Vec::new()));
    let committed = Arc::new(Mutex::new(Vec::new()));
    let mut commands = MockCommandService::new();
    let record = published.clone();
    commands.expect_publish_sync().returning(move |cmd, _| {
        record.lock().unwrap().push(cmd.clone());
        Ok(Synced::finished(applied(&cmd)))
    });
    let record = committed.clone();
    commands.expect_commit().returning(move |cmds, _| {
        record.lock().unwrap().push(cmds.clone());
        Ok(cmds.iter().map(|c| Synced::finished(applied(c))).collect())
    });
    let handler = OrderSyncHandler::new(services(commands, data, MockSequenceService::new()));
    HandlerWorld {
        handler,
        published,
        committed,
    }
}

#[tokio::test]
async fn the_handler_reserves_then_marks_the_order_at_the_version_read() {
    let placed = order("ORD-000001", "pending", "pending", 1);
    let world = handler_world(
        vec![placed.clone()],
        vec![inventory("PRD-001", 100, 0, 3)],
        Vec::new(),
    );
    world
        .handler
        .handle(&DataSyncEvent::of(None, placed))
        .await
        .expect("handled");
    let committed = world.committed.lock().unwrap();
    assert_eq!(committed.len(), 1);
    assert_eq!(committed[0][0].sk, "INVENTORY#PRD-001");
    assert_eq!(committed[0][0].version, ExpectedVersion::Exactly(3));
    assert_eq!(committed[0][0].attributes["reservedQuantity"], 2);
    assert_eq!(committed[0][1].sk, "RESERVATION#ORD-000001");
    assert_eq!(committed[0][1].attributes["units"], json!({ "PRD-001": 2 }));
    let published = world.published.lock().unwrap();
    let mark = published
        .iter()
        .find(|c| c.sk == "ORDER#ORD-000001")
        .expect("the order is marked");
    assert_eq!(mark.version, ExpectedVersion::Exactly(1));
    assert_eq!(mark.attributes["reservation"], "reserved");
    assert_eq!(mark.attributes["status"], "pending");
    let claims: Vec<_> = published
        .iter()
        .filter(|c| c.sk.starts_with("NOTIFICATION#ORD-000001#1#"))
        .collect();
    assert_eq!(claims.len(), 1, "the order confirmation is claimed");
    assert_eq!(claims[0].sk, "NOTIFICATION#ORD-000001#1#order_confirmation");
}

#[tokio::test]
async fn the_handler_releases_instead_of_marking_an_order_cancelled_meanwhile() {
    let placed = order("ORD-000001", "pending", "pending", 1);
    let cancelled = order("ORD-000001", "cancelled", "pending", 2);
    let world = handler_world(
        vec![placed.clone(), cancelled],
        vec![inventory("PRD-001", 100, 0, 3), inventory("PRD-001", 100, 2, 4)],
        // Read by the release only (the reservation is not read before its creation).
        vec![reservation("ORD-000001", "PRD-001", 2, "reserved", 1)],
    );
    world
        .handler
        .handle(&DataSyncEvent::of(None, placed))
        .await
        .expect("handled");
    let committed = world.committed.lock().unwrap();
    assert_eq!(committed.len(), 2, "reserved, then released");
    let [counters, held] = &committed[1][..] else {
        panic!("two commands: {:?}", committed[1]);
    };
    assert_eq!(counters.version, ExpectedVersion::Exactly(4));
    assert_eq!(counters.attributes["reservedQuantity"], 0);
    assert_eq!(held.version, ExpectedVersion::Exactly(1));
    assert_eq!(held.attributes["state"], "released");
    let published = world.published.lock().unwrap();
    assert!(
        !published.iter().any(|c| c.sk == "ORDER#ORD-000001"),
        "a cancelled order is not marked: {published:?}"
    );
}
