//! What an operator watches: the Prometheus recorder behind `GET /metrics`,
//! and the readiness checks behind `GET /health/ready`.
//!
//! The framework records its metrics through the `metrics` facade
//! ([`cqrs_core::meters`], [`cqrs_dynamodb::stream::meters`]); this process
//! installs [`metrics_exporter_prometheus`]'s recorder
//! ([`install_prometheus`]), without a listener of its own: the API's
//! router renders it.
//!
//! Readiness ([`Readiness::check`]) is three checks, each with its reason
//! when it fails, and each reported as not applicable where it does not
//! apply:
//!
//! - `storage`: a read of one (absent) row answers within
//!   [`STORAGE_CHECK_TIMEOUT`];
//! - `stream_consumer`: the consumer's loop runs, and reached the stream and
//!   the lease table within its lease duration (so it holds its leases, or
//!   can take free ones);
//! - `projections`: every read model is within the lag bound. Measuring lag
//!   reads every row in scope, so a background task measures it
//!   periodically ([`Readiness::spawn_lag_refresher`]), sets the lag gauges
//!   from it, and the check reads the last measure.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cqrs_core::projection::Lag;
use cqrs_core::{EntityKey, Storage};
use cqrs_dynamodb::stream::ConsumerMonitor;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::read_models::{ReadModel, ReadModels};
use crate::shop::DEMO_TENANTS;
use crate::Shop;

/// Buckets of the publish latency histogram, in seconds: from a
/// millisecond (memory) to ten seconds (handlers that time out).
pub const PUBLISH_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How long the storage check waits for its read.
pub const STORAGE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// How often the projection lag is measured by default when a readiness
/// bound is set.
pub const DEFAULT_LAG_INTERVAL: Duration = Duration::from_secs(30);

/// Counter of orders placed through the API (an example's own metric, next
/// to the framework's).
pub const ORDERS_PLACED: &str = "ecommerce_orders_placed_total";

/// The row the storage check reads: it never exists.
const PROBE_PK: &str = "HEALTH";
const PROBE_SK: &str = "READINESS_PROBE";

/// Installs the Prometheus recorder as this process's metrics recorder
/// (buckets set for the publish latency, every metric described) and
/// returns the handle that renders it. Fails if a recorder is installed
/// already.
pub fn install_prometheus() -> Result<PrometheusHandle, String> {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(cqrs_core::meters::PUBLISH_SECONDS.to_owned()),
            PUBLISH_BUCKETS,
        )
        .map_err(|e| format!("the publish latency buckets: {e}"))?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)
        .map_err(|e| format!("a metrics recorder is installed already: {e}"))?;
    cqrs_core::meters::describe();
    cqrs_dynamodb::stream::meters::describe();
    metrics::describe_counter!(
        ORDERS_PLACED,
        "Orders placed through the API (replays of an idempotent request not counted)"
    );
    Ok(handle)
}

/// What `/metrics` and `/health/ready` answer from. Cheap to clone.
#[derive(Clone)]
pub struct Observe {
    pub(crate) metrics: Option<PrometheusHandle>,
    pub(crate) readiness: Readiness,
}

impl Observe {
    /// `/metrics` renders `metrics` (`None`: 404, no recorder in this
    /// process); `/health/ready` runs `readiness`.
    pub fn new(metrics: Option<PrometheusHandle>, readiness: Readiness) -> Self {
        Self { metrics, readiness }
    }

    /// The Prometheus text of the recorder, if one is installed.
    pub fn render(&self) -> Option<String> {
        self.metrics.as_ref().map(PrometheusHandle::render)
    }

    /// The readiness checks.
    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }
}

/// One readiness check's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Check {
    /// `storage`, `stream_consumer` or `projections`.
    pub name: String,
    /// Whether it passes (a check that does not apply passes).
    pub ok: bool,
    /// Whether it applies to this process (no stream consumer, no read models: it does not).
    pub applicable: bool,
    /// Why it fails, or why it does not apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Check {
    fn ok(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            ok: true,
            applicable: true,
            reason: None,
        }
    }

    fn failing(name: &str, reason: String) -> Self {
        Self {
            name: name.to_owned(),
            ok: false,
            applicable: true,
            reason: Some(reason),
        }
    }

    fn not_applicable(name: &str, reason: &str) -> Self {
        Self {
            name: name.to_owned(),
            ok: true,
            applicable: false,
            reason: Some(reason.to_owned()),
        }
    }
}

/// `GET /health/ready`'s body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReadyReport {
    /// `ready` (every check passes: 200) or `not_ready` (503).
    pub status: String,
    /// Every check, in order: `storage`, `stream_consumer`, `projections`.
    pub checks: Vec<Check>,
}

impl ReadyReport {
    /// Whether every check passes.
    pub fn is_ready(&self) -> bool {
        self.checks.iter().all(|check| check.ok)
    }
}

/// The last measure of the read models' lag.
struct LagMeasure {
    /// Per read model: its name and its lag, or why it could not be read.
    models: Vec<(&'static str, Result<Lag, String>)>,
}

/// The readiness checks of one process. Cheap to clone: clones share the
/// last lag measure.
#[derive(Clone)]
pub struct Readiness {
    storage: Arc<dyn Storage>,
    consumer: Option<(ConsumerMonitor, Duration)>,
    read_models: Option<ReadModels>,
    tenants: Vec<String>,
    max_projection_lag: Option<Duration>,
    lag: Arc<Mutex<Option<LagMeasure>>>,
}

impl Readiness {
    /// The checks of a process serving `shop`: its storage, and its read
    /// models' lag over the demo tenants, without a bound (see
    /// [`Readiness::max_projection_lag`]) and without a stream consumer.
    pub fn new(shop: &Shop) -> Self {
        Self {
            storage: Arc::clone(shop.engine.storage()),
            consumer: None,
            read_models: shop.read_models.clone(),
            tenants: DEMO_TENANTS.map(str::to_owned).to_vec(),
            max_projection_lag: None,
            lag: Arc::default(),
        }
    }

