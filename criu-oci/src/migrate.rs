//! Moving a process tree through a registry: the source checkpoints and
//! pushes ([`checkpoint_and_push`]), the destination pulls and restores
//! ([`pull_and_restore`]). The source tree stays stopped, alive, until the
//! caller has heard that the destination restored it, then is killed
//! ([`Pushed::finish`]); dropping [`Pushed`] instead continues it. The
//! source is held by criu-rs's [`criu::migrate::hold`], as in a live
//! migration: stopped at CRIU's pre-dump notification, dumped with
//! `leave_running`, every signal through a pidfd.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::annotations::HostFacts;
use crate::archive::{ArchiveMeta, Compression, Limits};
use crate::error::Result;
use crate::registry::{Registry, Transfer};
use criu::migrate::hold::{self, continue_tree, HeldTree};

/// The source side after a successful push.
#[derive(Debug)]
pub struct Pushed {
    /// The dump.
    pub dump: criu::DumpReport,
    /// Packing the images into the image (archive, compression), while
    /// the push ran.
    pub pack: Duration,
    /// The push (packing included; when the pages went in parts while
    /// the dump ran, from the dump's end: what the push added to it).
    pub push: Transfer,
    /// Of `push.elapsed`, the wait for the last parts of the pages after
    /// the dump's end (zero for a gzip'd layer).
    pub parts_wait: Duration,
    /// The layer's size.
    pub image_bytes: u64,
    /// The layer's digest (`sha256:...`).
    pub layer_digest: String,
    held: HeldTree,
}

impl Pushed {
    /// When the source was stopped.
    pub fn stopped_since(&self) -> Instant {
        self.held.since()
    }

    /// The destination restored the tree: kill the source copy.
    pub fn finish(self) {
        self.held.kill();
    }
}

/// Where, and how, [`checkpoint_and_push`] pushes.
#[derive(Debug, Clone, Copy)]
pub struct PushTo<'a> {
    /// The client.
    pub registry: &'a Registry,
    /// `host:port/repo:tag`.
    pub reference: &'a str,
    /// The layer's compression: [`Compression::None`] keeps gzip's time
    /// out of the downtime (checkpointed memory rarely shrinks much).
    pub compression: Compression,
}

