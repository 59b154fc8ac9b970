//! Which stream records feed the pipeline: one rule for the stream consumer
//! and the Lambda entry point.

use std::collections::HashMap;

use aws_sdk_dynamodbstreams::types::{AttributeValue, OperationType, Record};
use cqrs_core::{parse_command_sk, CommandStatus, EntityKey};

/// What one stream record of the command table asks of the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordAction {
    /// Nothing: not the insert of a command row that may still need work.
    Skip,
    /// Bring this version of this entity to a final state
    /// ([`Engine::settle_inserted`](cqrs_core::Engine::settle_inserted)).
    Settle {
        /// The entity.
        key: EntityKey,
        /// The command's version.
        version: u64,
        /// The status the row was inserted with: `Published` or `Applied`.
        inserted: CommandStatus,
    },
    /// The insert of a command row another framework wrote and left to its
    /// own pipeline (the reference framework's async command: no `status`,
    /// no `syncMode: SYNC`). Settled as `published` by an engine that owns
    /// the table's pipeline, passed by otherwise, without reading the row:
    /// see [`RecordAction::for_engine`].
    Foreign {
        /// The entity.
        key: EntityKey,
        /// The command's version.
        version: u64,
    },
    /// Another framework finished applying this version of this entity (the
    /// reference framework's command row, inserted or updated with a status
    /// `{step}:FINISHED`): it wrote the data row without this engine's
    /// index entries, or with those of the previous version. Its entries
    /// are rewritten from the data row
    /// ([`Engine::repair_indexes_after`](cqrs_core::Engine::repair_indexes_after)).
    RepairIndexes {
        /// The entity.
        key: EntityKey,
        /// The command's version.
        version: u64,
    },
    /// The insert of a command row to settle, whose key cannot be read (no
    /// string `pk`/`sk`, or a sort key that is not `{sk}@{version}`). It can
    /// never succeed: it is logged and skipped, for retrying it would hold up
    /// every later record of its shard.
    Malformed(String),
}

impl RecordAction {
    /// What `engine` does with the record: a [`RecordAction::Foreign`]
    /// command is settled when the engine owns foreign commands
    /// ([`EngineConfig::apply_foreign_commands`](cqrs_core::EngineConfig::apply_foreign_commands)),
    /// and skipped otherwise, so that a bystander never reads (or waits on)
    /// rows another framework's pipeline is in charge of.
    pub fn for_engine(self, engine: &cqrs_core::Engine) -> RecordAction {
        match self {
            RecordAction::Foreign { key, version } if engine.config().apply_foreign_commands => {
                RecordAction::Settle {
                    key,
                    version,
                    inserted: CommandStatus::Published,
                }
            }
            RecordAction::Foreign { .. } => RecordAction::Skip,
            other => other,
        }
    }
}

/// Status values of an inserted command row that still need work: `published`
/// (an async publish: nothing applied yet) and `applied` (a sync publish or a
/// commit whose handlers the publisher may not have completed; the engine
/// waits for its recovery grace before running them again).
pub const SETTLED_STATUSES: [&str; 2] = ["published", "applied"];

/// Classifies one stream record from its parts.
///
/// The rule: an `INSERT` whose new image has `status` `published` or
/// `applied` ([`SETTLED_STATUSES`]) is a command to settle; so is one with no
/// `status` and no `syncMode: "SYNC"`, an async command of the reference
/// framework, is [`RecordAction::Foreign`]: settled only by an engine that
/// owns the table's pipeline ([`RecordAction::for_engine`]). An `INSERT`
/// or `MODIFY` whose status is the reference framework's `{step}:FINISHED`
/// is [`RecordAction::RepairIndexes`]: it wrote that version's data row.
/// Everything else is skipped: `MODIFY` (status changes, TTL set on a
/// superseded row) and `REMOVE` (TTL expiry) records carry no new command,
/// and rows inserted `finished` (no handler interested), `failed`, or with
/// the reference framework's step statuses need nothing here. `pk` and
/// `row_sk` are the keys of the record (the sort key with its `@{version}`).
pub fn classify(
    event_name: &str,
    status: Option<&str>,
    sync_mode: Option<&str>,
    pk: Option<&str>,
    row_sk: Option<&str>,
) -> RecordAction {
    if status.is_some_and(|s| s.ends_with(FOREIGN_FINISHED)) && matches!(event_name, "INSERT" | "MODIFY") {
        return match command_key(pk, row_sk) {
            Ok((key, version)) => RecordAction::RepairIndexes { key, version },
            Err(why) => RecordAction::Malformed(why),
        };
    }
    if event_name != "INSERT" {
        return RecordAction::Skip;
    }
    let inserted = match (status, sync_mode) {
        (Some("published"), _) => Some(CommandStatus::Published),
        (Some("applied"), _)
            if cqrs_core::regressions::active(cqrs_core::regressions::SYNC_PUBLISH_LEFT_TO_PUBLISHER) =>
        {
            return RecordAction::Skip;
        }
        (Some("applied"), _) => Some(CommandStatus::Applied),
        (None, mode) if mode != Some("SYNC") => None,
        _ => return RecordAction::Skip,
    };
    let (Some(pk), Some(row_sk)) = (pk, row_sk) else {
        return RecordAction::Malformed("no string pk and sk".into());
    };
    match parse_command_sk(row_sk) {
        Some((sk, version)) if !sk.is_empty() && !pk.is_empty() && version > 0 => {
            let key = EntityKey::new(pk, sk);
            match inserted {
                Some(inserted) => RecordAction::Settle {
                    key,
                    version,
                    inserted,
                },
                None => RecordAction::Foreign { key, version },
            }
        }
        _ => RecordAction::Malformed(format!("sort key '{row_sk}' is not {{sk}}@{{version}}")),
    }
}

