//! Stop-and-copy: the dump writes every image locally, the images cross the
//! stream (the pages while the dump writes them), the destination restores
//! from them as soon as the last byte has landed (lazily, from those
//! images, when [`DestConfig::restore_lazily`](crate::migrate::DestConfig::restore_lazily)
//! asks for it: see [`super::Dest::restore_lazily`]).

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
        // Asked before the images arrive: CRIU's check takes a while.
        let lazily = dest.lazy_restore_wanted(false);
        let received = dest.receive_images()?;
        match lazily {
            true => dest.restore_lazily(received),
            false => dest.restore(received, |_| {}),
        }
    }
}
