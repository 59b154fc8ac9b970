//! The order of the `lifecycle` and `history` workloads, on both systems:
//! as a cqrs-es 0.5 aggregate (events, replayed on every load) and as the
//! attributes of a cqrs entity (state, stored per version).
//!
//! A module directory rather than a file, so that cargo does not take it for
//! a bench target of its own.

#![allow(dead_code)] // each workload uses part of it

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use cqrs_es::event_sink::EventSink;
use cqrs_es::mem_store::MemStoreAggregateContext;
use cqrs_es::{Aggregate, AggregateError, DomainEvent, EventEnvelope, EventStore};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Partition key of every order of ours (tenant `shop-a`).
pub const PK: &str = "TENANT#shop-a";

/// The code of order `i`: `ORD-000042`.
pub fn order_code(i: usize) -> String {
    format!("ORD-{i:06}")
}

/// The sort key of order `i` on ours: `ORDER#ORD-000042`.
pub fn order_sk(i: usize) -> String {
    format!("ORDER#{}", order_code(i))
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LineItem {
    pub product_code: String,
    pub name: String,
    pub quantity: u32,
    pub price: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Address {
    pub street: String,
    pub city: String,
    pub postal_code: String,
    pub country: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    #[default]
    None,
    Pending,
    Confirmed,
    Processing,
    Shipped,
    Delivered,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::None => "none",
            Status::Pending => "pending",
            Status::Confirmed => "confirmed",
            Status::Processing => "processing",
            Status::Shipped => "shipped",
            Status::Delivered => "delivered",
        }
    }
}

/// The items of order `i`: one or two lines.
pub fn line_items(i: usize) -> Vec<LineItem> {
    let mut items = vec![LineItem {
        product_code: "PRD-001".into(),
        name: "Wireless Mouse".into(),
        quantity: 2,
        price: 29.99,
    }];
    if i % 2 == 1 {
        items.push(LineItem {
            product_code: "PRD-002".into(),
            name: "USB-C Cable".into(),
            quantity: 1,
            price: 9.5,
        });
    }
    items
}

pub fn address() -> Address {
    Address {
        street: "123 Main St".into(),
        city: "Tokyo".into(),
        postal_code: "100-0001".into(),
        country: "JP".into(),
    }
}

/// Subtotal, tax (10 %) and total of `items`, in cents-rounded units.
pub fn totals(items: &[LineItem]) -> (f64, f64, f64) {
    let subtotal = items.iter().map(|i| i.price * f64::from(i.quantity)).sum::<f64>();
    let subtotal = (subtotal * 100.0).round() / 100.0;
    let tax = (subtotal * 10.0).round() / 100.0;
    (subtotal, tax, ((subtotal + tax) * 100.0).round() / 100.0)
}

// ---------------------------------------------------------------------------
// Ours: the order as the attributes of an entity.
// ---------------------------------------------------------------------------

/// The attributes of a new order `i` on ours: the same content as the peer's
/// aggregate state after `Create`.
pub fn order_attributes(i: usize) -> Value {
    let items = line_items(i);
    let (subtotal, tax, total) = totals(&items);
    json!({
        "customerId": format!("CUST-{:04}", i % 1000),
        "items": items,
        "shippingAddress": address(),
        "paymentMethod": "credit_card",
        "subtotal": subtotal,
        "tax": tax,
        "total": total,
        "status": Status::Pending.as_str(),
    })
}

/// The order as a typed entity of ours: the content of
/// [`order_attributes`], as the user's own struct (the stored rows are the
/// same, byte for byte).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderState {
    pub customer_id: String,
    pub items: Vec<LineItem>,
    pub shipping_address: Address,
    pub payment_method: String,
    pub subtotal: f64,
    pub tax: f64,
    pub total: f64,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracking_number: Option<String>,
}

/// New order `i` as a typed entity of ours.
pub fn order_state(i: usize) -> OrderState {
    let items = line_items(i);
    let (subtotal, tax, total) = totals(&items);
    OrderState {
        customer_id: format!("CUST-{:04}", i % 1000),
        items,
        shipping_address: address(),
        payment_method: "credit_card".into(),
        subtotal,
        tax,
        total,
        status: Status::Pending,
        tracking_number: None,
    }
}

