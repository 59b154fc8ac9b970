//! Errors a user can act on: a missing table and an unreachable endpoint
//! say what happened in `Display` (the DynamoDB code and message, the request
//! id, the transport's cause), and the structured [`DynamoDbError`] is the
//! backend error's source, with the SDK's error behind it.

mod common;

use std::error::Error as _;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::get_item::GetItemError;
use common::*;
use cqrs_core::{
    tenant_pk, ApplyWrite, CommandInput, CommandRecord, CommandService, CommandStatus, CommandWrite, Counter,
    DataItem, Error, InvocationContext, Storage,
};
use cqrs_dynamodb::{
    local_client, DynamoDbError, DynamoDbErrorKind, DynamoDbStorage, TableNames, OPERATION_TIMEOUT,
};
use serde_json::json;

/// DynamoDB Local's message for any request on a table that does not exist
/// (DynamoDB's own names the table: "Requested resource not found").
const NO_TABLE: &str = "Cannot do operations on a non-existent table";

/// Storage at `endpoint` over tables that were never created.
fn storage_without_tables(endpoint: &str) -> DynamoDbStorage {
    DynamoDbStorage::new(
        local_client(endpoint),
        TableNames::with_prefix(&prefix("missing")),
    )
}

/// This crate's error in the backend error's chain of sources.
fn structured(error: &Error) -> &DynamoDbError {
    assert!(matches!(error, Error::Backend { .. }), "{error:?}");
    DynamoDbError::find(error).unwrap_or_else(|| panic!("no DynamoDbError source: {error:?}"))
}

/// A `127.0.0.1` port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let port = listener.local_addr().expect("its address").port();
    drop(listener);
    port
}

#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test]
async fn a_missing_table_shows_dynamodbs_code_message_and_request_id() {
    if !available() {
        return;
    }
    let storage = storage_without_tables(&endpoint().unwrap_or_default());

    let error = storage
        .get_data(&key("PRODUCT#1"))
        .await
        .expect_err("no such table");
    let shown = error.to_string();
    assert!(shown.contains("ResourceNotFoundException"), "{shown}");
    assert!(shown.contains(NO_TABLE), "{shown}");
    assert!(!error.is_retryable(), "{shown}");

    let dynamo = structured(&error);
    assert_eq!(dynamo.kind(), DynamoDbErrorKind::Service);
    assert_eq!(dynamo.code(), Some("ResourceNotFoundException"));
    assert_eq!(dynamo.message(), NO_TABLE);
    assert_eq!(dynamo.operation(), Some("GetItem"));
    assert!(!dynamo.is_retryable());
    // DynamoDB Local answers with an x-amzn-RequestId, as DynamoDB does.
    let request_id = dynamo.request_id().expect("DynamoDB Local sends a request id");
    assert!(!request_id.is_empty());
    assert!(shown.contains(&format!("(request id {request_id})")), "{shown}");
    assert!(std::ptr::eq(
        DynamoDbError::find(&error).expect("in the chain"),
        dynamo
    ));
    // The SDK's own error is still there, behind it.
    let sdk = dynamo.source().expect("the SDK error");
    let sdk = sdk
        .downcast_ref::<SdkError<GetItemError, HttpResponse>>()
        .expect("the GetItem error");
    assert!(sdk
        .as_service_error()
        .is_some_and(GetItemError::is_resource_not_found_exception));

    // Every operation says which one failed.
    let error = storage
        .next_counter(&Counter::new("SEQ#a", "ORDER#none"))
        .await
        .expect_err("no such table");
    let dynamo = structured(&error);
    assert_eq!(dynamo.code(), Some("ResourceNotFoundException"));
    assert_eq!(dynamo.operation(), Some("UpdateItem"));
    assert!(
        error
            .to_string()
            .contains("ResourceNotFoundException in UpdateItem"),
        "{error}"
    );
}

/// Needs no DynamoDB: nothing listens on the port.
#[tokio::test]
async fn an_unreachable_endpoint_says_it_could_not_reach_dynamodb_and_why() {
    let storage = storage_without_tables(&format!("http://127.0.0.1:{}", closed_port()));

    let started = Instant::now();
    let error = storage
        .get_data(&key("PRODUCT#1"))
        .await
        .expect_err("nothing listens");
    // The SDK's retries, within its operation timeout.
    assert!(started.elapsed() < OPERATION_TIMEOUT + Duration::from_secs(5));

    let shown = error.to_string();
    assert!(shown.contains("could not reach DynamoDB"), "{shown}");
    assert!(shown.contains("tcp connect error"), "{shown}");
    assert!(shown.contains("Connection refused"), "{shown}");
    assert!(!shown.contains("dispatch failure"), "{shown}");
    assert!(error.is_retryable(), "{shown}");

    let dynamo = structured(&error);
    assert_eq!(dynamo.kind(), DynamoDbErrorKind::Unreachable);
    assert!(dynamo.is_retryable());
    assert_eq!(dynamo.code(), None);
    assert_eq!(dynamo.request_id(), None);
    assert_eq!(dynamo.operation(), Some("GetItem"));
    assert!(
        dynamo.message().contains("Connection refused"),
        "{}",
        dynamo.message()
    );
    let sdk = dynamo.source().expect("the SDK error");
    assert!(matches!(
        sdk.downcast_ref::<SdkError<GetItemError, HttpResponse>>(),
        Some(SdkError::DispatchFailure(_))
    ));
}

