//! Stop-and-copy: the dump writes every image locally, the images cross the
//! stream, the destination restores from them.

use super::{DestSide, Inbound, Received, SourceSide};
use crate::error::Result;
use crate::images::ImagesDir;
use crate::options::Options;

pub(super) struct Source;

impl SourceSide for Source {
    fn dump_options(&self, _o: &mut Options<'_>) {}
}

pub(super) struct Dest;

impl DestSide for Dest {
    fn receive(&mut self, mut at: Inbound<'_>) -> Result<Received> {
        let transfer = at.receive_dir(at.images)?;
        let images = ImagesDir::open(at.images)?;
        Ok(Received { images, transfer })
    }
}
