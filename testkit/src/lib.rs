//! Test support for criu-rs: a workload process to checkpoint, and guards
//! that clean up what a test started. Used by the integration tests in
//! `tests/`, by the examples and by the benches; not a public API.

pub mod aftermath;
pub mod capture;
pub mod certs;
pub mod container;
pub mod damage;
pub mod demo;
pub mod faults;
pub mod fixture;
pub mod hosts;
pub mod link;
pub mod measure;
pub mod pid;
pub mod registry;
pub mod scratch;
pub mod skip;
pub mod tcp;

use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Word `i` of the memory pattern the workload keeps (`--memory-mib`):
/// known bytes that tests look for, in images or on the wire.
pub fn memory_pattern(i: usize) -> u64 {
    (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xC0FF_EE00_D15E_A5E5
}

/// Where the workload binary is: `CRIU_RS_WORKLOAD_BIN`, else as
/// [`find_bin`] finds it.
pub fn workload_bin() -> PathBuf {
    find_bin("criu-rs-workload", "CRIU_RS_WORKLOAD_BIN")
}

/// Where this crate's binary `name` is: the path in the environment
/// variable `var` when set, else next to the running executable or up to
/// three directories up (tests, examples and benches live in different
/// subdirectories of cargo's target directory), else plain `name`.
pub fn find_bin(name: &str, var: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(var) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    for _ in 0..4 {
        let candidate = dir.join(name);
        if candidate.exists() {
            return candidate;
        }
        if !dir.pop() {
            break;
        }
    }
    PathBuf::from(name)
}

/// [`workload_bin`], or an error that says how to build it.
pub fn existing_workload_bin() -> io::Result<PathBuf> {
    built_bin(workload_bin())
}

/// `bin` (one of this crate's binaries, as [`workload_bin`] or
/// [`tcp::server_bin`] find it) if it exists, or an error that says how to
/// build it.
pub fn built_bin(bin: PathBuf) -> io::Result<PathBuf> {
    if bin.exists() {
        Ok(bin)
    } else {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "{} not found: run `cargo build -p criu-testkit --bins` first",
                bin.display()
            ),
        ))
    }
}

/// Whether `ticks` count 1, 2, 3... without a gap or repeat and go on past
/// `seq` (the last number seen before a move): the workload continued.
pub fn continued_past(ticks: &[Tick], seq: u64) -> bool {
    ticks.iter().enumerate().all(|(i, t)| t.seq == i as u64 + 1) && ticks.len() as u64 > seq
}

/// The longest time between two consecutive `ticks`, in nanoseconds (0 for
/// fewer than two): a move's downtime as the workload saw it.
pub fn longest_gap_ns(ticks: &[Tick]) -> u128 {
    ticks
        .windows(2)
        .map(|p| p[1].unix_ns.saturating_sub(p[0].unix_ns))
        .max()
        .unwrap_or(0)
}

/// One line of the workload's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    /// The counter: 1, 2, 3...
    pub seq: u64,
    /// When it was written, in nanoseconds since the Unix epoch.
    pub unix_ns: u128,
}

/// The counting (and optionally memory-holding) workload, started as a
/// child of this process in a session of its own, with its own output file.
/// Dropping it kills it (by pid) and reaps it if it is still our child.
#[derive(Debug)]
pub struct Workload {
    child: Option<Child>,
    pid: i32,
    /// With a PID namespace: the workload (its init), a child of `child`.
    inner: Option<i32>,
    output: PathBuf,
}

impl Workload {
    /// Starts `bin OUTPUT --interval-us N [--memory-mib M]`.
    pub fn spawn(
        bin: &Path,
        output: &Path,
        interval: Duration,
        memory_mib: usize,
    ) -> io::Result<Workload> {
        Self::spawn_in(bin, output, interval, memory_mib, |_| Ok(()))
    }

