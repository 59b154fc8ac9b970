//! Unit tests of the storefront's services against mocks of the framework's
//! services: what they publish, and what they refuse to publish.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use cqrs_core::{
    CommandInput, CommandRecord, DataItem, EntityKey, Error, ExpectedVersion, InvocationContext,
    MockCommandService, MockDataService, MockSequenceService, Published, SequenceValue,
};
use ecommerce::domain::OrderStatus;
use ecommerce::services::{Cqrs, InventoryService, NewOrder, OrderService, ReserveOutcome};
use ecommerce::ShopError;
use serde_json::{json, Value};

const PK: &str = "TENANT#shop-a";

fn ctx() -> InvocationContext {
    InvocationContext::new("shop-a", "user-1").with_roles(["staff"])
}

/// A data item of shop-a in the stored JSON shape.
fn item(sk: &str, name: &str, version: u64, attributes: Value) -> DataItem {
    let code = sk.rsplit('#').next().unwrap();
    let entity_type = sk.split('#').next().unwrap();
    serde_json::from_value(json!({
        "pk": PK, "sk": sk, "id": format!("{PK}#{sk}"),
        "code": code, "name": name, "version": version, "tenantCode": "shop-a", "type": entity_type,
        "attributes": attributes, "isDeleted": false, "cpk": PK, "csk": format!("{sk}@{version}"),
        "requestId": "r", "createdAt": "2024-01-15T10:30:00Z", "createdBy": "user-1",
        "updatedAt": "2024-01-15T10:30:00Z", "updatedBy": "user-1"
    }))
    .expect("a valid data item")
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
            "warehouseCode": "WH-1", "lastRestockedAt": "2024-01-15T10:30:00Z", "reservations": {}
        }),
    )
}

fn order(code: &str, status: &str, reservation: &str, version: u64) -> DataItem {
    item(
        &format!("ORDER#{code}"),
        &format!("Order {code}"),
        version,
        json!({
            "customerId": "CUST-001",
            "items": [{"productCode": "PRD-001", "name": "Wireless Mouse", "quantity": 2, "price": 29.99}],
            "shippingAddress": {"street": "123 Main St", "city": "Tokyo", "postalCode": "100-0001", "country": "JP"},
            "paymentMethod": "credit_card",
            "subtotal": 59.98, "tax": 6.0, "total": 65.98,
            "status": status, "placedAt": "2024-01-15T10:30:00Z", "reservation": reservation
        }),
    )
}

/// The data item a sync publish of `command` would produce.
fn applied(command: &CommandInput) -> DataItem {
    let version = match command.version {
        ExpectedVersion::Exactly(v) => v + 1,
        ExpectedVersion::Latest => 99,
    };
    item(&command.sk, &command.name, version, command.attributes.clone())
}

