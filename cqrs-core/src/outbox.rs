//! The transactional outbox: messages to other systems (mail, chat, a
//! queue, a webhook) that must be sent once their cause is stored, whatever
//! crashes in between.
//!
//! A data-sync handler that sends a message itself loses it when the process
//! dies between its write and its send, and sends it twice when it runs
//! again after a send. So a handler only *claims* the message: an entity
//! under the outbox's sort-key prefix, created at version 0 and keyed by
//! the message's id ([`Outbox::claim`]) — a conditional write that only one
//! run, on any replica, wins. The [`OutboxRelay`], a data-sync handler
//! interested in that prefix, then sends every claim through your
//! [`Transport`] and marks it sent (a new version of the claim carrying
//! [`SENT_AT_ATTRIBUTE`]).
//!
//! The relay is run by the pipeline like any handler, so it inherits its
//! delivery: a claim whose relay run was cut off (a crash, a timeout, a
//! failing transport) is run again by the pipeline's retries and recovery
//! (the in-process processor, or the stream consumer once the recovery
//! grace has passed). Each claim is therefore sent **at least once**: a
//! crash after the send and before the mark sends it again, so receivers
//! deduplicate by [`OutboxMessage::id`]. [`OutboxRelay::resume`] sends what
//! the pipeline gave up on (a claim whose relay failed for good, claims
//! written before the relay was registered), and [`Outbox::unsent`] lists
//! it, for operators and tests.
//!
//! ```
//! use std::sync::Arc;
//! use async_trait::async_trait;
//! use cqrs_core::outbox::{Outbox, OutboxMessage, Transport};
//! use cqrs_core::{BoxError, Engine, Storage};
//!
//! struct Mailer;
//!
//! #[async_trait]
//! impl Transport for Mailer {
//!     async fn send(&self, message: &OutboxMessage) -> Result<(), BoxError> {
//!         // Hand it to the mail service, with `message.id` as its
//!         // deduplication key.
//!         tracing::info!(id = %message.id, payload = %message.payload, "mail");
//!         Ok(())
//!     }
//! }
//!
//! fn engine(storage: Arc<dyn Storage>) -> Engine {
//!     let outbox = Outbox::new("MAIL#");
//!     Engine::builder(storage)
//!         .handler_with(move |services| outbox.relay(services.clone(), Arc::new(Mailer)))
//!         .build()
//! }
//! ```

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::context::InvocationContext;
use crate::error::{BoxError, Error, Result};
use crate::handle::Services;
use crate::handler::{DataSyncEvent, DataSyncHandler, Interest};
use crate::keys::EntityKey;
use crate::model::{CommandInput, DataItem};
use crate::query::{ListQuery, SkCondition, MAX_LIMIT};

/// The attribute the relay sets on a claim once its message was sent (an
/// RFC 3339 time). Reserved: a payload may not have it.
pub const SENT_AT_ATTRIBUTE: &str = "outboxSentAt";

/// One claimed message, as the [`Transport`] gets it.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxMessage {
    /// The claim's key (`pk#sk`), unique across tenants and the same on
    /// every send of the message: receivers deduplicate by it.
    pub id: String,
    /// The claim entity's key.
    pub key: EntityKey,
    /// The message's own id, as given to [`Outbox::claim`] (unique within
    /// its partition and outbox).
    pub message_id: String,
    /// What was claimed, as given to [`Outbox::claim`].
    pub payload: Value,
    /// When the claim was written.
    pub claimed_at: DateTime<Utc>,
    /// When the relay marked it sent (`None`: not yet).
    pub sent_at: Option<DateTime<Utc>>,
}

impl OutboxMessage {
    /// The payload as a type of yours.
    pub fn payload_as<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_value(self.payload.clone())
            .map_err(|e| Error::invalid(format!("outbox message {}", self.id), e.to_string()))
    }

    /// The message a stored claim holds; `None` for an item outside `prefix`.
    fn of_item(item: &DataItem, prefix: &str) -> Result<Option<Self>> {
        let Some(message_id) = item.sk.strip_prefix(prefix) else {
            return Ok(None);
        };
        let mut payload = item.attributes.as_value().clone();
        let sent_at = match payload.as_object_mut().and_then(|o| o.remove(SENT_AT_ATTRIBUTE)) {
            None | Some(Value::Null) => None,
            Some(value) => Some(serde_json::from_value(value).map_err(|e| {
                Error::invalid(
                    format!("outbox claim {}", item.key().id()),
                    format!("{SENT_AT_ATTRIBUTE} is not a time: {e}"),
                )
            })?),
        };
        Ok(Some(Self {
            id: item.key().id(),
            key: item.key(),
            message_id: message_id.to_owned(),
            payload,
            claimed_at: item.created_at,
            sent_at,
        }))
    }
}

