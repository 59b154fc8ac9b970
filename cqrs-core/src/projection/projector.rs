//! The projector: applies data-sync events to a projection through a
//! target, exactly once in effect.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::change::{Change, ChangeSource, Projection};
use super::state::{decode, encode, Generations};
use super::target::{MetaDoc, ProjectionTarget, ProjectionTx};
use crate::error::{BoxError, Error, Result};
use crate::handler::{DataSyncEvent, DataSyncHandler, Interest};
use crate::model::DataItem;
use crate::storage::Storage;
use crate::typed::Typed;

/// Attempts of one event when its transaction loses a race (another
/// consumer moved a checkpoint, or a rebuild started or switched).
const CONFLICT_ATTEMPTS: u32 = 20;

/// Of those, the attempts after a transient failure (a deadlock broken by
/// the database, a dropped connection).
const TRANSIENT_ATTEMPTS: u32 = 5;

/// Runs a [`Projection`] on a [`ProjectionTarget`].
///
/// Register it as a data-sync handler (it is one) to feed it the
/// pipeline's events: `Engine::builder(storage).handler(projector.clone())`.
/// Its name is the projection's. Clones share everything.
///
/// For each event, in one transaction of the target and for each
/// generation events go to (the live one, and the one a rebuild fills):
/// - the entity's checkpoint is read; a version at or below it is skipped;
/// - versions between the checkpoint and the event's, missing because they
///   were not delivered yet (or were written before the projection
///   existed), are read from the entity's history and applied first, in
///   order: every version reaches the projection once;
/// - the projection applies the change, and the checkpoint moves to the
///   event's version.
///
/// The transaction commits everything or nothing, so a crash at any point
/// leaves either the whole change or none of it; the redelivery that follows
/// is then applied or skipped.
pub struct Projector<P, T> {
    inner: Arc<Inner<P, T>>,
}

impl<P, T> Clone for Projector<P, T> {
    fn clone(&self) -> Self {
        Projector {
            inner: Arc::clone(&self.inner),
        }
    }
}

struct Inner<P, T> {
    projection: P,
    target: T,
    storage: Arc<dyn Storage>,
    name: String,
    interest: Interest,
    stats: Counters,
}

#[derive(Default)]
struct Counters {
    events: AtomicU64,
    versions: AtomicU64,
    from_history: AtomicU64,
    skipped: AtomicU64,
    conflicts: AtomicU64,
    failed: AtomicU64,
}

/// What a projector did since it was built (this process only; the
/// durable state is the target's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProjectionStats {
    /// Events that changed the read model.
    pub events: u64,
    /// Versions applied, counting those filled from history (per
    /// generation).
    pub versions: u64,
    /// Versions read from history to fill a gap.
    pub from_history: u64,
    /// Events skipped: duplicates, or older than what was applied.
    pub skipped: u64,
    /// Transactions run again after losing a race (a checkpoint moved, a
    /// deadlock broken by the database) or a transient failure.
    pub conflicts: u64,
    /// Events whose projection failed (nothing written).
    pub failed: u64,
}

/// What [`Projector::apply`] did with one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Applied {
    /// The read model changed: `versions` applied in all (more than one
    /// when versions were filled from history, or two generations took it).
    Changed {
        /// Versions applied.
        versions: u64,
    },
    /// Every generation had applied this version already, or a newer one.
    Skipped,
    /// The projection's interest does not cover the event.
    NotInterested,
}

/// A projection's `apply` or `create` failed; nothing it wrote was kept.
#[derive(Debug, thiserror::Error)]
#[error("projection '{projection}' failed on {key}@{version}: {source}")]
pub struct ProjectionFailed {
    /// The projection.
    pub projection: String,
    /// `pk#sk` of the entity.
    pub key: String,
    /// The version it was applying.
    pub version: u64,
    /// The projection's error.
    #[source]
    pub source: BoxError,
}

/// How many versions one entity was brought forward by.
pub(crate) enum Step {
    Skipped,
    Applied { versions: u64, from_history: u64 },
}

