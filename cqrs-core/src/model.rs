//! The data model: commands in, stored commands (one per version), data items
//! (the read model, one per entity) and history (each superseded data version).

use std::fmt;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use smol_str::SmolStr;

use crate::attributes::Attributes;
use crate::error::{Error, Result};
use crate::idempotency::IdempotencyKey;
use crate::keys::{tenant_of_pk, EntityKey, KEY_SEPARATOR, VERSION_SEPARATOR};

/// The version a command expects its entity to be at.
///
/// Serialized as the reference framework does: the version number, with `-1`
/// for [`ExpectedVersion::Latest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExpectedVersion {
    /// The entity must be at exactly this version; `0` means it must not exist yet.
    Exactly(u64),
    /// Last writer wins: apply on top of whatever version is current. Opt-in.
    Latest,
}

impl ExpectedVersion {
    /// The entity must not exist yet: the command creates it.
    pub const NEW: ExpectedVersion = ExpectedVersion::Exactly(0);
}

impl Default for ExpectedVersion {
    fn default() -> Self {
        Self::NEW
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Exactly(v) => write!(f, "{v}"),
            ExpectedVersion::Latest => f.write_str("latest"),
        }
    }
}

impl Serialize for ExpectedVersion {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            ExpectedVersion::Exactly(v) => s.serialize_u64(*v),
            ExpectedVersion::Latest => s.serialize_i64(-1),
        }
    }
}

impl<'de> Deserialize<'de> for ExpectedVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        match i64::deserialize(d)? {
            -1 => Ok(ExpectedVersion::Latest),
            v if v >= 0 => Ok(ExpectedVersion::Exactly(v as u64)),
            v => Err(serde::de::Error::custom(format!(
                "version must be >= 0 or -1 (latest), got {v}"
            ))),
        }
    }
}

/// A command to publish: the full new state of one entity.
///
/// `code`, `name` and `entity_type` default from the sort key
/// (`ORDER#ORD-000001` gives code `ORD-000001`, type `ORDER`); the tenant is
/// the pk's. The entity id is always `pk#sk`; `id` and `tenant_code`, when
/// given, are checked against the key.
///
/// ```
/// use cqrs_core::{CommandInput, ExpectedVersion};
/// #[derive(serde::Serialize)]
/// struct Product { price: u32 }
///
/// let cmd = CommandInput::new("TENANT#shop-a", "PRODUCT#PRD-001")
///     .name("Wireless Mouse")
///     .attributes_from(&Product { price: 2999 })?;
/// assert_eq!(cmd.code, "PRD-001");
/// assert_eq!(cmd.entity_type, "PRODUCT");
/// assert_eq!(cmd.version, ExpectedVersion::NEW);
/// # Ok::<(), cqrs_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandInput {
    /// Partition key, `{TYPE}#{tenant}`.
    pub pk: SmolStr,
    /// Sort key, without version.
    pub sk: SmolStr,
    /// Entity id; when given it must be `pk#sk` (it is always stored as such).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Tenant of the entity; when given it must be the pk's tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_code: Option<String>,
    /// Business code of the entity.
    pub code: SmolStr,
    /// Display name.
    pub name: SmolStr,
    /// The version the entity is expected to be at.
    #[serde(default)]
    pub version: ExpectedVersion,
    /// Entity type.
    #[serde(rename = "type")]
    pub entity_type: SmolStr,
    /// The entity's attributes.
    #[serde(default)]
    pub attributes: Attributes,
    /// Soft-delete flag.
    #[serde(default)]
    pub is_deleted: bool,
    /// Expiry of the data item, in seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<i64>,
    /// Optional sequence number of the entity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Makes a retried publish of the same request write once (see
    /// [`IdempotencyKey`]). Not part of the entity's state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<IdempotencyKey>,
}

impl CommandInput {
    /// A command creating (version 0) the entity at `pk`/`sk` with empty attributes.
    pub fn new(pk: impl AsRef<str>, sk: impl AsRef<str>) -> Self {
        let pk = SmolStr::new(pk);
        let sk = SmolStr::new(sk);
        // The separator is ASCII: a byte search finds it, and cuts the key
        // on character boundaries.
        let separator = KEY_SEPARATOR as u8;
        let bytes = sk.as_bytes();
        let first = bytes.iter().position(|&b| b == separator).unwrap_or(bytes.len());
        let last = bytes.iter().rposition(|&b| b == separator).map_or(0, |i| i + 1);
        let code = SmolStr::new(&sk[last..]);
        let entity_type = SmolStr::new(&sk[..first]);
        Self {
            pk,
            id: None,
            tenant_code: None,
            name: code.clone(),
            code,
            sk,
            version: ExpectedVersion::NEW,
            entity_type,
            attributes: Attributes::new(),
            is_deleted: false,
            ttl: None,
            seq: None,
            idempotency_key: None,
        }
    }

