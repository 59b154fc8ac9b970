//! The checks of the target conformance suite.
//!
//! Each publishes entities through an engine, delivers their events the
//! way a fault would (twice, late, from two consumers, racing a rebuild)
//! and compares what readers see with the data table, row for row.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::future::join_all;

use super::tally::{Tally, TallyState};
use super::TargetHarness;
use crate::engine::Engine;
use crate::handler::DataSyncEvent;
use crate::keys::{tenant_pk, EntityKey};
use crate::model::{CommandInput, ExpectedVersion};
use crate::projection::{Applied, Projector, Scope};
use crate::query::SkCondition;
use crate::services::{CommandService, DataService};
use crate::storage::{RangeQuery, Storage};
use crate::testing::fixtures::{ctx, fast_retry};
use crate::testing::{Fault, FaultyStorage, Op, Rule};

const TENANTS: [&str; 2] = ["shop-a", "shop-b"];

/// What a check runs on: one target, one storage, an engine over it
/// (without the projector), and the projection `tally`.
struct Rig<H: TargetHarness> {
    harness: Arc<H>,
    target: H::Target,
    storage: Arc<dyn Storage>,
    engine: Engine,
    tally: Projector<Tally<H>, H::Target>,
}

impl<H: TargetHarness + Clone> Rig<H> {
    async fn new(harness: &H) -> Self {
        let harness = Arc::new(harness.clone());
        let target = harness.target().await;
        let storage = harness.storage().await;
        let engine = Engine::builder(Arc::clone(&storage)).retry(fast_retry()).build();
        let tally = Projector::new(
            Tally::new(Arc::clone(&harness), "tally"),
            target.clone(),
            Arc::clone(&storage),
        );
        tally.prepare().await.expect("prepare the projection");
        Rig {
            harness,
            target,
            storage,
            engine,
            tally,
        }
    }

    /// Another consumer of the same projection (another process).
    fn consumer(&self) -> Projector<Tally<H>, H::Target> {
        Projector::new(
            Tally::new(Arc::clone(&self.harness), "tally"),
            self.target.clone(),
            Arc::clone(&self.storage),
        )
    }

    /// Writes version `version` of `ITEM#{n}` of `tenant`.
    async fn write(&self, tenant: &str, n: usize, version: u64, state: TallyState) {
        write_with(&self.engine, tenant, n, version, state, false).await;
    }

    /// Entities `0..entities` of each tenant, each taken to `versions`
    /// versions (the last of every fifth one a deletion).
    async fn seed(&self, entities: usize, versions: u64) {
        for tenant in TENANTS {
            for n in 0..entities {
                for version in 1..=versions {
                    let deleted = version == versions && versions > 1 && n % 5 == 4;
                    write_with(&self.engine, tenant, n, version, state_of(n, version), deleted).await;
                }
            }
        }
    }

    /// The event of `version` of `key`, as the pipeline delivers it.
    async fn event(&self, key: &EntityKey, version: u64) -> DataSyncEvent {
        event_of(&self.storage, key, version).await
    }

    /// Every event of every entity in scope, by entity then version.
    async fn all_events(&self) -> Vec<DataSyncEvent> {
        let mut events = Vec::new();
        for item in data_rows(&self.storage).await {
            for version in 1..=item.version {
                events.push(self.event(&item.key(), version).await);
            }
        }
        events
    }

    /// Asserts that readers see exactly the read model the data table gives:
    /// totals per group, every version applied at most once, the last
    /// version of every entity, no regression.
    async fn assert_exact(&self) {
        assert_read_model(&*self.harness, &self.target, "tally", &self.storage, true).await;
    }
}

async fn write_with(engine: &Engine, tenant: &str, n: usize, version: u64, state: TallyState, deleted: bool) {
    let command = CommandInput::new(tenant_pk(tenant), format!("ITEM#{n:04}"))
        .attributes(serde_json::to_value(&state).expect("plain state"))
        .deleted(deleted)
        .version(ExpectedVersion::Exactly(version - 1));
    let synced = engine.publish_sync(command, &ctx(tenant)).await.expect("publish");
    assert!(!synced.handled().is_failed(), "{:?}", synced.handled());
}

