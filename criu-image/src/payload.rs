//! The raw data some images carry after an entry (pipe contents, socket
//! queues, TCP queues, BPF maps, SysV IPC objects), read as crit reads it.

use prost_reflect::{DynamicMessage, Value};

use crate::descriptors::pool;
use crate::error::{ErrorKind, Result};
use crate::framing::{round_up, Reader};
use crate::kind::PayloadKind;

/// The payload that followed an entry.
#[derive(Debug, Clone, PartialEq)]
pub enum Extra {
    /// Opaque bytes (pipe, FIFO, socket queue, BPF map, shared memory data,
    /// a ghost file's contents).
    Bytes(Vec<u8>),
    /// A TCP connection's receive and send queues.
    TcpQueues {
        /// Received, not yet read by the process.
        inq: Vec<u8>,
        /// Sent, not yet acknowledged.
        outq: Vec<u8>,
    },
    /// A semaphore set's values.
    Semaphores(Vec<u16>),
    /// A message queue's messages: each `ipc_msg` header and its text.
    Messages(Vec<(DynamicMessage, Vec<u8>)>),
}

/// An unsigned field of the entry the payload follows (absent is 0, as
/// protobuf's default).
fn field_u64(entry: &DynamicMessage, name: &str) -> u64 {
    match entry.get_field_by_name(name).as_deref() {
        Some(Value::U32(v)) => u64::from(*v),
        Some(Value::U64(v)) => *v,
        Some(Value::I32(v)) => *v as u64,
        Some(Value::I64(v)) => *v as u64,
        _ => 0,
    }
}

fn field_bool(entry: &DynamicMessage, name: &str) -> bool {
    matches!(
        entry.get_field_by_name(name).as_deref(),
        Some(Value::Bool(true))
    )
}

/// Reads the payload of `kind` that follows `entry`.
pub(crate) fn read(
    reader: &mut Reader<'_>,
    kind: PayloadKind,
    entry: &DynamicMessage,
) -> Result<Extra> {
    Ok(match kind {
        PayloadKind::PipeData => Extra::Bytes(reader.take(field_u64(entry, "bytes"))?.to_vec()),
        PayloadKind::SkQueue => Extra::Bytes(reader.take(field_u64(entry, "length"))?.to_vec()),
        PayloadKind::BpfMap => {
            let n = field_u64(entry, "keys_bytes").saturating_add(field_u64(entry, "values_bytes"));
            Extra::Bytes(reader.take(n)?.to_vec())
        }
        PayloadKind::TcpStream => Extra::TcpQueues {
            inq: reader.take(field_u64(entry, "inq_len"))?.to_vec(),
            outq: reader.take(field_u64(entry, "outq_len"))?.to_vec(),
        },
        // Newer CRIU keeps segment contents in pagemap/pages images and says
        // so with `in_pagemaps`; nothing follows the entry then (crit reads
        // `size` bytes regardless: at the end of the file it gets none, and
        // shows ""; before another entry it would misread that entry).
        PayloadKind::IpcShm if field_bool(entry, "in_pagemaps") => Extra::Bytes(Vec::new()),
        PayloadKind::IpcShm => {
            let size = field_u64(entry, "size");
            let data = reader.take(size)?.to_vec();
            reader.skip_padding(round_up(size, 4) - size);
            Extra::Bytes(data)
        }
        PayloadKind::IpcSem => semaphores(reader, field_u64(entry, "nsems"))?,
        PayloadKind::IpcMsg => messages(reader, field_u64(entry, "qnum"))?,
    })
}

fn semaphores(reader: &mut Reader<'_>, nsems: u64) -> Result<Extra> {
    let size = nsems.saturating_mul(2);
    let bytes = reader.take(size)?;
    reader.skip_padding(round_up(size, 8) - size);
    Ok(Extra::Semaphores(
        bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect(),
    ))
}

/// `qnum` messages; like crit, a queue whose image ends early keeps the
/// messages read so far.
fn messages(reader: &mut Reader<'_>, qnum: u64) -> Result<Extra> {
    let descriptor = pool()
        .get_message_by_name("ipc_msg")
        .ok_or_else(|| reader.fail(ErrorKind::NoDecoder("ipc_msg".into())))?;
    let mut out = Vec::new();
    for _ in 0..qnum {
        if reader.at_end() {
            break;
        }
        let (_, msg) = reader.message(&descriptor)?;
        let size = field_u64(&msg, "msize");
        let text = reader.take(size)?.to_vec();
        reader.skip_padding(round_up(size, 8) - size);
        out.push((msg, text));
    }
    Ok(Extra::Messages(out))
}
