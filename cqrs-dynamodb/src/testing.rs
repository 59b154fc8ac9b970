//! Test support (feature `testing`): the guard of tests that need DynamoDB,
//! and [`LocalDynamo`], a DynamoDB Local process of a test's own.
//!
//! Tests that use a shared DynamoDB Local (started by `scripts/test` or CI,
//! named by [`ENDPOINT_VAR`]) start with [`available`]:
//!
//! ```no_run
//! # async fn test() {
//! if !cqrs_dynamodb::testing::available() {
//!     return; // skipped, loudly; a failure under CI or CQRS_REQUIRE_DYNAMODB
//! }
//! let client = cqrs_dynamodb::local_client(&cqrs_dynamodb::testing::endpoint().unwrap_or_default());
//! # drop(client); }
//! ```
//!
//! Tests that break DynamoDB on purpose (kill it, restart it, hang it) start
//! their own with [`LocalDynamo::start`], guarded by
//! [`LocalDynamo::available`].
//!
//! Rows another program wrote (the reference framework's, say) load as
//! fixtures with [`item_from_json`].

pub mod sim;

use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cqrs_core::{Error, Result};

use crate::client::local_config;

/// An item from its DynamoDB JSON, as `Scan` returns it and the AWS CLI
/// prints it: `{"pk": {"S": "TENANT#a"}, "version": {"N": "1"}, ...}`.
///
/// ```
/// let item = cqrs_dynamodb::testing::item_from_json(&serde_json::json!({
///     "pk": { "S": "TENANT#a" }, "ttl": { "NULL": true }, "tags": { "L": [{ "N": "1" }] }
/// }))
/// .unwrap();
/// assert_eq!(item.len(), 3);
/// ```
pub fn item_from_json(json: &serde_json::Value) -> Result<crate::Item> {
    let object = json
        .as_object()
        .ok_or_else(|| Error::invalid("item", "not a JSON object"))?;
    object
        .iter()
        .map(|(name, value)| Ok((name.clone(), attribute_from_json(value)?)))
        .collect()
}

fn attribute_from_json(json: &serde_json::Value) -> Result<aws_sdk_dynamodb::types::AttributeValue> {
    use aws_sdk_dynamodb::types::AttributeValue;
    let bad = |why: &str| Error::invalid("item", format!("{why}: {json}"));
    let (kind, inner) = match json.as_object().map(|o| (o.len(), o.iter().next())) {
        Some((1, Some(typed))) => typed,
        _ => return Err(bad("not a typed value")),
    };
    let text = || {
        inner
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| bad("not a string"))
    };
    Ok(match kind.as_str() {
        "S" => AttributeValue::S(text()?),
        "N" => AttributeValue::N(text()?),
        "BOOL" => AttributeValue::Bool(inner.as_bool().ok_or_else(|| bad("not a boolean"))?),
        "NULL" => AttributeValue::Null(true),
        "L" => AttributeValue::L(
            inner
                .as_array()
                .ok_or_else(|| bad("not a list"))?
                .iter()
                .map(attribute_from_json)
                .collect::<Result<_>>()?,
        ),
        "M" => AttributeValue::M(item_from_json(inner)?),
        "SS" | "NS" => {
            let texts = inner
                .as_array()
                .ok_or_else(|| bad("not a list"))?
                .iter()
                .map(|v| v.as_str().map(str::to_owned).ok_or_else(|| bad("not a string")))
                .collect::<Result<Vec<_>>>()?;
            if kind == "SS" {
                AttributeValue::Ss(texts)
            } else {
                AttributeValue::Ns(texts)
            }
        }
        other => return Err(bad(&format!("type {other} is not supported"))),
    })
}

/// Rows in this repository's fixture format: a JSON array of
/// `{"table": "command"|"data"|"history"|"sequences", "item": {DynamoDB JSON}}`
/// (other fields, such as who wrote the row, are ignored), as `(table, item)`.
pub fn rows_from_json(json: &str) -> Result<Vec<(String, crate::Item)>> {
    let entries: Vec<serde_json::Value> =
        serde_json::from_str(json).map_err(|e| Error::invalid("rows", e.to_string()))?;
    entries
        .iter()
        .map(|entry| {
            let table = entry["table"]
                .as_str()
                .ok_or_else(|| Error::invalid("rows", "an entry without a table"))?;
            Ok((table.to_owned(), item_from_json(&entry["item"])?))
        })
        .collect()
}