    /// A command that replaces `item`'s state, expecting its current version.
    pub fn update_of(item: &DataItem) -> Self {
        Self {
            pk: item.pk.clone(),
            sk: item.sk.clone(),
            id: None,
            tenant_code: None,
            code: item.code.clone(),
            name: item.name.clone(),
            version: ExpectedVersion::Exactly(item.version),
            entity_type: item.entity_type.clone(),
            attributes: item.attributes.clone(),
            is_deleted: item.is_deleted,
            ttl: item.ttl,
            seq: item.seq,
            idempotency_key: None,
        }
    }

    /// The entity's key.
    pub fn key(&self) -> EntityKey {
        EntityKey::new(self.pk.clone(), self.sk.clone())
    }

    /// Sets the idempotency key: a retry of this publish (same key, same
    /// content) returns the first one's result and writes nothing.
    pub fn idempotency_key(mut self, key: impl Into<IdempotencyKey>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Sets the code.
    pub fn code(mut self, code: impl AsRef<str>) -> Self {
        self.code = SmolStr::new(code);
        self
    }

    /// Sets the name.
    pub fn name(mut self, name: impl AsRef<str>) -> Self {
        self.name = SmolStr::new(name);
        self
    }

    /// Sets the entity type.
    pub fn entity_type(mut self, entity_type: impl AsRef<str>) -> Self {
        self.entity_type = SmolStr::new(entity_type);
        self
    }

    /// Sets the expected version.
    pub fn version(mut self, version: ExpectedVersion) -> Self {
        self.version = version;
        self
    }

    /// Sets the attributes from a JSON value (or the [`Attributes`] of an item).
    pub fn attributes(mut self, attributes: impl Into<Attributes>) -> Self {
        self.attributes = attributes.into();
        self
    }

    /// Sets the attributes from any serializable value.
    pub fn attributes_from<T: Serialize + ?Sized>(mut self, attributes: &T) -> Result<Self> {
        self.attributes = Attributes::from_serialize(attributes)?;
        Ok(self)
    }

    /// Marks the entity deleted (or not).
    pub fn deleted(mut self, is_deleted: bool) -> Self {
        self.is_deleted = is_deleted;
        self
    }

    /// Sets the expiry of the data item (seconds since the Unix epoch).
    pub fn ttl(mut self, ttl: Option<i64>) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets the entity's sequence number.
    pub fn seq(mut self, seq: Option<u64>) -> Self {
        self.seq = seq;
        self
    }
}

/// A partial update: attributes to deep-merge over the entity's current state.
///
/// Objects merge key by key, recursively; any other value replaces what was
/// there; `null` removes the key (JSON merge patch, RFC 7386).
///
/// ```
/// use cqrs_core::{PartialUpdate, ExpectedVersion};
/// let update = PartialUpdate::new("TENANT#shop-a", "ORDER#ORD-000001", ExpectedVersion::Exactly(1))
///     .attributes(serde_json::json!({ "status": "confirmed" }));
/// assert_eq!(update.attributes["status"], "confirmed");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartialUpdate {
    /// Partition key.
    pub pk: SmolStr,
    /// Sort key.
    pub sk: SmolStr,
    /// The version the entity is expected to be at.
    pub version: ExpectedVersion,
    /// Merge patch applied to the current attributes.
    #[serde(default)]
    pub attributes: Value,
    /// New name, if it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<SmolStr>,
    /// New soft-delete flag, if it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_deleted: Option<bool>,
    /// Makes a retried update of the same request write once (see [`IdempotencyKey`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<IdempotencyKey>,
}

impl PartialUpdate {
    /// An update of the entity at `pk`/`sk` expected at `version`, changing nothing yet.
    pub fn new(pk: impl AsRef<str>, sk: impl AsRef<str>, version: ExpectedVersion) -> Self {
        Self {
            pk: SmolStr::new(pk),
            sk: SmolStr::new(sk),
            version,
            attributes: Value::Object(Default::default()),
            name: None,
            is_deleted: None,
            idempotency_key: None,
        }
    }

    /// Sets the idempotency key (see [`CommandInput::idempotency_key`]).
    pub fn idempotency_key(mut self, key: impl Into<IdempotencyKey>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// The entity's key.
    pub fn key(&self) -> EntityKey {
        EntityKey::new(self.pk.clone(), self.sk.clone())
    }

    /// Sets the merge patch.
    pub fn attributes(mut self, patch: Value) -> Self {
        self.attributes = patch;
        self
    }

    /// Sets the merge patch from any serializable value.
    pub fn attributes_from<T: Serialize + ?Sized>(mut self, patch: &T) -> Result<Self> {
        self.attributes = to_attributes(patch)?;
        Ok(self)
    }

    /// Sets a new name.
    pub fn name(mut self, name: impl AsRef<str>) -> Self {
        self.name = Some(SmolStr::new(name));
        self
    }

    /// Sets the soft-delete flag.
    pub fn deleted(mut self, is_deleted: bool) -> Self {
        self.is_deleted = Some(is_deleted);
        self
    }
}

/// Where a stored command is in the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CommandStatus {
    /// Stored, not yet applied to the data table (async publish).
    Published,
    /// Applied to the data table; handlers, if any, not yet confirmed.
    Applied,
    /// Applied and every matching handler succeeded.
    Finished,
    /// Applied, but a handler failed after its retries; see
    /// [`CommandService::list_failures`](crate::CommandService::list_failures).
    Failed,
}

