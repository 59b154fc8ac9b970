//! The data-sync pipeline: images, interest, order, retries, failures,
//! reprocessing and redelivery.

use serde_json::json;

use super::fixtures::{builder, cmd, cmd_at, ctx, external_engine, n, RecordingHandler, PK_A};
use super::StorageFactory;
use crate::handler::Interest;
use crate::keys::EntityKey;
use crate::model::{CommandStatus, ExpectedVersion, Handled};
use crate::services::{CommandService, DataService};

/// Handlers get the data item before (`None` on creation) and after the
/// command, and the publisher's context.
pub async fn handlers_receive_old_and_new_images(factory: &dyn StorageFactory) {
    let handler = RecordingHandler::new("images", Interest::All);
    let engine = builder(factory).await.handler_arc(handler.clone()).build();
    let a = ctx("shop-a");
    let v1 = engine
        .publish_sync(cmd(PK_A, "ORDER#1", json!({"status": "pending"})), &a)
        .await
        .unwrap()
        .into_item();
    let v2 = engine
        .publish_sync(cmd_at(PK_A, "ORDER#1", 1, json!({"status": "confirmed"})), &a)
        .await
        .unwrap()
        .into_item();
    let events = handler.events();
    assert_eq!(events.len(), 2);
    assert!(events[0].is_create() && events[0].old.is_none());
    assert_eq!(events[0].new, v1);
    assert_eq!(events[1].old.as_ref(), Some(&v1));
    assert_eq!(events[1].new, v2);
    assert_eq!(events[1].command.version, 2);
    assert_eq!(events[1].context.tenant_code, "shop-a");
    assert_eq!(events[1].context.request_id, a.request_id);
    assert_eq!(events[1].attempt, 1);
    assert_eq!(events[1].idempotency_key(), "TENANT#shop-a#ORDER#1@2");
    assert_ne!(events[0].idempotency_key(), events[1].idempotency_key());
    let command = engine.get_command(&v2.key(), 2, &a).await.unwrap().unwrap();
    assert_eq!(
        command.status,
        CommandStatus::Finished,
        "a sync publish records that its handlers completed"
    );

    // The async pipeline gives the same images, with the publisher's context.
    engine
        .publish_async(cmd_at(PK_A, "ORDER#1", 2, json!({"status": "shipped"})), &a)
        .await
        .unwrap();
    engine.wait_idle().await;
    let events = handler.events();
    assert_eq!(events.len(), 3);
    assert_eq!(events[2].old.as_ref(), Some(&v2));
    assert_eq!(events[2].new.attributes, json!({"status": "shipped"}));
    assert_eq!(events[2].context.user_id, "user-1");
    assert_eq!(events[2].context.request_id, a.request_id);
    let command = engine.get_command(&v2.key(), 3, &a).await.unwrap().unwrap();
    assert_eq!(command.status, CommandStatus::Finished);
}

/// A handler sees only the commands it is interested in.
pub async fn interest_selects_commands(factory: &dyn StorageFactory) {
    let orders = RecordingHandler::new("orders", Interest::SkPrefix("ORDER#".into()));
    let products = RecordingHandler::new("products", Interest::EntityType("PRODUCT".into()));
    let engine = builder(factory)
        .await
        .handler_arc(orders.clone())
        .handler_arc(products.clone())
        .build();
    let a = ctx("shop-a");
    engine.publish_sync(cmd(PK_A, "ORDER#1", n(1)), &a).await.unwrap();
    engine
        .publish_sync(cmd(PK_A, "PRODUCT#1", n(1)), &a)
        .await
        .unwrap();
    engine
        .publish_sync(cmd(PK_A, "INVENTORY#1", n(1)), &a)
        .await
        .unwrap();
    assert_eq!(orders.seen(), [("ORDER#1".into(), 1)]);
    assert_eq!(products.seen(), [("PRODUCT#1".into(), 1)]);
    let inventory = engine
        .get_command(&EntityKey::new(PK_A, "INVENTORY#1"), 1, &a)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        inventory.status,
        CommandStatus::Finished,
        "no handler matched: finished as soon as written"
    );
}

