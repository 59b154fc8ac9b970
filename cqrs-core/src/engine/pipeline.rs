//! The data-sync pipeline: apply a command to the data table (with history),
//! then run every matching handler with bounded retries.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use std::panic::AssertUnwindSafe;

use futures::future::join_all;
use futures::FutureExt as _;
use tracing::Instrument;

use super::liveness::Liveness;
use super::records::{context_of, data_item};
use crate::context::InvocationContext;
use crate::error::{Error, Result, TransientCause};
use crate::handler::{DataSyncEvent, DataSyncHandler};
use crate::index::{Index, IndexEntry};
use crate::keys::{tenant_of_pk, EntityKey};
use crate::model::{CommandRecord, CommandStatus, DataItem, FailedCommand, Handled, HandlerFailure};
use crate::storage::{ApplyWrite, CommandWrite, Storage};

/// The name recorded when applying a command itself failed (not a handler).
pub const APPLY_STEP: &str = "pipeline:apply";

/// How failing handlers (and retryable backend errors in the pipeline) are retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Runs of a handler before the command is marked failed (at least 1).
    pub max_attempts: u32,
    /// Wait before the first retry; doubled each time.
    pub initial_backoff: Duration,
    /// Longest wait between two runs.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: super::DEFAULT_INITIAL_BACKOFF,
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The wait after run number `attempt` (1-based) failed.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.initial_backoff.saturating_mul(factor).min(self.max_backoff)
    }

    /// Runs `op` until it succeeds, fails with a non-retryable error, or
    /// `max_attempts` runs failed.
    pub(crate) async fn run<T, F, Fut>(&self, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut attempt = 1;
        loop {
            match op().await {
                Err(e) if e.is_retryable() && attempt < self.max_attempts.max(1) => {
                    crate::meters::storage_retry();
                    tokio::time::sleep(self.backoff(attempt)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

/// What a successful handler run records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnSuccess {
    /// Status `finished`, so a redelivered command is not handled twice and
    /// recovery knows the command is done.
    MarkFinished,
    /// Status `finished`, and the failure record of a reprocessed command removed.
    MarkFinishedAndClearFailure,
}

/// Which handlers a run includes and what its success records.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HandlerRun<'a> {
    /// Only the handlers with these names (a reprocess of failed handlers).
    pub only: Option<&'a [String]>,
    pub on_success: OnSuccess,
}

impl HandlerRun<'_> {
    /// Every matching handler; success marks the command finished.
    pub(crate) const ALL: HandlerRun<'static> = HandlerRun {
        only: None,
        on_success: OnSuccess::MarkFinished,
    };
}

/// How one handler's runs ended.
enum HandlerOutcome {
    Succeeded,
    /// Every run failed; recorded as a failure of the command.
    Failed(HandlerFailure),
    /// Every run failed, the last one because storage was unavailable (a
    /// retryable [`Error`] in the handler's error chain): nothing is
    /// recorded, and the command is processed again later.
    Transient(HandlerFailure),
}

/// What [`Pipeline::settle`] does with a command another framework wrote
/// (see [`EngineConfig::apply_foreign_commands`](super::EngineConfig::apply_foreign_commands)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Foreign {
    /// Settle it like one of ours.
    Apply,
    /// Leave it to its writer's pipeline.
    Leave,
}

/// When [`Pipeline::settle`] runs again the handlers of a command it finds
/// `applied`.
#[derive(Clone, Copy)]
pub(crate) enum Recovery<'a> {
    /// At once: the row was inserted `published`, so only a pipeline run
    /// that did not finish left it `applied`.
    AtOnce,
    /// Once its publisher is gone, or `grace` after its publication.
    AfterPublisher { liveness: &'a Liveness, grace: Duration },
}

pub(crate) struct Pipeline {
    pub(crate) storage: Arc<dyn Storage>,
    handlers: Vec<Arc<dyn DataSyncHandler>>,
    pub(crate) indexes: Vec<Index>,
    retry: RetryPolicy,
    handler_timeout: Duration,
}

impl Pipeline {
    pub(crate) fn new(
        storage: Arc<dyn Storage>,
        handlers: Vec<Arc<dyn DataSyncHandler>>,
        indexes: Vec<Index>,
        retry: RetryPolicy,
        handler_timeout: Duration,
    ) -> Self {
        Self {
            storage,
            handlers,
            indexes,
            retry,
            handler_timeout,
        }
    }

    /// The entries of `item` in the engine's indexes.
    pub(crate) fn index_entries(&self, item: &DataItem) -> Result<Vec<IndexEntry>> {
        let mut entries = Vec::new();
        for index in &self.indexes {
            entries.extend(index.entry(item)?);
        }
        Ok(entries)
    }

