//! Checkpoint archives, OCI images, a real registry (docker-registry in a
//! network namespace) and migration through it, with the bad paths. Needs
//! root and the docker-registry package.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use criu_oci::annotations::{self, HostFacts};
use criu_oci::archive::{self, ArchiveMeta, Compression, Limits};
use criu_oci::migrate::{checkpoint_and_push, pull_and_restore, PushTo};
use criu_oci::{CheckpointImage, Error, Registry, RegistryConfig};
use criu_testkit::hosts::TwoHosts;
use criu_testkit::registry::{migrate_via_registry, unique_tag, RegistryHost};
use criu_testkit::Workload;

const BIN: &str = env!("CARGO_BIN_EXE_criu-rs-workload");
const WAIT: Duration = Duration::from_secs(30);

/// A real dump of a small workload in `dir/images` (left running, or
/// killed by the dump and reaped).
fn real_dump(dir: &Path, leave_running: bool) -> (Workload, criu::ImagesDir) {
    real_dump_of(dir, leave_running, 0)
}

/// [`real_dump`] of a workload holding `mib` MiB of patterned memory.
fn real_dump_of(dir: &Path, leave_running: bool, mib: usize) -> (Workload, criu::ImagesDir) {
    let w = Workload::spawn(
        BIN.as_ref(),
        &dir.join("out.log"),
        Duration::from_millis(1),
        mib,
    )
    .unwrap();
    let images = criu::ImagesDir::create(dir.join("images")).unwrap();
    {
        let mut o = criu::Options::new();
        o.pid(w.pid())
            .images_dir(&images)
            .log_file("dump.log")
            .leave_running(leave_running);
        criu::Criu::new().dump(&mut o).unwrap();
    }
    let mut w = w;
    if !leave_running {
        w.reap(WAIT).unwrap();
    }
    (w, images)
}

fn image_of(dir: &Path) -> (Workload, CheckpointImage) {
    let (w, images) = real_dump(dir, true);
    let host = HostFacts::current(&criu::Criu::new()).unwrap();
    let meta = ArchiveMeta::of_process(w.pid(), "counter");
    (
        w,
        CheckpointImage::build(&images, &meta, &host, Compression::Gzip).unwrap(),
    )
}

/// `data` compressed by the zstd command.
fn zstd_cli(data: &[u8]) -> Vec<u8> {
    let mut child = std::process::Command::new("zstd")
        .args(["-q", "-c", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the zstd command (scripts/setup.sh installs it)");
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success());
    out.stdout
}

fn files_under(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.push(p.strip_prefix(root).unwrap().display().to_string());
        }
    }
    out.sort();
    out
}

#[test]
fn archive_round_trip_has_the_engines_layout_and_restores() {
    let dir = tempfile::tempdir().unwrap();
    let (w, images) = real_dump(dir.path(), false);
    let meta = ArchiveMeta::of_process(w.pid(), "counter");
    let mut tar = Vec::new();
    let written = archive::write(&images, &meta, &mut tar, Compression::Gzip).unwrap();
    assert_eq!(&tar[..2], &[0x1f, 0x8b], "gzip");
    assert!(written.diff_id.starts_with("sha256:"));
    let un = archive::unpack(tar.as_slice(), &dir.path().join("un"), &Limits::default()).unwrap();
    let files = files_under(&un.root);
    for top in [
        "checkpoint",
        "config.dump",
        "spec.dump",
        "stats-dump",
        "dump.log",
    ] {
        assert!(
            files.contains(&top.to_string()),
            "{top} missing in {files:?}"
        );
    }
    assert!(!files.contains(&"checkpoint/dump.log".to_string()));
    // The same archive compressed by the zstd command (as Podman exports
    // by default) unpacks to the same files.
    let mut plain = Vec::new();
    archive::write(&images, &meta, &mut plain, Compression::None).unwrap();
    let zst = zstd_cli(&plain);
    assert_eq!(&zst[..4], &[0x28, 0xb5, 0x2f, 0xfd]);
    let un_zst =
        archive::unpack(zst.as_slice(), &dir.path().join("zst"), &Limits::default()).unwrap();
    assert_eq!(files_under(&un_zst.root), files);
    assert_eq!(un_zst.bytes, un.bytes);
    // Every image CRIU wrote came back byte for byte.
    for e in std::fs::read_dir(images.path()).unwrap().flatten() {
        let name = e.file_name().into_string().unwrap();
        if name == "dump.log" || name == "stats-dump" {
            continue;
        }
        let back = std::fs::read(un.root.join("checkpoint").join(&name)).unwrap();
        assert_eq!(back, std::fs::read(e.path()).unwrap(), "{name}");
    }
    assert_eq!(un.config_dump().unwrap()["name"], "counter");
    // And CRIU restores from the unpacked images.
    let restored_images = un.images().unwrap();
    let mut o = criu::Options::new();
    o.images_dir(&restored_images).log_file("restore.log");
    let (child, _) = criu::Criu::new().restore_child(&mut o).unwrap();
    let seq = w.last_seq();
    w.wait_for_seq(seq + 20, WAIT).unwrap();
    drop(child);
}

/// One raw tar entry: name, type, content, link target.
type RawEntry<'a> = (&'a str, tar::EntryType, &'a [u8], Option<&'a str>);