fn state_of(n: usize, version: u64) -> TallyState {
    TallyState {
        group: format!("G{}", (n + version as usize) % 3),
        amount: (n as i64 % 7) + version as i64,
        poisoned: false,
    }
}

async fn data_rows(storage: &Arc<dyn Storage>) -> Vec<crate::model::DataItem> {
    let mut rows = Vec::new();
    for tenant in TENANTS {
        let mut after = None;
        loop {
            let page = storage
                .query_data(&RangeQuery {
                    pk: tenant_pk(tenant),
                    sk: Some(SkCondition::BeginsWith("ITEM#".into())),
                    order: Default::default(),
                    start_after: after,
                    limit: 100,
                })
                .await
                .expect("scan");
            rows.extend(page.items);
            match page.last_sk {
                Some(sk) => after = Some(sk),
                None => break,
            }
        }
    }
    rows
}

async fn event_of(storage: &Arc<dyn Storage>, key: &EntityKey, version: u64) -> DataSyncEvent {
    let state_at = |v: u64| async move {
        match storage.get_history(key, v).await.expect("history") {
            Some(item) => item,
            None => {
                let data = storage.get_data(key).await.expect("data").expect("data row");
                assert_eq!(
                    data.version, v,
                    "version {v} of {key} is neither history nor current"
                );
                data
            }
        }
    };
    let command = storage
        .get_command(key, version)
        .await
        .expect("command")
        .expect("command row");
    let old = if version > 1 {
        Some(state_at(version - 1).await)
    } else {
        None
    };
    let tenant = crate::keys::tenant_of_pk(&key.pk).unwrap_or_default().to_owned();
    DataSyncEvent {
        command,
        old,
        new: state_at(version).await,
        context: ctx(&tenant),
        attempt: 1,
    }
}

/// The read model the data table gives: `tenant/group` → amount of the
/// live entities (groups summing to 0 left out), and `tenant/sk` → version.
async fn expected(storage: &Arc<dyn Storage>) -> (BTreeMap<String, i64>, BTreeMap<String, i64>) {
    let mut totals = BTreeMap::new();
    let mut last = BTreeMap::new();
    for item in data_rows(storage).await {
        let tenant = crate::keys::tenant_of_pk(&item.pk).unwrap_or_default();
        last.insert(format!("{tenant}/{}", item.sk), item.version as i64);
        if !item.is_deleted {
            let state: TallyState = item.attributes_as().expect("tally state");
            *totals.entry(format!("{tenant}/{}", state.group)).or_insert(0) += state.amount;
        }
    }
    totals.retain(|_, v| *v != 0);
    (totals, last)
}

async fn assert_read_model<H: TargetHarness>(
    harness: &H,
    target: &H::Target,
    projection: &str,
    storage: &Arc<dyn Storage>,
    every_version: bool,
) {
    let (want_totals, want_last) = expected(storage).await;
    let mut totals = harness.read(target, projection, "totals").await;
    totals.retain(|_, v| *v != 0);
    assert_eq!(
        totals, want_totals,
        "totals readers see differ from the data table's"
    );
    let last = harness.read(target, projection, "last").await;
    assert_eq!(
        last, want_last,
        "last versions readers see differ from the data table's"
    );
    let doubled: Vec<_> = harness
        .read(target, projection, "applied")
        .await
        .into_iter()
        .filter(|(_, n)| *n != 1)
        .collect();
    assert!(doubled.is_empty(), "versions applied more than once: {doubled:?}");
    let regressions = harness.read(target, projection, "regressions").await;
    assert_eq!(
        regressions.get("count").copied().unwrap_or(0),
        0,
        "changes applied out of order"
    );
    if every_version {
        let applied = harness.read(target, projection, "applied").await.len() as i64;
        assert_eq!(applied, want_last.values().sum::<i64>(), "versions applied");
    }
}

