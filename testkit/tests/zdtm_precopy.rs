//! zdtm's static tests (CRIU's own test suite) with pre-dumps, through the
//! crate: each test program runs twice, once checkpointed with a plain
//! `dump` and once with two `pre_dump`s first (memory tracked, each pass on
//! the previous one as parent), then restored with `restore_child`, told
//! to stop with `SIGTERM`, and judged by its own verdict (`PASS` in its
//! output file). Both runs must pass: pre-copy passes where the plain
//! dump passes.
//!
//! The programs come from the CRIU source the set-up builds
//! (`scripts/setup.sh` compiles those of `testkit/zdtm/precopy.list` into
//! `/var/cache/criu-rs/zdtm`; `CRIU_RS_ZDTM_DIR` points elsewhere). They
//! are started as zdtm's Makefile starts them: `./NAME --pidfile=NAME.pid
//! --outfile=NAME.out [args]`; the program forks, its child sets itself up,
//! becomes a session leader, the parent writes the child's pid to the pid
//! file and exits. This process is a child subreaper, so the daemonized
//! test becomes its child and is reaped here, by pid.
//!
//! Like zdtm.py, the run also compares what can be seen of each task from
//! outside before the checkpoint and after the restore: its descriptors
//! and its memory map (contiguous mappings of the same protection and
//! name merged, as zdtm does). The pre-dump run additionally proves that
//! the tracking worked: its final dump takes pages from the pre-dumps.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use criu::{Criu, ImagesDir, Options};
use criu_testkit::close_inherited_fds;
use criu_testkit::skip::skip;
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

/// How long a test program may take to start, and to check itself and
/// exit once told to.
const WAIT: Duration = Duration::from_secs(60);
/// Pre-dumps before the final dump in the second run (zdtm.py's `--pre 2`).
const PRE_DUMPS: usize = 2;
/// The tests and their arguments (also read by scripts/setup.sh).
const LIST: &str = include_str!("../zdtm/precopy.list");

macro_rules! zdtm_tests {
    ($($f:ident => $name:literal),* $(,)?) => {
        $(
            #[test]
            fn $f() {
                passes_with_pre_dumps_as_without(stringify!($f), $name);
            }
        )*
        /// The tests above, by zdtm name.
        const TESTS: &[&str] = &[$($name),*];
    };
}

zdtm_tests! {
    maps00 => "maps00",
    maps01 => "maps01",
    maps02 => "maps02",
    maps04 => "maps04",
    maps05 => "maps05",
    maps06 => "maps06",
    mprotect00 => "mprotect00",
    mem_touch => "mem-touch",
    cow00 => "cow00",
    cow01 => "cow01",
    thp_disable => "thp_disable",
    pthread00 => "pthread00",
    sigaltstack => "sigaltstack",
    fpu00 => "fpu00",
    mmx00 => "mmx00",
    env00 => "env00",
    pipe00 => "pipe00",
}

/// The tests of the list, each with its arguments.
fn listed() -> BTreeMap<&'static str, Vec<&'static str>> {
    LIST.lines()
        .map(|l| l.split('#').next().unwrap_or("").split_whitespace())
        .filter_map(|mut words| Some((words.next()?, words.collect())))
        .collect()
}

#[test]
fn every_listed_zdtm_test_runs() {
    let names: BTreeSet<&str> = listed().into_keys().collect();
    let here: BTreeSet<&str> = TESTS.iter().copied().collect();
    assert_eq!(
        names, here,
        "testkit/zdtm/precopy.list (what the set-up builds) and the tests of this file differ"
    );
}

/// Where the set-up built zdtm's programs.
fn zdtm_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CRIU_RS_ZDTM_DIR") {
        return d.into();
    }
    let state =
        std::env::var_os("CRIU_RS_STATE_DIR").unwrap_or_else(|| "/var/cache/criu-rs".into());
    Path::new(&state).join("zdtm")
}

