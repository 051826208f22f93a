//! What the demo binaries (`demo-container`, `demo-migrate`) share: their
//! JSON file and their exit status.

use std::path::Path;
use std::process::ExitCode;

/// Writes the rows as a JSON array.
pub fn write_json<T: serde::Serialize>(path: &Path, rows: &[T]) -> Result<(), String> {
    let text = serde_json::to_string_pretty(rows).map_err(|e| e.to_string())?;
    std::fs::write(path, text + "\n").map_err(|e| format!("writing {}: {e}", path.display()))
}

/// How a demo ends: its rows written to `json` when asked (a failure to
/// write fails the run too), and failure if any move `failed`.
pub fn finish<T: serde::Serialize>(json: Option<&Path>, rows: &[T], failed: bool) -> ExitCode {
    let written = json.map_or(Ok(()), |path| write_json(path, rows));
    if let Err(e) = &written {
        eprintln!("error: {e}");
    }
    if failed || written.is_err() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
