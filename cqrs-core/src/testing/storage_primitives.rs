//! The storage primitives themselves: every condition, and atomicity.
//!
//! The engine checks versions before writing, so an engine-level test rarely
//! reaches a backend's conditions; these checks call them directly.

use chrono::Utc;
use serde_json::json;

use super::fixtures::{ctx, PK_A};
use super::StorageFactory;
use crate::engine::records::{command_record, data_item};
use crate::error::Error;
use crate::keys::EntityKey;
use crate::model::{CommandInput, CommandRecord, CommandStatus, DataItem};
use crate::query::{SkCondition, SortOrder};
use crate::sequence::Counter;
use crate::storage::{ApplyWrite, CommandWrite, RangeQuery};

fn record(sk: &str, version: u64, status: CommandStatus) -> CommandRecord {
    let input = CommandInput::new(PK_A, sk).attributes(json!({ "v": version }));
    command_record(input, version, status, &ctx("shop-a"), Utc::now())
}

fn insert(sk: &str, version: u64, previous: Option<&DataItem>) -> ApplyWrite {
    let command = record(sk, version, CommandStatus::Applied);
    ApplyWrite {
        data: data_item(&command, previous),
        command: CommandWrite::Insert(Box::new(command)),
        expected_data_version: previous.map_or(0, |p| p.version),
        history: previous.cloned(),
        idempotency: None,
        indexes: Vec::new(),
    }
}

fn conflict_actual(err: Error) -> Option<u64> {
    match err {
        Error::Conflict { actual, .. } => actual,
        other => panic!("expected a conflict, got {other:?}"),
    }
}

/// `put_command`: a version is stored once, and only after its predecessor.
pub async fn storage_put_command_conditions(factory: &dyn StorageFactory) {
    let storage = factory.storage().await;
    let key = EntityKey::new(PK_A, "P#1");
    let err = storage
        .put_command(&record("P#1", 2, CommandStatus::Published), None)
        .await
        .unwrap_err();
    assert_eq!(conflict_actual(err), None, "version 2 needs version 1");
    storage
        .put_command(&record("P#1", 1, CommandStatus::Published), None)
        .await
        .unwrap();
    let err = storage
        .put_command(&record("P#1", 1, CommandStatus::Published), None)
        .await
        .unwrap_err();
    assert_eq!(conflict_actual(err), Some(1));
    storage
        .put_command(&record("P#1", 2, CommandStatus::Published), None)
        .await
        .unwrap();
    let err = storage
        .put_command(&record("P#1", 4, CommandStatus::Published), None)
        .await
        .unwrap_err();
    assert_eq!(conflict_actual(err), Some(2));
    let versions: Vec<u64> = storage
        .list_commands(&key)
        .await
        .unwrap()
        .iter()
        .map(|c| c.version)
        .collect();
    assert_eq!(versions, [1, 2]);
    assert_eq!(
        storage.latest_command(&key, None).await.unwrap().unwrap().version,
        2
    );
    storage
        .set_command_status(&key, 2, CommandStatus::Failed)
        .await
        .unwrap();
    assert_eq!(
        storage.get_command(&key, 2).await.unwrap().unwrap().status,
        CommandStatus::Failed
    );
    assert!(storage
        .set_command_status(&key, 3, CommandStatus::Failed)
        .await
        .unwrap_err()
        .is_not_found());
}