impl CommandStatus {
    /// The status as stored: `published`, `applied`, `finished`, `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            CommandStatus::Published => "published",
            CommandStatus::Applied => "applied",
            CommandStatus::Finished => "finished",
            CommandStatus::Failed => "failed",
        }
    }

    /// What a stored status means here, and whether it is one of ours.
    ///
    /// | Stored | Status |
    /// |---|---|
    /// | `published`, `applied`, `finished`, `failed` | the same (ours) |
    /// | `finish:FINISHED` (the reference framework's last step) | `Finished` |
    /// | `{step}:FAILED` | `Failed` |
    /// | `{step}:STARTED`, other `{step}:FINISHED` (in its pipeline) | `Published` |
    /// | nothing (`""`: its async command, not yet processed) | `Published` |
    /// | anything else | `Published`: not applied as far as we know |
    ///
    /// A read never fails on a status: an unknown one is kept as
    /// [`CommandRecord::foreign_status`] and means "not known to be done".
    ///
    /// ```
    /// use cqrs_core::CommandStatus;
    /// assert_eq!(CommandStatus::from_stored("applied"), (CommandStatus::Applied, true));
    /// assert_eq!(CommandStatus::from_stored("finish:FINISHED"), (CommandStatus::Finished, false));
    /// assert_eq!(CommandStatus::from_stored("check_version:FAILED"), (CommandStatus::Failed, false));
    /// assert_eq!(CommandStatus::from_stored("sync_data:STARTED"), (CommandStatus::Published, false));
    /// assert_eq!(CommandStatus::from_stored(""), (CommandStatus::Published, false));
    /// ```
    pub fn from_stored(stored: &str) -> (CommandStatus, bool) {
        // Ours, by the names serde gives them.
        let ours: std::result::Result<_, serde::de::value::Error> =
            CommandStatus::deserialize(serde::de::IntoDeserializer::into_deserializer(stored));
        if let Ok(status) = ours {
            return (status, true);
        }
        let status = match stored.rsplit_once(':') {
            Some(("finish", "FINISHED")) => CommandStatus::Finished,
            Some((_, "FAILED")) => CommandStatus::Failed,
            _ => CommandStatus::Published,
        };
        (status, false)
    }
}

/// A stored command: one per version of an entity, stored at `{sk}@{version}`.
///
/// Serialized with the fields the reference framework stores, including
/// the derived `id` (`pk#sk`) and `tenantCode` (the pk's tenant); they are
/// computed, not stored, here.
///
/// Deserialized from what either framework writes: the reference
/// framework may leave out `isDeleted` (false), `requestId`, `createdBy` and
/// `status` (an async command not yet processed: `published`), and stores
/// statuses of its own (see [`CommandRecord::foreign_status`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(from = "StoredCommand")]
pub struct CommandRecord {
    /// Partition key.
    pub pk: SmolStr,
    /// Sort key of the entity, without version (the row's key is [`CommandRecord::command_sk`]).
    pub sk: SmolStr,
    /// Business code.
    pub code: SmolStr,
    /// Display name.
    pub name: SmolStr,
    /// The version this command produces.
    pub version: u64,
    /// Entity type.
    #[serde(rename = "type")]
    pub entity_type: SmolStr,
    /// Attributes.
    pub attributes: Attributes,
    /// Soft-delete flag.
    pub is_deleted: bool,
    /// Expiry of the data item (seconds since the Unix epoch).
    #[serde(default)]
    pub ttl: Option<i64>,
    /// Sequence number of the entity.
    #[serde(default)]
    pub seq: Option<u64>,
    /// Pipeline status.
    pub status: CommandStatus,
    /// The status as another writer stored it, when it is not one of ours;
    /// `status` is then what it means here (see
    /// [`CommandStatus::from_stored`]). The reference framework stores
    /// `{step}:{STARTED|FINISHED|FAILED}` (`finish:FINISHED` when done), and
    /// no status at all for an async command (kept as `""`). `None` for a
    /// row of ours.
    pub foreign_status: Option<SmolStr>,
    /// What produced the command (from the invocation context).
    pub source: Option<SmolStr>,
    /// Request that published the command (empty when the writer had none).
    pub request_id: SmolStr,
    /// When the command was published.
    pub created_at: DateTime<Utc>,
    /// Who published it (empty when the writer had no user).
    pub created_by: SmolStr,
    /// From which address.
    pub created_ip: Option<SmolStr>,
    /// The engine that wrote it with a sync publish or commit and runs its
    /// handlers (see [`Heartbeat`](crate::Heartbeat)): recovery runs them
    /// again as soon as that publisher's heartbeat has expired. `None` for
    /// async commands, rows of another writer, and backends that keep no
    /// heartbeats; such a row is left to its publisher for the whole
    /// [recovery grace](crate::EngineConfig::recovery_grace).
    pub publisher: Option<SmolStr>,
    /// The W3C `traceparent` of the span that published the command, stored
    /// as the row's `traceparent` field when OpenTelemetry traces the
    /// publisher (see [`trace`](crate::trace)): the process that applies
    /// the command continues that trace. `None` otherwise.
    pub traceparent: Option<SmolStr>,
}

