//! The cost of moving a Redis container between two Docker hosts, side by
//! side: criu-docker's `send`/`receive` against Docker's own recipe as
//! people run it by hand (`docker create` the clone on B, then `docker
//! checkpoint create` on A, copy the checkpoint into the clone's folder,
//! `docker start --checkpoint` on B), interleaved, on the same container
//! (an unmodified Redis holding KEYS keys of ~1 KiB), medians printed.
//!
//! Both downtimes run from the checkpoint's start to B running the
//! container. Run as root on a machine set up by scripts/setup.sh:
//!
//! ```text
//! cargo run --release -p criu-docker --example versus_docker_recipe -- [ROUNDS] [KEYS]
//! ```

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{docker_cli, import_redis, on, Docker2, Redis, REDIS_COMMAND, REDIS_OPTIONS};
use criu_docker::{ReceiveConfig, SendConfig};

/// One move, in ms.
#[derive(Debug, Clone, Copy, Default)]
struct Row {
    downtime: f64,
    checkpoint: f64,
    carry: f64,
    restore: f64,
    criu_frozen: f64,
    criu_run: f64,
    criu_restore: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn fill(d: &Docker2, keys: usize) {
    let a = d.hosts.a.addr;
    on(&d.hosts.a, move || Redis::connect(a).unwrap().fill(keys));
}

fn check_on_b(d: &Docker2, keys: usize) {
    let b = d.hosts.b.addr;
    let ok = on(&d.hosts.b, move || {
        Redis::connect(b).is_ok_and(|mut r| r.holds(keys))
    });
    assert!(ok, "redis on b holds all {keys} keys");
}

fn remove_everywhere(d: &Docker2, name: &str) {
    for h in [&d.a, &d.b] {
        let _ = Command::new(docker_cli())
            .args(["-H", &d.uri(h), "rm", "-f", name])
            .output();
    }
}

fn criu_docker(d: &Docker2, name: &str) -> Row {
    let (src, dst) = d.migrate(name, SendConfig::new(), ReceiveConfig::new());
    let (src, _dst) = (src.unwrap(), dst.unwrap());
    Row {
        downtime: ms(src.downtime),
        checkpoint: ms(src.checkpoint),
        carry: ms(src.transfer.elapsed),
        restore: ms(src.restore),
        criu_frozen: src.criu_dump.map_or(0.0, |s| ms(s.frozen_time)),
        criu_run: src.criu_dump_run.map_or(0.0, ms),
        criu_restore: src.restore_time_us.map_or(0.0, |us| us as f64 / 1000.0),
    }
}

fn timed(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    ms(t.elapsed())
}

fn docker_recipe(d: &Docker2, name: &str) -> Row {
    // The clone exists before the source stops, as criu-docker's does.
    let mut create = vec!["create", "--name", name];
    create.extend_from_slice(&REDIS_OPTIONS);
    create.extend_from_slice(&REDIS_COMMAND);
    let clone = d.docker(&d.b, &create);
    let source = d.inspect(&d.a, name, "{{.Id}}");
    let from =
        d.a.data_root()
            .join(format!("containers/{source}/checkpoints"));
    let into =
        d.b.data_root()
            .join(format!("containers/{clone}/checkpoints"));
    let t = Instant::now();
    let checkpoint = timed(|| {
        d.docker(&d.a, &["checkpoint", "create", name, "ck"]);
    });
    let carry = timed(|| {
        std::fs::create_dir_all(&into).unwrap();
        let ok = Command::new("cp")
            .arg("-a")
            .arg(from.join("ck"))
            .arg(into.join("ck"))
            .status()
            .unwrap()
            .success();
        assert!(ok, "cp -a the checkpoint");
    });
    let restore = timed(|| {
        d.docker(&d.b, &["start", "--checkpoint", "ck", name]);
    });
    Row {
        downtime: ms(t.elapsed()),
        checkpoint,
        carry,
        restore,
        ..Row::default()
    }
}

fn median(rows: &[Row], f: impl Fn(&Row) -> f64) -> f64 {
    let mut v: Vec<f64> = rows.iter().map(f).collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A median, or `-` where nothing was measured.
fn cell(rows: &[Row], f: impl Fn(&Row) -> f64) -> String {
    match median(rows, f) {
        0.0 => "-".into(),
        v => format!("{v:.0}"),
    }
}

fn print(label: &str, rows: &[Row]) {
    println!(
        "{label:<22} {:>9} {:>11} {:>8} {:>8} {:>12} {:>9} {:>13}",
        cell(rows, |r| r.downtime),
        cell(rows, |r| r.checkpoint),
        cell(rows, |r| r.carry),
        cell(rows, |r| r.restore),
        cell(rows, |r| r.criu_frozen),
        cell(rows, |r| r.criu_run),
        cell(rows, |r| r.criu_restore),
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().map_or(5, |a| a.parse().expect("ROUNDS"));
    let keys: usize = args.next().map_or(20_000, |a| a.parse().expect("KEYS"));
    let d = Docker2::start();
    import_redis(&d.a);
    import_redis(&d.b);
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        // Alternate which goes first, so that neither always runs on a
        // warmer machine.
        for j in 0..2 {
            let recipe = (i + j) % 2 == 1;
            let name = format!("cache-{i}-{j}");
            // No restart policy: Docker's recipe would have the daemon
            // restart the checkpointed source from scratch.
            d.run_redis_with(&name, &[]);
            fill(&d, keys);
            let row = if recipe {
                docker_recipe(&d, &name)
            } else {
                criu_docker(&d, &name)
            };
            check_on_b(&d, keys);
            remove_everywhere(&d, &name);
            let who = if recipe {
                "docker recipe"
            } else {
                "criu-docker"
            };
            eprintln!("round {i} {who}: {row:?}");
            if recipe {
                theirs.push(row)
            } else {
                ours.push(row)
            }
        }
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "Redis, {keys} keys of ~1 KiB, {rounds} rounds each, medians in ms (load {})",
        load.trim()
    );
    println!(
        "{:<22} {:>9} {:>11} {:>8} {:>8} {:>12} {:>9} {:>13}",
        "", "downtime", "checkpoint", "carry", "restore", "CRIU frozen", "CRIU run", "CRIU restore"
    );
    print("criu-docker", &ours);
    print("docker recipe (CLI)", &theirs);
}
