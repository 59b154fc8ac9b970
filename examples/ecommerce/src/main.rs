//! `cargo run --example ecommerce`: the storefront over HTTP.
//!
//! ```text
//! ecommerce [serve]   serve the HTTP API (the default)
//! ecommerce demo      run the scripted tour and exit
//!   --addr 127.0.0.1:3000
//!   --backend memory|dynamodb
//!   --dynamodb-endpoint URL   (default: $DYNAMODB_ENDPOINT, else http://127.0.0.1:8000)
//!   --aws                     (DynamoDB on AWS, configured from the environment)
//!   --table-prefix ecommerce  (or --table-env ENV --table-app APP --table-module MODULE)
//! ```

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use cqrs_dynamodb::{DynamoDbStorage, TableNames};
use ecommerce::auth::Auth;
use ecommerce::shop::DEMO_TENANTS;
use ecommerce::Shop;
use tracing_subscriber::EnvFilter;

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
}

impl Cli {
    fn table_names(&self) -> TableNames {
        match (&self.table_env, &self.table_app, &self.table_module) {
            (Some(env), Some(app), Some(module)) => TableNames::new(env, app, module),
            _ => TableNames::with_prefix(&self.table_prefix),
        }
    }
}

#[derive(Debug, Clone, Copy, Subcommand)]
enum Command {
    /// Serve the HTTP API until Ctrl-C (the default).
    Serve,
    /// Run the scripted tour of the storefront and exit (0 when every step behaved).
    Demo,
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
/// How long a shutdown waits for the pipeline to finish its work.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The server logs every request and command; the tour prints its own
    // account on stdout and logs errors only, unless RUST_LOG says otherwise.
    let default_filter = match cli.command {
        Some(Command::Demo) => "error",
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter)))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the Tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let shop = build_shop(&cli).await?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(cli.addr, shop).await,
        Command::Demo => {
            let mut out = std::io::stdout();
            let result = ecommerce::demo::run(&shop, &mut out).await;
            shop.engine.wait_idle().await;
            result.map_err(|e| format!("the demo failed: {e}"))
        }
    }
}

async fn build_shop(cli: &Cli) -> Result<Shop, String> {
    match cli.backend {
        Backend::Memory => {
            tracing::info!("backend: in memory");
            Ok(Shop::in_memory())
        }
        Backend::Dynamodb => {
            let tables = cli.table_names();
            let (client, place) = if cli.aws {
                (aws_client().await, "AWS".to_owned())
            } else {
                let endpoint = cli
                    .dynamodb_endpoint
                    .clone()
                    .or_else(|| std::env::var("DYNAMODB_ENDPOINT").ok().filter(|e| !e.is_empty()))
                    .unwrap_or_else(|| "http://127.0.0.1:8000".to_owned());
                (cqrs_dynamodb::local_client(&endpoint), endpoint)
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
            Ok(Shop::new(Arc::new(storage)))
        }
    }
}

/// A DynamoDB client configured as the AWS SDK configures itself (environment,
/// profile, instance role), with the HTTP client and retries of `cqrs-dynamodb`.
async fn aws_client() -> aws_sdk_dynamodb::Client {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(cqrs_dynamodb::http_client())
        .retry_config(
            aws_config::retry::RetryConfig::standard().with_max_attempts(cqrs_dynamodb::SDK_MAX_ATTEMPTS),
        )
        .load()
        .await;
    aws_sdk_dynamodb::Client::new(&config)
}

async fn serve(addr: SocketAddr, shop: Shop) -> Result<(), String> {
    for tenant in DEMO_TENANTS {
        shop.seed_demo(tenant)
            .await
            .map_err(|e| format!("cannot seed the demo catalogue of {tenant}: {e}"))?;
    }
    let auth = Auth::from_env();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot read the listening address: {e}"))?;
    print_welcome(&format!("http://{local}"), &auth);

    let result = ecommerce::http::serve_with_shutdown(listener, shop.clone(), auth, shutdown_signal()).await;
    tracing::info!("server stopped; letting the pipeline finish");
    if tokio::time::timeout(DRAIN_TIMEOUT, shop.engine.wait_idle())
        .await
        .is_err()
    {
        tracing::warn!("the pipeline was still busy after {DRAIN_TIMEOUT:?}");
    }
    result.map_err(|e| format!("the server failed: {e}"))
}

/// Tokens for the demo shops and a few requests to try.
fn print_welcome(url: &str, auth: &Auth) {
    let token_a = auth.token("shop-a", "dev-user-a", &["staff"], TOKEN_TTL);
    let token_b = auth.token("shop-b", "dev-user-b", &["staff"], TOKEN_TTL);
    println!(
        r#"
The storefront listens on {url} (OpenAPI: {url}/openapi.json).
Development tokens, valid 24 h:

  export TOKEN_A={token_a}
  export TOKEN_B={token_b}

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
async fn shutdown_signal() {
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
