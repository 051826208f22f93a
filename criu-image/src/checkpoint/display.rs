//! The human-readable form of an [`Inspection`].

use std::fmt;

use super::{Inspection, ProcessView};

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "checkpoint {}", self.images_dir.display())?;
        writeln!(
            f,
            "{:>8} {:>8} {:>8} {:>8} {:>7}  COMMAND",
            "PID", "PPID", "PGID", "SID", "THREADS"
        )?;
        for p in &self.processes {
            writeln!(
                f,
                "{:>8} {:>8} {:>8} {:>8} {:>7}  {}",
                p.pid,
                p.ppid,
                p.pgid,
                p.sid,
                p.threads.len(),
                p.command
            )?;
        }
        for p in &self.processes {
            process(f, p)?;
        }
        if !self.mounts.is_empty() {
            writeln!(f, "\nmounts")?;
            for m in &self.mounts {
                writeln!(
                    f,
                    "  [ns {}] {} {} {} ({})",
                    m.mnt_ns, m.mountpoint, m.fstype, m.source, m.options
                )?;
            }
        }
        if let Some(stats) = &self.stats {
            writeln!(f, "\nCRIU statistics (dump): {stats}")?;
        }
        Ok(())
    }
}

fn process(f: &mut fmt::Formatter<'_>, p: &ProcessView) -> fmt::Result {
    writeln!(f, "\nprocess {} ({})", p.pid, p.command)?;
    writeln!(f, "  argv: {:?}", p.argv)?;
    writeln!(f, "  environment: {} variables", p.environment.len())?;
    for var in &p.environment {
        writeln!(f, "    {var}")?;
    }
    let m = &p.memory;
    writeln!(
        f,
        "  memory: {} VMAs, {} KiB mapped ({} KiB anonymous, {} KiB shared), {} KiB of pages dumped",
        m.vmas,
        m.mapped_bytes / 1024,
        m.anonymous_bytes / 1024,
        m.shared_bytes / 1024,
        m.dumped_bytes / 1024
    )?;
    let ns: Vec<String> = p
        .namespaces
        .iter()
        .map(|(k, v)| format!("{k}:{v}"))
        .collect();
    writeln!(f, "  namespaces: {}", ns.join(" "))?;
    writeln!(f, "  files:")?;
    for file in &p.files {
        writeln!(
            f,
            "    {:>4} {:<7} {} [{}]",
            file.fd, file.kind, file.path, file.flags
        )?;
    }
    for s in &p.sockets {
        writeln!(
            f,
            "  socket fd {}: {} {} {} {} -> {}",
            s.fd, s.family, s.kind, s.state, s.local, s.remote
        )?;
    }
    Ok(())
}