/// Writes items as they are, each to the table of its role in `storage`
/// ([`TableNames::by_role`](crate::TableNames::by_role)): rows another
/// program wrote, for a test to read through this one.
pub async fn put_rows(storage: &crate::DynamoDbStorage, rows: &[(String, crate::Item)]) -> Result<()> {
    for (role, item) in rows {
        let table = storage
            .tables()
            .by_role(role)
            .ok_or_else(|| Error::invalid("table", format!("no table for '{role}'")))?;
        storage
            .client()
            .put_item()
            .table_name(table)
            .set_item(Some(item.clone()))
            .send()
            .await
            .map_err(crate::error::sdk_error)?;
    }
    Ok(())
}

/// Stores rows another program wrote to a DynamoDB table set (items of the
/// `command`, `data` and `sequences` tables, as `(table, item)`) in any
/// storage, through its primitives, for running the same checks on the
/// in-memory backend:
///
/// - a data row with the command row of its version, when that version is 1;
/// - a command row of version 1 that has no data row (an async command);
/// - a counter (`seq` at `SEQ#{tenant}`), drawn up to its count.
///
/// A storage has no primitive for the rest (history rows, later versions
/// without their predecessors, other sequence rows): they are left out, as
/// are rows whose key the storage already holds. Returns how many rows were
/// stored.
pub async fn store_rows(storage: &dyn cqrs_core::Storage, rows: &[(String, crate::Item)]) -> Result<usize> {
    use cqrs_core::{ApplyWrite, CommandWrite, Counter};
    let text = |item: &crate::Item, name: &str| crate::item::string_attribute(item, name);
    let commands: Vec<cqrs_core::CommandRecord> = rows
        .iter()
        .filter(|(table, _)| table == "command")
        .map(|(_, item)| crate::command_from_item(item.clone()))
        .collect::<Result<_>>()?;
    let mut stored = 0;
    let mut applied = std::collections::HashSet::new();
    for (_, item) in rows.iter().filter(|(table, _)| table == "data") {
        let data = crate::data_from_item(item.clone())?;
        let Some(command) = commands
            .iter()
            .find(|c| c.version == 1 && data.version == 1 && c.key() == data.key())
        else {
            continue;
        };
        applied.insert(data.key());
        let write = ApplyWrite {
            command: CommandWrite::Insert(Box::new(command.clone())),
            data,
            expected_data_version: 0,
            history: None,
            idempotency: None,
            indexes: Vec::new(),
        };
        match storage.apply(std::slice::from_ref(&write)).await {
            Ok(()) => stored += 2,
            Err(e) if e.is_conflict() => {}
            Err(e) => return Err(e),
        }
    }
    for command in commands
        .iter()
        .filter(|c| c.version == 1 && !applied.contains(&c.key()))
    {
        match storage.put_command(command, None).await {
            Ok(()) => stored += 1,
            Err(e) if e.is_conflict() => {}
            Err(e) => return Err(e),
        }
    }
    for (_, item) in rows.iter().filter(|(table, _)| table == "sequences") {
        let count = crate::counter::count(item).unwrap_or(0);
        let (pk, sk) = (text(item, "pk"), text(item, "sk"));
        if !pk.starts_with("SEQ#") || count == 0 {
            continue;
        }
        let counter = Counter::new(pk, sk);
        for _ in 0..count {
            storage.next_counter(&counter).await?;
        }
        stored += 1;
    }
    Ok(stored)
}

/// The variable naming the DynamoDB endpoint (DynamoDB Local in tests).
pub const ENDPOINT_VAR: &str = "DYNAMODB_ENDPOINT";
/// Set by `scripts/test` (and so by CI): a missing DynamoDB is a failure, not a skip.
pub const REQUIRE_VAR: &str = "CQRS_REQUIRE_DYNAMODB";
/// The variable naming the folder that holds `DynamoDBLocal.jar` (and
/// `DynamoDBLocal_lib`), for [`LocalDynamo`].
pub const LOCAL_DIR_VAR: &str = "DYNAMODB_LOCAL_DIR";
/// The variable `scripts/dynamodb-local` reads for its download folder; the
/// emulator is in its `package/emulator`.
const CACHE_DIR_VAR: &str = "CQRS_DYNAMODB_LOCAL_DIR";

/// How long [`LocalDynamo`] waits for DynamoDB Local to answer.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The endpoint, if one is configured ([`ENDPOINT_VAR`]).
pub fn endpoint() -> Option<String> {
    std::env::var(ENDPOINT_VAR).ok().filter(|e| !e.is_empty())
}

