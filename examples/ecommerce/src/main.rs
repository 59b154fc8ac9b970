//! `cargo run --example ecommerce`: the storefront over HTTP.
//!
//! ```text
//! ecommerce [serve]       serve the HTTP API (the default)
//! ecommerce demo          run the scripted tour and exit
//! ecommerce consume       run the DynamoDB stream consumer alone (no HTTP)
//! ecommerce lambda-stream the stream consumer as an AWS Lambda function
//! ecommerce rebuild --projection sales|search [--tenant T ...]
//!                         rebuild a read model from the data table
//! ecommerce lag [--tenant T ...] [--bound N]
//!                         how far each read model is behind the data table, and
//!                         (DynamoDB) the pipeline behind the stream, per shard
//! ecommerce failures list [--tenant T] [--handler H] [--older-than 10m]
//!                         the failed commands, oldest first
//! ecommerce failures show PK SK VERSION [--attributes]
//!                         one command: its failed handlers, errors, attempts, row
//! ecommerce failures reprocess (PK SK VERSION | --all [filters]) [--dry-run]
//!                         run the failed handlers again (a finished command is left alone)
//! ecommerce leases        the stream's shards: lease owner, expiry, checkpoint (DynamoDB)
//! ecommerce token [--tenant T] [--user U] [--role staff|customer ...]
//!                         print a bearer token signed with the server's secret (24 h)
//!   --json                    (rebuild, lag, failures, leases) one JSON document on stdout
//!   --addr 127.0.0.1:3000
//!   --backend memory|dynamodb
//!   --pipeline in-process|stream|external
//!                             (default: in-process on memory, stream on DynamoDB)
//!   --dynamodb-endpoint URL   (default: $DYNAMODB_ENDPOINT, else http://127.0.0.1:8000)
//!   --aws                     (DynamoDB on AWS, configured from the environment)
//!   --table-prefix ecommerce  (or --table-env ENV --table-app APP --table-module MODULE)
//!   --otlp-endpoint URL       export traces over OTLP/HTTP (default: off, unless
//!                             $OTEL_EXPORTER_OTLP_ENDPOINT is set)
//!   --read-db URL|none        the read models' database (default: sqlite::memory: on
//!                             memory, sqlite://ecommerce-read.db?mode=rwc on DynamoDB
//!                             (named after the tables), none with --aws)
//!   --ready-max-projection-lag SECS
//!                             /health/ready fails while a read model lags more (default: no bound)
//!   --lag-interval SECS       how often the read models' lag is measured (default: 30 with
//!                             --ready-max-projection-lag, else not measured)
//!   --ops-addr ADDR           consume: serve /metrics and /health/* there (default: none)
//! ```
//!
//! `serve` and `consume` install a Prometheus recorder: `GET /metrics` renders
//! the framework's metrics (see docs/operations.md).
//!
//! On DynamoDB the command table's stream is the source of truth: with
//! `--pipeline stream` every server runs a stream consumer next to its HTTP
//! API (replicas share the stream's shards through leases), so a command
//! accepted by a server that dies is applied and handled by whichever
//! replica holds its shard, or by this one when it restarts.

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use cqrs_core::AsyncDispatch;
use cqrs_dynamodb::stream::StreamConsumer;
use cqrs_dynamodb::{DynamoDbStorage, TableNames};
use ecommerce::auth::{Auth, SECRET_ENV};
use ecommerce::read_models::{ReadModel, ReadModels};
use ecommerce::shop::{ShopConfig, DEMO_TENANTS};
use ecommerce::telemetry::{Telemetry, TelemetryConfig};
use ecommerce::Shop;

mod toolbox;

