//! Two Docker hosts to try `criu-rs send --docker` / `receive --docker` on
//! by hand: a `dockerd` in each of two network namespaces, the Redis image
//! imported in both, and a Redis container `cache` running on host a with
//! KEYS keys. Prints what to type, then waits for Enter and removes
//! everything.
//!
//! ```text
//! cargo run -p criu-docker --example two_docker_hosts -- [KEYS]
//! ```

#[path = "../tests/common/mod.rs"]
mod common;

use common::{import_redis, on, Docker2, Redis};

fn main() {
    let keys: usize = std::env::args()
        .nth(1)
        .map_or(20_000, |a| a.parse().expect("KEYS"));
    let d = Docker2::start();
    import_redis(&d.a);
    import_redis(&d.b);
    d.run_redis("cache");
    let a = d.hosts.a.addr;
    on(&d.hosts.a, move || Redis::connect(a).unwrap().fill(keys));
    let (na, nb) = (d.hosts.a.netns_path(), d.hosts.b.netns_path());
    let b = d.hosts.b.addr;
    println!(
        "host a: netns {} ({a}), DOCKER_HOST={}",
        na.display(),
        d.uri(&d.a)
    );
    println!(
        "host b: netns {} ({b}), DOCKER_HOST={}",
        nb.display(),
        d.uri(&d.b)
    );
    println!("redis `cache` on {a}:6379 holds {keys} keys. Try:");
    println!(
        "  nsenter --net={} criu-rs receive --docker --docker-host {} --listen {b}:7701 --plain",
        nb.display(),
        d.uri(&d.b)
    );
    println!(
        "  nsenter --net={} criu-rs send --docker cache --docker-host {} --to {b}:7701 --plain",
        na.display(),
        d.uri(&d.a)
    );
    println!("Enter removes everything.");
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    let holds = on(&d.hosts.b, move || {
        Redis::connect(b).is_ok_and(|mut r| r.holds(keys))
    });
    println!("redis on b holds all {keys} keys: {holds}");
}
