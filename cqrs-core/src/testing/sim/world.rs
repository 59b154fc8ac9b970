//! What every part of one simulated run shares: the seeded random source
//! that decides every choice, the trace of what happened, and simulated
//! time as the driver last moved it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// The shared state of one simulated run (see [`Sim::world`](super::Sim::world)).
///
/// Every random choice of the run — which process runs first, which call
/// fails, which record comes twice — is drawn here, from one generator
/// seeded by the run's seed, in an order the single-threaded driver fixes:
/// the same seed makes the same choices.
#[derive(Debug)]
pub struct World {
    seed: u64,
    rng: Mutex<fastrand::Rng>,
    trace: Mutex<Trace>,
    /// Simulated time, in microseconds, as the driver last moved it.
    now_micros: AtomicU64,
    /// Storage answers nothing until this simulated time (microseconds).
    storage_down_until: AtomicU64,
    calm: AtomicBool,
    counts: Mutex<BTreeMap<String, u64>>,
}

#[derive(Debug, Default)]
struct Trace {
    lines: Vec<String>,
    /// FNV-1a over every line, so two runs compare without keeping both.
    hash: u64,
}

/// At most this many lines are kept; the hash covers them all.
const KEPT_LINES: usize = 4_000;

impl World {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            seed,
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
            trace: Mutex::new(Trace {
                lines: Vec::new(),
                hash: FNV_OFFSET,
            }),
            now_micros: AtomicU64::new(0),
            storage_down_until: AtomicU64::new(0),
            calm: AtomicBool::new(false),
            counts: Mutex::default(),
        }
    }

    /// The run's seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    fn rng<T>(&self, draw: impl FnOnce(&mut fastrand::Rng) -> T) -> T {
        draw(&mut self.rng.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// True with probability `p`; always false once the run is [calm](World::calm).
    pub fn chance(&self, p: f64) -> bool {
        p > 0.0 && !self.is_calm() && self.rng(|rng| rng.f64()) < p
    }

    /// Ends the faults: from now on every [`World::chance`] is false, so no
    /// storage call, handler run or stream batch misbehaves (the calm at the
    /// end of a schedule, in which everything must settle). Storage outages
    /// under way end too.
    pub fn calm(&self) {
        self.calm.store(true, Ordering::Release);
        self.storage_down_until.store(0, Ordering::Release);
        self.trace(format_args!("calm"));
    }

    /// Whether [`World::calm`] was called.
    pub fn is_calm(&self) -> bool {
        self.calm.load(Ordering::Acquire)
    }

    /// Adds one to the counter `name` (what landed, say).
    pub fn count(&self, name: &str) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        *counts.entry(name.to_owned()).or_default() += 1;
    }

    /// The counter `name`.
    pub fn counted(&self, name: &str) -> u64 {
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.get(name).copied().unwrap_or(0)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        self.rng(|rng| rng.u64(0..n))
    }

    /// A duration between `low` and `high`, both included, in milliseconds.
    pub fn between(&self, low: Duration, high: Duration) -> Duration {
        let (low, high) = (
            low.as_millis() as u64,
            high.as_millis().max(low.as_millis()) as u64,
        );
        Duration::from_millis(self.rng(|rng| rng.u64(low..=high)))
    }

    /// One of `items`, or `None` when empty.
    pub fn pick<'a, T>(&self, items: &'a [T]) -> Option<&'a T> {
        items.get(self.below(items.len() as u64) as usize)
    }

    /// `items` in a random order.
    pub fn shuffle<T>(&self, items: &mut [T]) {
        self.rng(|rng| rng.shuffle(items));
    }

    /// Simulated time since the run started, as the driver last moved it.
    pub fn now(&self) -> Duration {
        Duration::from_micros(self.now_micros.load(Ordering::Acquire))
    }

    pub(crate) fn set_now(&self, now: Duration) {
        self.now_micros.store(now.as_micros() as u64, Ordering::Release);
    }

    /// Makes storage unavailable (every call fails, retryable) for `how_long`
    /// of simulated time from now.
    pub fn storage_outage(&self, how_long: Duration) {
        let until = (self.now() + how_long).as_micros() as u64;
        self.storage_down_until.fetch_max(until, Ordering::AcqRel);
        self.trace(format_args!("storage down for {how_long:?}"));
    }

    /// Whether storage is down now.
    pub fn storage_down(&self) -> bool {
        self.storage_down_until.load(Ordering::Acquire) > self.now_micros.load(Ordering::Acquire)
    }

    /// Adds a line to the trace, stamped with simulated time.
    pub fn trace(&self, line: std::fmt::Arguments<'_>) {
        let mut text = String::with_capacity(64);
        let _ = write!(text, "{:>9.3}s {line}", self.now().as_secs_f64());
        let mut trace = self.trace.lock().unwrap_or_else(PoisonError::into_inner);
        trace.hash = fnv1a(trace.hash, text.bytes().chain(std::iter::once(b'\n')));
        if trace.lines.len() < KEPT_LINES {
            trace.lines.push(text);
        }
    }

    /// A fingerprint of the whole trace: equal for two runs that did the
    /// same things in the same order.
    pub fn trace_hash(&self) -> u64 {
        self.trace.lock().unwrap_or_else(PoisonError::into_inner).hash
    }

    /// The trace's lines (the first few thousand).
    pub fn trace_lines(&self) -> Vec<String> {
        self.trace
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .lines
            .clone()
    }
}

/// The start of an FNV-1a hash.
pub(crate) const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a over `bytes`, from `hash`: stable across runs and machines (the
/// trace's fingerprint, the stream's shards).
pub(crate) fn fnv1a(hash: u64, bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(hash, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}
