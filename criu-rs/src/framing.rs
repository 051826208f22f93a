//! CRIU's image framing (criu/image.c, criu/protobuf.c): one or two magic
//! words, then entries, each a little-endian `u32` size followed by a
//! protobuf message of that size. Decoded here once for the images the
//! crate reads itself (`pstree.img`, `pagemap-*.img`, `stats-*`).

use crate::error::{Error, Result};

/// The first word of every image but the inventory.
pub(crate) const IMG_COMMON_MAGIC: u32 = 0x5456_4319;
/// The first word of service files (statistics, irmap cache).
pub(crate) const IMG_SERVICE_MAGIC: u32 = 0x5510_5940;

/// The entries of one image file, after its magic words.
pub(crate) struct Entries<'b> {
    file: &'b str,
    rest: &'b [u8],
    max_entry: usize,
}

/// A little-endian `u32` at the start of `bytes`, if there are four.
fn word(bytes: &[u8]) -> Option<u32> {
    bytes
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// The error for a malformed `file`.
pub(crate) fn bad(file: &str, message: impl Into<String>) -> Error {
    Error::BadImage {
        file: file.to_string(),
        message: message.into(),
    }
}

impl<'b> Entries<'b> {
    /// Checks that `bytes` start with `magics` (what the file must be: `what`)
    /// and returns its entries, none larger than `max_entry` bytes.
    pub(crate) fn open(
        file: &'b str,
        bytes: &'b [u8],
        magics: &[u32],
        what: &str,
        max_entry: usize,
    ) -> Result<Entries<'b>> {
        let head = magics.len() * 4;
        if bytes.len() < head {
            return Err(bad(
                file,
                format!("{} bytes is too short for a header", bytes.len()),
            ));
        }
        for (i, &magic) in magics.iter().enumerate() {
            let found = word(&bytes[i * 4..]).unwrap_or_default();
            if found != magic {
                return Err(bad(
                    file,
                    format!("magic {found:#x} where {what} has {magic:#x}: not {what}"),
                ));
            }
        }
        Ok(Entries {
            file,
            rest: &bytes[head..],
            max_entry,
        })
    }

    /// The next entry decoded as `M`; `None` at the end of the file.
    pub(crate) fn next_entry<M: prost::Message + Default>(&mut self) -> Option<Result<M>> {
        if self.rest.is_empty() {
            return None;
        }
        Some(self.decode_next())
    }

    fn decode_next<M: prost::Message + Default>(&mut self) -> Result<M> {
        let size =
            word(self.rest).ok_or_else(|| bad(self.file, "an entry's size is cut off"))? as usize;
        if size > self.max_entry {
            return Err(bad(self.file, format!("entry size {size} is implausible")));
        }
        let body = self.rest[4..]
            .get(..size)
            .ok_or_else(|| bad(self.file, format!("entry of {size} bytes is truncated")))?;
        self.rest = &self.rest[4 + size..];
        M::decode(body).map_err(|e| bad(self.file, e.to_string()))
    }

    /// The first entry, which must be there.
    pub(crate) fn first<M: prost::Message + Default>(&mut self) -> Result<M> {
        self.next_entry()
            .unwrap_or_else(|| Err(bad(self.file, "no entry")))
    }
}

#[cfg(test)]
pub(crate) fn frame(magics: &[u32], entries: &[Vec<u8>]) -> Vec<u8> {
    let mut v: Vec<u8> = magics.iter().flat_map(|m| m.to_le_bytes()).collect();
    for e in entries {
        v.extend_from_slice(&(e.len() as u32).to_le_bytes());
        v.extend_from_slice(e);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, PartialEq, prost::Message)]
    struct One {
        #[prost(uint32, required, tag = "1")]
        v: u32,
    }

    #[test]
    fn entries_decode_in_order_and_damage_is_an_error() {
        use prost::Message;
        let bytes = frame(
            &[IMG_COMMON_MAGIC, 7],
            &[One { v: 1 }.encode_to_vec(), One { v: 2 }.encode_to_vec()],
        );
        let mut e = Entries::open("f", &bytes, &[IMG_COMMON_MAGIC, 7], "x", 64).unwrap();
        assert_eq!(e.first::<One>().unwrap().v, 1);
        assert_eq!(e.next_entry::<One>().unwrap().unwrap().v, 2);
        assert!(e.next_entry::<One>().is_none());
        assert!(Entries::open("f", &bytes, &[IMG_COMMON_MAGIC, 8], "x", 64).is_err());
        let cut = &bytes[..bytes.len() - 1];
        let mut e = Entries::open("f", cut, &[IMG_COMMON_MAGIC, 7], "x", 64).unwrap();
        assert!(e.first::<One>().is_ok());
        assert!(e.next_entry::<One>().unwrap().is_err());
        let mut e = Entries::open("f", &bytes, &[IMG_COMMON_MAGIC, 7], "x", 1).unwrap();
        assert!(e.first::<One>().is_err(), "an entry over the cap");
    }
}
