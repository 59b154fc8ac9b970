//! The simulation's wall clock: what [`crate::clock::now`] reads on a
//! thread that runs a [`Sim`](super::Sim).
//!
//! Simulated time is the same for every process: the driver moves it one
//! tick at a time, and each process's Tokio clock (paused, advanced by the
//! driver) moves with it. While a process runs, the wall clock is read from
//! that process's Tokio clock, so a heartbeat written one simulated second
//! after another is one second later, to the nanosecond, in every replay.

use std::cell::RefCell;
use std::sync::atomic::AtomicI64;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

thread_local! {
    static CLOCK: RefCell<Option<SimClock>> = const { RefCell::new(None) };
}

/// The clock of the simulation that runs on this thread.
struct SimClock {
    /// Wall time at simulated time zero.
    epoch: DateTime<Utc>,
    reading: Reading,
    /// The last command time handed out (see `crate::clock::command_time`).
    last_command: Arc<AtomicI64>,
}

/// Where simulated time is read from now.
#[derive(Clone, Copy)]
pub(crate) enum Reading {
    /// Between steps: the driver's time.
    Driver(Duration),
    /// While a process runs: its Tokio clock, which read `anchor` at
    /// simulated time `started`.
    Process {
        started: Duration,
        anchor: tokio::time::Instant,
    },
}

impl SimClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = match self.reading {
            Reading::Driver(elapsed) => elapsed,
            Reading::Process { started, anchor } => started + anchor.elapsed(),
        };
        self.epoch + chrono::Duration::from_std(elapsed).unwrap_or_default()
    }
}

/// The simulated time, if a simulation runs on this thread.
pub(crate) fn simulated_now() -> Option<DateTime<Utc>> {
    CLOCK.with(|clock| clock.borrow().as_ref().map(SimClock::now))
}

/// The simulation's own record of the last command time.
pub(crate) fn simulated_last_command_time() -> Option<Arc<AtomicI64>> {
    CLOCK.with(|clock| clock.borrow().as_ref().map(|c| c.last_command.clone()))
}

/// Installs a simulation's clock on this thread until the guard is dropped.
pub(crate) fn install(epoch: DateTime<Utc>) -> Installed {
    CLOCK.with(|clock| {
        let mut clock = clock.borrow_mut();
        assert!(clock.is_none(), "one simulation at a time runs on a thread");
        *clock = Some(SimClock {
            epoch,
            reading: Reading::Driver(Duration::ZERO),
            last_command: Arc::new(AtomicI64::new(i64::MIN)),
        });
    });
    Installed(())
}

/// Sets where the clock is read from.
pub(crate) fn read_from(reading: Reading) {
    CLOCK.with(|clock| {
        if let Some(clock) = clock.borrow_mut().as_mut() {
            clock.reading = reading;
        }
    });
}

/// Removes the simulation's clock when dropped.
pub(crate) struct Installed(());

impl Drop for Installed {
    fn drop(&mut self) {
        CLOCK.with(|clock| clock.borrow_mut().take());
    }
}
