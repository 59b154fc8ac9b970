//! Several consumers on one stream, against DynamoDB Local: shard leases
//! keep one consumer per shard, a killed consumer's shards are taken over
//! once its lease expires, a consumer whose lease was taken cannot move the
//! checkpoint, and replicas starting together all create their tables.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use common::*;
use cqrs_core::{tenant_pk, CommandInput, CommandService, CommandStatus, Engine};
use cqrs_dynamodb::stream::{
    now_millis, Acquired, DynamoDbLeases, LeaseStore, ShardCheckpoint, CHECKPOINT_PK_PREFIX,
};
use cqrs_dynamodb::{ensure_tables, local_client, TableNames};
use serde_json::json;

const MINUTE: Duration = Duration::from_secs(60);
const LEASE: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(100);

/// Publishes version 1 of each of `sks` asynchronously.
async fn publish_new(engine: &Engine, sks: &[String]) {
    for sk in sks {
        engine
            .publish_async(
                CommandInput::new(tenant_pk(TENANT), sk).attributes(json!({ "n": 1 })),
                &ctx(),
            )
            .await
            .expect("published");
    }
}

fn names(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}{i:03}")).collect()
}

#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test(flavor = "multi_thread")]
async fn two_consumers_lose_nothing_when_the_lease_holder_is_killed() {
    if !available() {
        return;
    }
    let storage = fresh_storage("leases-kill").await;
    let recorder = Recorder::new();
    // Each replica has its own engine; the handler's effects are recorded in one place.
    let publisher = engine(Arc::new(storage.clone()), recorder.clone());
    let replica = |id: &str| {
        consumer(&engine(Arc::new(storage.clone()), recorder.clone()), &storage)
            .consumer_id(id)
            .lease_duration(LEASE)
            .poll_interval(POLL)
            .max_concurrent_entities(8)
    };

    // Before: async commands, and sync publishes whose process died after
    // its write (`applied`, no handler run).
    let mut commands: BTreeSet<(String, u64)> = BTreeSet::new();
    let before = names("ORDER#A", 0..40);
    publish_new(&publisher, &before).await;
    for sk in names("ORDER#DEAD-A", 0..5) {
        insert_applied(&storage, &sk, json!({ "n": 1 })).await;
        commands.insert((sk, 1));
    }
    commands.extend(before.iter().map(|sk| (sk.clone(), 1)));

    let first = replica("replica-1");
    let second = replica("replica-2");
    let monitors = [first.monitor(), second.monitor()];
    let mut running = [Some(Running::start(first)), Some(Running::start(second))];
    wait_until("a consumer holds the shards", MINUTE, || {
        monitors.iter().any(|m| !m.owned_shards().is_empty())
    })
    .await;
    wait_until("some commands handled", MINUTE, || recorder.len() >= 10).await;

    // Kill the holder of the shards mid-stream: no release, no last checkpoint.
    let holder = usize::from(monitors[0].owned_shards().is_empty());
    let survivor = 1 - holder;
    let held: BTreeSet<String> = monitors[holder].owned_shards().into_iter().collect();
    let handled_at_kill = recorder.len();
    if let Some(killed) = running[holder].take() {
        killed.kill().await;
    }
    let killed_at = Instant::now();
    // Watched from now on, while the test publishes more.
    let watcher = {
        let survivor = monitors[survivor].clone();
        let held = held.clone();
        tokio::spawn(async move {
            loop {
                let owned: BTreeSet<String> = survivor.owned_shards().into_iter().collect();
                if held.is_subset(&owned) || survivor.stats().shards_finished > 0 {
                    return killed_at.elapsed();
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    // After: more of both, while nobody works the killed one's shards.
    let after = names("ORDER#B", 0..20);
    publish_new(&publisher, &after).await;
    commands.extend(after.iter().map(|sk| (sk.clone(), 1)));
    for sk in names("ORDER#DEAD-B", 0..5) {
        insert_applied(&storage, &sk, json!({ "n": 1 })).await;
        commands.insert((sk, 1));
    }

    let takeover = tokio::time::timeout(MINUTE, watcher)
        .await
        .expect("the survivor took the shards over")
        .expect("no panic");

    let expected = commands.len();
    wait_until("every command handled", MINUTE, || {
        let handled: BTreeSet<(String, u64)> = recorder.counts().into_keys().collect();
        handled.is_superset(&commands)
    })
    .await;
    wait_until_async("every command finished", MINUTE, || async {
        for (sk, version) in &commands {
            if status_of(&storage, sk, *version).await != Some(CommandStatus::Finished) {
                return false;
            }
        }
        true
    })
    .await;
    if let Some(survivor) = running[survivor].take() {
        survivor.stop(Duration::from_secs(10)).await;
    }

    let handled: BTreeSet<(String, u64)> = recorder.counts().into_keys().collect();
    let duplicates = recorder.duplicates();
    let stats = [monitors[0].stats(), monitors[1].stats()];
    println!(
        "two consumers, holder killed after {handled_at_kill} handled: {expected} commands, {} handled, \
         {duplicates} duplicates, takeover in {takeover:?} (lease {LEASE:?}, poll {POLL:?})\n\
         killed: {:?}\nsurvivor: {:?}",
        handled.len(),
        stats[holder],
        stats[survivor]
    );
    assert_eq!(handled, commands, "no command lost, none invented");
    assert!(
        takeover <= LEASE + 2 * POLL + Duration::from_secs(2),
        "takeover in {takeover:?}"
    );
    assert!(stats[survivor].leases_taken >= 1);
    // At least once: only a command in the middle of its handlers when the
    // holder died can run twice (at most one per entity lane, and the
    // watched rows of dead publishers).
    assert!(duplicates <= 8 + 10, "{duplicates} duplicates");
    let failures = publisher.list_failures(&ctx()).await.expect("failures");
    assert!(failures.is_empty(), "{failures:?}");
}

#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test(flavor = "multi_thread")]
async fn a_lease_is_not_taken_before_it_expires_and_a_fenced_owner_cannot_checkpoint() {
    if !available() {
        return;
    }
    let storage = fresh_storage("leases-fence").await;
    let store = DynamoDbLeases::new(storage.client().clone(), storage.tables());
    let arn = "arn:stream";
    let short = Duration::from_millis(1500);
    let at = |seq: &str| ShardCheckpoint {
        sequence_number: Some(seq.into()),
        finished: false,
    };

    assert_eq!(
        store.acquire(arn, "shard-x", "a", short).await.expect("acquire"),
        Acquired::Taken(ShardCheckpoint::default())
    );
    // Held: not taken, not renewed, not checkpointed by another.
    match store.acquire(arn, "shard-x", "b", short).await.expect("acquire") {
        Acquired::Held { owner, expires_at_ms } => {
            assert_eq!(owner, "a");
            assert!(expires_at_ms > now_millis());
        }
        taken => panic!("stolen before expiry: {taken:?}"),
    }
    assert!(!store.renew("shard-x", "b", short).await.expect("renew"));
    assert!(!store
        .checkpoint(arn, "shard-x", "b", &at("50"))
        .await
        .expect("fenced"));
    assert!(store.renew("shard-x", "a", short).await.expect("renew"));
    assert!(store
        .checkpoint(arn, "shard-x", "a", &at("100"))
        .await
        .expect("save"));
    assert!(matches!(
        store.acquire(arn, "shard-x", "b", short).await.expect("acquire"),
        Acquired::Held { .. }
    ));

    // Expired (a was paused, partitioned, or died): b takes it, with a's checkpoint.
    tokio::time::sleep(short + Duration::from_millis(300)).await;
    assert_eq!(
        store.acquire(arn, "shard-x", "b", short).await.expect("acquire"),
        Acquired::Taken(at("100"))
    );
    // a is fenced: it can neither move the checkpoint nor renew nor release.
    assert!(!store
        .checkpoint(arn, "shard-x", "a", &at("200"))
        .await
        .expect("fenced"));
    assert!(!store.renew("shard-x", "a", short).await.expect("renew"));
    store.release("shard-x", "a").await.expect("release");
    let stored = store.get(arn, "shard-x").await.expect("get").expect("stored");
    assert_eq!(stored.checkpoint, at("100"));
    assert_eq!(stored.lease.owner.as_deref(), Some("b"));
    // b gives it up on shutdown: a takes it at once.
    assert!(store
        .checkpoint(arn, "shard-x", "b", &at("300"))
        .await
        .expect("save"));
    store.release("shard-x", "b").await.expect("release");
    assert_eq!(
        store.acquire(arn, "shard-x", "a", short).await.expect("acquire"),
        Acquired::Taken(at("300"))
    );
}

#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_whose_lease_is_taken_stops_at_once_and_takes_the_shard_back_after_expiry() {
    if !available() {
        return;
    }
    let storage = fresh_storage("leases-stolen").await;
    let recorder = Recorder::new();
    let engine = engine(Arc::new(storage.clone()), recorder.clone());
    publish_new(&engine, &names("ORDER#A", 0..5)).await;
    let consumer = consumer(&engine, &storage).lease_duration(LEASE);
    let monitor = consumer.monitor();
    let running = Running::start(consumer);
    wait_until("5 handled", MINUTE, || recorder.len() >= 5).await;
    let shards = monitor.owned_shards();
    assert!(!shards.is_empty());

    // Another consumer holds the leases now, for 3 s (as after a clock jump or
    // a pause longer than the lease): the next renewal or checkpoint fails
    // its condition, and the consumer stops working those shards.
    let stolen_until = now_millis() + 3000;
    for shard in &shards {
        storage
            .client()
            .update_item()
            .table_name(&storage.tables().sequences)
            .key(
                "pk",
                AttributeValue::S(format!("{CHECKPOINT_PK_PREFIX}{}", storage.tables().command)),
            )
            .key("sk", AttributeValue::S(shard.clone()))
            .update_expression("SET leaseOwner = :other, leaseExpiresAt = :until")
            .expression_attribute_values(":other", AttributeValue::S("intruder".into()))
            .expression_attribute_values(":until", AttributeValue::N(stolen_until.to_string()))
            .send()
            .await
            .expect("lease taken");
    }
    wait_until("the consumer gave the shards up", MINUTE, || {
        monitor.owned_shards().is_empty()
    })
    .await;
    assert!(monitor.stats().leases_lost >= 1);
    let settled = monitor.stats().settled;

    // Published while the intruder holds the lease: not settled by the
    // fenced consumer; settled once it took the shard back after expiry.
    publish_new(&engine, &names("ORDER#B", 0..5)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    if now_millis() < stolen_until {
        assert_eq!(monitor.stats().settled, settled, "nothing settled while fenced");
    }
    wait_until("10 handled", MINUTE, || recorder.len() >= 10).await;
    assert!(
        now_millis() >= stolen_until,
        "taken back only after the intruder's lease expired"
    );
    running.stop(Duration::from_secs(10)).await;
    assert_each_once(&recorder);
}

#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test(flavor = "multi_thread")]
async fn replicas_creating_the_same_tables_at_once_all_succeed() {
    if !available() {
        return;
    }
    let endpoint = endpoint().expect("checked by available()");
    for _round in 0..2 {
        let names = TableNames::with_prefix(&prefix("leases-race"));
        let runs: Vec<_> = (0..4)
            .map(|_| {
                let client = local_client(&endpoint);
                let names = names.clone();
                tokio::spawn(async move { ensure_tables(&client, &names).await })
            })
            .collect();
        for run in runs {
            run.await.expect("no panic").expect("tables ensured");
        }
        // And again, on tables that exist.
        ensure_tables(&local_client(&endpoint), &names)
            .await
            .expect("idempotent");
        let client = local_client(&endpoint);
        for spec in names.specs() {
            let described = client.describe_table().table_name(&spec.name).send().await;
            assert!(described.is_ok(), "{}: {described:?}", spec.name);
            if spec.ttl {
                let ttl = client
                    .describe_time_to_live()
                    .table_name(&spec.name)
                    .send()
                    .await
                    .expect("described");
                assert_eq!(
                    ttl.time_to_live_description().and_then(|d| d.attribute_name()),
                    Some(cqrs_dynamodb::TTL_ATTRIBUTE)
                );
            }
        }
    }
}
