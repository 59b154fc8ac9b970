//! Orders: placing them at catalogue prices, reading them, moving their status.

use std::collections::BTreeMap;

use cqrs_core::{
    tenant_pk, CommandInput, CommandRecord, CommandServiceExt, Cursor, DataItem, EntityKey, ExpectedVersion,
    Filter, IdempotencyKey, Index, IndexLookup, InvocationContext, ListQuery, Page, SequenceRequest,
    Services, SkCondition,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{access, typed, validate, ProductService};
use crate::domain::{order_sk, Address, OrderAttributes, OrderItem, OrderStatus, Reservation};
use crate::error::{ShopError, ShopResult};
use crate::money::totals;

/// The index of orders by status: staff list one status's orders through it.
pub const ORDERS_BY_STATUS: &str = "orders-by-status";
/// The index of orders by the user who placed them: a customer's orders.
pub const ORDERS_BY_CUSTOMER: &str = "orders-by-customer";

/// The data table's indexes the order listing reads. Both sort by the
/// order's sk, `ORDER#ORD-000001`, ...: the order in which orders were placed.
/// A page of either costs one query, however many orders the shop has.
pub fn order_indexes() -> [Index; 2] {
    [
        Index::new(ORDERS_BY_STATUS)
            .entity_type("ORDER")
            .partition_by("attributes.status"),
        Index::new(ORDERS_BY_CUSTOMER)
            .entity_type("ORDER")
            .partition_by("attributes.userId"),
    ]
}

/// Lines an order may have.
pub const MAX_LINES: usize = 100;
/// Units a line must have at least.
pub const MIN_QUANTITY: u32 = 1;
/// Units a line may have.
pub const MAX_QUANTITY: u32 = 10_000;

/// An order to place, as in the seed's request. (Serialized only for the
/// fingerprint of an idempotent request.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({
    "customerId": "CUST-001",
    "items": [{ "productCode": "PRD-001", "quantity": 2, "price": 29.99 }],
    "shippingAddress": { "street": "123 Main St", "city": "Tokyo", "postalCode": "100-0001", "country": "JP" },
    "paymentMethod": "credit_card"
}))]
pub struct NewOrder {
    /// The customer.
    pub customer_id: String,
    /// The lines, at catalogue prices. A line's `name` is the catalogue's:
    /// one sent by the client is ignored.
    pub items: Vec<OrderItem>,
    /// Where it goes.
    pub shipping_address: Address,
    /// How it is paid.
    pub payment_method: String,
}

/// An order [placed](OrderService::place).
#[derive(Debug, Clone, PartialEq)]
pub struct Placed {
    /// The order's command, as its first publish stored it.
    pub order: CommandRecord,
    /// Whether an earlier request with the same idempotency key placed it
    /// (and this one placed nothing).
    pub replayed: bool,
}

/// A caller's request, as its idempotency key's fingerprint covers it: what
/// is asked, and who asks. The same key sent again with another body, to
/// another path, or by another user of the shop is another request (and
/// refused), never the replay of someone else's answer.
#[derive(Serialize)]
struct Request<'a, T: Serialize> {
    request: &'a str,
    user: &'a str,
    body: &'a T,
}

/// The idempotency key `key` of the caller's request `request` with `body`.
fn idempotency_key<T: Serialize>(
    key: &str,
    request: &str,
    body: &T,
    ctx: &InvocationContext,
) -> ShopResult<IdempotencyKey> {
    let request = Request {
        request,
        user: &ctx.user_id,
        body,
    };
    Ok(IdempotencyKey::new(key).fingerprint_of(&request)?)
}

/// Places, reads and moves orders.
#[derive(Clone)]
pub struct OrderService {
    services: Services,
    products: ProductService,
}

impl OrderService {
    /// Over the given framework services.
    pub fn new(services: Services) -> Self {
        let products = ProductService::new(services.clone());
        Self { services, products }
    }