/// A tar of raw entries (names unchecked, as an attacker would write them).
fn raw_tar(entries: &[RawEntry<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, data, link) in entries {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(l) = link {
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_entry_type(*kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o600);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

fn unpack_err(tar: &[u8], limits: &Limits) -> (Error, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("t");
    let e = archive::unpack(tar, &target, limits).unwrap_err();
    assert!(!target.exists(), "a refused archive leaves nothing behind");
    (e, dir)
}

#[test]
fn unpack_refuses_paths_that_escape() {
    use tar::EntryType::Regular;
    for name in ["../evil", "checkpoint/../../evil", "/tmp/criu-rs-evil"] {
        let (e, dir) = unpack_err(
            &raw_tar(&[("ok", Regular, b"x", None), (name, Regular, b"x", None)]),
            &Limits::default(),
        );
        assert!(matches!(e, Error::UnsafeEntry { .. }), "{name}: {e}");
        assert!(!dir.path().join("evil").exists());
    }
}

#[test]
fn unpack_refuses_links_that_point_outside_and_devices() {
    use tar::EntryType::*;
    let cases: [&[RawEntry<'_>]; 5] = [
        &[("l", Symlink, b"", Some("/etc/passwd"))],
        &[("checkpoint/l", Symlink, b"", Some("../../x"))],
        &[("h", Link, b"", Some("../outside"))],
        // A link inside, then a file written through it.
        &[
            ("d", Directory, b"", None),
            ("l", Symlink, b"", Some("d")),
            ("l/f", Regular, b"x", None),
        ],
        &[("dev", Char, b"", None)],
    ];
    for entries in cases {
        let (e, _dir) = unpack_err(&raw_tar(entries), &Limits::default());
        assert!(matches!(e, Error::UnsafeEntry { .. }), "{entries:?}: {e}");
    }
    // A link that stays inside is fine, and so is a file whose directory
    // the archive does not list.
    let dir = tempfile::tempdir().unwrap();
    let ok = raw_tar(&[
        ("f", Regular, b"x", None),
        ("l", Symlink, b"", Some("f")),
        ("checkpoint/sub/g", Regular, b"y", None),
    ]);
    let un = archive::unpack(ok.as_slice(), &dir.path().join("t"), &Limits::default()).unwrap();
    assert_eq!(std::fs::read(un.root.join("l")).unwrap(), b"x");
    assert_eq!(
        std::fs::read(un.root.join("checkpoint/sub/g")).unwrap(),
        b"y"
    );
}

#[test]
fn unpack_refuses_sizes_beyond_limits() {
    use tar::EntryType::Regular;
    let big = vec![7u8; 4096];
    let tar = raw_tar(&[("a", Regular, &big, None), ("b", Regular, &big, None)]);
    let per_file = Limits {
        entry_bytes: 1000,
        ..Limits::default()
    };
    let (e, _d) = unpack_err(&tar, &per_file);
    assert!(matches!(&e, Error::TooLarge { limit: 1000, .. }), "{e}");
    let total = Limits {
        total_bytes: 6000,
        ..Limits::default()
    };
    let (e, _d) = unpack_err(&tar, &total);
    assert!(matches!(&e, Error::TooLarge { limit: 6000, .. }), "{e}");
    let count = Limits {
        entries: 1,
        ..Limits::default()
    };
    let (e, _d) = unpack_err(&tar, &count);
    assert!(matches!(&e, Error::TooLarge { limit: 1, .. }), "{e}");
    // The same archive within limits unpacks, gzip-compressed too.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let un = archive::unpack(
        gz.finish().unwrap().as_slice(),
        &dir.path().join("t"),
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(un.bytes, 8192);
}

#[test]
fn layout_round_trip_and_a_tampered_blob_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_w, image) = image_of(dir.path());
    let layout = dir.path().join("layout");
    criu_oci::layout::write(&layout, "v1", &image).unwrap();
    let host = HostFacts::current(&criu::Criu::new()).unwrap();
    let back = criu_oci::layout::read(&layout, "v1", &host).unwrap();
    assert_eq!(back.read_layer().unwrap(), image.layer());
    assert_eq!(back.annotations[annotations::CONTAINER_NAME], "counter");
    let blob = layout
        .join("blobs/sha256")
        .join(image.layer_digest().trim_start_matches("sha256:"));
    let mut data = std::fs::read(&blob).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    std::fs::write(&blob, data).unwrap();
    let e = criu_oci::layout::read(&layout, "v1", &host).unwrap_err();
    assert!(e.is_digest_mismatch(), "{e}");
}

/// Pushes `image` from host a as a fresh reference, returns it.
fn push_from_a(
    hosts: &TwoHosts,
    reg: &RegistryHost,
    cfg: &RegistryConfig,
    image: &CheckpointImage,
) -> Result<String, Error> {
    let reference = format!("{}/criu-rs/{}:latest", reg.address(), unique_tag("t"));
    hosts
        .a
        .run(|| Registry::new(cfg)?.push(&reference, image))
        .unwrap()?;
    Ok(reference)
}

fn pull_on_b(
    hosts: &TwoHosts,
    cfg: &RegistryConfig,
    reference: &str,
) -> Result<criu_oci::FetchedImage, Error> {
    let host = HostFacts::current(&criu::Criu::new()).unwrap();
    hosts
        .b
        .run(|| Ok(Registry::new(cfg)?.pull(reference, &host)?.0))
        .unwrap()
}

fn http() -> RegistryConfig {
    RegistryConfig {
        plain_http: true,
        timeout: Some(Duration::from_secs(10)),
        ..RegistryConfig::default()
    }
}

#[test]
fn registry_round_trip_with_basic_auth_and_refused_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let (_w, image) = image_of(dir.path());
    let hosts = TwoHosts::new().unwrap();
    let reg = RegistryHost::start(&hosts, Some(("alice", "s3cret"))).unwrap();
    let good = RegistryConfig {
        basic_auth: Some(("alice".into(), "s3cret".into())),
        ..http()
    };
    let reference = push_from_a(&hosts, &reg, &good, &image).unwrap();
    let back = pull_on_b(&hosts, &good, &reference).unwrap();
    assert_eq!(back.read_layer().unwrap(), image.layer());
    assert_eq!(back.annotations, image.annotations);
    let bad = RegistryConfig {
        basic_auth: Some(("alice".into(), "wrong".into())),
        ..http()
    };
    let e = pull_on_b(&hosts, &bad, &reference).unwrap_err();
    assert!(e.is_auth_refused(), "{e}");
    let e = push_from_a(&hosts, &reg, &http(), &image).unwrap_err();
    assert!(e.is_auth_refused(), "anonymous push: {e}");
    // A ping checks the credentials before a move stops its source.
    let e = hosts
        .b
        .run(|| Registry::new(&bad)?.ping(&reference))
        .unwrap()
        .unwrap_err();
    assert!(e.is_auth_refused(), "ping: {e}");
    let missing = format!("{}/criu-rs/not-pushed-yet:latest", reg.address());
    hosts
        .b
        .run(|| Registry::new(&good)?.ping(&missing))
        .unwrap()
        .unwrap();

    streamed_push_and_pull_with_credentials(&hosts, &reg, &good, &bad);
}

/// A dump too large for one chunk, streamed to the registry and back
/// with `good` credentials (plain: one streamed `PUT`; gzip: a chunked
/// upload), and refused with `bad` ones.
fn streamed_push_and_pull_with_credentials(
    hosts: &TwoHosts,
    reg: &RegistryHost,
    good: &RegistryConfig,
    bad: &RegistryConfig,
) {
    let dir = tempfile::tempdir().unwrap();
    let (w, images) = real_dump_of(dir.path(), true, 6);
    let meta = ArchiveMeta::of_process(w.pid(), "counter");
    let host = HostFacts::current(&criu::Criu::new()).unwrap();
    let push = |cfg: &RegistryConfig, reference: &str, compression| {
        hosts
            .a
            .run(|| {
                Registry::new(cfg)?.push_checkpoint(reference, &images, &meta, &host, compression)
            })
            .unwrap()
    };
    let e = push(bad, &reg.fresh_reference("refused"), Compression::None).unwrap_err();
    assert!(e.is_auth_refused(), "{e}");
    for compression in [Compression::None, Compression::Gzip] {
        let reference = reg.fresh_reference("streamed");
        let pushed = push(good, &reference, compression).unwrap();
        // More than one 4 MiB chunk, compressed too (the pattern is not
        // very compressible).
        assert!(pushed.push.layer_bytes > 4 << 20, "{pushed:?}");
        let target = dir.path().join(format!("pulled-{compression:?}"));
        let pulled = hosts
            .b
            .run(|| {
                Registry::new(good)?.pull_checkpoint(&reference, &host, &target, &Limits::default())
            })
            .unwrap()
            .unwrap();
        assert_eq!(pulled.pull.layer_bytes, pushed.push.layer_bytes);
        assert_eq!(pulled.annotations[annotations::CONTAINER_NAME], "counter");
        assert_eq!(pulled.annotations[annotations::ENGINE_NAME], "criu-rs");
        assert_same_images(&images, &pulled.unpacked.images().unwrap());
    }
    // Packing fails (an extra file the archive's layout has no place
    // for): the error says why, and nothing is tagged.
    let mut unpackable = meta.clone();
    unpackable.extra.push(("evil".into(), b"x".to_vec()));
    for compression in [Compression::None, Compression::Gzip] {
        let reference = reg.fresh_reference("unpackable");
        let e = hosts
            .a
            .run(|| {
                Registry::new(good)?.push_checkpoint(
                    &reference,
                    &images,
                    &unpackable,
                    &host,
                    compression,
                )
            })
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(&e, Error::Malformed(m) if m.contains("evil")),
            "{e}"
        );
        let e = pull_on_b(hosts, good, &reference).unwrap_err();
        assert!(matches!(e, Error::Registry { .. }), "nothing tagged: {e}");
    }
}

