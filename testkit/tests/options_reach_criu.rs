//! Each typed option reaches CRIU as the option it names, shown by what
//! CRIU 4.2.1 does with it or writes in its log (it does not log the RPC
//! request itself): a setter wired to the wrong RPC field fails here.
//! Real CRIU, as root.

use std::path::{Path, PathBuf};
use std::time::Duration;

use criu::{Criu, ImagesDir, InvalidKind, LogLevel, Options};
use criu_testkit::damage::restore_fails;
use criu_testkit::scratch::Scratch;
use criu_testkit::{fixture, KillOnDrop};

const WAIT: Duration = Duration::from_secs(20);

fn log(images: &ImagesDir, name: &str) -> String {
    std::fs::read_to_string(images.path().join(name)).unwrap()
}

#[test]
fn log_level_sets_what_criu_writes_to_its_log() {
    let dir = Scratch::new();
    let w = dir.counter(0);
    let criu = Criu::new();
    let dump_at = |level, name: &str| {
        let images = dir.images(name);
        criu.dump(
            Options::new()
                .pid(w.pid())
                .images_dir(&images)
                .leave_running(true)
                .log_file("dump.log")
                .log_level(level),
        )
        .unwrap();
        log(&images, "dump.log")
    };
    // CRIU prints "Version:" at info level and "Dumping processes" at
    // info; the per-VMA lines of the memory dump at debug only.
    let debug = dump_at(LogLevel::Debug, "debug");
    let info = dump_at(LogLevel::Info, "info");
    let error = dump_at(LogLevel::Error, "error");
    assert!(debug.contains("Version:"), "debug log:\n{debug}");
    assert!(info.contains("Version:"), "info log:\n{info}");
    assert!(!error.contains("Version:"), "error-only log:\n{error}");
    assert!(
        debug.lines().count() > 2 * info.lines().count(),
        "debug ({} lines) says much more than info ({} lines)",
        debug.lines().count(),
        info.lines().count()
    );
}

/// A cgroup of the test's own holding one process, in a cgroup v2
/// hierarchy the test mounts itself (cgroup2 can be mounted anywhere, any
/// number of times, beside v1 controllers or not; its core `cgroup.freeze`
/// needs no controller), so nothing of the machine's cgroup layout is
/// assumed. Drop moves the process back, removes the cgroup, unmounts.
struct Freezer {
    mount: tempfile::TempDir,
    path: PathBuf,
}

impl Freezer {
    fn new(pid: i32) -> Freezer {
        let mount = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "cgroup2", "none"])
            .arg(mount.path())
            .status()
            .unwrap();
        assert!(status.success(), "mount -t cgroup2: {status}");
        let path = mount.path().join(format!("criu-rs-test-{pid}"));
        let f = Freezer { mount, path };
        std::fs::create_dir(&f.path).unwrap();
        std::fs::write(f.path.join("cgroup.procs"), pid.to_string()).unwrap();
        assert!(f.path.join("cgroup.freeze").exists());
        f
    }
}

impl Drop for Freezer {
    fn drop(&mut self) {
        // Empty once its process is gone (the test's workload is killed
        // first); move anything left back to the root.
        if let Ok(procs) = std::fs::read_to_string(self.path.join("cgroup.procs")) {
            for p in procs.lines() {
                let _ = std::fs::write(self.mount.path().join("cgroup.procs"), p);
            }
        }
        let _ = std::fs::remove_dir(&self.path);
        let _ = std::process::Command::new("umount")
            .arg(self.mount.path())
            .status();
    }
}

/// Dumps the workload frozen through a freezer cgroup with `timeout`, at
/// debug level, and returns CRIU's log.
fn dump_through_a_freezer(timeout: Option<Duration>) -> (String, PathBuf) {
    let dir = Scratch::new();
    let mut w = dir.counter(0);
    let freezer = Freezer::new(w.pid());
    let images = dir.images("img");
    let mut o = Options::new();
    o.pid(w.pid())
        .images_dir(&images)
        .leave_running(true)
        .log_file("dump.log")
        .log_level(LogLevel::Debug)
        .freeze_cgroup(&freezer.path);
    if let Some(t) = timeout {
        o.timeout(t);
    }
    Criu::new().dump(&mut o).unwrap();
    assert!(w.is_running() && w.advances(WAIT));
    drop(w);
    (log(&images, "dump.log"), freezer.path.clone())
}

