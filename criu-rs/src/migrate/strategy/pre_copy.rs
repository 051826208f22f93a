//! Pre-copy: while the tree runs, `pre_dump` passes, each in its own
//! directory of the work dir (`pass-1`, `pass-2`...) on the previous one as
//! parent, each sent as soon as it is written; the passes stop when the
//! memory written stops shrinking or at the [`PreCopyPolicy`]'s limits.
//! Then the driver's usual final dump (the tree held, `track_mem`, on the
//! last pass as parent) writes only what changed since, and its images
//! cross like stop-and-copy's. The destination keeps the passes beside the
//! images, as siblings, and links each `parent` itself (links are not sent).
//!
//! Where CRIU can restore lazily (userfaultfd), the destination restores
//! with a `criu lazy-pages` daemon of its own serving the memory from the
//! images it already holds ([`super::Dest::restore_lazily`]; unless
//! [`DestConfig::restore_lazily`](crate::migrate::DestConfig::restore_lazily)
//! says not to): the tree resumes once it is rebuilt, its memory filled
//! in as it touches it and in the background, instead of the whole of it
//! (a gigabyte takes about a second here) being filled while the tree is
//! stopped. With the project's CRIU patch
//! (`patches/criu-lazy-parent-pages.patch`) the passes' pages are lazy
//! too, not only the final dump's. The destination reports its copy
//! running once every page is in, so the source stays whole until then:
//! nothing is fetched over the network after the tree resumed, unlike the
//! lazy strategy.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{DestStrategy, DumpPlan, Restored, Running, SourceStrategy};
use crate::error::{Error, Result, SourceState, Step};
use crate::images::ImagesDir;
use crate::migrate::choice::{PreCopyPolicy, Strategy};
use crate::migrate::wire::{self, failed};
use crate::options::Options;
use crate::transfer::TransferStats;

/// The most passes a destination accepts from one source.
const MAX_PASSES: u32 = 64;

/// Pre-copy's own messages.
#[derive(Debug, Serialize, Deserialize)]
enum Own {
    /// A pass's images follow (a transfer stream), taken while the tree
    /// runs.
    Pass,
    /// The passes are over: the final dump's images follow, on the last
    /// of `passes` passes as parent.
    End { passes: u32 },
}

pub(super) struct Source {
    policy: PreCopyPolicy,
    /// The last pass's directory name, once there is one.
    last: Option<String>,
}

impl Source {
    pub(super) fn new(policy: PreCopyPolicy) -> Source {
        Source { policy, last: None }
    }

    /// Pre-dumps pass `n` into `work_dir/pass-n` and sends it; returns the
    /// bytes of memory the pass wrote.
    fn pass(&mut self, at: &mut super::Source<'_>, n: u32) -> Result<u64> {
        at.step(Step::Dump);
        let name = pass_name(n);
        let dir = ImagesDir::create(at.work_dir().join(&name))?;
        let mut o = Options::new();
        at.caller_options(&mut o);
        o.pid(at.pid()).images_dir(&dir).log_file("pre-dump.log");
        if let Some(last) = &self.last {
            o.parent_images(Path::new("..").join(last));
        }
        if let Some(d) = at.deadline() {
            o.deadline(d);
        }
        let report = at.criu().pre_dump(&mut o).map_err(|e| {
            failed(
                Step::Dump,
                SourceState::Resumed,
                format!("pre-copy pass {n} failed; the source process runs on"),
                Some(e),
            )
        })?;
        at.step(Step::Transfer);
        at.send(&Own::Pass)?;
        // Freed once sent, as the final dump's pages are: the restore on
        // the destination then allocates its memory while the source's
        // copy of the passes no longer holds as much.
        at.send_dir_then_free_pages(dir.path())?;
        self.last = Some(name);
        Ok(report.stats.map_or(u64::MAX, |s| s.bytes_written()))
    }
}

impl SourceStrategy for Source {
    fn name(&self) -> &str {
        Strategy::PreCopy.name()
    }