/// Sends claimed messages: a mailer, a queue producer, an HTTP client.
///
/// Called at least once per claim, possibly concurrently from two replicas
/// for the same claim: pass [`OutboxMessage::id`] on to the receiver as its
/// deduplication key. An error (or a panic, or a run longer than the
/// engine's handler timeout) leaves the claim unsent; the pipeline retries
/// it.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Sends one message.
    async fn send(&self, message: &OutboxMessage) -> std::result::Result<(), BoxError>;
}

/// Why the relay could not deliver a claim.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The transport failed: the claim stays unsent.
    #[error("sending outbox message {id}: {source}")]
    Send {
        /// The message's [`OutboxMessage::id`].
        id: String,
        /// The transport's error.
        #[source]
        source: BoxError,
    },
    /// Reading or marking the claim failed (a retryable
    /// [`Error::Backend`] when storage is unavailable).
    #[error("outbox storage: {0}")]
    Storage(#[source] Error),
}

impl From<Error> for RelayError {
    fn from(error: Error) -> Self {
        RelayError::Storage(error)
    }
}

/// An outbox: the claims under one sort-key prefix (see the
/// [module documentation](self)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbox {
    prefix: String,
}

impl Outbox {
    /// The outbox whose claims' sort keys start with `sk_prefix` (e.g.
    /// `NOTIFICATION#`). Nothing else may be stored under that prefix.
    pub fn new(sk_prefix: impl Into<String>) -> Self {
        Self {
            prefix: sk_prefix.into(),
        }
    }

    /// The sort-key prefix of its claims.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The key of the claim of `message_id` in partition `pk`.
    pub fn key(&self, pk: &str, message_id: &str) -> EntityKey {
        EntityKey::new(pk, format!("{}{message_id}", self.prefix))
    }

