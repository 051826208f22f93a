//! A checkpoint as an OCI image: push it, pull it, restore it (criu-oci).
//!
//! ```text
//! sudo cargo run -p criu-rs-examples --example push_pull                      # an OCI layout directory
//! sudo cargo run -p criu-rs-examples --example push_pull -- \
//!     --registry localhost:5000/checkpoints/counter:1 [--plain-http]          # a registry
//! ```
//!
//! A counter (`counter/mod.rs`) is checkpointed; its images become a checkpoint archive (the
//! layout Podman and CRI-O use) inside a one-layer image annotated with
//! this host's facts (architecture, kernel, CRIU version). The image is
//! written to an OCI image layout directory, or pushed to a registry; then
//! pulled back (every blob checked against its digest, the host's facts
//! against the annotations), unpacked safely, and restored: the counter
//! counts on. Between two machines the pull and restore run on the other.

use std::error::Error;
use std::fs::{self, File};
use std::path::Path;
use std::process::{Command, Stdio};

use clap::Parser;
use criu::{Criu, ImagesDir, Options};
use criu_oci::{layout, ArchiveMeta, CheckpointImage, Compression, HostFacts, Limits};
use criu_oci::{Registry, RegistryConfig, Unpacked};

mod counter;

#[derive(Parser)]
#[command(about = "Push a checkpoint as an OCI image and pull it back with criu-oci")]
struct Args {
    /// A registry reference (HOST[:PORT]/NAME:TAG); default: an OCI layout
    /// directory in a temporary directory.
    #[arg(long)]
    registry: Option<String>,
    /// Talk to the registry over plain HTTP (a registry on a private test
    /// network), not HTTPS.
    #[arg(long)]
    plain_http: bool,
}

fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!("criu-rs-push-pull-{}", std::process::id()));
    fs::create_dir(&dir)?;
    let result = push_pull(&dir, &args);
    fs::remove_dir_all(&dir)?;
    result
}

fn push_pull(dir: &Path, args: &Args) -> Result<(), Box<dyn Error>> {
    let criu = Criu::new();
    let host = HostFacts::current(&criu)?;

    // A counter, checkpointed (CRIU kills it) and reaped.
    let out = dir.join("counter.out");
    let mut counter = Command::new("setsid")
        .args(["python3", "-c", counter::SCRIPT])
        .stdin(Stdio::null())
        .stdout(File::create(&out)?)
        .stderr(Stdio::null())
        .spawn()?;
    let pid = counter.id() as i32;
    let meta = ArchiveMeta::of_process(pid, "counter");
    let images = ImagesDir::create(dir.join("images"))?;
    let dumped = counter::wait_for(&out, 100).and_then(|()| {
        Ok(criu.dump(
            Options::new()
                .pid(pid)
                .images_dir(&images)
                .log_file("dump.log"),
        )?)
    });
    let _ = counter.kill(); // a failed dump leaves it running
    counter.wait()?;
    dumped?;

    // Push, then pull into a fresh directory.
    let target = dir.join("pulled");
    let unpacked: Unpacked = match &args.registry {
        None => {
            let layout_dir = dir.join("layout");
            let image = CheckpointImage::build(&images, &meta, &host, Compression::Gzip)?;
            let digest = layout::write(&layout_dir, "counter", &image)?;
            println!("wrote oci:{}:counter ({digest})", layout_dir.display());
            let fetched = layout::read(&layout_dir, "counter", &host)?;
            println!("read it back: {} bytes of layer", fetched.layer_len());
            fetched.unpack(&target, &Limits::default())?
        }
        Some(reference) => {
            let config = RegistryConfig {
                plain_http: args.plain_http,
                ..RegistryConfig::default()
            };
            let registry = Registry::new(&config)?;
            let pushed =
                registry.push_checkpoint(reference, &images, &meta, &host, Compression::Gzip)?;
            println!(
                "pushed {reference}: {} bytes of layer",
                pushed.push.layer_bytes
            );
            let pulled = registry.pull_checkpoint(reference, &host, &target, &Limits::default())?;
            println!(
                "pulled it in {:.1} ms",
                pulled.pull.elapsed.as_secs_f64() * 1000.0
            );
            pulled.unpacked
        }
    };

    // Restore from the unpacked archive, CRIU's log kept out of it.
    let (pulled_images, work) = (unpacked.images()?, unpacked.criu_work_dir()?);
    let at_dump = counter::last(&out)?;
    let (mut child, restore) = criu.restore_child(
        Options::new()
            .images_dir(&pulled_images)
            .work_dir(&work)
            .log_file("restore.log"),
    )?;
    let counted_on = counter::wait_for(&out, at_dump + 100);
    child.kill()?;
    child.wait()?;
    counted_on?;
    let continuous = counter::continuous(&out)?;
    println!(
        "restored pid {} from the pulled image; counted on from {}, no number repeated or skipped: {continuous}",
        restore.pid,
        at_dump + 1
    );
    if !continuous {
        return Err("the restored counter did not continue where it stopped".into());
    }
    Ok(())
}
