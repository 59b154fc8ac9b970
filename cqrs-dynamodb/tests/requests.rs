//! Requests per operation, counted on the wire with an SDK interceptor.

mod common;

use std::sync::{Arc, Mutex, PoisonError};

use aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::error::BoxError;
use cqrs_core::{
    AsyncDispatch, CommandInput, CommandService, DataService, Engine, EntityKey, ExpectedVersion,
    InvocationContext, ListQuery, PartialUpdate, SequenceRequest, SequenceService,
};
use cqrs_dynamodb::{local_config, DynamoDbStorage, TableNames};
use serde_json::json;

/// Records the operation (`X-Amz-Target`) of every request sent.
#[derive(Debug, Clone, Default)]
struct RequestLog(Arc<Mutex<Vec<String>>>);

impl RequestLog {
    /// The operations sent since the last call.
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl Intercept for RequestLog {
    fn name(&self) -> &'static str {
        "RequestLog"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let target = context.request().headers().get("x-amz-target").unwrap_or("?");
        let operation = target.rsplit('.').next().unwrap_or(target).to_owned();
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(operation);
        Ok(())
    }
}

async fn counted_engine(dirty_check: bool) -> (Engine, RequestLog) {
    counted_engine_with(dirty_check, false).await
}

async fn counted_engine_with(dirty_check: bool, handler: bool) -> (Engine, RequestLog) {
    let endpoint = common::endpoint().expect("checked by available()");
    let log = RequestLog::default();
    let config = local_config(&endpoint).interceptor(log.clone()).build();
    let client = aws_sdk_dynamodb::Client::from_conf(config);
    let storage = DynamoDbStorage::new(client, TableNames::with_prefix(&common::prefix("requests")));
    storage.ensure_tables().await.expect("tables");
    let mut builder = Engine::builder(Arc::new(storage))
        .dispatch(AsyncDispatch::External)
        .async_dirty_check(dirty_check);
    if handler {
        builder = builder.handler_arc(cqrs_core::testing::RecordingHandler::new(
            "all",
            cqrs_core::Interest::All,
        ));
    }
    log.take();
    (builder.build(), log)
}

fn ops(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn requests_per_operation() {
    if !common::available() {
        return;
    }
    let (engine, log) = counted_engine(true).await;
    let ctx = InvocationContext::new("shop-a", "u");
    let pk = "TENANT#shop-a";

    engine
        .publish_sync(CommandInput::new(pk, "P#1").attributes(json!({"n": 1})), &ctx)
        .await
        .unwrap();
    assert_eq!(
        log.take(),
        ops(&["GetItem", "TransactWriteItems"]),
        "publish_sync (create)"
    );

    let update = CommandInput::new(pk, "P#1")
        .attributes(json!({"n": 2}))
        .version(ExpectedVersion::Exactly(1));
    engine.publish_sync(update, &ctx).await.unwrap();
    assert_eq!(
        log.take(),
        ops(&["GetItem", "TransactWriteItems"]),
        "publish_sync (update)"
    );

    let partial = PartialUpdate::new(pk, "P#1", ExpectedVersion::Exactly(2)).attributes(json!({"m": 1}));
    engine.publish_partial_update_sync(partial, &ctx).await.unwrap();
    assert_eq!(
        log.take(),
        ops(&["GetItem", "TransactWriteItems"]),
        "partial update (sync)"
    );

    let key = EntityKey::new(pk, "P#1");
    engine.get_item(&key, &ctx).await.unwrap();
    assert_eq!(log.take(), ops(&["GetItem"]), "get");

    engine
        .list_items(pk, ListQuery::new().limit(20), &ctx)
        .await
        .unwrap();
    assert_eq!(log.take(), ops(&["Query"]), "one list page");

    engine.next(&SequenceRequest::new("ORDER"), &ctx).await.unwrap();
    assert_eq!(log.take(), ops(&["UpdateItem"]), "sequence next");

    engine
        .publish_async(CommandInput::new(pk, "A#1"), &ctx)
        .await
        .unwrap();
    assert_eq!(log.take(), ops(&["PutItem"]), "publish_async (create)");
    let next = CommandInput::new(pk, "A#1")
        .attributes(json!({"n": 1}))
        .version(ExpectedVersion::Exactly(1));
    engine.publish_async(next, &ctx).await.unwrap();
    assert_eq!(
        log.take(),
        ops(&["GetItem", "TransactWriteItems"]),
        "publish_async (update, dirty check on)"
    );

    engine.process(&EntityKey::new(pk, "A#1"), 1).await.unwrap();
    assert_eq!(
        log.take(),
        ops(&["GetItem", "GetItem", "TransactWriteItems"]),
        "pipeline apply (data, command, apply)"
    );

    let commit: Vec<_> = (1..=3).map(|i| CommandInput::new(pk, format!("C#{i}"))).collect();
    engine.commit(commit, &ctx).await.unwrap();
    let mut sent = log.take();
    sent.sort();
    assert_eq!(
        sent,
        ops(&["GetItem", "GetItem", "GetItem", "TransactWriteItems"]),
        "commit of 3 (reads in parallel: 2 round trips)"
    );
}

#[tokio::test]
async fn publish_async_is_one_request_without_the_dirty_check() {
    if !common::available() {
        return;
    }
    let (engine, log) = counted_engine(false).await;
    let ctx = InvocationContext::new("shop-a", "u");
    engine
        .publish_async(CommandInput::new("TENANT#shop-a", "A#1"), &ctx)
        .await
        .unwrap();
    assert_eq!(log.take(), ops(&["PutItem"]));
    let next = CommandInput::new("TENANT#shop-a", "A#1")
        .attributes(json!({"n": 1}))
        .version(ExpectedVersion::Exactly(1));
    engine.publish_async(next, &ctx).await.unwrap();
    assert_eq!(log.take(), ops(&["TransactWriteItems"]));
}

/// With a handler interested, completion is recorded: one write more.
#[tokio::test]
async fn requests_per_operation_with_a_handler() {
    if !common::available() {
        return;
    }
    let (engine, log) = counted_engine_with(true, true).await;
    let ctx = InvocationContext::new("shop-a", "u");
    let pk = "TENANT#shop-a";
    engine
        .publish_sync(CommandInput::new(pk, "P#1").attributes(json!({"n": 1})), &ctx)
        .await
        .unwrap();
    assert_eq!(
        log.take(),
        ops(&["GetItem", "TransactWriteItems", "UpdateItem"]),
        "publish_sync: read, write, status finished"
    );
    engine
        .publish_async(CommandInput::new(pk, "A#1"), &ctx)
        .await
        .unwrap();
    assert_eq!(log.take(), ops(&["PutItem"]), "publish_async (create)");
    let key = EntityKey::new(pk, "A#1");
    engine.settle(&key, 1).await.unwrap();
    assert_eq!(
        log.take(),
        ops(&["GetItem", "GetItem", "TransactWriteItems", "UpdateItem"]),
        "settle of a published command: command, data, apply, finished"
    );
    engine.settle(&key, 1).await.unwrap();
    assert_eq!(
        log.take(),
        ops(&["GetItem"]),
        "settle of a finished command: its status"
    );
}