impl<P, T> Projector<P, T>
where
    T: ProjectionTarget,
    P: Projection<T::Tx>,
{
    /// A projector of `projection` into `target`, reading entity history
    /// (for gaps and rebuilds) from `storage`: the engine's
    /// ([`Engine::storage`](crate::Engine::storage)).
    pub fn new(projection: P, target: T, storage: Arc<dyn Storage>) -> Self {
        let name = projection.name().to_owned();
        let interest = projection.interest();
        Projector {
            inner: Arc::new(Inner {
                projection,
                target,
                storage,
                name,
                interest,
                stats: Counters::default(),
            }),
        }
    }

    /// The projection's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The projection.
    pub fn projection(&self) -> &P {
        &self.inner.projection
    }

    /// The target.
    pub fn target(&self) -> &T {
        &self.inner.target
    }

    pub(crate) fn storage(&self) -> &Arc<dyn Storage> {
        &self.inner.storage
    }

    pub(crate) fn interest(&self) -> &Interest {
        &self.inner.interest
    }

    /// What this projector did so far.
    pub fn stats(&self) -> ProjectionStats {
        let c = &self.inner.stats;
        ProjectionStats {
            events: c.events.load(Ordering::Relaxed),
            versions: c.versions.load(Ordering::Relaxed),
            from_history: c.from_history.load(Ordering::Relaxed),
            skipped: c.skipped.load(Ordering::Relaxed),
            conflicts: c.conflicts.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
        }
    }

    /// Creates what the target needs and, on first use, the projection's
    /// first generation (its tables, and readers pointed at them).
    /// Idempotent and safe to race; [`Projector::apply`] calls it when
    /// needed.
    pub async fn prepare(&self) -> Result<Generations> {
        self.inner.target.prepare().await?;
        loop {
            if let Some(doc) = self
                .inner
                .target
                .load(&self.inner.name, MetaDoc::Generations)
                .await?
            {
                return decode(&doc);
            }
            let (mut tx, _) = self.inner.target.begin(&self.inner.name).await?;
            tx.set_generation(1);
            self.create_tables(&mut tx).await?;
            tx.commit().await?;
            let first = Generations {
                live: 1,
                building: None,
                last: 1,
            };
            let tables = self.inner.projection.tables();
            match self
                .inner
                .target
                .switch(&self.inner.name, &encode(&first), 0, 1, &tables)
                .await
            {
                Ok(()) => return Ok(first),
                // Another process created it first: read theirs.
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// The projection's generations as stored.
    pub async fn generations(&self) -> Result<Generations> {
        match self
            .inner
            .target
            .load(&self.inner.name, MetaDoc::Generations)
            .await?
        {
            Some(doc) => decode(&doc),
            None => Ok(Generations::default()),
        }
    }

    pub(crate) async fn create_tables(&self, tx: &mut T::Tx) -> Result<()> {
        let generation = tx.generation();
        (self.inner.projection.create(tx).await)
            .map_err(|source| self.failed(format!("tables of generation {generation}"), 0, source))
    }

    /// The error of a failed projection: retryable when the target says
    /// the cause is its own unavailability (the pipeline then waits for it
    /// rather than recording the event as failed).
    fn failed(&self, key: String, version: u64, source: BoxError) -> Error {
        let transient = self.inner.target.is_transient(source.as_ref());
        Error::backend(
            ProjectionFailed {
                projection: self.inner.name.clone(),
                key,
                version,
                source,
            },
            transient,
        )
    }

    /// Applies one data-sync event to every generation it goes to, in one
    /// transaction of the target. Skips (and counts) a version at or below
    /// the entity's checkpoint; fills the versions before it from history.
    ///
    /// A failing projection writes nothing and returns an error (retryable:
    /// the pipeline retries, then records the event as failed).
    pub async fn apply(&self, event: &DataSyncEvent) -> Result<Applied> {
        if !self.inner.interest.matches(&event.command) {
            return Ok(Applied::NotInterested);
        }
        let stats = &self.inner.stats;
        for attempt in 0..CONFLICT_ATTEMPTS {
            let (mut tx, doc) = self.inner.target.begin(&self.inner.name).await?;
            let generations: Generations = match doc {
                Some(doc) => decode(&doc)?,
                None => {
                    drop(tx);
                    self.prepare().await?;
                    continue;
                }
            };
            let mut versions = 0;
            let mut from_history = 0;
            let mut outcome = Ok(());
            for generation in generations.targets() {
                tx.set_generation(generation);
                match self
                    .bring_forward(&mut tx, &event.new, event.old.as_ref(), ChangeSource::Live)
                    .await
                {
                    Ok(Step::Skipped) => {}
                    Ok(Step::Applied {
                        versions: n,
                        from_history: h,
                    }) => {
                        versions += n;
                        from_history += h;
                    }
                    Err(e) => {
                        outcome = Err(e);
                        break;
                    }
                }
            }
            let committed = match outcome {
                Ok(()) if versions == 0 => {
                    drop(tx);
                    stats.skipped.fetch_add(1, Ordering::Relaxed);
                    return Ok(Applied::Skipped);
                }
                Ok(()) => tx.commit().await,
                Err(e) => {
                    drop(tx);
                    Err(e)
                }
            };
            match committed {
                Ok(()) => {
                    stats.events.fetch_add(1, Ordering::Relaxed);
                    crate::meters::projection_applied(&self.inner.name);
                    stats.versions.fetch_add(versions, Ordering::Relaxed);
                    stats.from_history.fetch_add(from_history, Ordering::Relaxed);
                    return Ok(Applied::Changed { versions });
                }
                // A race lost (a checkpoint moved, a deadlock broken by
                // the database), or a blip: run the event again. A target
                // that stays down is left to the pipeline's retries.
                Err(e) if e.is_conflict() || (e.is_retryable() && attempt < TRANSIENT_ATTEMPTS) => {
                    stats.conflicts.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(conflict_pause(attempt)).await;
                }
                Err(e) => {
                    if is_projection_failure(&e) {
                        stats.failed.fetch_add(1, Ordering::Relaxed);
                        crate::meters::projection_failed(&self.inner.name);
                    }
                    return Err(e);
                }
            }
        }
        Err(Error::backend(
            format!(
                "projection '{}' lost {CONFLICT_ATTEMPTS} races in a row on {}@{}",
                self.inner.name,
                event.key(),
                event.command.version
            ),
            true,
        ))
    }

    /// Brings `item`'s entity forward to `item.version` in the transaction's
    /// generation: skipped when the checkpoint is there already; else the
    /// versions in between (from history), then `item`, and the checkpoint.
    /// `old` is the state before `item` when the caller has it.
    pub(crate) async fn bring_forward(
        &self,
        tx: &mut T::Tx,
        item: &DataItem,
        old: Option<&DataItem>,
        source: ChangeSource,
    ) -> Result<Step> {
        let key = item.key();
        let checkpoint = tx.checkpoint(&key).await?;
        if item.version <= checkpoint {
            return Ok(Step::Skipped);
        }
        let mut steps: Vec<(Option<DataItem>, DataItem, ChangeSource)> = Vec::new();
        let next_in_line = old.filter(|old| old.version == checkpoint && checkpoint > 0);
        if item.version == 1 || (checkpoint == 0 && source == ChangeSource::Rebuild) {
            // A creation; or a rebuild's first sight of an entity in its
            // generation: the whole state comes in, as of the scan.
            steps.push((None, item.clone(), source));
        } else if let Some(old) = next_in_line {
            steps.push((Some(old.clone()), item.clone(), source));
        } else {
            let history = self.inner.storage.list_history(&key).await?;
            let mut last_seen = history.iter().find(|h| h.version == checkpoint).cloned();
            for between in history
                .into_iter()
                .filter(|h| h.version > checkpoint && h.version < item.version)
            {
                steps.push((last_seen.replace(between.clone()), between, ChangeSource::History));
            }
            steps.push((last_seen, item.clone(), source));
        }
        let from_history = steps
            .iter()
            .filter(|(_, _, s)| *s == ChangeSource::History)
            .count() as u64;
        let versions = steps.len() as u64;
        for (old, new, source) in steps {
            let version = new.version;
            let failed = |source: BoxError| self.failed(key.to_string(), version, source);
            let change = self.change(old, new, source).map_err(|e| failed(e.into()))?;
            self.inner.projection.apply(tx, &change).await.map_err(failed)?;
        }
        tx.set_checkpoint(&key, checkpoint, item.version).await?;
        Ok(Step::Applied {
            versions,
            from_history,
        })
    }

    fn change(&self, old: Option<DataItem>, new: DataItem, source: ChangeSource) -> Result<Change<P::State>> {
        Ok(Change {
            key: new.key(),
            version: new.version,
            old: old.map(Typed::from_item).transpose()?,
            new: Typed::from_item(new)?,
            source,
        })
    }
}

fn is_projection_failure(error: &Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<ProjectionFailed>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// Pause before retrying a transaction that lost a race: short, growing,
/// jittered so that racing consumers fall apart.
fn conflict_pause(attempt: u32) -> Duration {
    let base = 2u64.saturating_pow(attempt.min(6)).min(50);
    Duration::from_millis(fastrand::u64(0..=base))
}

#[async_trait]
impl<P, T> DataSyncHandler for Projector<P, T>
where
    T: ProjectionTarget,
    P: Projection<T::Tx>,
{
    fn name(&self) -> &str {
        &self.inner.name
    }

    fn interest(&self) -> Interest {
        self.inner.interest.clone()
    }

    async fn handle(&self, event: &DataSyncEvent) -> std::result::Result<(), BoxError> {
        self.apply(event).await?;
        Ok(())
    }
}
