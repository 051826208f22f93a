//! The CRIU options that `dump`, `restore`, `send` and `receive` share:
//! one clap struct, flattened into each, applied to [`criu::Options`] in
//! one place. A checkpoint is restored with the flags it was made with.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use criu::{CgroupMode, LogLevel, NetworkLock, Options};

use crate::error::{CliError, CliResult};

/// CRIU's options, as flags.
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "CRIU options (the same for dump, restore, send and receive)")]
pub struct CriuFlags {
    /// Checkpoint (restore) established TCP connections (CRIU repairs the
    /// sockets; the peer must not see the address vanish meanwhile).
    #[arg(long)]
    pub tcp_established: bool,
    /// Close established TCP connections instead (dump: drop them;
    /// restore: restore them closed).
    #[arg(long)]
    pub tcp_close: bool,
    /// Checkpoint (restore) file locks (flock, POSIX and OFD locks).
    #[arg(long)]
    pub file_locks: bool,
    /// Allow unix sockets whose peer is outside the tree.
    #[arg(long)]
    pub ext_unix_sk: bool,
    /// The tree belongs to a terminal session (its session leader or
    /// terminal is outside it).
    #[arg(long)]
    pub shell_job: bool,
    /// An external resource, as CRIU's --external takes it (repeatable):
    /// `mnt[MOUNTPOINT]:KEY` on dump, `mnt[KEY]:PATH` on restore,
    /// `veth[IFNAME]:OUTER`, `file[MNT_ID:INODE]`, `tty[RDEV:DEV]`...
    #[arg(long = "external", value_name = "SPEC")]
    pub external: Vec<String>,
    /// An external bind mount, KEY:VALUE (repeatable): on dump
    /// MOUNTPOINT:KEY, on restore KEY:HOST_PATH.
    #[arg(long = "ext-mount-map", value_name = "KEY:VALUE")]
    pub ext_mount_map: Vec<String>,
    /// Treat external mounts as external automatically.
    #[arg(long)]
    pub auto_ext_mnt: bool,
    /// The root the tree sees (restore: where its mount namespace's root is).
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Let CRIU dump and restore the tree's cgroups (`soft` without a value).
    #[arg(long, value_name = "MODE", num_args = 0..=1, default_missing_value = "soft")]
    pub manage_cgroups: Option<CgroupsArg>,
    /// How CRIU locks the network while it repairs TCP sockets.
    #[arg(long, value_name = "METHOD")]
    pub network_lock: Option<NetworkLockArg>,
    /// Link-remap open files that were unlinked.
    #[arg(long)]
    pub link_remap: bool,
    /// Allow device files to be replaced by similar ones on restore.
    #[arg(long)]
    pub evasive_devices: bool,
    /// Do not fail on sysctls this kernel lacks.
    #[arg(long)]
    pub weak_sysctls: bool,
    /// Dump only: keep the tree running after the dump (send keeps the
    /// source stopped until the destination restored, then removes it).
    #[arg(long)]
    pub leave_running: bool,
    /// CRIU's log level (the log goes to the images or work directory;
    /// CRIU's default is warn).
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<LogLevelArg>,
    /// A CRIU configuration file (one CLI option a line, read after these
    /// flags and overriding them): for CRIU options without a flag here.
    /// Not with receive, nor with send's page-server, lazy and pre-copy
    /// strategies (they pass options through a config file of their own).
    #[arg(long, value_name = "FILE")]
    pub criu_config: Option<PathBuf>,
    /// Give up after this long (e.g. 30s, 2m, 500ms): CRIU is killed and
    /// the tree resumed (dump) or the half-restored tree killed (restore).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub deadline: Option<Duration>,
}

/// `--manage-cgroups` modes.
#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum CgroupsArg {
    /// Restore cgroup properties only where they do not exist yet.
    Soft,
    /// Restore every property.
    Full,
    /// Fail when a cgroup does not match.
    Strict,
    /// Only properties, no new cgroups.
    Props,
    /// Leave cgroups alone.
    Ignore,
    /// CRIU's default.
    Default,
}

/// `--network-lock` methods.
#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum NetworkLockArg {
    /// iptables rules (CRIU's default; needs the iptables binaries).
    Iptables,
    /// An nftables table.
    Nftables,
    /// No lock: the caller keeps the network quiet.
    Skip,
}

/// `--log-level` values.
#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum LogLevelArg {
    /// Messages only.
    Msg,
    /// Errors.
    Error,
    /// Warnings (CRIU's default).
    Warn,
    /// Information.
    Info,
    /// Everything (large logs).
    Debug,
}

