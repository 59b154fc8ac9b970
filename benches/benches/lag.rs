//! Workload 5, pipeline lag: from the return of `publish_async` to the
//! start of the data-sync handler's `handle`, on both backends, with the
//! default in-process pipeline (`AsyncDispatch::InProcess`).
//!
//! One publisher creates one new entity per command (`TENANT#bench`,
//! `LAG#000001`, ...; version 1, so no dirty-check read), in two pacings:
//!
//! - `steady`: one publish per tick of a fixed period (Tokio interval);
//! - `back to back`: each publish awaited before the next (on DynamoDB a
//!   publish is one `PutItem`, whose latency sets the pace);
//! - `burst`: every publish at once, each in its own task.
//!
//! The handler records `Instant::now()` per (sk, version) as it starts;
//! lag = that instant − the instant `publish_async` returned. A negative lag
//! means the background task reached the handler before the publisher's
//! `Instant::now()` after the await (the command is handed to the pipeline
//! just before the publish returns).
//!
//! `cargo bench -p cqrs-benches --bench lag`; set `DYNAMODB_ENDPOINT` for the
//! DynamoDB rows. Tokio multi-thread runtime, one worker per core.

#[allow(dead_code)]
#[path = "../src/backends.rs"]
mod backends;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use backends::{markdown_table, skipped_row, Backend};
use cqrs_core::{
    tenant_pk, BoxError, CommandInput, CommandService, DataSyncEvent, DataSyncHandler, Engine,
    InvocationContext,
};
use tokio::time::MissedTickBehavior;

const TENANT: &str = "bench";

/// When the handler saw each (sk, version).
type Seen = Arc<Mutex<HashMap<(String, u64), Instant>>>;

/// One publish: the entity and when its `publish_async` was called and returned.
struct Published {
    sk: String,
    call: Instant,
    returned: Instant,
}

struct Recorder {
    seen: Seen,
}

#[async_trait]
impl DataSyncHandler for Recorder {
    fn name(&self) -> &str {
        "lag-recorder"
    }

