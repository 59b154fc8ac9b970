//! Notifications to customers and the operations team.
//!
//! Data-sync handlers run at least once: after a crash, a redelivery or a
//! takeover by another replica, the same event is handled again. A
//! notification is therefore first *claimed* in the tables — an entity
//! `NOTIFICATION#{order}#{version}#{kind}` created at version 0, a
//! conditional write that only one run, on any replica, can win — and only
//! the winner hands it to the [`Notifier`] transport. The stored entity is
//! the durable outbox: a deployment that mails customers would deliver from
//! it (a data-sync handler on `NOTIFICATION#`, keyed by its id) rather than
//! from memory.

use std::collections::{HashSet, VecDeque};
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;
use cqrs_core::{
    tenant_pk, CommandInput, DataSyncEvent, InvocationContext, ListQuery, Services, SkCondition,
};
use serde::{Deserialize, Serialize};

use crate::error::ShopResult;

/// Sort-key prefix of stored notifications.
pub const NOTIFICATION_SK_PREFIX: &str = "NOTIFICATION#";

/// What a notification is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

impl NotificationKind {
    fn as_str(self) -> &'static str {
        match self {
            NotificationKind::OrderConfirmation => "order_confirmation",
            NotificationKind::InventoryReservationFailed => "inventory_reservation_failed",
            NotificationKind::Cancellation => "cancellation",
            NotificationKind::Shipping => "shipping",
            NotificationKind::Delivery => "delivery",
        }
    }
}

/// One notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
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

impl Notification {
    /// The notification of `kind` for the order event `event`.
    pub fn of(event: &DataSyncEvent, kind: NotificationKind, message: String) -> Self {
        Self {
            kind,
            tenant: event.command.tenant_code().to_owned(),
            order_code: event.command.code.to_string(),
            message,
            key: format!("{}#{}", event.idempotency_key(), kind.as_str()),
        }
    }
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

/// The default transport: logs through `tracing` and keeps the latest
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

/// The sort key a notification is claimed under.
fn notification_sk(event: &DataSyncEvent, kind: NotificationKind) -> String {
    format!(
        "{NOTIFICATION_SK_PREFIX}{}#{}#{}",
        event.command.code,
        event.command.version,
        kind.as_str()
    )
}

/// Claims a notification in the tables, then sends it if this run won the
/// claim (see the [module documentation](self)).
#[derive(Clone)]
pub struct ClaimingNotifier {
    services: Services,
}

impl ClaimingNotifier {
    /// Claims through `services`.
    pub fn new(services: Services) -> Self {
        Self { services }
    }

    /// Claims the notification of `kind` for `event` and sends it through
    /// `transport` unless an earlier run (here or on another replica) did.
    /// Returns whether this run sent it.
    pub async fn notify(
        &self,
        event: &DataSyncEvent,
        kind: NotificationKind,
        message: String,
        transport: &dyn Notifier,
    ) -> ShopResult<bool> {
        let notification = Notification::of(event, kind, message);
        let ctx = &event.context;
        let claim = CommandInput::new(tenant_pk(&notification.tenant), notification_sk(event, kind))
            .code(notification.key.clone())
            .name(format!("{} {}", kind.as_str(), notification.order_code))
            .attributes_from(&notification)?;
        match self.services.commands.publish_sync(claim, ctx).await {
            Ok(claimed) if claimed.is_unchanged() => Ok(false),
            Ok(_) => {
                transport.send(notification).await;
                Ok(true)
            }
            Err(e) if e.is_conflict() => {
                tracing::debug!(key = %notification.key, "notification sent by an earlier run");
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Every stored notification of the caller's tenant, in key order.
    pub async fn stored(&self, ctx: &InvocationContext) -> ShopResult<Vec<Notification>> {
        let pk = tenant_pk(&ctx.tenant_code);
        let mut found = Vec::new();
        let mut query = ListQuery::new()
            .sk(SkCondition::BeginsWith(NOTIFICATION_SK_PREFIX.into()))
            .limit(cqrs_core::MAX_LIMIT);
        loop {
            let page = self.services.data.list_items(&pk, query.clone(), ctx).await?;
            for item in page.items {
                found.push(item.attributes_as()?);
            }
            match page.cursor {
                Some(cursor) => query = query.after(Some(cursor)),
                None => return Ok(found),
            }
        }
    }
}
