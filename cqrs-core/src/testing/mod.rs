//! The conformance suite: the whole contract of the framework, as public
//! async test functions that take a storage backend. Every backend runs it:
//!
//! ```ignore
//! // tests/conformance.rs of a backend crate (dev-dependencies: cqrs-core
//! // with feature "testing", tokio with "macros" and "rt-multi-thread")
//! cqrs_core::conformance_tests!(|| async {
//!     std::sync::Arc::new(my_backend::Store::new()) as std::sync::Arc<dyn cqrs_core::Storage>
//! });
//! ```
//!
//! The macro expands to one `#[tokio::test]` per check, so each passes or
//! fails on its own. Each check asks the factory for fresh, empty storage.

mod commits;
mod divergences;
mod faults;
mod faulty;
mod fixtures;
mod idempotency;
mod indexes;
mod interleaved;
mod keyed_commits;
mod keyed_races;
mod liveness;
mod ops;
mod outbox;
mod pipeline;
pub mod projections;
mod queries;
mod races;
mod retried_writes;
mod sequences;
mod services;
pub mod sim;
mod storage_primitives;
mod tenancy;
mod typed;
mod validation;
mod versioning;

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;

use crate::storage::Storage;

pub use commits::*;
pub use divergences::*;
pub use faults::*;
pub use faulty::{Fault, FaultyStorage, InjectedFault, Op, Rule, RuleId};
pub use fixtures::{ctx, RecordingHandler};
pub use idempotency::*;
pub use indexes::*;
pub use interleaved::Interleaved;
pub use keyed_commits::*;
pub use keyed_races::*;
pub use liveness::*;
pub use ops::*;
pub use outbox::*;
pub use pipeline::*;
pub use queries::*;
pub use races::*;
pub use retried_writes::*;
pub use sequences::*;
pub use services::*;
pub use storage_primitives::*;
pub use tenancy::*;
pub use typed::*;
pub use validation::*;
pub use versioning::*;

/// Gives each check fresh, empty storage.
#[async_trait]
pub trait StorageFactory: Send + Sync {
    /// New empty storage (for a shared server: a fresh table prefix).
    async fn storage(&self) -> Arc<dyn Storage>;
}

#[async_trait]
impl<F, Fut> StorageFactory for F
where
    F: Fn() -> Fut + Send + Sync,
    Fut: Future<Output = Arc<dyn Storage>> + Send,
{
    async fn storage(&self) -> Arc<dyn Storage> {
        self().await
    }
}

