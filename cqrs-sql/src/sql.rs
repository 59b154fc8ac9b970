//! The target's own statements. Placeholders are `$n`, which PostgreSQL and
//! SQLite both read; row locks exist in PostgreSQL only (SQLite's
//! transactions hold the database's write lock from their start).

use crate::database::Flavor;

/// The framework's tables, created by `prepare()`.
pub(crate) const SCHEMA: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS cqrs_projection_checkpoints (
        projection TEXT NOT NULL,
        generation BIGINT NOT NULL,
        pk TEXT NOT NULL,
        sk TEXT NOT NULL,
        version BIGINT NOT NULL,
        PRIMARY KEY (projection, generation, pk, sk)
    )",
    "CREATE TABLE IF NOT EXISTS cqrs_projection_meta (
        projection TEXT NOT NULL,
        doc TEXT NOT NULL,
        body TEXT NOT NULL,
        revision BIGINT NOT NULL,
        PRIMARY KEY (projection, doc)
    )",
];

/// PostgreSQL: serializes `CREATE TABLE IF NOT EXISTS` (concurrent ones
/// can fail on the catalog's unique index) per key, until the commit.
pub(crate) const PG_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtext($1))";

/// Key of [`PG_LOCK`] for the framework's tables.
pub(crate) const SCHEMA_LOCK_KEY: &str = "cqrs_projection:schema";

/// `$1` projection, `$2` doc.
const READ_DOC: &str = "SELECT body, revision FROM cqrs_projection_meta WHERE projection = $1 AND doc = $2";

/// A bookkeeping document; `lock`: how (PostgreSQL) or whether not.
pub(crate) fn read_doc(flavor: Flavor, lock: RowLock) -> String {
    format!("{READ_DOC}{}", lock.suffix(flavor))
}

/// `$1` projection, `$2` doc, `$3` body: the first revision.
pub(crate) const INSERT_DOC: &str = "INSERT INTO cqrs_projection_meta (projection, doc, body, revision) \
     VALUES ($1, $2, $3, 1) ON CONFLICT (projection, doc) DO NOTHING";

/// `$1` projection, `$2` doc, `$3` body, `$4` the revision it replaces.
pub(crate) const UPDATE_DOC: &str = "UPDATE cqrs_projection_meta SET body = $3, revision = revision + 1 \
     WHERE projection = $1 AND doc = $2 AND revision = $4";

/// `$1` projection, `$2` generation, `$3` pk, `$4` sk.
const READ_CHECKPOINT: &str = "SELECT version FROM cqrs_projection_checkpoints \
     WHERE projection = $1 AND generation = $2 AND pk = $3 AND sk = $4";

/// One checkpoint, locked until the commit in PostgreSQL.
pub(crate) fn read_checkpoint(flavor: Flavor) -> String {
    format!("{READ_CHECKPOINT}{}", RowLock::Update.suffix(flavor))
}

/// `$1` projection, `$2` generation, `$3` pk, `$4` sk, `$5` version.
pub(crate) const INSERT_CHECKPOINT: &str = "INSERT INTO cqrs_projection_checkpoints \
     (projection, generation, pk, sk, version) VALUES ($1, $2, $3, $4, $5) \
     ON CONFLICT (projection, generation, pk, sk) DO NOTHING";

/// `$1` projection, `$2` generation, `$3` pk, `$4` sk, `$5` version, `$6`
/// the version it replaces.
pub(crate) const UPDATE_CHECKPOINT: &str = "UPDATE cqrs_projection_checkpoints SET version = $5 \
     WHERE projection = $1 AND generation = $2 AND pk = $3 AND sk = $4 AND version = $6";

/// `$1` projection, `$2` generation.
pub(crate) const DELETE_CHECKPOINTS: &str =
    "DELETE FROM cqrs_projection_checkpoints WHERE projection = $1 AND generation = $2";

/// The checkpoints of `keys` keys: `$1` projection, `$2` generation, then
/// pk and sk of each key.
pub(crate) fn read_checkpoints(keys: usize) -> String {
    let mut sql = String::from(
        "SELECT pk, sk, version FROM cqrs_projection_checkpoints WHERE projection = $1 AND generation = $2 AND (",
    );
    for i in 0..keys {
        if i > 0 {
            sql.push_str(" OR ");
        }
        let pk = 3 + 2 * i;
        sql.push_str(&format!("(pk = ${pk} AND sk = ${})", pk + 1));
    }
    sql.push(')');
    sql
}

/// How a read locks the row it reads (PostgreSQL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RowLock {
    None,
    /// Others may read and share-lock it; a writer waits for the commit.
    Share,
    /// Held alone until the commit.
    Update,
}

impl RowLock {
    fn suffix(self, flavor: Flavor) -> &'static str {
        match (flavor, self) {
            (Flavor::Postgres, RowLock::Share) => " FOR SHARE",
            (Flavor::Postgres, RowLock::Update) => " FOR UPDATE",
            _ => "",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_batches_number_their_placeholders() {
        assert_eq!(
            read_checkpoints(2),
            "SELECT pk, sk, version FROM cqrs_projection_checkpoints WHERE projection = $1 AND generation = $2 \
             AND ((pk = $3 AND sk = $4) OR (pk = $5 AND sk = $6))"
        );
    }

    #[test]
    fn only_postgres_locks_rows() {
        assert!(read_doc(Flavor::Postgres, RowLock::Share).ends_with(" FOR SHARE"));
        assert!(read_checkpoint(Flavor::Postgres).ends_with(" FOR UPDATE"));
        assert_eq!(read_doc(Flavor::Sqlite, RowLock::Share), READ_DOC);
        assert_eq!(read_checkpoint(Flavor::Sqlite), READ_CHECKPOINT);
    }
}
