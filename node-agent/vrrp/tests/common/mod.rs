//! Support for the lab tests: they are `#[ignore]`d on the host; `tests/run`
//! builds them and runs them inside the lab VM with `--ignored`.

use std::process::Command;

/// Runs a shell command on the (guest) host; panics with its output when it fails.
pub(crate) fn sh(command: &str) -> String {
    let output = Command::new("sh").args(["-c", command]).output().expect("run sh");
    assert!(
        output.status.success(),
        "`{command}` failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}