impl CriuFlags {
    /// Sets every flag given on `opts`.
    pub fn apply(&self, opts: &mut Options<'_>) {
        // Only what was asked for: a flag left out does not override what
        // a migration sets itself.
        if self.shell_job {
            opts.shell_job(true);
        }
        if self.tcp_established {
            opts.tcp_established(true);
        }
        if self.tcp_close {
            opts.tcp_close(true);
        }
        if self.ext_unix_sk {
            opts.ext_unix_sk(true);
        }
        if self.file_locks {
            opts.file_locks(true);
        }
        if self.link_remap {
            opts.link_remap(true);
        }
        if self.evasive_devices {
            opts.evasive_devices(true);
        }
        if self.auto_ext_mnt {
            opts.auto_ext_mnt(true);
        }
        if self.weak_sysctls {
            opts.weak_sysctls(true);
        }
        if let Some(level) = self.log_level {
            opts.log_level(level.into());
        }
        for e in &self.external {
            opts.add_external(e.clone());
        }
        for (key, value) in self.ext_mounts() {
            opts.add_ext_mount(key, value);
        }
        if let Some(root) = &self.root {
            opts.root(root);
        }
        if let Some(mode) = self.manage_cgroups {
            opts.manage_cgroups(true).manage_cgroups_mode(mode.into());
        }
        if let Some(lock) = self.network_lock {
            opts.network_lock(lock.into());
        }
        if let Some(file) = &self.criu_config {
            opts.config_file(file);
        }
        if let Some(d) = self.deadline {
            opts.deadline(d);
        }
    }

    /// Refuses what makes no sense for `command` (leave-running anywhere
    /// but dump), and checks the values clap cannot.
    pub fn check_for(&self, command: &str) -> CliResult {
        if self.leave_running && command != "dump" {
            return Err(CliError::usage(format!(
                "--leave-running applies to dump, not to {command}"
            ))
            .hint(if command == "send" {
                "send keeps the source stopped until the destination restored it, and resumes it on failure"
            } else {
                "remove --leave-running"
            }));
        }
        for m in &self.ext_mount_map {
            if !m.contains(':') {
                return Err(CliError::usage(format!(
                    "--ext-mount-map {m:?} is not KEY:VALUE"
                )));
            }
        }
        if self.criu_config.is_some() && command == "receive" {
            return Err(CliError::usage(
                "--criu-config cannot be used with receive: the restore passes options of its own \
                 (restore as a child, its deadline) through a CRIU config file, and CRIU reads one",
            )
            .hint("use the flags of `criu-rs receive --help` instead"));
        }
        if let Some(f) = &self.criu_config {
            if !f.is_file() {
                return Err(CliError::usage(format!(
                    "--criu-config {}: no such file",
                    f.display()
                )));
            }
        }
        Ok(())
    }

    fn ext_mounts(&self) -> impl Iterator<Item = (String, String)> + '_ {
        self.ext_mount_map.iter().filter_map(|m| {
            m.split_once(':')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
    }
}

impl From<CgroupsArg> for CgroupMode {
    fn from(a: CgroupsArg) -> CgroupMode {
        match a {
            CgroupsArg::Soft => CgroupMode::Soft,
            CgroupsArg::Full => CgroupMode::Full,
            CgroupsArg::Strict => CgroupMode::Strict,
            CgroupsArg::Props => CgroupMode::Props,
            CgroupsArg::Ignore => CgroupMode::Ignore,
            CgroupsArg::Default => CgroupMode::Default,
        }
    }
}

impl From<NetworkLockArg> for NetworkLock {
    fn from(a: NetworkLockArg) -> NetworkLock {
        match a {
            NetworkLockArg::Iptables => NetworkLock::Iptables,
            NetworkLockArg::Nftables => NetworkLock::Nftables,
            NetworkLockArg::Skip => NetworkLock::Skip,
        }
    }
}

impl From<LogLevelArg> for LogLevel {
    fn from(a: LogLevelArg) -> LogLevel {
        match a {
            LogLevelArg::Msg => LogLevel::Msg,
            LogLevelArg::Error => LogLevel::Error,
            LogLevelArg::Warn => LogLevel::Warn,
            LogLevelArg::Info => LogLevel::Info,
            LogLevelArg::Debug => LogLevel::Debug,
        }
    }
}

/// `30`, `30s`, `500ms`, `2m`, `1h`: a number of seconds without a unit.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (30s, 500ms, 2m)"))?;
    let ms = match unit {
        "ms" => n,
        "" | "s" => n.saturating_mul(1000),
        "m" => n.saturating_mul(60_000),
        "h" => n.saturating_mul(3_600_000),
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    Ok(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_and_without_units() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("2 weeks").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn leave_running_is_refused_outside_dump() {
        let f = CriuFlags {
            leave_running: true,
            ..CriuFlags::default()
        };
        assert!(f.check_for("dump").is_ok());
        let e = f.check_for("send").unwrap_err();
        assert!(e.message.contains("--leave-running"));
        assert!(e.hint.unwrap().contains("resumes it"));
    }
}