/// A status change of a typed order of ours, published as a partial
/// update: the counterpart of the peer's `Confirm`, `Ship`, ... commands.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusChange {
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracking_number: Option<String>,
}

/// Sets the quantity of the first line and recomputes the totals, as the
/// peer's `QuantityChanged` does.
pub fn change_quantity(attributes: &mut Value, quantity: u32) {
    attributes["items"][0]["quantity"] = json!(quantity);
    let items: Vec<LineItem> = serde_json::from_value(attributes["items"].clone()).expect("items");
    let (subtotal, tax, total) = totals(&items);
    attributes["subtotal"] = json!(subtotal);
    attributes["tax"] = json!(tax);
    attributes["total"] = json!(total);
}

// ---------------------------------------------------------------------------
// The peer: a cqrs-es 0.5 aggregate.
// ---------------------------------------------------------------------------

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Order {
    pub customer_id: String,
    pub items: Vec<LineItem>,
    pub shipping_address: Option<Address>,
    pub payment_method: String,
    pub subtotal: f64,
    pub tax: f64,
    pub total: f64,
    pub status: Status,
    pub tracking_number: Option<String>,
}

#[derive(Debug, Clone)]
pub enum OrderCommand {
    Create {
        customer_id: String,
        items: Vec<LineItem>,
        shipping_address: Address,
        payment_method: String,
    },
    Confirm,
    Process,
    Ship {
        tracking_number: String,
    },
    Deliver,
    ChangeQuantity {
        quantity: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OrderEvent {
    Created {
        customer_id: String,
        items: Vec<LineItem>,
        shipping_address: Address,
        payment_method: String,
        subtotal: f64,
        tax: f64,
        total: f64,
    },
    Confirmed,
    Processing,
    Shipped {
        tracking_number: String,
    },
    Delivered,
    QuantityChanged {
        quantity: u32,
        subtotal: f64,
        tax: f64,
        total: f64,
    },
}

impl DomainEvent for OrderEvent {
    fn event_type(&self) -> String {
        match self {
            OrderEvent::Created { .. } => "Created",
            OrderEvent::Confirmed => "Confirmed",
            OrderEvent::Processing => "Processing",
            OrderEvent::Shipped { .. } => "Shipped",
            OrderEvent::Delivered => "Delivered",
            OrderEvent::QuantityChanged { .. } => "QuantityChanged",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

/// A refused command.
#[derive(Debug)]
pub struct OrderError(pub String);

impl std::fmt::Display for OrderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OrderError {}

fn refuse(status: Status, command: &str) -> OrderError {
    OrderError(format!("cannot {command} an order that is {}", status.as_str()))
}

impl Aggregate for Order {
    const TYPE: &'static str = "order";
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = OrderError;
    type Services = ();

    async fn handle(
        &mut self,
        command: OrderCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), OrderError> {
        let event = match (command, self.status) {
            (
                OrderCommand::Create {
                    customer_id,
                    items,
                    shipping_address,
                    payment_method,
                },
                Status::None,
            ) => {
                let (subtotal, tax, total) = totals(&items);
                OrderEvent::Created {
                    customer_id,
                    items,
                    shipping_address,
                    payment_method,
                    subtotal,
                    tax,
                    total,
                }
            }
            (OrderCommand::Confirm, Status::Pending) => OrderEvent::Confirmed,
            (OrderCommand::Process, Status::Confirmed) => OrderEvent::Processing,
            (OrderCommand::Ship { tracking_number }, Status::Processing) => {
                OrderEvent::Shipped { tracking_number }
            }
            (OrderCommand::Deliver, Status::Shipped) => OrderEvent::Delivered,
            (OrderCommand::ChangeQuantity { quantity }, Status::Pending) => {
                let mut items = self.items.clone();
                items[0].quantity = quantity;
                let (subtotal, tax, total) = totals(&items);
                OrderEvent::QuantityChanged {
                    quantity,
                    subtotal,
                    tax,
                    total,
                }
            }
            (command, status) => return Err(refuse(status, &format!("{command:?}"))),
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: OrderEvent) {
        match event {
            OrderEvent::Created {
                customer_id,
                items,
                shipping_address,
                payment_method,
                subtotal,
                tax,
                total,
            } => {
                self.customer_id = customer_id;
                self.items = items;
                self.shipping_address = Some(shipping_address);
                self.payment_method = payment_method;
                (self.subtotal, self.tax, self.total) = (subtotal, tax, total);
                self.status = Status::Pending;
            }
            OrderEvent::Confirmed => self.status = Status::Confirmed,
            OrderEvent::Processing => self.status = Status::Processing,
            OrderEvent::Shipped { tracking_number } => {
                self.tracking_number = Some(tracking_number);
                self.status = Status::Shipped;
            }
            OrderEvent::Delivered => self.status = Status::Delivered,
            OrderEvent::QuantityChanged {
                quantity,
                subtotal,
                tax,
                total,
            } => {
                self.items[0].quantity = quantity;
                (self.subtotal, self.tax, self.total) = (subtotal, tax, total);
            }
        }
    }
}

/// The `Create` command of order `i` on the peer.
pub fn create_command(i: usize) -> OrderCommand {
    OrderCommand::Create {
        customer_id: format!("CUST-{:04}", i % 1000),
        items: line_items(i),
        shipping_address: address(),
        payment_method: "credit_card".into(),
    }
}

/// The tracking number given when order `i` ships.
pub fn tracking_number(i: usize) -> String {
    format!("TRK-{i:08}")
}

// ---------------------------------------------------------------------------
// The peer's in-memory event store without its `println!`s.
// ---------------------------------------------------------------------------

/// `cqrs_es::mem_store::MemStore` line for line, minus the two `println!`s
/// it makes per command (one in `load_events`, one in `commit`). Measures the
/// framework rather than the terminal. Clones share the events.
pub struct QuietMemStore<A: Aggregate> {
    events: Arc<RwLock<HashMap<String, Vec<EventEnvelope<A>>>>>,
}

impl<A: Aggregate> Clone for QuietMemStore<A> {
    fn clone(&self) -> Self {
        Self {
            events: Arc::clone(&self.events),
        }
    }
}

impl<A: Aggregate> Default for QuietMemStore<A> {
    fn default() -> Self {
        Self {
            events: Arc::default(),
        }
    }
}

impl<A: Aggregate> QuietMemStore<A> {
    fn load_committed_events(&self, aggregate_id: &str) -> Vec<EventEnvelope<A>> {
        self.events
            .read()
            .unwrap()
            .get(aggregate_id)
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }
}

impl<A: Aggregate> EventStore<A> for QuietMemStore<A> {
    type AC = MemStoreAggregateContext<A>;

    async fn load_events(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<EventEnvelope<A>>, AggregateError<A::Error>> {
        Ok(self.load_committed_events(aggregate_id))
    }

    async fn load_aggregate(
        &self,
        aggregate_id: &str,
    ) -> Result<MemStoreAggregateContext<A>, AggregateError<A::Error>> {
        let committed_events = self.load_events(aggregate_id).await?;
        let mut aggregate = A::default();
        let mut current_sequence = 0;
        for envelope in committed_events {
            current_sequence = envelope.sequence;
            aggregate.apply(envelope.payload);
        }
        Ok(MemStoreAggregateContext {
            aggregate_id: aggregate_id.to_string(),
            aggregate,
            current_sequence,
        })
    }

    async fn commit(
        &self,
        events: Vec<A::Event>,
        context: MemStoreAggregateContext<A>,
        metadata: HashMap<String, String>,
    ) -> Result<Vec<EventEnvelope<A>>, AggregateError<A::Error>> {
        let aggregate_id = context.aggregate_id;
        let mut sequence = context.current_sequence;
        let wrapped_events: Vec<EventEnvelope<A>> = events
            .into_iter()
            .map(|payload| {
                sequence += 1;
                EventEnvelope {
                    aggregate_id: aggregate_id.to_string(),
                    sequence,
                    payload,
                    metadata: metadata.clone(),
                }
            })
            .collect();
        if wrapped_events.is_empty() {
            return Ok(Vec::default());
        }
        let aggregate_id = wrapped_events[0].aggregate_id.to_string();
        let mut new_events = self.load_committed_events(&aggregate_id);
        for event in &wrapped_events {
            new_events.push(event.clone());
        }
        self.events.write().unwrap().insert(aggregate_id, new_events);
        Ok(wrapped_events)
    }
}
