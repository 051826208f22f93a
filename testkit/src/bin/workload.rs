//! A process to checkpoint: it counts, timestamps and (optionally) keeps a
//! memory pattern it can verify, all written to its own output file.
//!
//! Usage: `criu-rs-workload OUTPUT [--interval-us N] [--memory-mib N]
//! [--shared-mib N]`
//!
//! Every interval it appends `tick SEQ UNIX_NS` to OUTPUT. With
//! `--memory-mib` it first fills that much memory with a pattern and writes
//! `memory MIB CHECKSUM`; on SIGUSR1 it re-reads the whole buffer and writes
//! `verify CHECKSUM ok|BAD`. It uses one write(2) per line, so each line is
//! whole on disk as soon as it is written. `--shared-mib` also fills that
//! much shared anonymous memory (`MAP_SHARED`), which CRIU dumps as shared
//! memory, apart from the private pages.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

static VERIFY: AtomicBool = AtomicBool::new(false);

extern "C" fn on_usr1(_: libc::c_int) {
    VERIFY.store(true, Ordering::SeqCst);
}

use criu_testkit::memory_pattern as pattern;

fn checksum(buf: &[u64]) -> u64 {
    buf.iter().enumerate().fold(0u64, |acc, (i, v)| {
        acc.rotate_left(5) ^ v.wrapping_add(i as u64)
    })
}

/// Maps `mib` MiB of shared anonymous memory and fills it with the
/// pattern; it stays mapped for the life of the process.
fn fill_shared(mib: usize) {
    if mib == 0 {
        return;
    }
    let len = mib << 20;
    // SAFETY: a fresh anonymous mapping, no address hint.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        eprintln!("cannot map {mib} MiB of shared memory");
        std::process::exit(1);
    }
    // SAFETY: the mapping is `len` bytes, writable, ours alone, aligned.
    let words = unsafe { std::slice::from_raw_parts_mut(p.cast::<u64>(), len / 8) };
    for (i, w) in words.iter_mut().enumerate() {
        *w = pattern(i);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(out) = args.get(1) else {
        eprintln!(
            "usage: criu-rs-workload OUTPUT [--interval-us N] [--memory-mib N] [--shared-mib N]"
        );
        std::process::exit(2);
    };
    let mut interval = Duration::from_millis(1);
    let mut mib = 0usize;
    let mut shared_mib = 0usize;
    let mut it = args[2..].iter();
    while let Some(a) = it.next() {
        let v = it.next().and_then(|v| v.parse::<u64>().ok());
        match (a.as_str(), v) {
            ("--interval-us", Some(v)) => interval = Duration::from_micros(v),
            ("--memory-mib", Some(v)) => mib = v as usize,
            ("--shared-mib", Some(v)) => shared_mib = v as usize,
            _ => {
                eprintln!("bad argument {a}");
                std::process::exit(2);
            }
        }
    }
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(out)
        .unwrap_or_else(|e| {
            eprintln!("cannot open {out}: {e}");
            std::process::exit(1)
        });
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe { libc::signal(libc::SIGUSR1, on_usr1 as *const () as libc::sighandler_t) };

    fill_shared(shared_mib);
    let words = mib * 1024 * 1024 / 8;
    let mut buf: Vec<u64> = (0..words).map(pattern).collect();
    let sum = checksum(&buf);
    if mib > 0 {
        f.write_all(format!("memory {mib} {sum:016x}\n").as_bytes())
            .unwrap();
    }
    let mut seq: u64 = 0;
    loop {
        seq += 1;
        let ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        // Touch one word per tick so the memory stays live.
        if words > 0 {
            let i = (seq as usize * 4099) % words;
            buf[i] = std::hint::black_box(pattern(i));
        }
        let mut line = format!("tick {seq} {ns}\n");
        if VERIFY.swap(false, Ordering::SeqCst) {
            let now = checksum(&buf);
            let ok = if now == sum && buf.iter().enumerate().all(|(i, v)| *v == pattern(i)) {
                "ok"
            } else {
                "BAD"
            };
            line.push_str(&format!("verify {now:016x} {ok}\n"));
        }
        if f.write_all(line.as_bytes()).is_err() {
            std::process::exit(1);
        }
        std::thread::sleep(interval);
    }
}
