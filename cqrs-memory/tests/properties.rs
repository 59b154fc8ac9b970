//! Property tests: no input panics the engine, every refusal is a typed
//! error, and a refused write writes nothing. Arbitrary keys, attributes
//! (numbers of every magnitude included), expected versions, filters,
//! cursors and merge patches, through the public API.

use std::sync::Arc;

use cqrs_core::{
    merge_patch, CommandInput, CommandService, Cursor, DataService, Engine, EntityKey, Error,
    ExpectedVersion, Filter, InvocationContext, ListQuery, PartialUpdate, SkCondition, TenancyPolicy,
};
use cqrs_memory::InMemory;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn engine() -> (Engine, InMemory) {
    let storage = InMemory::new();
    let engine = Engine::builder(Arc::new(storage.clone()))
        .tenancy(TenancyPolicy::strict())
        .build();
    (engine, storage)
}

/// Keys from the alphabet that matters: separators, spaces, unicode, empty.
fn key_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Z#@ é\u{0}-]{0,12}",
        Just("TENANT#shop-a".to_owned()),
        Just(String::new()),
        Just("x".repeat(1100)),
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        Just(json!(1e200)),
        Just(json!(1e-200)),
        Just(json!(6.0)),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        "[a-z\u{0}\u{7f}é]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z.#]{0,4}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn version() -> impl Strategy<Value = ExpectedVersion> {
    prop_oneof![
        Just(ExpectedVersion::Latest),
        (0u64..3).prop_map(ExpectedVersion::Exactly),
        Just(ExpectedVersion::Exactly(u64::MAX)),
        any::<u64>().prop_map(ExpectedVersion::Exactly),
    ]
}

/// Whether an error is one a caller can act on (never a panic, never an
/// untyped failure).
fn typed(error: &Error) -> bool {
    matches!(
        error,
        Error::InvalidInput { .. }
            | Error::TenantViolation { .. }
            | Error::TooLarge { .. }
            | Error::Conflict { .. }
            | Error::NotFound { .. }
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any command: a typed refusal and nothing written, or a write that
    /// reads back exactly as returned.
    #[test]
    fn publishing_any_command_is_typed_and_consistent(
        pk in key_text(), sk in key_text(), attributes in json_value(), version in version(), sync in any::<bool>()
    ) {
        let rt = runtime();
        let (engine, storage) = engine();
        let ctx = InvocationContext::new("shop-a", "user-1");
        let command = CommandInput::new(&pk, &sk).attributes(attributes).version(version);
        let result = rt.block_on(async {
            if sync {
                engine.publish_sync(command, &ctx).await.map(|p| Some(p.into_item()))
            } else {
                engine.publish_async(command, &ctx).await.map(|_| None)
            }
        });
        rt.block_on(engine.wait_idle());
        match result {
            Err(error) => {
                prop_assert!(typed(&error), "untyped: {error:?}");
                prop_assert_eq!(storage.data_len(), 0, "a refused publish wrote nothing");
            }
            Ok(Some(item)) => {
                let read = rt.block_on(engine.get_item(&item.key(), &ctx)).expect("readable");
                prop_assert_eq!(read, Some(item));
            }
            Ok(None) => {}
        }
    }

    /// Partial updates merge any patch without panicking.
    #[test]
    fn partial_updates_of_any_patch_are_typed(base in json_value(), patch in json_value(), sync in any::<bool>()) {
        let rt = runtime();
        let (engine, _) = engine();
        let ctx = InvocationContext::new("shop-a", "user-1");
        let created = rt.block_on(engine.publish_sync(
            CommandInput::new("TENANT#shop-a", "P#1").attributes(json!({ "base": base })),
            &ctx,
        ));
        let Ok(created) = created else { return Ok(()) };
        let update = PartialUpdate::new("TENANT#shop-a", "P#1", ExpectedVersion::Exactly(created.into_item().version))
            .attributes(patch);
        let result = rt.block_on(async {
            if sync {
                engine.publish_partial_update_sync(update, &ctx).await.map(drop)
            } else {
                engine.publish_partial_update_async(update, &ctx).await.map(drop)
            }
        });
        rt.block_on(engine.wait_idle());
        if let Err(error) = result {
            prop_assert!(typed(&error), "untyped: {error:?}");
        }
    }

    /// Any query: filters, sort-key conditions, limits and cursors of any
    /// text give a page or a typed refusal.
    #[test]
    fn any_query_is_answered_or_refused(
        prefix in key_text(), path in "[a-z.\\[\\]0-9]{0,10}", value in json_value(),
        limit in 0usize..200, cursor in proptest::option::of("[A-Za-z0-9_\\-=]{0,40}")
    ) {
        let rt = runtime();
        let (engine, _) = engine();
        let ctx = InvocationContext::new("shop-a", "user-1");
        for sk in ["A#1", "A#2", "B#1"] {
            rt.block_on(engine.publish_sync(CommandInput::new("TENANT#shop-a", sk).attributes(json!({"n": 1})), &ctx))
                .expect("seeded");
        }
        let query = ListQuery::new()
            .sk(SkCondition::BeginsWith(prefix))
            .filter(Filter::eq(path.clone(), value.clone()))
            .filter(Filter::ne(path, value))
            .limit(limit)
            .after(cursor.map(Cursor::from));
        if let Err(error) = rt.block_on(engine.list_items("TENANT#shop-a", query, &ctx)) {
            prop_assert!(typed(&error), "untyped: {error:?}");
        }
    }

    /// Merging is total, and merging the same patch twice changes nothing more.
    #[test]
    fn merge_patch_is_total_and_idempotent(target in json_value(), patch in json_value()) {
        let mut once = target;
        merge_patch(&mut once, &patch);
        let mut twice = once.clone();
        merge_patch(&mut twice, &patch);
        prop_assert_eq!(once, twice);
    }

    /// Reads of any key are typed.
    #[test]
    fn reads_of_any_key_are_typed(pk in key_text(), sk in key_text(), version in any::<u64>()) {
        let rt = runtime();
        let (engine, _) = engine();
        let ctx = InvocationContext::new("shop-a", "user-1");
        let key = EntityKey::new(pk, sk);
        for result in [
            rt.block_on(engine.get_item(&key, &ctx)).map(drop),
            rt.block_on(engine.get_command(&key, version, &ctx)).map(drop),
            rt.block_on(engine.list_history(&key, &ctx)).map(drop),
            rt.block_on(engine.reprocess(&key, version, &ctx)).map(drop),
        ] {
            if let Err(error) = result {
                prop_assert!(typed(&error), "untyped: {error:?}");
            }
        }
    }
}
