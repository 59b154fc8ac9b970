//! A storage decorator that injects faults into chosen calls: the storage
//! fails, loses a response after writing, is slow, or hangs. In the spirit
//! of object_store's throttled and limited stores, it wraps any backend, so
//! the same fault tests run on every one.
//!
//! ```
//! use std::sync::Arc;
//! use cqrs_core::testing::{Fault, FaultyStorage, Op, Rule};
//!
//! fn faulty(backend: Arc<dyn cqrs_core::Storage>) -> Arc<FaultyStorage> {
//! let storage = Arc::new(FaultyStorage::new(backend));
//! // The next apply reaches storage, but its caller sees a timeout.
//! storage.inject(Rule::new(Fault::LostResponse).on(&[Op::Apply]).times(1));
//! // Everything fails until the outage is over.
//! let outage = storage.inject(Rule::new(Fault::Unavailable));
//! storage.remove(outage);
//! storage
//! }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::heartbeat::{Heartbeat, HeartbeatRenewal};
use crate::idempotency::IdempotencyRecord;
use crate::keys::EntityKey;
use crate::model::{CommandRecord, CommandStatus, DataItem, FailedCommand};
use crate::sequence::Counter;
use crate::storage::{ApplyWrite, RangePage, RangeQuery, Storage, StorageLimits};

/// A call of the [`Storage`] trait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Op {
    /// [`Storage::put_command`]
    PutCommand,
    /// [`Storage::get_command`]
    GetCommand,
    /// [`Storage::latest_command`]
    LatestCommand,
    /// [`Storage::list_commands`]
    ListCommands,
    /// [`Storage::set_command_status`]
    SetCommandStatus,
    /// [`Storage::apply`] and [`Storage::apply_one`]
    Apply,
    /// [`Storage::get_data`]
    GetData,
    /// [`Storage::query_data`]
    QueryData,
    /// [`Storage::get_history`]
    GetHistory,
    /// [`Storage::list_history`]
    ListHistory,
    /// [`Storage::next_counter`]
    NextCounter,
    /// [`Storage::put_failure`]
    PutFailure,
    /// [`Storage::delete_failure`]
    DeleteFailure,
    /// [`Storage::get_failure`]
    GetFailure,
    /// [`Storage::get_idempotency`]
    GetIdempotency,
    /// [`Storage::query_index`]
    QueryIndex,
    /// [`Storage::list_failures`]
    ListFailures,
    /// [`Storage::put_index_entries`]
    PutIndexEntries,
    /// [`Storage::renew_heartbeat`]
    RenewHeartbeat,
    /// [`Storage::get_heartbeat`]
    GetHeartbeat,
}

/// What happens to a call a [`Rule`] selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Fails at once with a retryable backend error, without reaching
    /// storage: an outage, throttling.
    Unavailable,
    /// Fails at once with a non-retryable backend error, without reaching
    /// storage.
    Rejected,
    /// Makes the call, then reports a retryable failure: the write happened,
    /// but its caller cannot know (a timeout after the request landed).
    LostResponse,
    /// Waits, then makes the call.
    Delay(Duration),
    /// Makes the call, then waits before returning its result: a caller
    /// that gives up meanwhile dropped a call that landed.
    DelayResponse(Duration),
    /// Waits until the rule is removed, then makes the call: storage that
    /// hangs, then comes back. A caller that gives up drops the call.
    Hang,
    /// Makes the call twice and returns the second call's result: a
    /// client's retry of a request whose first attempt landed unseen (the
    /// AWS SDK retrying a conditional write that timed out while DynamoDB
    /// was paused). A conditional write then fails on the row its own first
    /// attempt stored.
    RetriedAfterLanding,
}

/// Which calls get a fault: by default every call of every operation, from
/// now on, until the rule is removed.
#[derive(Debug, Clone)]
pub struct Rule {
    fault: Fault,
    ops: Option<Vec<Op>>,
    skip: u64,
    times: Option<u64>,
}

impl Rule {
    /// A rule injecting `fault` into every call.
    pub fn new(fault: Fault) -> Self {
        Self {
            fault,
            ops: None,
            skip: 0,
            times: None,
        }
    }

    /// Only calls of these operations.
    pub fn on(mut self, ops: &[Op]) -> Self {
        self.ops = Some(ops.to_vec());
        self
    }

    /// Lets the first `calls` selected calls through untouched.
    pub fn after(mut self, calls: u64) -> Self {
        self.skip = calls;
        self
    }