    /// Claims the message `message_id` in partition `pk` (usually the
    /// tenant's, [`tenant_pk`](crate::tenant_pk)) with `payload` (a JSON
    /// object): created at version 0 through `services`, so that of every
    /// run claiming the same id, on any replica, one wins. Returns whether
    /// this call wrote the claim (`false`: it was claimed before).
    ///
    /// Claim it from a data-sync handler, with an id derived from stored
    /// state (such as [`DataSyncEvent::idempotency_key`]), so that a re-run
    /// of the handler claims the same message again instead of a new one.
    pub async fn claim<T: Serialize + ?Sized>(
        &self,
        services: &Services,
        pk: &str,
        message_id: &str,
        name: &str,
        payload: &T,
        ctx: &InvocationContext,
    ) -> Result<bool> {
        let key = self.key(pk, message_id);
        let command = CommandInput::new(&key.pk, &key.sk)
            .code(message_id)
            .name(name)
            .attributes_from(payload)?;
        if command.attributes.as_value().get(SENT_AT_ATTRIBUTE).is_some() {
            return Err(Error::invalid(
                "outbox payload",
                format!("{SENT_AT_ATTRIBUTE} is reserved for the relay"),
            ));
        }
        match services.commands.publish_sync(command, ctx).await {
            Ok(claimed) => Ok(!claimed.is_unchanged()),
            Err(e) if e.is_conflict() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Every claim of partition `pk`, sent or not, in key order.
    pub async fn list(
        &self,
        services: &Services,
        pk: &str,
        ctx: &InvocationContext,
    ) -> Result<Vec<OutboxMessage>> {
        let mut found = Vec::new();
        let mut query = ListQuery::new()
            .sk(SkCondition::BeginsWith(self.prefix.clone()))
            .limit(MAX_LIMIT);
        loop {
            let page = services.data.list_items(pk, query.clone(), ctx).await?;
            for item in &page.items {
                found.extend(OutboxMessage::of_item(item, &self.prefix)?);
            }
            match page.cursor {
                Some(cursor) => query = query.after(Some(cursor)),
                None => return Ok(found),
            }
        }
    }

    /// The claims of partition `pk` not yet marked sent, in key order.
    pub async fn unsent(
        &self,
        services: &Services,
        pk: &str,
        ctx: &InvocationContext,
    ) -> Result<Vec<OutboxMessage>> {
        let mut claims = self.list(services, pk, ctx).await?;
        claims.retain(|m| m.sent_at.is_none());
        Ok(claims)
    }

    /// The relay of this outbox, sending through `transport`: register it
    /// on the engine whose services it gets
    /// ([`EngineBuilder::handler_with`](crate::EngineBuilder::handler_with)).
    pub fn relay(&self, services: Services, transport: Arc<dyn Transport>) -> OutboxRelay {
        OutboxRelay {
            name: format!("outbox-relay:{}", self.prefix),
            outbox: self.clone(),
            services,
            transport,
        }
    }
}

/// Sends every claim of an [`Outbox`] at least once and marks it sent: a
/// data-sync handler on the outbox's prefix (see the [module documentation](self)).
pub struct OutboxRelay {
    name: String,
    outbox: Outbox,
    services: Services,
    transport: Arc<dyn Transport>,
}

impl OutboxRelay {
    /// Sends the claim at `key` unless it is marked sent, then marks it
    /// sent. Returns whether it was sent by this call (`false`: sent
    /// before, or no such claim).
    pub async fn deliver(
        &self,
        key: &EntityKey,
        ctx: &InvocationContext,
    ) -> std::result::Result<bool, RelayError> {
        let Some(item) = self.services.data.get_item(key, ctx).await? else {
            return Ok(false);
        };
        let Some(message) = OutboxMessage::of_item(&item, &self.outbox.prefix)? else {
            return Ok(false);
        };
        if message.sent_at.is_some() {
            return Ok(false);
        }
        self.transport
            .send(&message)
            .await
            .map_err(|source| RelayError::Send {
                id: message.id.clone(),
                source,
            })?;
        self.mark_sent(&item, ctx).await?;
        tracing::debug!(id = %message.id, "outbox message sent");
        Ok(true)
    }

    /// Sets [`SENT_AT_ATTRIBUTE`] on the claim read as `item`, unless a
    /// concurrent run did: at `item`'s version first (no second read), and
    /// on a version conflict at the version read again.
    async fn mark_sent(&self, item: &DataItem, ctx: &InvocationContext) -> Result<()> {
        let now = Value::String(crate::clock::now().to_rfc3339());
        let sent = |item: &DataItem| {
            let mut attributes = item.attributes.as_value().clone();
            let fields = attributes.as_object_mut()?;
            if fields.get(SENT_AT_ATTRIBUTE).is_some_and(|v| !v.is_null()) {
                return None;
            }
            fields.insert(SENT_AT_ATTRIBUTE.to_owned(), now.clone());
            Some(CommandInput::update_of(item).attributes(attributes))
        };
        let Some(command) = sent(item) else {
            return Ok(());
        };
        match self.services.commands.publish_sync(command, ctx).await {
            Err(e) if e.is_conflict() => {}
            other => return other.map(drop),
        }
        self.services
            .update_with(&item.key(), ctx, |current: Option<&DataItem>| {
                Ok::<_, Error>(current.and_then(sent))
            })
            .await?;
        Ok(())
    }

    /// Sends every unsent claim of partition `pk` (see [`Outbox::unsent`])
    /// and marks it sent: for claims the pipeline gave up on (their relay
    /// run failed for good) or that were written before the relay was
    /// registered. Stops at the first failure. Returns how many it sent.
    pub async fn resume(&self, pk: &str, ctx: &InvocationContext) -> std::result::Result<usize, RelayError> {
        let mut sent = 0;
        for message in self.outbox.unsent(&self.services, pk, ctx).await? {
            sent += usize::from(self.deliver(&message.key, ctx).await?);
        }
        Ok(sent)
    }
}

#[async_trait]
impl DataSyncHandler for OutboxRelay {
    fn name(&self) -> &str {
        &self.name
    }

    fn interest(&self) -> Interest {
        Interest::SkPrefix(self.outbox.prefix.clone())
    }

    async fn handle(&self, event: &DataSyncEvent) -> std::result::Result<(), BoxError> {
        // The relay's own mark (and any later version of a sent claim).
        if event
            .new
            .attributes
            .as_value()
            .get(SENT_AT_ATTRIBUTE)
            .is_some_and(|v| !v.is_null())
        {
            return Ok(());
        }
        self.deliver(&event.key(), &event.context).await?;
        Ok(())
    }
}
