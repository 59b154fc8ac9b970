//! Table names, their definitions, and creating them for development.

use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, CreateGlobalSecondaryIndexAction, GlobalSecondaryIndex,
    GlobalSecondaryIndexUpdate, IndexStatus, KeySchemaElement, KeyType, Projection, ProjectionType,
    ScalarAttributeType, StreamSpecification, StreamViewType, TableDescription, TableStatus,
    TimeToLiveSpecification, TimeToLiveStatus,
};
use aws_sdk_dynamodb::Client;
use cqrs_core::{Error, Result};

use crate::error::{build_error, sdk_error};

/// The attribute DynamoDB's time to live reads, on the tables that have one.
pub const TTL_ATTRIBUTE: &str = "ttl";

/// The four tables of one module.
///
/// Named as the reference framework names them, so a Rust service and a
/// NestJS service can share them: `{env}-{app}-{module}-command`, `-data`,
/// `-history`, and the shared `{env}-{app}-sequences` (which also holds the
/// failure records of the pipeline, the stream consumer's leases and the
/// idempotency keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableNames {
    /// Command rows, one per version (`sk@N`), with a stream of new and old images.
    pub command: String,
    /// Data rows: the current version of each entity.
    pub data: String,
    /// History rows: each superseded data version (`sk@N`).
    pub history: String,
    /// Sequence counters, failure records, stream leases and idempotency keys.
    pub sequences: String,
    /// The engine's [indexes](cqrs_core::Index) on the data table: one
    /// global secondary index each (see [`index_attributes`]).
    pub data_indexes: Vec<String>,
}

impl TableNames {
    /// The table of a role: `command`, `data`, `history` or `sequences`.
    ///
    /// ```
    /// let names = cqrs_dynamodb::TableNames::new("dev", "shop", "order");
    /// assert_eq!(names.by_role("data"), Some("dev-shop-order-data"));
    /// assert_eq!(names.by_role("other"), None);
    /// ```
    pub fn by_role(&self, role: &str) -> Option<&str> {
        match role {
            "command" => Some(&self.command),
            "data" => Some(&self.data),
            "history" => Some(&self.history),
            "sequences" => Some(&self.sequences),
            _ => None,
        }
    }

    /// `{env}-{app}-{module}-command|data|history` and `{env}-{app}-sequences`.
    ///
    /// ```
    /// let names = cqrs_dynamodb::TableNames::new("dev", "shop", "order");
    /// assert_eq!(names.command, "dev-shop-order-command");
    /// assert_eq!(names.sequences, "dev-shop-sequences");
    /// ```
    pub fn new(env: &str, app: &str, module: &str) -> Self {
        let module_prefix = format!("{env}-{app}-{module}");
        Self {
            command: format!("{module_prefix}-command"),
            data: format!("{module_prefix}-data"),
            history: format!("{module_prefix}-history"),
            sequences: format!("{env}-{app}-sequences"),
            data_indexes: Vec::new(),
        }
    }

    /// `{prefix}-command|data|history|sequences`: every table under one prefix
    /// (tests give each run its own).
    pub fn with_prefix(prefix: &str) -> Self {
        Self {
            command: format!("{prefix}-command"),
            data: format!("{prefix}-data"),
            history: format!("{prefix}-history"),
            sequences: format!("{prefix}-sequences"),
            data_indexes: Vec::new(),
        }
    }

    /// The same tables, the data table with a global secondary index for
    /// each of `indexes` (the names of the engine's [`Index`](cqrs_core::Index)es).
    ///
    /// ```
    /// let names = cqrs_dynamodb::TableNames::new("dev", "shop", "order").with_indexes(["orders-by-status"]);
    /// assert_eq!(names.specs()[1].indexes, ["orders-by-status"]);
    /// ```
    pub fn with_indexes<I: Into<String>>(mut self, indexes: impl IntoIterator<Item = I>) -> Self {
        self.data_indexes = indexes.into_iter().map(Into::into).collect();
        self
    }

    /// The definition of each table.
    pub fn specs(&self) -> [TableSpec; 4] {
        [
            TableSpec {
                role: TableRole::Command,
                name: self.command.clone(),
                stream: true,
                ttl: true,
                indexes: Vec::new(),
            },
            TableSpec {
                role: TableRole::Data,
                name: self.data.clone(),
                stream: false,
                ttl: true,
                indexes: self.data_indexes.clone(),
            },
            TableSpec {
                role: TableRole::History,
                name: self.history.clone(),
                stream: false,
                ttl: true,
                indexes: Vec::new(),
            },
            TableSpec {
                role: TableRole::Sequences,
                name: self.sequences.clone(),
                stream: false,
                // Idempotency keys expire; counters, failure records and
                // stream leases have no `ttl` and stay.
                ttl: true,
                indexes: Vec::new(),
            },
        ]
    }
}

