//! The in-process background processor for async commands.
//!
//! One Tokio task per entity with pending commands drains that entity's
//! queue in order, so an entity's versions are applied strictly one after the
//! other while different entities proceed concurrently.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use std::panic::AssertUnwindSafe;

use futures::FutureExt as _;
use tokio::sync::watch;

use super::pipeline::{panic_message, Pipeline};
use crate::keys::EntityKey;

pub(crate) struct Worker {
    shared: Arc<Shared>,
}

struct Shared {
    pipeline: Arc<Pipeline>,
    /// Versions waiting per entity; an entity is present while its task runs.
    queues: Mutex<HashMap<EntityKey, VecDeque<u64>>>,
    /// Commands submitted and not yet processed.
    pending: watch::Sender<usize>,
}

impl Worker {
    pub(crate) fn new(pipeline: Arc<Pipeline>) -> Self {
        Self {
            shared: Arc::new(Shared {
                pipeline,
                queues: Mutex::new(HashMap::new()),
                pending: watch::channel(0).0,
            }),
        }
    }

    /// Queues `version` of `key`; starts the entity's task if it is idle.
    pub(crate) fn submit(&self, key: EntityKey, version: u64) {
        self.shared.pending.send_modify(|n| *n += 1);
        let start = {
            let mut queues = self.shared.queues.lock().unwrap_or_else(PoisonError::into_inner);
            match queues.get_mut(&key) {
                Some(queue) => {
                    queue.push_back(version);
                    false
                }
                None => {
                    queues.insert(key.clone(), VecDeque::from([version]));
                    true
                }
            }
        };
        if start {
            tokio::spawn(drain(self.shared.clone(), key));
        }
    }

    pub(crate) async fn wait_idle(&self) {
        let mut rx = self.shared.pending.subscribe();
        // The sender lives in `self`, so the channel cannot close here.
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

/// Processes the entity's queue until it is empty.
async fn drain(shared: Arc<Shared>, key: EntityKey) {
    loop {
        let next = {
            let mut queues = shared.queues.lock().unwrap_or_else(PoisonError::into_inner);
            let queue = queues.get_mut(&key);
            match queue.and_then(VecDeque::pop_front) {
                Some(version) => version,
                None => {
                    queues.remove(&key);
                    return;
                }
            }
        };
        let outcome = AssertUnwindSafe(shared.pipeline.process(&key, next))
            .catch_unwind()
            .await;
        match outcome {
            Ok(Ok(_)) => {}
            // Recorded as a failure by the pipeline where it could be; reprocess picks it up.
            Ok(Err(error)) => {
                tracing::error!(pk = %key.pk, sk = %key.sk, version = next, %error, "async command not processed")
            }
            Err(panic) => {
                let error = panic_message(panic.as_ref());
                tracing::error!(pk = %key.pk, sk = %key.sk, version = next, %error, "async command not processed")
            }
        }
        shared.pending.send_modify(|n| *n -= 1);
    }
}
