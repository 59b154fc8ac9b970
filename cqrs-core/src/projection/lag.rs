//! How far a projection is behind the data table.

use chrono::{DateTime, Utc};

use super::change::Projection;
use super::projector::Projector;
use super::rebuild::{in_interest, scan_query};
use super::state::Scope;
use super::target::ProjectionTarget;
use crate::error::Result;

/// Rows read per storage call, and checkpoints per target call, by
/// [`Projector::lag`].
const LAG_PAGE: usize = 500;

/// How far the live generation of a projection is behind the data table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Lag {
    /// Entities in scope whose current version the read model has not
    /// applied.
    pub entities_behind: u64,
    /// Versions not applied yet, summed over those entities.
    pub events_behind: u64,
    /// When the oldest version not applied yet was written.
    pub oldest_unapplied: Option<DateTime<Utc>>,
    /// Entities checked.
    pub entities: u64,
}

impl Lag {
    /// The age of the oldest version not applied yet (zero when none is).
    pub fn oldest_age(&self) -> std::time::Duration {
        self.oldest_unapplied
            .map(|at| (crate::clock::now() - at).to_std().unwrap_or_default())
            .unwrap_or_default()
    }
}

impl<P, T> Projector<P, T>
where
    T: ProjectionTarget,
    P: Projection<T::Tx>,
{
    /// Compares the data table with the live generation's checkpoints,
    /// within `scope`: what has been written and not yet applied. Reads
    /// every row in scope (and one history row per entity behind by more
    /// than one version): a check for operators and tests, not for every
    /// request.
    pub async fn lag(&self, scope: &Scope) -> Result<Lag> {
        let live = self.generations().await?.live;
        let mut lag = Lag::default();
        for tenant in &scope.tenants {
            let mut after = None;
            loop {
                let page = self
                    .storage()
                    .query_data(&scan_query(tenant, self.interest(), after, LAG_PAGE))
                    .await?;
                let items: Vec<_> = page
                    .items
                    .iter()
                    .filter(|item| in_interest(self.interest(), item))
                    .collect();
                let keys: Vec<_> = items.iter().map(|item| item.key()).collect();
                let checkpoints = if live == 0 || keys.is_empty() {
                    vec![0; keys.len()]
                } else {
                    self.target().checkpoints(self.name(), live, &keys).await?
                };
                for ((item, key), checkpoint) in items.iter().zip(&keys).zip(checkpoints) {
                    lag.entities += 1;
                    if item.version <= checkpoint {
                        continue;
                    }
                    lag.entities_behind += 1;
                    lag.events_behind += item.version - checkpoint;
                    let first_unapplied = checkpoint + 1;
                    let written = if first_unapplied == item.version {
                        item.updated_at
                    } else {
                        self.storage()
                            .get_history(key, first_unapplied)
                            .await?
                            .map_or(item.updated_at, |history| history.updated_at)
                    };
                    lag.oldest_unapplied =
                        Some(lag.oldest_unapplied.map_or(written, |oldest| oldest.min(written)));
                }
                match page.last_sk {
                    Some(sk) => after = Some(sk),
                    None => break,
                }
            }
        }
        Ok(lag)
    }
}