/// Each version delivered once, in order: applied once, read model exact.
pub async fn projection_applies_each_version_once<H: TargetHarness + Clone>(harness: &H) {
    let rig = Rig::new(harness).await;
    rig.seed(6, 3).await;
    let events = rig.all_events().await;
    for event in &events {
        assert!(matches!(
            rig.tally.apply(event).await.unwrap(),
            Applied::Changed { versions: 1 }
        ));
    }
    rig.assert_exact().await;
    let stats = rig.tally.stats();
    assert_eq!(
        (stats.events, stats.versions, stats.skipped),
        (events.len() as u64, events.len() as u64, 0)
    );
}

/// Every event delivered three times, concurrently: skipped twice each.
pub async fn projection_skips_duplicates<H: TargetHarness + Clone>(harness: &H) {
    let rig = Rig::new(harness).await;
    rig.seed(5, 3).await;
    let events = rig.all_events().await;
    for event in &events {
        let results = join_all((0..3).map(|_| rig.tally.apply(event))).await;
        let changed = results
            .iter()
            .filter(|r| matches!(r, Ok(Applied::Changed { .. })))
            .count();
        let skipped = results
            .iter()
            .filter(|r| matches!(r, Ok(Applied::Skipped)))
            .count();
        assert_eq!((changed, skipped), (1, 2), "{results:?}");
    }
    rig.assert_exact().await;
    assert_eq!(rig.tally.stats().skipped, 2 * events.len() as u64);
}

/// A later version first: the ones before it come from history, in order;
/// the late ones are skipped when they come; never an older after a newer.
pub async fn projection_fills_versions_out_of_order<H: TargetHarness + Clone>(harness: &H) {
    let rig = Rig::new(harness).await;
    rig.seed(4, 5).await;
    for item in data_rows(&rig.storage).await {
        let key = item.key();
        // 1, then 5, then 4, 3, 2 (late), then 1 again.
        rig.tally.apply(&rig.event(&key, 1).await).await.unwrap();
        let filled = rig.tally.apply(&rig.event(&key, 5).await).await.unwrap();
        assert_eq!(
            filled,
            Applied::Changed { versions: 4 },
            "2, 3 and 4 from history, then 5"
        );
        for version in [4, 3, 2, 1] {
            assert_eq!(
                rig.tally.apply(&rig.event(&key, version).await).await.unwrap(),
                Applied::Skipped
            );
        }
    }
    rig.assert_exact().await;
    let stats = rig.tally.stats();
    assert_eq!(stats.from_history, 3 * 8);
    assert_eq!(stats.skipped, 4 * 8);
}

/// A projection that fails after writing: nothing of it is kept, the
/// checkpoint does not move, and the next delivery applies it once.
pub async fn projection_leaves_nothing_of_a_crash_before_commit<H: TargetHarness + Clone>(harness: &H) {
    let rig = Rig::new(harness).await;
    let poison = rig.tally.projection().poison();
    rig.write(
        "shop-a",
        0,
        1,
        TallyState {
            group: "G".into(),
            amount: 5,
            poisoned: false,
        },
    )
    .await;
    rig.write(
        "shop-a",
        0,
        2,
        TallyState {
            group: "H".into(),
            amount: 7,
            poisoned: true,
        },
    )
    .await;
    let key = EntityKey::new(tenant_pk("shop-a"), "ITEM#0000");
    rig.tally.apply(&rig.event(&key, 1).await).await.unwrap();
    poison.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        let failed = rig.tally.apply(&rig.event(&key, 2).await).await;
        assert!(failed.is_err(), "a failing projection fails the event");
    }
    let totals = rig.harness.read(&rig.target, "tally", "totals").await;
    assert_eq!(
        totals.get("shop-a/G"),
        Some(&5),
        "the failed change left the old total"
    );
    assert_eq!(
        totals.get("shop-a/H").copied().unwrap_or(0),
        0,
        "nothing of the failed change was kept"
    );
    assert_eq!(rig.tally.stats().failed, 3);
    poison.store(false, Ordering::SeqCst);
    assert_eq!(
        rig.tally.apply(&rig.event(&key, 2).await).await.unwrap(),
        Applied::Changed { versions: 1 }
    );
    rig.assert_exact().await;
}