    fn key(ctx: &InvocationContext, code: &str) -> EntityKey {
        EntityKey::new(tenant_pk(&ctx.tenant_code), order_sk(code))
    }

    /// Places an order: checks every line against the catalogue, numbers it
    /// (`ORD-000001`), computes the totals and publishes it asynchronously;
    /// the data-sync handler then reserves its stock. Staff or customer; the
    /// order records the caller (`userId`, the token's `sub`).
    pub async fn create(&self, order: NewOrder, ctx: &InvocationContext) -> ShopResult<CommandRecord> {
        Ok(self.place(order, None, ctx).await?.order)
    }

    /// [`create`](Self::create), idempotently with `idempotency_key` (a
    /// client's `Idempotency-Key`): while the key is held (24 h), the same
    /// request again returns the order the first one placed, and places
    /// nothing; the key with another request is
    /// [`IdempotencyKeyReused`](cqrs_core::Error::IdempotencyKeyReused).
    pub async fn place(
        &self,
        order: NewOrder,
        idempotency_key: Option<&str>,
        ctx: &InvocationContext,
    ) -> ShopResult<Placed> {
        access::shopper(ctx, "placing an order")?;
        let idempotency_key = idempotency_key
            .map(|key| self::idempotency_key(key, "POST /orders", &order, ctx))
            .transpose()?;
        if let Some(key) = &idempotency_key {
            // Looked up before anything else: a retry takes no order number,
            // and gets its order even if the catalogue changed since.
            if let Some(first) = self.services.commands.find_idempotent(key, ctx).await? {
                return Ok(Placed {
                    order: first,
                    replayed: true,
                });
            }
        }
        validate::text("customerId", &order.customer_id)?;
        validate::text("paymentMethod", &order.payment_method)?;
        let address = &order.shipping_address;
        for (what, value) in [
            ("shippingAddress.street", &address.street),
            ("shippingAddress.city", &address.city),
            ("shippingAddress.postalCode", &address.postal_code),
            ("shippingAddress.country", &address.country),
        ] {
            validate::text(what, value)?;
        }
        if order.items.is_empty() || order.items.len() > MAX_LINES {
            return Err(ShopError::InvalidInput(format!(
                "an order has 1 to {MAX_LINES} items"
            )));
        }
        // Every line against the document's rules (400) before any against
        // the catalogue (422): a malformed request is answered as malformed.
        for item in &order.items {
            validate::code("productCode", &item.product_code)?;
            crate::money::check_price(item.price)?;
            if !(MIN_QUANTITY..=MAX_QUANTITY).contains(&item.quantity) {
                return Err(ShopError::InvalidInput(format!(
                    "quantity of {} must be {MIN_QUANTITY} to {MAX_QUANTITY}, got {}",
                    item.product_code, item.quantity
                )));
            }
        }
        let mut order = order;
        let mut catalogue = BTreeMap::new();
        for item in &mut order.items {
            if !catalogue.contains_key(&item.product_code) {
                let product = self.products.find(&item.product_code, ctx).await?;
                catalogue.insert(item.product_code.clone(), product);
            }
            match catalogue.get(&item.product_code).and_then(Option::as_ref) {
                None => {
                    return Err(ShopError::Unprocessable(format!(
                        "unknown product {}",
                        item.product_code
                    )));
                }
                Some((_, product)) if !product.is_active => {
                    return Err(ShopError::Unprocessable(format!(
                        "product {} is not for sale",
                        item.product_code
                    )));
                }
                Some((_, product)) if product.price != item.price => {
                    return Err(ShopError::Unprocessable(format!(
                        "price of {} is {}, not {}",
                        item.product_code, product.price, item.price
                    )));
                }
                // The line's name is the catalogue's, whatever the client sent.
                Some((name, _)) => item.name = name.clone(),
            }
        }
        // Checked: a catalogue price too large to add up is a 400, not a panic.
        let totals = totals(order.items.iter().map(|i| (i.price, i.quantity)))?;
        let number = self
            .services
            .sequences
            .next(&SequenceRequest::new("ORDER").format("ORD-{no:06}"), ctx)
            .await?;
        let code = number.formatted;
        let attributes = OrderAttributes {
            customer_id: order.customer_id,
            user_id: ctx.user_id.to_string(),
            items: order.items,
            shipping_address: order.shipping_address,
            payment_method: order.payment_method,
            subtotal: totals.subtotal,
            tax: totals.tax,
            total: totals.total,
            status: OrderStatus::Pending,
            placed_at: cqrs_core::clock::now(),
            shipped_at: None,
            delivered_at: None,
            reservation: Reservation::Pending,
        };
        let mut command =
            CommandInput::new(tenant_pk(&ctx.tenant_code), order_sk(&code)).name(format!("Order {code}"));
        command.idempotency_key = idempotency_key;
        let placed = self
            .services
            .commands
            .publish_async_typed(command, attributes, ctx)
            .await?
            .into_inner()
            .item;
        // A request with the same key that got past the look-up at the same
        // time (a client retrying before its first try was answered) may
        // have published first: then the framework returns its order, and
        // the number taken here is burnt — a gap in the sequence, as a
        // failed publish leaves. One order either way.
        let replayed = placed.code != code;
        Ok(Placed {
            order: placed,
            replayed,
        })
    }

