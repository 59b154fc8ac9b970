//! The operator's reprocess ([`crate::ops`]): a failed command is
//! reprocessed by one run at a time in an engine, and a command that is
//! already done is left alone (its handlers are not run again).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use super::pipeline::{failed_handlers, Pipeline};
use super::Engine;
use crate::error::{Error, Result};
use crate::keys::EntityKey;
use crate::model::{CommandRecord, CommandStatus, FailedCommand};
use crate::ops::{Plan, ReprocessOutcome};

/// A command: its entity and version.
type CommandId = (EntityKey, u64);

/// The lock of one command's reprocesses.
type CommandLock = tokio::sync::Mutex<()>;

/// One async lock per command being reprocessed, dropped with its last user.
#[derive(Debug, Default)]
pub(crate) struct ReprocessLocks {
    locks: Mutex<HashMap<CommandId, Weak<CommandLock>>>,
}

impl ReprocessLocks {
    /// The lock of `version` of `key`, shared with every run holding it now.
    fn of(&self, key: &EntityKey, version: u64) -> Arc<CommandLock> {
        let mut locks = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
        // Forget the locks nobody holds any more (operator tools reprocess
        // a handful of commands at once: a scan is cheap).
        locks.retain(|_, lock| lock.strong_count() > 0);
        if let Some(lock) = locks.get(&(key.clone(), version)).and_then(Weak::upgrade) {
            return lock;
        }
        let lock = Arc::new(CommandLock::new(()));
        locks.insert((key.clone(), version), Arc::downgrade(&lock));
        lock
    }
}

impl Engine {
    /// See [`crate::ops::reprocess`].
    pub(crate) async fn reprocess_failed(
        &self,
        key: &EntityKey,
        version: u64,
        dry_run: bool,
    ) -> Result<ReprocessOutcome> {
        let key = key.clone();
        self.detached(move |engine| async move {
            let lock = engine.inner.reprocessing.of(&key, version);
            // Two reprocesses of one command in this engine: the second
            // waits, then finds it done and runs nothing.
            let _held = lock.lock().await;
            let pipeline = &engine.inner.pipeline;
            let storage = pipeline.storage.as_ref();
            let command = storage
                .get_command(&key, version)
                .await?
                .ok_or_else(|| Error::NotFound {
                    key: format!("{}@{version}", key.id()),
                })?;
            let failure = storage.get_failure(&key, version).await?;
            if failure.is_none() {
                if let Some(outcome) = not_to_reprocess(pipeline, &command) {
                    return Ok(outcome);
                }
            }
            let applied = storage.get_data(&key).await?.map_or(0, |d| d.version);
            let plan = plan(pipeline, &command, failure.as_ref(), applied);
            if let Plan::Rerun { handlers } = &plan {
                let known = pipeline.handler_names();
                if let Some(unknown) = handlers.iter().find(|h| !known.contains(&h.as_str())) {
                    // Rerunning the others would mark the command finished
                    // without it: refused, nothing written.
                    return Err(Error::invalid(
                        "handler",
                        format!(
                            "handler '{unknown}' failed for {}@{version} but is not registered in this engine \
                             (registered: {}); reprocess it where it is",
                            key.id(),
                            known.join(", ")
                        ),
                    ));
                }
            }
            if dry_run {
                return Ok(ReprocessOutcome::WouldReprocess { plan });
            }
            match pipeline.reprocess(&key, version).await? {
                CommandStatus::Failed => Ok(ReprocessOutcome::FailedAgain {
                    failures: storage
                        .get_failure(&key, version)
                        .await?
                        .map(|f| f.failures)
                        .unwrap_or_default(),
                }),
                status => Ok(ReprocessOutcome::Finished { status }),
            }
        })
        .await
    }
}

/// What a command without a failure record is, when it is nothing to
/// reprocess: done (`finished`, or `applied` with no interested handler),
/// or still in the pipeline's hands (`published`, `applied`). `None` for a
/// `failed` row without its record: a reprocess that stopped between
/// clearing the record and marking the row `finished`, to be finished.
fn not_to_reprocess(pipeline: &Pipeline, command: &CommandRecord) -> Option<ReprocessOutcome> {
    match command.status {
        CommandStatus::Finished => Some(ReprocessOutcome::AlreadyDone {
            status: command.status,
        }),
        CommandStatus::Applied if !pipeline.has_handlers_for(command) => {
            Some(ReprocessOutcome::AlreadyDone {
                status: command.status,
            })
        }
        CommandStatus::Published | CommandStatus::Applied => Some(ReprocessOutcome::NotFailed {
            status: command.status,
        }),
        CommandStatus::Failed => None,
    }
}

/// What [`Pipeline::reprocess`] would do with `command`, the entity's data
/// row being at `applied`.
fn plan(pipeline: &Pipeline, command: &CommandRecord, failure: Option<&FailedCommand>, applied: u64) -> Plan {
    if applied < command.version {
        return Plan::Apply {
            from: applied + 1,
            to: command.version,
        };
    }
    let handlers = failed_handlers(failure).unwrap_or_else(|| {
        pipeline
            .handlers_for(command)
            .into_iter()
            .map(str::to_owned)
            .collect()
    });
    Plan::Rerun { handlers }
}
