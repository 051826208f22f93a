//! CRIU's image framing, read through `criu-image` (the workspace's one
//! decoder of CRIU images: its framing and the types it generates from
//! CRIU's `images/*.proto`), with its errors turned into this crate's
//! [`Error::BadImage`] naming the file.

use criu_image::Entries;

use crate::error::{Error, Result};

/// The error for a malformed `file`.
pub(crate) fn bad(file: &str, message: impl Into<String>) -> Error {
    Error::BadImage {
        file: file.to_string(),
        message: message.into(),
    }
}

/// `criu-image`'s error for `file`: what is wrong, and where.
fn from_image(file: &str, e: criu_image::Error) -> Error {
    bad(file, format!("{} (at offset {})", e.kind, e.offset))
}

/// The entries of `bytes`, which must be an image of crit's kind `magic`
/// (`"PSTREE"`, `"PAGEMAP"`, `"STATS"`).
pub(crate) fn entries<'b>(file: &'b str, bytes: &'b [u8], magic: &str) -> Result<Image<'b>> {
    Entries::open(bytes, magic)
        .map(|entries| Image { file, entries })
        .map_err(|e| from_image(file, e))
}

/// An image's entries, with errors naming its file.
pub(crate) struct Image<'b> {
    file: &'b str,
    entries: Entries<'b>,
}

impl Image<'_> {
    /// The next entry decoded as `M`; `None` at the end of the file.
    pub(crate) fn next_entry<M: prost::Message + Default>(&mut self) -> Option<Result<M>> {
        let file = self.file;
        self.entries
            .next_entry()
            .map(|r| r.map_err(|e| from_image(file, e)))
    }

    /// The first entry, which must be there.
    pub(crate) fn first<M: prost::Message + Default>(&mut self) -> Result<M> {
        self.entries.first().map_err(|e| from_image(self.file, e))
    }
}

#[cfg(test)]
pub(crate) fn frame(magic: &str, entries: &[Vec<u8>]) -> Vec<u8> {
    use criu_image::magic;
    let first = if magic == "STATS" {
        magic::IMG_SERVICE
    } else {
        magic::IMG_COMMON
    };
    let mut v: Vec<u8> = [first, magic::value_of(magic).unwrap()]
        .iter()
        .flat_map(|m| m.to_le_bytes())
        .collect();
    for e in entries {
        v.extend_from_slice(&(e.len() as u32).to_le_bytes());
        v.extend_from_slice(e);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use criu_image::proto::PstreeEntry;
    use prost::Message;

    fn pstree(pid: u32) -> Vec<u8> {
        PstreeEntry {
            pid,
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn entries_decode_in_order_and_damage_names_the_file() {
        let bytes = frame("PSTREE", &[pstree(1), pstree(2)]);
        let mut e = entries("pstree.img", &bytes, "PSTREE").unwrap();
        assert_eq!(e.first::<PstreeEntry>().unwrap().pid, 1);
        assert_eq!(e.next_entry::<PstreeEntry>().unwrap().unwrap().pid, 2);
        assert!(e.next_entry::<PstreeEntry>().is_none());
        let wrong = entries("pstree.img", &bytes, "PAGEMAP").err().unwrap();
        assert!(wrong.to_string().contains("pstree.img"), "{wrong}");
        assert!(wrong.to_string().contains("PAGEMAP"), "{wrong}");
        let cut = &bytes[..bytes.len() - 1];
        let mut e = entries("pstree.img", cut, "PSTREE").unwrap();
        assert!(e.first::<PstreeEntry>().is_ok());
        let err = e.next_entry::<PstreeEntry>().unwrap().unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
    }
}