/// A command's `traceparent` (see [`crate::trace`]) is stored with it and
/// read back, before and after it is applied, and the row keeps it when its
/// status changes: the process that applies the command continues the trace.
pub async fn storage_keeps_the_trace_context(factory: &dyn StorageFactory) {
    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let storage = factory.storage().await;
    let traced = |sk: &str, version, status| {
        let mut command = record(sk, version, status);
        command.traceparent = Some(TRACEPARENT.into());
        command
    };
    // An async publish: stored `published`, applied later.
    let key = EntityKey::new(PK_A, "T#1");
    let published = traced("T#1", 1, CommandStatus::Published);
    storage.put_command(&published, None).await.unwrap();
    let read = storage.get_command(&key, 1).await.unwrap().unwrap();
    assert_eq!(read.traceparent.as_deref(), Some(TRACEPARENT));
    let data = data_item(&published, None);
    let apply = ApplyWrite {
        data,
        command: CommandWrite::MarkApplied,
        expected_data_version: 0,
        history: None,
        idempotency: None,
        indexes: Vec::new(),
    };
    storage.apply(&[apply]).await.unwrap();
    storage
        .set_command_status(&key, 1, CommandStatus::Finished)
        .await
        .unwrap();
    let read = storage.get_command(&key, 1).await.unwrap().unwrap();
    assert_eq!(read.status, CommandStatus::Finished);
    assert_eq!(
        read.traceparent.as_deref(),
        Some(TRACEPARENT),
        "kept once applied"
    );

    // A sync publish: inserted with its data row.
    let mut write = insert("T#2", 1, None);
    if let CommandWrite::Insert(command) = &mut write.command {
        command.traceparent = Some(TRACEPARENT.into());
    }
    storage.apply(&[write]).await.unwrap();
    let key = EntityKey::new(PK_A, "T#2");
    let read = storage.list_commands(&key).await.unwrap();
    assert_eq!(read[0].traceparent.as_deref(), Some(TRACEPARENT));

    // Without a trace, the row has none.
    storage.apply(&[insert("T#3", 1, None)]).await.unwrap();
    let read = storage
        .get_command(&EntityKey::new(PK_A, "T#3"), 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.traceparent, None);
}

/// `apply`: every condition is checked, and a failing write in a batch
/// leaves every row of the batch untouched.
pub async fn storage_apply_is_conditional_and_atomic(factory: &dyn StorageFactory) {
    let storage = factory.storage().await;
    let a = EntityKey::new(PK_A, "A#1");
    storage.apply(&[insert("A#1", 1, None)]).await.unwrap();
    let a1 = storage.get_data(&a).await.unwrap().unwrap();
    assert_eq!(a1.version, 1);
    assert_eq!(
        storage.get_command(&a, 1).await.unwrap().unwrap().status,
        CommandStatus::Applied
    );

    // The data row is not at the expected version.
    let err = storage.apply(&[insert("A#1", 1, None)]).await.unwrap_err();
    assert_eq!(conflict_actual(err), Some(1));
    let mut stale = insert("A#1", 3, Some(&a1));
    stale.expected_data_version = 2;
    assert_eq!(
        conflict_actual(storage.apply(&[stale]).await.unwrap_err()),
        Some(1)
    );

    // The command row exists already (a pending async command owns the version).
    storage
        .put_command(&record("A#1", 2, CommandStatus::Published), None)
        .await
        .unwrap();
    let err = storage.apply(&[insert("A#1", 2, Some(&a1))]).await.unwrap_err();
    assert_eq!(conflict_actual(err), Some(2));

    // Marking a command applied needs the command row.
    let missing = record("B#1", 1, CommandStatus::Published);
    let mark_missing = ApplyWrite {
        data: data_item(&missing, None),
        command: CommandWrite::MarkApplied,
        expected_data_version: 0,
        history: None,
        idempotency: None,
        indexes: Vec::new(),
    };
    assert!(storage.apply(&[mark_missing]).await.is_err());

    // A batch whose last write fails writes nothing, not even its first.
    let pending = storage.get_command(&a, 2).await.unwrap().unwrap();
    let mark_a2 = ApplyWrite {
        data: data_item(&pending, Some(&a1)),
        command: CommandWrite::MarkApplied,
        expected_data_version: 1,
        history: Some(a1.clone()),
        idempotency: None,
        indexes: Vec::new(),
    };
    let c_new = insert("C#1", 1, None);
    let a_stale = insert("A#1", 1, None);
    assert!(storage
        .apply(&[mark_a2.clone(), c_new.clone(), a_stale])
        .await
        .unwrap_err()
        .is_conflict());
    assert_eq!(storage.get_data(&a).await.unwrap().unwrap().version, 1);
    assert_eq!(
        storage.get_command(&a, 2).await.unwrap().unwrap().status,
        CommandStatus::Published
    );
    assert!(storage.get_history(&a, 1).await.unwrap().is_none());
    let c = EntityKey::new(PK_A, "C#1");
    assert!(storage.get_data(&c).await.unwrap().is_none());
    assert!(storage.get_command(&c, 1).await.unwrap().is_none());

    // The same batch without the stale write goes through whole.
    storage.apply(&[mark_a2, c_new]).await.unwrap();
    assert_eq!(storage.get_data(&a).await.unwrap().unwrap().version, 2);
    assert_eq!(
        storage.get_command(&a, 2).await.unwrap().unwrap().status,
        CommandStatus::Applied
    );
    assert_eq!(storage.get_history(&a, 1).await.unwrap(), Some(a1.clone()));
    assert_eq!(storage.list_history(&a).await.unwrap(), vec![a1]);
    assert_eq!(storage.get_data(&c).await.unwrap().unwrap().version, 1);
}