/// Checks what a progress callback was told: at least one report, the
/// bytes strictly increasing and never beyond the size, every report
/// with `total`, the last one at `size`.
fn assert_progress(what: &str, reports: &[(u64, Option<u64>)], size: u64, total: Option<u64>) {
    assert!(!reports.is_empty(), "{what}: no report");
    for pair in reports.windows(2) {
        assert!(pair[0].0 < pair[1].0, "{what}: not increasing: {reports:?}");
    }
    for r in reports {
        assert_eq!(r.1, total, "{what}: {reports:?}");
        assert!(r.0 <= size, "{what}: beyond {size}: {reports:?}");
    }
    assert_eq!(reports.last().unwrap().0, size, "{what}: {reports:?}");
}

#[test]
fn push_and_pull_report_their_bytes_up_to_the_layer_size() {
    let dir = tempfile::tempdir().unwrap();
    let (w, images) = real_dump_of(dir.path(), true, 24);
    let meta = ArchiveMeta::of_process(w.pid(), "counter");
    let host = HostFacts::current(&criu::Criu::new()).unwrap();
    let hosts = TwoHosts::new().unwrap();
    let reg = RegistryHost::start(&hosts, None).unwrap();
    for compression in [Compression::None, Compression::Gzip] {
        let reference = reg.fresh_reference("progress");
        let mut pushed_reports = Vec::new();
        let pushed = hosts
            .a
            .run(|| {
                Registry::new(&http())?.push_checkpoint_with_progress(
                    &reference,
                    &images,
                    &meta,
                    &host,
                    compression,
                    &mut |done, total| pushed_reports.push((done, total)),
                )
            })
            .unwrap()
            .unwrap();
        let size = pushed.push.layer_bytes;
        assert!(size > 4 << 20, "more than one chunk: {pushed:?}");
        // A plain layer's size is measured before the upload; a gzip
        // layer's is known only at its end.
        let known = (compression == Compression::None).then_some(size);
        assert_progress("push", &pushed_reports, size, known);
        let target = dir.path().join(format!("pulled-{compression:?}"));
        let mut pulled_reports = Vec::new();
        let pulled = hosts
            .b
            .run(|| {
                Registry::new(&http())?.pull_checkpoint_with_progress(
                    &reference,
                    &host,
                    &target,
                    &Limits::default(),
                    &mut |done, total| pulled_reports.push((done, total)),
                )
            })
            .unwrap()
            .unwrap();
        assert_eq!(pulled.pull.layer_bytes, size);
        assert_progress("pull", &pulled_reports, size, Some(size));
        assert_same_images(&images, &pulled.unpacked.images().unwrap());
    }
}

/// Every image of `a` (CRIU's log and statistics aside) is in `b`, byte
/// for byte.
fn assert_same_images(a: &criu::ImagesDir, b: &criu::ImagesDir) {
    for e in std::fs::read_dir(a.path()).unwrap().flatten() {
        let name = e.file_name();
        if name == "dump.log" || name == "stats-dump" {
            continue;
        }
        let original = std::fs::read(e.path()).unwrap();
        assert_eq!(
            std::fs::read(b.path().join(&name)).unwrap(),
            original,
            "{name:?}"
        );
    }
}

#[test]
fn registry_over_tls_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (_w, image) = image_of(dir.path());
    let hosts = TwoHosts::new().unwrap();
    let reg = RegistryHost::start_tls(&hosts, Some(("bob", "pw"))).unwrap();
    let tls = RegistryConfig {
        ca_pem: Some(reg.ca_pem().unwrap()),
        basic_auth: Some(("bob".into(), "pw".into())),
        timeout: Some(Duration::from_secs(10)),
        ..RegistryConfig::default()
    };
    let reference = push_from_a(&hosts, &reg, &tls, &image).unwrap();
    assert_eq!(
        pull_on_b(&hosts, &tls, &reference)
            .unwrap()
            .read_layer()
            .unwrap(),
        image.layer()
    );
    // Without the CA the server's certificate is not trusted.
    let untrusted = RegistryConfig {
        ca_pem: None,
        ..tls
    };
    let e = pull_on_b(&hosts, &untrusted, &reference).unwrap_err();
    assert!(matches!(e, Error::Tls { .. }), "{e}");
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");
}

#[test]
fn unreachable_registry_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (_w, image) = image_of(dir.path());
    let hosts = TwoHosts::new().unwrap();
    // Host a has no route to 10.232.0.0/24 without a registry host: refused at once.
    let reference = "10.231.0.2:5999/criu-rs/none:latest";
    let e = hosts
        .a
        .run(|| Registry::new(&http())?.push(reference, &image))
        .unwrap()
        .unwrap_err();
    assert!(e.is_unreachable(), "{e}");
    let e = hosts
        .a
        .run(|| Registry::new(&http())?.ping(reference))
        .unwrap()
        .unwrap_err();
    assert!(e.is_unreachable(), "ping: {e}");
}

