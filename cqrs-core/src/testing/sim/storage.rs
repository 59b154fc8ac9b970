//! A process's storage client in a simulation: the shared backend, with
//! faults the seed chooses and the command table's stream fed with every
//! command row that lands.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::driver::CrashSwitch;
use super::stream::SimStream;
use super::world::World;
use crate::error::{Error, Result};
use crate::heartbeat::{Heartbeat, HeartbeatRenewal};
use crate::idempotency::IdempotencyRecord;
use crate::index::IndexEntry;
use crate::keys::EntityKey;
use crate::model::{CommandRecord, CommandStatus, DataItem, FailedCommand};
use crate::sequence::Counter;
use crate::storage::{ApplyWrite, RangePage, RangeQuery, Storage, StorageLimits};
use crate::testing::faulty::{Fault, InjectedFault, Op};

/// How often each storage fault happens, per call (0 to 1). The default is
/// a mix that a run of a few hundred calls meets every fault in.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StorageFaults {
    /// The call fails at once, nothing written (throttling, a blip).
    pub unavailable: f64,
    /// The call lands, and its caller gets a retryable error.
    pub lost_response: f64,
    /// The call waits up to [`StorageFaults::longest_timeout`], then fails;
    /// it landed or not, by a coin toss.
    pub timeout: f64,
    /// The call waits a little before it is made.
    pub delay: f64,
    /// The process crashes as it makes the call, which does not land.
    pub crash_before: f64,
    /// The process crashes once the call has landed, before it answers.
    pub crash_after: f64,
    /// Each call first yields to the process's other tasks up to this many
    /// times (a random number of times): the interleavings the seed explores.
    pub max_yields: u32,
    /// The longest a call that times out waits.
    pub longest_timeout: Duration,
}

impl Default for StorageFaults {
    fn default() -> Self {
        Self {
            unavailable: 0.01,
            lost_response: 0.01,
            timeout: 0.004,
            delay: 0.05,
            crash_before: 0.002,
            crash_after: 0.002,
            max_yields: 3,
            longest_timeout: Duration::from_secs(2),
        }
    }
}

impl StorageFaults {
    /// No fault at all (interleavings still vary).
    pub fn none() -> Self {
        Self {
            unavailable: 0.0,
            lost_response: 0.0,
            timeout: 0.0,
            delay: 0.0,
            crash_before: 0.0,
            crash_after: 0.0,
            max_yields: 3,
            longest_timeout: Duration::ZERO,
        }
    }

    /// Every fault `factor` times as often.
    pub fn scaled(mut self, factor: f64) -> Self {
        for p in [
            &mut self.unavailable,
            &mut self.lost_response,
            &mut self.timeout,
            &mut self.delay,
            &mut self.crash_before,
            &mut self.crash_after,
        ] {
            *p = (*p * factor).min(1.0);
        }
        self
    }
}

/// What happens to one call.
enum Chosen {
    Through,
    Unavailable,
    LostResponse,
    Timeout { wait: Duration, lands: bool },
    Delay(Duration),
    CrashBefore,
    CrashAfter,
}

/// One process's storage: the shared `inner` backend, faults drawn from
/// the run's seed, and every landed command row appended to the stream.
///
/// Give each simulated process its own (`SimStorage::new` with that
/// process's [`ProcessEnv`](super::ProcessEnv)): a crash it draws crashes
/// that process. Faults are drawn per call, and storage-wide outages
/// ([`World::storage_outage`]) fail every call of every process.
#[derive(Debug)]
pub struct SimStorage {
    inner: Arc<dyn Storage>,
    world: Arc<World>,
    crash: CrashSwitch,
    process: Arc<str>,
    stream: Option<Arc<SimStream>>,
    faults: StorageFaults,
}

impl SimStorage {
    /// `inner` as the process of `env` sees it, feeding `stream`.
    pub fn new(
        inner: Arc<dyn Storage>,
        env: &super::ProcessEnv,
        stream: Option<Arc<SimStream>>,
        faults: StorageFaults,
    ) -> Self {
        Self {
            inner,
            world: env.world.clone(),
            crash: env.crash.clone(),
            process: env.name.clone(),
            stream,
            faults,
        }
    }

