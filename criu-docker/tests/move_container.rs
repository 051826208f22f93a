//! A user's running container moves between two Docker hosts (a `dockerd`
//! in each of two network namespaces): an unmodified Redis from Debian's
//! package, holding data in memory, started with `docker run` as a user
//! would. Needs root, Docker 20.10 and CRIU (scripts/setup.sh).

mod common;

use std::net::TcpListener;

use common::{cut_after, import_redis, on, Docker2, Redis, Reply, PORT};
use criu_docker::{ReceiveConfig, SendConfig, SourceState};
use criu_testkit::registry::{unique_tag, RegistryHost, REGISTRY_ADDR};

/// Keys stored before each move (about 1 KiB each).
const KEYS: usize = 20_000;

fn fill_source(d: &Docker2) {
    let a = d.hosts.a.addr;
    on(&d.hosts.a, move || Redis::connect(a).unwrap().fill(KEYS));
}

/// Whether the Redis on `host` answers and holds every key.
fn serves_all(d: &Docker2, b: bool) -> bool {
    let host = if b { &d.hosts.b } else { &d.hosts.a };
    let addr = host.addr;
    on(host, move || {
        Redis::connect(addr).is_ok_and(|mut r| r.holds(KEYS))
    })
}

/// What must be the same on B.
const CONFIG: [&str; 6] = [
    "{{json .Config.Labels}}",
    "{{json .Config.Env}}",
    "{{json .Config.Cmd}}",
    "{{.Config.WorkingDir}}",
    "{{.HostConfig.NetworkMode}}",
    "{{.HostConfig.RestartPolicy.Name}}",
];

#[test]
fn a_users_redis_container_moves_to_another_docker_host_with_its_data() {
    let d = Docker2::start();
    import_redis(&d.a);
    import_redis(&d.b);
    let name = "cache";
    let source_id = d.run_redis(name);
    fill_source(&d);
    let config: Vec<String> = CONFIG.iter().map(|f| d.inspect(&d.a, name, f)).collect();

    let (src, dst) = d.migrate(name, SendConfig::new(), ReceiveConfig::new());
    let (src, dst) = (src.unwrap(), dst.unwrap());

    // B runs the same container, serving the same data on B's address.
    assert!(serves_all(&d, true), "redis on b holds all {KEYS} keys");
    assert_eq!(d.inspect(&d.b, name, "{{.State.Running}}"), "true");
    assert_eq!(dst.name, name);
    assert_eq!(dst.id, src.dest_id);
    assert!(dst.source_confirmed);
    for (format, before) in CONFIG.iter().zip(&config) {
        assert_eq!(&d.inspect(&d.b, name, format), before, "{format} on b");
    }
    // A's container is gone, and nothing answers on A any more.
    assert!(src.source_removed);
    assert!(!d.client(&d.a).container_exists(&source_id).unwrap());
    let a = d.hosts.a.addr;
    assert!(on(&d.hosts.a, move || Redis::connect(a).is_err()));
    // The report adds up, with the checkpoint's bytes on the wire.
    assert!(src.transfer.bytes > (KEYS as u64) * 1024, "{src:?}");
    assert_eq!(src.transfer.bytes, dst.transfer.bytes);
    // The checkpoint, then the send, on the source's one thread; the
    // destination's restore between the checkpoint and the answer. The
    // send's and the restore's times may overlap by a scheduling delay:
    // the destination can start restoring before the source's thread,
    // its last bytes written, reads its clock.
    assert!(
        src.downtime >= src.checkpoint + src.transfer.elapsed,
        "{src:?}"
    );
    assert!(src.downtime >= src.checkpoint + src.restore, "{src:?}");
    let json = serde_json::to_value(&src).unwrap();
    assert!(json["downtime_us"].as_u64().unwrap() > 0, "{json}");
    eprintln!("moved: {json}");
}

#[test]
fn a_container_whose_image_the_destination_lacks_is_refused_before_it_stops() {
    let d = Docker2::start();
    import_redis(&d.a);
    let name = "cache";
    d.run_redis(name);
    fill_source(&d);
    let started = d.inspect(&d.a, name, "{{.State.StartedAt}} {{.State.Pid}}");

    let (src, dst) = d.migrate(name, SendConfig::new(), ReceiveConfig::new());

    let src = src.expect_err("refused");
    assert!(src.is_refused(), "{src}");
    assert_eq!(src.source_state(), Some(&SourceState::Running));
    assert!(
        src.to_string().contains("no image criu-docker-redis:7"),
        "{src}"
    );
    assert!(dst.expect_err("refused").is_refused());
    // Never stopped: the same process, started once, with its data.
    assert_eq!(
        d.inspect(&d.a, name, "{{.State.StartedAt}} {{.State.Pid}}"),
        started
    );
    assert!(serves_all(&d, false));
    assert!(!d.client(&d.b).container_exists(name).unwrap());
}