/// A command row as stored, by this framework or the reference framework:
/// what [`CommandRecord`] is deserialized through.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredCommand {
    pk: SmolStr,
    sk: SmolStr,
    code: SmolStr,
    name: SmolStr,
    version: u64,
    #[serde(rename = "type")]
    entity_type: SmolStr,
    #[serde(default, deserialize_with = "Attributes::deserialize_or_empty")]
    attributes: Attributes,
    #[serde(default)]
    is_deleted: bool,
    #[serde(default)]
    ttl: Option<i64>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    status: Option<SmolStr>,
    #[serde(default)]
    source: Option<SmolStr>,
    #[serde(default)]
    request_id: SmolStr,
    created_at: DateTime<Utc>,
    #[serde(default)]
    created_by: SmolStr,
    #[serde(default)]
    created_ip: Option<SmolStr>,
    #[serde(default)]
    publisher: Option<SmolStr>,
    #[serde(default)]
    traceparent: Option<SmolStr>,
}

impl From<StoredCommand> for CommandRecord {
    fn from(row: StoredCommand) -> Self {
        let stored = row.status.as_deref().unwrap_or_default();
        let (status, ours) = CommandStatus::from_stored(stored);
        CommandRecord {
            pk: row.pk,
            sk: row.sk,
            code: row.code,
            name: row.name,
            version: row.version,
            entity_type: row.entity_type,
            attributes: row.attributes,
            is_deleted: row.is_deleted,
            ttl: row.ttl,
            seq: row.seq,
            status,
            foreign_status: (!ours).then(|| row.status.unwrap_or_default()),
            source: row.source,
            request_id: row.request_id,
            created_at: row.created_at,
            created_by: row.created_by,
            created_ip: row.created_ip,
            publisher: row.publisher,
            traceparent: row.traceparent,
        }
    }
}

impl CommandRecord {
    /// The entity's key.
    pub fn key(&self) -> EntityKey {
        EntityKey::new(self.pk.clone(), self.sk.clone())
    }

    /// Entity id, `pk#sk`.
    pub fn id(&self) -> String {
        entity_id(&self.pk, &self.sk)
    }

    /// Tenant of the entity: the pk's.
    pub fn tenant_code(&self) -> &str {
        tenant_of_pk(&self.pk).unwrap_or_default()
    }

    /// The sort key of this command's row: `{sk}@{version}`.
    pub fn command_sk(&self) -> String {
        crate::keys::command_sk(&self.sk, self.version)
    }

    /// Deserializes the attributes.
    pub fn attributes_as<T: DeserializeOwned>(&self) -> Result<T> {
        self.attributes.deserialize_into()
    }
}

impl Serialize for CommandRecord {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let mut row = serializer.serialize_struct("CommandRecord", 19)?;
        serialize_entity_fields!(row, self);
        match self.foreign_status.as_deref() {
            // The row as its writer left it (its status was never changed here).
            Some("") => row.skip_field("status")?,
            Some(foreign) => row.serialize_field("status", foreign)?,
            None => row.serialize_field("status", &self.status)?,
        }
        optional_field(&mut row, "source", &self.source)?;
        row.serialize_field("requestId", &self.request_id)?;
        row.serialize_field("createdAt", &self.created_at)?;
        row.serialize_field("createdBy", &self.created_by)?;
        optional_field(&mut row, "createdIp", &self.created_ip)?;
        optional_field(&mut row, "publisher", &self.publisher)?;
        optional_field(&mut row, "traceparent", &self.traceparent)?;
        row.end()
    }
}

/// Serializes the fields a command row and a data row share, in the
/// reference framework's order (both types have them under the same names).
macro_rules! serialize_entity_fields {
    ($row:ident, $entity:ident) => {
        $row.serialize_field("pk", &$entity.pk)?;
        $row.serialize_field("sk", &$entity.sk)?;
        $row.serialize_field("id", &Joined(&$entity.pk, KEY_SEPARATOR, &$entity.sk))?;
        $row.serialize_field("code", &$entity.code)?;
        $row.serialize_field("name", &$entity.name)?;
        $row.serialize_field("version", &$entity.version)?;
        $row.serialize_field("tenantCode", $entity.tenant_code())?;
        $row.serialize_field("type", &$entity.entity_type)?;
        $row.serialize_field("attributes", &$entity.attributes)?;
        $row.serialize_field("isDeleted", &$entity.is_deleted)?;
        optional_field(&mut $row, "ttl", &$entity.ttl)?;
        optional_field(&mut $row, "seq", &$entity.seq)?;
    };
}
use serialize_entity_fields;

