//! Shared helpers of the workload binaries in `benches/`.

/// Helpers of the workloads that compare with the Rust peer, cqrs-es 0.5
/// (`lifecycle` and `history`): timing statistics and a child process for
/// the peer's `MemStore`, which prints two lines to stdout per command.
pub mod peer {
    use std::process::{Command, Stdio};
    use std::time::Duration;

    /// Environment variable that makes a bench binary run one role as a child.
    pub const CHILD_ENV: &str = "CQRS_BENCH_CHILD";
    /// Prefix of the stderr lines that carry a child's results.
    const RESULT_PREFIX: &str = "RESULT ";

    /// The role this process was started for by [`run_child`], if any.
    pub fn child_role() -> Option<String> {
        std::env::var(CHILD_ENV).ok()
    }

    /// Sends one result line from a child to its parent (on stderr).
    pub fn report(line: &str) {
        eprintln!("{RESULT_PREFIX}{line}");
    }

    /// Runs this bench binary again with [`CHILD_ENV`] = `role`, its stdout
    /// discarded (it still pays for every `println!`: one `write` per line),
    /// and returns the lines it sent with [`report`]. Its other stderr lines
    /// are passed through. Panics if the child fails.
    pub fn run_child(role: &str) -> Vec<String> {
        let exe = std::env::current_exe().expect("current exe");
        let output = Command::new(exe)
            .args(std::env::args().skip(1))
            .env(CHILD_ENV, role)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("start child");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let mut results = Vec::new();
        for line in stderr.lines() {
            match line.strip_prefix(RESULT_PREFIX) {
                Some(result) => results.push(result.to_owned()),
                None => eprintln!("{line}"),
            }
        }
        assert!(
            output.status.success(),
            "child '{role}' failed: {}",
            output.status
        );
        results
    }

    /// The `q`-quantile (0.0 to 1.0, nearest rank) of `samples`.
    pub fn quantile(samples: &[Duration], q: f64) -> Duration {
        assert!(!samples.is_empty(), "no samples");
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }

    /// The median of `samples`.
    pub fn median(samples: &[Duration]) -> Duration {
        quantile(samples, 0.5)
    }

    /// Microseconds, for tables.
    pub fn micros(d: Duration) -> f64 {
        d.as_secs_f64() * 1e6
    }
}

/// A counting global allocator: calls and bytes requested, for the
/// allocations-per-operation workloads (`allocations`, `dynamodb_cpu`).
///
/// A bench binary installs it with
/// `#[global_allocator] static ALLOCATOR: Counting = Counting;` and reads
/// [`Tally::now`](counting::Tally::now) around what it measures. It counts only while
/// [`set_counting`](counting::set_counting) is on (off by default), so that a timed loop does not
/// pay for the counters.
///
/// Counted as dhat counts them: every `alloc`, `alloc_zeroed` and `realloc`
/// is one allocation, of the size asked for (a `realloc` of its new size);
/// frees are not counted.
pub mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    static ON: AtomicBool = AtomicBool::new(false);
    static CALLS: AtomicU64 = AtomicU64::new(0);
    static REALLOCS: AtomicU64 = AtomicU64::new(0);
    static BYTES: AtomicU64 = AtomicU64::new(0);

    /// Turns counting on or off (process-wide).
    pub fn set_counting(on: bool) {
        ON.store(on, Ordering::SeqCst);
    }

    fn count(size: usize, realloc: bool) {
        if ON.load(Ordering::Relaxed) {
            CALLS.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(size as u64, Ordering::Relaxed);
            if realloc {
                REALLOCS.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// `std::alloc::System`, counted.
    pub struct Counting;

    // SAFETY: every call is forwarded to `System` unchanged; only counters are kept.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            count(layout.size(), false);
            System.alloc(layout)
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            count(layout.size(), false);
            System.alloc_zeroed(layout)
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            System.dealloc(ptr, layout);
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            count(new_size, true);
            System.realloc(ptr, layout, new_size)
        }
    }

    /// The counters at one moment; the difference of two is what happened between.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct Tally {
        /// Allocation calls (`realloc`s included).
        pub calls: u64,
        /// Of which `realloc`s.
        pub reallocs: u64,
        /// Bytes asked for.
        pub bytes: u64,
    }

    impl Tally {
        /// The counters now.
        pub fn now() -> Self {
            Self {
                calls: CALLS.load(Ordering::Relaxed),
                reallocs: REALLOCS.load(Ordering::Relaxed),
                bytes: BYTES.load(Ordering::Relaxed),
            }
        }

        /// What was counted since `before`.
        pub fn since(self, before: Tally) -> Tally {
            Tally {
                calls: self.calls - before.calls,
                reallocs: self.reallocs - before.reallocs,
                bytes: self.bytes - before.bytes,
            }
        }
    }
}

/// CPU time of the calling thread and of the process
/// (`clock_gettime(CLOCK_THREAD_CPUTIME_ID | CLOCK_PROCESS_CPUTIME_ID)`).
pub mod cpu {
    use std::time::Duration;

    fn clock(id: libc::clockid_t) -> Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec; the clock ids are Linux's.
        let rc = unsafe { libc::clock_gettime(id, &mut ts) };
        assert_eq!(rc, 0, "clock_gettime({id})");
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }

    /// CPU time this thread has used.
    pub fn thread() -> Duration {
        clock(libc::CLOCK_THREAD_CPUTIME_ID)
    }

    /// CPU time every thread of the process has used.
    pub fn process() -> Duration {
        clock(libc::CLOCK_PROCESS_CPUTIME_ID)
    }
}

