//! Deterministic simulation: the engine, its pipeline, a stream consumer
//! and real handlers, over simulated storage and simulated time, driven by
//! a seed through thousands of fault schedules — any failure replayed from
//! its seed.
//!
//! The pieces:
//!
//! - [`Sim`], the driver. Each simulated process (an API server, a stream
//!   consumer) runs on a Tokio runtime of its own with a paused clock; a
//!   step moves every clock one tick, in an order the seed picks. A crash
//!   drops a process's runtime, so every future in it is dropped at the
//!   await it is at, and a restart runs the process's `main` again over the
//!   storage as it stands — recovery runs as after a real restart. A stall
//!   freezes a process while time goes on (its leases and heartbeat lapse).
//! - [`World`], what one run shares: the seeded generator every choice is
//!   drawn from, the trace, simulated time, storage-wide outages.
//! - [`SimStorage`], a process's storage client over the shared backend:
//!   calls fail, lose their answer after landing, time out, wait, or crash
//!   the process before or after landing ([`StorageFaults`]), and yield to
//!   the process's other tasks a random number of times first.
//! - [`SimStream`], the command table's stream: every landed command row is
//!   a record; consumers lease shards, get batches late or twice, and lose
//!   their leases when stalled ([`StreamFaults`]).
//! - [`FaultyHandler`], a handler that hangs, fails or panics, before or
//!   after its work ([`HandlerFaults`]).
//! - [`run_schedules`], which runs a schedule per seed over threads, and on
//!   a failure prints the seed and the command that replays it.
//!
//! Determinism: everything of one run happens on one thread; the
//! framework's clock ([`crate::clock::now`]) reads simulated time there, and
//! the thread's `fastrand` generator (backoff jitter) is seeded from the
//! seed. Randomness the run does not draw from [`World`] (UUIDs for request
//! and publisher ids) names things but decides nothing. A run's trace has a
//! [hash](World::trace_hash): two runs of one seed must give the same.
//!
//! What it cannot cover: the real DynamoDB (its conditions, transactions
//! and stream) — the conformance suite runs on DynamoDB Local for that — and
//! the SDK-bound parts of the DynamoDB stream consumer (shard iterators,
//! lease items), which process-level fault tests cover.
//!
//! See the testing guide (`docs/testing.md`, "Simulation") for a whole
//! harness over an application's services.

pub(crate) mod clock;
mod driver;
mod handler;
mod runner;
mod storage;
mod stream;
mod world;

pub use driver::{CrashSwitch, ProcessEnv, ProcessId, ProcessMain, Sim, SimConfig};
pub use handler::{FaultyHandler, HandlerFaults, INJECTED_PANIC};
pub use runner::{catch_quietly, run_schedules, Failure, Report, Schedules};
pub use storage::{SimStorage, StorageFaults};
pub use stream::{BatchOutcome, SimStream, StreamFaults, StreamRecord};
pub use world::World;
