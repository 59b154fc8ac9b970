//! The framework's metrics, recorded through the [`metrics`] facade.
//!
//! The engine, its pipeline and the projections record what they do; the
//! application decides where it goes by installing a recorder (an exporter)
//! of its choice: Prometheus (`metrics-exporter-prometheus`), StatsD,
//! OpenTelemetry... With no recorder installed every call below lands in
//! the facade's empty recorder: a publish builds its keys from literals
//! (nothing allocated); a handler run and a projected event build one label
//! from the handler's or projection's name (one small allocation, next to
//! the event they clone anyway).
//!
//! Labels never carry tenants, keys or attribute values (they would make
//! one series per entity, and may hold personal data): only the publish
//! mode, an outcome, and the names of handlers and projections, which the
//! application chose.
//!
//! | Metric | Type | Labels | Meaning | Moves when |
//! |---|---|---|---|---|
//! | [`PUBLISH_SECONDS`] `cqrs_publish_duration_seconds` | histogram | `mode`, `outcome` | How long a publish took, to its answer (a sync publish includes its handlers) | Every `publish_*` and `commit` call that passed its key and tenancy checks ends |
//! | [`PUBLISH_CONFLICTS`] `cqrs_publish_conflicts_total` | counter | `mode` | Version conflicts met by publishes | A publish at `Exactly(n)` finds the entity elsewhere, or a last-writer-wins publish loses a race (each retry counts) |
//! | [`STORAGE_RETRIES`] `cqrs_storage_retries_total` | counter | — | Storage calls of the pipeline tried again by the [`RetryPolicy`](crate::RetryPolicy) | A pipeline storage call fails with a retryable error and is retried |
//! | [`HANDLER_RUNS`] `cqrs_handler_runs_total` | counter | `handler` | Runs of a data-sync handler (every attempt) | A handler is called |
//! | [`HANDLER_RETRIES`] `cqrs_handler_retries_total` | counter | `handler` | Failed runs that are tried again | A run fails and attempts are left |
//! | [`HANDLER_FAILURES`] `cqrs_handler_failures_total` | counter | `handler`, `outcome` | Handlers that failed every attempt: `failed` (the command is marked failed, a reprocess is needed) or `transient` (storage was unavailable; the command is processed again later) | The last attempt fails |
//! | [`COMMANDS_PROCESSED`] `cqrs_commands_processed_total` | counter | `outcome` | Pipeline runs of stored commands ([`Engine::process`](crate::Engine::process), [`Engine::settle`](crate::Engine::settle), the in-process processor): `finished`, `applied` (no handler interested), `failed`, `error` (transient: called again later) | A pipeline run ends |
//! | [`ENGINE_IN_FLIGHT`] `cqrs_engine_in_flight` | gauge | — | Work in flight in this process's engines: async commands queued for the in-process processor, publishes still running ([`Engine::in_flight`](crate::Engine::in_flight)) | Work starts or ends |
//! | [`PROJECTION_APPLIED`] `cqrs_projection_applied_total` | counter | `projection` | Events that changed a read model | A [`Projector`](crate::projection::Projector) commits an event |
//! | [`PROJECTION_FAILURES`] `cqrs_projection_failures_total` | counter | `projection` | Events whose projection failed (nothing written) | The projection's `apply` or `create` returns an error |
//! | [`PROJECTION_LAG_EVENTS`] `cqrs_projection_lag_events` | gauge | `projection` | Versions written to the data table and not applied yet | [`projection_lag`] is called (with a [`Lag`](crate::projection::Lag)) |
//! | [`PROJECTION_LAG_SECONDS`] `cqrs_projection_lag_seconds` | gauge | `projection` | Age of the oldest version not applied yet (0 when none is) | [`projection_lag`] is called |
//!
//! `mode` is `sync`, `async` or `commit` (partial updates count as the mode
//! they publish in); a publish's `outcome` is `ok` (written, or unchanged),
//! `conflict`, `rejected` (refused for its input: not found, too large,
//! invalid, an idempotency key reused) or `error` (anything else: storage
//! unavailable, a handler that could not reach it).
//!
//! Histograms are in seconds. A Prometheus exporter renders them as
//! summaries unless given buckets; see the operations guide for the buckets
//! the example uses.

