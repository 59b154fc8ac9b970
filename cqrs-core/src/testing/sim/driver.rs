//! The driver: processes, each on a Tokio runtime of its own with a paused
//! clock, moved forward together one tick at a time, in an order the seed
//! picks; crashed by dropping their runtime, restarted by building a new one.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::runtime::Runtime;
use tokio::sync::Notify;

use super::clock::{self, Reading};
use super::world::World;

/// What a process runs: called at each (re)start with the process's
/// [`ProcessEnv`]; the future it returns is the process's main task.
pub type ProcessMain = Arc<dyn Fn(ProcessEnv) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Identifies a process of a [`Sim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProcessId(usize);

/// What a running process knows of itself.
#[derive(Clone, Debug)]
pub struct ProcessEnv {
    /// Its name.
    pub name: Arc<str>,
    /// How many times it was started before this one (0: the first start).
    pub incarnation: u32,
    /// The run's shared state.
    pub world: Arc<World>,
    /// Lets the process's own parts (its storage client) crash it.
    pub crash: CrashSwitch,
}

/// Crashes the process it belongs to at the end of the current instant:
/// its runtime is dropped with every task in it, at whatever await each is.
#[derive(Clone, Debug, Default)]
pub struct CrashSwitch {
    requested: Arc<AtomicBool>,
    wake: Arc<Notify>,
}

impl CrashSwitch {
    /// Asks for the crash; the driver carries it out before anything else
    /// of this process runs.
    pub fn request(&self) {
        self.requested.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    fn take(&self) -> bool {
        self.requested.swap(false, Ordering::AcqRel)
    }
}

struct Process {
    name: Arc<str>,
    main: ProcessMain,
    running: Option<Running>,
    incarnation: u32,
    /// Not run until this simulated time (a stall, or down after a crash).
    paused_until: Option<Duration>,
    /// Started again at `paused_until` if it crashed.
    restart: bool,
    crash: CrashSwitch,
}

struct Running {
    runtime: Runtime,
    /// Simulated time when it started, and its Tokio clock then.
    started: Duration,
    anchor: tokio::time::Instant,
    /// Simulated time its clock has reached.
    reached: Duration,
}

/// How a [`Sim`] moves time.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SimConfig {
    /// Simulated time per step. Every process runs up to the end of a step
    /// before the next step starts; a shorter tick interleaves processes
    /// more finely and costs more steps.
    pub tick: Duration,
    /// Wall time at simulated time zero.
    pub epoch: DateTime<Utc>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            tick: Duration::from_millis(5),
            epoch: DateTime::from_timestamp(1_767_225_600, 0).unwrap_or_default(),
        }
    }
}

/// A deterministic simulation: processes over shared, simulated storage,
/// under one seeded source of choices and one simulated clock.
///
/// Everything runs on the calling thread. Each process has a current-thread
/// Tokio runtime with a paused clock; a step moves every process's clock
/// by one tick, in a seeded order, running what becomes ready. Nothing
/// reads real time or real randomness: the framework's clock
/// ([`crate::clock::now`]) reads simulated time on this thread, and the
/// thread's `fastrand` generator (the framework's backoff jitter) is seeded
/// from the run's seed. So the same seed gives the same run.
pub struct Sim {
    world: Arc<World>,
    config: SimConfig,
    now: Duration,
    processes: Vec<Process>,
    _clock: clock::Installed,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("seed", &self.world.seed())
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

impl Sim {
    /// A simulation of seed `seed`, with no process yet.
    ///
    /// # Panics
    ///
    /// If another simulation runs on this thread.
    pub fn new(seed: u64, config: SimConfig) -> Self {
        super::runner::quiet_panics_on_simulation_threads();
        let clock = clock::install(config.epoch);
        fastrand::seed(seed ^ 0x9e37_79b9_7f4a_7c15);
        Self {
            world: Arc::new(World::new(seed)),
            config,
            now: Duration::ZERO,
            processes: Vec::new(),
            _clock: clock,
        }
    }

    /// The run's shared state: its random choices, trace and time.
    pub fn world(&self) -> &Arc<World> {
        &self.world
    }

    /// Simulated time since the start.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// Starts a process running `main`.
    pub fn spawn<F, Fut>(&mut self, name: &str, main: F) -> ProcessId
    where
        F: Fn(ProcessEnv) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let main: ProcessMain = Arc::new(move |env| Box::pin(main(env)));
        self.processes.push(Process {
            name: name.into(),
            main,
            running: None,
            incarnation: 0,
            paused_until: None,
            restart: false,
            crash: CrashSwitch::default(),
        });
        let id = ProcessId(self.processes.len() - 1);
        self.start(id);
        id
    }

    /// The process's name.
    pub fn name(&self, id: ProcessId) -> &str {
        &self.processes[id.0].name
    }

    /// Whether the process is up (started and not crashed).
    pub fn is_up(&self, id: ProcessId) -> bool {
        self.processes[id.0].running.is_some()
    }

    fn start(&mut self, id: ProcessId) {
        let now = self.now;
        let process = &mut self.processes[id.0];
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a current-thread runtime");
        let anchor = runtime.block_on(async { tokio::time::Instant::now() });
        let env = ProcessEnv {
            name: process.name.clone(),
            incarnation: process.incarnation,
            world: self.world.clone(),
            crash: process.crash.clone(),
        };
        clock::read_from(Reading::Process { started: now, anchor });
        runtime.spawn((process.main)(env));
        clock::read_from(Reading::Driver(now));
        process.running = Some(Running {
            runtime,
            started: now,
            anchor,
            reached: now,
        });
        process.paused_until = None;
        process.restart = false;
        self.world.trace(format_args!(
            "{} started (#{})",
            process.name, process.incarnation
        ));
    }

    /// Crashes the process now: every task in it is dropped at the await
    /// it is at. With `restart_after`, it starts again (with the storage as
    /// it finds it) once that much simulated time has passed.
    pub fn crash(&mut self, id: ProcessId, restart_after: Option<Duration>) {
        let now = self.now;
        let process = &mut self.processes[id.0];
        let Some(running) = process.running.take() else {
            return;
        };
        // Dropping the runtime drops every task; their destructors read the
        // driver's clock.
        clock::read_from(Reading::Driver(now));
        drop(running);
        process.crash.take();
        process.incarnation += 1;
        process.paused_until = restart_after.map(|after| now + after);
        process.restart = restart_after.is_some();
        self.world.trace(format_args!("{} crashed", process.name));
    }

    /// Stops running the process for `how_long` (a stop-the-world pause, a
    /// frozen VM): its timers fire late, its leases and heartbeats lapse,
    /// and then it goes on where it was, unaware.
    pub fn stall(&mut self, id: ProcessId, how_long: Duration) {
        let until = self.now + how_long;
        let process = &mut self.processes[id.0];
        if process.running.is_some() {
            process.paused_until = Some(until);
            self.world
                .trace(format_args!("{} stalled for {how_long:?}", process.name));
        }
    }

    /// Starts again every process that is down, and ends every stall.
    pub fn revive_all(&mut self) {
        for index in 0..self.processes.len() {
            self.processes[index].paused_until = None;
            if self.processes[index].running.is_none() {
                self.start(ProcessId(index));
            }
        }
    }

    /// Moves simulated time one tick: every process that is up runs until
    /// its clock reaches the new time, in an order the seed picks. A
    /// process that asked for its crash meanwhile is crashed at once.
    pub fn step(&mut self) {
        self.now += self.config.tick;
        self.world.set_now(self.now);
        let mut order: Vec<usize> = (0..self.processes.len()).collect();
        self.world.shuffle(&mut order);
        for index in order {
            let id = ProcessId(index);
            let process = &mut self.processes[index];
            if let Some(until) = process.paused_until {
                if until > self.now {
                    continue;
                }
                process.paused_until = None;
                if process.running.is_none() {
                    if process.restart {
                        self.start(id);
                    }
                    continue;
                }
                self.world.trace(format_args!("{} goes on", process.name));
            }
            let Some(running) = process.running.as_mut() else {
                continue;
            };
            let lag = self.now.saturating_sub(running.reached);
            running.reached = self.now;
            clock::read_from(Reading::Process {
                started: running.started,
                anchor: running.anchor,
            });
            let crash = process.crash.clone();
            running.runtime.block_on(async {
                tokio::select! {
                    biased;
                    () = crash.wake.notified() => {}
                    () = tokio::time::sleep(lag) => {}
                }
            });
            clock::read_from(Reading::Driver(self.now));
            if crash.take() {
                let restart_after = self
                    .world
                    .between(Duration::from_millis(50), Duration::from_secs(2));
                self.world
                    .trace(format_args!("{} crashes itself", self.processes[index].name));
                self.crash(id, Some(restart_after));
            }
        }
    }

    /// Steps for `how_long` of simulated time.
    pub fn run_for(&mut self, how_long: Duration) {
        let until = self.now + how_long;
        while self.now < until {
            self.step();
        }
    }

    /// Steps until `done` says so, checking it every `every` of simulated
    /// time, for at most `limit`. Returns whether `done` said so.
    pub fn run_until(
        &mut self,
        every: Duration,
        limit: Duration,
        mut done: impl FnMut(&mut Sim) -> bool,
    ) -> bool {
        let until = self.now + limit;
        loop {
            if done(self) {
                return true;
            }
            if self.now >= until {
                return false;
            }
            self.run_for(every);
        }
    }

    /// Runs `future` to completion on a runtime of the driver's own (for
    /// reading the storage between steps, or checking invariants), with
    /// the clock stopped at the current simulated time.
    pub fn inspect<T>(&self, future: impl Future<Output = T>) -> T {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a current-thread runtime");
        runtime.block_on(future)
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        // Runtimes first, while the clock is still installed.
        clock::read_from(Reading::Driver(self.now));
        for process in &mut self.processes {
            process.running.take();
        }
    }
}