#[test]
fn freeze_cgroup_reaches_criu() {
    let (text, cgroup) = dump_through_a_freezer(None);
    // seize.c: "freezing cgroup %s: %lu x %lums attempts, timeout: %us".
    let want = format!("freezing cgroup {}: ", cgroup.display());
    assert!(text.contains(&want), "{want:?} not in:\n{text}");
    // seize.c, cgroup v2: "cgroup.freeze=%c" as it reads the state back.
    assert!(text.contains("cgroup.freeze=1"), "{text}");
}

/// libcriu 4.2.1's `criu_local_set_timeout` sets the value but not
/// `has_timeout`, so CRIU kept its default of 10 s; the crate now passes it
/// through its config file as well.
#[test]
fn timeout_reaches_criu() {
    let (text, cgroup) = dump_through_a_freezer(Some(Duration::from_secs(7)));
    let want = format!(
        "freezing cgroup {}: 70 x 100ms attempts, timeout: 7s",
        cgroup.display()
    );
    assert!(text.contains(&want), "{want:?} not in:\n{text}");
}

#[test]
fn exec_cmd_runs_after_a_successful_restore() {
    let dir = Scratch::new();
    let (mut w, images) = fixture::dumped(dir.path(), 0);
    let criu = Criu::new();
    let marker = dir.path().join("exec-cmd-ran");
    let script = format!("echo \"$0 $1\" > '{}'", marker.display());
    let r = criu
        .restore(
            Options::new()
                .images_dir(&images)
                .log_file("restore.log")
                .deadline(WAIT)
                .exec_cmd(["sh", "-c", &script, "ran", "with-args"]),
        )
        .unwrap();
    let _kill = KillOnDrop(r.pid);
    w.forget();
    // CRIU replies, then execs the command in place of itself (it waits
    // for nothing): poll for its output.
    assert!(
        criu_testkit::wait_until(WAIT, || std::fs::read_to_string(&marker)
            .is_ok_and(|t| t == "ran with-args\n")),
        "exec_cmd's command ran with its arguments: {:?}",
        std::fs::read_to_string(&marker)
    );
    assert!(w.advances(WAIT), "the restored process runs");
}

#[test]
fn parent_images_makes_criu_link_and_read_the_parent_directory() {
    let dir = Scratch::new();
    let mut w = dir.counter(0);
    let parent = dir.images("parent");
    let images = dir.images("img");
    let criu = Criu::new();
    criu.dump(
        Options::new()
            .pid(w.pid())
            .images_dir(&parent)
            .leave_running(true),
    )
    .unwrap();
    // A parent must be a pre-dump (which needs soft-dirty tracking, absent
    // here); CRIU 4.2.1 links a full dump as parent, then refuses it when
    // it reads the parent's inventory. Both show the option reached CRIU
    // as the parent images path.
    let e = criu
        .dump(
            Options::new()
                .pid(w.pid())
                .images_dir(&images)
                .leave_running(true)
                .log_file("dump.log")
                .parent_images("../parent"),
        )
        .unwrap_err();
    assert!(
        e.log_errors()
            .iter()
            .any(|l| l.contains("no parent inventory")),
        "{e}"
    );
    // image.c: CRIU makes a "parent" symlink to the value it was given.
    let link = std::fs::read_link(images.path().join("parent")).unwrap();
    assert_eq!(link, Path::new("../parent"));
    assert!(w.is_running() && w.advances(WAIT));
}

#[test]
fn work_dir_gets_the_log_and_statistics() {
    let dir = Scratch::new();
    let w = dir.counter(0);
    let images = dir.images("img");
    let (work, work_fd) = dir.work_dir();
    let rep = Criu::new()
        .dump(
            Options::new()
                .pid(w.pid())
                .images_dir(&images)
                .work_dir(&work_fd)
                .leave_running(true)
                .log_file("dump.log"),
        )
        .unwrap();
    assert!(work.join("dump.log").exists(), "the log is in the work dir");
    assert!(work.join("stats-dump").exists(), "so are the statistics");
    assert!(!images.path().join("dump.log").exists());
    assert!(images.holds_images(), "the images are in the images dir");
    assert!(
        rep.stats.is_some(),
        "the crate reads stats from the work dir"
    );
}