    pub(crate) fn retry(&self) -> &RetryPolicy {
        &self.retry
    }

    /// Brings a stored command to a final state (see [`Engine::settle`](super::Engine::settle)),
    /// and counts how the run ended.
    pub(crate) async fn settle(
        &self,
        key: &EntityKey,
        version: u64,
        recovery: Recovery<'_>,
        foreign: Foreign,
    ) -> Result<CommandStatus> {
        let outcome = self.settle_unmetered(key, version, recovery, foreign).await;
        crate::meters::processed(&outcome);
        outcome
    }

    async fn settle_unmetered(
        &self,
        key: &EntityKey,
        version: u64,
        recovery: Recovery<'_>,
        foreign: Foreign,
    ) -> Result<CommandStatus> {
        let Some(command) = self.retry.run(|| self.storage.get_command(key, version)).await? else {
            // Expired after it was applied (time to live of superseded rows).
            return Ok(CommandStatus::Applied);
        };
        if let (Some(stored), Foreign::Leave) = (&command.foreign_status, foreign) {
            tracing::debug!(pk = %key.pk, sk = %key.sk, version, status = %stored, "command of another framework left to its pipeline");
            return Ok(command.status);
        }
        let span = tracing::info_span!(
            "settle",
            tenant = command.tenant_code(),
            pk = %key.pk,
            sk = %key.sk,
            version,
            found = command.status.as_str(),
            outcome = tracing::field::Empty
        );
        crate::trace::continue_trace(&span, command.traceparent.as_deref());
        let outcome = self
            .settle_found(key, version, command, recovery)
            .instrument(span.clone())
            .await;
        record_outcome(&span, outcome.as_ref().map(|status| status.as_str()));
        outcome
    }

    /// [`settle`](Self::settle) once the command row is read.
    async fn settle_found(
        &self,
        key: &EntityKey,
        version: u64,
        command: CommandRecord,
        recovery: Recovery<'_>,
    ) -> Result<CommandStatus> {
        match command.status {
            CommandStatus::Published => self.process_known(key, version, Some(command)).await,
            CommandStatus::Applied => {
                // Applied by a sync publish whose handlers may still be
                // running: left to its publisher while it lives (within the grace).
                if let Recovery::AfterPublisher { liveness, grace } = recovery {
                    let mut command = command;
                    while let Some(wait) = self
                        .retry
                        .run(|| liveness.left_to_publisher(&command, grace))
                        .await?
                    {
                        tokio::time::sleep(wait).await;
                        match self.retry.run(|| self.storage.get_command(key, version)).await? {
                            Some(again) if again.status == CommandStatus::Applied => command = again,
                            Some(done) => return Ok(done.status),
                            None => return Ok(CommandStatus::Applied),
                        }
                    }
                }
                tracing::warn!(pk = %key.pk, sk = %key.sk, version, "command applied but its handlers never completed; running them again");
                self.process_known(key, version, None).await
            }
            done => Ok(done),
        }
    }

    pub(crate) fn handler_names(&self) -> Vec<&str> {
        self.handlers.iter().map(|h| h.name()).collect()
    }

    /// Brings the entity up to `version`, applying each missing version in
    /// order and running its handlers. See [`Engine::process`](super::Engine::process).
    pub(crate) async fn process(&self, key: &EntityKey, version: u64) -> Result<CommandStatus> {
        let outcome = self.process_known(key, version, None).await;
        crate::meters::processed(&outcome);
        outcome
    }

    /// [`process`](Self::process) in the trace of the publish that stored
    /// `version` (its `traceparent`, when the caller kept it).
    pub(crate) async fn process_traced(
        &self,
        key: &EntityKey,
        version: u64,
        traceparent: Option<&str>,
    ) -> Result<CommandStatus> {
        let outcome = self.process_in(key, version, None, traceparent).await;
        crate::meters::processed(&outcome);
        outcome
    }

    /// [`Pipeline::process`], with the command row of `version` when the
    /// caller has just read it (saves reading it again).
    async fn process_known(
        &self,
        key: &EntityKey,
        version: u64,
        known: Option<CommandRecord>,
    ) -> Result<CommandStatus> {
        let traceparent = known.as_ref().and_then(|c| c.traceparent.clone());
        self.process_in(key, version, known, traceparent.as_deref()).await
    }