    fn choose(&self) -> Chosen {
        let f = &self.faults;
        let world = &self.world;
        if world.chance(f.crash_before) {
            Chosen::CrashBefore
        } else if world.chance(f.crash_after) {
            Chosen::CrashAfter
        } else if world.chance(f.unavailable) {
            Chosen::Unavailable
        } else if world.chance(f.lost_response) {
            Chosen::LostResponse
        } else if world.chance(f.timeout) {
            Chosen::Timeout {
                wait: world.between(Duration::from_millis(100), f.longest_timeout),
                lands: world.chance(0.5),
            }
        } else if world.chance(f.delay) {
            Chosen::Delay(world.between(Duration::from_millis(1), Duration::from_millis(200)))
        } else {
            Chosen::Through
        }
    }

    fn injected(&self, op: Op, fault: Fault) -> Error {
        self.world
            .trace(format_args!("{}: {op:?} {fault:?}", self.process));
        Error::backend(InjectedFault { op, fault }, true)
    }

    async fn crash_now(&self, op: Op, landed: bool) -> ! {
        self.world.trace(format_args!(
            "{}: crash in {op:?} ({})",
            self.process,
            if landed { "landed" } else { "not landed" }
        ));
        self.crash.request();
        std::future::pending().await
    }

    async fn call<T, F>(&self, op: Op, call: F) -> Result<T>
    where
        F: Future<Output = Result<T>>,
    {
        for _ in 0..self.world.below(u64::from(self.faults.max_yields) + 1) {
            tokio::task::yield_now().await;
        }
        if self.world.storage_down() {
            return Err(self.injected(op, Fault::Unavailable));
        }
        match self.choose() {
            Chosen::Through => call.await,
            Chosen::Unavailable => Err(self.injected(op, Fault::Unavailable)),
            Chosen::LostResponse => {
                let _ = call.await;
                Err(self.injected(op, Fault::LostResponse))
            }
            Chosen::Timeout { wait, lands } => {
                if lands {
                    let _ = call.await;
                }
                tokio::time::sleep(wait).await;
                Err(self.injected(op, Fault::DelayResponse(wait)))
            }
            Chosen::Delay(wait) => {
                tokio::time::sleep(wait).await;
                call.await
            }
            Chosen::CrashBefore => self.crash_now(op, false).await,
            Chosen::CrashAfter => {
                let _ = call.await;
                self.crash_now(op, true).await
            }
        }
    }

    /// Appends a landed command row to the stream, as DynamoDB Streams does
    /// for every insert, whoever wrote it and whatever its writer was told.
    fn inserted(&self, command: &CommandRecord) {
        if let Some(stream) = &self.stream {
            stream.append(command.key(), command.version, command.status);
        }
    }
}

#[async_trait]
impl Storage for SimStorage {
    fn limits(&self) -> StorageLimits {
        self.inner.limits()
    }

    async fn put_command(
        &self,
        command: &CommandRecord,
        idempotency: Option<&IdempotencyRecord>,
    ) -> Result<()> {
        self.call(Op::PutCommand, async {
            self.inner.put_command(command, idempotency).await?;
            self.inserted(command);
            Ok(())
        })
        .await
    }

    async fn get_command(&self, key: &EntityKey, version: u64) -> Result<Option<CommandRecord>> {
        self.call(Op::GetCommand, self.inner.get_command(key, version))
            .await
    }

    async fn latest_command(
        &self,
        key: &EntityKey,
        data_version: Option<u64>,
    ) -> Result<Option<CommandRecord>> {
        self.call(Op::LatestCommand, self.inner.latest_command(key, data_version))
            .await
    }

    async fn list_commands(&self, key: &EntityKey) -> Result<Vec<CommandRecord>> {
        self.call(Op::ListCommands, self.inner.list_commands(key)).await
    }

