//! The options of a request: every setter and adder of libcriu's
//! `criu_local_*` API, typed, plus the CRIU options libcriu has no setter for.
//!
//! An [`Options`] value only records what the caller asked for; each
//! operation turns it into a fresh libcriu handle, so a failed call never
//! leaves it half-cleared and it can be reused.

use std::ffi::{c_char, c_int, c_uint, CString, OsString};
use std::fmt;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, InvalidKind, Result};
use crate::images::ImagesDir;
// NotifyFn is re-exported here because migration code names it by this path.
use crate::notify::Notification;
pub(crate) use crate::notify::NotifyFn;
use crate::raw::{c_path, c_string, cvt, RawOpts};
use crate::sys;

/// How much CRIU writes to its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum LogLevel {
    /// Messages that are always printed.
    Msg,
    /// Errors only.
    Error,
    /// Errors and warnings (CRIU's default).
    #[default]
    Warn,
    /// Informative messages too.
    Info,
    /// Everything.
    Debug,
}

impl LogLevel {
    fn raw(self) -> i32 {
        (match self {
            LogLevel::Msg => sys::CRIU_LOG_MSG,
            LogLevel::Error => sys::CRIU_LOG_ERROR,
            LogLevel::Warn => sys::CRIU_LOG_WARN,
            LogLevel::Info => sys::CRIU_LOG_INFO,
            LogLevel::Debug => sys::CRIU_LOG_DEBUG,
        }) as i32
    }
}

/// How CRIU treats cgroups (`--manage-cgroups=MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CgroupMode {
    /// Do not dump or restore cgroups at all.
    Ignore,
    /// Dump cgroup membership, restore into existing cgroups only.
    None,
    /// Restore only the properties of existing cgroups.
    Props,
    /// Restore properties of cgroups CRIU creates (CRIU's default).
    Soft,
    /// Restore all properties, failing on existing cgroups' mismatches.
    Full,
    /// Like full, and fail if a cgroup already exists.
    Strict,
    /// CRIU's built-in default mode.
    Default,
}

impl CgroupMode {
    fn raw(self) -> sys::criu_cg_mode {
        match self {
            CgroupMode::Ignore => sys::criu_cg_mode_CRIU_CG_MODE_IGNORE,
            CgroupMode::None => sys::criu_cg_mode_CRIU_CG_MODE_NONE,
            CgroupMode::Props => sys::criu_cg_mode_CRIU_CG_MODE_PROPS,
            CgroupMode::Soft => sys::criu_cg_mode_CRIU_CG_MODE_SOFT,
            CgroupMode::Full => sys::criu_cg_mode_CRIU_CG_MODE_FULL,
            CgroupMode::Strict => sys::criu_cg_mode_CRIU_CG_MODE_STRICT,
            CgroupMode::Default => sys::criu_cg_mode_CRIU_CG_MODE_DEFAULT,
        }
    }
}

/// How the network is locked while tasks are frozen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NetworkLock {
    /// iptables rules (CRIU's default; needs `iptables-restore`).
    Iptables,
    /// An nftables table.
    Nftables,
    /// Do not lock the network (the caller does it, or it is not needed).
    Skip,
}

impl NetworkLock {
    fn raw(self) -> sys::criu_network_lock_method {
        match self {
            NetworkLock::Iptables => sys::criu_network_lock_method_CRIU_NETWORK_LOCK_IPTABLES,
            NetworkLock::Nftables => sys::criu_network_lock_method_CRIU_NETWORK_LOCK_NFTABLES,
            NetworkLock::Skip => sys::criu_network_lock_method_CRIU_NETWORK_LOCK_SKIP,
        }
    }
}

/// How pre-dumps read memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PreDumpMode {
    /// vmsplice pages into pipes (the default; tasks frozen longer).
    Splice,
    /// process_vm_readv (tasks frozen for less time).
    Read,
}

impl PreDumpMode {
    fn raw(self) -> sys::criu_pre_dump_mode {
        match self {
            PreDumpMode::Splice => sys::criu_pre_dump_mode_CRIU_PRE_DUMP_SPLICE,
            PreDumpMode::Read => sys::criu_pre_dump_mode_CRIU_PRE_DUMP_READ,
        }
    }
}

/// Which CPU capabilities must match between dump and restore (`--cpu-cap`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CpuCap(u32);

impl CpuCap {
    /// Check nothing.
    pub const NONE: CpuCap = CpuCap(0);
    /// FPU capabilities.
    pub const FPU: CpuCap = CpuCap(1);
    /// All CPU features, strictly.
    pub const CPU: CpuCap = CpuCap(2);
    /// Instruction set capabilities.
    pub const INS: CpuCap = CpuCap(4);
    /// Write the CPU info image on dump, check it on restore.
    pub const IMAGE: CpuCap = CpuCap(8);
    /// FPU, CPU and INS.
    pub const ALL: CpuCap = CpuCap(1 | 2 | 4);
    /// CRIU's default: FPU and INS.
    pub const DEFAULT: CpuCap = CpuCap(1 | 4);

    /// The raw bit mask CRIU uses.
    pub fn bits(self) -> u32 {
        self.0
    }
}

impl std::ops::BitOr for CpuCap {
    type Output = CpuCap;
    fn bitor(self, rhs: CpuCap) -> CpuCap {
        CpuCap(self.0 | rhs.0)
    }
}

/// A namespace kind, for `join_ns` and `empty_ns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Namespace {
    /// Network namespace.
    Net,
    /// UTS (host name) namespace.
    Uts,
    /// System V IPC namespace.
    Ipc,
    /// PID namespace.
    Pid,
    /// User namespace.
    User,
    /// Mount namespace.
    Mnt,
    /// Cgroup namespace.
    Cgroup,
    /// Time namespace.
    Time,
}