/// What a table holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableRole {
    /// Command rows.
    Command,
    /// Data rows.
    Data,
    /// History rows.
    History,
    /// Sequence counters, failure records, stream leases and idempotency keys.
    Sequences,
}

/// How a table is defined: every table has a string partition key `pk` and a
/// string sort key `sk` and is billed on demand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSpec {
    /// What the table holds.
    pub role: TableRole,
    /// Its name.
    pub name: String,
    /// Whether it has a stream of new and old images (the command table's
    /// stream feeds the pipeline).
    pub stream: bool,
    /// Whether time to live is enabled on [`TTL_ATTRIBUTE`].
    pub ttl: bool,
    /// Global secondary indexes, by name: each keyed on the attributes
    /// [`index_attributes`] names, projecting every attribute.
    pub indexes: Vec<String>,
}

/// The attributes a data row's entry in `index` is stored in, and the
/// index's global secondary index is keyed on: `ix_{index}_pk` (hash) and
/// `ix_{index}_sk` (range), both strings.
pub fn index_attributes(index: &str) -> (String, String) {
    (format!("ix_{index}_pk"), format!("ix_{index}_sk"))
}

/// Creates the tables that do not exist yet and waits until they are active,
/// then enables time to live where the spec asks for it.
///
/// Idempotent, also when several processes call it at once on tables that do
/// not exist yet (replicas starting together): a table created meanwhile by
/// another is waited for, and a time to live enabled meanwhile is accepted.
///
/// For development and tests; production tables come from the
/// CloudFormation template in `docs/dynamodb/tables.json`.
pub async fn ensure_tables(client: &Client, names: &TableNames) -> Result<()> {
    for spec in names.specs() {
        ensure_table(client, &spec).await?;
    }
    Ok(())
}

async fn ensure_table(client: &Client, spec: &TableSpec) -> Result<()> {
    create_table(client, &spec.name, spec.stream, &spec.indexes).await?;
    add_missing_indexes(client, spec).await?;
    if spec.ttl {
        enable_ttl(client, &spec.name).await?;
    }
    Ok(())
}

/// A table of its own for a projection's read model: `pk` (S) and `sk` (S),
/// billed on demand, no stream, no time to live. Created if missing, and
/// waited for until active; idempotent like [`ensure_tables`].
pub(crate) async fn ensure_plain_table(client: &Client, name: &str) -> Result<()> {
    create_table(client, name, false, &[]).await
}

/// Creates the table `name` if missing, and waits until it is active.
async fn create_table(client: &Client, name: &str, stream: bool, indexes: &[String]) -> Result<()> {
    let exists = match client.describe_table().table_name(name).send().await {
        Ok(_) => true,
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            false
        }
        Err(e) => return Err(sdk_error(e)),
    };
    if !exists {
        let key = |name: &str, key_type| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(key_type)
                .build()
                .map_err(build_error("CreateTable"))
        };
        let attribute = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(build_error("CreateTable"))
        };
        let mut create = client
            .create_table()
            .table_name(name)
            .billing_mode(BillingMode::PayPerRequest)
            .key_schema(key("pk", KeyType::Hash)?)
            .key_schema(key("sk", KeyType::Range)?)
            .attribute_definitions(attribute("pk")?)
            .attribute_definitions(attribute("sk")?);
        for index in indexes {
            let (hash, range) = index_attributes(index);
            create = create
                .attribute_definitions(attribute(&hash)?)
                .attribute_definitions(attribute(&range)?)
                .global_secondary_indexes(global_index(index)?);
        }
        if stream {
            create = create.stream_specification(
                StreamSpecification::builder()
                    .stream_enabled(true)
                    .stream_view_type(StreamViewType::NewAndOldImages)
                    .build()
                    .map_err(build_error("CreateTable"))?,
            );
        }
        // Created meanwhile by another process: fine.
        done_or_in_use(create.send().await)?;
    }
    wait_active(client, name).await
}

/// The global secondary index of `index`: keyed on its attributes, every
/// attribute projected (a page of an index is a page of items).
fn global_index(index: &str) -> Result<GlobalSecondaryIndex> {
    let (hash, range) = index_attributes(index);
    let build = build_error("CreateTable");
    GlobalSecondaryIndex::builder()
        .index_name(index)
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name(hash)
                .key_type(KeyType::Hash)
                .build()
                .map_err(build)?,
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name(range)
                .key_type(KeyType::Range)
                .build()
                .map_err(build)?,
        )
        .projection(Projection::builder().projection_type(ProjectionType::All).build())
        .build()
        .map_err(build)
}

