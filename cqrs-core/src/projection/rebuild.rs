//! Rebuilding a projection into a fresh generation while events keep
//! flowing (the reference framework's `reSyncData`, made safe to run live).

use std::time::{Duration, Instant};

use super::change::{ChangeSource, Projection};
use super::projector::{Projector, Step};
use super::state::{decode, encode, Generations, RebuildProgress, Scope};
use super::target::{MetaDoc, ProjectionTarget, ProjectionTx};
use crate::error::{Error, Result};
use crate::handler::Interest;
use crate::keys::tenant_pk;
use crate::model::DataItem;
use crate::query::{SkCondition, SortOrder};
use crate::storage::RangeQuery;

/// Attempts of one batch that loses races to live events.
const BATCH_ATTEMPTS: u32 = 20;

/// Rows a rebuild reads, applies and checkpoints per transaction.
pub const DEFAULT_REBUILD_BATCH: usize = 100;

/// Where a running rebuild stands, given to its progress callback after
/// every batch.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Progress {
    /// The generation being filled.
    pub generation: u64,
    /// Rows read (over every run of this rebuild, when it resumed).
    pub done: u64,
    /// Rows in scope when the rebuild started.
    pub total: u64,
    /// Rows per second read by this run.
    pub rate: f64,
}

/// What a finished rebuild did.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Rebuilt {
    /// The generation readers now see.
    pub generation: u64,
    /// The generation it replaced (dropped).
    pub replaced: u64,
    /// Rows read, over every run of this rebuild.
    pub rows: u64,
    /// Rows this run applied (the others had been applied by live events).
    pub applied: u64,
    /// Whether this run resumed a rebuild a previous run left.
    pub resumed: bool,
    /// How long this run took.
    pub elapsed: Duration,
}

/// A rebuild to run: [`Projector::rebuild`].
#[must_use = "a rebuild does nothing until run"]
pub struct Rebuild<'a, P, T> {
    projector: &'a Projector<P, T>,
    scope: Scope,
    batch: usize,
    on_progress: Option<Box<dyn FnMut(Progress) + Send + Sync + 'a>>,
}

impl<P, T> Projector<P, T>
where
    T: ProjectionTarget,
    P: Projection<T::Tx>,
{
    /// Rebuilds the read model from the data table into a new generation,
    /// while events keep being applied to the live one (and to the new one),
    /// then switches readers to it in one step and drops the old one.
    ///
    /// - **Scope**: the projection's interest within the given tenants.
    /// - **Resumable**: the scan position is committed with each batch; run
    ///   the same rebuild again after a crash and it continues.
    /// - **Live events** reach both generations; the per-entity checkpoints
    ///   of the new one make the scan skip what they brought, and them skip
    ///   what the scan brought.
    pub fn rebuild(&self, scope: Scope) -> Rebuild<'_, P, T> {
        Rebuild {
            projector: self,
            scope,
            batch: DEFAULT_REBUILD_BATCH,
            on_progress: None,
        }
    }

    /// The progress of the rebuild under way, if any.
    pub async fn rebuild_progress(&self) -> Result<Option<RebuildProgress>> {
        if self.generations().await?.building.is_none() {
            return Ok(None);
        }
        match self.target().load(self.name(), MetaDoc::Rebuild).await? {
            Some(doc) => decode(&doc).map(Some),
            None => Ok(None),
        }
    }
}