    /// An order: staff read any, a customer only their own (another's
    /// reads as missing).
    ///
    /// Read-your-writes: the order as its latest published command leaves
    /// it, applied by the pipeline or not, so that a client sees the order
    /// it placed at once (on the stream pipeline the data table lags).
    pub async fn get(&self, code: &str, ctx: &InvocationContext) -> ShopResult<DataItem> {
        access::shopper(ctx, "reading an order")?;
        validate::code("order code", code)?;
        let not_found = || ShopError::NotFound(format!("order {code} not found"));
        let order = self
            .services
            .data
            .get_latest(&Self::key(ctx, code), ctx)
            .await?
            .filter(|item| may_read(item, ctx))
            .ok_or_else(not_found)?;
        typed::checked::<OrderAttributes>(order, "order")
    }

    /// A page of orders, optionally of one status: staff see every order of
    /// the shop, a customer only their own.
    pub async fn list(
        &self,
        status: Option<OrderStatus>,
        limit: Option<usize>,
        cursor: Option<String>,
        ctx: &InvocationContext,
    ) -> ShopResult<Page<DataItem>> {
        access::shopper(ctx, "listing orders")?;
        let pk = tenant_pk(&ctx.tenant_code);
        let query = ListQuery::new()
            .filter(typed::not_deleted())
            .limit(validate::limit(limit)?)
            .after(cursor.map(Cursor::from));
        let data = &self.services.data;
        // Each listing reads an index partition or the orders' sort-key
        // range, so a page costs a page, not every order the shop has had.
        let page = match (access::is_staff(ctx), status) {
            (true, None) => {
                let orders = query.sk(SkCondition::BeginsWith("ORDER#".into()));
                data.list_items(&pk, orders, ctx).await?
            }
            (true, Some(status)) => {
                let lookup = IndexLookup::new(ORDERS_BY_STATUS, pk).value(status);
                data.list_by_index(&lookup, query, ctx).await?
            }
            (false, status) => {
                let lookup = IndexLookup::new(ORDERS_BY_CUSTOMER, pk).value(&ctx.user_id);
                let query = match status {
                    // A customer's own orders are few: filtering them is cheap.
                    Some(status) => query.filter(Filter::eq("attributes.status", status)),
                    None => query,
                };
                data.list_by_index(&lookup, query, ctx).await?
            }
        };
        Ok(typed::page::<OrderAttributes>(page))
    }

