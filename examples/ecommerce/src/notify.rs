//! Notifications to customers and the operations team, through the
//! framework's [outbox](cqrs_core::outbox).
//!
//! Data-sync handlers run at least once, and can be cut off after any step:
//! after a crash, a timeout, a redelivery or a takeover by another replica,
//! the same event is handled again. The order handler therefore only
//! *claims* a notification ([`ClaimingNotifier::claim`]): an entity
//! `NOTIFICATION#{order}#{version}#{kind}` created at version 0, a
//! conditional write that only one run, on any replica, can win. The
//! outbox's relay ([`ClaimingNotifier::relay`], registered on the engine)
//! sends every claim through a [`Transport`] — here the [`OutboxNotifier`]
//! — at least once and marks it sent; a process that dies between the claim
//! and the send leaves the claim to the pipeline's recovery, which runs the
//! relay again. Receivers deduplicate by the claim's id
//! ([`OutboxMessage::id`]).

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use cqrs_core::outbox::{Outbox, OutboxMessage, OutboxRelay, Transport};
use cqrs_core::{tenant_pk, BoxError, DataSyncEvent, InvocationContext, Services};
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

/// Notifications the outbox keeps; older ones are dropped (a long-running
/// server must not grow without bound).
pub const OUTBOX_CAPACITY: usize = 10_000;

/// The default transport of the relay: logs through `tracing` and keeps the
/// latest [`OUTBOX_CAPACITY`] notifications in memory, once per claim id
/// (the relay sends at least once: a resend is dropped here, as a real
/// receiver would drop it by the same id).
#[derive(Debug, Default)]
pub struct OutboxNotifier {
    outbox: Mutex<Sent>,
}

#[derive(Debug, Default)]
struct Sent {
    sent: VecDeque<(String, Notification)>,
    ids: HashSet<String>,
}

impl OutboxNotifier {
    /// An empty outbox.
    pub fn new() -> Self {
        Self::default()
    }

    /// The notifications kept, oldest first.
    pub fn sent(&self) -> Vec<Notification> {
        let outbox = self.outbox.lock().unwrap_or_else(PoisonError::into_inner);
        outbox.sent.iter().map(|(_, n)| n.clone()).collect()
    }
}

#[async_trait]
impl Transport for OutboxNotifier {
    async fn send(&self, message: &OutboxMessage) -> Result<(), BoxError> {
        let notification: Notification = message.payload_as()?;
        let mut outbox = self.outbox.lock().unwrap_or_else(PoisonError::into_inner);
        if !outbox.ids.insert(message.id.clone()) {
            return Ok(());
        }
        if outbox.sent.len() == OUTBOX_CAPACITY {
            if let Some((oldest, _)) = outbox.sent.pop_front() {
                outbox.ids.remove(&oldest);
            }
        }
        tracing::info!(
            kind = ?notification.kind,
            tenant = %notification.tenant,
            order = %notification.order_code,
            "notification: {}",
            notification.message
        );
        outbox.sent.push_back((message.id.clone(), notification));
        Ok(())
    }
}

/// The outbox of notifications: claims under [`NOTIFICATION_SK_PREFIX`].
pub fn outbox() -> Outbox {
    Outbox::new(NOTIFICATION_SK_PREFIX)
}

/// The id a notification is claimed under (after the prefix): one per
/// order, version and kind.
fn notification_id(event: &DataSyncEvent, kind: NotificationKind) -> String {
    format!(
        "{}#{}#{}",
        event.command.code,
        event.command.version,
        kind.as_str()
    )
}

/// Claims notifications in the tables; the outbox's relay sends them (see
/// the [module documentation](self)).
#[derive(Clone)]
pub struct ClaimingNotifier {
    services: Services,
}

impl ClaimingNotifier {
    /// Claims through `services`.
    pub fn new(services: Services) -> Self {
        Self { services }
    }

    /// The relay that sends every claimed notification through `transport`
    /// and marks it sent: register it on the engine whose `services` it
    /// gets (`EngineBuilder::handler_with`).
    pub fn relay(services: Services, transport: Arc<dyn Transport>) -> OutboxRelay {
        outbox().relay(services, transport)
    }

    /// Claims the notification of `kind` for `event`, unless an earlier run
    /// (here or on another replica) did; the relay sends it. Returns whether
    /// this run claimed it.
    pub async fn claim(
        &self,
        event: &DataSyncEvent,
        kind: NotificationKind,
        message: String,
    ) -> ShopResult<bool> {
        let notification = Notification::of(event, kind, message);
        let claimed = outbox()
            .claim(
                &self.services,
                &tenant_pk(&notification.tenant),
                &notification_id(event, kind),
                &format!("{} {}", kind.as_str(), notification.order_code),
                &notification,
                &event.context,
            )
            .await?;
        if !claimed {
            tracing::debug!(key = %notification.key, "notification claimed by an earlier run");
        }
        Ok(claimed)
    }

    /// Every claimed notification of the caller's tenant, sent or not, in
    /// key order.
    pub async fn stored(&self, ctx: &InvocationContext) -> ShopResult<Vec<Notification>> {
        Ok(self
            .claims(ctx)
            .await?
            .into_iter()
            .map(|(notification, _)| notification)
            .collect())
    }

    /// Every claimed notification of the caller's tenant with whether the
    /// relay has sent it, in key order.
    pub async fn claims(&self, ctx: &InvocationContext) -> ShopResult<Vec<(Notification, bool)>> {
        let claims = outbox()
            .list(&self.services, &tenant_pk(&ctx.tenant_code), ctx)
            .await?;
        let mut found = Vec::with_capacity(claims.len());
        for claim in claims {
            found.push((claim.payload_as()?, claim.sent_at.is_some()));
        }
        Ok(found)
    }
}
