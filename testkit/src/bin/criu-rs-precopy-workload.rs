//! A process for pre-copy tests: memory that keeps changing, and a check
//! that every word of it is what the process last wrote.
//!
//! Usage: `criu-rs-precopy-workload OUTPUT [--interval-us N] [--memory-mib N]
//! [--pages-per-tick N] [--own-userfaultfd 1]`
//!
//! The memory is pages of 512 words; word `i` of page `p` is a function of
//! `i`, `p` and the page's generation, kept in a second array. Every
//! interval the process rewrites `--pages-per-tick` pseudo-random pages
//! with their next generation and appends `tick SEQ UNIX_NS` to OUTPUT, so
//! pages change between any two passes of a pre-copy. On SIGUSR1 it checks
//! every word of every page against its generation and writes
//! `verify WRITES ok|BAD` (WRITES: page rewrites so far), the format
//! `Workload::verify_memory` reads. A page a pre-copy took from an old
//! pass instead of the last one holds an older generation: BAD.
//! `--own-userfaultfd 1` opens a userfaultfd first and keeps it, as a
//! program that uses userfaultfd itself does.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const WORDS_PER_PAGE: usize = 512;

static VERIFY: AtomicBool = AtomicBool::new(false);

extern "C" fn on_usr1(_: libc::c_int) {
    VERIFY.store(true, Ordering::SeqCst);
}

fn word(page: usize, generation: u64, i: usize) -> u64 {
    criu_testkit::memory_pattern(page * WORDS_PER_PAGE + i)
        ^ generation.wrapping_mul(0xA24B_AED4_963E_E407)
}

fn fill(mem: &mut [u64], page: usize, generation: u64) {
    let base = page * WORDS_PER_PAGE;
    for (i, w) in mem[base..base + WORDS_PER_PAGE].iter_mut().enumerate() {
        *w = word(page, generation, i);
    }
}

fn all_match(mem: &[u64], gens: &[u64]) -> bool {
    gens.iter().enumerate().all(|(p, &g)| {
        mem[p * WORDS_PER_PAGE..(p + 1) * WORDS_PER_PAGE]
            .iter()
            .enumerate()
            .all(|(i, &w)| w == word(p, g, i))
    })
}

struct Args {
    out: String,
    interval: Duration,
    mib: usize,
    per_tick: usize,
    own_uffd: bool,
}

fn parse() -> Args {
    let args: Vec<String> = std::env::args().collect();
    let Some(out) = args.get(1).cloned() else {
        eprintln!("usage: criu-rs-precopy-workload OUTPUT [--interval-us N] [--memory-mib N] [--pages-per-tick N] [--own-userfaultfd 1]");
        std::process::exit(2);
    };
    let mut a = Args {
        out,
        interval: Duration::from_millis(1),
        mib: 16,
        per_tick: 16,
        own_uffd: false,
    };
    let mut it = args[2..].iter();
    while let Some(k) = it.next() {
        let v = it.next().and_then(|v| v.parse::<u64>().ok());
        match (k.as_str(), v) {
            ("--interval-us", Some(v)) => a.interval = Duration::from_micros(v),
            ("--memory-mib", Some(v)) => a.mib = v as usize,
            ("--pages-per-tick", Some(v)) => a.per_tick = v as usize,
            ("--own-userfaultfd", Some(v)) => a.own_uffd = v != 0,
            _ => {
                eprintln!("bad argument {k}");
                std::process::exit(2);
            }
        }
    }
    a
}

fn main() {
    let a = parse();
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&a.out)
        .unwrap_or_else(|e| {
            eprintln!("cannot open {}: {e}", a.out);
            std::process::exit(1)
        });
    if a.own_uffd {
        // SAFETY: userfaultfd takes flags only; the descriptor is kept
        // open for the life of the process on purpose.
        let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | 1) };
        if fd < 0 {
            eprintln!("userfaultfd: {}", std::io::Error::last_os_error());
            std::process::exit(1);
        }
    }
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe { libc::signal(libc::SIGUSR1, on_usr1 as *const () as libc::sighandler_t) };

    let pages = (a.mib * 1024 * 1024 / 8 / WORDS_PER_PAGE).max(1);
    let mut gens = vec![0u64; pages];
    let mut mem = vec![0u64; pages * WORDS_PER_PAGE];
    for p in 0..pages {
        fill(&mut mem, p, 0);
    }
    let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut writes: u64 = 0;
    let mut seq: u64 = 0;
    loop {
        seq += 1;
        for _ in 0..a.per_tick {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let p = (rng % pages as u64) as usize;
            gens[p] += 1;
            fill(&mut mem, p, gens[p]);
            writes += 1;
        }
        let ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let mut line = format!("tick {seq} {ns}\n");
        if VERIFY.swap(false, Ordering::SeqCst) {
            let ok = if all_match(&mem, &gens) { "ok" } else { "BAD" };
            line.push_str(&format!("verify {writes} {ok}\n"));
        }
        if f.write_all(line.as_bytes()).is_err() {
            std::process::exit(1);
        }
        std::thread::sleep(a.interval);
    }
}
