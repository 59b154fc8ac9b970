//! Projections: read models built from the data-sync events exactly once in
//! effect, rebuildable while commands keep flowing.
//!
//! A data-sync handler is for side effects; a **projection** is a read
//! model (a report table, a search index, a dashboard) kept by a
//! [`Projector`]:
//!
//! - **Exactly once in effect.** The projection's writes and the entity's
//!   checkpoint (the last version applied) commit in one transaction of
//!   the target. Redelivered and older events are skipped and counted;
//!   versions that arrive early get the ones before them applied first,
//!   from the entity's history.
//! - **Targets**: SQL through sqlx (`cqrs-serverless-sql`: PostgreSQL,
//!   SQLite), DynamoDB (`cqrs-serverless-dynamodb`: one
//!   `TransactWriteItems`), and [`MemoryTarget`] for tests.
//! - **Generations and rebuilds** ([`Projector::rebuild`]): a new generation
//!   is filled from the data table while live events reach both; readers
//!   switch to it in one step.
//! - **Lag** ([`Projector::lag`]): versions written and not applied, and
//!   the age of the oldest.
//!
//! The guide: `docs/projections.md`.

mod change;
mod lag;
mod memory;
mod projector;
mod rebuild;
mod state;
mod target;

pub use change::{Change, ChangeSource, Projection};
pub use lag::Lag;
pub use memory::{MemoryTarget, MemoryTx};
pub use projector::{Applied, ProjectionFailed, ProjectionStats, Projector};
pub use rebuild::{Progress, Rebuild, Rebuilt, DEFAULT_REBUILD_BATCH};
pub use state::{Generations, RebuildProgress, Scope};
pub use target::{MetaDoc, ProjectionTarget, ProjectionTx, Revised};