#[test]
fn tampered_blob_not_a_checkpoint_and_incompatible_hosts_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_w, image) = image_of(dir.path());
    let hosts = TwoHosts::new().unwrap();
    let reg = RegistryHost::start(&hosts, None).unwrap();

    // A blob altered in the registry's storage fails its digest check.
    let reference = push_from_a(&hosts, &reg, &http(), &image).unwrap();
    let blob = reg.blob_path(image.layer_digest());
    let mut data = std::fs::read(&blob).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    std::fs::write(&blob, data).unwrap();
    let e = pull_on_b(&hosts, &http(), &reference).unwrap_err();
    assert!(e.is_digest_mismatch(), "{e}");

    // No checkpoint annotation.
    let mut plain = image.clone();
    plain.annotations.remove(annotations::CONTAINER_NAME);
    let reference = push_from_a(&hosts, &reg, &http(), &plain).unwrap();
    let e = pull_on_b(&hosts, &http(), &reference).unwrap_err();
    assert!(matches!(e, Error::NotACheckpoint { .. }), "{e}");

    // Another CPU architecture, another CRIU: refused, saying why.
    for (key, value, says) in [
        (annotations::HOST_ARCH, "s390x", "s390x"),
        (annotations::CRIU_VERSION, "31701", "CRIU 3.17.1"),
    ] {
        let mut other = image.clone();
        other.annotations.insert(key.into(), value.into());
        let reference = push_from_a(&hosts, &reg, &http(), &other).unwrap();
        let e = pull_on_b(&hosts, &http(), &reference).unwrap_err();
        assert!(
            matches!(e, Error::Incompatible { .. }) && e.to_string().contains(says),
            "{e}"
        );
    }
}

#[test]
fn migration_through_a_registry_continues_the_counter() {
    // 10 MiB of patterned memory: the image spans three of the push's
    // 4 MiB chunks, so the chunked, streamed upload is what moves it.
    let (row, cost) =
        migrate_via_registry(Compression::None, "counter", 10, Duration::from_millis(100)).unwrap();
    assert!(row.continued, "{row:?}");
    assert_eq!(row.memory_intact, Some(true), "{row:?}");
    assert_ne!(row.source_netns, row.dest_netns);
    assert!(cost.image_bytes > 10 << 20, "{cost:?}");
    assert!(cost.push_ms > 0.0 && cost.pull_ms > 0.0);
}

#[test]
fn source_runs_on_when_the_destination_cannot_restore() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = TwoHosts::new().unwrap();
    let reg = RegistryHost::start(&hosts, None).unwrap();
    let out = dir.path().join("out.log");
    let w = hosts
        .a
        .run(|| Workload::spawn_in_pid_ns(BIN.as_ref(), &out, Duration::from_millis(1), 0))
        .unwrap()
        .unwrap();
    let reference = format!("{}/criu-rs/{}:latest", reg.address(), unique_tag("fail"));
    let criu = criu::Criu::new();
    let (src, dst) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&dst).unwrap();
    let pushed = hosts
        .a
        .run(|| {
            let to = PushTo {
                registry: &Registry::new(&http())?,
                reference: &reference,
                compression: Compression::None,
            };
            checkpoint_and_push(&criu, w.pid(), "counter", &src, &to, |_| {})
        })
        .unwrap()
        .unwrap();
    // Stopped, not gone, while the destination works.
    assert_eq!(criu_testkit::task_state(w.pid()), Some('T'));
    let seq = w.last_seq();
    let restore_on_b = |reference: &str| {
        hosts
            .b
            .run(|| {
                let client = Registry::new(&http())?;
                pull_and_restore(&criu, &client, reference, &dst, &Limits::default(), |_| {})
            })
            .unwrap()
    };
    // The destination asks for an image that is not there and fails.
    let missing = format!("{}/criu-rs/missing:latest", reg.address());
    let e = restore_on_b(&missing).unwrap_err();
    assert!(matches!(e, Error::Registry { .. }), "{e}");
    assert!(!dst.join("archive").exists());
    // The pushed layer is altered in the registry's storage: refused by
    // its digest before anything is unpacked (CRIU never sees a byte).
    let blob = reg.blob_path(&pushed.layer_digest);
    let mut data = std::fs::read(&blob).unwrap();
    data[10] ^= 0x55;
    std::fs::write(&blob, data).unwrap();
    let e = restore_on_b(&reference).unwrap_err();
    assert!(e.is_digest_mismatch(), "{e}");
    assert!(!dst.join("archive").exists());
    // Through all this the source stayed stopped, alive.
    assert_eq!(criu_testkit::task_state(w.pid()), Some('T'));
    drop(pushed); // the source continues
    w.wait_for_seq(seq + 20, WAIT).unwrap();
}

#[test]
fn busybox_container_through_a_registry_counts_on() {
    use criu_testkit::container::{consecutive, make_rootfs, numbers, wait_lines, OwnContainer};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (rootfs_a, rootfs_b, logdir) = (d.join("rootfs-a"), d.join("rootfs-b"), d.join("log"));
    make_rootfs(&rootfs_a).unwrap();
    make_rootfs(&rootfs_b).unwrap();
    std::fs::create_dir_all(&logdir).unwrap();
    let log = logdir.join("counter.log");
    let hosts = TwoHosts::new().unwrap();
    let reg = RegistryHost::start(&hosts, None).unwrap();
    let mut container = hosts
        .a
        .run(|| OwnContainer::start(d, &rootfs_a, &logdir, "0.05"))
        .unwrap()
        .unwrap();
    wait_lines(&log, 3, WAIT).unwrap();
    let source_netns = criu_testkit::hosts::netns_of(container.init).unwrap();
    let (src, dst) = (d.join("a"), d.join("b"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&dst).unwrap();
    let logdir_s = logdir.to_string_lossy().to_string();
    let m = criu_testkit::registry::Move {
        pid: container.init,
        name: "busybox-counter",
        src_dir: &src,
        dst_dir: &dst,
        compression: Compression::Gzip,
    };
    let (pushed, restored) = criu_testkit::registry::move_through_registry(
        &hosts,
        &reg,
        &m,
        |o| {
            o.add_ext_mount("/log", "logdir");
        },
        |o| {
            o.root(&rootfs_b).add_ext_mount("logdir", logdir_s.clone());
        },
    )
    .unwrap();
    pushed.finish();
    let _ = container.unshare.wait();
    let before = numbers(&log);
    wait_lines(&log, before.len() + 5, WAIT).unwrap();
    assert!(consecutive(&numbers(&log)), "{:?}", numbers(&log));
    assert_ne!(
        criu_testkit::hosts::netns_of(restored.child.pid()).unwrap(),
        source_netns
    );
}

/// Listening TCP sockets (address:port, kernel hex) in the network
/// namespace of `pid`.
fn listeners(pid: &str) -> Vec<String> {
    let mut out = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for l in text.lines().skip(1) {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.get(3) == Some(&"0A") {
                out.push(f[1].to_string());
            }
        }
    }
    out
}

#[test]
fn the_registry_listens_only_in_its_own_namespace() {
    let hosts = TwoHosts::new().unwrap();
    let before = listeners("self");
    let reg = RegistryHost::start(&hosts, None).unwrap();
    let pid = reg.pid().unwrap();
    assert_eq!(
        criu_testkit::hosts::netns_of(pid).unwrap(),
        reg.host.netns_inode().unwrap()
    );
    // 10.232.0.254:5000, as /proc prints it (little-endian address).
    assert_eq!(
        listeners(&pid.to_string()),
        vec!["FE00E80A:1388".to_string()]
    );
    // Nothing new listens in this (the machine's) namespace.
    let after = listeners("self");
    assert!(
        after
            .iter()
            .all(|l| before.contains(l) || !l.ends_with(":1388")),
        "{after:?}"
    );
    drop(reg);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists() || !criu_testkit::alive(pid));
}