/// Expands to one `#[tokio::test]` per check of the conformance suite, each
/// calling the check with the given [`StorageFactory`] expression.
///
/// The calling crate needs `tokio` (features `macros`, `rt-multi-thread`)
/// among its dev-dependencies.
///
/// With `guard = expr`, each test first evaluates `expr` (a `bool`) and
/// returns at once when it is `false`: for a backend that needs a server
/// which may be absent. The guard decides whether that is a skip or a failure.
///
/// With `ignore = "reason"`, each test is marked `#[ignore = "reason"]`: for
/// a build where the server is known to be absent, so that the test
/// runner's summary counts the checks as ignored rather than as passed
/// (the DynamoDB backend's tests do this when no endpoint is configured).
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        $crate::conformance_tests!($factory, guard = true);
    };
    ($factory:expr, ignore = $reason:literal) => {
        $crate::conformance_tests!(@checks (ignore $reason) $factory; true);
    };
    ($factory:expr, guard = $guard:expr) => {
        $crate::conformance_tests!(@checks (run) $factory; $guard);
    };
    (@checks $mode:tt $factory:expr; $guard:expr) => {
        $crate::conformance_tests!(@each $mode $factory; $guard;
            create_and_read_back,
            create_twice_conflicts,
            update_at_current_version,
            stale_and_future_versions_conflict,
            latest_is_last_writer_wins,
            async_publish_follows_the_same_rules,
            async_publish_without_dirty_check,
            sync_publish_conflicts_with_pending_async_command,
            dirty_check_writes_nothing,
            partial_update_deep_merges,
            versions_and_history_are_complete,
            pagination_walks_every_item_once,
            sort_key_conditions,
            filters_on_nested_attributes,
            cursors_and_limits_are_validated,
            typed_reads,
            typed_entities_end_to_end,
            numbers_compare_by_value,
            sequences_count_from_one_per_key,
            sequences_rotate_by_period,
            sequences_format_numbers,
            sequences_are_gap_free_under_concurrency,
            handlers_receive_old_and_new_images,
            interest_selects_commands,
            async_pipeline_applies_each_entity_in_order,
            failing_handler_is_retried,
            failed_command_is_recorded_and_reprocessed,
            sync_publish_reports_how_handlers_ended,
            async_failures_do_not_stall_later_versions,
            redelivery_does_not_apply_twice,
            process_catches_up_missing_versions,
            writes_to_another_tenant_are_rejected,
            reads_of_another_tenant_are_rejected,
            common_tenant_and_cross_tenant_roles,
            failures_are_listed_per_tenant,
            commit_applies_every_command,
            commit_is_all_or_nothing,
            commit_limits,
            invalid_keys_are_rejected_before_writing,
            oversized_items_are_rejected,
            concurrent_increments_are_exact,
            concurrent_creates_have_one_winner,
            concurrent_async_publishes_keep_versions_contiguous,
            concurrent_commits_stay_consistent,
            concurrent_partial_updates_lose_nothing,
            storage_put_command_conditions,
            storage_keeps_the_trace_context,
            storage_apply_is_conditional_and_atomic,
            storage_apply_one_matches_apply,
            storage_query_ranges,
            storage_counters,
            storage_failed_never_replaces_finished,
            dropped_sync_publish_still_runs_its_handlers,
            dropped_async_publish_is_processed_or_never_stored,
            lost_responses_strand_nothing,
            a_lost_answer_to_the_pipelines_apply_strands_nothing,
            hung_handler_times_out_and_others_go_on,
            storage_outage_completes_every_accepted_command,
            failure_records_are_written_once_storage_is_back,
            transient_handler_errors_are_retried_until_they_pass,
            transient_errors_are_found_through_transparent_wrappers,
            settle_finishes_what_a_dead_publisher_left,
            storage_heartbeats,
            live_publisher_is_never_taken_over,
            gone_publisher_is_recovered_within_its_lease,
            numbers_read_back_as_written,
            numbers_outside_the_range_are_rejected,
            numbers_at_the_edges_of_the_range,
            commits_over_the_transaction_size_are_rejected,
            async_commands_accepted_can_be_applied,
            cursors_outside_their_query_are_rejected,
            versions_never_overflow,
            keyed_publishes_write_once,
            reused_idempotency_keys_are_refused,
            idempotency_keys_are_validated,
            idempotency_keys_are_per_tenant,
            concurrent_keyed_retries_write_once,
            lost_response_is_answered_by_the_keyed_retry,
            idempotency_keys_expire,
            keyed_updates_replay_without_deciding_again,
            racing_keyed_publishes_answer_the_first_result,
            racing_keyed_updates_answer_the_first_result,
            writes_retried_after_landing_are_answered_as_written,
            racing_keyed_commits_answer_the_first_result,
            keyed_commits_write_once,
            keyed_commits_count_their_key_row,
            read_your_writes_sees_pending_commands,
            updates_see_pending_commands,
            concurrent_updates_lose_nothing,
            concurrent_commit_with_keeps_totals,
            updates_skip_and_refuse,
            handlers_reach_their_engine_without_keeping_it_alive,
            indexes_find_items_by_value,
            indexes_follow_every_write_path,
            indexes_keep_tenants_apart,
            index_lookups_are_validated,
            index_entries_of_other_writers_are_checked_and_repaired,
            foreign_commands_are_kept_and_applied_only_by_the_owner,
            outbox_relay_sends_every_claim_through_faults,
            outbox_claims_left_by_a_dead_process_are_sent,
            ops_list_filters_failures,
            ops_show_leaves_attribute_values_out,
            ops_reprocess_is_idempotent_with_a_dry_run,
            ops_concurrent_reprocesses_run_handlers_once,
            ops_reprocesses_from_two_engines_end_finished,
            ops_reprocess_all_summarizes,
        );
    };
    (@each (ignore $reason:literal) $factory:expr; $guard:expr; $($check:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            #[ignore = $reason]
            async fn $check() {
                let factory = $factory;
                $crate::testing::$check(&factory).await;
            }
        )*
    };
    (@each (run) $factory:expr; $guard:expr; $($check:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                if !$guard {
                    return;
                }
                let factory = $factory;
                $crate::testing::$check(&factory).await;
            }
        )*
    };
}
