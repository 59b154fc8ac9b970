//! [`SqlTarget`]: the projection target over a sqlx pool.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use cqrs_core::projection::{MetaDoc, ProjectionTarget, Revised};
use cqrs_core::{EntityKey, Error, Result};
use sqlx::{Pool, Transaction};

use crate::database::{Arg, Flavor, SqlDatabase};
use crate::sql::{self, RowLock};
use crate::tx::{from_sql, to_sql, write_doc, SqlTx};
use crate::{error, names};

/// Keys per statement when reading checkpoints (two parameters each, well
/// under both databases' parameter limits).
const CHECKPOINT_BATCH: usize = 500;

/// A projection target in a SQL database, through a sqlx pool:
/// PostgreSQL, SQLite, or either chosen by URL at run time ([`sqlx::Any`]).
///
/// - Every event's writes and its checkpoint commit in one transaction.
/// - The framework keeps its bookkeeping in two tables of its own,
///   `cqrs_projection_checkpoints` and `cqrs_projection_meta`, created by
///   [`ProjectionTarget::prepare`] (the projector calls it).
/// - A projection's tables exist once per generation (`sales_daily_g1`,
///   `sales_daily_g2`, ...: [`SqlTx::table`]); readers query the plain name
///   (`sales_daily`), a view of the generation they see, which a rebuild
///   replaces atomically when it switches.
///
/// Table names are the database's: two projections on one database need
/// tables of different names.
///
/// Locking: in PostgreSQL, transactions run side by side; each holds a
/// share lock on its projection's generations row (so a rebuild's switch
/// waits for the transactions in flight), and each checkpoint read locks
/// the entity's checkpoint row. Two transactions writing the same rows in
/// different orders may deadlock: PostgreSQL fails one, and the projector
/// runs it again. In SQLite, a transaction takes the database's write lock
/// at its start (`BEGIN IMMEDIATE`): they run one at a time.
pub struct SqlTarget<DB: SqlDatabase> {
    pool: Pool<DB>,
    /// Whether this target (or a clone) created the framework's tables:
    /// the projector may begin a transaction before it prepares.
    prepared: Arc<AtomicBool>,
    /// SQLite's one writer, handed out in arrival order: SQLite's own wait
    /// for its lock polls, so that a writer that takes it again at once (a
    /// rebuild's next batch) would keep the others out for long stretches.
    writer: Arc<tokio::sync::Mutex<()>>,
}

/// A writer's turn on a SQLite target (see [`SqlTarget`]'s `writer`).
pub(crate) type Turn = tokio::sync::OwnedMutexGuard<()>;

impl<DB: SqlDatabase> Clone for SqlTarget<DB> {
    fn clone(&self) -> Self {
        SqlTarget {
            pool: self.pool.clone(),
            prepared: Arc::clone(&self.prepared),
            writer: Arc::clone(&self.writer),
        }
    }
}

impl<DB: SqlDatabase> std::fmt::Debug for SqlTarget<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlTarget").field("pool", &self.pool).finish()
    }
}

impl<DB: SqlDatabase> SqlTarget<DB> {
    /// A target over `pool`. For SQLite, give the pool a busy timeout (and
    /// preferably WAL), as [`SqlTarget::connect`] does.
    pub fn new(pool: Pool<DB>) -> Self {
        SqlTarget {
            pool,
            prepared: Arc::default(),
            writer: Arc::default(),
        }
    }

    /// The pool: readers query the projection's views through it.
    pub fn pool(&self) -> &Pool<DB> {
        &self.pool
    }

    /// The dialect, once the framework's tables exist (created on first use).
    async fn ready(&self) -> Result<Flavor> {
        if !self.prepared.load(Ordering::Acquire) {
            self.prepare().await?;
        }
        self.flavor()
    }

    fn flavor(&self) -> Result<Flavor> {
        DB::flavor(&self.pool).ok_or_else(|| {
            Error::invalid(
                "database",
                "a SqlTarget runs on PostgreSQL or SQLite: the pool's URL names another database",
            )
        })
    }