/// The effect commits, the acknowledgement is lost (the process dies), the
/// stream delivers the batch again to a new process: skipped.
pub async fn projection_survives_a_lost_acknowledgement<H: TargetHarness + Clone>(harness: &H) {
    let rig = Rig::new(harness).await;
    rig.seed(5, 2).await;
    let events = rig.all_events().await;
    let (first, rest) = events.split_at(events.len() / 2);
    for event in first {
        rig.tally.apply(event).await.unwrap();
    }
    // The restarted process: a new projector, the whole batch again.
    let restarted = rig.consumer();
    let mut skipped = 0;
    for event in first.iter().chain(rest) {
        if restarted.apply(event).await.unwrap() == Applied::Skipped {
            skipped += 1;
        }
    }
    assert_eq!(skipped, first.len());
    rig.assert_exact().await;
}

/// Two consumers (two processes) given every event, concurrently, in
/// opposite orders: each version applied once.
pub async fn projection_with_two_consumers_applies_once<H: TargetHarness + Clone>(harness: &H) {
    let rig = Rig::new(harness).await;
    rig.seed(8, 3).await;
    let events = rig.all_events().await;
    let other = rig.consumer();
    let forward = async {
        for event in &events {
            rig.tally.apply(event).await.unwrap();
        }
    };
    let backward = async {
        for event in events.iter().rev() {
            other.apply(event).await.unwrap();
        }
    };
    tokio::join!(forward, backward);
    rig.assert_exact().await;
    let (a, b) = (rig.tally.stats(), other.stats());
    assert_eq!(
        a.events + b.events + a.skipped + b.skipped,
        2 * events.len() as u64
    );
}

/// The same keys in two tenants: their checkpoints and rows are apart, and
/// a rebuild scoped to one tenant reads only its rows.
pub async fn projection_keeps_tenants_apart<H: TargetHarness + Clone>(harness: &H) {
    let rig = Rig::new(harness).await;
    rig.write(
        "shop-a",
        0,
        1,
        TallyState {
            group: "G".into(),
            amount: 3,
            poisoned: false,
        },
    )
    .await;
    rig.write(
        "shop-b",
        0,
        1,
        TallyState {
            group: "G".into(),
            amount: 4,
            poisoned: false,
        },
    )
    .await;
    let a = EntityKey::new(tenant_pk("shop-a"), "ITEM#0000");
    let b = EntityKey::new(tenant_pk("shop-b"), "ITEM#0000");
    rig.tally.apply(&rig.event(&a, 1).await).await.unwrap();
    // shop-b's version 1 is not shop-a's: applied, not skipped.
    assert_eq!(
        rig.tally.apply(&rig.event(&b, 1).await).await.unwrap(),
        Applied::Changed { versions: 1 }
    );
    let totals = rig.harness.read(&rig.target, "tally", "totals").await;
    assert_eq!(
        (totals.get("shop-a/G"), totals.get("shop-b/G")),
        (Some(&3), Some(&4))
    );

    let rebuilt = rig.tally.rebuild(Scope::tenants(["shop-b"])).run().await.unwrap();
    assert_eq!(rebuilt.rows, 1);
    let totals = rig.harness.read(&rig.target, "tally", "totals").await;
    assert_eq!(
        totals.get("shop-a/G"),
        None,
        "a rebuild of shop-b reads none of shop-a"
    );
    assert_eq!(totals.get("shop-b/G"), Some(&4));
}

