//! Builders of stored rows and handler events, for what a test needs to
//! hand over: a mock's return value, a handler's event.
//!
//! ```
//! use cqrs_core::{CommandRecord, CommandStatus, DataItem, DataSyncEvent};
//! use serde_json::json;
//!
//! let item = DataItem::builder("TENANT#shop-a", "ORDER#ORD-000001")
//!     .version(3)
//!     .attributes(json!({ "status": "shipped" }))
//!     .build();
//! assert_eq!((item.code.as_str(), item.tenant_code(), item.csk().as_str()),
//!            ("ORD-000001", "shop-a", "ORDER#ORD-000001@3"));
//!
//! let command = CommandRecord::builder("TENANT#shop-a", "ORDER#ORD-000001")
//!     .version(3)
//!     .status(CommandStatus::Finished)
//!     .build();
//! assert_eq!(command.version, 3);
//!
//! let before = DataItem::builder("TENANT#shop-a", "ORDER#ORD-000001")
//!     .version(2)
//!     .attributes(json!({ "status": "confirmed" }))
//!     .build();
//! let event = DataSyncEvent::of(Some(before), item);
//! assert_eq!(event.command.version, 3);
//! assert!(!event.is_create());
//! ```

use chrono::{DateTime, Utc};
use serde::Serialize;
use smol_str::SmolStr;

use crate::attributes::Attributes;
use crate::context::InvocationContext;
use crate::engine::records::{command_record, data_item};
use crate::error::Result;
use crate::handler::DataSyncEvent;
use crate::keys::tenant_of_pk;
use crate::model::{CommandInput, CommandRecord, CommandStatus, DataItem};

/// What both builders share: the command's content and its audit fields.
#[derive(Debug, Clone)]
struct Fixture {
    input: CommandInput,
    version: u64,
    user: SmolStr,
    at: DateTime<Utc>,
}

impl Fixture {
    fn new(pk: SmolStr, sk: SmolStr) -> Self {
        Self {
            input: CommandInput::new(pk, sk),
            version: 1,
            user: SmolStr::new_static("user-1"),
            at: DateTime::UNIX_EPOCH,
        }
    }

    fn command(self, status: CommandStatus) -> CommandRecord {
        let tenant = tenant_of_pk(&self.input.pk).unwrap_or_default();
        let mut ctx = InvocationContext::new(tenant, self.user);
        ctx.request_id = SmolStr::new_static("fixture");
        command_record(self.input, self.version, status, &ctx, self.at)
    }
}

/// Methods both builders have.
macro_rules! fixture_setters {
    ($builder:ty) => {
        impl $builder {
            /// Sets the version (default 1).
            pub fn version(mut self, version: u64) -> Self {
                self.fixture.version = version;
                self
            }

            /// Sets the attributes (default `{}`).
            pub fn attributes(mut self, attributes: impl Into<Attributes>) -> Self {
                self.fixture.input.attributes = attributes.into();
                self
            }

            /// Sets the attributes from any serializable value.
            pub fn attributes_from<T: Serialize + ?Sized>(mut self, attributes: &T) -> Result<Self> {
                self.fixture.input.attributes = Attributes::from_serialize(attributes)?;
                Ok(self)
            }

            /// Sets the name (default: the code).
            pub fn name(mut self, name: impl AsRef<str>) -> Self {
                self.fixture.input.name = SmolStr::new(name);
                self
            }

            /// Sets the code (default: the sort key after its last `#`).
            pub fn code(mut self, code: impl AsRef<str>) -> Self {
                self.fixture.input.code = SmolStr::new(code);
                self
            }

            /// Sets the entity type (default: the sort key before its first `#`).
            pub fn entity_type(mut self, entity_type: impl AsRef<str>) -> Self {
                self.fixture.input.entity_type = SmolStr::new(entity_type);
                self
            }

            /// Marks it deleted.
            pub fn deleted(mut self, is_deleted: bool) -> Self {
                self.fixture.input.is_deleted = is_deleted;
                self
            }

            /// Sets who published it (default `user-1`).
            pub fn user(mut self, user: impl AsRef<str>) -> Self {
                self.fixture.user = SmolStr::new(user);
                self
            }

            /// Sets when it was published (default: the Unix epoch, so that
            /// two builds compare equal).
            pub fn at(mut self, at: DateTime<Utc>) -> Self {
                self.fixture.at = at;
                self
            }
        }
    };
}

/// Builds a [`DataItem`]: `DataItem::builder(pk, sk)`.
#[derive(Debug, Clone)]
#[must_use]
pub struct DataItemBuilder {
    fixture: Fixture,
}

fixture_setters!(DataItemBuilder);

impl DataItemBuilder {
    /// The item, as the engine would store it after applying the command.
    pub fn build(self) -> DataItem {
        data_item(&self.fixture.command(CommandStatus::Finished), None)
    }
}

/// Builds a [`CommandRecord`]: `CommandRecord::builder(pk, sk)`.
#[derive(Debug, Clone)]
#[must_use]
pub struct CommandRecordBuilder {
    fixture: Fixture,
    status: CommandStatus,
}

fixture_setters!(CommandRecordBuilder);

impl CommandRecordBuilder {
    /// Sets the status (default [`CommandStatus::Finished`]).
    pub fn status(mut self, status: CommandStatus) -> Self {
        self.status = status;
        self
    }

    /// The command, as the engine would store it.
    pub fn build(self) -> CommandRecord {
        self.fixture.command(self.status)
    }
}

impl DataItem {
    /// A builder of an item at `pk`/`sk`, version 1, empty attributes: for
    /// tests (a mock's return value).
    pub fn builder(pk: impl AsRef<str>, sk: impl AsRef<str>) -> DataItemBuilder {
        DataItemBuilder {
            fixture: Fixture::new(SmolStr::new(pk), SmolStr::new(sk)),
        }
    }
}

impl CommandRecord {
    /// A builder of a stored command at `pk`/`sk`, version 1, status
    /// `finished`: for tests.
    pub fn builder(pk: impl AsRef<str>, sk: impl AsRef<str>) -> CommandRecordBuilder {
        CommandRecordBuilder {
            fixture: Fixture::new(SmolStr::new(pk), SmolStr::new(sk)),
            status: CommandStatus::Finished,
        }
    }
}

impl DataSyncEvent {
    /// The event of the command that turned `old` into `new` (a creation
    /// when `old` is `None`): for testing a handler. The command is `new`'s
    /// content at `new`'s version; the context is its publisher's.
    pub fn of(old: Option<DataItem>, new: DataItem) -> DataSyncEvent {
        let command = new.command(CommandStatus::Applied, None);
        let mut context = InvocationContext::new(new.tenant_code(), new.updated_by.clone());
        context.request_id = new.request_id.clone();
        DataSyncEvent {
            command,
            old,
            new,
            context,
            attempt: 1,
        }
    }
}
