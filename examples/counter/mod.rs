//! The workload the examples move around: a counter that prints 1, 2, 3...
//! into its stdout (a file of the example's), so that a restore shows
//! whether it went on from where it stopped. Not part of the API.

// Each example compiles this module on its own and uses a part of it.
#![allow(dead_code)]

use std::error::Error;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

/// The python3 program. It first closes any descriptor it inherited beyond
/// 0-2: CRIU cannot dump, say, a pipe whose other end it lacks.
pub const SCRIPT: &str = "
import os, time
os.closerange(3, 65536)
n = 0
while True:
    n += 1
    print(n, flush=True)
    time.sleep(0.005)
";

/// The numbers printed so far.
pub fn counts(out: &Path) -> std::io::Result<Vec<u64>> {
    let text = fs::read_to_string(out)?;
    Ok(text.lines().filter_map(|l| l.parse().ok()).collect())
}

/// The last number printed (0 before the first).
pub fn last(out: &Path) -> std::io::Result<u64> {
    Ok(counts(out)?.last().copied().unwrap_or(0))
}

/// Whether the numbers run 1, 2, 3... with none repeated or skipped.
pub fn continuous(out: &Path) -> std::io::Result<bool> {
    Ok(counts(out)?.iter().zip(1..).all(|(n, i)| *n == i))
}

/// Waits (10 s at most) until the counter has reached `n`.
pub fn wait_for(out: &Path, n: u64) -> Result<(), Box<dyn Error>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while last(out)? < n {
        if Instant::now() > deadline {
            return Err(format!("the counter did not reach {n} within 10 s").into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}
