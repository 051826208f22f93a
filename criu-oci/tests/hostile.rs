//! Hostile archives and layouts: each is refused, nothing lands outside
//! the target, and the memory the refusal costs is measured, not assumed.
//!
//! Every case runs in a child process (this binary again, `child CASE`),
//! which reports its peak resident memory (`VmHWM`) after the attempt;
//! the cases that stream hundreds of MiB of metadata must stay far below
//! that. (A custom harness: `harness = false` in Cargo.toml.)

use std::io::{self, Read};
use std::path::Path;
use std::process::Command;

use criu_oci::archive::{self, Limits};
use criu_oci::{Error, HostFacts};

/// What a metadata bomb streams: far more than any cap, far more than
/// the peak a bounded reader may reach.
const BOMB: u64 = 256 << 20;
/// The peak a child may reach (its binary, libc, buffers: ~10 MiB here).
const PEAK_MAX_KIB: u64 = 48 << 10;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("child") {
        child(&args[2], Path::new(&args[3]));
        return;
    }
    let mut failed = Vec::new();
    for case in CASES {
        match run_case(case) {
            Ok(()) => println!("test hostile::{case} ... ok"),
            Err(why) => {
                println!("test hostile::{case} ... FAILED: {why}");
                failed.push(case);
            }
        }
    }
    links_within_the_tree_still_unpack();
    println!("test hostile::links_within_the_tree_still_unpack ... ok");
    assert!(failed.is_empty(), "failed: {failed:?}");
}

const CASES: [&str; 12] = [
    "link_chain_up_dot",
    "link_chain_then_file",
    "link_chain_through_checkpoint_log",
    "long_name_bomb",
    "long_link_bomb",
    "pax_bomb",
    "pax_global_bomb",
    "metadata_entries_count",
    "hard_links",
    "devices",
    "huge_config",
    "huge_index_json",
];

/// Runs `case` in a child; checks its verdict, its peak memory, and that
/// nothing appeared beside the target.
fn run_case(case: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["child", case])
        .arg(dir.path())
        .output()
        .map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "child failed: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let peak: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("peak_kib "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or(format!("no peak in {stdout:?}"))?;
    if peak > PEAK_MAX_KIB {
        return Err(format!("peak memory {peak} KiB > {PEAK_MAX_KIB} KiB"));
    }
    if !stdout.lines().any(|l| l == "verdict_ok true") {
        return Err(format!(
            "not refused as it should be, or the target is left: {stdout}"
        ));
    }
    // The child wrote only what the case set up; the target is gone.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().into_string().unwrap())
        .filter(|n| n != "layout")
        .collect();
    if !left.is_empty() {
        return Err(format!("left beside the target: {left:?} ({stdout})"));
    }
    println!(
        "    {case}: peak {peak} KiB; {}",
        stdout.lines().next().unwrap_or("")
    );
    Ok(())
}

fn child(case: &str, dir: &Path) {
    let target = dir.join("t");
    let verdict = match case {
        "huge_config" | "huge_index_json" => layout_case(case, dir).map(|_| ()),
        _ => {
            let (stream, limits) = archive_case(case);
            archive::unpack(stream, &target, &limits).map(|_| ())
        }
    };
    let expected = match &verdict {
        Err(Error::UnsafeEntry { .. }) => !matches!(
            case,
            "long_name_bomb"
                | "long_link_bomb"
                | "pax_bomb"
                | "pax_global_bomb"
                | "metadata_entries_count"
                | "huge_config"
                | "huge_index_json"
        ),
        Err(Error::TooLarge { .. }) => true,
        _ => false,
    };
    // Reported, not asserted here: the parent checks the verdict and the
    // peak, so a wrong verdict still shows what the attempt cost.
    println!("{verdict:?}");
    println!("peak_kib {}", peak_kib());
    println!("verdict_ok {}", expected && !target.exists());
}