fn passes_with_pre_dumps_as_without(test: &str, name: &str) {
    let id = format!("zdtm_precopy::{test}");
    let bin = zdtm_dir().join("static").join(name);
    if !bin.is_file() {
        skip(
            &id,
            &format!(
                "{} is not built: `make setup` builds zdtm's programs from CRIU's source",
                bin.display()
            ),
        );
        return;
    }
    let args = listed().remove(name).expect("every test is listed");
    become_subreaper();

    let t = Instant::now();
    let plain = match run(&bin, name, &args, 0) {
        Ok(r) => r,
        Err(e) => panic!("{name} fails without pre-dumps (so it cannot show anything here): {e}"),
    };
    eprintln!(
        "{name} without pre-dumps: PASS in {:?} ({plain})",
        t.elapsed()
    );
    if Criu::new()
        .feature_check()
        .unwrap()
        .mem_track_method
        .is_none()
    {
        skip(
            &id,
            "CRIU cannot track memory here (no soft-dirty bits, and a CRIU without \
             patches/criu-uffd-wp-track.patch: run `make setup`)",
        );
        return;
    }
    let t = Instant::now();
    let pre = match run(&bin, name, &args, PRE_DUMPS) {
        Ok(r) => r,
        Err(e) => panic!("{name} passes without pre-dumps but fails with {PRE_DUMPS}: {e}"),
    };
    eprintln!(
        "{name} with {PRE_DUMPS} pre-dumps: PASS in {:?} ({pre})",
        t.elapsed()
    );
    assert!(
        pre.from_parents > 0,
        "{name}: the final dump took nothing from the pre-dumps ({pre})"
    );
}

/// Makes this process the reaper of its orphaned descendants: a test
/// program's daemon becomes its child when the program's first process
/// exits.
fn become_subreaper() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert_eq!(
            rc,
            0,
            "PR_SET_CHILD_SUBREAPER: {}",
            std::io::Error::last_os_error()
        );
    });
}

/// What the final dump of a run wrote.
struct Pages {
    written: u64,
    from_parents: u64,
}

impl std::fmt::Display for Pages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "final dump wrote {} pages, took {} from the pre-dumps",
            self.written, self.from_parents
        )
    }
}

/// One run: start, `pre_dumps` pre-dumps, dump, restore, compare, stop,
/// verdict. An error names the step.
fn run(bin: &Path, name: &str, args: &[&str], pre_dumps: usize) -> Result<Pages, String> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("criu-rs-zdtm-{name}-"))
        .tempdir()
        .map_err(|e| format!("temp dir: {e}"))?;
    let cwd = dir.path();
    let mut tree = start(bin, name, args, cwd)?;
    let before = Visible::of(&tree);

    let criu = Criu::new();
    let step = |what: String| move |e: criu::Error| format!("{what}: {e}");
    let images = |n: &str| ImagesDir::create(cwd.join(n)).map_err(step(format!("images {n}")));
    let mut parent: Option<ImagesDir> = None;
    for i in 1..=pre_dumps {
        let d = images(&format!("pre-{i}"))?;
        {
            let mut o = Options::new();
            o.pid(tree.root).images_dir(&d).track_mem(true);
            if let Some(p) = &parent {
                o.parent_images(d.parent_link(p).map_err(step("parent link".into()))?);
            }
            criu.pre_dump(&mut o)
                .map_err(step(format!("pre-dump {i}")))?;
        }
        parent = Some(d);
    }
    let fin = images("dump")?;
    let report = {
        let mut o = Options::new();
        o.pid(tree.root).images_dir(&fin);
        if let Some(p) = &parent {
            o.parent_images(fin.parent_link(p).map_err(step("parent link".into()))?)
                .track_mem(true);
        }
        let pids = tree.pids();
        let r = criu.dump(&mut o).map_err(step("dump".into()))?;
        // CRIU killed the tree: reap it before its pids are asked for again.
        tree.reap_killed(&pids);
        r
    };
    let stats = report
        .stats
        .as_ref()
        .ok_or("the dump reported no statistics")?;
    let pages = Pages {
        written: stats.pages_written,
        from_parents: stats.pages_skipped_parent,
    };

    let (child, _) = criu
        .restore_child(Options::new().images_dir(&fin))
        .map_err(step("restore".into()))?;
    let mut tree = Tree::new(child.detach());
    let after = Visible::of(&tree);
    if after != before {
        return Err(format!(
            "what is visible of the tasks changed across the checkpoint: {}",
            before.difference(&after)
        ));
    }
    tree.stop()?;
    verdict(cwd, name)?;
    Ok(pages)
}