/// Writes `name` when `value` is set, skips it otherwise.
fn optional_field<S: SerializeStruct, T: Serialize>(
    row: &mut S,
    name: &'static str,
    value: &Option<T>,
) -> std::result::Result<(), S::Error> {
    match value {
        Some(value) => row.serialize_field(name, value),
        None => row.skip_field(name),
    }
}

/// `{a}{separator}{b}`, serialized without building the string first.
struct Joined<'a>(&'a str, char, &'a str);

impl fmt::Display for Joined<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{}", self.0, self.1, self.2)
    }
}

impl Serialize for Joined<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// `{sk}@{version}`, serialized without building the string first.
struct VersionedSk<'a>(&'a str, u64);

impl Serialize for VersionedSk<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("{}{VERSION_SEPARATOR}{}", self.0, self.1))
    }
}

fn entity_id(pk: &str, sk: &str) -> String {
    let mut id = String::with_capacity(pk.len() + 1 + sk.len());
    id.push_str(pk);
    id.push(KEY_SEPARATOR);
    id.push_str(sk);
    id
}

/// An entity in the data (read) table: the state of its latest applied version.
///
/// History rows have the same shape: the snapshot of a superseded version.
/// Copies are cheap: the strings are short or shared, and the attributes
/// are shared (see [`Attributes`]).
///
/// Serialized with the fields the reference framework stores, including the
/// derived `id`, `tenantCode`, `cpk` and `csk`; they are computed, not
/// stored, here.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataItem {
    /// Partition key.
    pub pk: SmolStr,
    /// Sort key (bare, without version).
    pub sk: SmolStr,
    /// Business code.
    pub code: SmolStr,
    /// Display name.
    pub name: SmolStr,
    /// Current version (1 after creation).
    pub version: u64,
    /// Entity type.
    #[serde(rename = "type")]
    pub entity_type: SmolStr,
    /// Attributes (absent or null in a row: empty; the reference framework
    /// accepts commands without attributes).
    #[serde(default, deserialize_with = "Attributes::deserialize_or_empty")]
    pub attributes: Attributes,
    /// Soft-delete flag (absent in a row: false).
    #[serde(default)]
    pub is_deleted: bool,
    /// Expiry (seconds since the Unix epoch).
    #[serde(default)]
    pub ttl: Option<i64>,
    /// Sequence number of the entity.
    #[serde(default)]
    pub seq: Option<u64>,
    /// Request that produced this version (empty when the writer had none).
    #[serde(default)]
    pub request_id: SmolStr,
    /// When the entity was created (version 1).
    pub created_at: DateTime<Utc>,
    /// Who created it (empty when the writer had no user).
    #[serde(default)]
    pub created_by: SmolStr,
    /// From which address it was created.
    #[serde(default)]
    pub created_ip: Option<SmolStr>,
    /// When this version was published.
    pub updated_at: DateTime<Utc>,
    /// Who published this version (empty when the writer had no user).
    #[serde(default)]
    pub updated_by: SmolStr,
    /// From which address.
    #[serde(default)]
    pub updated_ip: Option<SmolStr>,
}

impl DataItem {
    /// The entity's key.
    pub fn key(&self) -> EntityKey {
        EntityKey::new(self.pk.clone(), self.sk.clone())
    }

    /// Entity id, `pk#sk`.
    pub fn id(&self) -> String {
        entity_id(&self.pk, &self.sk)
    }

    /// Tenant of the entity: the pk's.
    pub fn tenant_code(&self) -> &str {
        tenant_of_pk(&self.pk).unwrap_or_default()
    }

    /// Partition key of the command that produced this version (the pk).
    pub fn cpk(&self) -> &str {
        &self.pk
    }

    /// Sort key of the command that produced this version: `{sk}@{version}`.
    pub fn csk(&self) -> String {
        crate::keys::command_sk(&self.sk, self.version)
    }

    /// The command that produced this version, with `status` and `source`
    /// (fields of a command row its data row does not have; so is
    /// [`CommandRecord::publisher`] and [`CommandRecord::traceparent`], left `None`).
    pub fn command(&self, status: CommandStatus, source: Option<SmolStr>) -> CommandRecord {
        CommandRecord {
            pk: self.pk.clone(),
            sk: self.sk.clone(),
            code: self.code.clone(),
            name: self.name.clone(),
            version: self.version,
            entity_type: self.entity_type.clone(),
            attributes: self.attributes.clone(),
            is_deleted: self.is_deleted,
            ttl: self.ttl,
            seq: self.seq,
            status,
            foreign_status: None,
            source,
            request_id: self.request_id.clone(),
            created_at: self.updated_at,
            created_by: self.updated_by.clone(),
            created_ip: self.updated_ip.clone(),
            publisher: None,
            traceparent: None,
        }
    }

