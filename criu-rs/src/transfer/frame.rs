//! The stream's header, its control messages, and its integers.

use std::io::{Read, Write};

use serde::{de::DeserializeOwned, Serialize};

use super::{io_err, transfer_err};
use crate::error::{Result, TransferKind};

const MAGIC: &[u8; 8] = b"CRIURS\x00\x01";
/// The longest control message accepted.
const MAX_MESSAGE: u32 = 1 << 20;

/// Writes the stream header. Called once per stream, by the sender.
pub(crate) fn write_header(w: &mut impl Write) -> Result<()> {
    w.write_all(MAGIC).map_err(io_err("sending the header"))
}

/// Reads and checks the stream header.
pub(crate) fn read_header(r: &mut impl Read) -> Result<()> {
    let mut m = [0u8; 8];
    r.read_exact(&mut m).map_err(io_err("reading the header"))?;
    if &m != MAGIC {
        return Err(transfer_err(
            TransferKind::NotAStream,
            "not a criu-rs image stream (bad magic)",
            None,
        ));
    }
    Ok(())
}

/// Sends a control message.
pub(crate) fn send_message<T: Serialize>(w: &mut impl Write, msg: &T) -> Result<()> {
    let body = serde_json::to_vec(msg).map_err(|e| {
        transfer_err(
            TransferKind::Protocol,
            format!("encoding a message: {e}"),
            None,
        )
    })?;
    let mut frame = Vec::with_capacity(body.len() + 5);
    frame.push(b'M');
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    w.write_all(&frame).map_err(io_err("sending a message"))?;
    w.flush().map_err(io_err("sending a message"))
}

/// Receives a control message.
pub(crate) fn recv_message<T: DeserializeOwned>(r: &mut impl Read) -> Result<T> {
    let tag = read_u8(r, "reading a message")?;
    if tag != b'M' {
        return Err(transfer_err(
            TransferKind::Protocol,
            format!("expected a message, got frame {tag:#x}"),
            None,
        ));
    }
    read_message_body(r)
}

/// Reads a control message whose 'M' was read already.
pub(super) fn read_message_body<T: DeserializeOwned>(r: &mut impl Read) -> Result<T> {
    let len = read_u32(r, "reading a message")?;
    if len > MAX_MESSAGE {
        return Err(transfer_err(
            TransferKind::Corrupt,
            format!("message of {len} bytes is too long"),
            None,
        ));
    }
    let mut body = vec![0; len as usize];
    r.read_exact(&mut body)
        .map_err(io_err("reading a message"))?;
    serde_json::from_slice(&body).map_err(|e| {
        transfer_err(
            TransferKind::Protocol,
            format!("decoding a message: {e}"),
            None,
        )
    })
}

/// Reads `N` bytes; `what` names the step in the error.
fn read_array<const N: usize>(r: &mut impl Read, what: &str) -> Result<[u8; N]> {
    let mut b = [0u8; N];
    r.read_exact(&mut b).map_err(io_err(what))?;
    Ok(b)
}

pub(super) fn read_u8(r: &mut impl Read, what: &str) -> Result<u8> {
    Ok(read_array::<1>(r, what)?[0])
}

pub(super) fn read_u16(r: &mut impl Read, what: &str) -> Result<u16> {
    read_array(r, what).map(u16::from_le_bytes)
}

pub(super) fn read_u32(r: &mut impl Read, what: &str) -> Result<u32> {
    read_array(r, what).map(u32::from_le_bytes)
}

pub(super) fn read_u64(r: &mut impl Read, what: &str) -> Result<u64> {
    read_array(r, what).map(u64::from_le_bytes)
}

/// A file's header as it goes on the wire (and into its checksum).
pub(super) fn file_header(name: &str, mode: u32, size: u64) -> Vec<u8> {
    let mut head = Vec::with_capacity(name.len() + 15);
    head.push(b'F');
    head.extend_from_slice(&(name.len() as u16).to_le_bytes());
    head.extend_from_slice(name.as_bytes());
    head.extend_from_slice(&mode.to_le_bytes());
    head.extend_from_slice(&size.to_le_bytes());
    head
}

/// The end marker.
pub(super) fn end_marker(files: u32, bytes: u64) -> Vec<u8> {
    let mut end = vec![b'E'];
    end.extend_from_slice(&files.to_le_bytes());
    end.extend_from_slice(&bytes.to_le_bytes());
    end
}

/// A growing file's header: its chunks and end follow (see the module
/// docs of [`crate::transfer`]).
pub(super) fn growing_header(name: &str, mode: u32) -> Vec<u8> {
    let mut head = Vec::with_capacity(name.len() + 7);
    head.push(b'G');
    head.extend_from_slice(&(name.len() as u16).to_le_bytes());
    head.extend_from_slice(name.as_bytes());
    head.extend_from_slice(&mode.to_le_bytes());
    head
}
