//! Running the outside clients that `scripts/test` installs: Python tools in the git-ignored
//! venv and Debian's command-line clients. A missing tool fails the test; it never skips.

use std::path::PathBuf;
use std::time::Duration;

use tokio::process::Command;

/// The path of `tool` in the test venv, failing with instructions when it is missing.
pub fn venv_bin(tool: &str) -> PathBuf {
    let venv = std::env::var_os("POOLSERVE_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv"));
    let bin = venv.join("bin").join(tool);
    assert!(
        bin.exists(),
        "{} is missing: run scripts/test (it installs the Python test clients)",
        bin.display()
    );
    bin
}

/// Longest any outside client may run before the test fails.
pub const CLIENT_LIMIT: Duration = Duration::from_secs(180);

/// Runs `cmd` to its end (bounded by [`CLIENT_LIMIT`]), failing the test unless it succeeds;
/// returns what it printed.
pub async fn run(cmd: &mut Command) -> String {
    cmd.kill_on_drop(true);
    let out = tokio::time::timeout(CLIENT_LIMIT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{cmd:?} still running after {CLIENT_LIMIT:?}"))
        .expect("the client runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// The path of a test client script under `tests/clients`.
pub fn client_script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(name)
}

/// A command-line tool from the system's packages, failing with instructions when missing.
pub fn system_tool(tool: &str) -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{tool} is missing: run scripts/test (it installs it)"))
}