    async fn handle(&self, event: &DataSyncEvent) -> Result<(), BoxError> {
        let now = Instant::now();
        let key = (event.command.sk.to_string(), event.command.version);
        self.seen.lock().expect("lock").entry(key).or_insert(now);
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
enum Pacing {
    /// One publish per period.
    Steady(Duration),
    /// Back to back, each publish awaited before the next.
    BackToBack,
    /// Every publish at once, each in its own task.
    Burst,
}

impl Pacing {
    fn describe(self) -> String {
        match self {
            Pacing::Steady(period) => format!("steady, 1 per {} ms", period.as_millis()),
            Pacing::BackToBack => "back to back".to_owned(),
            Pacing::Burst => "burst (all at once)".to_owned(),
        }
    }
}

/// Signed nanoseconds `to - from`.
fn signed_nanos(from: Instant, to: Instant) -> i128 {
    match to.checked_duration_since(from) {
        Some(d) => d.as_nanos() as i128,
        None => -((from - to).as_nanos() as i128),
    }
}

/// The `q` quantile (nearest rank) of sorted `values`.
fn quantile(sorted: &[i128], q: f64) -> i128 {
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// `1.23 ms`, `456 µs`, `-12 µs`.
fn fmt_nanos(n: i128) -> String {
    if n.abs() >= 1_000_000 {
        format!("{:.2} ms", n as f64 / 1e6)
    } else {
        format!("{} µs", n / 1_000)
    }
}

async fn run(backend: Backend, pacing: Pacing, commands: usize) -> Vec<String> {
    let Some(store) = backends::storage(backend, "lag").await else {
        let mut row = skipped_row(backend, 11);
        row.insert(1, pacing.describe());
        row.pop();
        return row;
    };
    let seen: Seen = Arc::default();
    let engine = Engine::builder(store.storage.clone())
        .handler(Recorder { seen: seen.clone() })
        .build();
    let ctx = InvocationContext::new(TENANT, "bench");
    let pk = tenant_pk(TENANT);

    let publish = |i: usize| {
        let engine = engine.clone();
        let ctx = ctx.clone();
        let sk = format!("LAG#{i:06}");
        let command = CommandInput::new(&pk, &sk).attributes(serde_json::json!({ "n": i }));
        async move {
            let call = Instant::now();
            engine.publish_async(command, &ctx).await.expect("publish_async");
            Published {
                sk,
                call,
                returned: Instant::now(),
            }
        }
    };
    let mut published: Vec<Published> = Vec::with_capacity(commands);
    let started = Instant::now();
    match pacing {
        Pacing::Steady(period) => {
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
            for i in 1..=commands {
                ticker.tick().await;
                published.push(publish(i).await);
            }
        }
        Pacing::BackToBack => {
            for i in 1..=commands {
                published.push(publish(i).await);
            }
        }
        Pacing::Burst => {
            let tasks: Vec<_> = (1..=commands).map(|i| tokio::spawn(publish(i))).collect();
            for task in tasks {
                published.push(task.await.expect("publish task"));
            }
        }
    }
    let publishing = started.elapsed();
    engine.wait_idle().await;
    let drained = started.elapsed();

    let seen = std::mem::take(&mut *seen.lock().expect("lock"));
    assert_eq!(
        seen.len(),
        commands,
        "{}: every command reached the handler",
        backend.name()
    );
    let handled = |p: &Published| *seen.get(&(p.sk.clone(), 1)).expect("handled");
    let mut lags: Vec<i128> = published
        .iter()
        .map(|p| signed_nanos(p.returned, handled(p)))
        .collect();
    let mut from_call: Vec<i128> = published
        .iter()
        .map(|p| signed_nanos(p.call, handled(p)))
        .collect();
    let mut publish_times: Vec<i128> = published
        .iter()
        .map(|p| signed_nanos(p.call, p.returned))
        .collect();
    lags.sort_unstable();
    from_call.sort_unstable();
    publish_times.sort_unstable();
    let negative = lags.iter().filter(|l| **l < 0).count();
    store.cleanup().await;

    vec![
        backend.name().to_owned(),
        pacing.describe(),
        commands.to_string(),
        format!(
            "{:.0}/s",
            commands as f64 / publishing.as_secs_f64().max(f64::EPSILON)
        ),
        fmt_nanos(quantile(&publish_times, 0.50)),
        fmt_nanos(quantile(&lags, 0.50)),
        fmt_nanos(quantile(&lags, 0.90)),
        fmt_nanos(quantile(&lags, 0.99)),
        fmt_nanos(*lags.last().expect("lags")),
        format!(
            "{} / {}",
            fmt_nanos(quantile(&from_call, 0.50)),
            fmt_nanos(quantile(&from_call, 0.99))
        ),
        format!("{negative} ({:.2} s to drain)", drained.as_secs_f64()),
    ]
}

/// A count from the environment, or `default`.
fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name} is a number")))
        .unwrap_or(default)
        .max(1)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let memory_commands = env_count("LAG_MEMORY_COMMANDS", 2_000);
    let dynamodb_commands = env_count("LAG_DYNAMODB_COMMANDS", 300);
    let mut rows = Vec::new();
    for (backend, commands, period) in [
        (Backend::Memory, memory_commands, Duration::from_millis(1)),
        (Backend::DynamoDb, dynamodb_commands, Duration::from_millis(100)),
    ] {
        for pacing in [Pacing::Steady(period), Pacing::BackToBack, Pacing::Burst] {
            rows.push(run(backend, pacing, commands).await);
        }
    }
    println!(
        "\n### Pipeline lag: `publish_async` returned → handler invoked\n\n\
         In-process pipeline (`AsyncDispatch::InProcess`), Tokio multi-thread runtime ({} workers), one \
         new entity per command, one handler that only records the instant. Steady and back to back: \
         one publisher; burst: one task per publish, all spawned at once. Rate: commands published \
         per second of publishing. Lag quantiles: nearest rank over all commands. \
         Handler first: commands whose handler started before `publish_async` had returned to the \
         publisher (negative lag); from call: lag measured from the call of `publish_async` instead \
         (includes the publish itself); drain: from the first publish until `wait_idle` returned.\n",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    print!(
        "{}",
        markdown_table(
            &[
                "backend",
                "pacing",
                "commands",
                "rate",
                "publish p50",
                "lag p50",
                "lag p90",
                "lag p99",
                "lag max",
                "from call p50 / p99",
                "handler first (drain)",
            ],
            &rows,
        )
    );
}
