//! The in-process background processor for async commands.
//!
//! One Tokio task per entity with pending commands drains that entity's
//! queue in order, so an entity's versions are applied strictly one after the
//! other while different entities proceed concurrently.
//!
//! A command whose processing fails for a transient reason (storage
//! unavailable) is retried, with capped backoff, until it succeeds: later
//! versions of its entity wait behind it, other entities go on.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};

use futures::FutureExt as _;

use super::activity::{Activity, ActivityGuard};
use super::pipeline::{panic_message, Pipeline};
use crate::keys::EntityKey;

pub(crate) struct Worker {
    shared: Arc<Shared>,
}

struct Shared {
    pipeline: Arc<Pipeline>,
    activity: Arc<Activity>,
    /// Versions waiting per entity; an entity is present while its task runs.
    queues: Mutex<HashMap<EntityKey, VecDeque<Queued>>>,
}

/// A version waiting for its entity's task; counted as work in flight.
struct Queued {
    version: u64,
    /// The trace of the publish that queued it (see [`crate::trace`]).
    traceparent: Option<smol_str::SmolStr>,
    _in_flight: ActivityGuard,
}

impl Worker {
    pub(crate) fn new(pipeline: Arc<Pipeline>, activity: Arc<Activity>) -> Self {
        Self {
            shared: Arc::new(Shared {
                pipeline,
                activity,
                queues: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Queues `version` of `key`; starts the entity's task if it is idle.
    pub(crate) fn submit(&self, key: EntityKey, version: u64, traceparent: Option<smol_str::SmolStr>) {
        let queued = Queued {
            version,
            traceparent,
            _in_flight: self.shared.activity.start(),
        };
        let start = {
            let mut queues = self.shared.queues.lock().unwrap_or_else(PoisonError::into_inner);
            match queues.get_mut(&key) {
                Some(queue) => {
                    queue.push_back(queued);
                    false
                }
                None => {
                    queues.insert(key.clone(), VecDeque::from([queued]));
                    true
                }
            }
        };
        if start {
            tokio::spawn(drain(self.shared.clone(), key));
        }
    }
}

/// Processes the entity's queue until it is empty.
async fn drain(shared: Arc<Shared>, key: EntityKey) {
    loop {
        let next = {
            let mut queues = shared.queues.lock().unwrap_or_else(PoisonError::into_inner);
            let queue = queues.get_mut(&key);
            match queue.and_then(VecDeque::pop_front) {
                Some(queued) => queued,
                None => {
                    queues.remove(&key);
                    return;
                }
            }
        };
        process_until_done(&shared.pipeline, &key, next.version, next.traceparent.as_deref()).await;
        // `next` is dropped here: one piece of work less in flight.
    }
}

/// Runs the pipeline for one version until it reaches a final state.
async fn process_until_done(pipeline: &Pipeline, key: &EntityKey, version: u64, traceparent: Option<&str>) {
    let mut attempt = 1u32;
    loop {
        let outcome = AssertUnwindSafe(pipeline.process_traced(key, version, traceparent))
            .catch_unwind()
            .await;
        match outcome {
            Ok(Ok(_)) => return,
            // Transient (storage unavailable, a handler hitting it): nothing
            // was recorded as done, so it is safe and necessary to go again.
            Ok(Err(error)) if error.is_retryable() => {
                let wait = pipeline.retry().backoff(attempt);
                tracing::warn!(pk = %key.pk, sk = %key.sk, version, attempt, %error, ?wait,
                    "async command not processed yet; retrying");
                tokio::time::sleep(wait).await;
                attempt = attempt.saturating_add(1);
            }
            // Not stored (its publish was dropped before the write landed),
            // or a row this engine cannot use: going again changes nothing.
            Ok(Err(error)) => {
                tracing::warn!(pk = %key.pk, sk = %key.sk, version, %error, "async command not processed");
                return;
            }
            // A bug in the pipeline itself (handlers' panics are caught and
            // count as failures): retrying would panic again.
            Err(panic) => {
                let error = panic_message(panic.as_ref());
                tracing::error!(pk = %key.pk, sk = %key.sk, version, %error, "async command not processed");
                return;
            }
        }
    }
}
