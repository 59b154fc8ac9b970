//! The storefront's entities as its own types, end to end over the service
//! API (no HTTP): an order placed from a typed request is read back as an
//! `OrderAttributes`, moved by the order handler and a status change, and
//! every stored row holds the text the `serde_json::Value` API stores for
//! the same content — so rows written before the typed API, or by a program
//! on the `Value` API, read the same.
//!
//! Runs on memory, and on DynamoDB (`DYNAMODB_ENDPOINT`: DynamoDB Local;
//! skipped loudly without it, a failure under `CQRS_REQUIRE_DYNAMODB` or CI),
//! whose rows come back through its own attribute values.

use std::sync::Arc;

use cqrs_core::{
    tenant_pk, Attributes, CommandInput, CommandService, DataServiceExt, EntityKey, InvocationContext,
};
use ecommerce::domain::{
    order_sk, Address, InventoryAttributes, OrderAttributes, OrderItem, OrderStatus, ProductAttributes,
    Reservation,
};
use ecommerce::services::NewOrder;
use ecommerce::Shop;
use rust_decimal::Decimal;

#[tokio::test]
async fn memory_an_order_placed_and_moved_typed_reads_back_typed_and_stores_what_the_value_api_stores() {
    let shop = Shop::new(Arc::new(cqrs_memory::InMemory::new()));
    order_placed_and_moved_typed(&shop).await;
}

#[tokio::test]
async fn dynamodb_an_order_placed_and_moved_typed_reads_back_typed_and_stores_what_the_value_api_stores() {
    if !cqrs_dynamodb::testing::available() {
        return;
    }
    let endpoint = cqrs_dynamodb::testing::endpoint().expect("checked");
    let prefix = format!("t-typed-{}", uuid::Uuid::new_v4().simple());
    let storage = Arc::new(cqrs_dynamodb::DynamoDbStorage::new(
        cqrs_dynamodb::local_client(&endpoint),
        cqrs_dynamodb::TableNames::with_prefix(&prefix),
    ));
    storage.ensure_tables().await.expect("tables created");
    let shop = Shop::new(storage.clone());
    order_placed_and_moved_typed(&shop).await;
    shop.engine.wait_idle().await;
    cqrs_dynamodb::testing::drop_tables(&storage)
        .await
        .expect("tables dropped");
}

const TENANT: &str = "shop-a";

fn staff() -> InvocationContext {
    InvocationContext::new(TENANT, "staff-1").with_roles(["staff"])
}

fn customer() -> InvocationContext {
    InvocationContext::new(TENANT, "customer-1").with_roles(["customer"])
}

/// The text the `Value` API stores for `value`'s content.
fn value_path_text<T: serde::Serialize>(value: &T) -> String {
    let value = serde_json::to_value(value).expect("serializes");
    Attributes::from(value).json().to_owned()
}

