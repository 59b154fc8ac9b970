//! [`SqlTx`]: one projection transaction, through which a projection runs
//! its SQL and the projector moves checkpoints.

use async_trait::async_trait;
use cqrs_core::projection::{MetaDoc, ProjectionTx};
use cqrs_core::{EntityKey, Error, Result};
use sqlx::Transaction;

use crate::database::{Arg, Flavor, SqlDatabase};
use crate::{error, names, sql};

/// A transaction of a [`SqlTarget`](crate::SqlTarget): the projection's
/// statements and the entity's checkpoint commit together or not at all.
///
/// A projection writes the current generation's tables, named by
/// [`SqlTx::table`], with ordinary sqlx queries on [`SqlTx::conn`]:
///
/// ```
/// # #[cfg(feature = "sqlite")]
/// # async fn demo(tx: &mut cqrs_sql::SqlTx<sqlx::Sqlite>) -> Result<(), cqrs_core::BoxError> {
/// let table = tx.table("sales_daily")?; // "sales_daily_g1" in generation 1
/// sqlx::query(&format!(
///     "INSERT INTO {table} (day, total) VALUES ($1, $2)
///      ON CONFLICT (day) DO UPDATE SET total = {table}.total + excluded.total"
/// ))
/// .bind("2026-12-05")
/// .bind(42_i64)
/// .execute(tx.conn())
/// .await?;
/// # Ok(()) }
/// ```
///
/// Dropping it uncommitted rolls everything back.
pub struct SqlTx<DB: SqlDatabase> {
    tx: Transaction<'static, DB>,
    flavor: Flavor,
    projection: String,
    generation: u64,
}

impl<DB: SqlDatabase> SqlTx<DB> {
    pub(crate) fn new(tx: Transaction<'static, DB>, flavor: Flavor, projection: &str) -> Self {
        SqlTx {
            tx,
            flavor,
            projection: projection.to_owned(),
            generation: 0,
        }
    }

    /// The physical name of `table` in the transaction's generation,
    /// `{table}_g{generation}`: what the projection's SQL creates and
    /// writes. Readers query `table` itself, a view of the generation they
    /// see.
    ///
    /// `table` must be a plain SQL name (ASCII letters, digits and `_`, not
    /// starting with a digit; 63 bytes at most with the suffix), since it
    /// goes into SQL text: anything else is an [`Error::InvalidInput`].
    pub fn table(&self, table: &str) -> Result<String> {
        names::generation_table(table, self.generation)
    }

    /// The transaction's connection, to run queries on:
    /// `sqlx::query(...).execute(tx.conn())`.
    pub fn conn(&mut self) -> &mut DB::Connection {
        &mut self.tx
    }

    /// The projection this transaction writes.
    pub fn projection(&self) -> &str {
        &self.projection
    }
}

impl<DB: SqlDatabase> AsMut<DB::Connection> for SqlTx<DB> {
    fn as_mut(&mut self) -> &mut DB::Connection {
        &mut self.tx
    }
}

/// An integer column's value for a version or a generation.
pub(crate) fn to_sql(value: u64) -> Result<i64> {
    i64::try_from(value).map_err(|_| Error::invalid("version", format!("{value} is over {}", i64::MAX)))
}

/// A version or revision read back.
pub(crate) fn from_sql(value: i64) -> Result<u64> {
    u64::try_from(value).map_err(|_| {
        Error::backend(
            format!("negative version {value} in the projection tables"),
            false,
        )
    })
}

/// Writes a bookkeeping document, conditioned on its revision (0: it must
/// not exist). In the transaction of `conn`.
pub(crate) async fn write_doc<DB: SqlDatabase>(
    conn: &mut DB::Connection,
    flavor: Flavor,
    projection: &str,
    doc: MetaDoc,
    text: &str,
    expected: u64,
) -> Result<()> {
    let what = format!("{projection}/{}", doc.as_str());
    let written = if expected == 0 {
        DB::execute(
            conn,
            sql::INSERT_DOC,
            &[Arg::Text(projection), Arg::Text(doc.as_str()), Arg::Text(text)],
        )
        .await
    } else {
        DB::execute(
            conn,
            sql::UPDATE_DOC,
            &[
                Arg::Text(projection),
                Arg::Text(doc.as_str()),
                Arg::Text(text),
                Arg::Int(to_sql(expected)?),
            ],
        )
        .await
    }
    .map_err(|e| error::in_transaction(e, flavor, &what))?;
    if written == 0 {
        return Err(error::conflict(what, expected));
    }
    Ok(())
}

#[async_trait]
impl<DB: SqlDatabase> ProjectionTx for SqlTx<DB> {
    fn generation(&self) -> u64 {
        self.generation
    }

    fn set_generation(&mut self, generation: u64) {
        self.generation = generation;
    }

    async fn checkpoint(&mut self, key: &EntityKey) -> Result<u64> {
        let generation = to_sql(self.generation)?;
        let statement = sql::read_checkpoint(self.flavor);
        let versions = DB::fetch_ints(
            &mut self.tx,
            &statement,
            &[
                Arg::Text(&self.projection),
                Arg::Int(generation),
                Arg::Text(&key.pk),
                Arg::Text(&key.sk),
            ],
        )
        .await
        .map_err(|e| {
            let what = format!("{}: checkpoint of {key}", self.projection);
            error::in_transaction(e, self.flavor, &what)
        })?;
        versions.first().map_or(Ok(0), |v| from_sql(*v))
    }

    async fn set_checkpoint(&mut self, key: &EntityKey, previous: u64, version: u64) -> Result<()> {
        let mut args = vec![
            Arg::Text(&self.projection),
            Arg::Int(to_sql(self.generation)?),
            Arg::Text(&key.pk),
            Arg::Text(&key.sk),
            Arg::Int(to_sql(version)?),
        ];
        let statement = if previous == 0 {
            sql::INSERT_CHECKPOINT
        } else {
            args.push(Arg::Int(to_sql(previous)?));
            sql::UPDATE_CHECKPOINT
        };
        let what = format!("{}: checkpoint of {key}", self.projection);
        let written = DB::execute(&mut self.tx, statement, &args)
            .await
            .map_err(|e| error::in_transaction(e, self.flavor, &what))?;
        if written == 0 {
            return Err(error::conflict(what, previous));
        }
        Ok(())
    }

    async fn store(&mut self, doc: MetaDoc, text: &str, expected: u64) -> Result<()> {
        write_doc::<DB>(&mut self.tx, self.flavor, &self.projection, doc, text, expected).await
    }

    async fn commit(self) -> Result<()> {
        let what = format!("{}: commit", self.projection);
        let flavor = self.flavor;
        self.tx
            .commit()
            .await
            .map_err(|e| error::in_transaction(e, flavor, &what))
    }
}