/// Whether DynamoDB is required here: [`REQUIRE_VAR`] or `CI` is set.
pub fn required() -> bool {
    std::env::var_os(REQUIRE_VAR).is_some() || std::env::var_os("CI").is_some()
}

/// Says loudly, on the process's stderr (the test harness captures
/// `eprintln!`), that a test was skipped, or panics when DynamoDB is
/// [required].
fn skip(what: &str, how: &str) -> bool {
    assert!(
        !required(),
        "{what}, but DynamoDB tests are required here ({REQUIRE_VAR} or CI is set): {how}"
    );
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED: {what}, so this DynamoDB test did not run. {how}. ***"
    );
    false
}

/// Whether DynamoDB tests can run. Without an endpoint they skip loudly under
/// plain `cargo test`, and fail under `scripts/test` and in CI, so that a
/// backend that was never tested can never pass as green.
pub fn available() -> bool {
    if endpoint().is_some() {
        return true;
    }
    skip(
        &format!("{ENDPOINT_VAR} is not set"),
        "Run ./scripts/test, which starts DynamoDB Local and runs it",
    )
}

/// Drops the four tables of `storage` (commands, data, history, sequences):
/// the clean-up of a test that made its own. Every table is tried; the
/// first failure is returned.
pub async fn drop_tables(storage: &crate::DynamoDbStorage) -> Result<()> {
    let tables = storage.tables();
    let mut outcome = Ok(());
    for table in [&tables.command, &tables.data, &tables.history, &tables.sequences] {
        let dropped = storage.client().delete_table().table_name(table).send().await;
        if let (Err(error), Ok(())) = (dropped, &outcome) {
            outcome = Err(crate::error::sdk_error(error));
        }
    }
    outcome
}

/// The folder holding `DynamoDBLocal.jar`: [`LOCAL_DIR_VAR`], or else where
/// `scripts/dynamodb-local` installs it
/// (`${CQRS_DYNAMODB_LOCAL_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cqrs-rs/dynamodb-local-1.25.1}/package/emulator`).
pub fn local_dir() -> Option<PathBuf> {
    let has_jar = |dir: &Path| dir.join("DynamoDBLocal.jar").is_file();
    if let Some(dir) = std::env::var_os(LOCAL_DIR_VAR).filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir)).filter(|d| has_jar(d));
    }
    let cache = match std::env::var_os(CACHE_DIR_VAR).filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let base = std::env::var_os("XDG_CACHE_HOME")
                .filter(|d| !d.is_empty())
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
            base.join("cqrs-rs").join("dynamodb-local-1.25.1")
        }
    };
    Some(cache.join("package").join("emulator")).filter(|d| has_jar(d))
}

/// A DynamoDB Local process of its own, on a free port, keeping its data on
/// disk (`-sharedDb -dbPath <temporary folder>`), so that it survives
/// [`kill`](Self::kill) and [`restart`](Self::restart).
///
/// Killed, and its folder removed, when dropped.
#[derive(Debug)]
pub struct LocalDynamo {
    dir: PathBuf,
    db_path: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl LocalDynamo {
    /// Whether a `LocalDynamo` can start here (Java and DynamoDB Local are
    /// installed; see [`local_dir`]). When not, says so loudly and returns
    /// false, or panics where DynamoDB is [required].
    pub fn available() -> bool {
        let java = Command::new("java")
            .arg("-version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !java {
            return skip(
                "java is not installed",
                "Run ./scripts/dynamodb-local to install it",
            );
        }
        if local_dir().is_none() {
            return skip(
                &format!("DynamoDB Local is not installed ({LOCAL_DIR_VAR} is not set and the download folder is empty)"),
                "Run ./scripts/dynamodb-local to install it",
            );
        }
        true
    }

    /// Starts DynamoDB Local on a free port with an empty database on disk,
    /// and waits until it answers.
    pub async fn start() -> Result<Self> {
        let dir = local_dir().ok_or_else(|| {
            Error::backend(
                format!("DynamoDB Local not found: set {LOCAL_DIR_VAR} to the folder of DynamoDBLocal.jar"),
                false,
            )
        })?;
        let db_path =
            std::env::temp_dir().join(format!("cqrs-dynamodb-local-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&db_path).map_err(|e| Error::backend(e, false))?;
        let mut local = Self {
            dir,
            db_path,
            port: 0,
            child: None,
        };
        // The port is free when picked and released before Java binds it:
        // another process (a parallel test's instance) may take it meanwhile,
        // and answer in our place. Ours then exits, unable to bind: go again
        // on another port.
        for _ in 0..5 {
            local.port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| Error::backend(e, false))?
                .port();
            match local.spawn().await {
                Ok(()) if local.still_running_after(PORT_CHECK).await => return Ok(local),
                Ok(()) => {}
                Err(e) if local.child.is_none() => {
                    tracing::warn!(%e, "DynamoDB Local did not start; another port")
                }
                Err(e) => return Err(e),
            }
            local.kill();
        }
        Err(Error::backend(
            "DynamoDB Local could not keep a port of its own in 5 tries",
            false,
        ))
    }

    /// Whether the process is still running `within` from now: one that lost
    /// its port to another process exits within it.
    async fn still_running_after(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if !matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None))) {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        true
    }

