//! The framework's wall clock.
//!
//! Every time the framework writes or compares — command and failure times,
//! publisher heartbeats, idempotency keys' expiry, outbox marks — is read
//! here, and backends read it too (the in-memory backend's key expiry). It
//! is [`Utc::now`], except on a thread that runs a deterministic simulation
//! ([`testing::sim`](crate::testing::sim), feature `testing`): there it is
//! the simulation's clock, which moves only as simulated time does, so that
//! heartbeats expire and keys lapse in simulated seconds, and a run is the
//! same each time it is replayed.

use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Utc};

/// The current time.
pub fn now() -> DateTime<Utc> {
    #[cfg(feature = "testing")]
    if let Some(now) = crate::testing::sim::clock::simulated_now() {
        return now;
    }
    Utc::now()
}

/// The time a command is written at: [`now`], made strictly increasing
/// within the process. A command row is told apart from a racing
/// duplicate's (same request id, author and content) by this time when a
/// conflict is checked for a write that landed, so two commands of one
/// process never share it, even when two threads read the clock in the same
/// nanosecond.
pub(crate) fn command_time() -> DateTime<Utc> {
    static LAST: AtomicI64 = AtomicI64::new(i64::MIN);
    #[cfg(feature = "testing")]
    if let Some(last) = crate::testing::sim::clock::simulated_last_command_time() {
        // A simulation's own: its times do not mix with the real clock's.
        return increasing(now(), &last);
    }
    increasing(now(), &LAST)
}

/// `now`, or one nanosecond past the latest time handed out from `last`.
pub(crate) fn increasing(now: DateTime<Utc>, last: &AtomicI64) -> DateTime<Utc> {
    let Some(nanos) = now.timestamp_nanos_opt() else {
        return now;
    };
    let previous = last.fetch_max(nanos, Ordering::AcqRel);
    if previous < nanos {
        return now;
    }
    // Taken, or behind: one nanosecond past the latest handed out.
    let next = last.fetch_add(1, Ordering::AcqRel) + 1;
    DateTime::from_timestamp_nanos(next)
}

#[cfg(test)]
mod tests {
    use super::command_time;

    #[test]
    fn command_times_are_unique_across_threads() {
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| (0..10_000).map(|_| command_time()).collect::<Vec<_>>()))
            .collect();
        let mut all: Vec<_> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        let count = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), count, "no two commands share a time");
    }
}