    /// Like [`Workload::spawn`] but as a shell job: the child of a `sh`
    /// that leads a new session, in that shell's process group, so the
    /// session leader is outside the tree a dump of the workload takes
    /// (CRIU needs `shell_job` for it). The shell is our child; the
    /// workload is its only child, and [`Workload::pid`] is the workload.
    ///
    /// A session of our own, not this process's: under a harness whose
    /// session leader lives in an outer PID namespace, CRIU sees session 0
    /// and refuses the dump even with `shell_job`.
    pub fn spawn_shell_job(bin: &Path, output: &Path, interval: Duration) -> io::Result<Workload> {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("\"$0\" \"$@\" & wait")
            .arg(bin)
            .arg(output)
            .arg("--interval-us")
            .arg(interval.as_micros().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        new_session(&mut cmd);
        Self::start_wrapped(cmd, output, 0)
    }

    /// Like [`Workload::spawn`], running `setup` in the child after
    /// `setsid` and before exec (to enter a network namespace, say).
    pub fn spawn_in(
        bin: &Path,
        output: &Path,
        interval: Duration,
        memory_mib: usize,
        setup: impl Fn(&mut Command) -> io::Result<()>,
    ) -> io::Result<Workload> {
        let mut cmd = Command::new(bin);
        cmd.arg(output)
            .arg("--interval-us")
            .arg(interval.as_micros().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if memory_mib > 0 {
            cmd.arg("--memory-mib").arg(memory_mib.to_string());
        }
        // A session of its own lets CRIU dump it without `shell_job`.
        new_session(&mut cmd);
        setup(&mut cmd)?;
        close_inherited_fds(&mut cmd);
        let child = cmd.spawn()?;
        let w = Workload {
            pid: child.id() as i32,
            child: Some(child),
            inner: None,
            output: output.to_path_buf(),
        };
        // Ready once the pattern is in place and the first tick is out.
        w.wait_for_seq(1, Duration::from_secs(60 + memory_mib as u64 / 16))?;
        Ok(w)
    }

    /// Like [`Workload::spawn`], as the init of a new PID namespace (via
    /// util-linux `unshare --pid --fork`, then `setsid` inside it), so that
    /// its restore cannot collide with pids taken on this machine.
    pub fn spawn_in_pid_ns(
        bin: &Path,
        output: &Path,
        interval: Duration,
        memory_mib: usize,
    ) -> io::Result<Workload> {
        let mut cmd = Command::new("unshare");
        cmd.args(["--pid", "--fork", "--", "setsid"])
            .arg(bin)
            .arg(output)
            .arg("--interval-us")
            .arg(interval.as_micros().to_string())
            .arg("--memory-mib")
            .arg(memory_mib.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Self::start_wrapped(cmd, output, memory_mib)
    }

    /// Spawns `cmd`, a wrapper (`unshare`, `sh`) whose first child is the
    /// workload (or another program writing `tick` lines to `output`), and
    /// waits for that child's first tick.
    pub fn start_wrapped(
        mut cmd: Command,
        output: &Path,
        memory_mib: usize,
    ) -> io::Result<Workload> {
        close_inherited_fds(&mut cmd);
        // CRIU's parasite makes `proc.crtools` in the working directory of
        // a task whose /proc is not its own (a PID-namespace init): two
        // such dumps from one directory collide (EEXIST). Each workload
        // works in its output's directory, which is its test's own.
        if cmd.get_current_dir().is_none() {
            if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
                cmd.current_dir(dir);
            }
        }
        let child = cmd.spawn()?;
        let outer = child.id() as i32;
        let mut w = Workload {
            pid: outer,
            child: Some(child),
            inner: None,
            output: output.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while w.inner.is_none() {
            let kids = fs::read_to_string(format!("/proc/{outer}/task/{outer}/children"))
                .unwrap_or_default();
            w.inner = kids.split_whitespace().next().and_then(|p| p.parse().ok());
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "{:?} started no child",
                    cmd.get_program()
                )));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        w.wait_for_seq(1, Duration::from_secs(60 + memory_mib as u64 / 16))?;
        Ok(w)
    }

    /// The workload's pid (in a PID namespace: its init, as seen here).
    pub fn pid(&self) -> i32 {
        self.inner.unwrap_or(self.pid)
    }

    /// Its output file.
    pub fn output(&self) -> &Path {
        &self.output
    }

    /// All ticks written so far.
    pub fn ticks(&self) -> Vec<Tick> {
        read_ticks(&self.output)
    }

    /// The last counter value written, 0 before the first.
    pub fn last_seq(&self) -> u64 {
        self.ticks().last().map_or(0, |t| t.seq)
    }

    /// Waits until the counter reaches `seq`.
    pub fn wait_for_seq(&self, seq: u64, timeout: Duration) -> io::Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = self.last_seq();
            if last >= seq {
                return Ok(last);
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "workload {} reached {last}, not {seq}, in {timeout:?}",
                        self.pid
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether the counter advances within `timeout` (the process runs).
    pub fn advances(&self, timeout: Duration) -> bool {
        let now = self.last_seq();
        self.wait_for_seq(now + 2, timeout).is_ok()
    }

    /// The checksum the workload computed after filling its memory.
    pub fn memory_checksum(&self) -> Option<String> {
        let text = fs::read_to_string(&self.output).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("memory "))
            .and_then(|r| r.split_whitespace().nth(1))
            .map(str::to_string)
    }

    /// Asks process `pid` (this workload, or its restored self) to verify
    /// its memory, and returns `(checksum, ok)` from its answer.
    pub fn verify_memory(&self, pid: i32, timeout: Duration) -> io::Result<(String, bool)> {
        let count = |t: &str| t.lines().filter(|l| l.starts_with("verify ")).count();
        let before = count(&fs::read_to_string(&self.output)?);
        kill(Pid::from_raw(pid), Signal::SIGUSR1).map_err(io::Error::from)?;
        let deadline = Instant::now() + timeout;
        loop {
            let text = fs::read_to_string(&self.output)?;
            if count(&text) > before {
                let line = text
                    .lines()
                    .rfind(|l| l.starts_with("verify "))
                    .unwrap_or("");
                let mut parts = line.split_whitespace().skip(1);
                let sum = parts.next().unwrap_or("").to_string();
                return Ok((sum, parts.next() == Some("ok")));
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no verify answer"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether the original process is still alive (and not a zombie).
    pub fn is_running(&mut self) -> bool {
        if let Some(inner) = self.inner {
            return alive(inner);
        }
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(Ok(Some(_))) => {
                self.child = None;
                false
            }
            _ => false,
        }
    }

    /// Reaps the original process after a dump killed it, so its pid is
    /// free for the restore. Waits at most `timeout`.
    pub fn reap(&mut self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        while let Some(child) = self.child.as_mut() {
            if child.try_wait()?.is_some() {
                self.child = None;
                break;
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the workload did not exit",
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    /// Stops owning the original process (it was restored elsewhere, say).
    pub fn forget(&mut self) {
        self.child = None;
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        if let (Some(inner), Some(_)) = (self.inner, self.child.as_ref()) {
            let _ = kill(Pid::from_raw(inner), Signal::SIGKILL);
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Makes the child a session leader (`setsid`) before exec.
pub(crate) fn new_session(cmd: &mut Command) {
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(io::Error::from)?;
            Ok(())
        });
    }
}

/// Closes every descriptor above stderr in the child before exec. libcriu
/// creates its sockets without `O_CLOEXEC`, so a process spawned while
/// another thread talks to CRIU would inherit them, and CRIU then refuses
/// to dump it ("Unix socket N not found").
pub fn close_inherited_fds(cmd: &mut Command) {
    // SAFETY: close_range is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
}

/// Parses `tick SEQ NS` lines.
pub fn read_ticks(path: &Path) -> Vec<Tick> {
    let text = fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut p = l.strip_prefix("tick ")?.split_whitespace();
            Some(Tick {
                seq: p.next()?.parse().ok()?,
                unix_ns: p.next()?.parse().ok()?,
            })
        })
        .collect()
}

/// Kills a process that is not our child by pid when dropped (a restored
/// tree, whose parent is init). Signals only the pid it was given.
#[derive(Debug)]
pub struct KillOnDrop(pub i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.0 > 0 {
            let _ = kill(Pid::from_raw(self.0), Signal::SIGKILL);
            wait_gone(self.0, Duration::from_secs(5));
        }
    }
}

/// Waits until `/proc/PID` is gone (reaped by whoever is its parent).
pub fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Path::new(&format!("/proc/{pid}")).exists() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// Whether `pid` stops being alive within a second (a task CRIU killed on
/// a failed restore may take a moment to finish dying).
pub fn dies_soon(pid: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(1);
    while alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    true
}

/// The state letter of `pid` (`R`, `S`, `T`, `Z`...) from
/// `/proc/PID/stat`, or `None` if it does not exist.
pub fn task_state(pid: i32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

/// Whether `pid` is alive and not a zombie.
pub fn alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The slack factor of the few bounds on elapsed time whose point is the
/// bound itself (a deadline that must be kept): a margin measured on the
/// machines the suite was written on (2 shared cores) is allowed this many
/// times over, so a slower or busier machine does not fail them. 3 unless
/// `CRIU_RS_TIME_SLACK` (a number >= 1) says otherwise. Each such test
/// keeps its bound well below what the defect it names would take.
pub fn time_slack() -> f64 {
    std::env::var("CRIU_RS_TIME_SLACK")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|f| f.is_finite() && *f >= 1.0)
        .unwrap_or(3.0)
}

/// `margin` times [`time_slack`].
pub fn slack(margin: Duration) -> Duration {
    margin.mul_f64(time_slack())
}

/// Polls `cond` every 2 ms until it holds (true) or `timeout` passes (false).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// An address on `ip` with a TCP port the kernel reports free (bound,
/// then released): for a test that must name a port before anything
/// listens on it (a page server, or nothing at all). Another process could
/// take the port in between, which the test then sees as a failure.
pub fn free_port(ip: std::net::IpAddr) -> io::Result<std::net::SocketAddr> {
    std::net::TcpListener::bind((ip, 0))?.local_addr()
}

/// The pid of a live (not zombie) process whose command line (arguments
/// joined by spaces, or the title CRIU gives itself) contains `needle`;
/// give a unique one (a test's own directory) so that the answer cannot be
/// another test's process.
pub fn find_process(needle: &str) -> Option<i32> {
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = fs::read(e.path().join("cmdline")).ok()?;
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        (text.contains(needle) && alive(pid)).then_some(pid)
    })
}

/// A connection to a `criu service` socket at `path` (SOCK_SEQPACKET, as
/// libcriu's), close-on-exec, for `Criu::with_service_fd`.
pub fn connect_seqpacket(path: &Path) -> io::Result<std::os::fd::OwnedFd> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    use std::os::fd::AsRawFd;
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    connect(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    Ok(fd)
}
