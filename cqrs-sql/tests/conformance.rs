//! The framework's target conformance suite on every database: SQLite (a
//! file, and in memory), `Any` over SQLite, and PostgreSQL (ignored without
//! a server, see `build.rs`; failing without one where it is required).

mod common;

use common::{Harness, Place};

mod sqlite_file {
    use super::*;
    cqrs_core::projection_target_tests!(Harness::<sqlx::Sqlite>::new(Place::SqliteFile));
}

mod sqlite_memory {
    use super::*;
    cqrs_core::projection_target_tests!(Harness::<sqlx::Sqlite>::new(Place::SqliteMemory));
}

#[cfg(feature = "any")]
mod any_sqlite {
    use super::*;
    cqrs_core::projection_target_tests!(Harness::<sqlx::Any>::new(Place::AnySqlite));
}

#[cfg(all(feature = "postgres", postgres_tests))]
mod postgres {
    use super::*;
    cqrs_core::projection_target_tests!(
        Harness::<sqlx::Postgres>::new(Place::Postgres),
        guard = common::postgres_available()
    );
}

#[cfg(all(feature = "postgres", not(postgres_tests)))]
mod postgres {
    use super::*;
    cqrs_core::projection_target_tests!(
        Harness::<sqlx::Postgres>::new(Place::Postgres),
        ignore = "needs PostgreSQL: run ./scripts/test"
    );
}
