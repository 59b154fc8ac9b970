//! The e-commerce example's stock algorithm before the stock desk (issue
//! 12), kept here as the baseline of the `hot_product` and `contention`
//! workloads: every reservation is a read-check-commit of the product's
//! inventory record at the version read (`Services::commit_with`), retried
//! after each version conflict (40 tries, a random wait below 4 ms, 8 ms,
//! ... 128 ms), and the record keeps one entry per open order in
//! `reservations`, which makes reserving idempotent per order. Setting the
//! stock is a read-modify-write of the same record
//! (`Services::update(..).retry(..).publish_sync`), retried the same way.
//!
//! The code is the example's of commit 4fbf8a9, with counters added. It
//! writes the same entity (`INVENTORY#{product}` in the tenant's partition)
//! with the same attributes plus the map, so a baseline run and a run of
//! the example's services are measured on the same rows.
//!
//! Not a module of the `cqrs_benches` library (the cqrs crates are
//! dev-dependencies of this package): the workloads include it with
//! `#[path = "../src/baseline.rs"] mod baseline;`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use cqrs_core::{tenant_pk, CommandInput, DataItem, EntityKey, InvocationContext, RetryPolicy, Services};
use ecommerce::domain::inventory_sk;
use serde::{Deserialize, Serialize};

/// Tries of a reservation or a stock change before giving up.
pub const MAX_ATTEMPTS: u32 = 40;

/// The retries of stock changes after version conflicts: [`MAX_ATTEMPTS`]
/// tries, each after a random wait below 4 ms, 8 ms, ... 128 ms.
pub fn contended() -> RetryPolicy {
    RetryPolicy {
        max_attempts: MAX_ATTEMPTS,
        initial_backoff: Duration::from_millis(4),
        max_backoff: Duration::from_millis(128),
    }
}

/// Stock of one product, with the units reserved per order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Inventory {
    /// The product.
    pub product_code: String,
    /// Units on hand.
    pub quantity: i64,
    /// Units reserved by orders not yet shipped.
    pub reserved_quantity: i64,
    /// Where the stock is.
    pub warehouse_code: String,
    /// When the quantity on hand was last set.
    pub last_restocked_at: DateTime<Utc>,
    /// Units reserved per order code: one entry per open order.
    #[serde(default)]
    pub reservations: BTreeMap<String, i64>,
}

impl Inventory {
    /// Units that can still be reserved.
    pub fn available(&self) -> i64 {
        self.quantity - self.reserved_quantity
    }
}

/// How a baseline reservation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every line is reserved (now, or by an earlier call for the order).
    Reserved,
    /// Not enough stock: nothing reserved.
    Insufficient,
    /// Still conflicting after [`MAX_ATTEMPTS`] tries (the example answered
    /// 409 `conflict`; its order handler failed and the pipeline retried).
    GaveUp,
}

/// What one call did.
#[derive(Debug, Clone, Copy)]
pub struct Tried<T> {
    /// How it ended.
    pub outcome: T,
    /// Reads and decisions (1 + the conflicts retried).
    pub attempts: u32,
}

fn key(ctx: &InvocationContext, product_code: &str) -> EntityKey {
    EntityKey::new(tenant_pk(&ctx.tenant_code), inventory_sk(product_code))
}

/// `InventoryService::reserve` as it was: one `commit_with` over every
/// line's record, decided again after each conflict.
pub async fn reserve(
    services: &Services,
    order_code: &str,
    units: &BTreeMap<String, i64>,
    ctx: &InvocationContext,
) -> Tried<Outcome> {
    let keys: Vec<EntityKey> = units.keys().map(|code| key(ctx, code)).collect();
    let attempts = AtomicU32::new(0);
    let mut outcome = Outcome::Reserved;
    let committed = services
        .clone()
        .with_conflict_retry(contended())
        .commit_with(&keys, ctx, |records: &[Option<DataItem>]| {
            attempts.fetch_add(1, Ordering::Relaxed);
            outcome = Outcome::Reserved;
            let mut commands = Vec::with_capacity(records.len());
            for ((_, &requested), record) in units.iter().zip(records) {
                let Some(item) = record else {
                    outcome = Outcome::Insufficient;
                    return Ok(Vec::new());
                };
                let mut attributes: Inventory = item.attributes_as()?;
                if attributes.reservations.contains_key(order_code) {
                    return Ok(Vec::new());
                }
                if attributes.available() < requested {
                    outcome = Outcome::Insufficient;
                    return Ok(Vec::new());
                }
                attributes.reserved_quantity += requested;
                attributes.reservations.insert(order_code.to_owned(), requested);
                commands.push(CommandInput::update_of(item).attributes_from(&attributes)?);
            }
            Ok::<_, cqrs_core::Error>(commands)
        })
        .await;
    let outcome = match committed {
        Ok(_) => outcome,
        Err(e) if e.is_conflict() => Outcome::GaveUp,
        Err(e) => panic!("baseline reserve of {order_code}: {e}"),
    };
    Tried {
        outcome,
        attempts: attempts.into_inner(),
    }
}

/// `InventoryService::set` as it was, without an expected version: a
/// read-modify-write of the record, decided again after each conflict.
/// `Ok(false)` when it gave up (the example answered 409).
pub async fn set(
    services: &Services,
    product_code: &str,
    quantity: i64,
    ctx: &InvocationContext,
) -> Tried<bool> {
    let key = key(ctx, product_code);
    let attempts = AtomicU32::new(0);
    let set = services
        .update(&key)
        .retry(contended())
        .publish_sync(ctx, |current: Option<&DataItem>| {
            attempts.fetch_add(1, Ordering::Relaxed);
            let item = current.ok_or_else(|| cqrs_core::Error::not_found(&key))?;
            let mut attributes: Inventory = item.attributes_as()?;
            assert!(
                quantity >= attributes.reserved_quantity,
                "restocks keep the quantity"
            );
            attributes.quantity = quantity;
            attributes.last_restocked_at = Utc::now();
            Ok::<_, cqrs_core::Error>(Some(CommandInput::update_of(item).attributes_from(&attributes)?))
        })
        .await;
    let outcome = match set {
        Ok(_) => true,
        Err(e) if e.is_conflict() => false,
        Err(e) => panic!("baseline set of {product_code}: {e}"),
    };
    Tried {
        outcome,
        attempts: attempts.into_inner(),
    }
}
