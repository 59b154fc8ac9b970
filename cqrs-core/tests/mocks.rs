//! Unit-testing a user's own service against mocked framework services.

#![cfg(feature = "mock")]

use std::sync::Arc;

use cqrs_core::{
    CommandInput, CommandService, DataItem, DataService, EntityKey, Error, ExpectedVersion,
    InvocationContext, MockCommandService, MockDataService, Synced,
};
use serde_json::json;

/// A user's service: renames a product, refusing unknown ones.
struct Catalogue {
    commands: Arc<dyn CommandService>,
    data: Arc<dyn DataService>,
}

impl Catalogue {
    async fn rename(&self, code: &str, name: &str, ctx: &InvocationContext) -> Result<u64, String> {
        let key = EntityKey::new(cqrs_core::tenant_pk(&ctx.tenant_code), format!("PRODUCT#{code}"));
        let current = self
            .data
            .get_item(&key, ctx)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("no product {code}"))?;
        let command = CommandInput::update_of(&current).name(name);
        match self.commands.publish_sync(command, ctx).await {
            Ok(published) => Ok(published.into_item().version),
            Err(Error::Conflict { actual, .. }) => Err(format!("changed meanwhile (now v{actual:?})")),
            Err(e) => Err(e.to_string()),
        }
    }
}

fn product(version: u64) -> DataItem {
    serde_json::from_value(json!({
        "pk": "TENANT#shop-a", "sk": "PRODUCT#PRD-001", "id": "TENANT#shop-a#PRODUCT#PRD-001",
        "code": "PRD-001", "name": "Mouse", "version": version, "tenantCode": "shop-a", "type": "PRODUCT",
        "attributes": {}, "isDeleted": false, "cpk": "TENANT#shop-a", "csk": format!("PRODUCT#PRD-001@{version}"),
        "requestId": "r", "createdAt": "2024-01-15T10:30:00Z", "createdBy": "u",
        "updatedAt": "2024-01-15T10:30:00Z", "updatedBy": "u"
    }))
    .expect("a valid item")
}

#[tokio::test]
async fn rename_publishes_at_the_current_version() {
    let mut data = MockDataService::new();
    data.expect_get_item().returning(|_, _| Ok(Some(product(3))));
    let mut commands = MockCommandService::new();
    commands
        .expect_publish_sync()
        .withf(|cmd, _| cmd.version == ExpectedVersion::Exactly(3) && cmd.name == "Wireless Mouse")
        .times(1)
        .returning(|_, _| {
            let mut item = product(4);
            item.name = "Wireless Mouse".into();
            Ok(Synced::finished(item))
        });
    let catalogue = Catalogue {
        commands: Arc::new(commands),
        data: Arc::new(data),
    };
    let ctx = InvocationContext::new("shop-a", "u");
    assert_eq!(catalogue.rename("PRD-001", "Wireless Mouse", &ctx).await, Ok(4));
}

#[tokio::test]
async fn rename_reports_a_conflict() {
    let mut data = MockDataService::new();
    data.expect_get_item().returning(|_, _| Ok(Some(product(3))));
    let mut commands = MockCommandService::new();
    commands.expect_publish_sync().returning(|cmd, _| {
        Err(Error::Conflict {
            key: cmd.key().id(),
            expected: cmd.version,
            actual: Some(4),
        })
    });
    let catalogue = Catalogue {
        commands: Arc::new(commands),
        data: Arc::new(data),
    };
    let ctx = InvocationContext::new("shop-a", "u");
    let err = catalogue.rename("PRD-001", "X", &ctx).await.unwrap_err();
    assert_eq!(err, "changed meanwhile (now vSome(4))");
}

#[tokio::test]
async fn rename_of_an_unknown_product_publishes_nothing() {
    let mut data = MockDataService::new();
    data.expect_get_item().returning(|_, _| Ok(None));
    let mut commands = MockCommandService::new();
    commands.expect_publish_sync().never();
    let catalogue = Catalogue {
        commands: Arc::new(commands),
        data: Arc::new(data),
    };
    let ctx = InvocationContext::new("shop-a", "u");
    assert_eq!(
        catalogue.rename("NOPE", "X", &ctx).await,
        Err("no product NOPE".into())
    );
}

/// A read-modify-write of an entity that changes under every attempt ends,
/// once its conflict retries are spent, with an error that says how many
/// attempts it made: still a conflict.
#[tokio::test]
async fn spent_conflict_retries_say_how_many_attempts_were_made() {
    let mut data = MockDataService::new();
    data.expect_get_item().returning(|_, _| Ok(Some(product(3))));
    let mut commands = MockCommandService::new();
    commands.expect_publish_sync().times(4).returning(|cmd, _| {
        Err(Error::Conflict {
            key: cmd.key().id(),
            expected: cmd.version,
            actual: Some(4),
        })
    });
    let services = cqrs_core::Services::new(
        Arc::new(commands),
        Arc::new(data),
        Arc::new(cqrs_core::MockSequenceService::new()),
    )
    .with_conflict_retry(cqrs_core::RetryPolicy {
        max_attempts: 4,
        initial_backoff: std::time::Duration::from_millis(1),
        max_backoff: std::time::Duration::from_millis(1),
    });
    let key = EntityKey::new("TENANT#shop-a", "PRODUCT#PRD-001");
    let ctx = InvocationContext::new("shop-a", "u");
    let error = services
        .update_with(&key, &ctx, |current| {
            Ok::<_, Error>(current.map(|item| CommandInput::update_of(item).name("Renamed")))
        })
        .await
        .expect_err("every attempt conflicts");
    assert!(error.is_conflict(), "{error}");
    match &error {
        Error::ConflictRetriesExhausted {
            key: conflicted,
            expected,
            actual,
            attempts,
        } => {
            assert_eq!(conflicted, &key.id());
            assert_eq!(*expected, ExpectedVersion::Exactly(3));
            assert_eq!(*actual, Some(4));
            assert_eq!(*attempts, 4);
        }
        other => panic!("expected spent conflict retries, got {other:?}"),
    }
    assert!(error.to_string().contains("still after 4 attempts"), "{error}");
}
