//! The operator's toolbox of the binary: `failures list|show|reprocess`,
//! `leases`, and the pipeline half of `lag`, each with `--json` for
//! scripts (one JSON document on stdout) and aligned tables otherwise.
//!
//! The work is done by [`cqrs_core::ops`] and
//! [`cqrs_dynamodb::stream::inspect_stream`]; this module parses, prints and
//! draws progress.

mod args;
mod failures;
mod lag;
mod output;
mod stream;

pub use args::FailureArgs;
pub use failures::failures;
pub use lag::lag;
pub use output::print_json;
pub use stream::{leases, StreamParts, DEFAULT_LAG_BOUND};