/// Adds the indexes of `spec` an existing table lacks (declared after it was
/// created), one at a time, waiting for each to be active.
async fn add_missing_indexes(client: &Client, spec: &TableSpec) -> Result<()> {
    if spec.indexes.is_empty() {
        return Ok(());
    }
    let table = client
        .describe_table()
        .table_name(&spec.name)
        .send()
        .await
        .map_err(sdk_error)?
        .table
        .unwrap_or_else(|| TableDescription::builder().build());
    let present: Vec<String> = table
        .global_secondary_indexes()
        .iter()
        .filter_map(|gsi| gsi.index_name().map(str::to_owned))
        .collect();
    for index in spec.indexes.iter().filter(|i| !present.contains(i)) {
        let (hash, range) = index_attributes(index);
        let build = build_error("UpdateTable");
        let attribute = |name: String| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(build)
        };
        let create = CreateGlobalSecondaryIndexAction::builder()
            .index_name(index)
            .set_key_schema(Some(global_index(index)?.key_schema))
            .projection(Projection::builder().projection_type(ProjectionType::All).build())
            .build()
            .map_err(build)?;
        let sent = client
            .update_table()
            .table_name(&spec.name)
            .attribute_definitions(attribute(hash)?)
            .attribute_definitions(attribute(range)?)
            .global_secondary_index_updates(GlobalSecondaryIndexUpdate::builder().create(create).build())
            .send()
            .await;
        // Added meanwhile by another process: fine.
        done_or_in_use(sent)?;
        wait_active(client, &spec.name).await?;
    }
    Ok(())
}

/// Ok when `sent` succeeded or failed only because the resource is being
/// changed already (another process created it at the same time).
fn done_or_in_use<T, E>(
    sent: std::result::Result<
        T,
        aws_sdk_dynamodb::error::SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>,
    >,
) -> Result<()>
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match sent {
        Ok(_) => Ok(()),
        Err(e) if e.as_service_error().and_then(|s| s.code()) == Some("ResourceInUseException") => Ok(()),
        Err(e) => Err(sdk_error(e)),
    }
}

async fn wait_active(client: &Client, table: &str) -> Result<()> {
    for _ in 0..600 {
        let described = client
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(sdk_error)?;
        let table_active = described.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active);
        let indexes_active = described.table().is_none_or(|t| {
            t.global_secondary_indexes()
                .iter()
                .all(|gsi| gsi.index_status() == Some(&IndexStatus::Active))
        });
        if table_active && indexes_active {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(Error::backend(
        format!("table {table} did not become active within a minute"),
        true,
    ))
}

/// Tries of [`enable_ttl`] before it gives up.
const TTL_ATTEMPTS: u32 = 20;

/// Enables time to live on [`TTL_ATTRIBUTE`], unless it is enabled (or being
/// enabled) already.
///
/// Idempotent under races: another process enabling it at the same moment
/// makes `UpdateTimeToLive` fail with a `ValidationException` ("TimeToLive is
/// already enabled", "Time to live has been modified multiple times within a
/// fixed interval", an update in progress); the state is then described
/// again and accepted if enabled, or the update is tried again after a
/// backoff.
async fn enable_ttl(client: &Client, table: &str) -> Result<()> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        if ttl_enabled(client, table).await? {
            return Ok(());
        }
        let spec = TimeToLiveSpecification::builder()
            .enabled(true)
            .attribute_name(TTL_ATTRIBUTE)
            .build()
            .map_err(build_error("UpdateTimeToLive"))?;
        let sent = client
            .update_time_to_live()
            .table_name(table)
            .time_to_live_specification(spec)
            .send()
            .await;
        let error = match sent {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        let racing = error.as_service_error().is_some_and(|s| {
            s.meta().code() == Some("ValidationException") || s.is_resource_in_use_exception()
        });
        let error = sdk_error(error);
        if !(racing || error.is_retryable()) || attempt >= TTL_ATTEMPTS {
            if ttl_enabled(client, table).await.unwrap_or(false) {
                return Ok(());
            }
            return Err(error);
        }
        tracing::debug!(table, attempt, %error, "time to live not enabled yet; looking again");
        let backoff = Duration::from_millis(100)
            .saturating_mul(attempt)
            .min(Duration::from_secs(2));
        tokio::time::sleep(backoff).await;
    }
}

/// Whether time to live is enabled (or being enabled) on [`TTL_ATTRIBUTE`].
async fn ttl_enabled(client: &Client, table: &str) -> Result<bool> {
    let current = client
        .describe_time_to_live()
        .table_name(table)
        .send()
        .await
        .map_err(sdk_error)?;
    let Some(description) = current.time_to_live_description() else {
        return Ok(false);
    };
    let on = matches!(
        description.time_to_live_status(),
        Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
    );
    Ok(on && description.attribute_name() == Some(TTL_ATTRIBUTE))
}