impl<'a, P, T> Rebuild<'a, P, T>
where
    T: ProjectionTarget,
    P: Projection<T::Tx>,
{
    /// Rows per transaction (default [`DEFAULT_REBUILD_BATCH`]); fewer when
    /// the target refuses a transaction as too large (DynamoDB's hold 100
    /// items: the checkpoints, the bookkeeping and the projection's writes).
    pub fn batch(mut self, rows: usize) -> Self {
        self.batch = rows.max(1);
        self
    }

    /// Called after every batch.
    pub fn on_progress(mut self, report: impl FnMut(Progress) + Send + Sync + 'a) -> Self {
        self.on_progress = Some(Box::new(report));
        self
    }

    /// Runs (or resumes) the rebuild to its switch.
    pub async fn run(mut self) -> Result<Rebuilt> {
        let projector = self.projector;
        let started = Instant::now();
        projector.prepare().await?;
        let (mut progress, mut revision, resumed) = self.start_or_resume().await?;
        let generation = progress.generation;
        let read_at_start = progress.done;
        let mut applied = 0;
        while let Some(tenant) = progress.scope.tenants.get(progress.tenant_index).cloned() {
            let page = projector
                .storage()
                .query_data(&scan_query(
                    &tenant,
                    projector.interest(),
                    progress.after_sk.clone(),
                    self.batch,
                ))
                .await?;
            // The page in as few transactions as the target takes: a
            // target with a small transaction (DynamoDB: 100 items) refuses
            // a batch as too large, and it is split.
            let mut rest = &page.items[..];
            loop {
                let take = self.batch.min(rest.len());
                let (rows, after) = rest.split_at(take);
                let (after_sk, unreadable) = match after.is_empty() {
                    true => (page.last_sk.clone(), page.unreadable.len()),
                    false => (rows.last().map(|row| row.sk.to_string()), 0),
                };
                match self
                    .apply_rows(rows, unreadable, after_sk, &progress, revision)
                    .await
                {
                    Ok((done, next)) => {
                        applied += done;
                        revision += 1;
                        progress = next;
                    }
                    Err(Error::TooLarge { .. }) if take > 1 => {
                        self.batch = take / 2;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
                if let Some(report) = self.on_progress.as_mut() {
                    let read = (progress.done - read_at_start) as f64;
                    report(Progress {
                        generation,
                        done: progress.done,
                        total: progress.total,
                        rate: read / started.elapsed().as_secs_f64().max(1e-9),
                    });
                }
                rest = after;
                if rest.is_empty() {
                    break;
                }
            }
        }
        let replaced = self.switch(generation).await?;
        Ok(Rebuilt {
            generation,
            replaced,
            rows: progress.done,
            applied,
            resumed,
            elapsed: started.elapsed(),
        })
    }

    /// The rebuild under way (same scope), or a new one: its generation's
    /// tables created, and the generations document naming it, in one
    /// transaction.
    async fn start_or_resume(&self) -> Result<(RebuildProgress, u64, bool)> {
        let projector = self.projector;
        let target = projector.target();
        loop {
            // Read before the transaction (a target may hold a lock through
            // it); the write below is conditioned on this revision.
            let rebuild_doc = target.load(projector.name(), MetaDoc::Rebuild).await?;
            let rebuild_revision = rebuild_doc.as_ref().map_or(0, |d| d.revision);
            let (mut tx, doc) = target.begin(projector.name()).await?;
            let doc = doc.ok_or_else(|| Error::backend("projection has no generations", true))?;
            let generations: Generations = decode(&doc)?;
            if let Some(building) = generations.building {
                drop(tx);
                let progress: RebuildProgress = decode(
                    rebuild_doc
                        .as_ref()
                        .ok_or_else(|| Error::backend("rebuild without progress", false))?,
                )?;
                if progress.generation != building || progress.scope != self.scope {
                    return Err(Error::invalid(
                        "rebuild",
                        format!(
                            "another rebuild of '{}' is under way (generation {building}, tenants {:?}): finish it first",
                            projector.name(),
                            progress.scope.tenants
                        ),
                    ));
                }
                return Ok((progress, rebuild_revision, true));
            }
            let generation = generations.last + 1;
            tx.set_generation(generation);
            projector.create_tables(&mut tx).await?;
            let progress = RebuildProgress {
                generation,
                scope: self.scope.clone(),
                tenant_index: 0,
                after_sk: None,
                done: 0,
                total: count_in_scope(projector, &self.scope).await?,
                started_at: crate::clock::now(),
            };
            tx.store(MetaDoc::Rebuild, &encode(&progress), rebuild_revision)
                .await?;
            let next = Generations {
                live: generations.live,
                building: Some(generation),
                last: generation,
            };
            tx.store(MetaDoc::Generations, &encode(&next), doc.revision)
                .await?;
            match tx.commit().await {
                Ok(()) => return Ok((progress, rebuild_revision + 1, false)),
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Applies `rows` to the new generation, with the position after them
    /// (`after_sk`; `None`: the tenant is done), in one transaction.
    /// Returns the rows applied and the new position.
    async fn apply_rows(
        &self,
        rows: &[DataItem],
        unreadable: usize,
        after_sk: Option<String>,
        progress: &RebuildProgress,
        revision: u64,
    ) -> Result<(u64, RebuildProgress)> {
        let projector = self.projector;
        let in_scope = || rows.iter().filter(|item| in_interest(projector.interest(), item));
        let mut next = progress.clone();
        next.done += (in_scope().count() + unreadable) as u64;
        match after_sk {
            Some(sk) => next.after_sk = Some(sk),
            None => {
                next.tenant_index += 1;
                next.after_sk = None;
            }
        }
        let mut attempt = 0;
        loop {
            let (mut tx, doc) = projector.target().begin(projector.name()).await?;
            let generations: Generations =
                decode(&doc.ok_or_else(|| Error::backend("projection has no generations", true))?)?;
            if generations.building != Some(progress.generation) {
                return Err(Error::invalid(
                    "rebuild",
                    format!(
                        "generation {} is no longer being built (another run finished it?)",
                        progress.generation
                    ),
                ));
            }
            tx.set_generation(progress.generation);
            let batch = async {
                let mut applied = 0;
                for item in in_scope() {
                    if let Step::Applied { .. } = projector
                        .bring_forward(&mut tx, item, None, ChangeSource::Rebuild)
                        .await?
                    {
                        applied += 1;
                    }
                }
                tx.store(MetaDoc::Rebuild, &encode(&next), revision).await?;
                tx.commit().await?;
                Ok::<_, Error>(applied)
            };
            match batch.await {
                Ok(applied) => return Ok((applied, next)),
                // A race lost to live events (a checkpoint, a deadlock broken
                // by the database), or a blip: the batch again.
                Err(e) if (e.is_conflict() || e.is_retryable()) && attempt < BATCH_ATTEMPTS => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(fastrand::u64(1..=20 * u64::from(attempt))))
                        .await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Points readers at `generation` and drops the one they saw.
    async fn switch(&self, generation: u64) -> Result<u64> {
        let projector = self.projector;
        let target = projector.target();
        let doc = target
            .load(projector.name(), MetaDoc::Generations)
            .await?
            .ok_or_else(|| Error::backend("projection has no generations", true))?;
        let generations: Generations = decode(&doc)?;
        if generations.building != Some(generation) {
            return Err(Error::invalid(
                "rebuild",
                format!("generation {generation} is no longer being built"),
            ));
        }
        let replaced = generations.live;
        let next = Generations {
            live: generation,
            building: None,
            last: generations.last,
        };
        let tables = projector.projection().tables();
        target
            .switch(
                projector.name(),
                &encode(&next),
                doc.revision,
                generation,
                &tables,
            )
            .await?;
        if let Err(e) = target.drop_generation(projector.name(), replaced, &tables).await {
            // Readers no longer see it; what is left only takes space.
            tracing::warn!(projection = projector.name(), generation = replaced, error = %e, "old generation not dropped");
        }
        Ok(replaced)
    }
}

/// The rows of `tenant` a projection of `interest` reads, after `after_sk`.
pub(crate) fn scan_query(
    tenant: &str,
    interest: &Interest,
    after_sk: Option<String>,
    limit: usize,
) -> RangeQuery {
    RangeQuery {
        pk: tenant_pk(tenant),
        sk: match interest {
            Interest::SkPrefix(prefix) => Some(SkCondition::BeginsWith(prefix.clone())),
            _ => None,
        },
        order: SortOrder::Ascending,
        start_after: after_sk,
        limit,
    }
}

/// Whether a data row is of the interest (the scan narrows by prefix only).
pub(crate) fn in_interest(interest: &Interest, item: &DataItem) -> bool {
    interest.matches_row(&item.sk, &item.entity_type)
}

/// Rows in scope, for progress reports.
async fn count_in_scope<P, T>(projector: &Projector<P, T>, scope: &Scope) -> Result<u64>
where
    T: ProjectionTarget,
    P: Projection<T::Tx>,
{
    let mut total = 0;
    for tenant in &scope.tenants {
        let mut after = None;
        loop {
            let page = projector
                .storage()
                .query_data(&scan_query(tenant, projector.interest(), after, 1000))
                .await?;
            total += page
                .items
                .iter()
                .filter(|item| in_interest(projector.interest(), item))
                .count() as u64;
            match page.last_sk {
                Some(sk) => after = Some(sk),
                None => break,
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;

    use crate::error::BoxError;
    use crate::projection::{Change, MemoryTarget, MemoryTx, Projection, Projector, Scope};

    struct Nothing;

    #[async_trait]
    impl Projection<MemoryTx> for Nothing {
        type State = serde_json::Value;
        fn name(&self) -> &str {
            "nothing"
        }
        async fn apply(&self, _: &mut MemoryTx, _: &Change<serde_json::Value>) -> Result<(), BoxError> {
            Ok(())
        }
    }

    /// A rebuild with a progress callback can run in a task of its own
    /// (this compiles only if its future is `Send`).
    #[allow(dead_code)]
    fn a_rebuild_is_send(projector: &Projector<Nothing, MemoryTarget>) {
        fn spawnable<F: std::future::Future + Send>(_: F) {}
        let mut reports = Vec::new();
        spawnable(
            projector
                .rebuild(Scope::tenants(["shop-a"]))
                .on_progress(|p| reports.push(p.done))
                .run(),
        );
    }
}
