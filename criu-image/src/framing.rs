//! CRIU's framing: little-endian u32 magics and sizes, and messages read
//! from a byte slice whose every length is checked against what is left,
//! so a hostile size can neither panic nor allocate more than the image.

use prost_reflect::{DynamicMessage, MessageDescriptor};

use crate::error::{Error, ErrorKind, Result};

/// A cursor over an image's bytes that knows its offset.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Reader { data, pos: 0 }
    }

    pub(crate) fn offset(&self) -> u64 {
        self.pos as u64
    }

    pub(crate) fn at_end(&self) -> bool {
        self.pos >= self.data.len()
    }

    pub(crate) fn fail(&self, kind: ErrorKind) -> Error {
        Error::at(self.offset(), kind)
    }

    /// The next `n` bytes, or a `Truncated` error at the current offset.
    pub(crate) fn take(&mut self, n: u64) -> Result<&'a [u8]> {
        let left = (self.data.len() - self.pos) as u64;
        if n > left {
            return Err(self.fail(ErrorKind::Truncated { needed: n, left }));
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.data[start..self.pos])
    }

    /// Skips up to `n` bytes (padding at the very end may be absent).
    pub(crate) fn skip_padding(&mut self, n: u64) {
        let left = (self.data.len() - self.pos) as u64;
        self.pos += n.min(left) as usize;
    }

    /// Everything left.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let start = self.pos;
        self.pos = self.data.len();
        &self.data[start..]
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// One size-prefixed message: its raw bytes and its decoded form.
    pub(crate) fn message(
        &mut self,
        descriptor: &MessageDescriptor,
    ) -> Result<(&'a [u8], DynamicMessage)> {
        let size = self.u32()?;
        let start = self.offset();
        let raw = self.take(u64::from(size))?;
        let message = DynamicMessage::decode(descriptor.clone(), raw).map_err(|source| {
            Error::at(
                start,
                ErrorKind::Protobuf {
                    message: descriptor.full_name().to_string(),
                    source,
                },
            )
        })?;
        Ok((raw, message))
    }
}

/// Rounds `x` up to a multiple of `align` (a power of two), as CRIU pads.
pub(crate) fn round_up(x: u64, align: u64) -> u64 {
    x.div_ceil(align).saturating_mul(align)
}
