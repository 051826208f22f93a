//! One image file decoded: its magic and its entries.

use std::path::Path;

use prost_reflect::{DynamicMessage, MessageDescriptor};

use crate::descriptors::pool;
use crate::error::{Error, ErrorKind, Result};
use crate::framing::Reader;
use crate::kind::{ImageKind, Layout, PayloadKind};
use crate::magic;
use crate::payload::{self, Extra};

/// One entry: the message (raw and decoded) and the payload after it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Entry {
    /// The message's protobuf bytes, for [`Entry::decode`].
    pub raw: Vec<u8>,
    /// The message, walkable by reflection.
    pub message: DynamicMessage,
    /// The payload that followed it, if its image carries one.
    pub extra: Option<Extra>,
}

impl Entry {
    /// The entry as one of the generated types of [`crate::proto`]
    /// (`entry.decode::<proto::PstreeEntry>()`).
    pub fn decode<T: prost::Message + Default>(
        &self,
    ) -> std::result::Result<T, prost::DecodeError> {
        T::decode(self.raw.as_slice())
    }
}

/// A decoded image file.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Image {
    /// crit's name of its magic (`PSTREE`, `CORE`, ...).
    pub magic: &'static str,
    /// What the image holds and how.
    pub kind: &'static ImageKind,
    /// Its entries, in file order.
    pub entries: Vec<Entry>,
}

impl Image {
    /// Reads and decodes an image file; errors name the file and offset.
    pub fn open(path: impl AsRef<Path>) -> Result<Image> {
        let path = path.as_ref();
        let data = std::fs::read(path).map_err(|e| Error::at(0, ErrorKind::Io(e)).in_file(path))?;
        Image::decode(&data).map_err(|e| e.in_file(path))
    }

    /// Decodes an image from its bytes.
    pub fn decode(data: &[u8]) -> Result<Image> {
        let mut reader = Reader::new(data);
        let kind = read_header(&mut reader)?;
        let entries = match kind.layout {
            Layout::Entries(payload) => {
                let message = descriptor(&reader, kind.message)?;
                entries(&mut reader, message, payload)?
            }
            Layout::Pagemap => pagemap(&mut reader)?,
            Layout::GhostFile => ghost_file(&mut reader)?,
        };
        Ok(Image {
            magic: kind.magic,
            kind,
            entries,
        })
    }

    /// The entries decoded as one generated type, e.g.
    /// `image.typed::<proto::PstreeEntry>()` (for a pagemap, the first
    /// entry is a `pagemap_head`: use [`Entry::decode`] instead).
    pub fn typed<T: prost::Message + Default>(
        &self,
    ) -> std::result::Result<Vec<T>, prost::DecodeError> {
        self.entries.iter().map(Entry::decode).collect()
    }
}

/// The magic: the inventory has one, every other image two (a common or
/// service magic first).
fn read_header(reader: &mut Reader<'_>) -> Result<&'static ImageKind> {
    let mut value = reader.u32()?;
    if value == magic::IMG_COMMON || value == magic::IMG_SERVICE {
        value = reader.u32()?;
    }
    let name = magic::name_of(value)
        .ok_or_else(|| Error::at(reader.offset() - 4, ErrorKind::UnknownMagic(value)))?;
    ImageKind::by_magic(name)
        .ok_or_else(|| Error::at(reader.offset() - 4, ErrorKind::NoDecoder(name.to_string())))
}

fn descriptor(reader: &Reader<'_>, name: &str) -> Result<MessageDescriptor> {
    pool()
        .get_message_by_name(name)
        .ok_or_else(|| reader.fail(ErrorKind::NoDecoder(name.to_string())))
}

fn entry(reader: &mut Reader<'_>, descriptor: &MessageDescriptor) -> Result<Entry> {
    let (raw, message) = reader.message(descriptor)?;
    Ok(Entry {
        raw: raw.to_vec(),
        message,
        extra: None,
    })
}

fn entries(
    reader: &mut Reader<'_>,
    descriptor: MessageDescriptor,
    payload: Option<PayloadKind>,
) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    while !reader.at_end() {
        let mut e = entry(reader, &descriptor)?;
        if let Some(kind) = payload {
            e.extra = Some(payload::read(reader, kind, &e.message)?);
        }
        out.push(e);
    }
    Ok(out)
}

fn pagemap(reader: &mut Reader<'_>) -> Result<Vec<Entry>> {
    let head = descriptor(reader, "pagemap_head")?;
    let body = descriptor(reader, "pagemap_entry")?;
    let mut out = Vec::new();
    while !reader.at_end() {
        out.push(entry(reader, if out.is_empty() { &head } else { &body })?);
    }
    Ok(out)
}

/// A ghost file's contents follow its entry, whole or in chunks.
fn ghost_file(reader: &mut Reader<'_>) -> Result<Vec<Entry>> {
    let head = descriptor(reader, "ghost_file_entry")?;
    let mut first = entry(reader, &head)?;
    let chunked = matches!(
        first.message.get_field_by_name("chunks").as_deref(),
        Some(prost_reflect::Value::Bool(true))
    );
    if !chunked {
        first.extra = Some(Extra::Bytes(reader.rest().to_vec()));
        return Ok(vec![first]);
    }
    let chunk = descriptor(reader, "ghost_chunk_entry")?;
    let mut out = vec![first];
    while !reader.at_end() {
        let mut e = entry(reader, &chunk)?;
        let len = match e.message.get_field_by_name("len").as_deref() {
            Some(prost_reflect::Value::U64(n)) => *n,
            _ => 0,
        };
        e.extra = Some(Extra::Bytes(reader.take(len)?.to_vec()));
        out.push(e);
    }
    Ok(out)
}
