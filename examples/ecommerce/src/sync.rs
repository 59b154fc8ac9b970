//! The order data-sync handler: the event-driven part of the storefront.
//!
//! - A new order reserves stock for all its lines in one all-or-nothing
//!   commit; without enough stock its reservation becomes `failed` and
//!   operations are alerted. Then the customer gets a confirmation.
//! - Cancelled: what the order reserved is released. Shipped: it is taken
//!   out of stock. Delivered: the customer is told.
//!
//! Delivery is at least once, so every step is idempotent: each order's
//! reservation is an entity of its own, decided once and moved on with the
//! stock counters in one commit, the order's reservation state is read fresh
//! before it is written, and notifications are keyed by event.

use std::sync::Arc;

use async_trait::async_trait;
use cqrs_core::{
    BoxError, CommandInput, DataItem, DataSyncEvent, DataSyncHandler, EntityKey, Interest, InvocationContext,
    Services,
};

use crate::domain::{OrderAttributes, OrderStatus, Reservation};
use crate::error::ShopError;
use crate::notify::{ClaimingNotifier, NotificationKind, Notifier};
use crate::services::{InventoryService, ReserveOutcome, StockDesk};

/// Reacts to order events.
pub struct OrderSyncHandler {
    services: Services,
    inventory: InventoryService,
    notifier: Arc<dyn Notifier>,
}

impl OrderSyncHandler {
    /// A handler over `services`: those of the engine it is registered on
    /// (`EngineBuilder::handler_with(|services| OrderSyncHandler::new(services.clone(), ..))`),
    /// or mocks. Its stock changes are queued on a [`StockDesk`] of its own.
    pub fn new(services: Services, notifier: Arc<dyn Notifier>) -> Self {
        Self::with_desk(services, notifier, StockDesk::new())
    }

    /// A handler whose stock changes are queued on `desk`: the desk of the
    /// process's other inventory services, so that restocks and
    /// reservations share batches.
    pub fn with_desk(services: Services, notifier: Arc<dyn Notifier>, desk: StockDesk) -> Self {
        let inventory = InventoryService::with_desk(services.clone(), desk);
        Self {
            services,
            inventory,
            notifier,
        }
    }

    /// Sends a notification once per event and kind, whichever run of the
    /// handler (a redelivery, another replica) gets here first.
    async fn notify(
        &self,
        event: &DataSyncEvent,
        kind: NotificationKind,
        message: String,
    ) -> Result<(), BoxError> {
        ClaimingNotifier::new(self.services.clone())
            .notify(event, kind, message, self.notifier.as_ref())
            .await?;
        Ok(())
    }

    async fn on_created(&self, event: &DataSyncEvent, order: &OrderAttributes) -> Result<(), BoxError> {
        let ctx = &event.context;
        let code = &event.command.code;
        let current = current_order(&self.services, &event.key(), ctx).await?;
        // A redelivery finds the reservation settled; a cancelled order reserves nothing.
        let settled = current
            .as_ref()
            .is_none_or(|(_, o)| o.reservation != Reservation::Pending || o.status == OrderStatus::Cancelled);
        if !settled {
            match self
                .inventory
                .reserve(code, &order.units_per_product(), ctx)
                .await?
            {
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
        let ctx = &event.context;
        let mut cancelled = false;
        self.services
            .update_with(&event.key(), ctx, |current: Option<&DataItem>| {
                cancelled = false;
                let Some(item) = current else {
                    return Ok(None);
                };
                let mut order: OrderAttributes = item.attributes_as()?;
                if order.status == OrderStatus::Cancelled {
                    cancelled = true;
                    return Ok(None);
                }
                if order.reservation == state {
                    return Ok(None);
                }
                order.reservation = state;
                Ok::<_, ShopError>(Some(CommandInput::update_of(item).attributes_from(&order)?))
            })
            .await?;
        if cancelled {
            self.inventory.release(&event.command.code, ctx).await?;
        }
        Ok(())
    }

    async fn on_status_change(
        &self,
        event: &DataSyncEvent,
        order: &OrderAttributes,
        from: OrderStatus,
    ) -> Result<(), BoxError> {
        let ctx = &event.context;
        let code = &event.command.code;
        tracing::info!(order = %code, "status {from} -> {}", order.status);
        match order.status {
            OrderStatus::Cancelled => {
                // Releases only what this order reserved: nothing if it reserved nothing.
                self.inventory.release(code, ctx).await?;
                self.notify(
                    event,
                    NotificationKind::Cancellation,
                    format!("order {code} was cancelled"),
                )
                .await?;
            }
            OrderStatus::Shipped => {
                self.inventory.deduct(code, ctx).await?;
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
    services: &Services,
    key: &EntityKey,
    ctx: &InvocationContext,
) -> Result<Option<(DataItem, OrderAttributes)>, BoxError> {
    match services.data.get_item(key, ctx).await? {
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
