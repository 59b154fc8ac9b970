//! The suite's projection: amounts summed per group, each version counted.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{HarnessTx, TargetHarness};
use crate::error::BoxError;
use crate::handler::Interest;
use crate::projection::{Change, Projection};

/// The entity state the suite publishes: an amount in a group (an order
/// line's quantity for a product).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TallyState {
    /// The group the amount counts towards.
    pub group: String,
    /// The amount.
    pub amount: i64,
    /// The projection fails on this state (after writing) while
    /// [`Tally::poison`] is on.
    #[serde(default)]
    pub poisoned: bool,
}

/// The suite's projection, on any target through its harness. Tables:
/// - `totals`: `tenant/group` → the sum of the amounts of live entities;
/// - `applied`: `tenant/sk@version` → how many times that version was
///   applied (1, or the version was seen twice);
/// - `last`: `tenant/sk` → the last version applied;
/// - `regressions`: `count` → changes that arrived at or below the last
///   version applied (0, or the order broke).
pub struct Tally<H> {
    harness: Arc<H>,
    name: String,
    poison: Arc<AtomicBool>,
}

/// The tables of [`Tally`].
pub const TALLY_TABLES: [&str; 4] = ["totals", "applied", "last", "regressions"];

impl<H> Tally<H> {
    /// The projection `name`, over entities whose sk starts with `ITEM#`.
    pub fn new(harness: Arc<H>, name: &str) -> Self {
        Tally {
            harness,
            name: name.to_owned(),
            poison: Arc::new(AtomicBool::new(false)),
        }
    }

    /// While on, the projection fails on poisoned states (after writing).
    pub fn poison(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.poison)
    }
}

#[async_trait]
impl<H: TargetHarness> Projection<HarnessTx<H>> for Tally<H> {
    type State = TallyState;

    fn name(&self) -> &str {
        &self.name
    }

    fn interest(&self) -> Interest {
        Interest::SkPrefix("ITEM#".into())
    }

    fn tables(&self) -> Vec<String> {
        TALLY_TABLES.iter().map(|t| (*t).to_owned()).collect()
    }

    async fn create(&self, tx: &mut HarnessTx<H>) -> Result<(), BoxError> {
        for table in TALLY_TABLES {
            self.harness.create_table(tx, table).await?;
        }
        Ok(())
    }

    async fn apply(&self, tx: &mut HarnessTx<H>, change: &Change<TallyState>) -> Result<(), BoxError> {
        let h = &self.harness;
        let tenant = change.tenant();
        if let Some(old) = change.old_state() {
            h.add(tx, "totals", &format!("{tenant}/{}", old.group), -old.amount)
                .await?;
        }
        if let Some(new) = change.new_state() {
            h.add(tx, "totals", &format!("{tenant}/{}", new.group), new.amount)
                .await?;
        }
        let entity = format!("{tenant}/{}", change.key.sk);
        h.add(tx, "applied", &format!("{entity}@{}", change.version), 1)
            .await?;
        let last = h.get(tx, "last", &entity).await?.unwrap_or(0);
        if change.version as i64 <= last {
            h.add(tx, "regressions", "count", 1).await?;
        }
        h.add(tx, "last", &entity, change.version as i64 - last).await?;
        if change.new.attributes.poisoned && self.poison.load(Ordering::SeqCst) {
            return Err(format!("poisoned state at {}@{}", change.key, change.version).into());
        }
        Ok(())
    }
}