    /// [`process_known`](Self::process_known) in a `process` span that
    /// continues the trace of `traceparent` and gets the outcome.
    async fn process_in(
        &self,
        key: &EntityKey,
        version: u64,
        mut known: Option<CommandRecord>,
        traceparent: Option<&str>,
    ) -> Result<CommandStatus> {
        let span = process_span(key, version);
        crate::trace::continue_trace(&span, traceparent);
        let outcome = async {
            let mut data = self.retry.run(|| self.storage.get_data(key)).await?;
            let mut status = CommandStatus::Applied;
            let current = data.as_ref().map_or(0, |d| d.version);
            if current >= version {
                // Already applied: a redelivery.
                return self.finish_applied(key, version).await;
            }
            for v in current + 1..=version {
                let command = match known.take_if(|c| c.version == v) {
                    Some(command) => command,
                    None => self.command(key, v).await?,
                };
                match self.apply_published(&command, data.as_ref()).await {
                    Ok(new) => {
                        status = status_of(
                            &self
                                .run_handlers(
                                    &command,
                                    data.as_ref(),
                                    &new,
                                    || context_of(&command),
                                    HandlerRun::ALL,
                                )
                                .await?,
                        );
                        // An earlier delivery failed to apply it and recorded
                        // that (the row says `failed`); this one succeeded.
                        if command.status == CommandStatus::Failed && status != CommandStatus::Failed {
                            self.retry.run(|| self.storage.delete_failure(key, v)).await?;
                        }
                        data = Some(new);
                    }
                    // Applied meanwhile: by another run (a consumer that
                    // lost its lease, a reprocess), or by this run's own
                    // write whose answer was lost (a timeout that landed;
                    // its retry then conflicts). Nothing else may ever run
                    // its handlers, so this run sees to them as a
                    // redelivery does (at least once).
                    Err(Error::Conflict {
                        actual: Some(actual), ..
                    }) if actual >= v => {
                        data = self.retry.run(|| self.storage.get_data(key)).await?;
                        status = self.finish_applied(key, v).await?;
                    }
                    // Storage unavailable: nothing is recorded as done; the
                    // caller (processor, stream consumer) tries again later.
                    Err(e) if e.is_retryable() => return Err(e),
                    // It can never be applied as it is (too large, say):
                    // recorded, visible and reprocessable; later versions of
                    // the entity wait behind it.
                    Err(e) => {
                        tracing::error!(version = v, error = %e, "command cannot be applied; recorded as failed");
                        self.record_failure(
                            &command,
                            vec![HandlerFailure {
                                handler: APPLY_STEP.into(),
                                error: e.to_string(),
                                attempts: 1,
                            }],
                        )
                        .await?;
                        return Ok(CommandStatus::Failed);
                    }
                }
            }
            Ok(status)
        }
        .instrument(span.clone())
        .await;
        record_outcome(&span, outcome.as_ref().map(|status| status.as_str()));
        outcome
    }

    /// Finishes `version`, found applied: runs its handlers again when they
    /// never completed (its row says `applied`: a crash, or a lost answer,
    /// between the apply and the handlers); else its status stands.
    async fn finish_applied(&self, key: &EntityKey, version: u64) -> Result<CommandStatus> {
        let Some(command) = self.retry.run(|| self.storage.get_command(key, version)).await? else {
            // Its row expired (time to live of superseded rows) after it was
            // applied: nothing is left to do.
            tracing::debug!("applied command row gone; nothing to do");
            return Ok(CommandStatus::Applied);
        };
        match command.status {
            CommandStatus::Applied => Ok(status_of(&self.rerun(&command, HandlerRun::ALL).await?)),
            done => Ok(done),
        }
    }

    async fn command(&self, key: &EntityKey, version: u64) -> Result<CommandRecord> {
        self.retry
            .run(|| self.storage.get_command(key, version))
            .await?
            .ok_or_else(|| Error::NotFound {
                key: format!("{}@{version}", key.id()),
            })
    }

    /// Applies a stored (published) command over `previous`.
    async fn apply_published(
        &self,
        command: &CommandRecord,
        previous: Option<&DataItem>,
    ) -> Result<DataItem> {
        let new = data_item(command, previous);
        let write = ApplyWrite {
            command: CommandWrite::MarkApplied,
            indexes: self.index_entries(&new)?,
            data: new.clone(),
            expected_data_version: previous.map_or(0, |p| p.version),
            history: previous.cloned(),
            idempotency: None,
        };
        self.retry
            .run(|| self.storage.apply(std::slice::from_ref(&write)))
            .await?;
        tracing::debug!("applied");
        Ok(new)
    }

    /// The names of the handlers interested in `command`.
    pub(crate) fn handlers_for(&self, command: &CommandRecord) -> Vec<&str> {
        self.handlers
            .iter()
            .filter(|h| h.interest().matches(command))
            .map(|h| h.name())
            .collect()
    }