/// The end of the status the reference framework gives a command it
/// finished applying (`finish:FINISHED`).
const FOREIGN_FINISHED: &str = ":FINISHED";

/// The entity and version of a command row's keys.
fn command_key(pk: Option<&str>, row_sk: Option<&str>) -> Result<(EntityKey, u64), String> {
    let (Some(pk), Some(row_sk)) = (pk, row_sk) else {
        return Err("no string pk and sk".into());
    };
    match parse_command_sk(row_sk) {
        Some((sk, version)) if !sk.is_empty() && !pk.is_empty() && version > 0 => {
            Ok((EntityKey::new(pk, sk), version))
        }
        _ => Err(format!("sort key '{row_sk}' is not {{sk}}@{{version}}")),
    }
}

/// [`classify`] for a record read from DynamoDB Streams.
///
/// The keys are taken from `Keys` (every stream view type has them), or else
/// from the new image. An insert without a new image is skipped with a
/// warning: the stream must include new images (`NEW_IMAGE` or
/// `NEW_AND_OLD_IMAGES`, as [`ensure_tables`](crate::ensure_tables) creates it).
pub fn classify_record(record: &Record) -> RecordAction {
    let event_name = match record.event_name() {
        Some(OperationType::Insert) => "INSERT",
        Some(OperationType::Modify) => "MODIFY",
        Some(OperationType::Remove) => "REMOVE",
        _ => return RecordAction::Skip,
    };
    let Some(data) = record.dynamodb() else {
        return RecordAction::Skip;
    };
    let Some(image) = data.new_image() else {
        if event_name == "INSERT" {
            tracing::warn!("stream record without a new image: the stream must include new images");
        }
        return RecordAction::Skip;
    };
    fn string<'a>(map: Option<&'a HashMap<String, AttributeValue>>, name: &str) -> Option<&'a str> {
        match map?.get(name) {
            Some(AttributeValue::S(value)) => Some(value),
            _ => None,
        }
    }
    let key = |name: &str| string(data.keys(), name).or_else(|| string(Some(image), name));
    classify(
        event_name,
        string(Some(image), "status"),
        string(Some(image), crate::SYNC_MODE_ATTRIBUTE),
        key("pk"),
        key("sk"),
    )
}