    /// The endpoint, `http://127.0.0.1:{port}`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The Java process's id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the process at once (SIGKILL), as a crash or a lost host would.
    /// What it wrote to disk stays for [`restart`](Self::restart).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again (killing it first if it runs), on the same port and
    /// the same database folder: the data written before survives. Waits
    /// until it answers.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn().await
    }

    /// Stops the process (SIGSTOP): connections are accepted by the kernel
    /// but nothing answers, as a hung server.
    pub fn pause(&mut self) -> Result<()> {
        self.signal("-STOP")?;
        Ok(())
    }

    /// Lets a [paused](Self::pause) process go on (SIGCONT).
    pub fn resume(&mut self) -> Result<()> {
        self.signal("-CONT")?;
        Ok(())
    }

    fn signal(&self, signal: &str) -> Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| Error::backend("DynamoDB Local is not running", false))?;
        let status = Command::new("kill")
            .arg(signal)
            .arg(pid.to_string())
            .status()
            .map_err(|e| Error::backend(e, false))?;
        if status.success() {
            Ok(())
        } else {
            Err(Error::backend(
                format!("kill {signal} {pid} failed: {status}"),
                false,
            ))
        }
    }

    async fn spawn(&mut self) -> Result<()> {
        let log = std::fs::File::create(self.db_path.join("dynamodb-local.log"))
            .map_err(|e| Error::backend(e, false))?;
        let err_log = log.try_clone().map_err(|e| Error::backend(e, false))?;
        let child = Command::new("java")
            .current_dir(&self.dir)
            .arg("-Djava.library.path=./DynamoDBLocal_lib")
            .arg("-jar")
            .arg("DynamoDBLocal.jar")
            .arg("-sharedDb")
            .arg("-dbPath")
            .arg(&self.db_path)
            .arg("-port")
            .arg(self.port.to_string())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log)
            .spawn()
            .map_err(|e| Error::backend(format!("starting DynamoDB Local: {e}"), false))?;
        self.child = Some(child);
        // Short timeouts: a process that is starting refuses or stalls.
        let client = aws_sdk_dynamodb::Client::from_conf(
            local_config(&self.endpoint())
                .retry_config(aws_sdk_dynamodb::config::retry::RetryConfig::disabled())
                .timeout_config(
                    aws_sdk_dynamodb::config::timeout::TimeoutConfig::builder()
                        .operation_timeout(Duration::from_secs(2))
                        .build(),
                )
                .build(),
        );
        let started = Instant::now();
        loop {
            if client.list_tables().send().await.is_ok() {
                return Ok(());
            }
            let exited = match self.child.as_mut().map(Child::try_wait) {
                Some(Ok(Some(status))) => Some(status.to_string()),
                Some(Err(e)) => Some(e.to_string()),
                _ => None,
            };
            if let Some(status) = exited {
                self.child = None;
                let log =
                    std::fs::read_to_string(self.db_path.join("dynamodb-local.log")).unwrap_or_default();
                return Err(Error::backend(
                    format!("DynamoDB Local exited ({status}): {log}"),
                    false,
                ));
            }
            if started.elapsed() > START_TIMEOUT {
                self.kill();
                return Err(Error::backend(
                    format!("DynamoDB Local did not answer within {START_TIMEOUT:?}"),
                    false,
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// How long a started DynamoDB Local must keep running to hold its port.
const PORT_CHECK: Duration = Duration::from_millis(1500);

impl Drop for LocalDynamo {
    fn drop(&mut self) {
        // SIGKILL ends a stopped process too.
        self.kill();
        let _ = std::fs::remove_dir_all(&self.db_path);
    }
}