    /// Whether a handler is interested in `command`.
    pub(crate) fn has_handlers_for(&self, command: &CommandRecord) -> bool {
        self.handlers.iter().any(|h| h.interest().matches(command))
    }

    /// Runs the handlers of one applied command and records the outcome:
    /// a failure always; a success as `run.on_success` says. `context` is
    /// only called (and the event only built) when a handler matches.
    pub(crate) async fn run_handlers(
        &self,
        command: &CommandRecord,
        old: Option<&DataItem>,
        new: &DataItem,
        context: impl FnOnce() -> InvocationContext,
        run: HandlerRun<'_>,
    ) -> Result<Handled> {
        let matching: Vec<_> = self
            .handlers
            .iter()
            .filter(|h| h.interest().matches(command))
            .filter(|h| run.only.is_none_or(|names| names.iter().any(|n| n == h.name())))
            .collect();
        if matching.is_empty() {
            return Ok(Handled::NoHandlers);
        }
        let event = DataSyncEvent {
            command: command.clone(),
            old: old.cloned(),
            new: new.clone(),
            context: context(),
            attempt: 1,
        };
        let outcomes = join_all(matching.iter().map(|h| self.run_handler(h.as_ref(), &event))).await;
        let mut failures = Vec::new();
        for outcome in outcomes {
            match outcome {
                HandlerOutcome::Succeeded => {}
                HandlerOutcome::Failed(failure) => failures.push(failure),
                HandlerOutcome::Transient(failure) => {
                    // Recording it as failed would need a manual reprocess
                    // once storage is back; leave it to be processed again.
                    return Err(Error::backend(
                        format!(
                            "handler '{}' could not reach storage: {}",
                            failure.handler, failure.error
                        ),
                        true,
                    ));
                }
            }
        }
        if !failures.is_empty() {
            self.record_failure(command, failures.clone()).await?;
            return Ok(Handled::Failed(failures));
        }
        let key = command.key();
        match run.on_success {
            OnSuccess::MarkFinished => {}
            OnSuccess::MarkFinishedAndClearFailure => {
                self.retry
                    .run(|| self.storage.delete_failure(&key, command.version))
                    .await?
            }
        }
        self.retry
            .run(|| {
                self.storage
                    .set_command_status(&key, command.version, CommandStatus::Finished)
            })
            .await?;
        Ok(Handled::Finished)
    }

    /// Runs one handler with retries, each run bounded by the handler timeout.
    async fn run_handler(&self, handler: &dyn DataSyncHandler, event: &DataSyncEvent) -> HandlerOutcome {
        let max = self.retry.max_attempts.max(1);
        let mut event = event.clone();
        let mut attempt = 1;
        loop {
            event.attempt = attempt;
            crate::meters::handler_run(handler.name());
            let span = tracing::info_span!(
                "handler",
                name = handler.name(),
                attempt,
                outcome = tracing::field::Empty
            );
            // A panicking handler is a failing handler, not a dead processor;
            // a hung one is cut off at the timeout (its future is dropped).
            let run = AssertUnwindSafe(handler.handle(&event).instrument(span.clone())).catch_unwind();
            let outcome = match tokio::time::timeout(self.handler_timeout, run).await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(panic)) => Err(panic_message(panic.as_ref()).into()),
                Err(_) => Err(format!("timed out after {:?}", self.handler_timeout).into()),
            };
            record_outcome(&span, outcome.as_ref().map(|()| "ok"));
            let error = match outcome {
                Ok(()) => return HandlerOutcome::Succeeded,
                Err(error) => error,
            };
            if attempt < max {
                crate::meters::handler_retry(handler.name());
                tracing::warn!(handler = handler.name(), %error, attempt, "handler failed; retrying");
                tokio::time::sleep(self.retry.backoff(attempt)).await;
                attempt += 1;
                continue;
            }
            let failure = HandlerFailure {
                handler: handler.name().to_owned(),
                error: error.to_string(),
                attempts: max,
            };
            let transient = is_transient(error.as_ref());
            crate::meters::handler_failure(handler.name(), transient);
            return if transient {
                tracing::warn!(handler = handler.name(), %error, attempts = max, "handler could not reach storage; the command will be processed again");
                HandlerOutcome::Transient(failure)
            } else {
                tracing::error!(handler = handler.name(), %error, attempts = max, "handler failed; command marked failed");
                HandlerOutcome::Failed(failure)
            };
        }
    }

    async fn record_failure(&self, command: &CommandRecord, failures: Vec<HandlerFailure>) -> Result<()> {
        let key = command.key();
        let failed = FailedCommand {
            pk: command.pk.to_string(),
            sk: command.sk.to_string(),
            version: command.version,
            tenant_code: command.tenant_code().to_owned(),
            failures,
            failed_at: crate::clock::now(),
        };
        self.retry.run(|| self.storage.put_failure(&failed)).await?;
        self.retry
            .run(|| {
                self.storage
                    .set_command_status(&key, command.version, CommandStatus::Failed)
            })
            .await
    }

    /// Runs the handlers of an applied version again, with its old and new
    /// images rebuilt from the data and history rows.
    pub(crate) async fn rerun(&self, command: &CommandRecord, run: HandlerRun<'_>) -> Result<Handled> {
        let key = command.key();
        let version = command.version;
        let data = self.storage.get_data(&key).await?;
        let new = match data {
            Some(d) if d.version == version => d,
            _ => self
                .storage
                .get_history(&key, version)
                .await?
                .ok_or_else(|| Error::NotFound {
                    key: format!("{}@{version} (history)", key.id()),
                })?,
        };
        let old = match version {
            1 => None,
            v => self.storage.get_history(&key, v - 1).await?,
        };
        self.run_handlers(command, old.as_ref(), &new, || context_of(command), run)
            .await
    }

    /// A reprocess: applies the version if needed, else reruns the handlers
    /// that failed for it (every matching one when none is recorded).
    pub(crate) async fn reprocess(&self, key: &EntityKey, version: u64) -> Result<CommandStatus> {
        let command = self.command(key, version).await?;
        let applied = self.storage.get_data(key).await?.map_or(0, |d| d.version);
        if applied < version {
            return self.process(key, version).await;
        }
        let failure = self.storage.get_failure(key, version).await?;
        let only = failed_handlers(failure.as_ref());
        let run = HandlerRun {
            only: only.as_deref(),
            on_success: OnSuccess::MarkFinishedAndClearFailure,
        };
        Ok(status_of(&self.rerun(&command, run).await?))
    }
}

