//! Reprocessing failed commands, one or all, with a dry run.

use serde::Serialize;

use super::failures::{list_failures, FailureFilter};
use crate::engine::Engine;
use crate::error::Result;
use crate::keys::EntityKey;
use crate::model::{CommandStatus, HandlerFailure};

/// Whether a reprocess writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Reprocess.
    Run,
    /// Report what a reprocess would do, and write nothing.
    DryRun,
}

/// What a reprocess of a failed command does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "camelCase")]
#[non_exhaustive]
pub enum Plan {
    /// The command was never applied: apply the entity's versions `from`
    /// to `to` (each with its handlers), as the pipeline would have.
    Apply {
        /// The first version not applied.
        from: u64,
        /// The command's version.
        to: u64,
    },
    /// The command is applied: run these handlers again (those that failed;
    /// every interested one when its failure record names none). Handlers
    /// that succeeded are not run again.
    Rerun {
        /// Their names.
        handlers: Vec<String>,
    },
}

/// How a reprocess of one command ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "camelCase")]
#[non_exhaustive]
pub enum ReprocessOutcome {
    /// Reprocessed: its handlers succeeded (`finished`; `applied` when no
    /// handler is interested in it), and its failure record is gone.
    Finished {
        /// Its status now.
        status: CommandStatus,
    },
    /// Reprocessed, and a handler failed again (retried as the engine's
    /// [`RetryPolicy`](crate::RetryPolicy) says): still failed, with a new
    /// failure record.
    FailedAgain {
        /// The handlers that failed, with their errors.
        failures: Vec<HandlerFailure>,
    },
    /// Nothing to do: it is done (`finished`, or `applied` with no
    /// interested handler) and has no failure record. Nothing was run.
    AlreadyDone {
        /// Its status.
        status: CommandStatus,
    },
    /// Not failed: still in the pipeline's hands (`published`, or `applied`
    /// with its handlers not yet finished), which settles it. Nothing was run.
    NotFailed {
        /// Its status.
        status: CommandStatus,
    },
    /// A dry run: what a reprocess would do. Nothing was written.
    WouldReprocess {
        /// What it would do.
        plan: Plan,
    },
}

/// Reprocesses the failed command at `version` of `key`: applies it if it
/// never was, else runs again the handlers that failed for it. Idempotent:
/// a command that is done is reported [`ReprocessOutcome::AlreadyDone`] and
/// nothing runs. A reprocess of the same command through this engine that
/// is running waits for it first (see the [module](super) on two engines).
///
/// With [`Mode::DryRun`], reads only and reports the [`Plan`].
///
/// Errors: [`Error::NotFound`](crate::Error::NotFound) when there is no such
/// command; [`Error::InvalidInput`](crate::Error::InvalidInput) when a handler
/// that failed is not registered in `engine` (a process without the read
/// models, say: finishing the command without it would lose its work);
/// storage errors (nothing is marked done that is not: call again).
pub async fn reprocess(
    engine: &Engine,
    key: &EntityKey,
    version: u64,
    mode: Mode,
) -> Result<ReprocessOutcome> {
    engine.reprocess_failed(key, version, mode == Mode::DryRun).await
}

/// Where [`reprocess_all`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// Commands handled so far.
    pub done: u64,
    /// Commands matched.
    pub total: u64,
}

/// The outcome of one command in [`reprocess_all`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ReprocessResult {
    /// Partition key.
    pub pk: String,
    /// Sort key of the entity.
    pub sk: String,
    /// Version of the command.
    pub version: u64,
    /// Tenant of the entity.
    pub tenant_code: String,
    /// How it ended; `Err` with the error's message when the reprocess failed.
    #[serde(flatten, serialize_with = "outcome_or_error")]
    pub outcome: std::result::Result<ReprocessOutcome, String>,
}

fn outcome_or_error<S: serde::Serializer>(
    outcome: &std::result::Result<ReprocessOutcome, String>,
    serializer: S,
) -> std::result::Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    #[serde(tag = "outcome", rename_all = "camelCase")]
    enum Failed<'a> {
        Error { error: &'a str },
    }
    match outcome {
        Ok(outcome) => outcome.serialize(serializer),
        Err(error) => Failed::Error { error }.serialize(serializer),
    }
}

/// What [`reprocess_all`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ReprocessSummary {
    /// Whether it was a dry run (nothing written).
    pub dry_run: bool,
    /// Failed commands matching the filter.
    pub matched: u64,
    /// Reprocessed and finished.
    pub finished: u64,
    /// Reprocessed and failed again.
    pub failed_again: u64,
    /// Found done (or no longer failed) when their turn came: nothing run.
    pub already_done: u64,
    /// Dry run: would be reprocessed.
    pub would_reprocess: u64,
    /// Whose reprocess ended in an error (storage unavailable, say).
    pub errors: u64,
    /// Each command, in the order handled (oldest failure first).
    pub results: Vec<ReprocessResult>,
}

/// Reprocesses every failed command matching `filter`, oldest first, one
/// after the other, calling `progress` after each. An error on one command
/// is counted and the others go on; an error listing them is returned.
pub async fn reprocess_all(
    engine: &Engine,
    filter: &FailureFilter,
    mode: Mode,
    mut progress: impl FnMut(Progress),
) -> Result<ReprocessSummary> {
    let failed = list_failures(engine, filter).await?;
    let total = failed.len() as u64;
    let mut summary = ReprocessSummary {
        dry_run: mode == Mode::DryRun,
        matched: total,
        ..ReprocessSummary::default()
    };
    progress(Progress { done: 0, total });
    for (done, command) in (1..).zip(failed) {
        let outcome = reprocess(engine, &command.key(), command.version, mode).await;
        match &outcome {
            Ok(ReprocessOutcome::Finished { .. }) => summary.finished += 1,
            Ok(ReprocessOutcome::FailedAgain { .. }) => summary.failed_again += 1,
            Ok(ReprocessOutcome::AlreadyDone { .. } | ReprocessOutcome::NotFailed { .. }) => {
                summary.already_done += 1
            }
            Ok(ReprocessOutcome::WouldReprocess { .. }) => summary.would_reprocess += 1,
            Err(_) => summary.errors += 1,
        }
        summary.results.push(ReprocessResult {
            pk: command.pk,
            sk: command.sk,
            version: command.version,
            tenant_code: command.tenant_code,
            outcome: outcome.map_err(|e| e.to_string()),
        });
        progress(Progress { done, total });
    }
    Ok(summary)
}