impl Namespace {
    /// The name CRIU's `--join-ns` takes.
    pub fn name(self) -> &'static str {
        match self {
            Namespace::Net => "net",
            Namespace::Uts => "uts",
            Namespace::Ipc => "ipc",
            Namespace::Pid => "pid",
            Namespace::User => "user",
            Namespace::Mnt => "mnt",
            Namespace::Cgroup => "cgroup",
            Namespace::Time => "time",
        }
    }

    #[cfg_attr(not(criu_3_19), allow(dead_code))]
    fn clone_flag(self) -> i32 {
        match self {
            Namespace::Net => libc::CLONE_NEWNET,
            Namespace::Uts => libc::CLONE_NEWUTS,
            Namespace::Ipc => libc::CLONE_NEWIPC,
            Namespace::Pid => libc::CLONE_NEWPID,
            Namespace::User => libc::CLONE_NEWUSER,
            Namespace::Mnt => libc::CLONE_NEWNS,
            Namespace::Cgroup => libc::CLONE_NEWCGROUP,
            Namespace::Time => libc::CLONE_NEWTIME,
        }
    }
}

/// How CRIU checks files a process has open before restoring
/// (`--file-validation`, a CLI-only option).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FileValidation {
    /// Compare file sizes only.
    FileSize,
    /// Compare ELF build-ids where there are any (CRIU's default).
    BuildId,
}

/// A namespace the restored tasks join instead of getting a new one.
#[derive(Debug, Clone, PartialEq, Eq)]
struct JoinNs {
    ns: Namespace,
    file: PathBuf,
    extra: Option<String>,
}

macro_rules! bool_options {
    ($( $(#[$doc:meta])* $name:ident => $setter:ident ),* $(,)?) => {
        /// On/off options, each mapped to one libcriu setter.
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        struct Flags { $( $name: Option<bool>, )* }

        impl Flags {
            fn apply(&self, raw: &RawOpts) {
                $(
                    if let Some(v) = self.$name {
                        // SAFETY: raw is a live criu_opts; the setter copies a bool.
                        unsafe { sys::$setter(raw.as_ptr(), v) };
                    }
                )*
            }
        }

        impl<'a> Options<'a> {
            $(
                $(#[$doc])*
                pub fn $name(&mut self, on: bool) -> &mut Self {
                    self.flags.$name = Some(on);
                    self
                }
            )*
        }
    };
}

bool_options! {
    /// Leave the tasks running after a successful dump (`--leave-running`).
    leave_running => criu_local_set_leave_running,
    /// Allow external unix sockets (`--ext-unix-sk`).
    ext_unix_sk => criu_local_set_ext_unix_sk,
    /// Checkpoint established TCP connections (`--tcp-established`).
    tcp_established => criu_local_set_tcp_established,
    /// Skip connections still being established (`--skip-in-flight`).
    tcp_skip_in_flight => criu_local_set_tcp_skip_in_flight,
    /// Close established TCP connections on dump (`--tcp-close`).
    tcp_close => criu_local_set_tcp_close,
    /// Do not fail on sysctls missing on the restoring kernel (`--weak-sysctls`).
    weak_sysctls => criu_local_set_weak_sysctls,
    /// Allow device files to be replaced by similar ones (`--evasive-devices`).
    evasive_devices => criu_local_set_evasive_devices,
    /// The tree is a job of the caller's terminal session (`--shell-job`).
    shell_job => criu_local_set_shell_job,
    /// Send a master pts fd for orphaned slave ptys (`--orphan-pts-master`);
    /// it arrives in [`crate::Event::OrphanPtsMaster`].
    orphan_pts_master => criu_local_set_orphan_pts_master,
    /// Checkpoint file locks (`--file-locks`).
    file_locks => criu_local_set_file_locks,
    /// Track memory changes for incremental dumps (`--track-mem`; needs
    /// soft-dirty tracking in the kernel, see [`crate::Features::mem_track`]).
    track_mem => criu_local_set_track_mem,
    /// Punch holes in parent images for pages dumped again (`--auto-dedup`).
    auto_dedup => criu_local_set_auto_dedup,
    /// Force resolving inotify/fsnotify watch names (`--force-irmap`).
    force_irmap => criu_local_set_force_irmap,
    /// Link-remap unlinked open files (`--link-remap`).
    link_remap => criu_local_set_link_remap,
    /// Let CRIU manage cgroups (`--manage-cgroups`).
    manage_cgroups => criu_local_set_manage_cgroups,
    /// Automatically treat external mounts as external (`--ext-mount-map auto`).
    auto_ext_mnt => criu_local_set_auto_ext_mnt,
    /// Allow external mounts to share (`--enable-external-sharing`).
    ext_sharing => criu_local_set_ext_sharing,
    /// Allow external mounts to be masters (`--enable-external-masters`).
    ext_masters => criu_local_set_ext_masters,
    /// Use the older mount namespace restore engine (`--mntns-compat-mode`).
    mntns_compat_mode => criu_local_set_mntns_compat_mode,
}

/// Everything a request can carry. Build with the setters, which return
/// `&mut Self`, then pass `&mut Options` to an operation of [`crate::Criu`].
///
/// The lifetime `'a` ties borrowed descriptors (images and work directories,
/// inherited fds, the pidfd store socket) and the notification closure to
/// the options, so they outlive every call made with them.
#[derive(Default)]
pub struct Options<'a> {
    pid: Option<i32>,
    images_dir: Option<BorrowedFd<'a>>,
    images_dir_holds_images: bool,
    work_dir: Option<BorrowedFd<'a>>,
    overwrite_images: bool,
    skip_image_check: bool,
    parent_images: Option<PathBuf>,
    flags: Flags,
    #[cfg(criu_3_19)]
    skip_file_rwx_check: Option<bool>,
    log_level: Option<LogLevel>,
    log_file: Option<String>,
    cpu_cap: Option<CpuCap>,
    root: Option<PathBuf>,
    cgroup_mode: Option<CgroupMode>,
    freeze_cgroup: Option<PathBuf>,
    lsm_profile: Option<String>,
    lsm_mount_context: Option<String>,
    timeout: Option<Duration>,
    exec_cmd: Option<Vec<OsString>>,
    unix_sk_inodes: Vec<u32>,
    ext_mounts: Vec<(String, String)>,
    veth_pairs: Vec<(String, String)>,
    cg_roots: Vec<(Option<String>, PathBuf)>,
    cg_props: Option<String>,
    cg_props_file: Option<PathBuf>,
    cg_dump_controllers: Vec<String>,
    cg_yard: Option<PathBuf>,
    enable_fs: Vec<String>,
    skip_mnt: Vec<PathBuf>,
    ghost_limit: Option<u32>,
    irmap_paths: Vec<PathBuf>,
    inherit_fds: Vec<(BorrowedFd<'a>, String)>,
    externals: Vec<String>,
    page_server: Option<SocketAddr>,
    pre_dump_mode: Option<PreDumpMode>,
    pidfd_store_sk: Option<BorrowedFd<'a>>,
    network_lock: Option<NetworkLock>,
    join_ns: Vec<JoinNs>,
    #[cfg(criu_3_19)]
    empty_ns: Vec<Namespace>,
    #[cfg(criu_3_19)]
    config_file: Option<PathBuf>,
    // CLI-only options, passed through a config file the crate writes.
    lazy_pages: bool,
    unprivileged: bool,
    restore_sibling: bool,
    deadline: Option<Duration>,
    lazy_address: Option<SocketAddr>,
    file_validation: Option<FileValidation>,
    criu_tls: Option<crate::credentials::TlsFiles>,
    pub(crate) notify: Option<Box<NotifyFn<'a>>>,
}

impl fmt::Debug for Options<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("pid", &self.pid)
            .field("images_dir", &self.images_dir)
            .field("work_dir", &self.work_dir)
            .field("flags", &self.flags)
            .field("log_file", &self.log_file)
            .field("lazy_pages", &self.lazy_pages)
            .field("notify", &self.notify.as_ref().map(|_| "closure"))
            .finish_non_exhaustive()
    }
}

/// Rows of a setter table: `value, "what it is" => setter` becomes
/// `(value, what, sys::setter, "setter")`, the setter named once and its
/// name kept for errors.
macro_rules! rows {
    ($ty:ty: $( $value:expr, $what:literal => $setter:ident ),* $(,)?) => {
        [ $( ($value, $what, sys::$setter as $ty, stringify!($setter)) ),* ]
    };
}

/// Table rows whose value is a list, as one row per item.
fn expand<T, S: Copy, const N: usize>(
    rows: [(Vec<T>, &'static str, S, &'static str); N],
) -> Vec<(T, &'static str, S, &'static str)> {
    rows.into_iter()
        .flat_map(|(items, what, setter, name)| {
            items.into_iter().map(move |v| (v, what, setter, name))
        })
        .collect()
}

/// The two strings of a two-string setter; the first may be missing.
type TextPair<'v> = (Option<&'v [u8]>, &'v [u8]);

fn text_pair((first, second): &(String, String)) -> TextPair<'_> {
    (Some(first.as_bytes()), second.as_bytes())
}