/// The span of one run of the pipeline for `version` of `key`; its
/// `outcome` is recorded when it ends.
fn process_span(key: &EntityKey, version: u64) -> tracing::Span {
    tracing::info_span!(
        "process",
        tenant = tenant_of_pk(&key.pk).unwrap_or_default(),
        pk = %key.pk,
        sk = %key.sk,
        version,
        outcome = tracing::field::Empty
    )
}

/// Records how the work of `span` ended: what it gives, or `error`.
fn record_outcome<E>(span: &tracing::Span, outcome: std::result::Result<&str, E>) {
    span.record("outcome", outcome.unwrap_or("error"));
}

/// The handlers a reprocess runs again: those that failed, `None` (every
/// matching one) when no failure record names a handler.
pub(crate) fn failed_handlers(failure: Option<&FailedCommand>) -> Option<Vec<String>> {
    failure
        .map(|f| {
            f.failures
                .iter()
                .map(|h| h.handler.clone())
                .filter(|h| h != APPLY_STEP)
                .collect()
        })
        .filter(|names: &Vec<String>| !names.is_empty())
}

/// The status a command is left in by a handler run that ended as `handled`.
fn status_of(handled: &Handled) -> CommandStatus {
    match handled {
        Handled::Finished => CommandStatus::Finished,
        Handled::Failed(_) => CommandStatus::Failed,
        _ => CommandStatus::Applied,
    }
}

/// Whether a handler's error comes from storage being unavailable: a
/// retryable [`Error`], or the [`TransientCause`] it keeps (found even
/// behind a `#[error(transparent)]` wrapper), anywhere in its chain.
fn is_transient(error: &(dyn std::error::Error + 'static)) -> bool {
    TransientCause::in_chain(error)
}

/// The message of a caught panic.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned());
    format!("panicked: {text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let policy = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
        };
        let waits: Vec<_> = (1..=5).map(|a| policy.backoff(a).as_millis()).collect();
        assert_eq!(waits, [10, 20, 40, 50, 50]);
    }

    #[tokio::test]
    async fn run_retries_only_retryable_errors() {
        let policy = RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::ZERO,
            max_backoff: Duration::ZERO,
        };
        let mut calls = 0;
        let r: Result<()> = policy
            .run(|| {
                calls += 1;
                async { Err(Error::backend("throttled", true)) }
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls, 3);
        let mut calls = 0;
        let r: Result<()> = policy
            .run(|| {
                calls += 1;
                async { Err(Error::invalid("x", "y")) }
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls, 1);
    }
}