/// Through the pipeline: the projection fails on an event, the event is
/// recorded as failed with the projection's name, nothing of it is written;
/// reprocessed once the projection is fixed, it is applied once.
pub async fn projection_failure_is_recorded_and_reprocessable<H: TargetHarness + Clone>(harness: &H) {
    let rig = Rig::new(harness).await;
    let poison = rig.tally.projection().poison();
    poison.store(true, Ordering::SeqCst);
    let engine = Engine::builder(Arc::clone(&rig.storage))
        .retry(fast_retry())
        .handler(rig.tally.clone())
        .build();
    let a = ctx("shop-a");
    let publish = |n: usize, state: TallyState| {
        CommandInput::new(tenant_pk("shop-a"), format!("ITEM#{n:04}"))
            .attributes(serde_json::to_value(state).unwrap())
    };
    engine
        .publish_sync(
            publish(
                0,
                TallyState {
                    group: "G".into(),
                    amount: 2,
                    poisoned: false,
                },
            ),
            &a,
        )
        .await
        .unwrap();
    let failed = engine
        .publish_sync(
            publish(
                1,
                TallyState {
                    group: "G".into(),
                    amount: 40,
                    poisoned: true,
                },
            ),
            &a,
        )
        .await
        .unwrap();
    assert!(
        failed.handled().is_failed(),
        "the projection's failure is reported: {:?}",
        failed.handled()
    );
    let failures = engine.list_failures(&a).await.unwrap();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].failures[0].handler, "tally");
    let totals = rig.harness.read(&rig.target, "tally", "totals").await;
    assert_eq!(
        totals.get("shop-a/G"),
        Some(&2),
        "nothing of the failed event is written"
    );

    poison.store(false, Ordering::SeqCst);
    engine
        .reprocess(&failures[0].key(), failures[0].version, &a)
        .await
        .unwrap();
    engine
        .reprocess(&failures[0].key(), failures[0].version, &a)
        .await
        .unwrap();
    assert!(engine.list_failures(&a).await.unwrap().is_empty());
    rig.assert_exact().await;
}

/// A rebuild into a new generation while writers keep publishing through
/// an engine that feeds the projection: the switch leaves readers on a
/// generation equal to the data table, with no version applied twice.
pub async fn projection_rebuild_races_live_writes<H: TargetHarness + Clone>(harness: &H) {
    let rig = Rig::new(harness).await;
    let live = Engine::builder(Arc::clone(&rig.storage))
        .retry(fast_retry())
        .handler(rig.tally.clone())
        .build();
    // Seeded before the projection was fed: only a rebuild brings them in.
    rig.seed(30, 2).await;
    let live = &live;
    let writers = async {
        for round in 0..3u64 {
            let mut writes = Vec::new();
            for tenant in TENANTS {
                for n in (0..40).filter(|n| n % 3 == round as usize) {
                    writes.push(async move {
                        let ctx = ctx(tenant);
                        let key = EntityKey::new(tenant_pk(tenant), format!("ITEM#{n:04}"));
                        let current = live
                            .get_item(&key, &ctx)
                            .await
                            .unwrap()
                            .map_or(0, |item| item.version);
                        write_with(
                            live,
                            tenant,
                            n,
                            current + 1,
                            state_of(n, current + 1 + round),
                            false,
                        )
                        .await;
                    });
                }
            }
            join_all(writes).await;
            tokio::task::yield_now().await;
        }
    };
    let rebuild = rig.tally.rebuild(Scope::tenants(TENANTS)).batch(7).run();
    let (rebuilt, ()) = tokio::join!(rebuild, writers);
    let rebuilt = rebuilt.unwrap();
    assert_eq!(rebuilt.generation, 2);
    assert_eq!(rebuilt.replaced, 1);
    assert_eq!(rig.tally.generations().await.unwrap().live, 2);
    // Writes after the switch reach the new generation.
    rig.write(
        "shop-a",
        99,
        1,
        TallyState {
            group: "G9".into(),
            amount: 9,
            poisoned: false,
        },
    )
    .await;
    let key = EntityKey::new(tenant_pk("shop-a"), "ITEM#0099");
    rig.tally.apply(&rig.event(&key, 1).await).await.unwrap();
    // A rebuilt generation sees entities from their state at the scan: not
    // every version, but each once and in order.
    assert_read_model(&*rig.harness, &rig.target, "tally", &rig.storage, false).await;
}

