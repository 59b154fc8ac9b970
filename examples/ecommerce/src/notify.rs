//! Notifications to customers and the operations team.

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

/// The default notifier: logs through `tracing` and keeps every notification
/// in an in-memory outbox, once per key.
#[derive(Debug, Default)]
pub struct OutboxNotifier {
    outbox: Mutex<Vec<Notification>>,
}

impl OutboxNotifier {
    /// An empty outbox.
    pub fn new() -> Self {
        Self::default()
    }

    /// Everything sent so far, oldest first.
    pub fn sent(&self) -> Vec<Notification> {
        self.outbox.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

#[async_trait]
impl Notifier for OutboxNotifier {
    async fn send(&self, notification: Notification) {
        let mut outbox = self.outbox.lock().unwrap_or_else(PoisonError::into_inner);
        if outbox.iter().any(|n| n.key == notification.key) {
            return;
        }
        tracing::info!(
            kind = ?notification.kind,
            tenant = %notification.tenant,
            order = %notification.order_code,
            "notification: {}",
            notification.message
        );
        outbox.push(notification);
    }
}