/// `GET` requests of `reference`'s repository for blobs, from the
/// registry's access log, once the log shows the pull's manifest request
/// (the registry writes a line after its response, so a check made at
/// once could miss the last ones; the manifest is asked for before any
/// blob).
fn blob_gets(reg: &RegistryHost, reference: &str) -> Vec<String> {
    let repo = reference
        .split_once('/')
        .and_then(|(_, rest)| rest.rsplit_once(':'))
        .map(|(repo, _)| repo)
        .unwrap();
    let manifest = format!("GET /v2/{repo}/manifests/");
    let prefix = format!("GET /v2/{repo}/blobs/");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let requests = reg.requests();
        let last_manifest = requests.iter().rposition(|r| r.starts_with(&manifest));
        // Settled: the manifest was asked for, and nothing new came in a
        // moment.
        std::thread::sleep(Duration::from_millis(200));
        if last_manifest.is_some() && reg.requests().len() == requests.len() {
            return requests
                .into_iter()
                .filter(|r| r.starts_with(&prefix))
                .collect();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no manifest request for {repo} in the access log: {requests:?}"
        );
    }
}

#[test]
fn refused_images_fetch_no_blob_and_the_config_only_when_needed() {
    let dir = tempfile::tempdir().unwrap();
    let (_w, image) = image_of(dir.path());
    let config_digest = criu_oci::image::sha256_digest(&image.config);
    let hosts = TwoHosts::new().unwrap();
    let reg = RegistryHost::start(&hosts, None).unwrap();

    // The control: a pull of a checkpoint whose annotations state its
    // architecture fetches the layer, not the config; the log sees it.
    let ok = push_from_a(&hosts, &reg, &http(), &image).unwrap();
    pull_on_b(&hosts, &http(), &ok).unwrap();
    let gets = blob_gets(&reg, &ok);
    assert!(
        gets.iter().any(|g| g.ends_with(image.layer_digest())),
        "the access log shows the layer fetched: {gets:?}"
    );
    assert!(
        !gets.iter().any(|g| g.ends_with(&config_digest)),
        "{gets:?}"
    );

    // Without an architecture annotation the config is read for it.
    let mut no_arch = image.clone();
    no_arch.annotations.remove(annotations::HOST_ARCH);
    let reference = push_from_a(&hosts, &reg, &http(), &no_arch).unwrap();
    pull_on_b(&hosts, &http(), &reference).unwrap();
    let gets = blob_gets(&reg, &reference);
    assert!(gets.iter().any(|g| g.ends_with(&config_digest)), "{gets:?}");

    // Refused images: not a checkpoint, another architecture, another
    // CRIU, a layer beyond the limit. Not one blob is fetched for them.
    let mut plain = image.clone();
    plain.annotations.remove(annotations::CONTAINER_NAME);
    let mut arch = image.clone();
    arch.annotations
        .insert(annotations::HOST_ARCH.into(), "s390x".into());
    let mut criu_version = image.clone();
    criu_version
        .annotations
        .insert(annotations::CRIU_VERSION.into(), "31701".into());
    for (what, refused) in [
        ("not a checkpoint", &plain),
        ("another architecture", &arch),
        ("another CRIU", &criu_version),
    ] {
        let reference = push_from_a(&hosts, &reg, &http(), refused).unwrap();
        let e = pull_on_b(&hosts, &http(), &reference).unwrap_err();
        assert!(
            matches!(e, Error::NotACheckpoint { .. } | Error::Incompatible { .. }),
            "{what}: {e}"
        );
        assert_eq!(blob_gets(&reg, &reference), Vec::<String>::new(), "{what}");
    }
    let reference = push_from_a(&hosts, &reg, &http(), &image).unwrap();
    let small = Limits {
        layer_bytes: image.layer().len() as u64 - 1,
        ..Limits::default()
    };
    let host = HostFacts::current(&criu::Criu::new()).unwrap();
    let target = dir.path().join("too-large");
    let e = hosts
        .b
        .run(|| Registry::new(&http())?.pull_checkpoint(&reference, &host, &target, &small))
        .unwrap()
        .unwrap_err();
    assert!(matches!(e, Error::TooLarge { .. }), "{e}");
    assert!(!target.exists());
    assert_eq!(blob_gets(&reg, &reference), Vec::<String>::new());
}

/// The offset of the content of the largest file in the tar `data`.
fn largest_file_content(data: &[u8]) -> (u64, u64) {
    let mut archive = tar::Archive::new(data);
    archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| (e.raw_file_position(), e.size()))
        .max_by_key(|(_, size)| *size)
        .unwrap()
}

#[test]
fn a_layer_tampered_inside_a_file_is_refused_and_leaves_no_target() {
    let dir = tempfile::tempdir().unwrap();
    let (w, images) = real_dump_of(dir.path(), true, 8);
    let host = HostFacts::current(&criu::Criu::new()).unwrap();
    let meta = ArchiveMeta::of_process(w.pid(), "counter");
    let image = CheckpointImage::build(&images, &meta, &host, Compression::None).unwrap();
    assert!(image.layer().len() > 8 << 20, "a multi-MiB layer");
    let hosts = TwoHosts::new().unwrap();
    let reg = RegistryHost::start(&hosts, None).unwrap();
    let reference = push_from_a(&hosts, &reg, &http(), &image).unwrap();

    // One byte flipped in the middle of the largest file's content (the
    // memory pages), far from any tar header.
    let blob = reg.blob_path(image.layer_digest());
    let mut data = std::fs::read(&blob).unwrap();
    let (start, size) = largest_file_content(&data);
    assert!(size > 4 << 20, "{size}");
    data[(start + size / 2) as usize] ^= 0xff;
    std::fs::write(&blob, &data).unwrap();
    // The unpacker alone takes the altered archive: only the digest can
    // refuse it.
    let local = archive::unpack(
        data.as_slice(),
        &dir.path().join("local"),
        &Limits::default(),
    );
    assert!(local.is_ok(), "{local:?}");

    let target = dir.path().join("pulled");
    let e = hosts
        .b
        .run(|| {
            Registry::new(&http())?.pull_checkpoint(&reference, &host, &target, &Limits::default())
        })
        .unwrap()
        .unwrap_err();
    assert!(e.is_digest_mismatch(), "{e}");
    assert!(!target.exists(), "the unpacked files are removed");
    let e = pull_on_b(&hosts, &http(), &reference).unwrap_err();
    assert!(e.is_digest_mismatch(), "{e}");
}