    async fn set_command_status(&self, key: &EntityKey, version: u64, status: CommandStatus) -> Result<()> {
        self.call(
            Op::SetCommandStatus,
            self.inner.set_command_status(key, version, status),
        )
        .await
    }

    async fn apply(&self, writes: &[ApplyWrite]) -> Result<()> {
        self.call(Op::Apply, async {
            self.inner.apply(writes).await?;
            for command in writes.iter().filter_map(ApplyWrite::inserted_command) {
                self.inserted(command);
            }
            Ok(())
        })
        .await
    }

    async fn apply_one(&self, write: Box<ApplyWrite>) -> Result<DataItem> {
        let inserted = write.inserted_command().cloned();
        self.call(Op::Apply, async {
            let item = self.inner.apply_one(write).await?;
            if let Some(command) = &inserted {
                self.inserted(command);
            }
            Ok(item)
        })
        .await
    }

    async fn get_data(&self, key: &EntityKey) -> Result<Option<DataItem>> {
        self.call(Op::GetData, self.inner.get_data(key)).await
    }

    async fn query_data(&self, query: &RangeQuery) -> Result<RangePage> {
        self.call(Op::QueryData, self.inner.query_data(query)).await
    }

    async fn query_index(&self, index: &str, query: &RangeQuery) -> Result<RangePage> {
        self.call(Op::QueryIndex, self.inner.query_index(index, query))
            .await
    }

    async fn put_index_entries(
        &self,
        key: &EntityKey,
        data_version: u64,
        indexes: &[String],
        entries: &[IndexEntry],
    ) -> Result<()> {
        self.call(
            Op::PutIndexEntries,
            self.inner.put_index_entries(key, data_version, indexes, entries),
        )
        .await
    }

    async fn get_history(&self, key: &EntityKey, version: u64) -> Result<Option<DataItem>> {
        self.call(Op::GetHistory, self.inner.get_history(key, version))
            .await
    }

    async fn list_history(&self, key: &EntityKey) -> Result<Vec<DataItem>> {
        self.call(Op::ListHistory, self.inner.list_history(key)).await
    }

    async fn get_idempotency(&self, tenant_code: &str, key: &str) -> Result<Option<IdempotencyRecord>> {
        self.call(Op::GetIdempotency, self.inner.get_idempotency(tenant_code, key))
            .await
    }

    async fn next_counter(&self, counter: &Counter) -> Result<u64> {
        self.call(Op::NextCounter, async {
            let issued = self.inner.next_counter(counter).await?;
            // Counted as it lands: the audit checks the counter skipped and
            // repeated nothing, whatever its callers were told.
            self.world.count(&format!("next_counter {}", counter.pk));
            Ok(issued)
        })
        .await
    }

    async fn put_failure(&self, failure: &FailedCommand) -> Result<()> {
        self.call(Op::PutFailure, self.inner.put_failure(failure)).await
    }

    async fn delete_failure(&self, key: &EntityKey, version: u64) -> Result<()> {
        self.call(Op::DeleteFailure, self.inner.delete_failure(key, version))
            .await
    }

    async fn get_failure(&self, key: &EntityKey, version: u64) -> Result<Option<FailedCommand>> {
        self.call(Op::GetFailure, self.inner.get_failure(key, version))
            .await
    }

    async fn list_failures(&self, tenant_code: Option<&str>) -> Result<Vec<FailedCommand>> {
        self.call(Op::ListFailures, self.inner.list_failures(tenant_code))
            .await
    }

    async fn renew_heartbeat(
        &self,
        publisher: &str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<HeartbeatRenewal> {
        self.call(
            Op::RenewHeartbeat,
            self.inner.renew_heartbeat(publisher, expires_at, now),
        )
        .await
    }

    async fn get_heartbeat(&self, publisher: &str) -> Result<Heartbeat> {
        self.call(Op::GetHeartbeat, self.inner.get_heartbeat(publisher))
            .await
    }
}
