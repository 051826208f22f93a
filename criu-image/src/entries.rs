//! Typed reading without reflection: an image's magic checked against the
//! one the caller expects, then its entries decoded straight into the
//! generated types of [`crate::proto`]. This is the light path (prost only,
//! no descriptor pool) that `criu-rs` reads statistics, `pstree.img` and
//! pagemaps through; [`crate::Image`] is the general one.

use crate::error::{Error, ErrorKind, Result};
use crate::framing::Reader;
use crate::magic;

/// The entries of one image of a known kind, read one at a time.
///
/// ```
/// use criu_image::{proto::PstreeEntry, Entries};
/// use prost::Message;
///
/// // pstree.img: the common magic, PSTREE's, then size-prefixed entries.
/// let entry = PstreeEntry { pid: 42, ..Default::default() }.encode_to_vec();
/// let mut bytes = Vec::new();
/// bytes.extend(criu_image::magic::IMG_COMMON.to_le_bytes());
/// bytes.extend(criu_image::magic::value_of("PSTREE").unwrap().to_le_bytes());
/// bytes.extend((entry.len() as u32).to_le_bytes());
/// bytes.extend(entry);
///
/// let mut entries = Entries::open(&bytes, "PSTREE")?;
/// let root: PstreeEntry = entries.first()?;
/// assert_eq!(root.pid, 42);
/// assert!(entries.next_entry::<PstreeEntry>().is_none());
/// # Ok::<(), criu_image::Error>(())
/// ```
#[derive(Debug)]
pub struct Entries<'a> {
    reader: Reader<'a>,
}

impl<'a> Entries<'a> {
    /// Checks that `data` is an image whose magic is crit's `magic` name
    /// (`"PSTREE"`, `"STATS"`, `"PAGEMAP"`...), after the common or service
    /// magic every image but the inventory starts with, and returns its
    /// entries. Never panics; a wrong or unknown magic is
    /// [`ErrorKind::WrongMagic`].
    pub fn open(data: &'a [u8], magic: &str) -> Result<Entries<'a>> {
        let expected = magic::value_of(magic).ok_or_else(|| {
            Error::at(
                0,
                ErrorKind::Invalid(format!("{magic} is not one of CRIU's image magics")),
            )
        })?;
        let mut reader = Reader::new(data);
        let mut found = reader.u32()?;
        if found == magic::IMG_COMMON || found == magic::IMG_SERVICE {
            found = reader.u32()?;
        }
        if found != expected {
            return Err(Error::at(
                reader.offset() - 4,
                ErrorKind::WrongMagic {
                    expected: magic.to_string(),
                    found,
                },
            ));
        }
        Ok(Entries { reader })
    }

    /// The next entry decoded as `T`; `None` at the end of the image. An
    /// entry cut short or not a valid `T` is an error at its offset.
    pub fn next_entry<T: prost::Message + Default>(&mut self) -> Option<Result<T>> {
        if self.reader.at_end() {
            return None;
        }
        Some(self.decode())
    }

    /// The next entry, which must be there (the first entry of an image
    /// that always has one, such as `pstree.img`'s root or a pagemap's head).
    pub fn first<T: prost::Message + Default>(&mut self) -> Result<T> {
        self.next_entry()
            .unwrap_or_else(|| Err(self.reader.fail(ErrorKind::Invalid("no entry".into()))))
    }

    fn decode<T: prost::Message + Default>(&mut self) -> Result<T> {
        let size = self.reader.u32()?;
        let start = self.reader.offset();
        let raw = self.reader.take(u64::from(size))?;
        T::decode(raw).map_err(|source| {
            Error::at(
                start,
                ErrorKind::Protobuf {
                    message: std::any::type_name::<T>()
                        .rsplit("::")
                        .next()
                        .unwrap_or("entry")
                        .to_string(),
                    source,
                },
            )
        })
    }
}