    /// The passes while the tree runs, then the final dump (the tree held,
    /// `track_mem`, on the last pass as parent), streamed as
    /// stop-and-copy's.
    fn run(&mut self, source: &mut super::Source<'_>) -> Result<Restored> {
        let mut previous = None;
        let mut n = 1;
        loop {
            wire::check(source.cancel(), Step::Dump, SourceState::Resumed)?;
            let written = self.pass(source, n)?;
            if !self.policy.another_pass(n, previous, written) {
                break;
            }
            previous = Some(written);
            n += 1;
        }
        source.send(&Own::End { passes: n })?;
        let parent = self.last.as_ref().map(|last| Path::new("..").join(last));
        let plan = DumpPlan::new().options(move |o| {
            o.track_mem(true);
            if let Some(p) = &parent {
                o.parent_images(p);
            }
        });
        let dump = source.dump(plan)?;
        let images = source.stream_images(dump)?;
        source.await_restore(images)
    }
}

fn pass_name(n: u32) -> String {
    format!("pass-{n}")
}

pub(super) struct Dest;

impl DestStrategy for Dest {
    fn name(&self) -> &str {
        Strategy::PreCopy.name()
    }

    fn run(&mut self, dest: &mut super::Dest<'_>) -> Result<Running> {
        // Asked while the source still runs: CRIU's check takes a while.
        let lazily = dest.lazy_restore_wanted(true);
        let root = dest.work_dir().to_path_buf();
        let mut total = TransferStats::default();
        let mut passes = 0;
        while let Some(n) = next_pass(dest, passes)? {
            let dir = root.join(pass_name(n));
            add(&mut total, dest.receive_dir(&dir)?);
            link_parent(&dir, n - 1)?;
            passes = n;
        }
        let images = dest.images_path().to_path_buf();
        add(&mut total, dest.receive_dir(&images)?);
        link_parent(&images, passes)?;
        let received = super::Received::new(ImagesDir::open(&images)?, total);
        match lazily {
            true => dest.restore_lazily(received),
            false => dest.restore(received, |_| {}),
        }
    }
}

/// The number of the pass whose images come next, or `None` once the
/// passes are over (`after` of them came) and the final images come.
fn next_pass(dest: &mut super::Dest<'_>, after: u32) -> Result<Option<u32>> {
    match dest.recv::<Own>()? {
        Own::Pass if after < MAX_PASSES => Ok(Some(after + 1)),
        Own::Pass => Err(failed(
            Step::Transfer,
            SourceState::Unknown,
            format!("the source sent more than {MAX_PASSES} pre-copy passes"),
            None,
        )),
        Own::End { passes } if passes == after => Ok(None),
        Own::End { passes } => Err(failed(
            Step::Transfer,
            SourceState::Unknown,
            format!("the source announced {passes} pre-copy passes, {after} arrived"),
            None,
        )),
    }
}

/// Links `dir/parent` to the sibling pass `parent` (none for 0), as CRIU
/// made it on the source.
fn link_parent(dir: &Path, parent: u32) -> Result<()> {
    if parent == 0 {
        return Ok(());
    }
    let target = PathBuf::from("..").join(pass_name(parent));
    symlink(&target, dir.join("parent"))
        .map_err(|e| Error::io(format!("linking {}/parent", dir.display()), e))
}

fn add(total: &mut TransferStats, t: TransferStats) {
    total.files += t.files;
    total.bytes += t.bytes;
    total.elapsed += t.elapsed;
}

#[cfg(test)]
mod tests {
    use super::PreCopyPolicy;

    const MIB: u64 = 1 << 20;

    #[test]
    fn the_passes_stop_when_they_stop_shrinking_or_at_a_limit() {
        let p = PreCopyPolicy::default()
            .max_passes(4)
            .remaining_bytes(8 * MIB);
        assert!(p.another_pass(1, None, 1024 * MIB), "the first pass is all");
        assert!(p.another_pass(2, Some(1024 * MIB), 100 * MIB), "shrinking");
        assert!(
            !p.another_pass(2, Some(100 * MIB), 100 * MIB),
            "not shrinking"
        );
        assert!(!p.another_pass(2, Some(100 * MIB), 8 * MIB), "small enough");
        assert!(
            !p.another_pass(4, Some(100 * MIB), 50 * MIB),
            "the pass limit"
        );
        let one = PreCopyPolicy::default().max_passes(0);
        assert!(
            !one.another_pass(1, None, 1024 * MIB),
            "at least one pass, at most one"
        );
    }
}