/// Starts a test program in `cwd` and waits until it is set up (its first
/// process exits once the daemon it forked is ready).
fn start(bin: &Path, name: &str, args: &[&str], cwd: &Path) -> Result<Tree, String> {
    let log = fs::File::create(cwd.join("start.log")).map_err(|e| format!("start.log: {e}"))?;
    let mut cmd = Command::new(bin);
    // Only stdin, stdout and stderr, as zdtm.py starts them (Python's
    // close_fds): a descriptor this process leaves open to its children
    // (libcriu's socket to CRIU, when a test in another thread is talking
    // to it) would shift the numbers a test's own descriptors get, and
    // pipe00, for one, dup2()s onto fixed numbers.
    close_inherited_fds(&mut cmd);
    let mut first = cmd
        .current_dir(cwd)
        .arg(format!("--pidfile={name}.pid"))
        .arg(format!("--outfile={name}.out"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("start {}: {e}", bin.display()))?;
    let deadline = Instant::now() + WAIT;
    let status = loop {
        match first.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = first.kill();
                let _ = first.wait();
                return Err(format!("{name} did not start within {WAIT:?}"));
            }
        }
    };
    let pid = fs::read_to_string(cwd.join(format!("{name}.pid")))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    match pid {
        Some(pid) if status.success() => Ok(Tree::new(pid)),
        _ => Err(format!(
            "{name} failed to start ({status}): {}{}",
            read(&cwd.join("start.log")),
            read(&cwd.join(format!("{name}.out.inprogress")))
        )),
    }
}

/// The test's own verdict: `PASS` in its output file, as zdtm.py reads it.
fn verdict(cwd: &Path, name: &str) -> Result<(), String> {
    let out = read(&cwd.join(format!("{name}.out")));
    if out.split_whitespace().any(|w| w == "PASS") {
        return Ok(());
    }
    Err(format!(
        "{name} did not pass; its output:\n{out}{}",
        read(&cwd.join(format!("{name}.out.inprogress")))
    ))
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

/// A process tree of this test whose root is a child of this process (by
/// reparenting to this subreaper, or restored as a child). Dropping it
/// kills and reaps whatever is left of it.
struct Tree {
    root: i32,
    reaped: bool,
}

impl Tree {
    fn new(root: i32) -> Tree {
        Tree {
            root,
            reaped: false,
        }
    }

    /// The root and its descendants, parents before children.
    fn pids(&self) -> Vec<i32> {
        let mut pids = vec![self.root];
        let mut i = 0;
        while i < pids.len() {
            let p = pids[i];
            i += 1;
            let Ok(tasks) = fs::read_dir(format!("/proc/{p}/task")) else {
                continue;
            };
            for t in tasks.flatten() {
                let children = read(&t.path().join("children"));
                pids.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<i32>().ok()),
                );
            }
        }
        pids
    }

    /// Reaps a tree that was killed: the root, then each of `pids` that
    /// became this process's child as its parent died.
    fn reap_killed(&mut self, pids: &[i32]) {
        if !self.reaped {
            let _ = waitpid(Pid::from_raw(self.root), None);
            self.reaped = true;
        }
        for &p in pids.iter().filter(|&&p| p != self.root) {
            if parent_of(p) == Some(std::process::id() as i32) {
                let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
                let _ = waitpid(Pid::from_raw(p), None);
            }
        }
    }

    /// Sends `SIGTERM` (the test then checks itself and exits) and waits
    /// for the root to exit.
    fn stop(&mut self) -> Result<(), String> {
        let pids = self.pids();
        kill(Pid::from_raw(self.root), Signal::SIGTERM).map_err(|e| format!("SIGTERM: {e}"))?;
        let deadline = Instant::now() + WAIT;
        loop {
            match waitpid(
                Pid::from_raw(self.root),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            ) {
                Ok(nix::sys::wait::WaitStatus::StillAlive) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(nix::sys::wait::WaitStatus::StillAlive) => {
                    return Err(format!(
                        "the restored test did not exit within {WAIT:?} of SIGTERM"
                    ))
                }
                Ok(_) | Err(Errno::ECHILD) => break,
                Err(Errno::EINTR) => {}
                Err(e) => return Err(format!("waitpid: {e}")),
            }
        }
        self.reaped = true;
        self.reap_killed(&pids);
        Ok(())
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        let pids = self.pids();
        for &p in &pids {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
        self.reap_killed(&pids);
    }
}

