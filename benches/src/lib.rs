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
