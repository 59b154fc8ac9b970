//! Data-sync handlers that misbehave as the seed says: hang, fail, or panic,
//! before or after doing their work.

use std::sync::Arc;

use async_trait::async_trait;

use super::world::World;
use crate::error::BoxError;
use crate::handler::{DataSyncEvent, DataSyncHandler, Interest};

/// How often a handler run misbehaves (0 to 1 each).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HandlerFaults {
    /// The run never returns (the engine's handler timeout cuts it off).
    pub hang: f64,
    /// The run fails without doing anything.
    pub fail_before: f64,
    /// The run does its work, then fails.
    pub fail_after: f64,
    /// The run panics without doing anything.
    pub panic_before: f64,
    /// The run does its work, then panics.
    pub panic_after: f64,
}

impl Default for HandlerFaults {
    fn default() -> Self {
        Self {
            hang: 0.01,
            fail_before: 0.03,
            fail_after: 0.03,
            panic_before: 0.01,
            panic_after: 0.01,
        }
    }
}

impl HandlerFaults {
    /// Handlers that always behave.
    pub fn none() -> Self {
        Self {
            hang: 0.0,
            fail_before: 0.0,
            fail_after: 0.0,
            panic_before: 0.0,
            panic_after: 0.0,
        }
    }
}

/// The message of every panic a [`FaultyHandler`] injects (a test's panic
/// hook can keep them quiet).
pub const INJECTED_PANIC: &str = "injected handler panic";

/// Wraps a handler and makes some of its runs misbehave (see [`HandlerFaults`]).
pub struct FaultyHandler {
    inner: Arc<dyn DataSyncHandler>,
    world: Arc<World>,
    faults: HandlerFaults,
}

impl FaultyHandler {
    /// `inner`, misbehaving as `faults` says, by the choices of `world`.
    pub fn new(inner: Arc<dyn DataSyncHandler>, world: Arc<World>, faults: HandlerFaults) -> Self {
        Self { inner, world, faults }
    }
}

#[async_trait]
impl DataSyncHandler for FaultyHandler {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn interest(&self) -> Interest {
        self.inner.interest()
    }

    async fn handle(&self, event: &DataSyncEvent) -> Result<(), BoxError> {
        let f = &self.faults;
        let w = &self.world;
        let what = || {
            format!(
                "{} on {}@{}",
                self.inner.name(),
                event.command.sk,
                event.command.version
            )
        };
        if w.chance(f.hang) {
            w.trace(format_args!("handler hangs: {}", what()));
            std::future::pending::<()>().await;
        }
        if w.chance(f.fail_before) {
            w.trace(format_args!("handler fails before: {}", what()));
            return Err("injected handler failure".into());
        }
        if w.chance(f.panic_before) {
            w.trace(format_args!("handler panics before: {}", what()));
            panic!("{INJECTED_PANIC}");
        }
        self.inner.handle(event).await?;
        if w.chance(f.fail_after) {
            w.trace(format_args!("handler fails after: {}", what()));
            return Err("injected handler failure after its work".into());
        }
        if w.chance(f.panic_after) {
            w.trace(format_args!("handler panics after: {}", what()));
            panic!("{INJECTED_PANIC}");
        }
        Ok(())
    }
}