/// Dumps the tree rooted at `pid` into `work_dir/images` (created), packs
/// it as a checkpoint image named `name`, and pushes it as `to` says:
/// uncompressed, the pages go up in parts while CRIU writes them
/// ([`Registry::push_checkpoint_while`]; an image for
/// [`pull_and_restore`], not for Podman), the rest once the dump is over;
/// gzip'd, as one layer after the dump. On failure the source runs on.
pub fn checkpoint_and_push(
    criu: &criu::Criu,
    pid: i32,
    name: &str,
    work_dir: &Path,
    to: &PushTo<'_>,
    customize: impl Fn(&mut criu::Options<'_>),
) -> Result<Pushed> {
    let meta = ArchiveMeta::of_process(pid, name);
    let host = HostFacts::current(criu)?;
    let images = criu::ImagesDir::create(work_dir.join("images"))?;
    let mut o = criu::Options::new();
    customize(&mut o);
    o.pid(pid).images_dir(&images).log_file("dump.log");
    let ((dump, held), pushed) = match to.compression {
        // The pages go up while CRIU writes them.
        Compression::None => {
            to.registry
                .push_checkpoint_while(to.reference, &images, &meta, &host, || {
                    Ok(hold::dump(criu, &mut o)?)
                })?
        }
        _ => {
            let dumped = hold::dump(criu, &mut o)?;
            let pushed =
                to.registry
                    .push_checkpoint(to.reference, &images, &meta, &host, to.compression)?;
            (dumped, pushed)
        }
    };
    Ok(Pushed {
        dump,
        pack: pushed.pack,
        image_bytes: pushed.push.layer_bytes,
        push: pushed.push,
        parts_wait: pushed.parts_wait,
        layer_digest: pushed.layer_digest,
        held,
    })
}

/// The destination side after a successful restore.
#[derive(Debug)]
pub struct Restored {
    /// The restored root task, a child of this process, running.
    pub child: criu::RestoredChild,
    /// The restore.
    pub restore: criu::RestoreReport,
    /// The pull.
    pub pull: Transfer,
    /// Unpacking the layer.
    pub unpack: Duration,
    /// Of `pull.elapsed`, fetching, checking and writing the pages parts.
    pub parts: Duration,
}

/// Pulls `reference`, refuses it unless its annotations say it is a
/// checkpoint this host can restore (before its layer is downloaded),
/// verifies the layer's digest, unpacks it into `work_dir/archive`
/// (created) within `limits`, and restores it as a child of this process.
/// On failure the unpacked files are removed.
pub fn pull_and_restore(
    criu: &criu::Criu,
    registry: &Registry,
    reference: &str,
    work_dir: &Path,
    limits: &Limits,
    customize: impl Fn(&mut criu::Options<'_>),
) -> Result<Restored> {
    let host = HostFacts::current(criu)?;
    let target = work_dir.join("archive");
    let pulled = registry.pull_checkpoint(reference, &host, &target, limits)?;
    let unpacked = pulled.unpacked;
    let (pull, unpack, parts) = (pulled.pull, pulled.unpack, pulled.parts);
    // CRIU's log goes to a private directory beside the unpacked tree,
    // never into it: a file of the image's choosing (a link, say) may sit
    // under the log's name in the images directory.
    let work_path = criu_work_path(&target);
    let restored = (|| -> Result<_> {
        let images = unpacked.images()?;
        let work = unpacked.criu_work_dir()?;
        let mut o = criu::Options::new();
        customize(&mut o);
        o.images_dir(&images)
            .work_dir(&work)
            .log_file("restore.log");
        Ok(criu.restore_child(&mut o)?)
    })();
    match restored {
        Ok((child, restore)) => {
            continue_tree(child.pid());
            Ok(Restored {
                child,
                restore,
                pull,
                unpack,
                parts,
            })
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&target);
            let _ = std::fs::remove_dir_all(&work_path);
            Err(e)
        }
    }
}

/// Where `Unpacked::criu_work_dir` puts CRIU's work directory
/// for an archive unpacked at `target`.
fn criu_work_path(target: &Path) -> std::path::PathBuf {
    let mut path = target.as_os_str().to_owned();
    path.push(".criu-work");
    path.into()
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use super::{checkpoint_and_push, PushTo};
    use crate::{Compression, Registry, RegistryConfig};

    /// The state letter of `pid` from `/proc`.
    fn state(pid: i32) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .next()?
            .chars()
            .next()
    }

    /// A push that fails after the dump (no registry listens on the port)
    /// leaves the source running: dumped, held stopped, then continued.
    #[test]
    fn a_failed_push_resumes_the_source() {
        // SAFETY: geteuid cannot fail and touches no memory.
        if unsafe { libc::geteuid() } != 0 {
            panic!("this test dumps a process with CRIU: run it as root");
        }
        let mut cmd = Command::new("sleep");
        cmd.arg("600")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: setsid is async-signal-safe. A session leader, as CRIU
        // wants (the harness may run in session 0).
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("spawning sleep");
        let pid = child.id() as i32;
        let dir = tempfile::tempdir().unwrap();
        // A port nothing listens on: the push is refused at once.
        let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = unused.local_addr().unwrap().port();
        drop(unused);
        let registry = Registry::new(&RegistryConfig {
            plain_http: true,
            timeout: Some(Duration::from_secs(5)),
            ..RegistryConfig::default()
        })
        .unwrap();
        let reference = format!("127.0.0.1:{port}/criu-rs/held:latest");
        let to = PushTo {
            registry: &registry,
            reference: &reference,
            compression: Compression::None,
        };
        let r = checkpoint_and_push(&criu::Criu::new(), pid, "held", dir.path(), &to, |_| {});
        let dumped = dir.path().join("images/inventory.img").exists();
        let deadline = Instant::now() + Duration::from_secs(5);
        while state(pid) == Some('T') && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let after = state(pid);
        let _ = child.kill();
        let _ = child.wait();
        assert!(r.is_err(), "the push cannot succeed");
        // The registry's refusal may come before the dump (the upload is
        // opened first) or after it (the source was stopped): either way
        // the source must run on.
        if !dumped {
            eprintln!(
                "the push was refused before the dump: {:?}",
                r.as_ref().err()
            );
        }
        // Running: asleep again, or still on its way there from the
        // SIGCONT that resumed it ('R' for a moment).
        assert!(
            matches!(after, Some('S' | 'R')),
            "the source runs on: {after:?}, {:?}",
            r.err()
        );
    }
}
