//! A Docker host: one network namespace of [`TwoHosts`](crate::hosts)
//! running a `dockerd` of its own (own data root, exec root, socket, pid
//! file, cgroup parent and managed containerd), started on demand and
//! ready-checked through the API. On drop it removes its containers, stops
//! the daemon by pid, kills by pid any containerd shim still serving its
//! containerd, unmounts what it mounted and deletes its directory.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::api::Api;
use super::image::{busybox_rootfs_tar, IMAGE};
use crate::container::BoxError;
use crate::hosts::Host;
use crate::{alive, close_inherited_fds, wait_gone};

/// How long a daemon may take to answer after it was started.
const READY: Duration = Duration::from_secs(60);

/// What the set-up installs, named in errors.
const SETUP: &str = "install Debian's docker.io (scripts/setup.sh does)";

/// One running `dockerd` in one host's network namespace.
pub struct DockerHost {
    root: PathBuf,
    dockerd: Child,
    api: Option<Api>,
    cgroup_parent: String,
}

fn arg(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

impl DockerHost {
    /// Starts a daemon in `host`'s namespace with everything it keeps
    /// under `root` (created), waits until it answers, and imports the
    /// busybox image into it.
    pub fn start(host: &Host, root: &Path) -> Result<DockerHost, BoxError> {
        // dockerd uses a containerd it finds at the default address instead
        // of starting its own: its shims and state would then live outside
        // this host's directory, beyond the reach of the clean-up.
        let system = Path::new("/run/containerd/containerd.sock");
        if system.exists() {
            return Err(format!(
                "a system containerd listens on {}: stop it (systemctl stop containerd docker) \
                 so that each test dockerd runs a containerd of its own",
                system.display()
            )
            .into());
        }
        fs::create_dir_all(root.join("data"))?;
        // Checkpoints need experimental features; the identity key would
        // otherwise go to /etc/docker. The test registries
        // (crate::registry::RegistryHost, on 10.232.0.254) speak plain HTTP.
        let config = serde_json::json!({
            "experimental": true,
            "deprecated-key-path": root.join("key.json"),
            "insecure-registries": ["10.232.0.0/24"],
        });
        fs::write(root.join("daemon.json"), config.to_string())?;
        // containerd keeps a temporary copy of every checkpoint (and its
        // stack dumps) in the temporary directory: keep those in ours too,
        // so that they go with the host.
        fs::create_dir_all(root.join("tmp"))?;
        let log = fs::File::create(root.join("dockerd.log"))?;
        let cgroup_parent = format!("/criu-rs-docker-{}", host.name);
        let mut cmd = Command::new("dockerd");
        cmd.arg("--data-root")
            .arg(root.join("data"))
            .arg("--exec-root")
            .arg(root.join("exec"))
            .arg("-H")
            .arg(format!("unix://{}", arg(&root.join("docker.sock"))))
            .arg("--pidfile")
            .arg(root.join("docker.pid"))
            .arg("--config-file")
            .arg(root.join("daemon.json"))
            .args(["--bridge", "none", "--iptables=false", "--ip-masq=false"])
            .arg(format!("--cgroup-parent={cgroup_parent}"))
            // runc finds CRIU on PATH: the set-up's CRIU, not an older one.
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("TMPDIR", root.join("tmp"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        close_inherited_fds(&mut cmd);
        crate::new_session(&mut cmd);
        let dockerd = host
            .run(|| cmd.spawn())?
            .map_err(|e| format!("cannot run dockerd ({e}): {SETUP}"))?;
        let mut daemon = DockerHost {
            root: root.to_path_buf(),
            dockerd,
            api: None,
            cgroup_parent,
        };
        daemon.wait_ready()?;
        let (repo, tag) = IMAGE;
        daemon
            .api()
            .import_image(busybox_rootfs_tar()?, repo, tag)?;
        Ok(daemon)
    }

    /// Polls the API until the daemon answers; fails early, with the end
    /// of its log, if it exits.
    fn wait_ready(&mut self) -> Result<(), BoxError> {
        let socket = self.root.join("docker.sock");
        let deadline = Instant::now() + READY;
        loop {
            if let Some(status) = self.dockerd.try_wait()? {
                return Err(format!(
                    "dockerd exited ({status}) before answering: {} ({SETUP})",
                    self.log_tail()
                )
                .into());
            }
            if self.api.is_none() && socket.exists() {
                self.api = Some(Api::new(&socket)?);
            }
            if self.api.as_ref().is_some_and(|api| api.version().is_ok()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "dockerd did not answer on {} within {READY:?}: {} ({SETUP})",
                    socket.display(),
                    self.log_tail()
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.root.join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }

    /// The client of this daemon.
    pub fn api(&self) -> &Api {
        self.api.as_ref().expect("the daemon answered before use")
    }

    /// The daemon's data root (`--data-root`).
    pub fn data_root(&self) -> PathBuf {
        self.root.join("data")
    }

    /// The daemon's process id.
    pub fn pid(&self) -> i32 {
        self.dockerd.id() as i32
    }

    /// Stops dockerd (which stops its containerd): SIGTERM, then SIGKILL
    /// if it has not gone within 20 s; reaped either way.
    fn stop_daemon(&mut self) {
        let pid = Pid::from_raw(self.pid());
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while matches!(self.dockerd.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.dockerd.kill();
        let _ = self.dockerd.wait();
    }
}

/// Pids of the processes whose command line mentions `needle` (this
/// daemon's own paths, which no other process uses).
pub fn processes_mentioning(needle: &str) -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}

/// Mount points at or below `dir`, deepest first.
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let table = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = table
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(PathBuf::from))
        .filter(|m| m.starts_with(dir))
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    found
}

impl Drop for DockerHost {
    fn drop(&mut self) {
        if let Some(api) = &self.api {
            for id in api.containers().unwrap_or_default() {
                let _ = api.remove(&id);
            }
        }
        self.api = None;
        self.stop_daemon();
        // A shim outlives its containerd if a container outlived the API.
        for pid in processes_mentioning(&arg(&self.root)) {
            if alive(pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                wait_gone(pid, Duration::from_secs(5));
            }
        }
        for m in mounts_below(&self.root) {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
        for controller in fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = fs::remove_dir(controller.path().join(&self.cgroup_parent[1..]));
        }
        let _ = fs::remove_dir_all(&self.root);
    }
}
