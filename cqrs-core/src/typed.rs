//! Entities as your own Rust types: publish a `T: Serialize`, read back a
//! `T: DeserializeOwned`, with no `serde_json::Value` in between.
//!
//! A typed publish writes the value straight into the canonical text the
//! rows store (see [`Attributes::from_serialize`]), and hands the value
//! back: nothing is parsed on the way. A typed read deserializes straight
//! from the stored text. Rows are the same as those the `Value` API writes,
//! byte for byte, so both APIs can be mixed freely.

use std::future::Future;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::attributes::Attributes;
use crate::context::InvocationContext;
use crate::error::Result;
use crate::handler::DataSyncEvent;
use crate::index::IndexLookup;
use crate::keys::EntityKey;
use crate::model::{CommandInput, CommandRecord, DataItem, Published, Synced};
use crate::query::{ListQuery, Page, UnreadableRow};
use crate::services::{CommandService, DataService};

/// A stored item (a [`DataItem`] or a [`CommandRecord`]) with its
/// attributes as your own type.
///
/// `item.attributes` holds the same state as text: `attributes` is what
/// you read and change; publish it with
/// [`publish_sync_typed`](CommandServiceExt::publish_sync_typed) and
/// [`Typed::update`].
#[derive(Debug, Clone, PartialEq)]
pub struct Typed<T, I = DataItem> {
    /// The attributes as `T`.
    pub attributes: T,
    /// The whole item.
    pub item: I,
}

/// A row that has attributes: [`DataItem`] and [`CommandRecord`].
pub trait HasAttributes {
    /// The row's attributes.
    fn attributes(&self) -> &Attributes;
}

impl HasAttributes for DataItem {
    fn attributes(&self) -> &Attributes {
        &self.attributes
    }
}

impl HasAttributes for CommandRecord {
    fn attributes(&self) -> &Attributes {
        &self.attributes
    }
}

impl<T: DeserializeOwned, I: HasAttributes> Typed<T, I> {
    /// Deserializes `item`'s attributes (straight from their text).
    pub fn from_item(item: I) -> Result<Self> {
        Ok(Typed {
            attributes: item.attributes().deserialize_into()?,
            item,
        })
    }
}

impl<T> Typed<T> {
    /// The command that replaces this item's state with `attributes`,
    /// expecting the item's version: publish it with
    /// [`publish_sync_typed`](CommandServiceExt::publish_sync_typed).
    ///
    /// ```
    /// use cqrs_core::{CommandServiceExt, InvocationContext, Typed};
    /// # use cqrs_core::CommandService;
    /// # #[derive(serde::Serialize, serde::Deserialize)]
    /// # struct Order { status: String }
    ///
    /// async fn confirm(commands: &dyn CommandService, order: Typed<Order>, ctx: &InvocationContext) -> cqrs_core::Result<Typed<Order>> {
    ///     let (command, mut order) = order.update();
    ///     order.status = "confirmed".into();
    ///     Ok(commands.publish_sync_typed(command, order, ctx).await?.into_item())
    /// }
    /// ```
    pub fn update(self) -> (CommandInput, T) {
        (CommandInput::update_of(&self.item), self.attributes)
    }
}

impl Synced {
    /// The same result, with the item's attributes deserialized as `T`.
    pub fn typed<T: DeserializeOwned>(self) -> Result<Synced<Typed<T>>> {
        let handled = self.handled().clone();
        Ok(Synced::new(
            self.into_published().try_map(Typed::from_item)?,
            handled,
        ))
    }
}

impl<I: HasAttributes> Published<I> {
    /// The same outcome, with the item's attributes deserialized as `T`.
    pub fn typed<T: DeserializeOwned>(self) -> Result<Published<Typed<T, I>>> {
        self.try_map(Typed::from_item)
    }
}

/// The state before and after a command, as your own type: what a
/// [`DataSyncHandler`](crate::DataSyncHandler) reads of an event with
/// [`DataSyncEvent::states`].
#[derive(Debug, Clone, PartialEq)]
pub struct StateChange<T> {
    /// The state before the command; `None` when it created the entity.
    pub old: Option<T>,
    /// The state the command produced.
    pub new: T,
}

