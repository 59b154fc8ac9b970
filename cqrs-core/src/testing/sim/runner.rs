//! Runs many schedules, one per seed, over a few threads; stops at the
//! first that fails and says how to replay it.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once, PoisonError};
use std::time::{Duration, Instant};

/// Which schedules to run.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Schedules {
    /// The seed of the first schedule; the others follow it.
    pub first_seed: u64,
    /// How many schedules.
    pub count: u64,
    /// Threads running them (each schedule runs on one thread).
    pub threads: usize,
    /// The command that replays a seed, `{seed}` standing for it: printed
    /// with a failure.
    pub replay: String,
}

impl Schedules {
    /// `count` schedules from `first_seed`, on as many threads as the
    /// machine has cores, replayed by `replay` (with `{seed}` in it).
    pub fn new(first_seed: u64, count: u64, replay: impl Into<String>) -> Self {
        Self {
            first_seed,
            count,
            threads: std::thread::available_parallelism().map_or(1, usize::from),
            replay: replay.into(),
        }
    }

    /// [`Schedules::new`], unless the environment says otherwise:
    /// `CQRS_SIM_SEED` runs that one seed only (a replay),
    /// `CQRS_SIM_SCHEDULES` sets the count (the long mode:
    /// `CQRS_SIM_SCHEDULES=100000`), `CQRS_SIM_FIRST_SEED` the first seed.
    pub fn from_env(first_seed: u64, count: u64, replay: impl Into<String>) -> Self {
        let var = |name: &str| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let mut schedules = Self::new(
            var("CQRS_SIM_FIRST_SEED").unwrap_or(first_seed),
            var("CQRS_SIM_SCHEDULES").unwrap_or(count),
            replay,
        );
        if let Some(seed) = var("CQRS_SIM_SEED") {
            schedules.first_seed = seed;
            schedules.count = 1;
            schedules.threads = 1;
        }
        schedules
    }

    /// The replay command of `seed`.
    pub fn replay_command(&self, seed: u64) -> String {
        self.replay.replace("{seed}", &seed.to_string())
    }
}

/// A schedule that failed.
#[derive(Debug, Clone)]
pub struct Failure {
    /// Its seed.
    pub seed: u64,
    /// How many schedules came before it in the run (it is the
    /// `index + 1`-th).
    pub index: u64,
    /// What failed (the panic's message).
    pub message: String,
}

/// What [`run_schedules`] did.
#[derive(Debug, Clone)]
pub struct Report {
    /// Schedules run to the end (the failing one included).
    pub ran: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// The first failing schedule (lowest index), if any.
    pub failure: Option<Failure>,
}

impl Report {
    /// Panics with the failure, its seed and replay command, if any.
    pub fn assert_passed(&self, schedules: &Schedules) {
        if let Some(failure) = &self.failure {
            panic!(
                "simulation failed at schedule {} of {} (seed {}): {}\nreplay: {}",
                failure.index + 1,
                self.ran,
                failure.seed,
                failure.message,
                schedules.replay_command(failure.seed)
            );
        }
    }
}

thread_local! {
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Panics on simulation threads are reported once, by the runner: the
/// default hook is kept quiet there, and for injected handler panics
/// (there are many) everywhere.
pub(crate) fn quiet_panics_on_simulation_threads() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let injected = info.payload().downcast_ref::<String>().map(String::as_str)
                == Some(super::handler::INJECTED_PANIC)
                || info.payload().downcast_ref::<&str>() == Some(&super::handler::INJECTED_PANIC);
            if !injected && !QUIET.with(std::cell::Cell::get) {
                default(info);
            }
        }));
    });
}

/// Runs `f`, catching a panic, without the panic hook's report: for a
/// schedule expected to fail (a reintroduced bug), whose failure the caller
/// counts or replays.
pub fn catch_quietly<R>(f: impl FnOnce() -> R) -> std::thread::Result<R> {
    quiet_panics_on_simulation_threads();
    let quiet = QUIET.with(|quiet| quiet.replace(true));
    let caught = catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(quiet));
    caught
}

/// Runs `schedule(seed)` for each of `schedules`, over its threads; a
/// schedule fails by panicking. Stops at the first failure (the one with
/// the lowest index, whatever the threads' order) and prints a line of
/// what ran, with the replay command of a failure.
pub fn run_schedules(schedules: &Schedules, schedule: impl Fn(u64) + Sync) -> Report {
    quiet_panics_on_simulation_threads();
    let started = Instant::now();
    let next = AtomicU64::new(0);
    let ran = AtomicU64::new(0);
    // Lowest failing index so far: schedules after it are not started.
    let limit = AtomicU64::new(schedules.count);
    let failure: Mutex<Option<Failure>> = Mutex::new(None);
    let single = schedules.count == 1;
    std::thread::scope(|scope| {
        for _ in 0..schedules.threads.max(1) {
            scope.spawn(|| loop {
                let index = next.fetch_add(1, Ordering::AcqRel);
                if index >= limit.load(Ordering::Acquire) {
                    return;
                }
                let seed = schedules.first_seed.wrapping_add(index);
                QUIET.with(|quiet| quiet.set(!single));
                let outcome = catch_unwind(AssertUnwindSafe(|| schedule(seed)));
                QUIET.with(|quiet| quiet.set(false));
                ran.fetch_add(1, Ordering::AcqRel);
                if let Err(panic) = outcome {
                    let message = crate::engine::panic_message(panic.as_ref());
                    let mut found = failure.lock().unwrap_or_else(PoisonError::into_inner);
                    if found.as_ref().is_none_or(|f| f.index > index) {
                        *found = Some(Failure { seed, index, message });
                    }
                    limit.fetch_min(index, Ordering::AcqRel);
                }
            });
        }
    });
    let report = Report {
        ran: ran.load(Ordering::Acquire),
        elapsed: started.elapsed(),
        failure: failure.into_inner().unwrap_or_else(PoisonError::into_inner),
    };
    match &report.failure {
        None => eprintln!(
            "simulation: {} schedules from seed {} passed in {:.1} s",
            report.ran,
            schedules.first_seed,
            report.elapsed.as_secs_f64()
        ),
        Some(failure) => eprintln!(
            "simulation: schedule {} (seed {}) failed after {} schedules in {:.1} s: {}\nreplay: {}",
            failure.index + 1,
            failure.seed,
            report.ran,
            report.elapsed.as_secs_f64(),
            failure.message,
            schedules.replay_command(failure.seed)
        ),
    }
    report
}