    /// Begins a transaction that may write: in SQLite, once the writers
    /// of this target before it are done (in arrival order), with the
    /// database's write lock taken at once (`BEGIN IMMEDIATE`), so that it
    /// never has to upgrade a read lock (which fails when another write
    /// came in between). The turn is held until the transaction ends.
    async fn begin_writing(&self, flavor: Flavor) -> Result<(Transaction<'static, DB>, Option<Turn>)> {
        let turn = match flavor {
            Flavor::Sqlite => Some(Arc::clone(&self.writer).lock_owned().await),
            Flavor::Postgres => None,
        };
        let begun = match flavor {
            Flavor::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Flavor::Postgres => self.pool.begin().await,
        };
        begun
            .map(|tx| (tx, turn))
            .map_err(|e| error::outside_transaction(e, flavor))
    }

    /// PostgreSQL: waits for, then holds until the commit, the advisory lock
    /// of `key`.
    async fn pg_lock(conn: &mut DB::Connection, flavor: Flavor, key: &str) -> Result<()> {
        if flavor == Flavor::Postgres {
            DB::execute(conn, sql::PG_LOCK, &[Arg::Text(key)])
                .await
                .map_err(|e| error::in_transaction(e, flavor, key))?;
        }
        Ok(())
    }

    async fn read_doc(
        conn: &mut DB::Connection,
        flavor: Flavor,
        projection: &str,
        doc: MetaDoc,
        lock: RowLock,
    ) -> Result<Option<Revised>> {
        let rows = DB::fetch_text_int(
            conn,
            &sql::read_doc(flavor, lock),
            &[Arg::Text(projection), Arg::Text(doc.as_str())],
        )
        .await
        .map_err(|e| error::outside_transaction(e, flavor))?;
        match rows.into_iter().next() {
            Some((text, revision)) => Ok(Some(Revised {
                text,
                revision: from_sql(revision)?,
            })),
            None => Ok(None),
        }
    }
}

#[async_trait]
impl<DB: SqlDatabase> ProjectionTarget for SqlTarget<DB> {
    type Tx = SqlTx<DB>;

    async fn prepare(&self) -> Result<()> {
        let flavor = self.flavor()?;
        let (mut tx, _turn) = self.begin_writing(flavor).await?;
        Self::pg_lock(&mut tx, flavor, sql::SCHEMA_LOCK_KEY).await?;
        for statement in sql::SCHEMA {
            DB::execute(&mut tx, statement, &[])
                .await
                .map_err(|e| error::outside_transaction(e, flavor))?;
        }
        tx.commit()
            .await
            .map_err(|e| error::outside_transaction(e, flavor))?;
        self.prepared.store(true, Ordering::Release);
        Ok(())
    }

    async fn begin(&self, projection: &str) -> Result<(SqlTx<DB>, Option<Revised>)> {
        let flavor = self.ready().await?;
        let (mut tx, turn) = self.begin_writing(flavor).await?;
        let mut generations =
            Self::read_doc(&mut tx, flavor, projection, MetaDoc::Generations, RowLock::Share).await?;
        if generations.is_none() {
            // The projection's first generation is being created (its
            // tables, by every process that starts at once): PostgreSQL's
            // `CREATE TABLE IF NOT EXISTS` fails when two run side by
            // side, so those transactions take turns.
            Self::pg_lock(&mut tx, flavor, &format!("cqrs_projection:{projection}")).await?;
            generations =
                Self::read_doc(&mut tx, flavor, projection, MetaDoc::Generations, RowLock::Share).await?;
        }
        Ok((SqlTx::new(tx, turn, flavor, projection), generations))
    }