    /// Moves an order to `next`, as the seed's status machine allows. With
    /// `version`, the order must be at it; without, a concurrent change is
    /// read and the move checked and tried again. Staff make any move; a
    /// customer may only cancel their own order.
    ///
    /// With `idempotency_key` (a client's `Idempotency-Key`), the same
    /// request again returns the first one's result while the key is held,
    /// even though the status machine would now refuse the same move.
    pub async fn update_status(
        &self,
        code: &str,
        next: OrderStatus,
        version: Option<u64>,
        idempotency_key: Option<&str>,
        ctx: &InvocationContext,
    ) -> ShopResult<DataItem> {
        access::shopper(ctx, "changing an order's status")?;
        validate::code("order code", code)?;
        validate::version(version)?;
        if !access::is_staff(ctx) && next != OrderStatus::Cancelled {
            return Err(ShopError::Forbidden(format!(
                "moving an order to {next} needs the role {}",
                access::STAFF
            )));
        }
        let key = Self::key(ctx, code);
        let mut update = self.services.update(&key);
        if let Some(idempotency_key) = idempotency_key {
            #[derive(Serialize)]
            struct StatusChange {
                status: OrderStatus,
                version: Option<u64>,
            }
            let body = StatusChange {
                status: next,
                version,
            };
            let request = format!("PATCH /orders/{code}/status");
            update = update.idempotency_key(self::idempotency_key(idempotency_key, &request, &body, ctx)?);
        }
        let not_found = || ShopError::NotFound(format!("order {code} not found"));
        // Decided on the order as read, again after each conflict. With the
        // client's version, a conflict read again finds the order moved, and
        // the version check refuses it; an order whose creation the
        // pipeline has not applied yet is waited for. The closure gets the
        // whole item, not the order alone (`publish_sync_typed`): the
        // client's version and the deleted flag are the item's.
        let moved = update
            .publish_sync(ctx, |current: Option<&DataItem>| {
                let current = current.filter(|item| may_read(item, ctx)).ok_or_else(not_found)?;
                if let Some(expected) = version.filter(|v| *v != current.version) {
                    return Err(ShopError::Core(cqrs_core::Error::Conflict {
                        key: current.id(),
                        expected: ExpectedVersion::Exactly(expected),
                        actual: Some(current.version),
                    }));
                }
                let mut attributes: OrderAttributes = typed::attributes(current, "order")?;
                if !attributes.status.can_become(next) {
                    return Err(ShopError::InvalidTransition {
                        from: attributes.status,
                        to: next,
                    });
                }
                if next == OrderStatus::Confirmed && attributes.reservation != Reservation::Reserved {
                    return Err(ShopError::Conflict(format!(
                        "order {code} cannot be confirmed: its stock reservation is {}",
                        serde_json::to_value(attributes.reservation)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .unwrap_or_default()
                    )));
                }
                attributes.status = next;
                match next {
                    OrderStatus::Shipped => attributes.shipped_at = Some(cqrs_core::clock::now()),
                    OrderStatus::Delivered => attributes.delivered_at = Some(cqrs_core::clock::now()),
                    _ => {}
                }
                Ok(Some(
                    CommandInput::update_of(current).attributes_from(&attributes)?,
                ))
            })
            .await;
        match moved {
            // The closure never skips.
            Ok(updated) => updated.into_item().ok_or_else(not_found),
            Err(ShopError::Core(e)) if e.is_conflict() && version.is_none() => Err(ShopError::Conflict(
                format!("order {code} is changing too fast, retry"),
            )),
            Err(e) => Err(e),
        }
    }
}

/// Whether the caller may read `order`: staff any, a customer their own;
/// nobody an order deleted (by another program sharing the table).
fn may_read(order: &DataItem, ctx: &InvocationContext) -> bool {
    !order.is_deleted && (access::is_staff(ctx) || owner(order).as_deref() == Some(ctx.user_id.as_str()))
}

/// The user who placed `order`, read alone: a row that is not a whole
/// order still has an owner or none, so that a customer is told another's
/// unreadable row is missing, not what is wrong with it.
fn owner(order: &DataItem) -> Option<String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Owner {
        user_id: String,
    }
    order.attributes_as::<Owner>().ok().map(|owner| owner.user_id)
}
