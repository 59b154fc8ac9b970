//! The data-sync pipeline: apply a command to the data table (with history),
//! then run every matching handler with bounded retries.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use std::panic::AssertUnwindSafe;

use futures::future::join_all;
use futures::FutureExt as _;
use tracing::Instrument;

use super::records::{context_of, data_item};
use crate::context::InvocationContext;
use crate::error::{Error, Result};
use crate::handler::{DataSyncEvent, DataSyncHandler};
use crate::keys::EntityKey;
use crate::model::{CommandRecord, CommandStatus, DataItem, FailedCommand, HandlerFailure};
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
    /// Nothing: a sync publish, whose caller saw the handlers run. Saves a
    /// write per command; a failure is still recorded.
    KeepStatus,
    /// Status `finished`, so a redelivered async command is not handled twice.
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
    /// Every matching handler, as the background pipeline runs them.
    pub const ASYNC: HandlerRun<'static> = HandlerRun {
        only: None,
        on_success: OnSuccess::MarkFinished,
    };
    /// Every matching handler, inside a sync publish.
    pub const SYNC: HandlerRun<'static> = HandlerRun {
        only: None,
        on_success: OnSuccess::KeepStatus,
    };
}

pub(crate) struct Pipeline {
    pub(crate) storage: Arc<dyn Storage>,
    handlers: Vec<Arc<dyn DataSyncHandler>>,
    retry: RetryPolicy,
}

impl Pipeline {
    pub(crate) fn new(
        storage: Arc<dyn Storage>,
        handlers: Vec<Arc<dyn DataSyncHandler>>,
        retry: RetryPolicy,
    ) -> Self {
        Self {
            storage,
            handlers,
            retry,
        }
    }

    pub(crate) fn handler_names(&self) -> Vec<&str> {
        self.handlers.iter().map(|h| h.name()).collect()
    }