/// The e-commerce example of the cqrs framework: orders, products and
/// inventory of two demo shops, over HTTP.
#[derive(Debug, Parser)]
#[command(name = "ecommerce", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Address to listen on.
    #[arg(long, global = true, default_value = "127.0.0.1:3000")]
    addr: SocketAddr,
    /// Where the tables live.
    #[arg(long, global = true, value_enum, default_value_t = Backend::Memory)]
    backend: Backend,
    /// DynamoDB endpoint for `--backend dynamodb` [default: $DYNAMODB_ENDPOINT, else http://127.0.0.1:8000].
    #[arg(long, global = true, conflicts_with = "aws")]
    dynamodb_endpoint: Option<String>,
    /// With `--backend dynamodb`: connect to AWS with the SDK's usual configuration
    /// (credentials, `AWS_REGION`, ...) instead of a local endpoint.
    #[arg(long, global = true)]
    aws: bool,
    /// Prefix of the four DynamoDB tables (`{prefix}-command`, `-data`, `-history`, `-sequences`).
    #[arg(long, global = true, default_value = "ecommerce")]
    table_prefix: String,
    /// Instead of a prefix, the tables of docs/dynamodb/tables.json (the reference framework's
    /// names): `{env}-{app}-{module}-command|data|history` and `{env}-{app}-sequences`.
    #[arg(long, global = true, value_name = "ENV", requires_all = ["table_app", "table_module"], conflicts_with = "table_prefix")]
    table_env: Option<String>,
    /// The `{app}` of the reference names (with --table-env).
    #[arg(long, global = true, value_name = "APP", requires_all = ["table_env", "table_module"])]
    table_app: Option<String>,
    /// The `{module}` of the reference names (with --table-env).
    #[arg(long, global = true, value_name = "MODULE", requires_all = ["table_env", "table_app"])]
    table_module: Option<String>,
    /// Who applies async commands and finishes interrupted ones: this process
    /// (`in-process`), a stream consumer embedded in this process (`stream`),
    /// or a consumer elsewhere (`external`: `ecommerce consume`, or the Lambda).
    /// [default: in-process on memory, stream on DynamoDB]
    #[arg(long, global = true, value_enum)]
    pipeline: Option<Pipeline>,
    /// The read models' database (sales report, order search): `sqlite::memory:`,
    /// `sqlite://FILE?mode=rwc`, `postgres://...`, or `none` (no read models: their
    /// endpoints answer 503). Processes that share DynamoDB tables (`serve`, `consume`)
    /// share it too. [default: sqlite::memory: on memory; on DynamoDB
    /// sqlite://{tables}-read.db?mode=rwc (`ecommerce-read.db` with the default prefix), none with --aws]
    #[arg(long, global = true, value_name = "URL")]
    read_db: Option<String>,
    /// Seconds a handler run may take before it counts as failed.
    #[arg(long, global = true, value_name = "SECS", default_value_t = ecommerce::shop::HANDLER_TIMEOUT.as_secs_f64())]
    handler_timeout: f64,
    /// Seconds an unfinished sync publish is left at most to a publisher that
    /// is alive before the stream consumer finishes it (a publisher that died
    /// is known to be gone within --lease-duration, and its work finished then).
    #[arg(long, global = true, value_name = "SECS", default_value_t = cqrs_core::DEFAULT_RECOVERY_GRACE.as_secs_f64())]
    recovery_grace: f64,
    /// Seconds a stream shard lease and this process's publisher heartbeat
    /// last without renewal: a dead replica's shards are taken over, and its
    /// interrupted sync publishes finished, after about this long.
    #[arg(long, global = true, value_name = "SECS", default_value_t = cqrs_dynamodb::stream::DEFAULT_LEASE_DURATION.as_secs_f64())]
    lease_duration: f64,
    /// Seconds a request may take before it is answered 503.
    #[arg(long, global = true, value_name = "SECS", default_value_t = ecommerce::http::DEFAULT_REQUEST_TIMEOUT.as_secs_f64())]
    request_timeout: f64,
    /// Export traces over OTLP/HTTP to this collector (base URL: `/v1/traces` is appended)
    /// [default: off, unless OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set].
    /// The standard OTEL_* variables (protocol, headers, OTEL_SERVICE_NAME...) apply.
    #[arg(long, global = true, value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// Seconds a shutdown waits for work in flight (requests' publishes and
    /// the stream consumer's commands, together) before leaving it to the stream.
    #[arg(long, global = true, value_name = "SECS", default_value_t = 10.0)]
    drain_timeout: f64,
    /// `/health/ready` answers 503 while a read model's oldest version not applied
    /// yet is older than this many seconds. [default: no bound]
    #[arg(long, global = true, value_name = "SECS")]
    ready_max_projection_lag: Option<f64>,
    /// Seconds between two measures of the read models' lag (each reads every order;
    /// it sets the lag gauges of /metrics and the readiness check).
    /// [default: 30 with --ready-max-projection-lag, else not measured]
    #[arg(long, global = true, value_name = "SECS")]
    lag_interval: Option<f64>,
    /// `consume`: serve `/metrics` and `/health`, `/health/live`, `/health/ready` on this
    /// address (the consumer serves no API). [default: none]
    #[arg(long, global = true, value_name = "ADDR")]
    ops_addr: Option<SocketAddr>,
}