/// The blob file in `reg`'s storage whose content is `data`.
fn blob_holding(reg: &RegistryHost, data: &[u8]) -> std::path::PathBuf {
    let root = reg.storage().join("docker/registry/v2/blobs/sha256");
    for prefix in std::fs::read_dir(&root).unwrap().flatten() {
        for blob in std::fs::read_dir(prefix.path()).unwrap().flatten() {
            let path = blob.path().join("data");
            let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            if len == data.len() as u64 && std::fs::read(&path).unwrap() == data {
                return path;
            }
        }
    }
    panic!("no blob of {} bytes holds that", data.len());
}

#[test]
fn a_migration_image_carries_its_pages_in_parts_each_checked_before_it_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (w, images) = real_dump_of(dir.path(), true, 40);
    let host = HostFacts::current(&criu::Criu::new()).unwrap();
    let meta = ArchiveMeta::of_process(w.pid(), "counter");
    let pages = std::fs::read(images.path().join("pages-1.img")).unwrap();
    let part = 32 << 20;
    assert!(pages.len() > part, "more than one part: {}", pages.len());
    let hosts = TwoHosts::new().unwrap();
    let reg = RegistryHost::start(&hosts, None).unwrap();
    let reference = reg.fresh_reference("parts");
    // The images are complete already: the parts go up at once.
    let ((), pushed) = hosts
        .a
        .run(|| {
            Registry::new(&http())?
                .push_checkpoint_while(&reference, &images, &meta, &host, || Ok(()))
        })
        .unwrap()
        .unwrap();
    assert_eq!(pushed.parts, pages.len().div_ceil(part), "{pushed:?}");
    assert!(pushed.push.layer_bytes > pages.len() as u64, "{pushed:?}");
    let pull = |target: &Path, reports: &mut Vec<(u64, Option<u64>)>| {
        hosts
            .b
            .run(|| {
                Registry::new(&http())?.pull_checkpoint_with_progress(
                    &reference,
                    &host,
                    target,
                    &Limits::default(),
                    &mut |done, total| reports.push((done, total)),
                )
            })
            .unwrap()
    };
    let target = dir.path().join("pulled");
    let mut reports = Vec::new();
    let pulled = pull(&target, &mut reports).unwrap();
    let size = pushed.push.layer_bytes;
    assert_eq!(pulled.pull.layer_bytes, size);
    assert_progress("pull of parts", &reports, size, Some(size));
    assert_same_images(&images, &pulled.unpacked.images().unwrap());
    // The whole image in one file is not what this is: refused, named.
    let e = pull_on_b(&hosts, &http(), &reference).unwrap_err();
    assert!(matches!(e, Error::Malformed(_)), "{e}");

    // One byte flipped in the second part: refused by its digest, and
    // nothing pulled is left.
    let blob = blob_holding(&reg, &pages[part..]);
    let mut data = std::fs::read(&blob).unwrap();
    let middle = data.len() / 2;
    data[middle] ^= 0xff;
    std::fs::write(&blob, &data).unwrap();
    let target = dir.path().join("tampered");
    let e = pull(&target, &mut Vec::new()).unwrap_err();
    assert!(e.is_digest_mismatch(), "{e}");
    assert!(!target.exists(), "the unpacked files are removed");
}

/// Restores the unpacked checkpoint of `w` (dumped and killed), with
/// CRIU's log in a private work directory, and sees it count on.
fn restore_and_count(w: &Workload, un: &archive::Unpacked) {
    let images = un.images().unwrap();
    let work = un.criu_work_dir().unwrap();
    let mut o = criu::Options::new();
    o.images_dir(&images)
        .work_dir(&work)
        .log_file("restore.log");
    let (child, _) = criu::Criu::new().restore_child(&mut o).unwrap();
    let seq = w.last_seq();
    w.wait_for_seq(seq + 20, WAIT).unwrap();
    drop(child);
    assert!(
        work.path().join("restore.log").exists(),
        "CRIU logged in the private work dir"
    );
    assert!(!images.path().join("restore.log").exists());
    std::fs::remove_dir_all(work.path()).unwrap();
}

/// The repository and tag of a fresh reference, for skopeo.
fn docker(reference: &str) -> String {
    format!("docker://{reference}")
}

#[test]
fn skopeo_round_trips_criu_oci_images_and_the_copy_restores() {
    use criu_testkit::registry::tools::skopeo;
    let dir = tempfile::tempdir().unwrap();
    let (w, images) = real_dump(dir.path(), false);
    let host = HostFacts::current(&criu::Criu::new()).unwrap();
    let meta = ArchiveMeta::of_process(std::process::id() as i32, "counter");
    let image = CheckpointImage::build(&images, &meta, &host, Compression::Gzip).unwrap();
    let hosts = TwoHosts::new().unwrap();
    let reg = RegistryHost::start(&hosts, None).unwrap();
    let pushed = push_from_a(&hosts, &reg, &http(), &image).unwrap();

    // Registry -> layout: criu-oci reads skopeo's layout.
    let layout = dir.path().join("layout");
    let dest = format!("oci:{}:v1", layout.display());
    skopeo(
        &hosts.a,
        &["copy", "--src-tls-verify=false", &docker(&pushed), &dest],
    )
    .unwrap();
    let from_layout = criu_oci::layout::read(&layout, "v1", &host).unwrap();
    assert_eq!(from_layout.read_layer().unwrap(), image.layer());
    assert_eq!(
        annotations::container_name(&from_layout.annotations),
        Some("counter")
    );
    // skopeo keeps the manifest's mediaType criu-oci now writes.
    let raw = skopeo(&hosts.a, &["inspect", "--raw", &dest]).unwrap();
    assert!(
        raw.contains("application/vnd.oci.image.manifest.v1+json"),
        "{raw}"
    );

    // Layout -> registry again: criu-oci pulls skopeo's push, restores it.
    let copied = reg.fresh_reference("skopeo-copy");
    skopeo(
        &hosts.a,
        &["copy", "--dest-tls-verify=false", &dest, &docker(&copied)],
    )
    .unwrap();
    let target = dir.path().join("pulled");
    let pulled = hosts
        .b
        .run(|| {
            Registry::new(&http())?.pull_checkpoint(&copied, &host, &target, &Limits::default())
        })
        .unwrap()
        .unwrap();
    assert_same_images(&images, &pulled.unpacked.images().unwrap());
    restore_and_count(&w, &pulled.unpacked);
}

