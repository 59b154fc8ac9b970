//! The operator's toolbox: list the failed commands of an [`Engine`](crate::Engine), show
//! one, reprocess one or all of them (with a dry run).
//!
//! These calls are for operators and their tools (the example's
//! `ecommerce failures` subcommands), not for requests: they see every
//! tenant, and check no [`InvocationContext`](crate::InvocationContext).
//!
//! Reprocessing here is idempotent where
//! [`CommandService::reprocess`](crate::CommandService::reprocess) is not: a
//! command already done (status `finished` and no failure record) is
//! reported as [`ReprocessOutcome::AlreadyDone`] and its handlers are not
//! run again, and two reprocesses of one command through the same engine
//! run one after the other, the second finding the command done. Two
//! engines (two operators' processes) reprocessing one command at the same
//! moment may both run its failed handlers: handlers run at least once, as
//! everywhere in the pipeline, and must tolerate a second run.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use cqrs_core::ops::{self, FailureFilter, Mode};
//! use cqrs_core::Engine;
//!
//! # async fn run(engine: Engine) -> cqrs_core::Result<()> {
//! // Commands of shop-a that failed more than ten minutes ago, oldest first.
//! let filter = FailureFilter::default()
//!     .tenant("shop-a")
//!     .older_than(Duration::from_secs(600));
//! for failed in ops::list_failures(&engine, &filter).await? {
//!     println!("{}#{}@{} failed at {}", failed.pk, failed.sk, failed.version, failed.failed_at);
//! }
//! // What reprocessing them would do, then do it.
//! let planned = ops::reprocess_all(&engine, &filter, Mode::DryRun, |_| {}).await?;
//! println!("{} would be reprocessed", planned.matched);
//! let done = ops::reprocess_all(&engine, &filter, Mode::Run, |p| {
//!     eprintln!("{}/{}", p.done, p.total);
//! })
//! .await?;
//! println!("{} finished, {} failed again", done.finished, done.failed_again);
//! # Ok(())
//! # }
//! ```

mod failures;
mod reprocess;

pub use failures::{list_failures, show, CommandSummary, FailureDetail, FailureFilter, ShowOptions};
pub use reprocess::{
    reprocess, reprocess_all, Mode, Plan, Progress, ReprocessOutcome, ReprocessResult, ReprocessSummary,
};