impl Cli {
    /// The read models' database, `None` for none. A local DynamoDB's
    /// default is a SQLite file named after the tables, in the working
    /// directory, which the processes sharing those tables share; on AWS
    /// (Lambda: a read-only file system, an instance's file shared with no
    /// other) there is no default.
    fn read_db_url(&self) -> Option<String> {
        match (self.read_db.as_deref(), self.backend) {
            (Some("none"), _) => None,
            (Some(url), _) => Some(url.to_owned()),
            (None, Backend::Memory) => Some("sqlite::memory:".to_owned()),
            (None, Backend::Dynamodb) if self.aws => None,
            (None, Backend::Dynamodb) => {
                let tables = match (&self.table_env, &self.table_app, &self.table_module) {
                    (Some(env), Some(app), Some(module)) => format!("{env}-{app}-{module}"),
                    _ => self.table_prefix.clone(),
                };
                Some(format!("sqlite://{tables}-read.db?mode=rwc"))
            }
        }
    }

    fn table_names(&self) -> TableNames {
        let names = match (&self.table_env, &self.table_app, &self.table_module) {
            (Some(env), Some(app), Some(module)) => TableNames::new(env, app, module),
            _ => TableNames::with_prefix(&self.table_prefix),
        };
        ecommerce::shop::dynamodb_tables(names)
    }
}