/// The background processor applies an entity's versions strictly in order,
/// each after its predecessor, while entities interleave.
pub async fn async_pipeline_applies_each_entity_in_order(factory: &dyn StorageFactory) {
    let handler = RecordingHandler::new("order", Interest::All);
    let engine = builder(factory).await.handler_arc(handler.clone()).build();
    let a = ctx("shop-a");
    let publishers: Vec<_> = ["E#1", "E#2", "E#3"]
        .into_iter()
        .map(|sk| {
            let (engine, a) = (engine.clone(), a.clone());
            tokio::spawn(async move {
                for v in 0..30 {
                    engine
                        .publish_async(cmd_at(PK_A, sk, v, n(v + 1)), &a)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for publisher in publishers {
        publisher.await.expect("publisher");
    }
    engine.wait_idle().await;
    let events = handler.events();
    assert_eq!(events.len(), 90);
    for sk in ["E#1", "E#2", "E#3"] {
        let mine: Vec<_> = events.iter().filter(|e| e.command.sk == sk).collect();
        let versions: Vec<u64> = mine.iter().map(|e| e.command.version).collect();
        assert_eq!(versions, (1..=30).collect::<Vec<_>>(), "{sk} out of order");
        for e in &mine {
            assert_eq!(e.old.as_ref().map_or(0, |o| o.version), e.command.version - 1);
            assert_eq!(e.new.attributes, n(e.command.version));
        }
        let item = engine
            .get_item(&EntityKey::new(PK_A, sk), &a)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(item.version, 30);
        assert_eq!(engine.list_history(&item.key(), &a).await.unwrap().len(), 29);
    }
}

/// A handler failing fewer times than the retry budget ends up finished.
pub async fn failing_handler_is_retried(factory: &dyn StorageFactory) {
    let handler = RecordingHandler::new("flaky", Interest::All);
    handler.fail_next(2);
    let engine = builder(factory).await.handler_arc(handler.clone()).build();
    let a = ctx("shop-a");
    let item = engine
        .publish_sync(cmd(PK_A, "P#1", n(1)), &a)
        .await
        .unwrap()
        .into_item();
    let attempts: Vec<u32> = handler.events().iter().map(|e| e.attempt).collect();
    assert_eq!(attempts, [1, 2, 3]);
    // Completion is recorded, so that recovery leaves the command alone.
    let command = engine.get_command(&item.key(), 1, &a).await.unwrap().unwrap();
    assert_eq!(command.status, CommandStatus::Finished);
    assert!(engine.list_failures(&a).await.unwrap().is_empty());

    // The same in the background pipeline.
    handler.fail_next(2);
    engine
        .publish_async(cmd_at(PK_A, "P#1", 1, n(2)), &a)
        .await
        .unwrap();
    engine.wait_idle().await;
    let attempts: Vec<u32> = handler.events().iter().skip(3).map(|e| e.attempt).collect();
    assert_eq!(attempts, [1, 2, 3]);
    let command = engine.get_command(&item.key(), 2, &a).await.unwrap().unwrap();
    assert_eq!(command.status, CommandStatus::Finished);
    assert!(engine.list_failures(&a).await.unwrap().is_empty());
}

/// After its retries a failing handler marks the command failed, visibly;
/// reprocess runs the failed handler (only) again and clears the failure.
pub async fn failed_command_is_recorded_and_reprocessed(factory: &dyn StorageFactory) {
    let broken = RecordingHandler::new("broken", Interest::All);
    let healthy = RecordingHandler::new("healthy", Interest::All);
    broken.fail_next(u32::MAX);
    let engine = builder(factory)
        .await
        .handler_arc(broken.clone())
        .handler_arc(healthy.clone())
        .build();
    let a = ctx("shop-a");
    let item = engine
        .publish_sync(cmd(PK_A, "P#1", n(1)), &a)
        .await
        .unwrap()
        .into_item();
    assert_eq!(item.version, 1, "the data is written even when a handler fails");
    let key = item.key();
    assert_eq!(
        engine.get_command(&key, 1, &a).await.unwrap().unwrap().status,
        CommandStatus::Failed
    );
    let failures = engine.list_failures(&a).await.unwrap();
    assert_eq!(failures.len(), 1);
    assert_eq!((failures[0].key(), failures[0].version), (key.clone(), 1));
    assert_eq!(failures[0].failures.len(), 1);
    assert_eq!(failures[0].failures[0].handler, "broken");
    assert_eq!(failures[0].failures[0].attempts, 3);
    assert!(failures[0].failures[0].error.contains("failed on purpose"));
    assert_eq!(broken.events().len(), 3);
    assert_eq!(healthy.events().len(), 1);

    // Still broken: reprocess reports it and keeps the record.
    assert_eq!(
        engine.reprocess(&key, 1, &a).await.unwrap(),
        CommandStatus::Failed
    );
    assert_eq!(engine.list_failures(&a).await.unwrap().len(), 1);

    broken.fail_next(0);
    assert_eq!(
        engine.reprocess(&key, 1, &a).await.unwrap(),
        CommandStatus::Finished
    );
    assert!(engine.list_failures(&a).await.unwrap().is_empty());
    assert_eq!(
        engine.get_command(&key, 1, &a).await.unwrap().unwrap().status,
        CommandStatus::Finished
    );
    let last = broken.events().pop().unwrap();
    assert_eq!(
        (last.old, last.new.version),
        (None, 1),
        "reprocess rebuilds the images"
    );
    assert_eq!(
        healthy.events().len(),
        1,
        "handlers that succeeded do not run again"
    );
    assert!(engine.reprocess(&key, 9, &a).await.unwrap_err().is_not_found());
}

/// A failed handler does not stall the entity: later versions still apply.
pub async fn async_failures_do_not_stall_later_versions(factory: &dyn StorageFactory) {
    let broken = RecordingHandler::new("broken", Interest::All);
    broken.fail_next(u32::MAX);
    let engine = builder(factory).await.handler_arc(broken.clone()).build();
    let a = ctx("shop-a");
    engine.publish_async(cmd(PK_A, "P#1", n(1)), &a).await.unwrap();
    engine
        .publish_async(cmd_at(PK_A, "P#1", 1, n(2)), &a)
        .await
        .unwrap();
    engine.wait_idle().await;
    let key = EntityKey::new(PK_A, "P#1");
    assert_eq!(engine.get_item(&key, &a).await.unwrap().unwrap().version, 2);
    let failed: Vec<u64> = engine
        .list_failures(&a)
        .await
        .unwrap()
        .iter()
        .map(|f| f.version)
        .collect();
    assert_eq!(failed, [1, 2]);
    broken.fail_next(0);
    for version in [1, 2] {
        assert_eq!(
            engine.reprocess(&key, version, &a).await.unwrap(),
            CommandStatus::Finished
        );
    }
    // The reprocess of version 1 saw version 1's images, not the current item.
    let events = broken.events();
    let v1 = events.iter().rev().find(|e| e.command.version == 1).unwrap();
    assert_eq!((v1.old.clone(), v1.new.attributes.clone()), (None, n(1)));
    assert!(engine.list_failures(&a).await.unwrap().is_empty());
}

/// Delivering the same command twice applies it once; a finished command's
/// handlers do not run again.
pub async fn redelivery_does_not_apply_twice(factory: &dyn StorageFactory) {
    let handler = RecordingHandler::new("h", Interest::All);
    let engine = external_engine(factory, handler.clone()).await;
    let a = ctx("shop-a");
    let key = EntityKey::new(PK_A, "P#1");
    engine.publish_async(cmd(PK_A, "P#1", n(1)), &a).await.unwrap();
    assert_eq!(engine.process(&key, 1).await.unwrap(), CommandStatus::Finished);
    assert_eq!(engine.process(&key, 1).await.unwrap(), CommandStatus::Finished);
    let item = engine.get_item(&key, &a).await.unwrap().unwrap();
    assert_eq!(item.version, 1);
    assert!(engine.list_history(&key, &a).await.unwrap().is_empty());
    assert_eq!(handler.seen().len(), 1);
    // Concurrent deliveries of the same command still apply it once.
    engine
        .publish_async(cmd_at(PK_A, "P#1", 1, n(2)), &a)
        .await
        .unwrap();
    let deliveries: Vec<_> = (0..4)
        .map(|_| {
            let (engine, key) = (engine.clone(), key.clone());
            tokio::spawn(async move { engine.process(&key, 2).await })
        })
        .collect();
    for delivery in deliveries {
        delivery.await.expect("task").unwrap();
    }
    assert_eq!(engine.list_history(&key, &a).await.unwrap().len(), 1);
    assert_eq!(engine.get_item(&key, &a).await.unwrap().unwrap().version, 2);
    assert!(engine.process(&key, 3).await.unwrap_err().is_not_found());
}

/// Processing version N applies every missing version before it, in order.
pub async fn process_catches_up_missing_versions(factory: &dyn StorageFactory) {
    let handler = RecordingHandler::new("h", Interest::All);
    let engine = external_engine(factory, handler.clone()).await;
    let a = ctx("shop-a");
    let key = EntityKey::new(PK_A, "P#1");
    engine.publish_async(cmd(PK_A, "P#1", n(1)), &a).await.unwrap();
    for v in 1..3 {
        engine
            .publish_async(cmd_at(PK_A, "P#1", v, n(v + 1)), &a)
            .await
            .unwrap();
    }
    let latest = cmd(PK_A, "P#1", n(4)).version(ExpectedVersion::Latest);
    assert_eq!(
        engine
            .publish_async(latest, &a)
            .await
            .unwrap()
            .into_inner()
            .version,
        4
    );
    assert!(engine.get_item(&key, &a).await.unwrap().is_none());
    engine.process(&key, 3).await.unwrap();
    assert_eq!(handler.seen().iter().map(|s| s.1).collect::<Vec<_>>(), [1, 2, 3]);
    // An older delivery arriving late changes nothing.
    engine.process(&key, 2).await.unwrap();
    engine.process(&key, 4).await.unwrap();
    assert_eq!(
        handler.seen().iter().map(|s| s.1).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    let item = engine.get_item(&key, &a).await.unwrap().unwrap();
    assert_eq!((item.version, item.attributes), (4, n(4)));
}

/// A command another framework wrote to the table (the reference
/// framework's async command: no status; its finished one: its own status)
/// reads back as it was stored, mapped; only an engine that owns the
/// pipeline applies it, and its status is then ours.
pub async fn foreign_commands_are_kept_and_applied_only_by_the_owner(factory: &dyn StorageFactory) {
    use crate::engine::records::command_record;
    use crate::model::CommandInput;
    use crate::{AsyncDispatch, Engine, SmolStr};

    let storage = factory.storage().await;
    let foreign = |sk: &str, status: CommandStatus, stored: &str| {
        let input = CommandInput::new(PK_A, sk).attributes(json!({ "n": 1 }));
        let mut record = command_record(input, 1, status, &ctx("shop-a"), chrono::Utc::now());
        record.foreign_status = Some(SmolStr::new(stored));
        record
    };
    let pending = foreign("E#FOREIGN", CommandStatus::Published, "");
    let done = foreign("E#DONE", CommandStatus::Finished, "finish:FINISHED");
    for record in [&pending, &done] {
        storage.put_command(record, None).await.unwrap();
        let read = storage
            .get_command(&record.key(), 1)
            .await
            .unwrap()
            .expect("stored");
        assert_eq!(
            (read.status, read.foreign_status.as_deref()),
            (record.status, record.foreign_status.as_deref()),
            "{}",
            record.sk
        );
    }

    let engine = |apply: bool| {
        Engine::builder(storage.clone())
            .dispatch(AsyncDispatch::External)
            .apply_foreign_commands(apply)
            .build()
    };
    let (bystander, owner) = (engine(false), engine(true));
    let key = pending.key();
    let settled = bystander
        .settle_inserted(&key, 1, CommandStatus::Published)
        .await
        .unwrap();
    assert_eq!(settled, CommandStatus::Published);
    assert_eq!(bystander.get_item(&key, &ctx("shop-a")).await.unwrap(), None);

    let settled = owner
        .settle_inserted(&key, 1, CommandStatus::Published)
        .await
        .unwrap();
    assert_eq!(settled, CommandStatus::Applied);
    let item = owner
        .get_item(&key, &ctx("shop-a"))
        .await
        .unwrap()
        .expect("applied");
    assert_eq!((item.version, &item.attributes["n"]), (1, &json!(1)));
    let command = storage.get_command(&key, 1).await.unwrap().expect("stored");
    assert_eq!(
        (command.status, command.foreign_status),
        (CommandStatus::Applied, None)
    );

    // Its finished command is done for both.
    let done_key = done.key();
    assert_eq!(
        owner
            .settle_inserted(&done_key, 1, CommandStatus::Published)
            .await
            .unwrap(),
        CommandStatus::Finished
    );
    assert_eq!(owner.get_item(&done_key, &ctx("shop-a")).await.unwrap(), None);
}

/// A sync publish says how its handlers ended: finished, failed (with the
/// failures recorded), or none ran; a keyed retry and a commit say the same,
/// and so does a read-modify-write.
pub async fn sync_publish_reports_how_handlers_ended(factory: &dyn StorageFactory) {
    let broken = RecordingHandler::new("broken", Interest::SkPrefix("BROKEN#".into()));
    let healthy = RecordingHandler::new("healthy", Interest::SkPrefix("ORDER#".into()));
    broken.fail_next(u32::MAX);
    let engine = builder(factory)
        .await
        .handler_arc(broken.clone())
        .handler_arc(healthy.clone())
        .build();
    let services = engine.services();
    let a = ctx("shop-a");

    let finished = engine.publish_sync(cmd(PK_A, "ORDER#1", n(1)), &a).await.unwrap();
    assert_eq!(finished.handled(), &Handled::Finished);
    let ignored = engine.publish_sync(cmd(PK_A, "OTHER#1", n(1)), &a).await.unwrap();
    assert_eq!(
        ignored.handled(),
        &Handled::Finished,
        "no handler is interested: finished once written"
    );
    let unchanged = engine
        .publish_sync(cmd_at(PK_A, "ORDER#1", 1, n(1)), &a)
        .await
        .unwrap();
    assert!(unchanged.is_unchanged());
    assert_eq!(unchanged.handled(), &Handled::NoHandlers);

    let keyed = cmd(PK_A, "BROKEN#1", n(1)).idempotency_key("broken-1");
    let failed = engine.publish_sync(keyed.clone(), &a).await.unwrap();
    assert_eq!(
        failed.get().version,
        1,
        "the data is written even when a handler fails"
    );
    let Handled::Failed(failures) = failed.handled() else {
        panic!("a failed handler is reported: {:?}", failed.handled());
    };
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].handler, "broken");
    assert_eq!(failures[0].attempts, 3);
    assert_eq!(
        engine.list_failures(&a).await.unwrap()[0].failures,
        *failures,
        "what the publish reports is what was recorded"
    );
    let again = engine.publish_sync(keyed, &a).await.unwrap();
    assert_eq!(
        again.handled(),
        failed.handled(),
        "a keyed retry reports the first outcome"
    );

    let committed = engine
        .commit(
            vec![
                cmd(PK_A, "ORDER#2", n(1)),
                cmd(PK_A, "BROKEN#2", n(1)),
                cmd(PK_A, "OTHER#2", n(1)),
            ],
            &a,
        )
        .await
        .unwrap();
    let handled: Vec<_> = committed.iter().map(|c| c.handled().clone()).collect();
    assert_eq!(handled[0], Handled::Finished);
    assert!(handled[1].is_failed() && handled[1].failures()[0].handler == "broken");
    assert_eq!(handled[2], Handled::Finished);

    let key = EntityKey::new(PK_A, "BROKEN#3");
    let updated = services
        .update_with(&key, &a, |_| {
            Ok::<_, crate::Error>(Some(cmd(PK_A, "BROKEN#3", n(1))))
        })
        .await
        .unwrap();
    assert!(updated.is_written());
    assert!(updated.handled().is_failed());
}