use metrics::{counter, gauge, histogram};

use crate::error::{Error, Result};
use crate::model::CommandStatus;

/// Histogram of publish durations in seconds; labels `mode`, `outcome`.
pub const PUBLISH_SECONDS: &str = "cqrs_publish_duration_seconds";
/// Counter of version conflicts met by publishes; label `mode`.
pub const PUBLISH_CONFLICTS: &str = "cqrs_publish_conflicts_total";
/// Counter of pipeline storage calls retried by the [`RetryPolicy`](crate::RetryPolicy).
pub const STORAGE_RETRIES: &str = "cqrs_storage_retries_total";
/// Counter of handler runs (every attempt); label `handler`.
pub const HANDLER_RUNS: &str = "cqrs_handler_runs_total";
/// Counter of failed handler runs tried again; label `handler`.
pub const HANDLER_RETRIES: &str = "cqrs_handler_retries_total";
/// Counter of handlers that failed every attempt; labels `handler`, `outcome` (`failed`, `transient`).
pub const HANDLER_FAILURES: &str = "cqrs_handler_failures_total";
/// Counter of pipeline runs of stored commands; label `outcome`.
pub const COMMANDS_PROCESSED: &str = "cqrs_commands_processed_total";
/// Gauge of work in flight in the engine.
pub const ENGINE_IN_FLIGHT: &str = "cqrs_engine_in_flight";
/// Counter of events that changed a read model; label `projection`.
pub const PROJECTION_APPLIED: &str = "cqrs_projection_applied_total";
/// Counter of events whose projection failed; label `projection`.
pub const PROJECTION_FAILURES: &str = "cqrs_projection_failures_total";
/// Gauge of versions not applied yet by a projection; label `projection`.
pub const PROJECTION_LAG_EVENTS: &str = "cqrs_projection_lag_events";
/// Gauge of the age in seconds of the oldest version a projection has not applied; label `projection`.
pub const PROJECTION_LAG_SECONDS: &str = "cqrs_projection_lag_seconds";

/// Registers the unit and a one-line description of every metric above
/// with the installed recorder (a Prometheus exporter renders them as
/// `# HELP`). Call it once, after installing the recorder; without it the
/// metrics are recorded all the same.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

    describe_histogram!(
        PUBLISH_SECONDS,
        Unit::Seconds,
        "How long a publish took to answer, by mode and outcome"
    );
    describe_counter!(
        PUBLISH_CONFLICTS,
        "Version conflicts met by publishes (each retry of a last-writer-wins publish)"
    );
    describe_counter!(
        STORAGE_RETRIES,
        "Pipeline storage calls retried by the retry policy"
    );
    describe_counter!(HANDLER_RUNS, "Runs of a data-sync handler, every attempt");
    describe_counter!(HANDLER_RETRIES, "Failed handler runs tried again");
    describe_counter!(
        HANDLER_FAILURES,
        "Handlers that failed every attempt: failed (reprocess) or transient (processed again later)"
    );
    describe_counter!(COMMANDS_PROCESSED, "Pipeline runs of stored commands, by outcome");
    describe_gauge!(
        ENGINE_IN_FLIGHT,
        "Work in flight in the engine: queued async commands, running publishes"
    );
    describe_counter!(PROJECTION_APPLIED, "Events that changed a read model");
    describe_counter!(
        PROJECTION_FAILURES,
        "Events whose projection failed (nothing written)"
    );
    describe_gauge!(
        PROJECTION_LAG_EVENTS,
        "Versions not applied yet by a read model, as last measured"
    );
    describe_gauge!(
        PROJECTION_LAG_SECONDS,
        Unit::Seconds,
        "Age of the oldest version a read model has not applied, as last measured"
    );
}

/// How a publish was made: the `mode` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Sync,
    Async,
    Commit,
}

/// How a publish ended: the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Conflict,
    Rejected,
    Error,
}

impl Outcome {
    fn of<T>(result: &Result<T>) -> Self {
        match result {
            Ok(_) => Outcome::Ok,
            Err(e) if e.is_conflict() => Outcome::Conflict,
            Err(
                Error::NotFound { .. }
                | Error::InvalidInput { .. }
                | Error::TenantViolation { .. }
                | Error::TooLarge { .. }
                | Error::IdempotencyKeyReused { .. },
            ) => Outcome::Rejected,
            Err(_) => Outcome::Error,
        }
    }
}