/// A libcriu setter taking one signed number (or a descriptor).
type IntSetter = unsafe extern "C" fn(*mut sys::criu_opts, c_int);
/// A libcriu setter taking one unsigned number.
type UintSetter = unsafe extern "C" fn(*mut sys::criu_opts, c_uint);
/// A libcriu setter taking one string.
type TextSetter = unsafe extern "C" fn(*mut sys::criu_opts, *const c_char) -> c_int;
/// A libcriu setter taking two strings (the first may be NULL for some).
type PairSetter = unsafe extern "C" fn(*mut sys::criu_opts, *const c_char, *const c_char) -> c_int;

/// A C string from text or path bytes, rejecting interior NULs.
fn c_bytes(value: &[u8], what: &str) -> Result<CString> {
    CString::new(value).map_err(|_| {
        invalid(format!(
            "{what} {:?} contains a NUL byte",
            String::from_utf8_lossy(value)
        ))
    })
}

fn path_bytes(path: &Path) -> &[u8] {
    path.as_os_str().as_bytes()
}

fn texts(values: &[String]) -> Vec<&[u8]> {
    values.iter().map(String::as_bytes).collect()
}

fn paths(values: &[PathBuf]) -> Vec<&[u8]> {
    values.iter().map(|p| path_bytes(p)).collect()
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::invalid(None, InvalidKind::Malformed, msg)
}

/// Rejects values that could not survive a line of CRIU's config file.
fn config_value(value: &str, what: &str) -> Result<()> {
    if value.is_empty()
        || value
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | '#' | '\\'))
    {
        return Err(invalid(format!(
            "{what} {value:?} cannot be passed to CRIU (empty, or holds spaces, quotes or '#')"
        )));
    }
    Ok(())
}