/// Orders DynamoDB stream sequence numbers: decimal strings of varying length.
#[cfg_attr(not(feature = "lambda"), allow(dead_code))]
pub(crate) fn sequence_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let a = a.trim_start_matches('0');
    let b = b.trim_start_matches('0');
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_dynamodbstreams::types::StreamRecord;

    fn record(event: OperationType, sk: &str, status: Option<&str>) -> Record {
        let keys = HashMap::from([
            ("pk".to_owned(), AttributeValue::S("TENANT#a".into())),
            ("sk".to_owned(), AttributeValue::S(sk.into())),
        ]);
        let mut data = StreamRecord::builder()
            .set_keys(Some(keys.clone()))
            .sequence_number("1");
        if let Some(status) = status {
            let mut image = keys;
            image.insert("status".into(), AttributeValue::S(status.into()));
            data = data.set_new_image(Some(image));
        }
        Record::builder().event_name(event).dynamodb(data.build()).build()
    }

    #[test]
    fn published_and_applied_inserts_of_command_rows_are_settled() {
        let settle = |sk: &str, version, inserted| RecordAction::Settle {
            key: EntityKey::new("TENANT#a", sk),
            version,
            inserted,
        };
        assert_eq!(
            classify_record(&record(OperationType::Insert, "ORDER#1@3", Some("published"))),
            settle("ORDER#1", 3, CommandStatus::Published)
        );
        assert_eq!(
            classify_record(&record(OperationType::Insert, "ORDER#1@3", Some("applied"))),
            settle("ORDER#1", 3, CommandStatus::Applied)
        );
        for status in ["finished", "failed", "other"] {
            assert_eq!(
                classify_record(&record(OperationType::Insert, "ORDER#1@3", Some(status))),
                RecordAction::Skip,
                "{status}"
            );
        }
        assert_eq!(
            classify_record(&record(OperationType::Modify, "ORDER#1@3", Some("published"))),
            RecordAction::Skip
        );
        assert_eq!(
            classify_record(&record(OperationType::Remove, "ORDER#1@3", None)),
            RecordAction::Skip
        );
        assert_eq!(
            classify_record(&record(OperationType::Insert, "ORDER#1@3", None)),
            RecordAction::Skip
        );
        assert!(matches!(
            classify_record(&record(OperationType::Insert, "ORDER#1", Some("published"))),
            RecordAction::Malformed(_)
        ));
    }

    #[test]
    fn inserts_of_the_reference_framework_are_settled_only_when_async() {
        let (pk, sk) = (Some("TENANT#a"), Some("PRODUCT#P@1"));
        // Its async command has no status and no syncMode: the engine decides
        // (it leaves the row to that framework unless it owns the pipeline).
        assert_eq!(
            classify("INSERT", None, None, pk, sk),
            RecordAction::Foreign {
                key: EntityKey::new("TENANT#a", "PRODUCT#P"),
                version: 1,
            }
        );
        assert_eq!(classify("INSERT", None, Some("SYNC"), pk, sk), RecordAction::Skip);
        for status in ["check_version:FAILED", "sync_data:STARTED"] {
            assert_eq!(
                classify("INSERT", Some(status), Some("SYNC"), pk, sk),
                RecordAction::Skip,
                "{status}"
            );
        }
        // A version it finished applying: its data row, whose index entries
        // are repaired; inserted so (a sync publish) or marked so later.
        let repair = RecordAction::RepairIndexes {
            key: EntityKey::new("TENANT#a", "PRODUCT#P"),
            version: 1,
        };
        for event in ["INSERT", "MODIFY"] {
            assert_eq!(
                classify(event, Some("finish:FINISHED"), Some("SYNC"), pk, sk),
                repair,
                "{event}"
            );
            assert_eq!(
                classify(event, Some("finish:FINISHED"), None, pk, sk),
                repair,
                "{event}"
            );
        }
        assert_eq!(
            classify("REMOVE", Some("finish:FINISHED"), None, pk, sk),
            RecordAction::Skip
        );
        assert!(matches!(
            classify("MODIFY", Some("finish:FINISHED"), None, pk, Some("PRODUCT#P")),
            RecordAction::Malformed(_)
        ));
    }

    #[tokio::test]
    async fn a_foreign_insert_is_settled_only_by_an_engine_that_owns_it() {
        use cqrs_core::{AsyncDispatch, Engine};
        let storage = std::sync::Arc::new(cqrs_memory::InMemory::new());
        let engine = |owner: bool| {
            Engine::builder(storage.clone())
                .dispatch(AsyncDispatch::External)
                .apply_foreign_commands(owner)
                .build()
        };
        let key = EntityKey::new("TENANT#a", "PRODUCT#P");
        let foreign = || RecordAction::Foreign {
            key: key.clone(),
            version: 1,
        };
        assert_eq!(foreign().for_engine(&engine(false)), RecordAction::Skip);
        assert_eq!(
            foreign().for_engine(&engine(true)),
            RecordAction::Settle {
                key: key.clone(),
                version: 1,
                inserted: CommandStatus::Published,
            }
        );
        // Everything else is the engine's whatever it owns.
        assert_eq!(RecordAction::Skip.for_engine(&engine(true)), RecordAction::Skip);
    }

    #[test]
    fn unusable_keys_are_malformed() {
        for (pk, sk) in [
            (None, None),
            (Some("TENANT#a"), None),
            (Some("TENANT#a"), Some("ORDER#1")),
            (Some("TENANT#a"), Some("ORDER#1@x")),
            (Some("TENANT#a"), Some("ORDER#1@0")),
            (Some("TENANT#a"), Some("@1")),
            (Some(""), Some("ORDER#1@1")),
        ] {
            assert!(
                matches!(
                    classify("INSERT", Some("published"), None, pk, sk),
                    RecordAction::Malformed(_)
                ),
                "{pk:?} {sk:?}"
            );
        }
    }

    #[test]
    fn sequence_numbers_compare_as_numbers() {
        use std::cmp::Ordering::*;
        assert_eq!(sequence_cmp("9", "10"), Less);
        assert_eq!(sequence_cmp("000100", "99"), Greater);
        assert_eq!(sequence_cmp("123", "123"), Equal);
        assert_eq!(sequence_cmp("124", "123"), Greater);
    }
}
