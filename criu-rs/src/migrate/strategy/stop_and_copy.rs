//! Stop-and-copy: the dump writes every image locally, the images cross the
//! stream (the pages while the dump writes them), the destination restores
//! from them as soon as the last byte has landed.

use super::{DestStrategy, DumpPlan, Restored, Running, SourceStrategy};
use crate::error::Result;
use crate::migrate::choice::Strategy;

pub(super) struct Source;

impl SourceStrategy for Source {
    fn name(&self) -> &str {
        Strategy::StopAndCopy.name()
    }

    fn run(&mut self, source: &mut super::Source<'_>) -> Result<Restored> {
        let dump = source.dump(DumpPlan::new())?;
        let images = source.stream_images(dump)?;
        source.await_restore(images)
    }
}

pub(super) struct Dest;

impl DestStrategy for Dest {
    fn name(&self) -> &str {
        Strategy::StopAndCopy.name()
    }

    fn run(&mut self, dest: &mut super::Dest<'_>) -> Result<Running> {
        let received = dest.receive_images()?;
        dest.restore(received, |_| {})
    }
}