#[test]
fn a_config_file_is_read_by_criu_and_overrides_rpc_options() {
    let dir = Scratch::new();
    let w = dir.counter(0);
    let images = dir.images("img");
    let cfg = dir.path().join("criu.conf");
    // The config file names another log file: CRIU 4.2 reads it after the
    // RPC options, so the log lands under the config file's name.
    std::fs::write(&cfg, "log-file from-config.log\n").unwrap();
    Criu::new()
        .dump(
            Options::new()
                .pid(w.pid())
                .images_dir(&images)
                .leave_running(true)
                .log_file("from-rpc.log")
                .log_level(LogLevel::Debug)
                .config_file(&cfg),
        )
        .unwrap();
    assert!(
        images.path().join("from-config.log").exists(),
        "CRIU read the config file"
    );
    let text = log(&images, "from-config.log");
    assert!(
        text.contains(&format!(
            "Would overwrite RPC settings with values from {}",
            cfg.display()
        )),
        "CRIU says where its settings came from:\n{text}"
    );
}

#[test]
fn a_config_file_conflicts_with_the_crates_cli_only_options() {
    let dir = Scratch::new();
    let mut w = dir.counter(0);
    let images = dir.images("img");
    let cfg = dir.path().join("criu.conf");
    std::fs::write(&cfg, "\n").unwrap();
    let addr = "127.0.0.1:1".parse().unwrap();
    let e = Criu::new()
        .dump(
            Options::new()
                .pid(w.pid())
                .images_dir(&images)
                .config_file(&cfg)
                .lazy_pages(true)
                .lazy_pages_address(addr),
        )
        .unwrap_err();
    assert_eq!(e.invalid_kind(), Some(InvalidKind::Conflict), "{e}");
    assert_eq!(e.operation(), Some(criu::Operation::Dump), "{e}");
    assert!(w.is_running() && w.advances(WAIT));
    assert!(!images.holds_images());
}

#[test]
fn join_ns_puts_the_restored_process_in_the_named_namespace() {
    let dir = Scratch::new();
    let (mut w, images) = fixture::dumped(dir.path(), 0);
    let criu = Criu::new();
    // CRIU 4.2.1 checks the join-ns file before anything else and refuses
    // the request (EBADRQC) when it is missing; a real one restores.
    let e = restore_fails(
        &criu,
        Options::new().images_dir(&images).deadline(WAIT).join_ns(
            criu::Namespace::Uts,
            "/nonexistent-criu-rs-uts",
            None,
        ),
        "a missing join-ns file",
    );
    assert_eq!(e.errno(), Some(nix::errno::Errno::EBADRQC), "{e}");
    // A UTS namespace of its own, held by a sleeping process of ours.
    let mut holder = std::process::Command::new("unshare")
        .args(["--uts", "sleep", "60"])
        .spawn()
        .unwrap();
    let ns_file = format!("/proc/{}/ns/uts", holder.id());
    let ns_of = |p: &str| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).map(|m| m.ino()).ok()
    };
    assert!(
        criu_testkit::wait_until(WAIT, || ns_of(&ns_file) != ns_of("/proc/self/ns/uts")),
        "unshare entered a new UTS namespace"
    );
    let r = criu
        .restore(
            Options::new()
                .images_dir(&images)
                .log_file("restore.log")
                .deadline(WAIT)
                .join_ns(criu::Namespace::Uts, &ns_file, None),
        )
        .unwrap();
    let _kill = KillOnDrop(r.pid);
    w.forget();
    assert!(w.advances(WAIT));
    assert_eq!(
        ns_of(&format!("/proc/{}/ns/uts", r.pid)),
        ns_of(&ns_file),
        "the restored process joined the given UTS namespace"
    );
    let _ = holder.kill();
    let _ = holder.wait();
}

/// A process of the test's own made by `script` (run by `sh` as the leader
/// of a new session, no descriptor of ours beyond 0-2), once the script
/// has created `dir/ready`; killed and reaped on drop. The script ends by
/// `exec`ing into a sleep, so the dumped tree is one process holding the
/// descriptors the script opened.
struct Shell(std::process::Child);

impl Shell {
    fn start(dir: &Path, script: &str) -> Shell {
        Shell::start_with(dir, script, None)
    }