/// A sync publish's write of version 1 of `sk`, as the engine hands it to
/// storage: command, data row, no history.
fn first_write(sk: &str) -> ApplyWrite {
    let command = CommandRecord::builder(tenant_pk(TENANT), sk)
        .status(CommandStatus::Applied)
        .build();
    ApplyWrite {
        data: DataItem::builder(tenant_pk(TENANT), sk).build(),
        command: CommandWrite::Insert(Box::new(command)),
        expected_data_version: 0,
        history: None,
        idempotency: None,
        indexes: Vec::new(),
    }
}

/// Asserts that `error` carries DynamoDB's own answer: the operation, the
/// code and the message, found by `DynamoDbError::find` and shown by
/// `Display` (not the SDK's "unhandled error").
fn assert_service_error(error: &Error, operation: &str, code: &str, message: &str) {
    let shown = error.to_string();
    assert!(!shown.contains("unhandled error"), "{shown}");
    let dynamo = DynamoDbError::find(error).unwrap_or_else(|| panic!("no DynamoDbError in {error:?}"));
    assert_eq!(dynamo.kind(), DynamoDbErrorKind::Service, "{shown}");
    assert_eq!(dynamo.operation(), Some(operation), "{shown}");
    assert_eq!(dynamo.code(), Some(code), "{shown}");
    assert!(dynamo.message().contains(message), "{}", dynamo.message());
    assert!(
        shown.contains(&format!("DynamoDB {code} in {operation}: {}", dynamo.message())),
        "{shown}"
    );
    assert!(dynamo.request_id().is_some(), "{shown}");
    assert!(!error.is_retryable(), "{shown}");
}

/// A ValidationException of a transaction keeps DynamoDB's code and
/// message: storage called directly, without the engine's checks, with a
/// number DynamoDB refuses.
#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test]
async fn a_validation_exception_of_a_transaction_shows_dynamodbs_code_and_message() {
    if !available() {
        return;
    }
    let storage = fresh_storage("validation").await;
    let mut write = first_write("PRODUCT#1");
    write.data = DataItem::builder(tenant_pk(TENANT), "PRODUCT#1")
        .attributes(json!({ "price": 1e126 }))
        .build();
    let error = storage
        .apply(&[write])
        .await
        .expect_err("a number DynamoDB refuses");
    assert_service_error(
        &error,
        "TransactWriteItems",
        "ValidationException",
        "Number overflow",
    );
}

/// Every write path on a table that does not exist names the operation and
/// DynamoDB's code and message: a transaction (a sync publish, a commit, an
/// async publish of version 2) as much as a single request.
#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test]
async fn a_missing_table_shows_dynamodbs_answer_on_every_write_path() {
    if !available() {
        return;
    }
    let storage = storage_without_tables(&endpoint().unwrap_or_default());

    let error = storage
        .apply(&[first_write("PRODUCT#1")])
        .await
        .expect_err("no such table");
    assert_service_error(
        &error,
        "TransactWriteItems",
        "ResourceNotFoundException",
        NO_TABLE,
    );

    // A command row above version 1 is written by a transaction.
    let second = CommandRecord::builder(tenant_pk(TENANT), "PRODUCT#1")
        .version(2)
        .build();
    let error = storage
        .put_command(&second, None)
        .await
        .expect_err("no such table");
    assert_service_error(
        &error,
        "TransactWriteItems",
        "ResourceNotFoundException",
        NO_TABLE,
    );

    // Through the engine, as a user meets it.
    let engine = storage.engine().build();
    let ctx = InvocationContext::new(TENANT, "user-1");
    let error = engine
        .publish_sync(CommandInput::new(tenant_pk(TENANT), "PRODUCT#2"), &ctx)
        .await
        .expect_err("no such table");
    assert_service_error(&error, "GetItem", "ResourceNotFoundException", NO_TABLE);
}

/// A transaction that cannot reach DynamoDB is an unreachable endpoint,
/// retryable, as a single request is (not an "unhandled error").
#[tokio::test]
async fn an_unreachable_endpoint_fails_a_transaction_retryably() {
    let storage = storage_without_tables(&format!("http://127.0.0.1:{}", closed_port()));
    let second = CommandRecord::builder(tenant_pk(TENANT), "PRODUCT#1")
        .version(2)
        .build();
    let error = storage
        .put_command(&second, None)
        .await
        .expect_err("nothing listens");
    let shown = error.to_string();
    assert!(error.is_retryable(), "{shown}");
    let dynamo = DynamoDbError::find(&error).unwrap_or_else(|| panic!("no DynamoDbError in {shown}"));
    assert_eq!(dynamo.kind(), DynamoDbErrorKind::Unreachable, "{shown}");
    assert_eq!(dynamo.operation(), Some("TransactWriteItems"), "{shown}");
}