    async fn load(&self, projection: &str, doc: MetaDoc) -> Result<Option<Revised>> {
        let flavor = self.ready().await?;
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| error::outside_transaction(e, flavor))?;
        Self::read_doc(&mut conn, flavor, projection, doc, RowLock::None).await
    }

    async fn checkpoints(&self, projection: &str, generation: u64, keys: &[EntityKey]) -> Result<Vec<u64>> {
        let flavor = self.ready().await?;
        let generation = to_sql(generation)?;
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| error::outside_transaction(e, flavor))?;
        let mut found: HashMap<(String, String), i64> = HashMap::with_capacity(keys.len());
        for chunk in keys.chunks(CHECKPOINT_BATCH) {
            let mut args = Vec::with_capacity(2 + 2 * chunk.len());
            args.push(Arg::Text(projection));
            args.push(Arg::Int(generation));
            for key in chunk {
                args.push(Arg::Text(&key.pk));
                args.push(Arg::Text(&key.sk));
            }
            let rows = DB::fetch_text_text_int(&mut conn, &sql::read_checkpoints(chunk.len()), &args)
                .await
                .map_err(|e| error::outside_transaction(e, flavor))?;
            found.extend(rows.into_iter().map(|(pk, sk, version)| ((pk, sk), version)));
        }
        keys.iter()
            .map(|key| {
                found
                    .get(&(key.pk.to_string(), key.sk.to_string()))
                    .map_or(Ok(0), |v| from_sql(*v))
            })
            .collect()
    }

    async fn switch(
        &self,
        projection: &str,
        text: &str,
        expected_revision: u64,
        generation: u64,
        tables: &[String],
    ) -> Result<()> {
        let flavor = self.ready().await?;
        // Every name is checked before anything is written.
        let views = tables
            .iter()
            .map(|table| Ok((table.as_str(), names::generation_table(table, generation)?)))
            .collect::<Result<Vec<_>>>()?;
        let (mut tx, _turn) = self.begin_writing(flavor).await?;
        // First the conditional write: in PostgreSQL it waits for the
        // transactions in flight that read the generations (share locks).
        write_doc::<DB>(
            &mut tx,
            flavor,
            projection,
            MetaDoc::Generations,
            text,
            expected_revision,
        )
        .await?;
        let what = format!("{projection}: views of generation {generation}");
        for (view, physical) in views {
            for statement in [
                format!("DROP VIEW IF EXISTS {view}"),
                format!("CREATE VIEW {view} AS SELECT * FROM {physical}"),
            ] {
                DB::execute(&mut tx, &statement, &[])
                    .await
                    .map_err(|e| error::in_transaction(e, flavor, &what))?;
            }
        }
        tx.commit()
            .await
            .map_err(|e| error::in_transaction(e, flavor, &what))
    }

    async fn drop_generation(&self, projection: &str, generation: u64, tables: &[String]) -> Result<()> {
        let flavor = self.ready().await?;
        let physical = tables
            .iter()
            .map(|table| names::generation_table(table, generation))
            .collect::<Result<Vec<_>>>()?;
        let (mut tx, _turn) = self.begin_writing(flavor).await?;
        for table in physical {
            DB::execute(&mut tx, &format!("DROP TABLE IF EXISTS {table}"), &[])
                .await
                .map_err(|e| error::outside_transaction(e, flavor))?;
        }
        DB::execute(
            &mut tx,
            sql::DELETE_CHECKPOINTS,
            &[Arg::Text(projection), Arg::Int(to_sql(generation)?)],
        )
        .await
        .map_err(|e| error::outside_transaction(e, flavor))?;
        tx.commit()
            .await
            .map_err(|e| error::outside_transaction(e, flavor))
    }

    /// A projection's own statement failed because the database is
    /// unreachable or overloaded, or because the transaction lost a race
    /// (a deadlock, a serialization failure, a busy SQLite database):
    /// worth retrying, not recording as failed.
    fn is_transient(&self, error: &(dyn std::error::Error + 'static)) -> bool {
        let Some(flavor) = DB::flavor(&self.pool) else {
            return false;
        };
        let mut current = Some(error);
        while let Some(e) = current {
            if let Some(e) = e.downcast_ref::<sqlx::Error>() {
                return error::is_worth_retrying(e, flavor);
            }
            current = e.source();
        }
        false
    }
}