    /// Checks the stream consumer `monitor` watches: it must have reached
    /// the stream and the lease table within `lease_duration` (beyond it,
    /// its leases have expired).
    pub fn with_consumer(mut self, monitor: ConsumerMonitor, lease_duration: Duration) -> Self {
        self.consumer = Some((monitor, lease_duration));
        self
    }

    /// The tenants whose orders the lag is measured over.
    pub fn tenants(mut self, tenants: Vec<String>) -> Self {
        self.tenants = tenants;
        self
    }

    /// Not ready while a read model's oldest version not applied yet is
    /// older than `bound` (`None`: no bound; the lag is still measured, for
    /// the gauges).
    pub fn max_projection_lag(mut self, bound: Option<Duration>) -> Self {
        self.max_projection_lag = bound;
        self
    }

    /// Runs every check.
    pub async fn check(&self) -> ReadyReport {
        let checks = vec![self.storage().await, self.consumer(), self.projections()];
        let status = if checks.iter().all(|check| check.ok) {
            "ready"
        } else {
            "not_ready"
        };
        ReadyReport {
            status: status.to_owned(),
            checks,
        }
    }

    async fn storage(&self) -> Check {
        const NAME: &str = "storage";
        let probe = EntityKey::new(PROBE_PK, PROBE_SK);
        match tokio::time::timeout(STORAGE_CHECK_TIMEOUT, self.storage.get_data(&probe)).await {
            Ok(Ok(_)) => Check::ok(NAME),
            Ok(Err(error)) => Check::failing(NAME, format!("a read failed: {error}")),
            Err(_) => Check::failing(
                NAME,
                format!("a read did not answer within {STORAGE_CHECK_TIMEOUT:?}"),
            ),
        }
    }

    fn consumer(&self) -> Check {
        const NAME: &str = "stream_consumer";
        let Some((monitor, lease_duration)) = &self.consumer else {
            return Check::not_applicable(NAME, "no stream consumer in this process");
        };
        if !monitor.is_running() {
            return Check::failing(NAME, "the stream consumer is not running".to_owned());
        }
        let Some(contact) = monitor.last_contact() else {
            return Check::failing(
                NAME,
                "the stream consumer has not reached the stream and its lease table yet".to_owned(),
            );
        };
        let since = (cqrs_core::clock::now() - contact).to_std().unwrap_or_default();
        if since > *lease_duration {
            return Check::failing(
                NAME,
                format!(
                    "the stream consumer last reached its lease table {:.1} s ago, more than its lease \
                     duration ({:.1} s): it holds no lease",
                    since.as_secs_f64(),
                    lease_duration.as_secs_f64()
                ),
            );
        }
        Check::ok(NAME)
    }

    fn projections(&self) -> Check {
        const NAME: &str = "projections";
        if self.read_models.is_none() {
            return Check::not_applicable(NAME, "no read models in this process");
        }
        let Some(bound) = self.max_projection_lag else {
            return Check::not_applicable(NAME, "no lag bound set (--ready-max-projection-lag)");
        };
        let measure = self.lag.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(measure) = measure.as_ref() else {
            return Check::failing(NAME, "the projection lag has not been measured yet".to_owned());
        };
        let mut behind = Vec::new();
        for (name, lag) in &measure.models {
            match lag {
                Err(error) => behind.push(format!("{name}: the lag cannot be measured: {error}")),
                Ok(lag) if lag.events_behind > 0 && lag.oldest_age() >= bound => behind.push(format!(
                    "{name}: {} versions behind, the oldest written {:.1} s ago (bound {:.1} s)",
                    lag.events_behind,
                    lag.oldest_age().as_secs_f64(),
                    bound.as_secs_f64()
                )),
                Ok(_) => {}
            }
        }
        if behind.is_empty() {
            Check::ok(NAME)
        } else {
            Check::failing(NAME, behind.join("; "))
        }
    }

    /// Measures every read model's lag now (reading every row in scope),
    /// sets the lag gauges ([`cqrs_core::meters::projection_lag`]) and keeps
    /// the measure for the readiness check. Nothing to do without read models.
    pub async fn refresh_projection_lag(&self) {
        let Some(read_models) = &self.read_models else {
            return;
        };
        let mut models = Vec::new();
        for (which, name) in [
            (ReadModel::Sales, crate::read_models::SALES_PROJECTION),
            (ReadModel::Search, crate::read_models::SEARCH_PROJECTION),
        ] {
            let lag = read_models.lag(which, &self.tenants).await;
            if let Ok(lag) = &lag {
                cqrs_core::meters::projection_lag(name, lag);
            }
            models.push((name, lag.map_err(|e| e.to_string())));
        }
        *self.lag.lock().unwrap_or_else(PoisonError::into_inner) = Some(LagMeasure { models });
    }

    /// Measures the lag now and then every `every`, on a task of its own
    /// (until the runtime stops, or the handle is aborted).
    pub fn spawn_lag_refresher(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let readiness = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                readiness.refresh_projection_lag().await;
            }
        })
    }
}
