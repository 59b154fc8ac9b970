//! The target conformance suite: every projection target runs it, like the
//! storage suite, through a [`TargetHarness`] that gives fresh targets and
//! the few writes the suite's projection ([`Tally`]) needs.
//!
//! ```ignore
//! // tests/projections.rs of a target crate
//! cqrs_core::projection_target_tests!(MyHarness::new());
//! ```
//!
//! The checks publish through an engine over the storage the harness gives
//! ([`TargetHarness::storage`]), deliver the events themselves (twice, out
//! of order, from two consumers, racing a rebuild) and compare what readers
//! see with the totals recomputed from the data table, row for row.

mod checks;
mod tally;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

pub use checks::*;
pub use tally::{Tally, TallyState};

use crate::error::BoxError;
use crate::projection::ProjectionTarget;
use crate::storage::Storage;

/// The transaction type of a harness's target.
pub type HarnessTx<H> = <<H as TargetHarness>::Target as ProjectionTarget>::Tx;

/// What the target conformance suite needs of a target.
///
/// The suite's tables hold integers by text key; the harness creates them,
/// adds to their rows and reads them, in the target's own way (SQL, items,
/// JSON rows).
#[async_trait]
pub trait TargetHarness: Send + Sync + 'static {
    /// The target under test.
    type Target: ProjectionTarget + Clone;

    /// A fresh, empty target (its own database, schema or table prefix).
    async fn target(&self) -> Self::Target;

    /// Fresh, empty storage for the engine the checks publish through
    /// (any backend: the target is what is under test).
    async fn storage(&self) -> Arc<dyn Storage>;

    /// Creates `table` (text key, integer value) in the transaction's
    /// generation.
    async fn create_table(&self, tx: &mut HarnessTx<Self>, table: &str) -> Result<(), BoxError>;

    /// The row `key` of `table` in the transaction's generation.
    async fn get(&self, tx: &mut HarnessTx<Self>, table: &str, key: &str) -> Result<Option<i64>, BoxError>;

    /// Adds `delta` to the row `key` of `table` in the transaction's
    /// generation (a missing row counts as 0).
    async fn add(&self, tx: &mut HarnessTx<Self>, table: &str, key: &str, delta: i64)
        -> Result<(), BoxError>;

    /// Every row of `table` in the generation readers see, with its value.
    async fn read(&self, target: &Self::Target, projection: &str, table: &str) -> BTreeMap<String, i64>;
}

/// Expands to one `#[tokio::test]` per check of the target conformance
/// suite, each calling the check with the given [`TargetHarness`]
/// expression. Arguments as for [`conformance_tests!`](crate::conformance_tests).
#[macro_export]
macro_rules! projection_target_tests {
    ($harness:expr) => {
        $crate::projection_target_tests!($harness, guard = true);
    };
    ($harness:expr, ignore = $reason:literal) => {
        $crate::projection_target_tests!(@checks (ignore $reason) $harness; true);
    };
    ($harness:expr, guard = $guard:expr) => {
        $crate::projection_target_tests!(@checks (run) $harness; $guard);
    };
    (@checks $mode:tt $harness:expr; $guard:expr) => {
        $crate::projection_target_tests!(@each $mode $harness; $guard;
            projection_applies_each_version_once,
            projection_skips_duplicates,
            projection_fills_versions_out_of_order,
            projection_leaves_nothing_of_a_crash_before_commit,
            projection_survives_a_lost_acknowledgement,
            projection_with_two_consumers_applies_once,
            projection_keeps_tenants_apart,
            projection_failure_is_recorded_and_reprocessable,
            projection_rebuild_races_live_writes,
            projection_rebuild_resumes_after_a_crash,
            projection_lag_counts_what_is_not_applied,
        );
    };
    (@each (ignore $reason:literal) $harness:expr; $guard:expr; $($check:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            #[ignore = $reason]
            async fn $check() {
                $crate::testing::projections::$check(&$harness).await;
            }
        )*
    };
    (@each (run) $harness:expr; $guard:expr; $($check:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                if !$guard {
                    return;
                }
                $crate::testing::projections::$check(&$harness).await;
            }
        )*
    };
}
