//! The smallest complete round trip: start a counting process, checkpoint
//! it, restore it as our child, and show that it counts on from where it
//! stopped.

use std::time::Duration;

use criu::{Criu, ImagesDir, Options};
use criu_testkit::{existing_workload_bin, Workload};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let criu = Criu::new();
    println!("CRIU {} ({:?})", criu.version()?, criu.feature_check()?);

    let dir = tempfile::Builder::new().prefix("criu-rs-demo-").tempdir()?;
    let bin = existing_workload_bin()?;
    let mut w = Workload::spawn(
        &bin,
        &dir.path().join("counter.log"),
        Duration::from_millis(1),
        16,
    )?;
    w.wait_for_seq(100, Duration::from_secs(10))?;

    let images = ImagesDir::create(dir.path().join("images"))?;
    let dump = criu.dump(
        Options::new()
            .pid(w.pid())
            .images_dir(&images)
            .log_file("dump.log"),
    )?;
    w.reap(Duration::from_secs(10))?;
    let at_dump = w.last_seq();

    let (mut child, restore) =
        criu.restore_child(Options::new().images_dir(&images).log_file("restore.log"))?;
    w.forget();
    w.wait_for_seq(at_dump + 100, Duration::from_secs(10))?;
    let (sum, intact) = w.verify_memory(child.pid(), Duration::from_secs(10))?;
    let ticks = w.ticks();
    let continuous = ticks.iter().enumerate().all(|(i, t)| t.seq == i as u64 + 1);
    let gap = ticks
        .windows(2)
        .map(|p| p[1].unix_ns.saturating_sub(p[0].unix_ns))
        .max()
        .unwrap_or(0);
    child.kill()?;
    child.wait()?;

    let ds = dump.stats.ok_or("CRIU wrote no dump statistics")?;
    println!(
        "pid {} dumped at tick {at_dump}, restored as pid {}",
        dump.pid, restore.pid
    );
    println!(
        "  dump     {:>9.1} ms wall, frozen {:.1} ms, {} pages",
        ms(dump.wall_time),
        ms(ds.stopped_time()),
        ds.pages_written
    );
    println!("  restore  {:>9.1} ms wall", ms(restore.wall_time));
    println!(
        "  longest pause the process saw: {:.1} ms",
        gap as f64 / 1e6
    );
    println!("  counter continued without repeat or reset: {continuous}");
    println!("  16 MiB memory pattern intact after restore: {intact} (checksum {sum})");
    if !(continuous && intact) {
        return Err("the restored process did not continue correctly".into());
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