/// A rebuild whose storage fails after two batches (its run ends there, as
/// a crash would end it) resumes where it stopped when run again, reads
/// only what was left, and ends exact.
pub async fn projection_rebuild_resumes_after_a_crash<H: TargetHarness + Clone>(harness: &H) {
    let rig = Rig::new(harness).await;
    rig.seed(25, 2).await;
    let faulty = Arc::new(FaultyStorage::new(Arc::clone(&rig.storage)));
    let failing = Projector::new(
        Tally::new(Arc::clone(&rig.harness), "tally"),
        rig.target.clone(),
        Arc::clone(&faulty) as Arc<dyn Storage>,
    );
    // Two reads count the rows in scope (one per tenant), two read batches;
    // the next read fails.
    faulty.inject(Rule::new(Fault::Unavailable).on(&[Op::QueryData]).after(4));
    let stopped = failing.rebuild(Scope::tenants(TENANTS)).batch(10).run().await;
    assert!(stopped.is_err(), "the rebuild stopped at the fault: {stopped:?}");
    let progress = rig
        .tally
        .rebuild_progress()
        .await
        .unwrap()
        .expect("a rebuild under way");
    assert_eq!(
        (progress.done, progress.total),
        (20, 50),
        "two batches of ten committed"
    );
    // Readers still see the first generation.
    assert_eq!(rig.tally.generations().await.unwrap().live, 1);

    let rebuilt = rig
        .tally
        .rebuild(Scope::tenants(TENANTS))
        .batch(10)
        .run()
        .await
        .unwrap();
    assert!(rebuilt.resumed);
    assert_eq!(
        (rebuilt.rows, rebuilt.applied),
        (50, 30),
        "the resumed run read only what was left"
    );
    assert_read_model(&*rig.harness, &rig.target, "tally", &rig.storage, false).await;
    assert!(rig.tally.rebuild_progress().await.unwrap().is_none());
    // Another scope while one is under way is refused; none is now.
    let again = rig.tally.rebuild(Scope::tenants(["shop-a"])).run().await.unwrap();
    assert_eq!(again.rows, 25);
}

/// Lag: versions written and not applied, and when the oldest was written.
pub async fn projection_lag_counts_what_is_not_applied<H: TargetHarness + Clone>(harness: &H) {
    let rig = Rig::new(harness).await;
    let scope = Scope::tenants(TENANTS);
    let before = chrono::Utc::now();
    rig.seed(3, 3).await;
    let lag = rig.tally.lag(&scope).await.unwrap();
    assert_eq!((lag.entities, lag.entities_behind, lag.events_behind), (6, 6, 18));
    let oldest = lag.oldest_unapplied.expect("something is behind");
    assert!(oldest >= before && oldest <= chrono::Utc::now());

    let events = rig.all_events().await;
    // Everything but the last version of each entity.
    for event in events.iter().filter(|e| e.command.version < 3) {
        rig.tally.apply(event).await.unwrap();
    }
    let lag = rig.tally.lag(&scope).await.unwrap();
    assert_eq!((lag.entities_behind, lag.events_behind), (6, 6));
    for event in &events {
        rig.tally.apply(event).await.unwrap();
    }
    let lag = rig.tally.lag(&scope).await.unwrap();
    assert_eq!(
        (lag.entities_behind, lag.events_behind, lag.oldest_unapplied),
        (0, 0, None)
    );
    assert_eq!(lag.oldest_age(), std::time::Duration::ZERO);
}