impl DataSyncEvent {
    /// The states before and after the command, deserialized as `T`.
    ///
    /// ```
    /// use cqrs_core::{BoxError, DataSyncEvent};
    /// # #[derive(serde::Deserialize)]
    /// # struct Order { status: String }
    ///
    /// fn shipped_now(event: &DataSyncEvent) -> Result<bool, BoxError> {
    ///     let states = event.states::<Order>()?;
    ///     let was_shipped = states.old.is_some_and(|old| old.status == "shipped");
    ///     Ok(states.new.status == "shipped" && !was_shipped)
    /// }
    /// ```
    pub fn states<T: DeserializeOwned>(&self) -> Result<StateChange<T>> {
        Ok(StateChange {
            old: self.old.as_ref().map(DataItem::attributes_as).transpose()?,
            new: self.new.attributes_as()?,
        })
    }
}

/// Typed publishes over any [`CommandService`] (mocks included): your
/// value in, your value back, with no JSON tree in between.
///
/// The value is written straight into the stored text; the result carries
/// the value itself ([`Typed::attributes`]) next to the stored item, so
/// nothing is parsed back. The rows are those [`CommandService::publish_sync`]
/// writes of the same content.
///
/// ```
/// use cqrs_core::{CommandInput, CommandService, CommandServiceExt, InvocationContext, Typed};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// #[serde(rename_all = "camelCase")]
/// struct Product { price_cents: u64, on_sale: bool }
///
/// async fn put_on_sale(commands: &dyn CommandService, ctx: &InvocationContext) -> cqrs_core::Result<Typed<Product>> {
///     let command = CommandInput::new("TENANT#shop-a", "PRODUCT#PRD-001").name("Mouse");
///     let product = commands
///         .publish_sync_typed(command, Product { price_cents: 2999, on_sale: false }, ctx)
///         .await?
///         .into_item();
///     assert_eq!(product.item.version, 1);
///
///     let (command, mut changed) = product.update();
///     changed.on_sale = true;
///     let product = commands.publish_sync_typed(command, changed, ctx).await?.into_item();
///     // Stored as `{"onSale":true,"priceCents":2999}`.
///     Ok(product)
/// }
/// ```
///
/// The methods are provided for every `CommandService`, so a mock (feature
/// `mock`) answers them through its `publish_sync`, which sees the
/// command with the value's attributes:
///
/// ```
/// # #[cfg(feature = "mock")]
/// # {
/// use cqrs_core::{CommandInput, CommandServiceExt, DataItem, InvocationContext, MockCommandService, Synced};
///
/// #[derive(serde::Serialize)]
/// struct Stock { quantity: u32 }
///
/// let mut commands = MockCommandService::new();
/// commands.expect_publish_sync().returning(|command, _| {
///     assert_eq!(command.attributes.json(), r#"{"quantity":3}"#);
///     let item = DataItem::builder(&command.pk, &command.sk).attributes(command.attributes).build();
///     Ok(Synced::finished(item))
/// });
/// let ctx = InvocationContext::new("shop-a", "staff-1");
/// let command = CommandInput::new("TENANT#shop-a", "INVENTORY#PRD-001");
/// let stock = tokio::runtime::Builder::new_current_thread().build().unwrap()
///     .block_on(commands.publish_sync_typed(command, Stock { quantity: 3 }, &ctx))?
///     .into_item();
/// assert_eq!(stock.attributes.quantity, 3);
/// # }
/// # Ok::<(), cqrs_core::Error>(())
/// ```
//
// The methods return `impl Future` rather than boxing (as `async_trait`
// does): a typed publish then costs no allocation and no copy of its state
// beyond those of the publish it wraps.
pub trait CommandServiceExt: CommandService {
    /// [`CommandService::publish_sync`] of `command` with `attributes` as
    /// its attributes. Returns `attributes` back with the item: after an
    /// unchanged publish (the dirty check), the stored state it equals.
    fn publish_sync_typed<'a, T: Serialize + Send + 'a>(
        &'a self,
        command: CommandInput,
        attributes: T,
        ctx: &'a InvocationContext,
    ) -> impl Future<Output = Result<Synced<Typed<T>>>> + Send + 'a {
        async move {
            let command = command.attributes(Attributes::from_serialize(&attributes)?);
            let synced = self.publish_sync(command, ctx).await?;
            Ok(synced.map(|item| Typed { attributes, item }))
        }
    }

    /// [`CommandService::publish_async`] of `command` with `attributes` as
    /// its attributes; returns `attributes` back with the command row.
    fn publish_async_typed<'a, T: Serialize + Send + 'a>(
        &'a self,
        command: CommandInput,
        attributes: T,
        ctx: &'a InvocationContext,
    ) -> impl Future<Output = Result<Published<Typed<T, CommandRecord>>>> + Send + 'a {
        async move {
            let command = command.attributes(Attributes::from_serialize(&attributes)?);
            let published = self.publish_async(command, ctx).await?;
            Ok(published.map(|item| Typed { attributes, item }))
        }
    }
}