/// A publish being timed: [`Publish::start`] before, [`Publish::end`] with
/// its result.
#[must_use = "a publish is recorded by `end`"]
pub(crate) struct Publish {
    mode: Mode,
    /// Tokio's monotonic clock: the simulation's paused clock on its
    /// threads, else the system's (cheaper than the wall clock).
    started: tokio::time::Instant,
}

impl Publish {
    pub(crate) fn start(mode: Mode) -> Self {
        Publish {
            mode,
            started: tokio::time::Instant::now(),
        }
    }

    /// Records the publish's duration and outcome (and its conflict).
    /// Labels are literals, so that no key is built on the heap for the
    /// facade's empty recorder.
    pub(crate) fn end<T>(self, result: &Result<T>) {
        let seconds = self.started.elapsed().as_secs_f64();
        macro_rules! h {
            ($mode:literal, $outcome:literal) => {
                histogram!(PUBLISH_SECONDS, "mode" => $mode, "outcome" => $outcome)
            };
        }
        let outcome = Outcome::of(result);
        let histogram = match (self.mode, outcome) {
            (Mode::Sync, Outcome::Ok) => h!("sync", "ok"),
            (Mode::Sync, Outcome::Conflict) => h!("sync", "conflict"),
            (Mode::Sync, Outcome::Rejected) => h!("sync", "rejected"),
            (Mode::Sync, Outcome::Error) => h!("sync", "error"),
            (Mode::Async, Outcome::Ok) => h!("async", "ok"),
            (Mode::Async, Outcome::Conflict) => h!("async", "conflict"),
            (Mode::Async, Outcome::Rejected) => h!("async", "rejected"),
            (Mode::Async, Outcome::Error) => h!("async", "error"),
            (Mode::Commit, Outcome::Ok) => h!("commit", "ok"),
            (Mode::Commit, Outcome::Conflict) => h!("commit", "conflict"),
            (Mode::Commit, Outcome::Rejected) => h!("commit", "rejected"),
            (Mode::Commit, Outcome::Error) => h!("commit", "error"),
        };
        histogram.record(seconds);
        if outcome == Outcome::Conflict {
            conflict(self.mode);
        }
    }
}

/// Counts one version conflict of a publish in `mode`.
pub(crate) fn conflict(mode: Mode) {
    match mode {
        Mode::Sync => counter!(PUBLISH_CONFLICTS, "mode" => "sync").increment(1),
        Mode::Async => counter!(PUBLISH_CONFLICTS, "mode" => "async").increment(1),
        Mode::Commit => counter!(PUBLISH_CONFLICTS, "mode" => "commit").increment(1),
    }
}

/// Counts one retried storage call of the pipeline.
pub(crate) fn storage_retry() {
    counter!(STORAGE_RETRIES).increment(1);
}

/// Counts one run of `handler`.
pub(crate) fn handler_run(handler: &str) {
    counter!(HANDLER_RUNS, "handler" => handler.to_owned()).increment(1);
}

/// Counts one failed run of `handler` that is tried again.
pub(crate) fn handler_retry(handler: &str) {
    counter!(HANDLER_RETRIES, "handler" => handler.to_owned()).increment(1);
}

/// Counts `handler` failing every attempt; `transient` when storage was
/// unavailable (the command is processed again later).
pub(crate) fn handler_failure(handler: &str, transient: bool) {
    let outcome = if transient { "transient" } else { "failed" };
    counter!(HANDLER_FAILURES, "handler" => handler.to_owned(), "outcome" => outcome).increment(1);
}

/// Counts one pipeline run of a stored command, by how it ended.
pub(crate) fn processed(result: &Result<CommandStatus>) {
    match result {
        Ok(CommandStatus::Finished) => counter!(COMMANDS_PROCESSED, "outcome" => "finished").increment(1),
        Ok(CommandStatus::Failed) => counter!(COMMANDS_PROCESSED, "outcome" => "failed").increment(1),
        Ok(_) => counter!(COMMANDS_PROCESSED, "outcome" => "applied").increment(1),
        Err(_) => counter!(COMMANDS_PROCESSED, "outcome" => "error").increment(1),
    }
}

