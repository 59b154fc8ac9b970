//! sqlx errors as the framework's: lost races as conflicts (the projector
//! retries them), an unreachable database as retryable (the pipeline
//! retries it), everything else as it is.

use cqrs_core::{Error, ExpectedVersion};

use crate::database::Flavor;

/// What a database error means to the projector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Another transaction won a race: serialization failure, deadlock, a
    /// busy or locked SQLite database.
    LostRace,
    /// The database is unreachable or overloaded for now.
    Transient,
    /// Anything else: retrying the same statement fails the same way.
    Permanent,
}

fn kind(error: &sqlx::Error, flavor: Flavor) -> Kind {
    match error {
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            match flavor {
                Flavor::Postgres => postgres_kind(&code),
                Flavor::Sqlite => sqlite_kind(&code),
            }
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::WorkerCrashed
        // A connection cut mid-message.
        | sqlx::Error::Protocol(_) => Kind::Transient,
        _ => Kind::Permanent,
    }
}

/// By SQLSTATE (<https://www.postgresql.org/docs/current/errcodes-appendix.html>).
fn postgres_kind(code: &str) -> Kind {
    match code {
        // serialization_failure, deadlock_detected, lock_not_available
        "40001" | "40P01" | "55P03" => Kind::LostRace,
        // too_many_connections, admin/crash shutdown, cannot_connect_now,
        // query_canceled (statement timeout)
        "53300" | "57P01" | "57P02" | "57P03" | "57014" => Kind::Transient,
        // Class 08: connection exceptions; class 53: insufficient resources.
        _ if code.starts_with("08") || code.starts_with("53") => Kind::Transient,
        _ => Kind::Permanent,
    }
}

/// By (extended) result code: SQLITE_BUSY (5) and SQLITE_LOCKED (6) and
/// their extended codes (`code & 0xff`).
fn sqlite_kind(code: &str) -> Kind {
    match code.parse::<i32>().map(|code| code & 0xff) {
        Ok(5 | 6) => Kind::LostRace,
        _ => Kind::Permanent,
    }
}

/// A failed statement of a transaction (`what` names it in the error): a
/// lost race is an [`Error::Conflict`], so that the projector retries the
/// whole transaction.
pub(crate) fn in_transaction(error: sqlx::Error, flavor: Flavor, what: &str) -> Error {
    match kind(&error, flavor) {
        Kind::LostRace => Error::Conflict {
            key: what.to_owned(),
            expected: ExpectedVersion::Latest,
            actual: None,
        },
        Kind::Transient => Error::backend(error, true),
        Kind::Permanent => Error::backend(error, false),
    }
}

/// A failed statement outside a projection transaction (beginning one,
/// reads, the schema): a lost race there is a wait that timed out, worth
/// retrying as it is.
pub(crate) fn outside_transaction(error: sqlx::Error, flavor: Flavor) -> Error {
    let retryable = kind(&error, flavor) != Kind::Permanent;
    Error::backend(error, retryable)
}

/// Whether the same statement may succeed when its transaction is tried
/// again: the database was unreachable, or another transaction won a race.
pub(crate) fn is_worth_retrying(error: &sqlx::Error, flavor: Flavor) -> bool {
    kind(error, flavor) != Kind::Permanent
}

/// A conditional write that found another value than it was conditioned on.
pub(crate) fn conflict(key: String, expected: u64) -> Error {
    Error::Conflict {
        key,
        expected: ExpectedVersion::Exactly(expected),
        actual: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_codes() {
        assert_eq!(postgres_kind("40001"), Kind::LostRace);
        assert_eq!(postgres_kind("40P01"), Kind::LostRace);
        assert_eq!(postgres_kind("08006"), Kind::Transient);
        assert_eq!(postgres_kind("57P01"), Kind::Transient);
        assert_eq!(postgres_kind("42P01"), Kind::Permanent);
        assert_eq!(postgres_kind("23505"), Kind::Permanent);
    }

    #[test]
    fn sqlite_codes() {
        assert_eq!(sqlite_kind("5"), Kind::LostRace);
        assert_eq!(sqlite_kind("517"), Kind::LostRace); // SQLITE_BUSY_SNAPSHOT
        assert_eq!(sqlite_kind("6"), Kind::LostRace);
        assert_eq!(sqlite_kind("262"), Kind::LostRace); // SQLITE_LOCKED_SHAREDCACHE
        assert_eq!(sqlite_kind("1"), Kind::Permanent);
        assert_eq!(sqlite_kind("2067"), Kind::Permanent); // SQLITE_CONSTRAINT_UNIQUE
    }

    #[test]
    fn unreachable_databases_are_retryable() {
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(outside_transaction(io, Flavor::Postgres).is_retryable());
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(in_transaction(io, Flavor::Postgres, "commit").is_retryable());
        assert!(!outside_transaction(sqlx::Error::RowNotFound, Flavor::Sqlite).is_retryable());
        assert!(is_worth_retrying(&sqlx::Error::PoolTimedOut, Flavor::Postgres));
        assert!(!is_worth_retrying(&sqlx::Error::RowNotFound, Flavor::Postgres));
    }
}
