//! Typed entities: every service where attributes go in or come out takes
//! and gives the user's own types, and stores the rows the `Value` API
//! stores for the same content, byte for byte.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::fixtures::{builder, ctx, PK_A};
use super::StorageFactory;
use crate::error::{BoxError, Error};
use crate::handle::Services;
use crate::handler::{DataSyncEvent, DataSyncHandler, Interest};
use crate::index::{Index, IndexLookup};
use crate::keys::EntityKey;
use crate::model::{CommandInput, ExpectedVersion, PartialUpdate};
use crate::query::ListQuery;
use crate::services::{CommandService, DataService};
use crate::typed::{CommandServiceExt, DataServiceExt, StateChange};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Order {
    // Declared out of key order: the stored text sorts them.
    status: Status,
    customer_id: String,
    total: f64,
    lines: Vec<Line>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tracking_number: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Line {
    sku: String,
    quantity: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Pending,
    Confirmed,
    Shipped,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusChange {
    status: Status,
    tracking_number: Option<String>,
}

fn order(customer: &str) -> Order {
    Order {
        status: Status::Pending,
        customer_id: customer.into(),
        // A float with no fraction: stored as DynamoDB gives it back (`30`).
        total: 30.0,
        lines: vec![Line {
            sku: "SKU-1".into(),
            quantity: 2,
        }],
        tracking_number: None,
    }
}

/// The states a handler was given, as `Order`s.
#[derive(Default)]
struct StatesSeen(Mutex<Vec<StateChange<Order>>>);

#[async_trait]
impl DataSyncHandler for StatesSeen {
    fn name(&self) -> &str {
        "states-seen"
    }

    fn interest(&self) -> Interest {
        Interest::EntityType("ORDER".into())
    }

    async fn handle(&self, event: &DataSyncEvent) -> Result<(), BoxError> {
        let states = event.states::<Order>()?;
        self.0.lock().unwrap_or_else(PoisonError::into_inner).push(states);
        Ok(())
    }
}

/// Publishes, reads, partial updates, commits, read-modify-writes, index
/// pages, history and handler events, all with the user's own type; and
/// the rows are those of the `Value` API.
pub async fn typed_entities_end_to_end(factory: &dyn StorageFactory) {
    let seen = Arc::new(StatesSeen::default());
    let by_customer = Index::new("orders-by-customer")
        .entity_type("ORDER")
        .partition_by("attributes.customerId")
        .sort_by("attributes.total");
    let engine = builder(factory)
        .await
        .index(by_customer)
        .handler_arc(seen.clone())
        .build();
    let a = ctx("shop-a");
    let key = EntityKey::new(PK_A, "ORDER#1");

    // Sync publish: the value comes back as it went in.
    let created = engine
        .publish_sync_typed(CommandInput::new(PK_A, "ORDER#1"), order("C-1"), &a)
        .await
        .unwrap();
    assert!(!created.handled().is_failed());
    let created = created.into_item();
    assert_eq!(created.attributes, order("C-1"));
    assert_eq!(created.item.version, 1);

    // The same content through the `Value` API: the same stored text.
    let by_value = json!({
        "status": "pending", "customerId": "C-1", "total": 30.0,
        "lines": [{"sku": "SKU-1", "quantity": 2}]
    });
    engine
        .publish_sync(CommandInput::new(PK_A, "ORDER#2").attributes(by_value), &a)
        .await
        .unwrap();
    let typed_row = engine.get_item(&key, &a).await.unwrap().unwrap();
    let value_row = engine
        .get_item(&EntityKey::new(PK_A, "ORDER#2"), &a)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(typed_row.attributes.json(), value_row.attributes.json());
    assert_eq!(
        typed_row.attributes.json(),
        r#"{"customerId":"C-1","lines":[{"quantity":2,"sku":"SKU-1"}],"status":"pending","total":30}"#
    );

    // An update of the value it returned; the same value again writes nothing.
    let (command, mut confirmed) = created.update();
    confirmed.status = Status::Confirmed;
    let updated = engine
        .publish_sync_typed(command, confirmed.clone(), &a)
        .await
        .unwrap()
        .into_item();
    assert_eq!(updated.item.version, 2);
    let (command, same) = updated.update();
    assert!(engine
        .publish_sync_typed(command, same, &a)
        .await
        .unwrap()
        .is_unchanged());

    // A typed partial update, read back typed.
    let change = StatusChange {
        status: Status::Shipped,
        tracking_number: Some("TRK-1".into()),
    };
    let update = PartialUpdate::new(PK_A, "ORDER#1", ExpectedVersion::Exactly(2))
        .attributes_from(&change)
        .unwrap();
    let shipped = engine
        .publish_partial_update_sync(update, &a)
        .await
        .unwrap()
        .typed::<Order>()
        .unwrap()
        .into_item();
    assert_eq!(shipped.attributes.status, Status::Shipped);
    assert_eq!(shipped.attributes.tracking_number.as_deref(), Some("TRK-1"));
    assert_eq!(shipped.attributes.lines, order("C-1").lines);

    // Reads.
    let read = engine.get_typed::<Order>(&key, &a).await.unwrap().unwrap();
    assert_eq!(read.attributes, shipped.attributes);
    let latest = engine.get_latest_typed::<Order>(&key, &a).await.unwrap().unwrap();
    assert_eq!(latest.attributes, shipped.attributes);
    let history = engine.list_history_typed::<Order>(&key, &a).await.unwrap();
    let statuses: Vec<_> = history.iter().map(|h| h.attributes.status).collect();
    assert_eq!(statuses, [Status::Pending, Status::Confirmed]);
    let page = engine
        .list_typed::<Order>(PK_A, ListQuery::new(), &a)
        .await
        .unwrap();
    assert_eq!(page.items.len(), 2);
    let lookup = IndexLookup::new("orders-by-customer", PK_A).value("C-1");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let page = engine
            .list_by_index_typed::<Order>(&lookup, ListQuery::new(), &a)
            .await
            .unwrap();
        if page.items.iter().any(|o| o.attributes.status == Status::Shipped) {
            assert!(page.items.iter().all(|o| o.attributes.customer_id == "C-1"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the index never listed the shipped order"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Async publish: the command row comes back typed, the pipeline applies it.
    let (command, mut next) = engine
        .get_typed::<Order>(&key, &a)
        .await
        .unwrap()
        .unwrap()
        .update();
    next.total = 31.5;
    let published = engine
        .publish_async_typed(command, next.clone(), &a)
        .await
        .unwrap();
    let published = published.written().expect("a new command");
    assert_eq!((published.item.version, published.attributes.total), (4, 31.5));
    engine.wait_idle().await;
    assert_eq!(
        engine
            .get_typed::<Order>(&key, &a)
            .await
            .unwrap()
            .unwrap()
            .attributes,
        next
    );

    // A commit of typed commands, read back typed.
    let commands = vec![
        CommandInput::new(PK_A, "ORDER#3")
            .attributes_from(&order("C-3"))
            .unwrap(),
        CommandInput::new(PK_A, "ORDER#4")
            .attributes_from(&order("C-4"))
            .unwrap(),
    ];
    let committed = engine.commit(commands, &a).await.unwrap();
    let customers: Vec<String> = committed
        .into_iter()
        .map(|synced| {
            synced
                .typed::<Order>()
                .unwrap()
                .into_item()
                .attributes
                .customer_id
        })
        .collect();
    assert_eq!(customers, ["C-3", "C-4"]);

    // A typed read-modify-write.
    let services: Services = engine.services();
    let updated = services
        .update(&EntityKey::new(PK_A, "ORDER#3"))
        .publish_sync_typed(&a, |current: Option<Order>| {
            let mut order = current.ok_or_else(|| Error::invalid("order", "absent"))?;
            order.lines[0].quantity += 1;
            Ok::<_, Error>(Some(order))
        })
        .await
        .unwrap();
    assert_eq!(updated.item().map(|i| i.version), Some(2));
    let order3 = services
        .data
        .get_typed::<Order>(&EntityKey::new(PK_A, "ORDER#3"), &a)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(order3.attributes.lines[0].quantity, 3);

    // The handler saw every change of ORDER#1 with its old and new state.
    let states = seen.0.lock().unwrap_or_else(PoisonError::into_inner);
    let of_order_1: Vec<_> = states
        .iter()
        .filter(|s| s.new.customer_id == "C-1" && s.new.lines == order("C-1").lines)
        .collect();
    assert!(of_order_1.iter().any(|s| s.old.is_none()), "the creation");
    assert!(of_order_1
        .iter()
        .any(|s| s.old.as_ref().map(|o| o.status) == Some(Status::Confirmed)
            && s.new.status == Status::Shipped));
}
