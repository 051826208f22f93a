//! Stop-and-copy: the dump writes every image locally, the images cross the
//! stream (the pages while the dump writes them), the destination restores
//! from them as soon as the last byte has landed.

use super::{DestSide, Inbound, Received, SourceSide};
use crate::error::Result;
use crate::images::ImagesDir;
use crate::options::Options;

pub(super) struct Source;

impl SourceSide for Source {
    fn dump_options(&self, _o: &mut Options<'_>) {}

    fn streams_while_dumping(&self) -> bool {
        true
    }
}

pub(super) struct Dest;

impl DestSide for Dest {
    fn receive(&mut self, mut at: Inbound<'_>) -> Result<Received> {
        let transfer = at.receive_dir(at.images)?;
        let images = ImagesDir::open(at.images)?;
        Ok(Received { images, transfer })
    }
}