    /// Whether `record` is the command this row was produced by, but for
    /// its status, source and publisher: what [`DataItem::command`]
    /// rebuilds, compared without building it. A store can then keep such a
    /// command row as those alone. A row with a
    /// [`traceparent`](CommandRecord::traceparent) is not (it is rare: only
    /// when traces are exported), so that such a compact form stays small.
    pub fn is_row_of(&self, record: &CommandRecord) -> bool {
        record.traceparent.is_none()
            && record.version == self.version
            && record.pk == self.pk
            && record.sk == self.sk
            && record.request_id == self.request_id
            && record.created_at == self.updated_at
            && record.created_by == self.updated_by
            && record.created_ip == self.updated_ip
            && record.foreign_status.is_none()
            && record.content() == self.content()
    }

    /// Deserializes the attributes.
    ///
    /// ```
    /// # use cqrs_core::DataItem;
    /// #[derive(serde::Deserialize)]
    /// struct Stock { quantity: u32 }
    /// # fn f(item: &DataItem) -> cqrs_core::Result<()> {
    /// let stock: Stock = item.attributes_as()?;
    /// # Ok(()) }
    /// ```
    pub fn attributes_as<T: DeserializeOwned>(&self) -> Result<T> {
        self.attributes.deserialize_into()
    }

    /// The value at a dotted path of the item as it is serialized:
    /// `attributes.status`, `attributes.address.city`, `code`, `isDeleted`, ...
    pub fn field(&self, path: &str) -> Option<Value> {
        let (head, rest) = match path.split_once('.') {
            Some((head, rest)) => (head, Some(rest)),
            None => (path, None),
        };
        if head == "attributes" {
            let mut value = self.attributes.as_value();
            for part in rest.into_iter().flat_map(|r| r.split('.')) {
                value = match value {
                    Value::Object(map) => map.get(part)?,
                    Value::Array(items) => items.get(part.parse::<usize>().ok()?)?,
                    _ => return None,
                };
            }
            return Some(value.clone());
        }
        if rest.is_some() {
            return None;
        }
        Some(match head {
            "pk" => Value::from(self.pk.as_str()),
            "sk" => Value::from(self.sk.as_str()),
            "id" => Value::from(self.id()),
            "code" => Value::from(self.code.as_str()),
            "name" => Value::from(self.name.as_str()),
            "version" => Value::from(self.version),
            "tenantCode" => Value::from(self.tenant_code()),
            "type" => Value::from(self.entity_type.as_str()),
            "isDeleted" => Value::from(self.is_deleted),
            "seq" => Value::from(self.seq?),
            "ttl" => Value::from(self.ttl?),
            "createdBy" => Value::from(self.created_by.as_str()),
            "updatedBy" => Value::from(self.updated_by.as_str()),
            _ => return None,
        })
    }
}

impl Serialize for DataItem {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let mut row = serializer.serialize_struct("DataItem", 21)?;
        serialize_entity_fields!(row, self);
        row.serialize_field("cpk", &self.pk)?;
        row.serialize_field("csk", &VersionedSk(&self.sk, self.version))?;
        row.serialize_field("requestId", &self.request_id)?;
        row.serialize_field("createdAt", &self.created_at)?;
        row.serialize_field("createdBy", &self.created_by)?;
        optional_field(&mut row, "createdIp", &self.created_ip)?;
        row.serialize_field("updatedAt", &self.updated_at)?;
        row.serialize_field("updatedBy", &self.updated_by)?;
        optional_field(&mut row, "updatedIp", &self.updated_ip)?;
        row.end()
    }
}

/// A handler that failed for one command, after its retries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HandlerFailure {
    /// The handler's [`name`](crate::DataSyncHandler::name).
    pub handler: String,
    /// The last error it returned.
    pub error: String,
    /// How many times it was run.
    pub attempts: u32,
}

/// A command whose data-sync handlers failed: queryable, and cleared by a
/// successful [`reprocess`](crate::CommandService::reprocess).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailedCommand {
    /// Partition key of the entity.
    pub pk: String,
    /// Sort key of the entity.
    pub sk: String,
    /// Version of the failed command.
    pub version: u64,
    /// Tenant of the entity.
    pub tenant_code: String,
    /// The handlers that failed.
    pub failures: Vec<HandlerFailure>,
    /// When the command was marked failed.
    pub failed_at: DateTime<Utc>,
}

impl FailedCommand {
    /// The entity's key.
    pub fn key(&self) -> EntityKey {
        EntityKey::new(self.pk.clone(), self.sk.clone())
    }
}

/// What a publish did.
#[derive(Debug, Clone, PartialEq)]
pub enum Published<T> {
    /// A new version was written.
    Written(T),
    /// The command equals the entity's current state (the dirty check):
    /// nothing was written. Carries the current state.
    Unchanged(T),
}

impl<T> Published<T> {
    /// The written value, `None` when nothing was written.
    pub fn written(self) -> Option<T> {
        match self {
            Published::Written(value) => Some(value),
            Published::Unchanged(_) => None,
        }
    }