fn peak_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// One raw header block: name, type byte, size, link.
fn header(name: &str, kind: u8, size: u64, link: &str) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000600\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// A tar of whole entries (name, type, content, link).
fn tar(entries: &[(&str, u8, &[u8], &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, data, link) in entries {
        out.extend_from_slice(&header(name, *kind, data.len() as u64, link));
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// A header announcing `BOMB` bytes of metadata, followed by them (from
/// a generator: the child holds none of it unless the reader does).
fn bomb(kind: u8) -> Box<dyn Read> {
    let h = header("././@LongLink", kind, BOMB, "");
    Box::new(io::Cursor::new(h.to_vec()).chain(io::repeat(b'a').take(BOMB)))
}

fn archive_case(case: &str) -> (Box<dyn Read>, Limits) {
    let limits = Limits::default();
    let t = |e: &[(&str, u8, &[u8], &str)]| -> Box<dyn Read> { Box::new(io::Cursor::new(tar(e))) };
    let stream = match case {
        // `up` is the root; `l1` is `up/..`, the root's parent, which reads
        // as inside when the link is checked as text.
        "link_chain_up_dot" => t(&[("up", b'2', b"", "."), ("l1", b'2', b"", "up/..")]),
        "link_chain_then_file" => t(&[
            ("up", b'2', b"", "."),
            ("l1", b'2', b"", "up/.."),
            ("l1/escaped", b'0', b"owned", ""),
        ]),
        // What `pull_and_restore` would have let CRIU write through.
        "link_chain_through_checkpoint_log" => t(&[
            ("checkpoint/", b'5', b"", ""),
            ("up", b'2', b"", "."),
            ("l1", b'2', b"", "up/.."),
            ("checkpoint/restore.log", b'2', b"", "../l1/escaped"),
        ]),
        "long_name_bomb" => bomb(b'L'),
        "long_link_bomb" => bomb(b'K'),
        "pax_bomb" => bomb(b'x'),
        "pax_global_bomb" => bomb(b'g'),
        "metadata_entries_count" => {
            let record = b"18 comment=hello!\n";
            let one: Vec<u8> = [
                &header("g", b'g', record.len() as u64, "")[..],
                record,
                &[0u8; 494],
            ]
            .concat();
            let all: Vec<u8> = one.iter().copied().cycle().take(one.len() * 1000).collect();
            return (
                Box::new(io::Cursor::new(all)),
                Limits {
                    entries: 100,
                    ..limits
                },
            );
        }
        "hard_links" => t(&[
            ("d", b'5', b"", ""),
            ("f", b'0', b"x", ""),
            ("h", b'1', b"", "d"),
        ]),
        "devices" => t(&[("null", b'3', b"", "")]),
        other => panic!("no case {other}"),
    };
    (stream, limits)
}

/// A layout whose config (no annotation states the architecture, so it
/// must be read) or whose index.json is huge: sparse files, so the disk
/// holds nothing while a reader that trusted them would take it all.
fn layout_case(case: &str, dir: &Path) -> criu_oci::Result<criu_oci::FetchedImage> {
    let layout = dir.join("layout");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let huge = 384u64 << 20;
    let fake = "a".repeat(64);
    let config_path = blobs.join(&fake);
    std::fs::File::create(&config_path)
        .unwrap()
        .set_len(huge)
        .unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": format!("sha256:{fake}"), "size": huge},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": format!("sha256:{}", "b".repeat(64)), "size": 1024}],
        "annotations": {"io.kubernetes.cri-o.annotations.checkpoint.name": "counter"},
    });
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let digest = criu_oci::image::sha256_digest(&manifest);
    std::fs::write(blobs.join(digest.trim_start_matches("sha256:")), &manifest).unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": digest, "size": manifest.len(),
                       "annotations": {"org.opencontainers.image.ref.name": "v1"}}],
    });
    let index_path = layout.join("index.json");
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
    if case == "huge_index_json" {
        std::fs::File::create(&index_path)
            .unwrap()
            .set_len(huge)
            .unwrap();
    }
    let host = HostFacts {
        arch: "amd64".into(),
        kernel: String::new(),
        cgroup_version: "v2".into(),
        criu_version: criu::Version::new(4, 2, 1),
        distribution: (String::new(), String::new()),
    };
    let r = criu_oci::layout::read(&layout, "v1", &host);
    std::fs::remove_dir_all(&layout).unwrap();
    r
}

/// The control: links and hard links that stay in the tree unpack, so
/// the refusals above are about where links lead, not that they exist.
fn links_within_the_tree_still_unpack() {
    let dir = tempfile::tempdir().unwrap();
    let ok = tar(&[
        ("checkpoint/", b'5', b"", ""),
        ("pre/", b'5', b"", ""),
        ("pre/pages-1.img", b'0', b"p", ""),
        // CRIU's link to a previous dump's images.
        ("checkpoint/parent", b'2', b"", "../pre"),
        ("checkpoint/h", b'1', b"", "pre/pages-1.img"),
        ("up", b'2', b"", "."),
    ]);
    let un = archive::unpack(ok.as_slice(), &dir.path().join("t"), &Limits::default()).unwrap();
    let back = std::fs::read(un.root.join("checkpoint/parent/pages-1.img")).unwrap();
    assert_eq!(back, b"p");
    assert_eq!(std::fs::read(un.root.join("checkpoint/h")).unwrap(), b"p");
}
