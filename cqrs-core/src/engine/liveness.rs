//! The engine as a publisher that can be known to be gone: its heartbeat,
//! renewed while it lives, and the rule that leaves an unfinished sync
//! publish to its publisher only while that heartbeat lasts (see
//! [`Heartbeat`]).

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use smol_str::SmolStr;

use crate::error::Result;
use crate::heartbeat::{new_publisher_id, Heartbeat, HeartbeatRenewal};
use crate::model::CommandRecord;
use crate::storage::Storage;

/// Shortest publisher lease: renewals every third of it must stay cheap.
pub(crate) const MIN_PUBLISHER_LEASE: Duration = Duration::from_millis(100);

/// This engine's heartbeat, and the liveness of other publishers.
pub(crate) struct Liveness {
    storage: Arc<dyn Storage>,
    lease: Duration,
    state: Mutex<State>,
    /// One renewal at a time (the background one, or a publish's).
    renewal: tokio::sync::Mutex<()>,
}

struct State {
    /// The id this engine stamps on its rows now.
    id: SmolStr,
    /// Until when the stored heartbeat of `id` lasts, as last written.
    until: Option<DateTime<Utc>>,
    /// `false` once the backend said it keeps no heartbeats.
    supported: bool,
    /// Whether the background renewal runs.
    renewing: bool,
}

impl Liveness {
    pub(crate) fn new(storage: Arc<dyn Storage>, lease: Duration) -> Self {
        Self {
            storage,
            lease: lease.max(MIN_PUBLISHER_LEASE),
            state: Mutex::new(State {
                id: new_publisher_id(),
                until: None,
                supported: true,
                renewing: false,
            }),
            renewal: tokio::sync::Mutex::new(()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The id to stamp on the rows of a sync publish about to be written:
    /// this engine's, with its heartbeat stored and lasting at least half
    /// the lease more (the background renewal keeps it above two thirds;
    /// below half, it stalled — a Lambda environment thawed — and the
    /// publish renews it first).
    /// `None` when the backend keeps no heartbeats, or the heartbeat cannot
    /// be written now: the rows then get the whole recovery grace.
    pub(crate) async fn stamp(self: &Arc<Self>) -> Option<SmolStr> {
        if let Some(id) = self.fresh_id() {
            return Some(id);
        }
        let _one = self.renewal.lock().await;
        // Renewed meanwhile by whoever held the lock?
        if let Some(id) = self.fresh_id() {
            return Some(id);
        }
        if !self.state().supported {
            return None;
        }
        match self.renew().await {
            Ok(true) => {
                self.keep_renewing();
                self.fresh_id()
            }
            Ok(false) => None,
            Err(error) => {
                tracing::warn!(%error, "publisher heartbeat not written; this publish gets the whole recovery grace");
                None
            }
        }
    }

    /// The current id, if its heartbeat lasts long enough to stamp a row.
    fn fresh_id(&self) -> Option<SmolStr> {
        let state = self.state();
        let until = state.until.filter(|_| state.supported)?;
        let left = (until - crate::clock::now()).to_std().ok()?;
        (left >= self.lease / 2).then(|| state.id.clone())
    }

    /// Writes the heartbeat once (under a new id when the current one was
    /// declared gone). `Ok(false)`: the backend keeps no heartbeats.
    async fn renew(&self) -> Result<bool> {
        // A fresh id is never expired: the second round always ends.
        for _ in 0..2 {
            let id = self.state().id.clone();
            let now = crate::clock::now();
            let until = now + chrono::Duration::from_std(self.lease).unwrap_or(chrono::Duration::MAX);
            match self.storage.renew_heartbeat(&id, until, now).await? {
                HeartbeatRenewal::Renewed => {
                    let mut state = self.state();
                    if state.id == id {
                        state.until = Some(until);
                    }
                    return Ok(true);
                }
                HeartbeatRenewal::Expired => {
                    tracing::warn!(publisher = %id, "this engine's heartbeat expired (not renewed for a whole lease): \
                        its unfinished publishes may be recovered by others; going on under a new publisher id");
                    let mut state = self.state();
                    state.id = new_publisher_id();
                    state.until = None;
                }
                HeartbeatRenewal::Unsupported => {
                    self.state().supported = false;
                    return Ok(false);
                }
            }
        }
        Ok(self.state().until.is_some())
    }

    /// Renews the heartbeat every third of the lease for as long as the
    /// engine lives (the task holds it weakly), on the current Tokio runtime.
    /// Without one, each publish renews it when it is due.
    fn keep_renewing(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        {
            let mut state = self.state();
            if state.renewing {
                return;
            }
            state.renewing = true;
        }
        let liveness: Weak<Self> = Arc::downgrade(self);
        let every = self.lease / 3;
        runtime.spawn(async move {
            let mut wait = every;
            loop {
                tokio::time::sleep(wait).await;
                let Some(liveness) = liveness.upgrade() else {
                    return;
                };
                let _one = liveness.renewal.lock().await;
                wait = match liveness.renew().await {
                    Ok(true) => every,
                    Ok(false) => return,
                    Err(error) => {
                        // Soon again: the heartbeat lasts two more thirds.
                        tracing::warn!(%error, "publisher heartbeat not renewed; trying again");
                        (every / 4).max(MIN_PUBLISHER_LEASE / 4)
                    }
                };
            }
        });
    }

    /// How much longer the `applied` row `command` is left to its publisher:
    /// `None` when its recovery is due now — its publisher's heartbeat has
    /// expired or is missing, or `grace` has passed since its publication —
    /// else the time after which to ask again. A row without a publisher
    /// (or on a backend without heartbeats) gets the whole `grace`.
    pub(crate) async fn left_to_publisher(
        &self,
        command: &CommandRecord,
        grace: Duration,
    ) -> Result<Option<Duration>> {
        let age = (crate::clock::now() - command.created_at)
            .to_std()
            .unwrap_or(Duration::ZERO);
        let Some(grace_left) = grace.checked_sub(age).filter(|left| !left.is_zero()) else {
            return Ok(None);
        };
        let Some(publisher) = &command.publisher else {
            return Ok(Some(grace_left));
        };
        Ok(match self.storage.get_heartbeat(publisher).await? {
            Heartbeat::Until(until) => match (until - crate::clock::now()).to_std() {
                Ok(left) if !left.is_zero() => Some(left.min(grace_left)),
                _ => None,
            },
            Heartbeat::Missing => None,
            Heartbeat::Unsupported => Some(grace_left),
        })
    }
}