    /// Injects the fault this many times, then lets calls through.
    pub fn times(mut self, times: u64) -> Self {
        self.times = Some(times);
        self
    }

    fn selects(&self, op: Op) -> bool {
        self.ops.as_ref().is_none_or(|ops| ops.contains(&op))
    }
}

/// Identifies an injected [`Rule`], to [remove](FaultyStorage::remove) it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RuleId(u64);

/// The error of an injected fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectedFault {
    /// The call that failed.
    pub op: Op,
    /// The fault.
    pub fault: Fault,
}

impl fmt::Display for InjectedFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "injected fault {:?} on {:?}", self.fault, self.op)
    }
}

impl std::error::Error for InjectedFault {}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    rules: Vec<(RuleId, Rule)>,
    calls: HashMap<Op, u64>,
    faults: HashMap<Op, u64>,
}

/// Wraps a storage backend and injects [`Fault`]s into the calls that
/// [`Rule`]s select. Counts calls and injected faults per operation, so a
/// test can prove its fault really happened.
#[derive(Debug)]
pub struct FaultyStorage {
    inner: Arc<dyn Storage>,
    state: Mutex<State>,
    /// Bumped whenever rules are removed: hanging calls look again.
    removed: watch::Sender<u64>,
}

impl FaultyStorage {
    /// `inner`, with no fault yet.
    pub fn new(inner: Arc<dyn Storage>) -> Self {
        Self {
            inner,
            state: Mutex::default(),
            removed: watch::channel(0).0,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a rule; the first rule that selects a call decides its fault.
    pub fn inject(&self, rule: Rule) -> RuleId {
        let mut state = self.state();
        state.next_id += 1;
        let id = RuleId(state.next_id);
        state.rules.push((id, rule));
        id
    }

    /// Every call fails with [`Fault::Unavailable`] until [`FaultyStorage::heal`].
    pub fn outage(&self) -> RuleId {
        self.inject(Rule::new(Fault::Unavailable))
    }

    /// Removes a rule; calls hanging on it go on.
    pub fn remove(&self, id: RuleId) {
        self.state().rules.retain(|(rule, _)| *rule != id);
        self.removed.send_modify(|n| *n += 1);
    }

    /// Removes every rule.
    pub fn heal(&self) {
        self.state().rules.clear();
        self.removed.send_modify(|n| *n += 1);
    }

    /// Calls of `op` so far (faulty ones included).
    pub fn calls(&self, op: Op) -> u64 {
        self.state().calls.get(&op).copied().unwrap_or(0)
    }

    /// Faults injected into calls of `op` so far.
    pub fn faults(&self, op: Op) -> u64 {
        self.state().faults.get(&op).copied().unwrap_or(0)
    }

    /// Faults injected so far, over every operation.
    pub fn total_faults(&self) -> u64 {
        self.state().faults.values().sum()
    }

    /// Counts the call and picks its fault, if any.
    fn decide(&self, op: Op) -> Option<(RuleId, Fault)> {
        let mut state = self.state();
        *state.calls.entry(op).or_default() += 1;
        let mut chosen = None;
        for (id, rule) in state.rules.iter_mut().filter(|(_, rule)| rule.selects(op)) {
            if rule.skip > 0 {
                rule.skip -= 1;
                continue;
            }
            if let Some(times) = rule.times.as_mut() {
                if *times == 0 {
                    continue;
                }
                *times -= 1;
            }
            chosen = Some((*id, rule.fault));
            break;
        }
        if chosen.is_some() {
            *state.faults.entry(op).or_default() += 1;
        }
        chosen
    }

    async fn hang_until_removed(&self, id: RuleId) {
        let mut removed = self.removed.subscribe();
        while self.state().rules.iter().any(|(rule, _)| *rule == id) {
            // The sender lives in `self`: the channel cannot close here.
            if removed.changed().await.is_err() {
                return;
            }
        }
    }

    async fn call<T, F>(&self, op: Op, make_call: impl Fn() -> F) -> Result<T>
    where
        F: Future<Output = Result<T>>,
    {
        let call = make_call();
        let Some((id, fault)) = self.decide(op) else {
            return call.await;
        };
        let injected = || InjectedFault { op, fault };
        match fault {
            Fault::Unavailable => Err(Error::backend(injected(), true)),
            Fault::Rejected => Err(Error::backend(injected(), false)),
            Fault::LostResponse => {
                let _ = call.await;
                Err(Error::backend(injected(), true))
            }
            Fault::Delay(delay) => {
                tokio::time::sleep(delay).await;
                call.await
            }
            Fault::DelayResponse(delay) => {
                let result = call.await;
                tokio::time::sleep(delay).await;
                result
            }
            Fault::Hang => {
                self.hang_until_removed(id).await;
                call.await
            }
            Fault::RetriedAfterLanding => {
                let _ = call.await;
                make_call().await
            }
        }
    }
}

#[async_trait]
impl Storage for FaultyStorage {
    fn limits(&self) -> StorageLimits {
        self.inner.limits()
    }

    async fn put_command(
        &self,
        command: &CommandRecord,
        idempotency: Option<&IdempotencyRecord>,
    ) -> Result<()> {
        self.call(Op::PutCommand, || self.inner.put_command(command, idempotency))
            .await
    }

    async fn get_command(&self, key: &EntityKey, version: u64) -> Result<Option<CommandRecord>> {
        self.call(Op::GetCommand, || self.inner.get_command(key, version))
            .await
    }

    async fn latest_command(
        &self,
        key: &EntityKey,
        data_version: Option<u64>,
    ) -> Result<Option<CommandRecord>> {
        self.call(Op::LatestCommand, || self.inner.latest_command(key, data_version))
            .await
    }

    async fn list_commands(&self, key: &EntityKey) -> Result<Vec<CommandRecord>> {
        self.call(Op::ListCommands, || self.inner.list_commands(key))
            .await
    }

    async fn set_command_status(&self, key: &EntityKey, version: u64, status: CommandStatus) -> Result<()> {
        self.call(Op::SetCommandStatus, || {
            self.inner.set_command_status(key, version, status)
        })
        .await
    }

    async fn apply(&self, writes: &[ApplyWrite]) -> Result<()> {
        self.call(Op::Apply, || self.inner.apply(writes)).await
    }

    async fn apply_one(&self, write: Box<ApplyWrite>) -> Result<DataItem> {
        // Cloned per call: a fault may make the call twice.
        self.call(Op::Apply, || self.inner.apply_one(write.clone())).await
    }

    async fn get_data(&self, key: &EntityKey) -> Result<Option<DataItem>> {
        self.call(Op::GetData, || self.inner.get_data(key)).await
    }

    async fn query_data(&self, query: &RangeQuery) -> Result<RangePage> {
        self.call(Op::QueryData, || self.inner.query_data(query)).await
    }

    async fn get_history(&self, key: &EntityKey, version: u64) -> Result<Option<DataItem>> {
        self.call(Op::GetHistory, || self.inner.get_history(key, version))
            .await
    }

    async fn list_history(&self, key: &EntityKey) -> Result<Vec<DataItem>> {
        self.call(Op::ListHistory, || self.inner.list_history(key)).await
    }

    async fn next_counter(&self, counter: &Counter) -> Result<u64> {
        self.call(Op::NextCounter, || self.inner.next_counter(counter))
            .await
    }

    async fn put_failure(&self, failure: &FailedCommand) -> Result<()> {
        self.call(Op::PutFailure, || self.inner.put_failure(failure))
            .await
    }

    async fn delete_failure(&self, key: &EntityKey, version: u64) -> Result<()> {
        self.call(Op::DeleteFailure, || self.inner.delete_failure(key, version))
            .await
    }

    async fn get_failure(&self, key: &EntityKey, version: u64) -> Result<Option<FailedCommand>> {
        self.call(Op::GetFailure, || self.inner.get_failure(key, version))
            .await
    }

    async fn list_failures(&self, tenant_code: Option<&str>) -> Result<Vec<FailedCommand>> {
        self.call(Op::ListFailures, || self.inner.list_failures(tenant_code))
            .await
    }

    async fn get_idempotency(&self, tenant_code: &str, key: &str) -> Result<Option<IdempotencyRecord>> {
        self.call(Op::GetIdempotency, || {
            self.inner.get_idempotency(tenant_code, key)
        })
        .await
    }

    async fn query_index(&self, index: &str, query: &RangeQuery) -> Result<RangePage> {
        self.call(Op::QueryIndex, || self.inner.query_index(index, query))
            .await
    }

    async fn put_index_entries(
        &self,
        key: &EntityKey,
        data_version: u64,
        indexes: &[String],
        entries: &[crate::index::IndexEntry],
    ) -> Result<()> {
        self.call(Op::PutIndexEntries, || {
            self.inner.put_index_entries(key, data_version, indexes, entries)
        })
        .await
    }

    async fn renew_heartbeat(
        &self,
        publisher: &str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<HeartbeatRenewal> {
        self.call(Op::RenewHeartbeat, || {
            self.inner.renew_heartbeat(publisher, expires_at, now)
        })
        .await
    }

    async fn get_heartbeat(&self, publisher: &str) -> Result<Heartbeat> {
        self.call(Op::GetHeartbeat, || self.inner.get_heartbeat(publisher))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Nothing;

    #[async_trait]
    impl Storage for Nothing {
        async fn put_command(&self, _: &CommandRecord, _: Option<&IdempotencyRecord>) -> Result<()> {
            Ok(())
        }
        async fn get_command(&self, _: &EntityKey, _: u64) -> Result<Option<CommandRecord>> {
            Ok(None)
        }
        async fn latest_command(&self, _: &EntityKey, _: Option<u64>) -> Result<Option<CommandRecord>> {
            Ok(None)
        }
        async fn list_commands(&self, _: &EntityKey) -> Result<Vec<CommandRecord>> {
            Ok(vec![])
        }
        async fn set_command_status(&self, _: &EntityKey, _: u64, _: CommandStatus) -> Result<()> {
            Ok(())
        }
        async fn apply(&self, _: &[ApplyWrite]) -> Result<()> {
            Ok(())
        }
        async fn get_data(&self, _: &EntityKey) -> Result<Option<DataItem>> {
            Ok(None)
        }
        async fn query_data(&self, _: &RangeQuery) -> Result<RangePage> {
            Ok(RangePage::empty())
        }
        async fn get_history(&self, _: &EntityKey, _: u64) -> Result<Option<DataItem>> {
            Ok(None)
        }
        async fn list_history(&self, _: &EntityKey) -> Result<Vec<DataItem>> {
            Ok(vec![])
        }
        async fn next_counter(&self, _: &Counter) -> Result<u64> {
            Ok(1)
        }
        async fn put_failure(&self, _: &FailedCommand) -> Result<()> {
            Ok(())
        }
        async fn delete_failure(&self, _: &EntityKey, _: u64) -> Result<()> {
            Ok(())
        }
        async fn get_failure(&self, _: &EntityKey, _: u64) -> Result<Option<FailedCommand>> {
            Ok(None)
        }
        async fn list_failures(&self, _: Option<&str>) -> Result<Vec<FailedCommand>> {
            Ok(vec![])
        }
        async fn get_idempotency(&self, _: &str, _: &str) -> Result<Option<IdempotencyRecord>> {
            Ok(None)
        }
        async fn query_index(&self, _: &str, _: &RangeQuery) -> Result<RangePage> {
            Ok(RangePage::empty())
        }
        async fn put_index_entries(
            &self,
            _: &EntityKey,
            _: u64,
            _: &[String],
            _: &[crate::index::IndexEntry],
        ) -> Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn rules_select_by_operation_skip_and_count() {
        let storage = FaultyStorage::new(Arc::new(Nothing));
        storage.inject(
            Rule::new(Fault::Unavailable)
                .on(&[Op::NextCounter])
                .after(1)
                .times(2),
        );
        let counter = Counter::new("SEQ#p", "s");
        let results: Vec<bool> = futures::future::join_all((0..5).map(|_| storage.next_counter(&counter)))
            .await
            .into_iter()
            .map(|r| r.is_ok())
            .collect();
        assert_eq!(results, [true, false, false, true, true]);
        assert_eq!(storage.calls(Op::NextCounter), 5);
        assert_eq!(storage.faults(Op::NextCounter), 2);
        assert!(storage.get_data(&EntityKey::new("p", "s")).await.is_ok());
        let outage = storage.outage();
        let error = storage.get_data(&EntityKey::new("p", "s")).await.unwrap_err();
        assert!(error.is_retryable(), "{error}");
        storage.remove(outage);
        assert!(storage.get_data(&EntityKey::new("p", "s")).await.is_ok());
        assert_eq!(storage.total_faults(), 3);
    }

    #[tokio::test]
    async fn a_hanging_call_goes_on_once_its_rule_is_removed() {
        let storage = Arc::new(FaultyStorage::new(Arc::new(Nothing)));
        let hang = storage.inject(Rule::new(Fault::Hang).on(&[Op::GetData]));
        let call = tokio::spawn({
            let storage = storage.clone();
            async move { storage.get_data(&EntityKey::new("p", "s")).await.is_ok() }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!call.is_finished(), "the call hangs while the rule stands");
        storage.remove(hang);
        assert!(tokio::time::timeout(Duration::from_secs(5), call)
            .await
            .unwrap()
            .unwrap());
    }
}