impl<S: CommandService + ?Sized> CommandServiceExt for S {}

/// Typed reads over any [`DataService`]: each item's attributes are
/// deserialized straight from their stored text.
///
/// ```
/// use cqrs_core::{DataService, DataServiceExt, EntityKey, InvocationContext};
/// #[derive(serde::Deserialize)]
/// struct Inventory { quantity: i64 }
///
/// async fn stock(data: &dyn DataService, ctx: &InvocationContext) -> cqrs_core::Result<i64> {
///     let key = EntityKey::new("TENANT#shop-a", "INVENTORY#PRD-001");
///     Ok(data.get_typed::<Inventory>(&key, ctx).await?.map_or(0, |i| i.attributes.quantity))
/// }
/// ```
pub trait DataServiceExt: DataService {
    /// [`DataService::get_item`] with the attributes deserialized.
    fn get_typed<'a, T: DeserializeOwned>(
        &'a self,
        key: &'a EntityKey,
        ctx: &'a InvocationContext,
    ) -> impl Future<Output = Result<Option<Typed<T>>>> + Send + 'a {
        async move { self.get_item(key, ctx).await?.map(Typed::from_item).transpose() }
    }

    /// [`DataService::get_latest`] with the attributes deserialized.
    fn get_latest_typed<'a, T: DeserializeOwned>(
        &'a self,
        key: &'a EntityKey,
        ctx: &'a InvocationContext,
    ) -> impl Future<Output = Result<Option<Typed<T>>>> + Send + 'a {
        async move { self.get_latest(key, ctx).await?.map(Typed::from_item).transpose() }
    }

    /// [`DataService::list_items`] with the attributes deserialized
    /// ([`Page::typed`]: an item that does not read as `T` is reported
    /// among the page's unreadable rows instead of failing the page).
    fn list_typed<'a, T: DeserializeOwned>(
        &'a self,
        pk: &'a str,
        query: ListQuery,
        ctx: &'a InvocationContext,
    ) -> impl Future<Output = Result<Page<Typed<T>>>> + Send + 'a {
        async move { Ok(self.list_items(pk, query, ctx).await?.typed()) }
    }

    /// [`DataService::list_by_index`] with the attributes deserialized
    /// ([`Page::typed`]).
    fn list_by_index_typed<'a, T: DeserializeOwned>(
        &'a self,
        lookup: &'a IndexLookup,
        query: ListQuery,
        ctx: &'a InvocationContext,
    ) -> impl Future<Output = Result<Page<Typed<T>>>> + Send + 'a {
        async move { Ok(self.list_by_index(lookup, query, ctx).await?.typed()) }
    }

    /// [`DataService::list_history`] with the attributes deserialized.
    fn list_history_typed<'a, T: DeserializeOwned>(
        &'a self,
        key: &'a EntityKey,
        ctx: &'a InvocationContext,
    ) -> impl Future<Output = Result<Vec<Typed<T>>>> + Send + 'a {
        async move {
            self.list_history(key, ctx)
                .await?
                .into_iter()
                .map(Typed::from_item)
                .collect()
        }
    }
}

impl<S: DataService + ?Sized> DataServiceExt for S {}

impl Page<DataItem> {
    /// The page with each item's attributes deserialized as `T`. An item
    /// whose attributes do not read as `T` is left out and reported among
    /// the page's [`unreadable`](Page::unreadable) rows, by its key and why
    /// — as a row a backend cannot read at all is — rather than failing the
    /// whole page.
    pub fn typed<T: DeserializeOwned>(self) -> Page<Typed<T>> {
        let Page {
            items,
            cursor,
            mut unreadable,
        } = self;
        let mut typed = Vec::with_capacity(items.len());
        for item in items {
            match item.attributes_as::<T>() {
                Ok(attributes) => typed.push(Typed { attributes, item }),
                Err(error) => {
                    tracing::warn!(pk = %item.pk, sk = %item.sk, %error, "a row that does not read as its type left out of a page");
                    unreadable.push(UnreadableRow {
                        pk: item.pk.to_string(),
                        sk: item.sk.to_string(),
                        reason: error.to_string(),
                    });
                }
            }
        }
        Page {
            items: typed,
            cursor,
            unreadable,
        }
    }
}