/// The parent pid of `pid`, from `/proc/PID/stat`.
fn parent_of(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...: comm may hold spaces and parentheses.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// What zdtm.py compares before the checkpoint and after the restore, for
/// every task of the tree: its descriptor numbers and its memory map.
#[derive(Debug, PartialEq)]
struct Visible {
    fds: BTreeMap<i32, BTreeSet<String>>,
    maps: BTreeMap<i32, Vec<String>>,
}

impl Visible {
    /// What `self` had that `new` lacks, and the reverse, per task.
    fn difference(&self, new: &Visible) -> String {
        let mut out = String::new();
        let pids: BTreeSet<i32> = self.fds.keys().chain(new.fds.keys()).copied().collect();
        for p in pids {
            let diff = |a: Option<BTreeSet<String>>, b: Option<BTreeSet<String>>| {
                let (a, b) = (a.unwrap_or_default(), b.unwrap_or_default());
                let lost: Vec<_> = a.difference(&b).cloned().collect();
                let new: Vec<_> = b.difference(&a).cloned().collect();
                (lost, new)
            };
            let set =
                |m: &BTreeMap<i32, Vec<String>>| m.get(&p).map(|v| v.iter().cloned().collect());
            for (what, (lost, appeared)) in [
                (
                    "fds",
                    diff(self.fds.get(&p).cloned(), new.fds.get(&p).cloned()),
                ),
                ("maps", diff(set(&self.maps), set(&new.maps))),
            ] {
                if !lost.is_empty() || !appeared.is_empty() {
                    out += &format!("\n  task {p}: {what} lost {lost:?}, appeared {appeared:?}");
                }
            }
        }
        out
    }

    fn of(tree: &Tree) -> Visible {
        let mut v = Visible {
            fds: BTreeMap::new(),
            maps: BTreeMap::new(),
        };
        for p in tree.pids() {
            let fds = fs::read_dir(format!("/proc/{p}/fd"))
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            v.fds.insert(p, fds);
            v.maps
                .insert(p, merged_maps(&read(Path::new(&format!("/proc/{p}/maps")))));
        }
        v
    }
}

/// `/proc/PID/maps` as `start-end perms`, adjacent mappings with the same
/// protection merged, as zdtm.py compares them: the kernel may split or
/// merge mappings differently after a restore, and names may change
/// without anything having changed (CRIU restores shared anonymous memory
/// through a memfd, `/dev/zero` before, `/memfd:/dev/zero` after).
fn merged_maps(maps: &str) -> Vec<String> {
    let mut out: Vec<(u64, u64, String)> = Vec::new();
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        let Some((s, e)) = range.split_once('-') else {
            continue;
        };
        let (Ok(s), Ok(e)) = (u64::from_str_radix(s, 16), u64::from_str_radix(e, 16)) else {
            continue;
        };
        match out.last_mut() {
            Some(last) if last.1 == s && last.2 == perms => last.1 = e,
            _ => out.push((s, e, perms.to_string())),
        }
    }
    out.into_iter()
        .map(|(s, e, p)| format!("{s:x}-{e:x} {p}"))
        .collect()
}
