//! Pre-copy: while the tree runs, `pre_dump` passes, each in its own
//! directory of the work dir (`pass-1`, `pass-2`...) on the previous one as
//! parent, each sent as soon as it is written; the passes stop when the
//! memory written stops shrinking or at the [`PreCopyPolicy`]'s limits.
//! Then the driver's usual final dump (the tree held, `track_mem`, on the
//! last pass as parent) writes only what changed since, and its images
//! cross like stop-and-copy's. The destination keeps the passes beside the
//! images, as siblings, and links each `parent` itself (links are not sent).

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use super::{Before, DestSide, Inbound, Received, SourceSide};
use crate::error::{Error, Result, SourceState, Step};
use crate::images::ImagesDir;
use crate::migrate::choice::PreCopyPolicy;
use crate::migrate::wire::{self, failed, unexpected, Msg};
use crate::options::Options;
use crate::transfer::{self, TransferStats};

/// The most passes a destination accepts from one source.
const MAX_PASSES: u32 = 64;

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
    fn pass(&mut self, at: &mut Before<'_>, n: u32) -> Result<u64> {
        let name = pass_name(n);
        let dir = ImagesDir::create(at.work_dir.join(&name))?;
        let mut o = Options::new();
        if let Some(c) = at.customize {
            c(&mut o);
        }
        o.pid(at.pid).images_dir(&dir).log_file("pre-dump.log");
        if let Some(last) = &self.last {
            o.parent_images(Path::new("..").join(last));
        }
        if let Some(d) = at.deadline {
            o.deadline(d);
        }
        let report = at.criu.pre_dump(&mut o).map_err(|e| {
            failed(
                Step::Dump,
                SourceState::Resumed,
                format!("pre-copy pass {n} failed; the source process runs on"),
                Some(e),
            )
        })?;
        wire::send(at.stream, &Msg::PreCopyPass)
            .and_then(|()| transfer::send_files(&mut &mut *at.stream, dir.path(), None))
            .map_err(|e| not_sent(n, e))?;
        self.last = Some(name);
        Ok(report.stats.map_or(u64::MAX, |s| s.bytes_written()))
    }
}

impl SourceSide for Source {
    fn dump_options(&self, o: &mut Options<'_>) {
        o.track_mem(true);
        if let Some(last) = &self.last {
            o.parent_images(Path::new("..").join(last));
        }
    }

    fn before_dump(&mut self, mut at: Before<'_>) -> Result<()> {
        let mut previous = None;
        let mut n = 1;
        loop {
            wire::check(at.cancel, Step::Dump, SourceState::Resumed)?;
            let written = self.pass(&mut at, n)?;
            if !self.policy.another_pass(n, previous, written) {
                break;
            }
            previous = Some(written);
            n += 1;
        }
        wire::send(at.stream, &Msg::PreCopyEnd { passes: n }).map_err(|e| not_sent(n, e))
    }

    fn streams_while_dumping(&self) -> bool {
        true
    }
}

fn pass_name(n: u32) -> String {
    format!("pass-{n}")
}

fn not_sent(n: u32, e: Error) -> Error {
    failed(
        Step::Transfer,
        SourceState::Resumed,
        format!("sending pre-copy pass {n} failed; the source process runs on"),
        Some(e),
    )
}

pub(super) struct Dest;

impl DestSide for Dest {
    fn receive(&mut self, mut at: Inbound<'_>) -> Result<Received> {
        let root = at.images.parent().unwrap_or(Path::new("/")).to_path_buf();
        let mut total = TransferStats::default();
        let mut passes = 0;
        while let Some(n) = next_pass(&mut at, passes)? {
            let dir = root.join(pass_name(n));
            add(&mut total, at.receive_dir(&dir)?);
            link_parent(&dir, n - 1)?;
            passes = n;
        }
        add(&mut total, at.receive_dir(at.images)?);
        link_parent(at.images, passes)?;
        let images = ImagesDir::open(at.images)?;
        Ok(Received {
            images,
            transfer: total,
        })
    }
}

/// The number of the pass whose images come next, or `None` once the
/// passes are over (`after` of them came) and the final images come.
fn next_pass(at: &mut Inbound<'_>, after: u32) -> Result<Option<u32>> {
    match wire::recv(at.stream)? {
        Msg::PreCopyPass if after < MAX_PASSES => Ok(Some(after + 1)),
        Msg::PreCopyPass => Err(failed(
            Step::Transfer,
            SourceState::Unknown,
            format!("the source sent more than {MAX_PASSES} pre-copy passes"),
            None,
        )),
        Msg::PreCopyEnd { passes } if passes == after => Ok(None),
        Msg::PreCopyEnd { passes } => Err(failed(
            Step::Transfer,
            SourceState::Unknown,
            format!("the source announced {passes} pre-copy passes, {after} arrived"),
            None,
        )),
        Msg::Failed {
            message,
            step,
            source_state,
        } => Err(failed(
            step.unwrap_or(Step::Transfer),
            source_state.unwrap_or(SourceState::Unknown),
            format!("the source failed during pre-copy: {message}"),
            None,
        )),
        other => Err(unexpected(
            Step::Transfer,
            SourceState::Unknown,
            "a pre-copy pass",
            &other,
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
