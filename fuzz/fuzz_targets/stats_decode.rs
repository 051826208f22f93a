//! CRIU's statistics images come from disk: any bytes must decode or fail,
//! never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = criu::Stats::decode("stats-dump", data);
});