    /// Brings the entity up to `version`, applying each missing version in
    /// order and running its handlers. See [`Engine::process`](super::Engine::process).
    pub(crate) async fn process(&self, key: &EntityKey, version: u64) -> Result<CommandStatus> {
        let span = tracing::info_span!("process", pk = %key.pk, sk = %key.sk, version);
        async {
            let mut data = self.retry.run(|| self.storage.get_data(key)).await?;
            let mut status = CommandStatus::Applied;
            let current = data.as_ref().map_or(0, |d| d.version);
            if current >= version {
                // Already applied: a redelivery. Run the handlers again only
                // when they never completed (crash between apply and handlers).
                let Some(command) = self.retry.run(|| self.storage.get_command(key, version)).await? else {
                    // Its row expired (time to live of superseded rows) after
                    // it was applied: nothing is left to do.
                    tracing::debug!("applied command row gone; nothing to do");
                    return Ok(CommandStatus::Applied);
                };
                return match command.status {
                    CommandStatus::Applied => self.rerun(&command, HandlerRun::ASYNC).await,
                    done => Ok(done),
                };
            }
            for v in current + 1..=version {
                let command = self.command(key, v).await?;
                match self.apply_published(&command, data.as_ref()).await {
                    Ok(new) => {
                        status = self
                            .run_handlers(
                                &command,
                                data.as_ref(),
                                &new,
                                || context_of(&command),
                                HandlerRun::ASYNC,
                            )
                            .await?;
                        // An earlier delivery failed to apply it and recorded
                        // that (the row says `failed`); this one succeeded.
                        if command.status == CommandStatus::Failed && status != CommandStatus::Failed {
                            self.retry.run(|| self.storage.delete_failure(key, v)).await?;
                        }
                        data = Some(new);
                    }
                    // Someone else applied it meanwhile (another processor, a
                    // reprocess): their run owns the handlers.
                    Err(Error::Conflict {
                        actual: Some(actual), ..
                    }) if actual >= v => {
                        data = self.retry.run(|| self.storage.get_data(key)).await?;
                        status = CommandStatus::Applied;
                    }
                    Err(e) => {
                        self.record_failure(
                            &command,
                            vec![HandlerFailure {
                                handler: APPLY_STEP.into(),
                                error: e.to_string(),
                                attempts: if e.is_retryable() {
                                    self.retry.max_attempts
                                } else {
                                    1
                                },
                            }],
                        )
                        .await?;
                        return Err(e);
                    }
                }
            }
            Ok(status)
        }
        .instrument(span)
        .await
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
            data: new.clone(),
            expected_data_version: previous.map_or(0, |p| p.version),
            history: previous.cloned(),
        };
        self.retry
            .run(|| self.storage.apply(std::slice::from_ref(&write)))
            .await?;
        tracing::debug!("applied");
        Ok(new)
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
    ) -> Result<CommandStatus> {
        let matching: Vec<_> = self
            .handlers
            .iter()
            .filter(|h| h.interest().matches(command))
            .filter(|h| run.only.is_none_or(|names| names.iter().any(|n| n == h.name())))
            .collect();
        if matching.is_empty() {
            return Ok(CommandStatus::Applied);
        }
        let event = DataSyncEvent {
            command: command.clone(),
            old: old.cloned(),
            new: new.clone(),
            context: context(),
            attempt: 1,
        };
        let failures: Vec<HandlerFailure> =
            join_all(matching.iter().map(|h| self.run_handler(h.as_ref(), &event)))
                .await
                .into_iter()
                .flatten()
                .collect();
        if !failures.is_empty() {
            self.record_failure(command, failures).await?;
            return Ok(CommandStatus::Failed);
        }
        let key = command.key();
        match run.on_success {
            OnSuccess::KeepStatus => return Ok(command.status),
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
        Ok(CommandStatus::Finished)
    }

    /// Runs one handler with retries; the failure if every run failed.
    async fn run_handler(
        &self,
        handler: &dyn DataSyncHandler,
        event: &DataSyncEvent,
    ) -> Option<HandlerFailure> {
        let max = self.retry.max_attempts.max(1);
        let mut event = event.clone();
        for attempt in 1..=max {
            event.attempt = attempt;
            let span = tracing::info_span!("handler", name = handler.name(), attempt);
            // A panicking handler is a failing handler, not a dead processor.
            let outcome = AssertUnwindSafe(handler.handle(&event).instrument(span))
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| Err(panic_message(panic.as_ref()).into()));
            match outcome {
                Ok(()) => return None,
                Err(error) if attempt == max => {
                    tracing::error!(handler = handler.name(), %error, attempts = max, "handler failed; command marked failed");
                    return Some(HandlerFailure {
                        handler: handler.name().to_owned(),
                        error: error.to_string(),
                        attempts: max,
                    });
                }
                Err(error) => {
                    tracing::warn!(handler = handler.name(), %error, attempt, "handler failed; retrying");
                    tokio::time::sleep(self.retry.backoff(attempt)).await;
                }
            }
        }
        None
    }

    async fn record_failure(&self, command: &CommandRecord, failures: Vec<HandlerFailure>) -> Result<()> {
        let key = command.key();
        let failed = FailedCommand {
            pk: command.pk.clone(),
            sk: command.sk.clone(),
            version: command.version,
            tenant_code: command.tenant_code.clone(),
            failures,
            failed_at: Utc::now(),
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
    pub(crate) async fn rerun(&self, command: &CommandRecord, run: HandlerRun<'_>) -> Result<CommandStatus> {
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
        let only: Option<Vec<String>> = failure
            .map(|f| {
                f.failures
                    .into_iter()
                    .map(|h| h.handler)
                    .filter(|h| h != APPLY_STEP)
                    .collect()
            })
            .filter(|names: &Vec<String>| !names.is_empty());
        let run = HandlerRun {
            only: only.as_deref(),
            on_success: OnSuccess::MarkFinishedAndClearFailure,
        };
        self.rerun(&command, run).await
    }
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
