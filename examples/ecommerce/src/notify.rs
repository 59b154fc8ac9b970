//! Notifications to customers and the operations team.

use std::collections::{HashSet, VecDeque};
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;
use serde::Serialize;

/// What a notification is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    /// To the customer: the order was received.
    OrderConfirmation,
    /// To operations: an order's stock could not be reserved.
    InventoryReservationFailed,
    /// To the customer: the order was cancelled.
    Cancellation,
    /// To the customer: the order was shipped.
    Shipping,
    /// To the customer: the order was delivered.
    Delivery,
}

/// One notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Notification {
    /// Kind.
    pub kind: NotificationKind,
    /// Tenant of the order.
    pub tenant: String,
    /// The order.
    pub order_code: String,
    /// Human-readable text.
    pub message: String,
    /// The same for every delivery of one event: a redelivered event does
    /// not notify twice.
    pub key: String,
}

/// Sends notifications (mail, chat, a queue...).
#[async_trait]
pub trait Notifier: Send + Sync {
    /// Sends one notification.
    async fn send(&self, notification: Notification);
}

/// Notifications the outbox keeps; older ones are dropped (a long-running
/// server must not grow without bound).
pub const OUTBOX_CAPACITY: usize = 10_000;

/// The default notifier: logs through `tracing` and keeps the latest
/// [`OUTBOX_CAPACITY`] notifications in an in-memory outbox, once per key.
#[derive(Debug, Default)]
pub struct OutboxNotifier {
    outbox: Mutex<Outbox>,
}

#[derive(Debug, Default)]
struct Outbox {
    sent: VecDeque<Notification>,
    keys: HashSet<String>,
}

impl OutboxNotifier {
    /// An empty outbox.
    pub fn new() -> Self {
        Self::default()
    }

    /// The notifications kept, oldest first.
    pub fn sent(&self) -> Vec<Notification> {
        let outbox = self.outbox.lock().unwrap_or_else(PoisonError::into_inner);
        outbox.sent.iter().cloned().collect()
    }
}

#[async_trait]
impl Notifier for OutboxNotifier {
    async fn send(&self, notification: Notification) {
        let mut outbox = self.outbox.lock().unwrap_or_else(PoisonError::into_inner);
        if !outbox.keys.insert(notification.key.clone()) {
            return;
        }
        if outbox.sent.len() == OUTBOX_CAPACITY {
            if let Some(oldest) = outbox.sent.pop_front() {
                outbox.keys.remove(&oldest.key);
            }
        }
        tracing::info!(
            kind = ?notification.kind,
            tenant = %notification.tenant,
            order = %notification.order_code,
            "notification: {}",
            notification.message
        );
        outbox.sent.push_back(notification);
    }
}