/// Moves the engine's in-flight gauge by `delta` (1 or -1).
pub(crate) fn in_flight(delta: f64) {
    gauge!(ENGINE_IN_FLIGHT).increment(delta);
}

/// Counts one event that changed the read model of `projection`.
pub(crate) fn projection_applied(projection: &str) {
    counter!(PROJECTION_APPLIED, "projection" => projection.to_owned()).increment(1);
}

/// Counts one event whose projection failed.
pub(crate) fn projection_failed(projection: &str) {
    counter!(PROJECTION_FAILURES, "projection" => projection.to_owned()).increment(1);
}

/// Sets the lag gauges of `projection` from a [`Lag`](crate::projection::Lag)
/// (what [`Projector::lag`](crate::projection::Projector::lag) returned).
/// `lag` reads every row in scope: call it from a periodic task, not per
/// request, and set the gauges from its result here.
pub fn projection_lag(projection: &str, lag: &crate::projection::Lag) {
    gauge!(PROJECTION_LAG_EVENTS, "projection" => projection.to_owned()).set(lag.events_behind as f64);
    gauge!(PROJECTION_LAG_SECONDS, "projection" => projection.to_owned()).set(lag.oldest_age().as_secs_f64());
}

#[cfg(test)]
mod tests {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    use super::*;
    use crate::model::ExpectedVersion;

    /// What the recorder holds: (name, labels, value) — a histogram as its count.
    fn recorded(recorder: &DebuggingRecorder) -> Vec<(String, Vec<String>, u64)> {
        let mut all: Vec<_> = recorder
            .snapshotter()
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value)| {
                let key = key.key();
                let labels = key
                    .labels()
                    .map(|l| format!("{}={}", l.key(), l.value()))
                    .collect();
                let value = match value {
                    DebugValue::Counter(n) => n,
                    DebugValue::Histogram(values) => values.len() as u64,
                    DebugValue::Gauge(g) => g.into_inner() as u64,
                };
                (key.name().to_owned(), labels, value)
            })
            .collect();
        all.sort();
        all
    }

    #[test]
    fn a_publish_is_timed_once_and_its_conflict_counted_once() {
        let recorder = DebuggingRecorder::new();
        metrics::with_local_recorder(&recorder, || {
            Publish::start(Mode::Sync).end(&Ok::<(), Error>(()));
            let conflict: Result<()> = Err(Error::Conflict {
                key: "k".into(),
                expected: ExpectedVersion::Exactly(1),
                actual: Some(2),
            });
            Publish::start(Mode::Async).end(&conflict);
            let missing: Result<()> = Err(Error::NotFound { key: "k".into() });
            Publish::start(Mode::Commit).end(&missing);
            let down: Result<()> = Err(Error::backend("throttled", true));
            Publish::start(Mode::Sync).end(&down);
        });
        let labels = |pairs: &[&str]| pairs.iter().map(|p| (*p).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            recorded(&recorder),
            vec![
                (PUBLISH_CONFLICTS.to_owned(), labels(&["mode=async"]), 1),
                (
                    PUBLISH_SECONDS.to_owned(),
                    labels(&["mode=async", "outcome=conflict"]),
                    1
                ),
                (
                    PUBLISH_SECONDS.to_owned(),
                    labels(&["mode=commit", "outcome=rejected"]),
                    1
                ),
                (
                    PUBLISH_SECONDS.to_owned(),
                    labels(&["mode=sync", "outcome=error"]),
                    1
                ),
                (
                    PUBLISH_SECONDS.to_owned(),
                    labels(&["mode=sync", "outcome=ok"]),
                    1
                ),
            ]
        );
    }

    #[test]
    fn handler_failures_are_told_apart_by_outcome() {
        let recorder = DebuggingRecorder::new();
        metrics::with_local_recorder(&recorder, || {
            handler_failure("mailer", false);
            handler_failure("mailer", true);
            handler_failure("mailer", true);
        });
        let failures: Vec<_> = recorded(&recorder)
            .into_iter()
            .map(|(_, labels, n)| (labels.join(","), n))
            .collect();
        assert_eq!(
            failures,
            [
                ("handler=mailer,outcome=failed".to_owned(), 1),
                ("handler=mailer,outcome=transient".to_owned(), 2),
            ]
        );
    }
}
