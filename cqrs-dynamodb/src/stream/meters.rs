//! The stream consumer's metrics, recorded through the [`metrics`] facade
//! (see [`cqrs_core::meters`] for the engine's, and how to install an
//! exporter). With no recorder installed they cost nothing.
//!
//! The counters move with the [`ConsumerStats`](super::ConsumerStats) of
//! the same name; the gauges add up over the consumers of the process. No
//! label: a process normally runs one consumer, and its id changes with
//! every start.
//!
//! | Metric | Type | Meaning | Moves when |
//! |---|---|---|---|
//! | [`RECORDS_READ`] `cqrs_stream_records_read_total` | counter | Stream records read (every kind, redeliveries included) | A page of records is read |
//! | [`FED`] `cqrs_stream_records_fed_total` | counter | Records handed to the engine to settle (inserts of command rows still `published` or `applied`) | Such a record is read |
//! | [`SETTLED`] `cqrs_stream_records_settled_total` | counter | Records whose command is final | A settle returns Ok, or the publisher finished it |
//! | [`RETRIES`] `cqrs_stream_settle_retries_total` | counter | Settle calls (and watches of a publisher) that failed and are tried again | A settle fails |
//! | [`SKIPPED`] `cqrs_stream_records_skipped_total` | counter | Records with nothing to settle (other rows, malformed records) | Such a record is read |
//! | [`CHECKPOINTS_SAVED`] `cqrs_stream_checkpoints_total` | counter | Checkpoints written | A shard's position is saved |
//! | [`LEASES_TAKEN`] `cqrs_stream_leases_taken_total` | counter | Shard leases taken (a shard started, or taken over) | A lease is acquired |
//! | [`LEASES_LOST`] `cqrs_stream_leases_lost_total` | counter | Leases lost: taken by another consumer, or not renewed in time | A worker stops on a lost lease |
//! | [`SHARDS_FINISHED`] `cqrs_stream_shards_finished_total` | counter | Closed shards read to their end and marked finished | A shard is finished |
//! | [`LEASES_HELD`] `cqrs_stream_leases_held` | gauge | Shards whose lease this process holds now | A lease is taken, lost or released |
//! | [`UNSETTLED`] `cqrs_stream_unsettled_records` | gauge | Records read and handed over, not settled yet: the pipeline's backlog in this process | A record is fed, settled, or abandoned with its shard |
//! | [`OLDEST_UNSETTLED_SECONDS`] `cqrs_stream_oldest_unsettled_seconds` | gauge | Age of the oldest of those records (from its stream record's creation time; 0 when none) | Every poll of the consumer |
//! | [`ITERATOR_AGE_SECONDS`] `cqrs_stream_iterator_age_seconds` | gauge | Age of the last record read, over the shards held (0 when a shard's last page was empty): how far reading is behind the writes | Every poll of the consumer |

/// Counter: stream records read.
pub const RECORDS_READ: &str = "cqrs_stream_records_read_total";
/// Counter: records handed to the engine to settle.
pub const FED: &str = "cqrs_stream_records_fed_total";
/// Counter: records whose command is final.
pub const SETTLED: &str = "cqrs_stream_records_settled_total";
/// Counter: settle calls that failed and are tried again.
pub const RETRIES: &str = "cqrs_stream_settle_retries_total";
/// Counter: records with nothing to settle.
pub const SKIPPED: &str = "cqrs_stream_records_skipped_total";
/// Counter: checkpoints written.
pub const CHECKPOINTS_SAVED: &str = "cqrs_stream_checkpoints_total";
/// Counter: shard leases taken.
pub const LEASES_TAKEN: &str = "cqrs_stream_leases_taken_total";
/// Counter: shard leases lost.
pub const LEASES_LOST: &str = "cqrs_stream_leases_lost_total";
/// Counter: shards finished.
pub const SHARDS_FINISHED: &str = "cqrs_stream_shards_finished_total";
/// Gauge: shard leases held.
pub const LEASES_HELD: &str = "cqrs_stream_leases_held";
/// Gauge: records read and not settled yet.
pub const UNSETTLED: &str = "cqrs_stream_unsettled_records";
/// Gauge: age in seconds of the oldest record read and not settled yet.
pub const OLDEST_UNSETTLED_SECONDS: &str = "cqrs_stream_oldest_unsettled_seconds";
/// Gauge: age in seconds of the last record read.
pub const ITERATOR_AGE_SECONDS: &str = "cqrs_stream_iterator_age_seconds";

/// Registers the unit and a one-line description of every metric above
/// with the installed recorder (a Prometheus exporter renders them as
/// `# HELP`); see [`cqrs_core::meters::describe`].
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, Unit};

    describe_counter!(RECORDS_READ, "Stream records read, redeliveries included");
    describe_counter!(FED, "Stream records handed to the engine to settle");
    describe_counter!(SETTLED, "Stream records whose command is final");
    describe_counter!(RETRIES, "Settles that failed and are tried again");
    describe_counter!(SKIPPED, "Stream records with nothing to settle");
    describe_counter!(CHECKPOINTS_SAVED, "Shard checkpoints written");
    describe_counter!(LEASES_TAKEN, "Shard leases taken");
    describe_counter!(LEASES_LOST, "Shard leases lost");
    describe_counter!(SHARDS_FINISHED, "Closed shards read to their end");
    describe_gauge!(LEASES_HELD, "Shard leases held by this process");
    describe_gauge!(UNSETTLED, "Stream records read and not settled yet");
    describe_gauge!(
        OLDEST_UNSETTLED_SECONDS,
        Unit::Seconds,
        "Age of the oldest stream record read and not settled yet"
    );
    describe_gauge!(
        ITERATOR_AGE_SECONDS,
        Unit::Seconds,
        "Age of the last stream record read"
    );
}