/// `apply_one`: the conditions of `apply`, the data row given back; and
/// whichever way a write is given, the history row stored is the one given.
pub async fn storage_apply_one_matches_apply(factory: &dyn StorageFactory) {
    let storage = factory.storage().await;
    let a = EntityKey::new(PK_A, "O#1");
    let first = insert("O#1", 1, None);
    let row = storage.apply_one(Box::new(first.clone())).await.unwrap();
    assert_eq!(row, first.data);
    let a1 = storage.get_data(&a).await.unwrap().unwrap();
    assert_eq!(a1, first.data);
    assert_eq!(
        storage.get_command(&a, 1).await.unwrap().map(|c| c.status),
        Some(CommandStatus::Applied)
    );

    // A failing write in a batch: nothing is written.
    let b_new = insert("O#2", 1, None);
    let a_stale = insert("O#1", 1, None);
    let err = storage.apply(&[b_new, a_stale]).await.unwrap_err();
    assert_eq!(conflict_actual(err), Some(1));
    assert!(storage
        .get_data(&EntityKey::new(PK_A, "O#2"))
        .await
        .unwrap()
        .is_none());

    // Version 2 over version 1: history keeps version 1.
    let second = insert("O#1", 2, Some(&a1));
    let row = storage.apply_one(Box::new(second.clone())).await.unwrap();
    assert_eq!(row, second.data);
    assert_eq!(storage.get_data(&a).await.unwrap(), Some(second.data.clone()));
    assert_eq!(storage.list_history(&a).await.unwrap(), vec![a1]);

    // A history row that is not the stored data row is stored as given, by
    // `apply` and `apply_one`.
    for (version, way) in [(3, "apply"), (4, "apply_one")] {
        let current = storage.get_data(&a).await.unwrap().unwrap();
        let mut write = insert("O#1", version, Some(&current));
        let history = write.history.as_mut().unwrap();
        history.attributes = json!({ "given": version }).into();
        let given = history.clone();
        let data = write.data.clone();
        match way {
            "apply" => storage.apply(&[write]).await.unwrap(),
            _ => assert_eq!(storage.apply_one(Box::new(write)).await.unwrap(), data),
        }
        assert_eq!(storage.get_history(&a, version - 1).await.unwrap(), Some(given));
    }

    // `apply_one` is as conditional as the others: a stale write is refused.
    let current = storage.get_data(&a).await.unwrap().unwrap();
    let stale = insert("O#1", current.version, Some(&current));
    assert_eq!(
        conflict_actual(storage.apply_one(Box::new(stale)).await.unwrap_err()),
        Some(current.version)
    );
    assert_eq!(storage.get_data(&a).await.unwrap(), Some(current));
}

/// `query_data`: ranges, order, `start_after` and `last_sk`.
pub async fn storage_query_ranges(factory: &dyn StorageFactory) {
    let storage = factory.storage().await;
    for sk in ["A#1", "A#2", "A#3", "B#1"] {
        storage.apply(&[insert(sk, 1, None)]).await.unwrap();
    }
    let query = |sk: Option<SkCondition>, order, start_after: Option<&str>, limit| RangeQuery {
        pk: PK_A.to_owned(),
        sk,
        order,
        start_after: start_after.map(str::to_owned),
        limit,
    };
    let sks = |items: Vec<DataItem>| items.into_iter().map(|i| i.sk).collect::<Vec<_>>();
    let prefix = Some(SkCondition::BeginsWith("A#".into()));
    let page = storage
        .query_data(&query(prefix.clone(), SortOrder::Ascending, None, 2))
        .await
        .unwrap();
    assert_eq!(page.last_sk.as_deref(), Some("A#2"));
    assert_eq!(sks(page.items), ["A#1", "A#2"]);
    let page = storage
        .query_data(&query(prefix.clone(), SortOrder::Ascending, Some("A#2"), 2))
        .await
        .unwrap();
    assert_eq!(sks(page.items), ["A#3"]);
    assert_eq!(page.last_sk, None);
    let page = storage
        .query_data(&query(prefix.clone(), SortOrder::Descending, Some("A#3"), 5))
        .await
        .unwrap();
    assert_eq!(sks(page.items), ["A#2", "A#1"]);
    let page = storage
        .query_data(&query(None, SortOrder::Descending, None, 10))
        .await
        .unwrap();
    assert_eq!(sks(page.items), ["B#1", "A#3", "A#2", "A#1"]);
    let other = RangeQuery {
        pk: "TENANT#nobody".into(),
        ..query(None, SortOrder::Ascending, None, 10)
    };
    assert!(storage.query_data(&other).await.unwrap().items.is_empty());
}