#[test]
fn a_failed_restore_leaves_the_source_serving_its_data() {
    let d = Docker2::start();
    import_redis(&d.a);
    import_redis(&d.b);
    let name = "cache";
    d.run_redis(name);
    fill_source(&d);
    // Something else holds Redis's port on B: CRIU cannot restore its
    // listening socket there (pre-flight does not look at ports).
    let b = d.hosts.b.addr;
    let squatter = on(&d.hosts.b, move || TcpListener::bind((b, PORT)).unwrap());

    let (src, dst) = d.migrate(name, SendConfig::new(), ReceiveConfig::new());

    let src = src.expect_err("the restore fails");
    assert!(!src.is_refused(), "{src}");
    assert_eq!(src.source_state(), Some(&SourceState::Running), "{src}");
    assert!(src.to_string().contains("did not restore"), "{src}");
    let dst = dst.expect_err("the restore fails");
    assert!(matches!(dst, criu_docker::Error::Restore(_)), "{dst}");
    // A runs its container again from its checkpoint, data intact; B has
    // none.
    assert!(serves_all(&d, false), "redis on a holds all {KEYS} keys");
    assert_eq!(d.inspect(&d.a, name, "{{.State.Running}}"), "true");
    assert!(!d.client(&d.b).container_exists(name).unwrap());
    drop(squatter);
    let a = d.hosts.a.addr;
    let mut r = on(&d.hosts.a, move || Redis::connect(a).unwrap());
    assert_eq!(
        r.call(&["SET", "after", "1"]).unwrap(),
        Reply::Status("OK".into())
    );
}

#[test]
fn a_stream_cut_during_the_transfer_leaves_the_source_serving_its_data() {
    let d = Docker2::start();
    import_redis(&d.a);
    import_redis(&d.b);
    let name = "cache";
    d.run_redis(name);
    fill_source(&d);

    // 1 MiB in: past the offer and answers, inside the checkpoint's files.
    let (src, dst) = d.migrate_through(
        name,
        SendConfig::new(),
        ReceiveConfig::new(),
        Some(cut_after::<{ 1 << 20 }>),
    );

    let src = src.expect_err("the transfer fails");
    assert_eq!(src.source_state(), Some(&SourceState::Running), "{src}");
    assert!(dst.is_err());
    assert!(serves_all(&d, false), "redis on a holds all {KEYS} keys");
    assert_eq!(
        d.inspect(&d.a, name, "{{.HostConfig.RestartPolicy.Name}}"),
        "unless-stopped"
    );
    assert!(!d.client(&d.b).container_exists(name).unwrap());
}

/// The same image on both hosts: its ID on `host`.
fn image_id(d: &Docker2, host: &criu_testkit::container::docker::DockerHost) -> String {
    d.docker(
        host,
        &["image", "inspect", "-f", "{{.Id}}", "criu-docker-redis:7"],
    )
}

#[test]
fn the_image_goes_through_the_users_registry_when_the_destination_lacks_it() {
    let d = Docker2::start();
    let registry = RegistryHost::start(&d.hosts, None).unwrap();
    import_redis(&d.a);
    let name = "cache";
    d.run_redis(name);
    fill_source(&d);
    // A repository of the user's, named without a tag: the image keeps
    // its own ("7").
    let repo = format!("{}/team/{}", registry.address(), unique_tag("cache"));
    let config = SendConfig::new().registry(repo.clone());

    let (src, dst) = d.migrate(name, config, ReceiveConfig::new());
    let (src, dst) = (src.unwrap(), dst.unwrap());

    // B pulled the source's very image, named as on A, and runs the
    // container from it with its data.
    assert!(serves_all(&d, true), "redis on b holds all {KEYS} keys");
    assert_eq!(image_id(&d, &d.b), image_id(&d, &d.a));
    assert_eq!(
        d.inspect(&d.b, name, "{{.Config.Image}}"),
        "criu-docker-redis:7"
    );
    assert_eq!(dst.image, "criu-docker-redis:7");
    // It went through the registry, in the pre-flight (before the stop).
    let path = repo.split_once('/').unwrap().1;
    let requests = registry.requests();
    let pushed = format!("PUT /v2/{path}/manifests/7");
    assert!(requests.iter().any(|r| r == &pushed), "{requests:?}");
    let pulled = format!("GET /v2/{path}/manifests/sha256:");
    assert!(
        requests.iter().any(|r| r.starts_with(&pulled)),
        "{requests:?}"
    );
    let json = serde_json::to_value(&src).unwrap();
    assert!(json["image_push_us"].as_u64().unwrap() > 0, "{json}");
    let (push, pull) = (src.image_push.unwrap(), dst.image_pull.unwrap());
    assert!(src.preflight >= push + pull, "{src:?} {dst:?}");
    // The tag made for the push is gone from A; A's container too.
    assert!(!d.client(&d.a).container_exists(name).unwrap());
    let tags = d.docker(&d.a, &["image", "ls", "--format", "{{.Repository}}"]);
    assert!(!tags.contains(&repo), "{tags}");
}

#[test]
fn a_registry_the_hosts_cannot_reach_is_refused_before_the_source_stops() {
    let d = Docker2::start();
    import_redis(&d.a);
    let name = "cache";
    d.run_redis(name);
    fill_source(&d);
    let started = d.inspect(&d.a, name, "{{.State.StartedAt}} {{.State.Pid}}");
    // Nothing listens there (no registry was started on the bridge).
    let config = SendConfig::new().registry(format!("{REGISTRY_ADDR}:5999/team/cache"));

    let (src, dst) = d.migrate(name, config, ReceiveConfig::new());

    let src = src.expect_err("refused");
    assert!(src.is_refused(), "{src}");
    assert_eq!(src.source_state(), Some(&SourceState::Running));
    assert!(dst.expect_err("refused").is_refused());
    assert_eq!(
        d.inspect(&d.a, name, "{{.State.StartedAt}} {{.State.Pid}}"),
        started
    );
    assert!(serves_all(&d, false));
    assert!(!d.client(&d.b).container_exists(name).unwrap());
}
