//! Work in flight: what [`Engine::wait_idle`](super::Engine::wait_idle) waits for.
//!
//! Every piece of work that must finish even when nobody awaits it (a
//! publish whose caller dropped its future, a command queued for the
//! in-process processor) holds an [`ActivityGuard`] while it runs.

use tokio::sync::watch;

/// A counter of work in flight that can be waited on until it is zero.
#[derive(Debug)]
pub(crate) struct Activity {
    in_flight: watch::Sender<usize>,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            in_flight: watch::channel(0).0,
        }
    }
}

impl Activity {
    /// Counts one more piece of work, until the guard is dropped.
    pub(crate) fn start(self: &std::sync::Arc<Self>) -> ActivityGuard {
        self.in_flight.send_modify(|n| *n += 1);
        crate::meters::in_flight(1.0);
        ActivityGuard {
            activity: self.clone(),
        }
    }

    /// Work in flight now.
    pub(crate) fn in_flight(&self) -> usize {
        *self.in_flight.borrow()
    }

    /// Returns once no work is in flight.
    pub(crate) async fn wait_idle(&self) {
        let mut rx = self.in_flight.subscribe();
        // The sender lives in `self`, so the channel cannot close here.
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

/// One piece of work in flight; dropping it ends it.
#[derive(Debug)]
pub(crate) struct ActivityGuard {
    activity: std::sync::Arc<Activity>,
}

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        // The gauge first: whoever `wait_idle` wakes sees it at rest.
        crate::meters::in_flight(-1.0);
        self.activity.in_flight.send_modify(|n| *n -= 1);
    }
}
