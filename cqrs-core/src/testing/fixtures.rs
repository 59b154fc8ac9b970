//! Shared pieces of the checks: contexts, engines and a recording handler.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use smol_str::SmolStr;

use super::{Interleaved, StorageFactory};
use crate::attributes::Attributes;
use crate::context::InvocationContext;
use crate::engine::{AsyncDispatch, Engine, EngineBuilder, RetryPolicy};
use crate::error::BoxError;
use crate::handler::{DataSyncEvent, DataSyncHandler, Interest};
use crate::model::{CommandInput, ExpectedVersion};

pub(crate) const PK_A: &str = "TENANT#shop-a";
pub(crate) const PK_B: &str = "TENANT#shop-b";

/// A context for `user-1` of `tenant`.
pub fn ctx(tenant: &str) -> InvocationContext {
    InvocationContext::new(tenant, "user-1").with_source_ip("192.0.2.1")
}

pub(crate) fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
    }
}

/// An engine builder over fresh storage, wrapped so that concurrent tasks interleave.
pub(crate) async fn builder(factory: &dyn StorageFactory) -> EngineBuilder {
    Engine::builder(Arc::new(Interleaved(factory.storage().await))).retry(fast_retry())
}

pub(crate) async fn engine(factory: &dyn StorageFactory) -> Engine {
    builder(factory).await.build()
}

pub(crate) async fn external_engine(factory: &dyn StorageFactory, handler: Arc<RecordingHandler>) -> Engine {
    builder(factory)
        .await
        .dispatch(AsyncDispatch::External)
        .handler_arc(handler)
        .build()
}

pub(crate) fn cmd(pk: &str, sk: &str, attributes: impl Into<Attributes>) -> CommandInput {
    CommandInput::new(pk, sk).attributes(attributes)
}

pub(crate) fn cmd_at(pk: &str, sk: &str, version: u64, attributes: impl Into<Attributes>) -> CommandInput {
    cmd(pk, sk, attributes).version(ExpectedVersion::Exactly(version))
}

pub(crate) fn n(value: u64) -> Attributes {
    json!({ "n": value }).into()
}

/// A handler that records every event it receives and can be told to fail.
#[derive(Debug)]
pub struct RecordingHandler {
    name: String,
    interest: Interest,
    events: Mutex<Vec<DataSyncEvent>>,
    /// Fail this many more runs.
    fail_next: AtomicU32,
}

impl RecordingHandler {
    /// A handler named `name` interested in `interest`.
    pub fn new(name: &str, interest: Interest) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_owned(),
            interest,
            events: Mutex::new(Vec::new()),
            fail_next: AtomicU32::new(0),
        })
    }

    /// Makes the next `runs` runs fail.
    pub fn fail_next(&self, runs: u32) {
        self.fail_next.store(runs, Ordering::SeqCst);
    }

    /// Every event received so far (failed runs included).
    pub fn events(&self) -> Vec<DataSyncEvent> {
        self.events.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// `(sk, version)` of every received event, in order.
    pub fn seen(&self) -> Vec<(SmolStr, u64)> {
        self.events()
            .into_iter()
            .map(|e| (e.command.sk, e.command.version))
            .collect()
    }
}

#[async_trait]
impl DataSyncHandler for RecordingHandler {
    fn name(&self) -> &str {
        &self.name
    }

    fn interest(&self) -> Interest {
        self.interest.clone()
    }

    async fn handle(&self, event: &DataSyncEvent) -> Result<(), BoxError> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(event.clone());
        let failing = self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            Err(format!("{} failed on purpose", self.name).into())
        } else {
            Ok(())
        }
    }
}