impl<'a> Options<'a> {
    /// Empty options: CRIU's defaults for everything.
    pub fn new() -> Options<'a> {
        Options::default()
    }

    /// The root of the process tree to dump (`-t PID`).
    pub fn pid(&mut self, pid: i32) -> &mut Self {
        self.pid = Some(pid);
        self
    }

    /// The directory images are written to or read from (`-D`). The
    /// directory must stay open for as long as these options are used.
    pub fn images_dir(&mut self, dir: &'a ImagesDir) -> &mut Self {
        self.images_dir = Some(dir.as_fd());
        self.images_dir_holds_images = dir.holds_images();
        self
    }

    /// Like [`Options::images_dir`], from any directory descriptor. The
    /// crate cannot tell whether it already holds images.
    pub fn images_dir_fd(&mut self, dir: BorrowedFd<'a>) -> &mut Self {
        self.images_dir = Some(dir);
        self.images_dir_holds_images = false;
        self
    }

    /// Where CRIU writes its log and statistics (`-W`; default: the images
    /// directory).
    pub fn work_dir(&mut self, dir: &'a impl AsFd) -> &mut Self {
        self.work_dir = Some(dir.as_fd());
        self
    }

    /// Allow a dump into an images directory that already holds a
    /// checkpoint, replacing it. Off by default: a dump refuses such a
    /// directory rather than mixing two checkpoints.
    pub fn overwrite_images(&mut self, allow: bool) -> &mut Self {
        self.overwrite_images = allow;
        self
    }

    /// Before a restore, check the checkpoint (on by default): every image
    /// CRIU opens for the root task is present and not empty, and every
    /// `pages-*.img` holds exactly the pages its `pagemap-*.img` announces.
    /// A damaged checkpoint is then refused in milliseconds with
    /// [`crate::Error::BadImage`] naming the file, before CRIU starts (a
    /// truncated pages image makes CRIU 4.2.1 spin forever). `false` skips
    /// the check, e.g. to let CRIU itself see the damage.
    pub fn verify_images(&mut self, on: bool) -> &mut Self {
        self.skip_image_check = !on;
        self
    }

    /// Images of a previous (pre-)dump to take unchanged pages from
    /// (`--prev-images-dir`). The path is relative to the images directory
    /// and must stay inside the checkpoint root (no absolute path, no more
    /// than one leading `..`); [`ImagesDir::parent_link`] computes it.
    pub fn parent_images(&mut self, relative: impl AsRef<Path>) -> &mut Self {
        self.parent_images = Some(relative.as_ref().to_path_buf());
        self
    }

    /// Skip the check that files' read/write/execute permissions are
    /// unchanged on restore (`--skip-file-rwx-check`).
    #[cfg(criu_3_19)]
    pub fn skip_file_rwx_check(&mut self, skip: bool) -> &mut Self {
        self.skip_file_rwx_check = Some(skip);
        self
    }

    /// CRIU's log level (`-v`).
    pub fn log_level(&mut self, level: LogLevel) -> &mut Self {
        self.log_level = Some(level);
        self
    }

    /// The log file's name inside the work directory (`-o`). CRIU accepts
    /// no `/` in it. Without it CRIU writes `criu.log` there.
    pub fn log_file(&mut self, name: impl Into<String>) -> &mut Self {
        self.log_file = Some(name.into());
        self
    }

    /// The name of the log file CRIU will write in the work directory.
    pub(crate) fn log_file_name(&self) -> &str {
        self.log_file.as_deref().unwrap_or("criu.log")
    }

    /// CPU capabilities to check (`--cpu-cap`).
    pub fn cpu_cap(&mut self, cap: CpuCap) -> &mut Self {
        self.cpu_cap = Some(cap);
        self
    }

    /// The root of the restored tree's filesystem (`--root`).
    pub fn root(&mut self, root: impl AsRef<Path>) -> &mut Self {
        self.root = Some(root.as_ref().to_path_buf());
        self
    }

    /// The cgroup management mode (`--manage-cgroups=MODE`).
    pub fn manage_cgroups_mode(&mut self, mode: CgroupMode) -> &mut Self {
        self.cgroup_mode = Some(mode);
        self
    }

    /// Freeze the tree with this freezer cgroup (`--freeze-cgroup`).
    pub fn freeze_cgroup(&mut self, cgroup: impl AsRef<Path>) -> &mut Self {
        self.freeze_cgroup = Some(cgroup.as_ref().to_path_buf());
        self
    }

    /// The LSM profile to restore with (`--lsm-profile`, e.g. `apparmor:NAME`).
    pub fn lsm_profile(&mut self, profile: impl Into<String>) -> &mut Self {
        self.lsm_profile = Some(profile.into());
        self
    }

    /// The LSM mount context (`--lsm-mount-context`).
    pub fn lsm_mount_context(&mut self, context: impl Into<String>) -> &mut Self {
        self.lsm_mount_context = Some(context.into());
        self
    }

    /// How long CRIU may take to collect (freeze) the tasks (`--timeout`),
    /// rounded up to whole seconds. It does not bound the rest of the dump.
    /// libcriu 4.2.1's setter stores the value without marking it present,
    /// so CRIU would keep its default of 10 s: the crate passes it through
    /// its config file too (so, like the CLI-only options, it cannot be
    /// combined with [`Options::config_file`]).
    pub fn timeout(&mut self, timeout: Duration) -> &mut Self {
        self.timeout = Some(timeout);
        self
    }

    /// Run a command instead of resuming the restored tree (`--exec-cmd`).
    pub fn exec_cmd<I, S>(&mut self, argv: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.exec_cmd = Some(argv.into_iter().map(Into::into).collect());
        self
    }

    /// An external unix socket, by inode (`--ext-unix-sk=INODE`).
    pub fn add_unix_sk(&mut self, inode: u32) -> &mut Self {
        self.unix_sk_inodes.push(inode);
        self
    }

    /// An external mount (`--ext-mount-map KEY:VALUE`).
    pub fn add_ext_mount(&mut self, key: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.ext_mounts.push((key.into(), value.into()));
        self
    }

    /// A veth pair to restore with (`--veth-pair IN=OUT`).
    pub fn add_veth_pair(
        &mut self,
        inside: impl Into<String>,
        outside: impl Into<String>,
    ) -> &mut Self {
        self.veth_pairs.push((inside.into(), outside.into()));
        self
    }

    /// A cgroup root for a controller, or for all (`--cgroup-root`).
    pub fn add_cg_root(&mut self, controller: Option<&str>, path: impl AsRef<Path>) -> &mut Self {
        self.cg_roots
            .push((controller.map(str::to_string), path.as_ref().to_path_buf()));
        self
    }

    /// Cgroup properties to restore, as YAML text (`--cgroup-props`).
    pub fn cg_props(&mut self, yaml: impl Into<String>) -> &mut Self {
        self.cg_props = Some(yaml.into());
        self
    }

    /// A file of cgroup properties (`--cgroup-props-file`).
    pub fn cg_props_file(&mut self, path: impl AsRef<Path>) -> &mut Self {
        self.cg_props_file = Some(path.as_ref().to_path_buf());
        self
    }

    /// A cgroup controller to dump (`--cgroup-dump-controller`).
    pub fn add_cg_dump_controller(&mut self, name: impl Into<String>) -> &mut Self {
        self.cg_dump_controllers.push(name.into());
        self
    }

    /// Where CRIU mounts cgroup controllers (`--cgroup-yard`).
    pub fn cg_yard(&mut self, path: impl AsRef<Path>) -> &mut Self {
        self.cg_yard = Some(path.as_ref().to_path_buf());
        self
    }

    /// A filesystem to dump and restore in full (`--enable-fs`).
    pub fn add_enable_fs(&mut self, fs: impl Into<String>) -> &mut Self {
        self.enable_fs.push(fs.into());
        self
    }

    /// A mount point to skip (`--skip-mnt`).
    pub fn add_skip_mnt(&mut self, mount_point: impl AsRef<Path>) -> &mut Self {
        self.skip_mnt.push(mount_point.as_ref().to_path_buf());
        self
    }

    /// The largest deleted file kept in the images, in bytes (`--ghost-limit`).
    pub fn ghost_limit(&mut self, bytes: u32) -> &mut Self {
        self.ghost_limit = Some(bytes);
        self
    }

    /// A path to search when resolving inotify watches (`--irmap-scan-path`).
    pub fn add_irmap_path(&mut self, path: impl AsRef<Path>) -> &mut Self {
        self.irmap_paths.push(path.as_ref().to_path_buf());
        self
    }

    /// Hand a descriptor of the caller to the restored tree in place of the
    /// resource named `key` (`--inherit-fd fd[N]:KEY`). Only works when
    /// CRIU runs as the caller's child (the default service). The
    /// descriptor must not be close-on-exec (CRIU is started with an exec);
    /// the operation refuses one that is, rather than change its flags.
    pub fn add_inherit_fd(&mut self, fd: BorrowedFd<'a>, key: impl Into<String>) -> &mut Self {
        self.inherit_fds.push((fd, key.into()));
        self
    }

    /// An external resource (`--external KEY`), e.g. `mnt[/x]:name`.
    pub fn add_external(&mut self, key: impl Into<String>) -> &mut Self {
        self.externals.push(key.into());
        self
    }

    /// Send memory pages to a page server instead of the images directory
    /// (`--page-server --address A --port P`).
    pub fn page_server(&mut self, addr: SocketAddr) -> &mut Self {
        self.page_server = Some(addr);
        self
    }

    /// How pre-dumps read memory (`--pre-dump-mode`).
    pub fn pre_dump_mode(&mut self, mode: PreDumpMode) -> &mut Self {
        self.pre_dump_mode = Some(mode);
        self
    }

    /// A unix socket where CRIU keeps pidfds between pre-dumps, to detect
    /// pid reuse.
    pub fn pidfd_store_sk(&mut self, sk: BorrowedFd<'a>) -> &mut Self {
        self.pidfd_store_sk = Some(sk);
        self
    }

    /// How the network is locked (`--network-lock`).
    pub fn network_lock(&mut self, method: NetworkLock) -> &mut Self {
        self.network_lock = Some(method);
        self
    }

    /// Restore into an existing namespace (`--join-ns NS:FILE[,EXTRA]`).
    pub fn join_ns(
        &mut self,
        ns: Namespace,
        file: impl AsRef<Path>,
        extra: Option<&str>,
    ) -> &mut Self {
        self.join_ns.push(JoinNs {
            ns,
            file: file.as_ref().to_path_buf(),
            extra: extra.map(str::to_string),
        });
        self
    }

    /// Restore with an empty namespace of this kind (`--empty-ns`; CRIU
    /// supports `Net`).
    #[cfg(criu_3_19)]
    pub fn empty_ns(&mut self, ns: Namespace) -> &mut Self {
        self.empty_ns.push(ns);
        self
    }

    /// A CRIU configuration file of the caller's, read after the RPC
    /// options. It is trusted like a command line: never fill it from
    /// untrusted input. It cannot be combined with the CLI-only options
    /// below, which use this same slot.
    #[cfg(criu_3_19)]
    pub fn config_file(&mut self, path: impl AsRef<Path>) -> &mut Self {
        self.config_file = Some(path.as_ref().to_path_buf());
        self
    }

    /// Lazy pages (post-copy): on dump, leave memory behind and serve it
    /// from this process (`--lazy-pages`), together with
    /// [`Options::lazy_pages_address`]; on restore, fetch pages from the
    /// local `criu lazy-pages` daemon. libcriu has no setter; passed
    /// through a config file.
    pub fn lazy_pages(&mut self, on: bool) -> &mut Self {
        self.lazy_pages = on;
        self
    }

    /// The longest the whole operation may take. CRIU's own
    /// [`Options::timeout`] covers only collecting the tasks; with a
    /// deadline the crate starts CRIU itself and, when the deadline passes,
    /// kills it and everything it forked (a half-restored tree included),
    /// through pidfds and nothing else (the caller's other children are
    /// spared), reaps those that are this process's children, and fails
    /// with [`crate::Error::DeadlineExceeded`]. A
    /// dump interrupted this way leaves its tasks running. Not available
    /// with [`crate::Criu::with_service_address`] / `with_service_fd`.
    /// Descriptors of [`Options::add_inherit_fd`] reach the CRIU the
    /// crate starts at their numbers.
    pub fn deadline(&mut self, deadline: Duration) -> &mut Self {
        self.deadline = Some(deadline);
        self
    }

    /// The descriptors of [`Options::add_inherit_fd`], by number.
    pub(crate) fn inherit_raw_fds(&self) -> Vec<std::os::fd::RawFd> {
        self.inherit_fds
            .iter()
            .map(|(fd, _)| fd.as_raw_fd())
            .collect()
    }

    pub(crate) fn get_deadline(&self) -> Option<Duration> {
        self.deadline
    }

    pub(crate) fn get_restore_sibling(&self) -> bool {
        self.restore_sibling
    }

    pub(crate) fn set_restore_sibling(&mut self, on: bool) {
        self.restore_sibling = on;
    }

    /// Run without root, with CAP_CHECKPOINT_RESTORE (`--unprivileged`).
    /// libcriu has only a global setter (`criu_set_unprivileged`), which
    /// would leak into other threads' requests, so this is passed through
    /// the crate's config file instead.
    pub fn unprivileged(&mut self, on: bool) -> &mut Self {
        self.unprivileged = on;
        self
    }

    /// Where a lazy dump listens for the `criu lazy-pages` daemon
    /// (`--address`, `--port`). CLI-only, passed through a config file.
    pub fn lazy_pages_address(&mut self, addr: SocketAddr) -> &mut Self {
        self.lazy_address = Some(addr);
        self
    }

    /// CRIU's own TCP connections of this request (to a page server, or a
    /// lazy dump's page server) use TLS with these files (`--tls`,
    /// `--tls-cacert`, `--tls-cert`, `--tls-key`, `--tls-no-cn-verify`):
    /// CRIU's GnuTLS, mutual authentication against the CA. CLI-only,
    /// passed through a config file, and only when the request has such a
    /// connection. See [`crate::tls`].
    pub fn criu_tls(&mut self, files: &crate::credentials::TlsFiles) -> &mut Self {
        self.criu_tls = Some(files.clone());
        self
    }

    /// How files are validated on restore (`--file-validation`). CLI-only,
    /// passed through a config file.
    pub fn file_validation(&mut self, how: FileValidation) -> &mut Self {
        self.file_validation = Some(how);
        self
    }

    /// Called for every notification CRIU sends during the operation,
    /// in CRIU's order, on the calling thread. Return
    /// `ControlFlow::Break(reason)` to fail the operation; see
    /// [`crate::Event`] for what each event allows. A panic in the closure
    /// fails the operation and is resumed once libcriu has returned.
    pub fn on_notify<F>(&mut self, f: F) -> &mut Self
    where
        F: FnMut(Notification) -> ControlFlow<String> + 'a,
    {
        self.notify = Some(Box::new(f));
        self
    }

    pub(crate) fn get_pid(&self) -> Option<i32> {
        self.pid
    }

    pub(crate) fn get_images_dir(&self) -> Option<BorrowedFd<'a>> {
        self.images_dir
    }

    pub(crate) fn get_work_dir(&self) -> Option<BorrowedFd<'a>> {
        self.work_dir.or(self.images_dir)
    }

    pub(crate) fn images_dir_holds_images(&self) -> bool {
        self.images_dir_holds_images
    }

    pub(crate) fn wants_image_check(&self) -> bool {
        !self.skip_image_check
    }

    pub(crate) fn get_overwrite_images(&self) -> bool {
        self.overwrite_images
    }

    pub(crate) fn wants_lazy_pages(&self) -> bool {
        self.lazy_pages
    }

    pub(crate) fn wants_mem_track(&self) -> bool {
        self.flags.track_mem == Some(true)
    }

    /// Checks what can be checked without CRIU.
    pub(crate) fn validate(&self) -> Result<()> {
        if let Some(name) = &self.log_file {
            if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                return Err(invalid(format!(
                    "log file name {name:?} must be a plain file name (CRIU writes it into the work directory)"
                )));
            }
        }
        if let Some(parent) = &self.parent_images {
            check_parent_path(parent)?;
        }
        for key in &self.externals {
            if key.trim().is_empty() {
                return Err(invalid("an external resource key is empty"));
            }
        }
        for (key, val) in &self.ext_mounts {
            if key.is_empty() || val.is_empty() {
                return Err(invalid("an external mount has an empty key or value"));
            }
        }
        for (fd, key) in &self.inherit_fds {
            if key.is_empty() {
                return Err(invalid("an inherit-fd key is empty"));
            }
            check_inheritable(fd.as_raw_fd(), key)?;
        }
        if let Some(exec) = &self.exec_cmd {
            if exec.is_empty() {
                return Err(invalid("exec_cmd needs at least the program"));
            }
        }
        if self.lazy_address.is_some() && !self.lazy_pages {
            return Err(Error::invalid(
                None,
                InvalidKind::Conflict,
                "lazy_pages_address is set but lazy_pages is not",
            ));
        }
        #[cfg(criu_3_19)]
        if self.config_file.is_some() && !self.cli_only_lines().is_empty() {
            return Err(Error::invalid(
                None,
                InvalidKind::Conflict,
                "config_file cannot be combined with lazy_pages, lazy_pages_address, file_validation or timeout (they are passed through a config file of the crate's own)",
            ));
        }
        Ok(())
    }

    /// The lines of CRIU config file for the options libcriu cannot set.
    pub(crate) fn cli_only_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if self.lazy_pages {
            lines.push("lazy-pages".to_string());
        }
        if self.unprivileged {
            lines.push("unprivileged".to_string());
        }
        if self.restore_sibling {
            lines.push("restore-sibling".to_string());
        }
        if let Some(addr) = self.lazy_address {
            lines.push(format!("address {}", addr.ip()));
            lines.push(format!("port {}", addr.port()));
        }
        if let (Some(tls), true) = (&self.criu_tls, self.has_criu_connection()) {
            lines.extend(tls.criu_config_lines());
        }
        match self.file_validation {
            Some(FileValidation::FileSize) => lines.push("file-validation filesize".into()),
            Some(FileValidation::BuildId) => lines.push("file-validation buildid".into()),
            None => {}
        }
        if let Some(secs) = self.timeout_secs() {
            lines.push(format!("timeout {secs}"));
        }
        lines
    }

    /// [`Options::timeout`] in whole seconds, rounded up.
    fn timeout_secs(&self) -> Option<u64> {
        self.timeout
            .map(|t| t.as_secs().saturating_add(u64::from(t.subsec_nanos() > 0)))
    }

    /// Writes every recorded option into a fresh libcriu handle: the
    /// plain values, then the text and text-pair setters (two tables, one
    /// loop each), then the few setters of their own shape.
    pub(crate) fn apply(&self, raw: &RawOpts) -> Result<()> {
        self.apply_values(raw)?;
        self.flags.apply(raw);
        for (value, what, setter, name) in self.text_setters() {
            let c = c_bytes(value, what)?;
            // SAFETY: raw is a live criu_opts; libcriu copies (strdup) the string.
            cvt(unsafe { setter(raw.as_ptr(), c.as_ptr()) }, name)?;
        }
        for ((first, second), what, setter, name) in self.pair_setters() {
            let first = first.map(|v| c_bytes(v, what)).transpose()?;
            let second = c_bytes(second, what)?;
            let first_ptr = first.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
            // SAFETY: as above; a missing first value is passed as NULL,
            // which these setters accept (it means "all controllers").
            let rc = unsafe { setter(raw.as_ptr(), first_ptr, second.as_ptr()) };
            cvt(rc, name)?;
        }
        self.apply_descriptors(raw)?;
        self.apply_exec_cmd(raw)?;
        self.apply_network(raw)?;
        self.apply_join_ns(raw)?;
        #[cfg(criu_3_19)]
        if let Some(file) = &self.config_file {
            let c = c_bytes(file.as_os_str().as_bytes(), "config file")?;
            // SAFETY: as above.
            let rc = unsafe { sys::criu_local_set_config_file(raw.as_ptr(), c.as_ptr()) };
            cvt(rc, "set_config_file")?;
        }
        Ok(())
    }

    /// Setters of one number, descriptor or enum, which cannot fail: two
    /// tables (signed and unsigned numbers) and the enums.
    fn apply_values(&self, raw: &RawOpts) -> Result<()> {
        let p = raw.as_ptr();
        let fd = |fd: Option<BorrowedFd<'_>>| fd.map(|f| f.as_raw_fd());
        let ints = rows![IntSetter:
            self.pid, "pid" => criu_local_set_pid,
            fd(self.images_dir), "images directory" => criu_local_set_images_dir_fd,
            fd(self.work_dir), "work directory" => criu_local_set_work_dir_fd,
            fd(self.pidfd_store_sk), "pidfd store" => criu_local_set_pidfd_store_sk,
            self.log_level.map(LogLevel::raw), "log level" => criu_local_set_log_level,
        ];
        let secs = self
            .timeout_secs()
            .map(|s| u32::try_from(s).map_err(|_| invalid("timeout is too long")))
            .transpose()?;
        let uints = rows![UintSetter:
            self.cpu_cap.map(CpuCap::bits), "CPU caps" => criu_local_set_cpu_cap,
            self.ghost_limit, "ghost limit" => criu_local_set_ghost_limit,
            secs, "timeout" => criu_local_set_timeout,
        ];
        for (value, _, setter, _) in ints {
            if let Some(v) = value {
                // SAFETY: `p` is a live criu_opts; the setter copies a number
                // (descriptors stay open: the `'a` borrows keep them so).
                unsafe { setter(p, v) };
            }
        }
        for (value, _, setter, _) in uints {
            if let Some(v) = value {
                // SAFETY: as above.
                unsafe { setter(p, v) };
            }
        }
        if let Some(mode) = self.cgroup_mode {
            // SAFETY: as above.
            unsafe { sys::criu_local_set_manage_cgroups_mode(p, mode.raw()) };
        }
        #[cfg(criu_3_19)]
        self.apply_criu_3_19_values(raw);
        Ok(())
    }

    #[cfg(criu_3_19)]
    fn apply_criu_3_19_values(&self, raw: &RawOpts) {
        if let Some(v) = self.skip_file_rwx_check {
            // SAFETY: raw is live; a plain value.
            unsafe { sys::criu_local_set_skip_file_rwx_check(raw.as_ptr(), v) };
        }
        if !self.empty_ns.is_empty() {
            let mask = self.empty_ns.iter().fold(0, |m, ns| m | ns.clone_flag());
            // SAFETY: as above.
            unsafe { sys::criu_local_set_empty_ns(raw.as_ptr(), mask) };
        }
    }

    /// Every option set through a one-string setter, as (value, what it
    /// is, setter, setter's name), lists expanded one entry per item.
    fn text_setters(&self) -> Vec<(&[u8], &'static str, TextSetter, &'static str)> {
        let singles = rows![TextSetter:
            self.parent_images.as_deref().map(path_bytes), "parent images" => criu_local_set_parent_images,
            self.log_file.as_deref().map(str::as_bytes), "log file" => criu_local_set_log_file,
            self.root.as_deref().map(path_bytes), "root" => criu_local_set_root,
            self.freeze_cgroup.as_deref().map(path_bytes), "freeze cgroup" => criu_local_set_freeze_cgroup,
            self.lsm_profile.as_deref().map(str::as_bytes), "LSM profile" => criu_local_set_lsm_profile,
            self.lsm_mount_context.as_deref().map(str::as_bytes), "LSM mount context" => criu_local_set_lsm_mount_context,
            self.cg_props.as_deref().map(str::as_bytes), "cgroup props" => criu_local_add_cg_props,
            self.cg_props_file.as_deref().map(path_bytes), "cgroup props file" => criu_local_add_cg_props_file,
            self.cg_yard.as_deref().map(path_bytes), "cgroup yard" => criu_local_add_cg_yard,
        ];
        let lists = rows![TextSetter:
            texts(&self.cg_dump_controllers), "cgroup controller" => criu_local_add_cg_dump_controller,
            texts(&self.enable_fs), "filesystem" => criu_local_add_enable_fs,
            paths(&self.skip_mnt), "skipped mount" => criu_local_add_skip_mnt,
            paths(&self.irmap_paths), "irmap path" => criu_local_add_irmap_path,
            texts(&self.externals), "external key" => criu_local_add_external,
        ];
        let singles = singles
            .into_iter()
            .filter_map(|(v, what, f, name)| v.map(|v| (v, what, f, name)));
        singles.chain(expand(lists)).collect()
    }

    /// Every option set through a two-string setter (the first string may
    /// be missing: NULL), one entry per item.
    fn pair_setters(&self) -> Vec<(TextPair<'_>, &'static str, PairSetter, &'static str)> {
        let lists = rows![PairSetter:
            self.ext_mounts.iter().map(text_pair).collect(), "ext mount" => criu_local_add_ext_mount,
            self.veth_pairs.iter().map(text_pair).collect(), "veth name" => criu_local_add_veth_pair,
            self.cg_roots
                .iter()
                .map(|(ctrl, path)| (ctrl.as_deref().map(str::as_bytes), path_bytes(path)))
                .collect(),
            "cgroup root" => criu_local_add_cg_root,
        ];
        expand(lists)
    }

    /// Inherited descriptors and external unix sockets: adders that can
    /// fail. libcriu only records the descriptor numbers; the `'a` borrows
    /// keep them open for as long as these options live.
    fn apply_descriptors(&self, raw: &RawOpts) -> Result<()> {
        let p = raw.as_ptr();
        for (fd, key) in &self.inherit_fds {
            let c = c_string(key, "inherit-fd key")?;
            cvt(
                // SAFETY: as above; libcriu copies the key.
                unsafe { sys::criu_local_add_inherit_fd(p, fd.as_raw_fd(), c.as_ptr()) },
                "add_inherit_fd (only possible when CRIU runs as a child: the default service)",
            )?;
        }
        for inode in &self.unix_sk_inodes {
            // SAFETY: as above; a plain number.
            let rc = unsafe { sys::criu_local_add_unix_sk(p, *inode) };
            cvt(rc, "add_unix_sk")?;
        }
        Ok(())
    }

    fn apply_exec_cmd(&self, raw: &RawOpts) -> Result<()> {
        let Some(argv) = &self.exec_cmd else {
            return Ok(());
        };
        let owned: Vec<std::ffi::CString> = argv
            .iter()
            .map(|a| c_bytes(a.as_bytes(), "an exec_cmd argument"))
            .collect::<Result<_>>()?;
        let mut ptrs: Vec<*mut c_char> = owned.iter().map(|c| c.as_ptr().cast_mut()).collect();
        let argc = i32::try_from(ptrs.len()).map_err(|_| invalid("exec_cmd is too long"))?;
        cvt(
            // SAFETY: raw is live; libcriu only reads (strdup) the strings.
            unsafe { sys::criu_local_set_exec_cmd(raw.as_ptr(), argc, ptrs.as_mut_ptr()) },
            "set_exec_cmd",
        )?;
        Ok(())
    }

    /// The page server, pre-dump mode and network lock.
    fn apply_network(&self, raw: &RawOpts) -> Result<()> {
        let p = raw.as_ptr();
        if let Some(addr) = self.page_server {
            let ip = c_string(&addr.ip().to_string(), "page server address")?;
            // CRIU 4.2.1 returns -ENOMEM from this setter even on success
            // (it falls through to `return -ENOMEM`), so the value is not
            // checked; a real allocation failure shows up as a dump that
            // does not use the page server.
            // SAFETY: p is live; libcriu copies the string.
            let _ = unsafe {
                sys::criu_local_set_page_server_address_port(p, ip.as_ptr(), i32::from(addr.port()))
            };
        }
        if let Some(mode) = self.pre_dump_mode {
            // SAFETY: p is live; a plain value.
            let rc = unsafe { sys::criu_local_set_pre_dump_mode(p, mode.raw()) };
            cvt(rc, "set_pre_dump_mode")?;
        }
        if let Some(method) = self.network_lock {
            // SAFETY: as above.
            let rc = unsafe { sys::criu_local_set_network_lock(p, method.raw()) };
            cvt(rc, "set_network_lock")?;
        }
        Ok(())
    }

    fn apply_join_ns(&self, raw: &RawOpts) -> Result<()> {
        for j in &self.join_ns {
            let ns = c_string(j.ns.name(), "namespace")?;
            let file = c_path(&j.file, "namespace file")?;
            let extra = j
                .extra
                .as_deref()
                .map(|e| c_string(e, "join-ns extra"))
                .transpose()?;
            let extra_ptr = extra.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
            cvt(
                // SAFETY: raw is live; libcriu copies the strings; extra may be NULL.
                unsafe {
                    sys::criu_local_join_ns_add(raw.as_ptr(), ns.as_ptr(), file.as_ptr(), extra_ptr)
                },
                "join_ns_add",
            )?;
        }
        Ok(())
    }

    /// Whether CRIU opens a TCP connection of its own for this request.
    fn has_criu_connection(&self) -> bool {
        self.page_server.is_some() || self.lazy_address.is_some()
    }

    /// Validates the values of CLI-only options for the config file.
    pub(crate) fn validate_cli_only(&self) -> Result<()> {
        for line in self.cli_only_lines() {
            // A line is an option and at most one value: more words mean a
            // value (a path) with spaces, which CRIU would split.
            if line.split(' ').count() > 2 {
                config_value(&line, "config value")?;
            }
            for word in line.split(' ') {
                config_value(word, "config value")?;
            }
        }
        Ok(())
    }
}

