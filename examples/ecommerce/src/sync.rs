//! The order data-sync handler: the event-driven part of the storefront.
//!
//! - A new order reserves stock for all its lines in one all-or-nothing
//!   commit; without enough stock its reservation becomes `failed` and
//!   operations are alerted. Then the customer gets a confirmation.
//! - Cancelled: what the order reserved is released. Shipped: it is taken
//!   out of stock. Delivered: the customer is told.
//!
//! Delivery is at least once, so every step is idempotent: inventory records
//! remember what each order reserved, the order's reservation state is read
//! fresh before it is written, and notifications are keyed by event.

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use cqrs_core::{
    BoxError, DataItem, DataSyncEvent, DataSyncHandler, EntityKey, ExpectedVersion, Interest,
    InvocationContext, PartialUpdate,
};

use crate::domain::{OrderAttributes, OrderStatus, Reservation};
use crate::notify::{ClaimingNotifier, NotificationKind, Notifier};
use crate::services::{conflict_backoff, Cqrs, InventoryService, ReserveOutcome};

/// Tries of writing an order's reservation state against concurrent changes.
const MARK_ATTEMPTS: u32 = 20;

/// Reacts to order events.
pub struct OrderSyncHandler {
    /// Set once the engine exists (the engine needs the handler first).
    services: Arc<OnceLock<Cqrs>>,
    notifier: Arc<dyn Notifier>,
}

impl OrderSyncHandler {
    /// A handler whose services are provided later through `services`.
    pub fn new(services: Arc<OnceLock<Cqrs>>, notifier: Arc<dyn Notifier>) -> Self {
        Self { services, notifier }
    }

    fn cqrs(&self) -> Result<&Cqrs, BoxError> {
        self.services
            .get()
            .ok_or_else(|| "order handler used before the shop was built".into())
    }

    /// Sends a notification once per event and kind, whichever run of the
    /// handler (a redelivery, another replica) gets here first.
    async fn notify(
        &self,
        event: &DataSyncEvent,
        kind: NotificationKind,
        message: String,
    ) -> Result<(), BoxError> {
        ClaimingNotifier::new(self.cqrs()?.clone())
            .notify(event, kind, message, self.notifier.as_ref())
            .await?;
        Ok(())
    }

    async fn on_created(&self, event: &DataSyncEvent, order: &OrderAttributes) -> Result<(), BoxError> {
        let cqrs = self.cqrs()?;
        let ctx = &event.context;
        let code = &event.command.code;
        let current = current_order(cqrs, &event.key(), ctx).await?;
        // A redelivery finds the reservation settled; a cancelled order reserves nothing.
        let settled = current
            .as_ref()
            .is_none_or(|(_, o)| o.reservation != Reservation::Pending || o.status == OrderStatus::Cancelled);
        if !settled {
            let inventory = InventoryService::new(cqrs.clone());
            match inventory.reserve(code, &order.units_per_product(), ctx).await? {
                ReserveOutcome::Reserved => {
                    tracing::info!(order = %code, "stock reserved");
                    self.mark(event, Reservation::Reserved).await?;
                }
                ReserveOutcome::Insufficient {
                    product_code,
                    requested,
                    available,
                } => {
                    let message = format!(
                        "insufficient inventory for {product_code}: requested {requested}, available {available}"
                    );
                    tracing::warn!(order = %code, "{message}");
                    self.mark(event, Reservation::Failed).await?;
                    self.notify(event, NotificationKind::InventoryReservationFailed, message)
                        .await?;
                }
            }
        }
        self.notify(
            event,
            NotificationKind::OrderConfirmation,
            format!("order {code} received, total {}", order.total),
        )
        .await?;
        Ok(())
    }

    /// Writes the order's reservation state on its latest version. If the
    /// order was cancelled while its stock was being reserved, the stock is
    /// released instead.
    async fn mark(&self, event: &DataSyncEvent, state: Reservation) -> Result<(), BoxError> {
        let cqrs = self.cqrs()?;
        let ctx = &event.context;
        let key = event.key();
        for attempt in 1..=MARK_ATTEMPTS {
            let Some((item, order)) = current_order(cqrs, &key, ctx).await? else {
                return Ok(());
            };
            if order.status == OrderStatus::Cancelled {
                let products: Vec<String> = order.units_per_product().into_keys().collect();
                InventoryService::new(cqrs.clone())
                    .release(&event.command.code, &products, ctx)
                    .await?;
                return Ok(());
            }
            if order.reservation == state {
                return Ok(());
            }
            let update = PartialUpdate::new(&key.pk, &key.sk, ExpectedVersion::Exactly(item.version))
                .attributes(serde_json::json!({ "reservation": state }));
            match cqrs.commands.publish_partial_update_sync(update, ctx).await {
                Ok(_) => return Ok(()),
                Err(e) if e.is_conflict() => conflict_backoff(attempt).await,
                Err(e) => return Err(e.into()),
            }
        }
        Err(format!(
            "order {} is changing too fast to record its reservation",
            event.command.code
        )
        .into())
    }

    async fn on_status_change(
        &self,
        event: &DataSyncEvent,
        order: &OrderAttributes,
        from: OrderStatus,
    ) -> Result<(), BoxError> {
        let cqrs = self.cqrs()?;
        let ctx = &event.context;
        let code = &event.command.code;
        let products: Vec<String> = order.units_per_product().into_keys().collect();
        let inventory = InventoryService::new(cqrs.clone());
        tracing::info!(order = %code, "status {from} -> {}", order.status);
        match order.status {
            OrderStatus::Cancelled => {
                // Releases only what this order reserved: nothing if it reserved nothing.
                inventory.release(code, &products, ctx).await?;
                self.notify(
                    event,
                    NotificationKind::Cancellation,
                    format!("order {code} was cancelled"),
                )
                .await?;
            }
            OrderStatus::Shipped => {
                inventory.deduct(code, &products, ctx).await?;
                self.notify(
                    event,
                    NotificationKind::Shipping,
                    format!("order {code} was shipped"),
                )
                .await?;
            }
            OrderStatus::Delivered => {
                self.notify(
                    event,
                    NotificationKind::Delivery,
                    format!("order {code} was delivered"),
                )
                .await?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// The order's latest data item and attributes.
async fn current_order(
    cqrs: &Cqrs,
    key: &EntityKey,
    ctx: &InvocationContext,
) -> Result<Option<(DataItem, OrderAttributes)>, BoxError> {
    match cqrs.data.get_item(key, ctx).await? {
        Some(item) => {
            let order = item.attributes_as()?;
            Ok(Some((item, order)))
        }
        None => Ok(None),
    }
}

#[async_trait]
impl DataSyncHandler for OrderSyncHandler {
    fn name(&self) -> &str {
        "order-sync"
    }

    fn interest(&self) -> Interest {
        Interest::SkPrefix("ORDER#".into())
    }

    async fn handle(&self, event: &DataSyncEvent) -> Result<(), BoxError> {
        let order: OrderAttributes = event.new.attributes_as()?;
        match &event.old {
            None => self.on_created(event, &order).await,
            Some(old) => {
                let before: OrderAttributes = old.attributes_as()?;
                if before.status != order.status {
                    self.on_status_change(event, &order, before.status).await
                } else {
                    Ok(())
                }
            }
        }
    }
}