/// Counters start at 1 and are independent per key; a new counter goes on
/// from the count at its legacy key, once.
pub async fn storage_counters(factory: &dyn StorageFactory) {
    let storage = factory.storage().await;
    let next = |pk: &str, sk: &str| {
        let counter = Counter::new(pk, sk);
        let storage = storage.clone();
        async move { storage.next_counter(&counter).await.unwrap() }
    };
    assert_eq!(next("SEQ#a", "ORDER#none").await, 1);
    assert_eq!(next("SEQ#a", "ORDER#none").await, 2);
    assert_eq!(next("SEQ#a", "INVOICE#none").await, 1);
    assert_eq!(next("SEQ#b", "ORDER#none").await, 1);

    // A counter of the old layout, at 3: the new one continues from it.
    for _ in 0..3 {
        next("SEQ#a", "QUOTE").await;
    }
    let moved = Counter {
        legacy_sk: "QUOTE".into(),
        ..Counter::new("SEQ#a", "QUOTE#none")
    };
    assert_eq!(storage.next_counter(&moved).await.unwrap(), 4);
    assert_eq!(storage.next_counter(&moved).await.unwrap(), 5, "seeded once");
    let fresh = Counter {
        legacy_sk: "NOTHING".into(),
        ..Counter::new("SEQ#a", "NOTHING#none")
    };
    assert_eq!(storage.next_counter(&fresh).await.unwrap(), 1);
}

/// `set_command_status`: sets any status, except that `failed` never
/// replaces `finished` (a late write of an earlier run's failure, after an
/// operator's reprocess finished the command, changes nothing); a missing
/// row is `NotFound`. (Found by the deterministic simulation: the late
/// write hid a finished command as failed, its failure record gone.)
pub async fn storage_failed_never_replaces_finished(factory: &dyn StorageFactory) {
    let storage = factory.storage().await;
    let key = EntityKey::new(PK_A, "S#1");
    let status = |version| {
        let (storage, key) = (storage.clone(), key.clone());
        async move {
            storage
                .get_command(&key, version)
                .await
                .unwrap()
                .map(|c| c.status)
        }
    };
    for version in [1, 2] {
        storage
            .put_command(&record("S#1", version, CommandStatus::Published), None)
            .await
            .unwrap();
    }
    storage
        .set_command_status(&key, 1, CommandStatus::Finished)
        .await
        .unwrap();
    storage
        .set_command_status(&key, 1, CommandStatus::Failed)
        .await
        .expect("a late failure is no error");
    assert_eq!(
        status(1).await,
        Some(CommandStatus::Finished),
        "failed does not replace finished"
    );
    storage
        .set_command_status(&key, 2, CommandStatus::Failed)
        .await
        .unwrap();
    assert_eq!(status(2).await, Some(CommandStatus::Failed));
    storage
        .set_command_status(&key, 2, CommandStatus::Finished)
        .await
        .unwrap();
    assert_eq!(
        status(2).await,
        Some(CommandStatus::Finished),
        "a reprocess finishes a failed command"
    );
    for late in [CommandStatus::Failed, CommandStatus::Finished] {
        let err = storage.set_command_status(&key, 3, late).await.unwrap_err();
        assert!(
            matches!(err, Error::NotFound { .. }),
            "{late:?} on a missing row: {err:?}"
        );
    }
}