#[test]
fn a_zstd_mirror_copy_restores() {
    use criu_testkit::registry::tools::skopeo;
    let dir = tempfile::tempdir().unwrap();
    let (w, images) = real_dump(dir.path(), false);
    let host = HostFacts::current(&criu::Criu::new()).unwrap();
    let meta = ArchiveMeta::of_process(std::process::id() as i32, "counter");
    let image = CheckpointImage::build(&images, &meta, &host, Compression::Gzip).unwrap();
    let hosts = TwoHosts::new().unwrap();
    let reg = RegistryHost::start(&hosts, None).unwrap();
    let pushed = push_from_a(&hosts, &reg, &http(), &image).unwrap();
    let mirror = reg.fresh_reference("zstd-mirror");
    skopeo(
        &hosts.a,
        &[
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            "--dest-compress-format",
            "zstd",
            &docker(&pushed),
            &docker(&mirror),
        ],
    )
    .unwrap();
    let raw = skopeo(
        &hosts.a,
        &["inspect", "--raw", "--tls-verify=false", &docker(&mirror)],
    )
    .unwrap();
    assert!(raw.contains("tar+zstd"), "the mirror recompressed: {raw}");
    let target = dir.path().join("pulled");
    let pulled = hosts
        .b
        .run(|| {
            Registry::new(&http())?.pull_checkpoint(&mirror, &host, &target, &Limits::default())
        })
        .unwrap()
        .unwrap();
    restore_and_count(&w, &pulled.unpacked);
}

#[test]
fn buildah_built_checkpoint_image_restores() {
    use criu_testkit::registry::tools::{buildah_checkpoint_image, skopeo};
    let dir = tempfile::tempdir().unwrap();
    let (w, images) = real_dump(dir.path(), false);
    let host = HostFacts::current(&criu::Criu::new()).unwrap();
    let meta = ArchiveMeta::of_process(std::process::id() as i32, "counter");
    let archive_path = dir.path().join("checkpoint.tar");
    let file = std::fs::File::create(&archive_path).unwrap();
    archive::write(&images, &meta, file, Compression::None).unwrap();
    // As containerd's CRI test builds one: the archive added to an empty
    // image, the container name its only annotation (no architecture, no
    // CRIU version: those come from the image config and CRIU itself).
    let layout = dir.path().join("layout");
    buildah_checkpoint_image(
        &archive_path,
        annotations::CONTAINER_NAME,
        "counter",
        dir.path(),
        &layout,
        "v1",
    )
    .unwrap();
    let local = criu_oci::layout::read(&layout, "v1", &host).unwrap();
    assert_eq!(local.annotations.get(annotations::HOST_ARCH), None);
    assert_eq!(local.annotations.get(annotations::CRIU_VERSION), None);

    let hosts = TwoHosts::new().unwrap();
    let reg = RegistryHost::start(&hosts, None).unwrap();
    let reference = reg.fresh_reference("buildah");
    let src = format!("oci:{}:v1", layout.display());
    skopeo(
        &hosts.a,
        &["copy", "--dest-tls-verify=false", &src, &docker(&reference)],
    )
    .unwrap();
    let target = dir.path().join("pulled");
    let pulled = hosts
        .b
        .run(|| {
            Registry::new(&http())?.pull_checkpoint(&reference, &host, &target, &Limits::default())
        })
        .unwrap()
        .unwrap();
    assert_same_images(&images, &pulled.unpacked.images().unwrap());
    restore_and_count(&w, &pulled.unpacked);
}

/// Adds to the layout `layout` (written by criu-oci, tag `v1`) a second
/// manifest for `other_arch` and an image index over both, tagged `idx`.
fn add_index(layout: &Path, image: &CheckpointImage, other_arch: &str) {
    let blobs = layout.join("blobs/sha256");
    let write_blob = |data: &[u8]| {
        let digest = criu_oci::image::sha256_digest(data);
        std::fs::write(blobs.join(digest.trim_start_matches("sha256:")), data).unwrap();
        digest
    };
    let ours = serde_json::to_vec(&image.manifest()).unwrap();
    let mut other = image.clone();
    other
        .annotations
        .insert(annotations::HOST_ARCH.into(), other_arch.into());
    let theirs = serde_json::to_vec(&other.manifest()).unwrap();
    let entry = |data: &[u8], arch: &str| {
        serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": write_blob(data), "size": data.len(),
            "platform": {"architecture": arch, "os": "linux"},
        })
    };
    // The other architecture first: picking the first entry would be wrong.
    let host_arch = annotations::go_arch(std::env::consts::ARCH);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry(&theirs, other_arch), entry(&ours, host_arch)],
    });
    let index = serde_json::to_vec(&index).unwrap();
    let index_digest = write_blob(&index);
    let path = layout.join("index.json");
    let mut top: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    top["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": index_digest, "size": index.len(),
            "annotations": {"org.opencontainers.image.ref.name": "idx"},
        }));
    std::fs::write(&path, serde_json::to_vec(&top).unwrap()).unwrap();
}

#[test]
fn an_image_index_is_followed_to_this_hosts_entry() {
    use criu_testkit::registry::tools::skopeo;
    let dir = tempfile::tempdir().unwrap();
    let (_w, image) = image_of(dir.path());
    let layout = dir.path().join("layout");
    criu_oci::layout::write(&layout, "v1", &image).unwrap();
    add_index(&layout, &image, "s390x");
    let host = HostFacts::current(&criu::Criu::new()).unwrap();
    let back = criu_oci::layout::read(&layout, "idx", &host).unwrap();
    assert_eq!(back.read_layer().unwrap(), image.layer());
    assert_eq!(back.annotations[annotations::HOST_ARCH], host.arch);
    // A host of the other architecture finds its own entry.
    let s390x = HostFacts {
        arch: "s390x".into(),
        ..host.clone()
    };
    let theirs = criu_oci::layout::read(&layout, "idx", &s390x).unwrap();
    assert_eq!(theirs.annotations[annotations::HOST_ARCH], "s390x");

    // Through a registry: skopeo pushes the index with both manifests.
    let hosts = TwoHosts::new().unwrap();
    let reg = RegistryHost::start(&hosts, None).unwrap();
    let reference = reg.fresh_reference("index");
    let src = format!("oci:{}:idx", layout.display());
    skopeo(
        &hosts.a,
        &[
            "copy",
            "--all",
            "--dest-tls-verify=false",
            &src,
            &docker(&reference),
        ],
    )
    .unwrap();
    let target = dir.path().join("pulled");
    let pulled = hosts
        .b
        .run(|| {
            Registry::new(&http())?.pull_checkpoint(&reference, &host, &target, &Limits::default())
        })
        .unwrap()
        .unwrap();
    assert_eq!(
        annotations::container_name(&pulled.annotations),
        Some("counter")
    );
    assert!(pulled.unpacked.root.join("checkpoint").is_dir());
}