async fn order_placed_and_moved_typed(shop: &Shop) {
    shop.seed_demo(TENANT).await.expect("seeded");

    // Every field named and typed: a misspelt field, a quantity as text or a
    // price as a float is a compile error here, not a 400 at run time.
    let request = NewOrder {
        customer_id: "CUST-001".into(),
        items: vec![OrderItem {
            product_code: "PRD-001".into(),
            name: String::new(),
            quantity: 2,
            price: Decimal::new(2999, 2),
        }],
        shipping_address: Address {
            street: "123 Main St".into(),
            city: "Tokyo".into(),
            postal_code: "100-0001".into(),
            country: "JP".into(),
        },
        payment_method: "credit_card".into(),
    };
    let placed = shop
        .orders
        .place(request, None, &customer())
        .await
        .expect("placed");
    assert!(!placed.replayed);
    assert_eq!(placed.order.code, "ORD-000001");

    // The command row: read back typed, and the text the Value API writes.
    let ordered: OrderAttributes = placed.order.attributes_as().expect("an order");
    assert_eq!(ordered.status, OrderStatus::Pending);
    assert_eq!(ordered.reservation, Reservation::Pending);
    assert_eq!(ordered.user_id, "customer-1");
    assert_eq!(ordered.items[0].name, "Wireless Mouse", "the catalogue's name");
    assert_eq!(
        (ordered.subtotal, ordered.tax, ordered.total),
        (Decimal::new(5998, 2), Decimal::new(600, 2), Decimal::new(6598, 2))
    );
    assert_eq!(placed.order.attributes.json(), value_path_text(&ordered));
    // The stored names are the ones rows have always had (serde's renames),
    // so orders stored before the typed API read back.
    let names: Vec<&str> = placed
        .order
        .attributes
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        names,
        [
            "customerId",
            "items",
            "paymentMethod",
            "placedAt",
            "reservation",
            "shippingAddress",
            "status",
            "subtotal",
            "tax",
            "total",
            "userId"
        ]
    );
    let line = &placed.order.attributes["items"][0];
    let line_names: Vec<&str> = line
        .as_object()
        .expect("a line")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(line_names, ["name", "price", "productCode", "quantity"]);

    // The handler reserved the stock and recorded it on the order.
    shop.engine.wait_idle().await;
    let key = EntityKey::new(tenant_pk(TENANT), order_sk("ORD-000001"));
    let order = shop
        .engine
        .get_typed::<OrderAttributes>(&key, &staff())
        .await
        .expect("read")
        .expect("applied");
    assert_eq!(order.item.version, 2, "placed, then its reservation recorded");
    assert_eq!(order.attributes.reservation, Reservation::Reserved);
    assert_eq!(
        order.attributes,
        OrderAttributes {
            reservation: Reservation::Reserved,
            ..ordered.clone()
        }
    );
    assert_eq!(order.item.attributes.json(), value_path_text(&order.attributes));

    // The service's own read: the same order, the same text.
    let read = shop
        .orders
        .get("ORD-000001", &customer())
        .await
        .expect("their own order");
    assert_eq!(
        read.attributes_as::<OrderAttributes>().expect("an order"),
        order.attributes
    );
    assert_eq!(read.attributes.json(), order.item.attributes.json());

    // A status change through the service, read back typed.
    shop.orders
        .update_status("ORD-000001", OrderStatus::Confirmed, Some(2), None, &staff())
        .await
        .expect("confirmed");
    let confirmed = shop
        .engine
        .get_typed::<OrderAttributes>(&key, &staff())
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(
        (confirmed.item.version, confirmed.attributes.status),
        (3, OrderStatus::Confirmed)
    );
    assert_eq!(
        confirmed.item.attributes.json(),
        value_path_text(&confirmed.attributes)
    );

    // The same content published through the Value API under another key
    // (outside the order handler's `ORDER#` prefix: it reserves nothing)
    // stores the same bytes: rows of either API read the same.
    let twin_key = EntityKey::new(tenant_pk(TENANT), "COPY#ORD-000001");
    let as_value = serde_json::to_value(&confirmed.attributes).expect("serializes");
    let twin = shop
        .engine
        .publish_sync(
            CommandInput::new(&twin_key.pk, &twin_key.sk).attributes(as_value),
            &staff(),
        )
        .await
        .expect("published")
        .into_item();
    assert_eq!(twin.attributes.json(), confirmed.item.attributes.json());
    let twin_read = shop
        .engine
        .get_typed::<OrderAttributes>(&twin_key, &staff())
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(twin_read.attributes, confirmed.attributes);

    // The catalogue and the stock the handler moved, typed and byte-identical.
    let product_key = EntityKey::new(tenant_pk(TENANT), "PRODUCT#PRD-001");
    let product = shop
        .engine
        .get_typed::<ProductAttributes>(&product_key, &staff())
        .await
        .expect("read")
        .expect("seeded");
    assert_eq!(product.attributes.price, Decimal::new(2999, 2));
    assert_eq!(
        product.item.attributes.json(),
        value_path_text(&product.attributes)
    );
    let stock_key = EntityKey::new(tenant_pk(TENANT), "INVENTORY#PRD-001");
    let stock = shop
        .engine
        .get_typed::<InventoryAttributes>(&stock_key, &staff())
        .await
        .expect("read")
        .expect("seeded");
    assert_eq!(
        (stock.attributes.quantity, stock.attributes.reserved_quantity),
        (100, 2)
    );
    assert_eq!(stock.item.attributes.json(), value_path_text(&stock.attributes));
}