    /// [`Shell::start`], the descriptor `fd3` (if any) given to the shell
    /// as its descriptor 3.
    fn start_with(dir: &Path, script: &str, fd3: Option<std::os::fd::BorrowedFd<'_>>) -> Shell {
        use std::os::unix::process::CommandExt;
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c")
            .arg(script)
            .current_dir(dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| nix::unistd::setsid().map(drop).map_err(Into::into));
        }
        match fd3 {
            None => criu_testkit::close_inherited_fds(&mut cmd),
            Some(fd) => {
                let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
                // SAFETY: dup2, fcntl and close_range are
                // async-signal-safe. dup2 gives a copy without
                // close-on-exec (the same number keeps its flag: cleared).
                unsafe {
                    cmd.pre_exec(move || {
                        if libc::dup2(raw, 3) < 0 || libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32);
                        Ok(())
                    });
                }
            }
        }
        let shell = Shell(cmd.spawn().unwrap());
        assert!(
            criu_testkit::wait_until(WAIT, || dir.join("ready").exists()),
            "the script got ready: {script}"
        );
        shell
    }

    fn pid(&self) -> i32 {
        self.0.id() as i32
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A dump of `pid` into a fresh `dir/name` that leaves it running, with
/// `set` applied to the options.
fn dump_with(
    dir: &Path,
    name: &str,
    pid: i32,
    set: impl FnOnce(&mut Options<'_>),
) -> (ImagesDir, criu::Result<criu::DumpReport>) {
    let images = ImagesDir::create(dir.join(name)).unwrap();
    let r = {
        let mut o = Options::new();
        o.pid(pid)
            .images_dir(&images)
            .leave_running(true)
            .log_file("dump.log");
        set(&mut o);
        Criu::new().dump(&mut o)
    };
    (images, r)
}

/// Whether the dump failed with an error line of CRIU's that holds `text`.
fn refused_with(r: &criu::Result<criu::DumpReport>, text: &str) -> bool {
    match r {
        Ok(_) => false,
        Err(e) => e.log_errors().iter().any(|l| l.contains(text)),
    }
}

#[test]
fn ghost_limit_reaches_criu() {
    let dir = Scratch::new();
    // A deleted file of 64 KiB still open: CRIU keeps it as a ghost file.
    let sh = Shell::start(
        dir.path(),
        "head -c 65536 /dev/urandom > f && exec 3<f && rm f && touch ready && exec sleep 600",
    );
    let (small, r) = dump_with(dir.path(), "small", sh.pid(), |o| {
        o.ghost_limit(4096);
    });
    assert!(
        refused_with(&r, "Can't dump ghost file"),
        "a 4 KiB ghost limit refuses the 64 KiB file: {r:?}"
    );
    drop(small);
    let (_, r) = dump_with(dir.path(), "large", sh.pid(), |o| {
        o.ghost_limit(1 << 20);
    });
    r.expect("a 1 MiB ghost limit takes it");
}

#[test]
fn link_remap_reaches_criu() {
    let dir = Scratch::new();
    // An open file whose name is gone but which has another link: CRIU
    // needs a link remap to restore it.
    let sh = Shell::start(
        dir.path(),
        "echo data > f && ln f g && exec 3<f && rm f && touch ready && exec sleep 600",
    );
    let (_, r) = dump_with(dir.path(), "without", sh.pid(), |_| {});
    assert!(
        refused_with(&r, "Can't create link remap"),
        "without link_remap: {r:?}"
    );
    let (images, r) = dump_with(dir.path(), "with", sh.pid(), |o| {
        o.link_remap(true);
    });
    r.expect("with link_remap");
    // The remap CRIU recorded for the file (remap_type LINKED).
    let remaps = decode(&images, "remap-fpath.img");
    assert_eq!(
        remaps["entries"].as_array().map(Vec::len),
        Some(1),
        "{remaps}"
    );
}

#[test]
fn file_locks_reach_criu() {
    let dir = Scratch::new();
    let sh = Shell::start(
        dir.path(),
        "exec 3>lock && flock 3 && touch ready && exec sleep 600",
    );
    let (_, r) = dump_with(dir.path(), "without", sh.pid(), |_| {});
    assert!(
        refused_with(&r, "Some file locks are hold"),
        "without file_locks: {r:?}"
    );
    let (images, r) = dump_with(dir.path(), "with", sh.pid(), |o| {
        o.file_locks(true);
    });
    r.expect("with file_locks");
    let locks = decode(&images, "filelocks.img");
    assert_eq!(
        locks["entries"].as_array().map(Vec::len),
        Some(1),
        "{locks}"
    );
}

/// CRIU's own rendering of image `name` (as `crit decode` prints it).
fn decode(images: &ImagesDir, name: &str) -> serde_json::Value {
    let bytes = std::fs::read(images.path().join(name)).unwrap();
    let image = criu_image::Image::decode(&bytes).unwrap();
    criu_image::crit::render(&image, criu_image::crit::Style::Plain)
}

#[test]
fn tcp_close_and_network_lock_are_written_in_the_inventory() {
    let dir = Scratch::new();
    let w = dir.counter(0);
    let (plain, r) = dump_with(dir.path(), "plain", w.pid(), |_| {});
    r.unwrap();
    let (set, r) = dump_with(dir.path(), "set", w.pid(), |o| {
        o.tcp_close(true).network_lock(criu::NetworkLock::Skip);
    });
    r.unwrap();
    let (plain, set) = (
        &decode(&plain, "inventory.img")["entries"][0],
        &decode(&set, "inventory.img")["entries"][0],
    );
    // inventory.proto: tcp_close, network_lock_method (CRIU's enum:
    // iptables 0, nftables 1, skip 2).
    assert_eq!(set["tcp_close"], true, "{set}");
    assert_eq!(set["network_lock_method"], 2, "{set}");
    assert_ne!(plain["tcp_close"], true, "{plain}");
    assert_eq!(plain["network_lock_method"], 0, "{plain}");
}

#[test]
fn cpu_cap_image_makes_criu_write_the_cpu_info_image() {
    let dir = Scratch::new();
    let w = dir.counter(0);
    let (plain, r) = dump_with(dir.path(), "plain", w.pid(), |_| {});
    r.unwrap();
    let (set, r) = dump_with(dir.path(), "set", w.pid(), |o| {
        o.cpu_cap(criu::CpuCap::DEFAULT | criu::CpuCap::IMAGE);
    });
    r.unwrap();
    assert!(!plain.path().join("cpuinfo.img").exists());
    assert!(set.path().join("cpuinfo.img").exists());
}

#[test]
fn ext_unix_sk_reaches_criu() {
    use std::os::fd::AsFd;
    let dir = Scratch::new();
    // The process holds one end of a datagram socket pair as fd 3; the
    // other end stays here, outside the dumped tree.
    let (theirs, _ours) = std::os::unix::net::UnixDatagram::pair().unwrap();
    let sh = Shell::start_with(
        dir.path(),
        "touch ready && exec sleep 600",
        Some(theirs.as_fd()),
    );
    drop(theirs);
    let (_, r) = dump_with(dir.path(), "without", sh.pid(), |_| {});
    assert!(
        refused_with(&r, "External socket is used"),
        "without ext_unix_sk: {r:?}"
    );
    // With it, CRIU passes that check and stops at the next one: an
    // external socket without a name cannot be dumped.
    let (_, r) = dump_with(dir.path(), "with", sh.pid(), |o| {
        o.ext_unix_sk(true);
    });
    assert!(
        refused_with(&r, "Can't dump name-less external socket")
            && !refused_with(&r, "External socket is used"),
        "with ext_unix_sk: {r:?}"
    );
}

#[test]
fn skip_file_rwx_check_reaches_criu() {
    let dir = Scratch::new();
    let mut sh = Shell::start(
        dir.path(),
        "echo data > f && chmod 0600 f && exec 3<f && touch ready && exec sleep 600",
    );
    let pid = sh.pid();
    let images = dir.images("img");
    Criu::new()
        .dump(
            Options::new()
                .pid(pid)
                .images_dir(&images)
                .log_file("dump.log"),
        )
        .unwrap();
    sh.0.wait().unwrap();
    // The file's permission bits change between dump and restore.
    std::fs::set_permissions(
        dir.path().join("f"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let restore = |skip: bool| {
        let mut o = Options::new();
        o.images_dir(&images)
            .log_file(if skip { "skip.log" } else { "check.log" })
            .deadline(WAIT)
            .skip_file_rwx_check(skip);
        Criu::new().restore_child(&mut o)
    };
    let e = restore(false).map(|_| ()).unwrap_err();
    assert!(
        e.log_errors().iter().any(|l| l.contains("has bad mode")),
        "without skip_file_rwx_check: {e}"
    );
    // CRIU killed the half-restored task; restore_child made it our child,
    // and the crate leaves the zombie to us: reap it, so the pid is free.
    assert!(
        criu_testkit::wait_until(WAIT, || !matches!(
            nix::sys::wait::waitpid(
                nix::unistd::Pid::from_raw(pid),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG)
            ),
            Ok(nix::sys::wait::WaitStatus::StillAlive)
        )),
        "the half-restored task was killed"
    );
    assert!(
        criu_testkit::wait_gone(pid, WAIT),
        "the failed restore left nothing"
    );
    let (child, _) = restore(true).expect("with skip_file_rwx_check");
    assert_eq!(child.pid(), pid);
    assert!(criu_testkit::alive(pid));
    drop(child);
}