/// A registry that answers every manifest request with `body` bytes of
/// JSON-looking padding, without a length (the connection's end marks
/// the end), counting what it managed to send.
fn endless_manifest_server(body: usize) -> (String, std::thread::JoinHandle<usize>) {
    use std::io::{BufRead, BufReader};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = std::thread::spawn(move || {
        let mut sent = 0;
        for stream in listener.incoming().take(2) {
            let mut stream = stream.unwrap();
            let mut request = String::new();
            BufReader::new(&stream).read_line(&mut request).unwrap();
            if !request.contains("/manifests/") {
                // oci-client's probe of /v2/: no authentication needed.
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
                );
                continue;
            }
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/vnd.oci.image.manifest.v1+json\r\nconnection: close\r\n\r\n";
            let _ = stream.write_all(head.as_bytes());
            let chunk = vec![b' '; 64 << 10];
            while sent < body {
                match stream.write_all(&chunk) {
                    Ok(()) => sent += chunk.len(),
                    Err(_) => break,
                }
            }
        }
        sent
    });
    (addr, server)
}

#[test]
fn a_manifest_beyond_4_mib_is_refused_unread() {
    // 256 MiB on offer; the client stops after 4 MiB, so the server can
    // send little more than that before the connection closes.
    let (addr, server) = endless_manifest_server(256 << 20);
    let host = HostFacts::current(&criu::Criu::new()).unwrap();
    let reference = format!("{addr}/criu-rs/huge:latest");
    let e = Registry::new(&http())
        .unwrap()
        .pull(&reference, &host)
        .unwrap_err();
    assert!(
        matches!(e, Error::TooLarge { .. }) && e.to_string().contains("manifest"),
        "{e}"
    );
    let sent = server.join().unwrap();
    assert!(
        sent < 64 << 20,
        "the client read {sent} bytes of a manifest"
    );
}

#[test]
fn an_archive_already_on_disk_becomes_an_image_that_restores() {
    let dir = tempfile::tempdir().unwrap();
    let (w, images) = real_dump(dir.path(), false);
    let host = HostFacts::current(&criu::Criu::new()).unwrap();
    let meta = ArchiveMeta::of_process(std::process::id() as i32, "counter");
    // The file an engine (or kubelet's checkpoint API) would leave: a
    // plain tar, and the same gzip-compressed.
    let mut plain = Vec::new();
    let written = archive::write(&images, &meta, &mut plain, Compression::None).unwrap();
    let mut gz = Vec::new();
    archive::write(&images, &meta, &mut gz, Compression::Gzip).unwrap();
    let limits = Limits::default();
    let from_gz = CheckpointImage::from_archive(gz.clone(), "counter", &host, &limits).unwrap();
    assert_eq!(
        from_gz.layer(),
        gz.as_slice(),
        "the layer is the file, unchanged"
    );
    let config: serde_json::Value = serde_json::from_slice(&from_gz.config).unwrap();
    assert_eq!(config["rootfs"]["diff_ids"][0], written.diff_id.as_str());
    // Not a checkpoint archive: refused.
    let mut other = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(1);
    h.set_mode(0o600);
    other.append_data(&mut h, "etc/passwd", &b"x"[..]).unwrap();
    let e = CheckpointImage::from_archive(other.into_inner().unwrap(), "x", &host, &limits)
        .unwrap_err();
    assert!(e.to_string().contains("checkpoint/"), "{e}");

    let image = CheckpointImage::from_archive(plain, "counter", &host, &limits).unwrap();
    let layout = dir.path().join("layout");
    criu_oci::layout::write(&layout, "v1", &image).unwrap();
    let back = criu_oci::layout::read(&layout, "v1", &host).unwrap();
    let un = back.unpack(&dir.path().join("un"), &limits).unwrap();
    assert_same_images(&images, &un.images().unwrap());
    restore_and_count(&w, &un);
}

/// The bytes the registry sent for each `GET` of a blob of `digest`
/// (combined log format: `"GET /path HTTP/1.1" 200 BYTES ...`).
fn blob_bytes_sent(reg: &RegistryHost, digest: &str) -> Vec<u64> {
    reg.log()
        .lines()
        .filter(|l| l.contains("\"GET ") && l.contains(&format!("/blobs/{digest}")))
        .filter_map(|l| {
            let after = l.split('"').nth(2)?;
            after.split_whitespace().nth(1)?.parse().ok()
        })
        .collect()
}

#[test]
fn a_refused_layer_is_not_downloaded_to_its_end() {
    // A checkpoint archive whose second entry climbs out, followed by
    // 64 MiB that a drained download would fetch.
    let mut b = tar::Builder::new(Vec::new());
    let mut dir_h = tar::Header::new_gnu();
    dir_h.set_entry_type(tar::EntryType::Directory);
    dir_h.set_mode(0o700);
    dir_h.set_size(0);
    b.append_data(&mut dir_h, "checkpoint", std::io::empty())
        .unwrap();
    let mut evil = tar::Header::new_old();
    evil.as_old_mut().name[..7].copy_from_slice(b"../evil");
    evil.set_size(1);
    evil.set_mode(0o600);
    evil.set_cksum();
    b.append(&evil, &b"x"[..]).unwrap();
    let big = vec![0x5au8; 64 << 20];
    let mut h = tar::Header::new_gnu();
    h.set_size(big.len() as u64);
    h.set_mode(0o600);
    b.append_data(&mut h, "checkpoint/pages-1.img", big.as_slice())
        .unwrap();
    let archive = b.into_inner().unwrap();
    let host = HostFacts::current(&criu::Criu::new()).unwrap();
    let image =
        CheckpointImage::from_archive(archive, "counter", &host, &Limits::default()).unwrap();
    let hosts = TwoHosts::new().unwrap();
    let reg = RegistryHost::start(&hosts, None).unwrap();
    let reference = push_from_a(&hosts, &reg, &http(), &image).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("t");
    let e = hosts
        .b
        .run(|| {
            Registry::new(&http())?.pull_checkpoint(&reference, &host, &target, &Limits::default())
        })
        .unwrap()
        .unwrap_err();
    assert!(matches!(e, Error::UnsafeEntry { .. }), "{e}");
    assert!(!target.exists() && !dir.path().join("evil").exists());
    blob_gets(&reg, &reference);
    let sent = blob_bytes_sent(&reg, image.layer_digest());
    assert_eq!(sent.len(), 1, "one layer request: {sent:?}");
    assert!(
        sent[0] < 32 << 20,
        "the registry sent {} of the layer's {} bytes",
        sent[0],
        image.layer().len()
    );
}

#[test]
fn a_pull_is_abandoned_at_its_deadline() {
    // A "registry" that accepts connections and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let holder = std::thread::spawn(move || {
        let held: Vec<_> = listener.incoming().take(1).collect();
        std::thread::sleep(Duration::from_secs(3));
        drop(held);
    });
    let host = HostFacts::current(&criu::Criu::new()).unwrap();
    let limits = Limits {
        deadline: Duration::from_millis(500),
        ..Limits::default()
    };
    let reference = format!("{addr}/criu-rs/silent:latest");
    // The client's own read timeout (10 s here) is far longer.
    let e = Registry::new(&http())
        .unwrap()
        .pull_limited(&reference, &host, &limits)
        .unwrap_err();
    assert!(e.to_string().contains("deadline"), "{e}");
    holder.join().unwrap();
}