#[derive(Debug, Clone, Subcommand)]
enum Command {
    /// Serve the HTTP API until Ctrl-C or SIGTERM (the default).
    Serve,
    /// Run the scripted tour of the storefront and exit (0 when every step behaved).
    Demo,
    /// Run the DynamoDB stream consumer alone, until Ctrl-C or SIGTERM.
    Consume,
    /// Run the stream consumer as an AWS Lambda function (stream event source mapping).
    LambdaStream,
    /// Rebuild a read model from the data table into a new generation (orders may keep
    /// coming meanwhile), then point readers at it. Resumes an interrupted rebuild.
    Rebuild {
        /// Which read model.
        #[arg(long, value_enum)]
        projection: ProjectionName,
        /// A tenant whose orders are read (repeat for several) [default: the demo tenants].
        #[arg(long = "tenant", value_name = "TENANT")]
        tenants: Vec<String>,
        /// Print one JSON document (what was rebuilt) instead of a sentence.
        #[arg(long)]
        json: bool,
    },
    /// Show how far each read model is behind the data table: orders and versions not yet
    /// applied, and the age of the oldest; on DynamoDB, how far the pipeline is behind the
    /// command table's stream, per shard.
    Lag {
        /// A tenant whose orders are compared (repeat for several) [default: the demo tenants].
        #[arg(long = "tenant", value_name = "TENANT")]
        tenants: Vec<String>,
        /// Stream records counted behind a shard's checkpoint at most.
        #[arg(long, value_name = "N", default_value_t = toolbox::DEFAULT_LAG_BOUND)]
        bound: usize,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// List, show and reprocess failed commands.
    Failures {
        #[command(subcommand)]
        action: toolbox::FailureArgs,
    },
    /// Print a bearer token of a user of a shop, signed with the server's secret
    /// ($ECOMMERCE_JWT_SECRET, else the development one), valid 24 hours.
    Token {
        /// The shop (the token's `custom:tenant`).
        #[arg(long, default_value = "shop-a")]
        tenant: String,
        /// The user (the token's `sub`).
        #[arg(long, default_value = "dev-user")]
        user: String,
        /// A role: `staff` or `customer` (repeat for several).
        #[arg(long = "role", value_name = "ROLE", default_values_t = ["staff".to_owned()])]
        roles: Vec<String>,
    },
    /// Show the command table stream's shards: lease owner and expiry, checkpoint (DynamoDB).
    Leases {
        /// Stream records counted behind a shard's checkpoint at most.
        #[arg(long, value_name = "N", default_value_t = toolbox::DEFAULT_LAG_BOUND)]
        bound: usize,
        /// Print one JSON document.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ProjectionName {
    /// The sales report (`GET /reports/sales`).
    Sales,
    /// The order search (`GET /orders/search`).
    Search,
}

impl From<ProjectionName> for ReadModel {
    fn from(name: ProjectionName) -> Self {
        match name {
            ProjectionName::Sales => ReadModel::Sales,
            ProjectionName::Search => ReadModel::Search,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Pipeline {
    /// This process applies async commands (its queue dies with it).
    InProcess,
    /// A stream consumer in this process (DynamoDB only).
    Stream,
    /// This process only publishes; a consumer elsewhere applies.
    External,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    /// In memory: everything is lost when the process ends.
    Memory,
    /// DynamoDB (Local, or AWS); the tables are created if missing.
    Dynamodb,
}

/// Development tokens are valid this long.
const TOKEN_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Seconds from the command line; nonsense (negative, NaN) is refused.
fn seconds(name: &str, value: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| format!("--{name} must be a number of seconds >= 0, got {value}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The server logs every request and command. Unless RUST_LOG says
    // otherwise, the tour (which prints its own account on stdout) logs
    // errors only, and the operator's commands (tables or JSON) warnings.
    let default_filter = match &cli.command {
        Some(Command::Demo) => "error",
        Some(Command::Lag { .. } | Command::Failures { .. } | Command::Leases { .. }) => "warn",
        _ => "info",
    };
    let telemetry = match Telemetry::init(&TelemetryConfig {
        default_log_filter: default_filter.to_owned(),
        otlp_endpoint: cli.otlp_endpoint.clone(),
    }) {
        Ok(telemetry) => telemetry,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the Tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(run(cli, telemetry.flusher()));
    // The last spans (a shutdown's drain) are exported before the exit.
    telemetry.shutdown();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the command; `flush_traces` exports the spans buffered so far (the
/// Lambda function calls it after each invocation).
async fn run(cli: Cli, flush_traces: impl Fn() + Send + Sync + 'static) -> Result<(), String> {
    let command = cli.command.clone().unwrap_or(Command::Serve);
    // A token needs the secret only: no storage, no pipeline.
    if let Command::Token { tenant, user, roles } = &command {
        let auth = Auth::from_env().map_err(|e| format!("{SECRET_ENV}: {e}"))?;
        let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
        println!("{}", auth.token(tenant, user, &roles, TOKEN_TTL));
        return Ok(());
    }
    let pipeline = match (cli.pipeline, cli.backend, &command) {
        (Some(Pipeline::Stream | Pipeline::External), Backend::Memory, _) => {
            return Err("the stream pipeline needs --backend dynamodb".to_owned())
        }
        (_, Backend::Memory, Command::Consume | Command::LambdaStream | Command::Leases { .. }) => {
            return Err("consume, lambda-stream and leases need --backend dynamodb".to_owned())
        }
        (_, _, Command::Consume) => Pipeline::Stream,
        // A rebuild reads the data table; it applies no command. The
        // toolbox's reprocess runs handlers itself, without a pipeline.
        (
            _,
            _,
            Command::Rebuild { .. } | Command::Lag { .. } | Command::Failures { .. } | Command::Leases { .. },
        ) => Pipeline::External,
        // The Lambda runtime feeds the engine; no consumer of its own.
        (_, _, Command::LambdaStream) => Pipeline::External,
        (Some(pipeline), _, _) => pipeline,
        // The tour waits for its own process's pipeline between steps.
        (None, _, Command::Demo) => Pipeline::InProcess,
        (None, Backend::Memory, _) => Pipeline::InProcess,
        (None, Backend::Dynamodb, _) => Pipeline::Stream,
    };
    let config = ShopConfig {
        dispatch: match pipeline {
            Pipeline::InProcess => AsyncDispatch::InProcess,
            Pipeline::Stream | Pipeline::External => AsyncDispatch::External,
        },
        handler_timeout: seconds("handler-timeout", cli.handler_timeout)?,
        recovery_grace: seconds("recovery-grace", cli.recovery_grace)?,
        publisher_lease: seconds("lease-duration", cli.lease_duration)?,
    };
    // The secret first: a server that must not start connects to nothing.
    let auth = match command {
        Command::Serve => {
            let auth = Auth::from_env().map_err(|e| format!("{SECRET_ENV}: {e}"))?;
            auth.may_serve(&cli.addr, cli.aws).map_err(|e| e.to_string())?;
            Some(auth)
        }
        _ => None,
    };
    let backend = connect(&cli).await?;
    let (storage, config): (Arc<dyn cqrs_core::Storage>, ShopConfig) = match &backend {
        None => {
            tracing::info!("backend: in memory");
            (Arc::new(cqrs_memory::InMemory::new()), ShopConfig::default())
        }
        Some(dynamodb) => {
            if pipeline == Pipeline::InProcess {
                tracing::warn!(
                    "--pipeline in-process on DynamoDB: async commands not yet applied when this process \
                     dies are not picked up by anything; use --pipeline stream"
                );
            }
            (Arc::new(dynamodb.storage.clone()), config)
        }
    };
    // Every process registers the projectors, `serve --pipeline external`
    // too: a sync publish (a status change) runs its handlers in the
    // process that made it, and is finished there.
    let read_models = match cli.read_db_url() {
        Some(url) => {
            let read_models = ReadModels::connect(&url, Arc::clone(&storage))
                .await
                .map_err(|e| format!("cannot open the read-model database {}: {e}", redacted(&url)))?;
            tracing::info!(at = %redacted(&url), "read models");
            Some(read_models)
        }
        None => {
            tracing::warn!("no read models (--read-db none, or --aws without --read-db): /reports/sales and /orders/search answer 503");
            None
        }
    };
    let shop = Shop::with_read_models(storage, config, read_models);
    let drain = seconds("drain-timeout", cli.drain_timeout)?;
    let consumer = match (&backend, pipeline) {
        (Some(dynamodb), Pipeline::Stream) => Some(
            dynamodb
                .consumer(&shop, seconds("lease-duration", cli.lease_duration)?, drain)
                .await?,
        ),
        _ => None,
    };
    // The processes that run for long get metrics and readiness.
    let observe = match command {
        Command::Serve | Command::Consume => Some(observe(&cli, &shop, consumer.as_ref())?),
        _ => None,
    };
    match command {
        Command::Serve => {
            let timeout = seconds("request-timeout", cli.request_timeout)?;
            let auth = auth.ok_or("no secret")?;
            let observe = observe.ok_or("no metrics")?;
            let app = ecommerce::http::router_observed(shop.clone(), auth.clone(), timeout, observe);
            serve(cli.addr, cli.aws, auth, shop, consumer, app, drain).await
        }
        Command::Demo => {
            let consumer = consumer.map(Running::start);
            let mut out = std::io::stdout();
            let mut result = ecommerce::demo::run(&shop, &mut out).await;
            shop.engine.wait_idle().await;
            if result.is_ok() {
                result = ecommerce::demo::sales_report(&shop, DEMO_TENANTS[0], &mut out).await;
            }
            if let Some(consumer) = consumer {
                consumer.stop().await;
            }
            result.map_err(|e| format!("the demo failed: {e}"))
        }
        Command::Consume => {
            let consumer = consumer.ok_or("consume needs --backend dynamodb")?;
            tracing::info!(
                id = consumer.id(),
                "consuming the command stream; Ctrl-C or SIGTERM stops"
            );
            if let (Some(addr), Some(observe)) = (cli.ops_addr, observe) {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
                tracing::info!(%addr, "serving /metrics and /health/ready");
                tokio::spawn(ecommerce::http::serve_until(
                    listener,
                    ecommerce::http::ops_router(observe),
                    std::future::pending(),
                ));
            }
            consumer.run(shutdown_signal()).await;
            Ok(())
        }
        Command::LambdaStream => cqrs_dynamodb::lambda::run_then(shop.engine.clone(), flush_traces)
            .await
            .map_err(|e| format!("the Lambda runtime stopped: {e}")),
        Command::Rebuild {
            projection,
            tenants,
            json,
        } => rebuild(&shop, projection, tenants, json).await,
        Command::Lag { tenants, bound, json } => {
            let stream = backend.as_ref().map(Dynamodb::stream_parts);
            toolbox::lag(&shop, &or_demo_tenants(tenants), stream, bound, json).await
        }
        Command::Failures { action } => toolbox::failures(&shop.engine, action).await,
        Command::Leases { bound, json } => {
            let dynamodb = backend.as_ref().ok_or("leases needs --backend dynamodb")?;
            toolbox::leases(&dynamodb.stream_parts(), bound, json).await
        }
        // Printed at the start, before anything connects.
        Command::Token { .. } => Ok(()),
    }
}

/// The Prometheus recorder, installed, and the readiness checks of this
/// process (its consumer's, if it runs one), with the lag measured in the
/// background when it has read models.
fn observe(
    cli: &Cli,
    shop: &Shop,
    consumer: Option<&StreamConsumer>,
) -> Result<ecommerce::observe::Observe, String> {
    use ecommerce::observe::{install_prometheus, Observe, Readiness};

    let metrics = install_prometheus()?;
    let bound = cli
        .ready_max_projection_lag
        .map(|secs| seconds("ready-max-projection-lag", secs))
        .transpose()?;
    let mut readiness = Readiness::new(shop).max_projection_lag(bound);
    if let Some(consumer) = consumer {
        readiness =
            readiness.with_consumer(consumer.monitor(), seconds("lease-duration", cli.lease_duration)?);
    }
    // A measure reads every order: only when asked for, or needed by the bound.
    let every = match (cli.lag_interval, bound) {
        (Some(secs), _) => Some(seconds("lag-interval", secs)?),
        (None, Some(_)) => Some(ecommerce::observe::DEFAULT_LAG_INTERVAL),
        (None, None) => None,
    };
    if let (Some(every), Some(_)) = (every, &shop.read_models) {
        readiness.spawn_lag_refresher(every.max(Duration::from_millis(100)));
    }
    Ok(Observe::new(Some(metrics), readiness))
}

/// The tenants given, or the demo tenants.
fn or_demo_tenants(tenants: Vec<String>) -> Vec<String> {
    if tenants.is_empty() {
        DEMO_TENANTS.map(str::to_owned).to_vec()
    } else {
        tenants
    }
}

/// The database URL without its password, for messages and logs.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// `ecommerce rebuild`: rebuilds a read model with a progress bar on a
/// terminal (a line per tenth done otherwise), then prints what it did.
async fn rebuild(
    shop: &Shop,
    projection: ProjectionName,
    tenants: Vec<String>,
    json: bool,
) -> Result<(), String> {
    use std::io::IsTerminal;

    let read_models = shop
        .read_models
        .as_ref()
        .ok_or("rebuild needs the read models' database: give --read-db URL")?;
    let tenants = or_demo_tenants(tenants);
    let name = projection
        .to_possible_value()
        .map(|v| v.get_name().to_owned())
        .unwrap_or_default();
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:40}] {pos}/{len} rows ({per_sec}, {eta} left)",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message(format!("rebuilding {name}"));
        bar
    });
    let mut last_tenth = None;
    let report = |p: cqrs_core::projection::Progress| match &bar {
        Some(bar) => {
            bar.set_length(p.total.max(p.done));
            bar.set_position(p.done);
        }
        None => {
            let tenth = (p.done * 10).checked_div(p.total).unwrap_or(10).min(10);
            if last_tenth != Some(tenth) {
                last_tenth = Some(tenth);
                eprintln!(
                    "rebuilding {name}: {}/{} rows ({:.0} rows/s)",
                    p.done, p.total, p.rate
                );
            }
        }
    };
    let rebuilt = read_models
        .rebuild(projection.into(), &tenants, report)
        .await
        .map_err(|e| format!("the rebuild of {name} failed: {e}"))?;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let seconds = rebuilt.elapsed.as_secs_f64();
    if json {
        return toolbox::print_json(&serde_json::json!({
            "projection": name,
            "tenants": tenants,
            "rows": rebuilt.rows,
            "applied": rebuilt.applied,
            "resumed": rebuilt.resumed,
            "generation": rebuilt.generation,
            "replaced": rebuilt.replaced,
            "elapsedSeconds": seconds,
        }));
    }
    println!(
        "rebuilt {name} for {}: {} rows read ({} applied by this run{}) in {seconds:.2} s \
         ({:.0} rows/s); readers now see generation {} (generation {} dropped)",
        tenants.join(", "),
        rebuilt.rows,
        rebuilt.applied,
        if rebuilt.resumed { ", resumed" } else { "" },
        rebuilt.rows as f64 / seconds.max(1e-9),
        rebuilt.generation,
        rebuilt.replaced,
    );
    Ok(())
}

/// The DynamoDB side of a run.
struct Dynamodb {
    storage: DynamoDbStorage,
    streams: aws_sdk_dynamodbstreams::Client,
}

impl Dynamodb {
    /// What the toolbox reads the command table's stream with.
    fn stream_parts(&self) -> toolbox::StreamParts<'_> {
        toolbox::StreamParts {
            dynamodb: self.storage.client(),
            streams: &self.streams,
            tables: self.storage.tables(),
        }
    }

    /// The shop's stream consumer, checked against the table; a stop lets
    /// the commands it has read finish within `drain`.
    async fn consumer(
        &self,
        shop: &Shop,
        lease_duration: Duration,
        drain: Duration,
    ) -> Result<StreamConsumer, String> {
        let consumer = StreamConsumer::new(
            shop.engine.clone(),
            self.storage.client().clone(),
            self.streams.clone(),
            self.storage.tables().clone(),
        )
        .lease_duration(lease_duration)
        .drain_deadline(drain);
        consumer
            .check()
            .await
            .map_err(|e| format!("cannot read the command table's stream: {e}"))?;
        Ok(consumer)
    }
}

/// Connects to DynamoDB and creates the tables if missing; `None` on the memory backend.
async fn connect(cli: &Cli) -> Result<Option<Dynamodb>, String> {
    if cli.backend == Backend::Memory {
        return Ok(None);
    }
    let tables = cli.table_names();
    let (client, streams, place) = if cli.aws {
        let config = aws_config().await;
        (
            aws_sdk_dynamodb::Client::new(&config),
            aws_sdk_dynamodbstreams::Client::new(&config),
            "AWS".to_owned(),
        )
    } else {
        let endpoint = cli
            .dynamodb_endpoint
            .clone()
            .or_else(|| std::env::var("DYNAMODB_ENDPOINT").ok().filter(|e| !e.is_empty()))
            .unwrap_or_else(|| "http://127.0.0.1:8000".to_owned());
        (
            cqrs_dynamodb::local_client(&endpoint),
            cqrs_dynamodb::local_streams_client(&endpoint),
            endpoint,
        )
    };
    tracing::info!(at = %place, tables = ?tables, "backend: DynamoDB");
    let storage = DynamoDbStorage::new(client, tables);
    storage.ensure_tables().await.map_err(|e| {
        let hint = if cli.aws {
            "are AWS credentials and AWS_REGION set, and may they describe and create the tables?"
        } else {
            "is DynamoDB running? `./scripts/dynamodb-local` starts DynamoDB Local"
        };
        format!("cannot reach or prepare the DynamoDB tables at {place}: {e} ({hint})")
    })?;
    Ok(Some(Dynamodb { storage, streams }))
}

/// A stream consumer running on a task of its own.
struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    fn start(consumer: StreamConsumer) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(consumer.run(async move {
            let _ = stopped.await;
        }));
        Self { stop, task }
    }

    /// Stops it: it drains what it holds, saves its checkpoints and releases its leases.
    async fn stop(self) {
        let _ = self.stop.send(());
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "the stream consumer ended abnormally");
        }
    }
}