    /// `true` when the dirty check found nothing to write.
    pub fn is_unchanged(&self) -> bool {
        matches!(self, Published::Unchanged(_))
    }

    /// The entity's state after the publish, written or not.
    pub fn into_inner(self) -> T {
        match self {
            Published::Written(value) | Published::Unchanged(value) => value,
        }
    }

    /// A reference to the state after the publish.
    pub fn get(&self) -> &T {
        match self {
            Published::Written(value) | Published::Unchanged(value) => value,
        }
    }

    /// The same outcome with the value mapped by `f`.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Published<U> {
        match self {
            Published::Written(value) => Published::Written(f(value)),
            Published::Unchanged(value) => Published::Unchanged(f(value)),
        }
    }

    /// The same outcome with the value mapped by `f`, which may fail.
    pub fn try_map<U, E>(
        self,
        f: impl FnOnce(T) -> std::result::Result<U, E>,
    ) -> std::result::Result<Published<U>, E> {
        Ok(match self {
            Published::Written(value) => Published::Written(f(value)?),
            Published::Unchanged(value) => Published::Unchanged(f(value)?),
        })
    }
}

impl Published<DataItem> {
    /// The data item after the publish, written or not.
    pub fn into_item(self) -> DataItem {
        self.into_inner()
    }
}

/// How the data-sync handlers of a synchronous publish ended, when the
/// publish returned. The write stands whatever this says.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Handled {
    /// No handler ran because nothing was written (the dirty check), or the
    /// closure of a read-modify-write published nothing.
    NoHandlers,
    /// Every interested handler succeeded (a command no handler is
    /// interested in is finished once written); the command is `finished`.
    Finished,
    /// A handler failed on every attempt: the command is recorded as
    /// failed ([`list_failures`](crate::CommandService::list_failures)),
    /// and [`reprocess`](crate::CommandService::reprocess) runs the failed
    /// handlers again.
    Failed(Vec<HandlerFailure>),
    /// The handlers did not finish (storage unavailable, a handler that
    /// could not reach it): the command was handed to recovery, which runs
    /// them again until they do.
    Recovering,
    /// An asynchronous publish: the pipeline runs the handlers later.
    Later,
}

impl Handled {
    /// How the handlers of a command stored with `status` stand now: what a
    /// keyed retry reports of its first publish. `interested` says whether a
    /// handler wants an `applied` command (then its handlers have not
    /// finished); `failures` reads its failure record, only when it failed.
    pub(crate) async fn of_stored<F, Fut>(
        status: CommandStatus,
        interested: bool,
        failures: F,
    ) -> Result<Handled>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Vec<HandlerFailure>>>,
    {
        Ok(match status {
            CommandStatus::Finished => Handled::Finished,
            CommandStatus::Failed => Handled::Failed(failures().await?),
            CommandStatus::Published => Handled::Later,
            CommandStatus::Applied if interested => Handled::Recovering,
            CommandStatus::Applied => Handled::Finished,
        })
    }

    /// `true` when a handler failed for good ([`Handled::Failed`]).
    pub fn is_failed(&self) -> bool {
        matches!(self, Handled::Failed(_))
    }

    /// The handlers that failed for good (empty unless [`Handled::Failed`]).
    pub fn failures(&self) -> &[HandlerFailure] {
        match self {
            Handled::Failed(failures) => failures,
            _ => &[],
        }
    }
}

/// What a synchronous publish did: the data item after it, whether it was
/// written, and how its handlers ended.
///
/// `I` is the item: a [`DataItem`], or a [`Typed`](crate::Typed) item of
/// your own type from [`publish_sync_typed`](crate::CommandServiceExt::publish_sync_typed)
/// or [`Synced::typed`].
///
/// ```
/// use cqrs_core::{DataItem, Handled, Published, Synced};
///
/// fn report(synced: Synced) -> DataItem {
///     if let Handled::Failed(failures) = synced.handled() {
///         for failure in failures {
///             eprintln!("{} failed: {}", failure.handler, failure.error);
///         }
///     }
///     synced.into_item()
/// }
/// # let item = DataItem::builder("TENANT#a", "ORDER#1").build();
/// # report(Synced::new(Published::Written(item), Handled::Finished));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Synced<I = DataItem> {
    published: Published<I>,
    handled: Handled,
}

impl<I> Synced<I> {
    /// A result of a publish (to build the answers of a mock service).
    pub fn new(published: Published<I>, handled: Handled) -> Self {
        Self { published, handled }
    }

    /// A newly written item whose handlers finished: the common answer of
    /// a mock service.
    pub fn finished(item: I) -> Self {
        Self::new(Published::Written(item), Handled::Finished)
    }

    /// Whether the publish wrote a new version, and the item after it.
    pub fn published(&self) -> &Published<I> {
        &self.published
    }

    /// [`Synced::published`], by value.
    pub fn into_published(self) -> Published<I> {
        self.published
    }

    /// How the handlers ended.
    pub fn handled(&self) -> &Handled {
        &self.handled
    }

