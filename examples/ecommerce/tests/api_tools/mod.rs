//! The pinned Python tools of `scripts/api-tools` (Schemathesis,
//! openapi-python-client), shared by the API's contract and client tests.

use std::io::Write as _;
use std::path::PathBuf;

const TOOLS_VAR: &str = "CQRS_API_TOOLS";
const REQUIRE_VAR: &str = "CQRS_REQUIRE_API_TOOLS";

/// The `bin` folder of the tools' virtual environment, holding `tool`;
/// `None` (after saying so) when there is none and none is required
/// (`CQRS_REQUIRE_API_TOOLS` or `CI` set: `scripts/test` sets the first).
pub fn api_tools(tool: &str, test: &str) -> Option<PathBuf> {
    let found = std::env::var_os(TOOLS_VAR)
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from);
    if let Some(dir) = found {
        assert!(
            dir.join(tool).is_file(),
            "${TOOLS_VAR} is {}, which has no {tool}: `eval \"$(./scripts/api-tools)\"`",
            dir.display()
        );
        return Some(dir);
    }
    let required = std::env::var_os(REQUIRE_VAR).is_some() || std::env::var_os("CI").is_some();
    assert!(
        !required,
        "${TOOLS_VAR} is not set, but {test} is required here ({REQUIRE_VAR} or CI is set): \
         `eval \"$(./scripts/api-tools)\"`"
    );
    // Straight to the process's stderr: the test harness captures eprintln!.
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED: ${TOOLS_VAR} is not set, so {test} did not run. \
         `eval \"$(./scripts/api-tools)\"` to run it. ***"
    );
    None
}