/// The command row an async publish of `command` would store.
fn record(command: &CommandInput) -> CommandRecord {
    serde_json::from_value(json!({
        "pk": command.pk, "sk": command.sk, "id": format!("{}#{}", command.pk, command.sk),
        "code": command.code, "name": command.name, "version": 1, "tenantCode": "shop-a",
        "type": command.entity_type, "attributes": command.attributes, "isDeleted": false,
        "status": "published", "requestId": "r", "createdAt": "2024-01-15T10:30:00Z", "createdBy": "user-1"
    }))
    .expect("a valid command record")
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

fn cqrs(commands: MockCommandService, data: MockDataService, sequences: MockSequenceService) -> Cqrs {
    Cqrs {
        commands: Arc::new(commands),
        data: Arc::new(data),
        sequences: Arc::new(sequences),
    }
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
    let service = OrderService::new(cqrs(commands, catalogue(products), sequences));
    service
        .create(order, &ctx())
        .await
        .expect_err("the order is refused")
}

fn assert_invalid_input(err: &ShopError, needle: &str) {
    assert!(matches!(err, ShopError::InvalidInput(_)), "{err:?}");
    assert_eq!(err.status_and_kind(), (400, "invalid_input"));
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
    assert_invalid_input(&err, "29.99");
}

#[tokio::test]
async fn create_rejects_an_unknown_product() {
    let err = create_refused(
        vec![product("PRD-001", 29.99, true)],
        new_order("PRD-404", json!(2), 29.99),
    )
    .await;
    assert_invalid_input(&err, "unknown product PRD-404");
}

#[tokio::test]
async fn create_rejects_an_inactive_product() {
    let err = create_refused(
        vec![product("PRD-001", 29.99, false)],
        new_order("PRD-001", json!(2), 29.99),
    )
    .await;
    assert_invalid_input(&err, "PRD-001");
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
    let service = OrderService::new(cqrs(
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
    OrderService::new(cqrs(commands, data, sequences))
}

#[tokio::test]
async fn update_status_refuses_an_invalid_transition() {
    let service = order_service_without_publish(order("ORD-000001", "pending", "reserved", 2));
    let err = service
        .update_status("ORD-000001", OrderStatus::Shipped, None, &ctx())
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
    assert_eq!(err.status_and_kind(), (400, "invalid_transition"));
    assert_eq!(err.to_string(), "cannot transition from pending to shipped");
}

#[tokio::test]
async fn update_status_refuses_to_confirm_an_order_without_reserved_stock() {
    for reservation in ["pending", "failed"] {
        let service = order_service_without_publish(order("ORD-000001", "pending", reservation, 2));
        let err = service
            .update_status("ORD-000001", OrderStatus::Confirmed, None, &ctx())
            .await
            .expect_err("not reserved");
        assert!(matches!(err, ShopError::Conflict(_)), "{err:?}");
        assert_eq!(err.status_and_kind(), (409, "conflict"));
        assert!(err.to_string().contains(reservation), "{err}");
    }
}

#[tokio::test]
async fn update_status_with_a_stale_version_is_a_conflict_without_publishing() {
    let service = order_service_without_publish(order("ORD-000001", "pending", "reserved", 3));
    let err = service
        .update_status("ORD-000001", OrderStatus::Confirmed, Some(2), &ctx())
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
    assert_eq!(err.status_and_kind(), (409, "version_conflict"));
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
        .returning(|cmd, _| Ok(Published::Written(applied(&cmd))));
    commands.expect_publish_async().never();
    let mut sequences = MockSequenceService::new();
    sequences.expect_next().never();
    let service = OrderService::new(cqrs(commands, data, sequences));
    let before = chrono::Utc::now();
    let shipped = service
        .update_status("ORD-000001", OrderStatus::Shipped, Some(4), &ctx())
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
        .returning(|cmd, _| Ok(Published::Written(applied(&cmd))));
    let service = OrderService::new(cqrs(commands, data, MockSequenceService::new()));
    let delivered = service
        .update_status("ORD-000001", OrderStatus::Delivered, None, &ctx())
        .await
        .expect("delivered");
    assert_eq!(delivered.attributes["status"], "delivered");
}

#[tokio::test]
async fn update_status_of_a_missing_order_is_not_found() {
    let (commands, sequences) = nothing_published();
    let mut data = MockDataService::new();
    data.expect_get_item().returning(|_, _| Ok(None));
    let service = OrderService::new(cqrs(commands, data, sequences));
    let err = service
        .update_status("ORD-000009", OrderStatus::Cancelled, None, &ctx())
        .await
        .expect_err("missing");
    assert_eq!(err.status_and_kind(), (404, "not_found"));
}

// ---- InventoryService::reserve ----------------------------------------------

fn units(product_code: &str, n: i64) -> BTreeMap<String, i64> {
    BTreeMap::from([(product_code.to_owned(), n)])
}

#[tokio::test]
async fn reserve_retries_after_a_conflict_from_commit() {
    let mut data = MockDataService::new();
    let reads = Arc::new(AtomicUsize::new(0));
    let counted = reads.clone();
    data.expect_get_item().returning(move |key, _| {
        assert_eq!(key.sk, "INVENTORY#PRD-001");
        counted.fetch_add(1, Ordering::SeqCst);
        Ok(Some(inventory("PRD-001", 100, 5, 3)))
    });
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let mut commands = MockCommandService::new();
    commands
        .expect_commit()
        .withf(|cmds, _| {
            cmds.len() == 1
                && cmds[0].sk == "INVENTORY#PRD-001"
                && cmds[0].version == ExpectedVersion::Exactly(3)
                && cmds[0].attributes["quantity"] == 100
                && cmds[0].attributes["reservedQuantity"] == 7
                && cmds[0].attributes["reservations"] == json!({"ORD-000001": 2})
        })
        .times(2)
        .returning(move |cmds, _| {
            if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                Err(Error::Conflict {
                    key: cmds[0].key().id(),
                    expected: cmds[0].version,
                    actual: Some(4),
                })
            } else {
                Ok(cmds.iter().map(|c| Published::Written(applied(c))).collect())
            }
        });
    let service = InventoryService::new(cqrs(commands, data, MockSequenceService::new()));
    let outcome = service
        .reserve("ORD-000001", &units("PRD-001", 2), &ctx())
        .await
        .expect("reserved");
    assert_eq!(outcome, ReserveOutcome::Reserved);
    assert_eq!(calls.load(Ordering::SeqCst), 2, "commit called twice");
    assert_eq!(
        reads.load(Ordering::SeqCst),
        2,
        "the record is read again before the retry"
    );
}

#[tokio::test]
async fn reserve_without_enough_stock_commits_nothing() {
    let (commands, _) = nothing_published();
    let mut data = MockDataService::new();
    data.expect_get_item()
        .returning(|_, _| Ok(Some(inventory("PRD-003", 10, 9, 7))));
    let service = InventoryService::new(cqrs(commands, data, MockSequenceService::new()));
    let outcome = service
        .reserve("ORD-000002", &units("PRD-003", 2), &ctx())
        .await
        .expect("answered");
    assert_eq!(
        outcome,
        ReserveOutcome::Insufficient {
            product_code: "PRD-003".into(),
            requested: 2,
            available: 1,
        }
    );
}

#[tokio::test]
async fn reserve_without_an_inventory_record_commits_nothing() {
    let (commands, _) = nothing_published();
    let mut data = MockDataService::new();
    data.expect_get_item().returning(|_, _| Ok(None));
    let service = InventoryService::new(cqrs(commands, data, MockSequenceService::new()));
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
}

#[tokio::test]
async fn reserve_again_for_the_same_order_commits_nothing() {
    let (commands, _) = nothing_published();
    let mut data = MockDataService::new();
    data.expect_get_item().returning(|_, _| {
        let mut record = inventory("PRD-001", 100, 2, 2);
        record.attributes["reservations"] = json!({"ORD-000001": 2});
        Ok(Some(record))
    });
    let service = InventoryService::new(cqrs(commands, data, MockSequenceService::new()));
    let outcome = service
        .reserve("ORD-000001", &units("PRD-001", 2), &ctx())
        .await
        .expect("answered");
    assert_eq!(outcome, ReserveOutcome::Reserved);
}