    /// The data item after the publish, written or not.
    pub fn into_item(self) -> I {
        self.published.into_inner()
    }

    /// [`Synced::into_item`] (the name [`Published`] uses).
    pub fn into_inner(self) -> I {
        self.into_item()
    }

    /// A reference to the data item after the publish.
    pub fn get(&self) -> &I {
        self.published.get()
    }

    /// The written item, `None` when nothing was written.
    pub fn written(self) -> Option<I> {
        self.published.written()
    }

    /// `true` when the dirty check found nothing to write.
    pub fn is_unchanged(&self) -> bool {
        self.published.is_unchanged()
    }

    /// The same result with the item mapped by `f`.
    pub fn map<J>(self, f: impl FnOnce(I) -> J) -> Synced<J> {
        Synced {
            published: self.published.map(f),
            handled: self.handled,
        }
    }
}

/// What a read-modify-write ([`Services::update_with`](crate::Services::update_with)) did.
#[derive(Debug, Clone, PartialEq)]
pub enum Updated {
    /// The closure returned a command, and it was published: what the
    /// publish did (for an asynchronous one, [`Handled::Later`]).
    Published(Synced),
    /// The closure returned no command: nothing was written. Carries the
    /// state it was shown (`None`: the entity does not exist).
    Skipped(Option<DataItem>),
}

impl Updated {
    /// The entity's state after the update: what was written, what the
    /// dirty check kept, or what the closure was shown.
    pub fn into_item(self) -> Option<DataItem> {
        match self {
            Updated::Published(synced) => Some(synced.into_item()),
            Updated::Skipped(item) => item,
        }
    }

    /// A reference to the entity's state after the update.
    pub fn item(&self) -> Option<&DataItem> {
        match self {
            Updated::Published(synced) => Some(synced.get()),
            Updated::Skipped(item) => item.as_ref(),
        }
    }

    /// `true` when a new version was written.
    pub fn is_written(&self) -> bool {
        matches!(self, Updated::Published(synced) if !synced.is_unchanged())
    }

    /// The written item, `None` when nothing was written.
    pub fn written(self) -> Option<DataItem> {
        match self {
            Updated::Published(synced) => synced.written(),
            Updated::Skipped(_) => None,
        }
    }

    /// How the handlers of the publish ended ([`Handled::NoHandlers`] when
    /// nothing was published).
    pub fn handled(&self) -> &Handled {
        match self {
            Updated::Published(synced) => synced.handled(),
            Updated::Skipped(_) => &Handled::NoHandlers,
        }
    }
}

pub(crate) fn to_attributes<T: Serialize + ?Sized>(value: &T) -> Result<Value> {
    serde_json::to_value(value).map_err(|e| Error::invalid("attributes", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn expected_version_serializes_like_the_reference() {
        assert_eq!(json!(ExpectedVersion::Exactly(3)), json!(3));
        assert_eq!(json!(ExpectedVersion::Latest), json!(-1));
        let v: ExpectedVersion = serde_json::from_value(json!(-1)).unwrap();
        assert_eq!(v, ExpectedVersion::Latest);
        assert!(serde_json::from_value::<ExpectedVersion>(json!(-2)).is_err());
    }

    /// The reference framework accepts commands without attributes: their
    /// rows (data, history, command) read with empty attributes.
    #[test]
    fn rows_without_attributes_read_as_empty_attributes() {
        let row = json!({
            "pk": "TENANT#a", "sk": "PRODUCT#1", "code": "1", "name": "n", "version": 1,
            "type": "PRODUCT", "createdAt": "2026-12-01T00:00:00Z", "updatedAt": "2026-12-01T00:00:00Z",
        });
        let mut with_null = row.clone();
        with_null["attributes"] = Value::Null;
        for row in [row, with_null] {
            let data: DataItem = serde_json::from_value(row.clone()).expect("a data row");
            assert_eq!(data.attributes.as_value(), &json!({}));
            let command: CommandRecord = serde_json::from_value(row).expect("a command row");
            assert_eq!(command.attributes.as_value(), &json!({}));
        }
    }

    #[test]
    fn a_data_row_knows_the_command_it_was_produced_by() {
        let item = DataItem::builder("TENANT#a", "ORDER#1")
            .version(3)
            .attributes(json!({"n": 1}))
            .build();
        let command = item.command(CommandStatus::Finished, Some("POST /orders".into()));
        assert!(item.is_row_of(&command));
        let mut other = command.clone();
        other.attributes = json!({"n": 2}).into();
        assert!(!item.is_row_of(&other));
        let mut other = command;
        other.created_by = "someone-else".into();
        assert!(!item.is_row_of(&other));
    }

    #[test]
    fn command_defaults_come_from_the_sort_key() {
        let cmd = CommandInput::new("TENANT#a", "ORDER#ORD-1");
        assert_eq!((cmd.code.as_str(), cmd.name.as_str()), ("ORD-1", "ORD-1"));
        assert_eq!(cmd.entity_type, "ORDER");
    }
}