/// An inherited descriptor must be open and not close-on-exec: libcriu
/// passes it to the `criu` it execs, and an exec closes the others.
fn check_inheritable(fd: i32, key: &str) -> Result<()> {
    let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).map_err(|_| {
        invalid(format!(
            "inherit-fd {fd} for {key:?} is not an open descriptor"
        ))
    })?;
    if flags & libc::FD_CLOEXEC != 0 {
        return Err(invalid(format!(
            "inherit-fd {fd} for {key:?} is close-on-exec, so the CRIU libcriu starts would not \
             receive it (Rust opens files close-on-exec): clear the flag first (fcntl F_SETFD 0)"
        )));
    }
    Ok(())
}

/// A parent images path must stay inside the checkpoint root: relative,
/// and at most one `..` (to a sibling of the images directory).
fn check_parent_path(path: &Path) -> Result<()> {
    if path.as_os_str().is_empty() || path.is_absolute() {
        return Err(Error::invalid(
            None,
            InvalidKind::Malformed,
            format!(
                "parent images {} must be a relative path from the images directory to a sibling (e.g. ../pre-1)",
                path.display()
            ),
        ));
    }
    let mut depth: i32 = 0;
    for c in path.components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            _ => {}
        }
        if depth < -1 {
            return Err(Error::invalid(
                None,
                InvalidKind::Malformed,
                format!("parent images {} leave the checkpoint root", path.display()),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_paths_stay_inside_the_root() {
        assert!(check_parent_path(Path::new("../pre-1")).is_ok());
        assert!(check_parent_path(Path::new("../../elsewhere")).is_err());
        assert!(check_parent_path(Path::new("/abs/pre-1")).is_err());
        assert!(check_parent_path(Path::new("")).is_err());
    }

    #[test]
    fn log_file_with_slash_is_rejected() {
        let mut o = Options::new();
        o.log_file("a/b.log");
        let e = o.validate().unwrap_err();
        assert_eq!(e.invalid_kind(), Some(InvalidKind::Malformed));
    }

    #[test]
    fn cli_only_options_become_config_lines() {
        let mut o = Options::new();
        o.lazy_pages(true)
            .lazy_pages_address("10.1.2.3:2345".parse().unwrap())
            .file_validation(FileValidation::FileSize)
            .timeout(Duration::from_millis(6500));
        assert_eq!(
            o.cli_only_lines(),
            vec![
                "lazy-pages",
                "address 10.1.2.3",
                "port 2345",
                "file-validation filesize",
                "timeout 7"
            ]
        );
        assert!(o.validate().is_ok());
        assert!(o.validate_cli_only().is_ok());
    }

    #[test]
    fn a_close_on_exec_inherit_fd_is_refused() {
        let file = std::fs::File::open("/dev/null").unwrap(); // O_CLOEXEC
        let mut o = Options::new();
        o.add_inherit_fd(file.as_fd(), "fd[1]:x");
        let e = o.validate().unwrap_err();
        assert!(e.to_string().contains("close-on-exec"), "{e}");
        nix::fcntl::fcntl(
            file.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        )
        .unwrap();
        assert!(o.validate().is_ok());
    }

    #[test]
    fn lazy_address_without_lazy_pages_conflicts() {
        let mut o = Options::new();
        o.lazy_pages_address("127.0.0.1:1".parse().unwrap());
        assert_eq!(
            o.validate().unwrap_err().invalid_kind(),
            Some(InvalidKind::Conflict)
        );
    }
}
