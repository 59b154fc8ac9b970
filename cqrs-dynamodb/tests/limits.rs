//! DynamoDB's transaction limits, enforced before anything is sent.

mod common;

use cqrs_core::{CommandInput, CommandService, DataService, Engine, EntityKey, Error, InvocationContext};
use serde_json::json;

#[cfg_attr(not(dynamodb_tests), ignore = "needs DynamoDB Local: run ./scripts/test")]
#[tokio::test]
async fn a_commit_over_four_megabytes_is_refused_before_writing() {
    if !common::available() {
        return;
    }
    let engine = Engine::builder(common::fresh("limits").await).build();
    let ctx = InvocationContext::new("shop-a", "u");
    // Each command writes two rows of ~300 KB: 8 commands are ~4.8 MB.
    let blob = "x".repeat(300 * 1024);
    let batch: Vec<_> = (0..8)
        .map(|i| CommandInput::new("TENANT#shop-a", format!("BIG#{i}")).attributes(json!({ "blob": blob })))
        .collect();
    let err = engine.commit(batch, &ctx).await.unwrap_err();
    assert!(
        matches!(&err, Error::TooLarge { what, limit, .. } if what == "transaction bytes" && *limit == 4 * 1024 * 1024),
        "{err:?}"
    );
    let first = EntityKey::new("TENANT#shop-a", "BIG#0");
    assert!(
        engine.get_item(&first, &ctx).await.unwrap().is_none(),
        "nothing was written"
    );
}