/// Callgrind client requests, to count the instructions of one measured
/// loop: [`dump`](callgrind::dump) writes the counts collected since the previous dump to a
/// file of their own (`callgrind.out.PID.N`, its `desc:` line naming the
/// label) and zeroes them. Outside Valgrind the request is a few no-op
/// instructions (the sequence from `valgrind.h`, amd64 only; nothing
/// elsewhere).
pub mod callgrind {
    use std::ffi::CStr;

    /// `VG_USERREQ__DUMP_STATS_AT` of `callgrind.h`: `VG_USERREQ_TOOL_BASE('C','T') + 3`.
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    const DUMP_STATS_AT: u64 = ((b'C' as u64) << 24 | (b'T' as u64) << 16) + 3;

    /// Dumps the counts since the previous dump under `label`, when running
    /// under Callgrind.
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    pub fn dump(label: &CStr) {
        let args: [u64; 6] = [DUMP_STATS_AT, label.as_ptr() as u64, 0, 0, 0, 0];
        let mut result: u64 = 0;
        // SAFETY: Valgrind's "special instruction" sequence: four rotations
        // of rdi by 128 bits in all (rdi unchanged) and `xchg rbx, rbx` (a
        // no-op); under Valgrind it reads the request in `args` (via rax)
        // and writes its result to rdx.
        unsafe {
            std::arch::asm!(
                "rol rdi, 3",
                "rol rdi, 13",
                "rol rdi, 61",
                "rol rdi, 51",
                "xchg rbx, rbx",
                inout("rdx") result,
                in("rax") args.as_ptr(),
                out("rdi") _,
                options(nostack),
            );
        }
        let _ = result;
    }

    /// Nothing: client requests are for amd64 Linux here.
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    pub fn dump(_label: &CStr) {}
}

/// One measured loop: its allocations (see [`counting`]), thread and
/// process CPU time, wall time, and a Callgrind dump of its instructions
/// (see [`callgrind`]) labelled with its name.
pub mod window {
    use std::ffi::CString;
    use std::time::{Duration, Instant};

    use crate::counting::Tally;
    use crate::{callgrind, cpu};

    /// Runs `op` on every input, the first `warmup` unmeasured; returns the
    /// measurement of the rest (allocations counted if `count`, dumped to
    /// Callgrind under `label`) and every output.
    pub async fn measure<I, O, F, Fut>(
        label: &str,
        warmup: usize,
        count: bool,
        inputs: Vec<I>,
        mut op: F,
    ) -> (Measured, Vec<O>)
    where
        F: FnMut(I) -> Fut,
        Fut: std::future::Future<Output = O>,
    {
        let mut outputs = Vec::with_capacity(inputs.len());
        let mut inputs = inputs.into_iter();
        for input in inputs.by_ref().take(warmup) {
            outputs.push(op(input).await);
        }
        let measured = inputs.len();
        crate::counting::set_counting(count);
        let window = Window::open(label);
        for input in inputs {
            outputs.push(op(input).await);
        }
        let result = window.close(measured);
        crate::counting::set_counting(false);
        (result, outputs)
    }

    /// An open measurement window.
    pub struct Window {
        label: CString,
        tally: Tally,
        thread: Duration,
        process: Duration,
        wall: Instant,
    }

    /// What happened in a window.
    #[derive(Debug, Clone, Copy)]
    pub struct Measured {
        /// Operations in the window.
        pub ops: usize,
        /// Allocations counted (zero unless counting was on).
        pub tally: Tally,
        /// CPU time of the thread that opened and closed it.
        pub thread: Duration,
        /// CPU time of the whole process.
        pub process: Duration,
        /// Wall time.
        pub wall: Duration,
    }

    impl Window {
        /// Starts measuring: everything Callgrind counted so far is dumped
        /// under `setup` (and zeroed), then the clocks and counters are read.
        pub fn open(label: &str) -> Self {
            let label = CString::new(label).expect("a label without NUL");
            callgrind::dump(c"setup");
            let wall = Instant::now();
            let process = cpu::process();
            let thread = cpu::thread();
            let tally = Tally::now();
            Self {
                label,
                tally,
                thread,
                process,
                wall,
            }
        }

        /// Stops measuring `ops` operations; Callgrind's counts since
        /// [`Window::open`] are dumped under the window's label.
        pub fn close(self, ops: usize) -> Measured {
            let tally = Tally::now().since(self.tally);
            let thread = cpu::thread() - self.thread;
            let process = cpu::process() - self.process;
            let wall = self.wall.elapsed();
            callgrind::dump(&self.label);
            Measured {
                ops,
                tally,
                thread,
                process,
                wall,
            }
        }
    }

    impl Measured {
        /// Allocation calls per operation.
        pub fn calls_per_op(&self) -> f64 {
            self.tally.calls as f64 / self.ops as f64
        }

        /// `realloc` calls per operation.
        pub fn reallocs_per_op(&self) -> f64 {
            self.tally.reallocs as f64 / self.ops as f64
        }

        /// Bytes requested per operation.
        pub fn bytes_per_op(&self) -> f64 {
            self.tally.bytes as f64 / self.ops as f64
        }

        /// Thread CPU time per operation, in µs.
        pub fn thread_micros_per_op(&self) -> f64 {
            self.thread.as_secs_f64() * 1e6 / self.ops as f64
        }

        /// Process CPU time per operation, in µs.
        pub fn process_micros_per_op(&self) -> f64 {
            self.process.as_secs_f64() * 1e6 / self.ops as f64
        }

        /// Wall time per operation, in µs.
        pub fn wall_micros_per_op(&self) -> f64 {
            self.wall.as_secs_f64() * 1e6 / self.ops as f64
        }
    }
}
