//! runc, the engine under Docker and Podman, which drives CRIU itself:
//! the same busybox counter as an OCI bundle, `runc checkpoint` on host a,
//! `runc restore` on host b.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::phased::{
    dump_times_in, migrate_phased, restore_time_in, Checkpointed, Phased, Restored,
};
use super::{make_rootfs, numbers, BoxError, Downtime, Engine, FileWatcher, Moved, SCRIPT};
use crate::close_inherited_fds;
use crate::hosts::{Host, TwoHosts};

fn runc(args: &[&str], cwd: &Path) -> Result<String, BoxError> {
    let mut cmd = Command::new("runc");
    cmd.args(args).current_dir(cwd).stdin(Stdio::null());
    close_inherited_fds(&mut cmd);
    let out = cmd.output().map_err(|e| {
        format!(
            "runc {}: {e} (is runc installed? scripts/setup.sh installs it)",
            args[0]
        )
    })?;
    if !out.status.success() {
        return Err(format!(
            "runc {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs runc in `host`'s network namespace; returns its wall time.
fn runc_timed(host: &Host, args: &[&str], cwd: &Path) -> Result<Duration, BoxError> {
    let t = Instant::now();
    host.run(|| runc(args, cwd))??;
    Ok(t.elapsed())
}

fn runc_pid(id: &str, cwd: &Path) -> Result<i32, BoxError> {
    let state: serde_json::Value = serde_json::from_str(&runc(&["state", id], cwd)?)?;
    Ok(state["pid"].as_i64().ok_or("runc state has no pid")? as i32)
}

fn path(p: &Path) -> Result<&str, BoxError> {
    p.to_str()
        .ok_or_else(|| format!("{} is not UTF-8", p.display()).into())
}

/// An OCI bundle for the counter, written with serde_json.
fn make_bundle(bundle: &Path, logdir: &Path, interval: &str) -> Result<(), BoxError> {
    make_rootfs(&bundle.join("rootfs"))?;
    let script = SCRIPT.replace("INTERVAL", interval);
    let caps = ["CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_AUDIT_WRITE"];
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": ["/bin/sh", "-c", format!("exec </dev/null >>/log/counter.log 2>&1; {script}")],
            "env": ["PATH=/bin"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": "counter",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/log", "type": "bind", "source": logdir, "options": ["rbind", "rw"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]
        }
    });
    fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&config)?,
    )?;
    Ok(())
}

/// The counter run by runc, as an [`Engine`]. Both containers (source and
/// restored) are deleted on drop, their cgroups with them.
pub struct RuncEngine {
    dir: PathBuf,
    logdir: PathBuf,
    ids: [String; 2],
    started: Vec<String>,
}

impl RuncEngine {
    /// Prepares the log directory under `dir`; container ids are unique
    /// per process and call.
    pub fn new(dir: &Path) -> Result<RuncEngine, BoxError> {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let tag = format!("{}-{n}", std::process::id());
        let logdir = dir.join("log");
        fs::create_dir_all(&logdir)?;
        Ok(RuncEngine {
            dir: dir.to_path_buf(),
            logdir,
            ids: [format!("criu-rs-{tag}-a"), format!("criu-rs-{tag}-b")],
            started: Vec::new(),
        })
    }

    fn log(&self) -> PathBuf {
        self.logdir.join("counter.log")
    }
}

impl Engine for RuncEngine {
    fn name(&self) -> &'static str {
        "runc"
    }

    fn start(&mut self, hosts: &TwoHosts, interval: &str) -> Result<i32, BoxError> {
        for side in ["bundle-a", "bundle-b"] {
            make_bundle(&self.dir.join(side), &self.logdir, interval)?;
        }
        let id = self.ids[0].clone();
        self.started.push(id.clone());
        let bundle = self.dir.join("bundle-a");
        hosts.a.run(|| runc(&["run", "--detach", &id], &bundle))??;
        runc_pid(&id, &self.dir)
    }

    fn numbers(&self) -> Result<Vec<u64>, BoxError> {
        Ok(numbers(&self.log()))
    }

    fn downtime(&self) -> Box<dyn Downtime> {
        Box::new(FileWatcher::start(self.log()))
    }

    fn migrate(&mut self, hosts: &TwoHosts) -> Result<Moved, BoxError> {
        migrate_phased(self, hosts)
    }
}

impl Phased for RuncEngine {
    fn checkpoint(&mut self, hosts: &TwoHosts) -> Result<Checkpointed, BoxError> {
        let (images, work) = (self.dir.join("img-a"), self.dir.join("work-a"));
        let args = [
            "checkpoint",
            "--image-path",
            path(&images)?,
            "--work-path",
            path(&work)?,
            &self.ids[0],
        ];
        let wall = runc_timed(&hosts.a, &args, &self.dir)?;
        Ok(Checkpointed {
            images,
            wall,
            criu: dump_times_in(&work)?,
            criu_files: Some(work),
        })
    }

    fn landing(&mut self, _hosts: &TwoHosts) -> Result<PathBuf, BoxError> {
        Ok(self.dir.join("img-b"))
    }

    fn restore(&mut self, hosts: &TwoHosts, images: &Path) -> Result<Restored, BoxError> {
        let (work, bundle) = (self.dir.join("work-b"), self.dir.join("bundle-b"));
        let id = self.ids[1].clone();
        self.started.push(id.clone());
        let args = [
            "restore",
            "--detach",
            "--image-path",
            path(images)?,
            "--work-path",
            path(&work)?,
            "--bundle",
            path(&bundle)?,
            &id,
        ];
        let wall = runc_timed(&hosts.b, &args, &self.dir)?;
        Ok(Restored {
            wall,
            restore_time_us: restore_time_in(&work)?,
            pid: runc_pid(&id, &self.dir)?,
        })
    }
}

impl Drop for RuncEngine {
    fn drop(&mut self) {
        for id in &self.started {
            let _ = runc(&["delete", "--force", id], &self.dir);
        }
    }
}