/// The AWS SDK's configuration as it configures itself (environment,
/// profile, instance role), with the HTTP client, retries and timeouts of
/// `cqrs-dynamodb`.
async fn aws_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(cqrs_dynamodb::http_client())
        .retry_config(
            aws_config::retry::RetryConfig::standard().with_max_attempts(cqrs_dynamodb::SDK_MAX_ATTEMPTS),
        )
        .timeout_config(cqrs_dynamodb::timeout_config())
        .load()
        .await
}

/// Serves `app` (the API over `shop`) until Ctrl-C or SIGTERM, then shuts
/// down gracefully: no new connection, requests in flight answered, the
/// work they started finished
/// (within `drain`), the stream consumer stopped with its checkpoints saved
/// and its leases released. What is left unfinished stays in the stream,
/// for the next consumer.
async fn serve(
    addr: SocketAddr,
    aws: bool,
    auth: Auth,
    shop: Shop,
    consumer: Option<StreamConsumer>,
    app: axum::Router,
    drain: Duration,
) -> Result<(), String> {
    for tenant in DEMO_TENANTS {
        shop.seed_demo(tenant)
            .await
            .map_err(|e| format!("cannot seed the demo catalogue of {tenant}: {e}"))?;
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot read the listening address: {e}"))?;
    let consumer = consumer.map(Running::start);
    if aws {
        // Tokens signed with the real secret do not belong in a log.
        println!("The storefront listens on http://{local} (API page: http://{local}/docs).");
    } else {
        print_welcome(&format!("http://{local}"), &auth);
    }

    let result = ecommerce::http::serve_until(listener, app, shutdown_signal()).await;
    tracing::info!("server stopped; letting the work in flight finish");
    // One drain for the whole process: the requests' work and the stream
    // consumer's (whose drain deadline is `drain` too) finish side by side.
    let requests_work = async {
        if tokio::time::timeout(drain, shop.engine.wait_idle())
            .await
            .is_err()
        {
            tracing::warn!(
                in_flight = shop.engine.in_flight(),
                "work still in flight after {drain:?}; the stream has it"
            );
        }
    };
    let consumer_stopped = async {
        if let Some(consumer) = consumer {
            consumer.stop().await;
        }
    };
    tokio::join!(requests_work, consumer_stopped);
    result.map_err(|e| format!("the server failed: {e}"))
}

/// Tokens for the demo shops and a few requests to try.
fn print_welcome(url: &str, auth: &Auth) {
    let token_a = auth.token("shop-a", "dev-user-a", &["staff"], TOKEN_TTL);
    let token_b = auth.token("shop-b", "dev-user-b", &["staff"], TOKEN_TTL);
    println!(
        r#"
The storefront listens on {url} (API page: {url}/docs; OpenAPI: {url}/openapi.json).
Development tokens, valid 24 h:

  export TOKEN_A={token_a}
  export TOKEN_B={token_b}

Try the API in a browser: open {url}/docs, click Authorize, paste a token
(TOKEN_A's value, without "Bearer"), then "Try it out" on any request.

Place an order in shop-a:

  curl -s -X POST {url}/orders \
    -H "Authorization: Bearer $TOKEN_A" -H 'Content-Type: application/json' \
    -d '{{"customerId":"CUST-001","items":[{{"productCode":"PRD-001","name":"Wireless Mouse","quantity":2,"price":29.99}}],"shippingAddress":{{"street":"123 Main St","city":"Tokyo","postalCode":"100-0001","country":"JP"}},"paymentMethod":"credit_card"}}'

Read it (its reservation turns "reserved"), list the pending orders, confirm it:

  curl -s {url}/orders/ORD-000001 -H "Authorization: Bearer $TOKEN_A"
  curl -s '{url}/orders?status=pending&limit=10' -H "Authorization: Bearer $TOKEN_A"
  curl -s -X PATCH {url}/orders/ORD-000001/status \
    -H "Authorization: Bearer $TOKEN_A" -H 'Content-Type: application/json' \
    -d '{{"status":"confirmed"}}'

shop-b does not see it (404):

  curl -s {url}/orders/ORD-000001 -H "Authorization: Bearer $TOKEN_B"

Ctrl-C stops the server.
"#
    );
}

/// Ctrl-C, or SIGTERM on Unix.
fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    wait_for_signal()
}

async fn wait_for_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
}
