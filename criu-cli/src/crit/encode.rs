//! `crit encode`: crit's JSON of an image (plain or `--pretty`) back into
//! the image's bytes, as CRIU's `pycriu.images.dump` writes them: the
//! magics, then per entry a little-endian u32 size and the protobuf
//! message (fields in number order, as protobuf serialises), then the
//! payload some images carry. The values crit renders in the pretty style
//! (hex strings, flag names, `major:minor` devices, IP addresses,
//! dictionary names, quoted-printable socket names) are read back as crit
//! reads them.

use std::net::IpAddr;

use base64::Engine as _;
use criu_image::magic::{self, IMG_COMMON, IMG_SERVICE};
use criu_image::{ImageKind, Layout, PayloadKind};
use prost::Message as _;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, Value};
use serde_json::{Map, Value as Json};

use criu_image::crit::{self as opts, CriuOpts as FieldOpts};

/// Why a document could not be encoded; the message names the place.
#[derive(Debug)]
pub struct EncodeError(pub String);

impl std::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

type Result<T> = std::result::Result<T, EncodeError>;

fn err<T>(msg: impl Into<String>) -> Result<T> {
    Err(EncodeError(msg.into()))
}

/// The image crit's JSON `doc` describes.
pub fn encode(doc: &Json) -> Result<Vec<u8>> {
    let name = doc
        .get("magic")
        .and_then(Json::as_str)
        .ok_or_else(|| EncodeError("no \"magic\" string at the top level".into()))?;
    let value =
        magic::value_of(name).ok_or_else(|| EncodeError(format!("unknown magic {name:?}")))?;
    let kind = ImageKind::by_magic(name)
        .ok_or_else(|| EncodeError(format!("crit has no encoder for {name} images")))?;
    let entries = doc
        .get("entries")
        .and_then(Json::as_array)
        .ok_or_else(|| EncodeError("no \"entries\" array at the top level".into()))?;
    let mut out = Vec::new();
    match name {
        "INVENTORY" => {}
        "STATS" | "IRMAP_CACHE" => out.extend_from_slice(&IMG_SERVICE.to_le_bytes()),
        _ => out.extend_from_slice(&IMG_COMMON.to_le_bytes()),
    }
    out.extend_from_slice(&value.to_le_bytes());
    match kind.layout {
        Layout::Entries(payload) => plain_entries(&mut out, kind.message, payload, entries)?,
        Layout::Pagemap => pagemap(&mut out, entries)?,
        Layout::GhostFile => ghost_file(&mut out, entries)?,
    }
    Ok(out)
}

fn descriptor(name: &str) -> Result<MessageDescriptor> {
    criu_image::pool()
        .get_message_by_name(name)
        .ok_or_else(|| EncodeError(format!("no message {name} in CRIU's protos")))
}

fn object<'a>(v: &'a Json, what: &str) -> Result<&'a Map<String, Json>> {
    v.as_object()
        .ok_or_else(|| EncodeError(format!("{what} is not a JSON object")))
}

/// Appends the size and bytes of the message `d` describes; returns it.
fn write_message(
    out: &mut Vec<u8>,
    desc: &MessageDescriptor,
    d: &Json,
    at: &str,
) -> Result<DynamicMessage> {
    let msg = message(desc, object(d, at)?, at)?;
    let bytes = msg.encode_to_vec();
    let size = u32::try_from(bytes.len()).or_else(|_| err(format!("{at}: message over 4 GiB")))?;
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(&bytes);
    Ok(msg)
}

fn plain_entries(
    out: &mut Vec<u8>,
    message_name: &str,
    payload: Option<PayloadKind>,
    entries: &[Json],
) -> Result<()> {
    let desc = descriptor(message_name)?;
    for (i, e) in entries.iter().enumerate() {
        let at = format!("entry {i}");
        let msg = write_message(out, &desc, e, &at)?;
        let extra = e.get("extra").filter(|x| truthy(x));
        if let (Some(kind), Some(extra)) = (payload, extra) {
            write_payload(out, kind, extra, &msg, &at)?;
        }
    }
    Ok(())
}

fn pagemap(out: &mut Vec<u8>, entries: &[Json]) -> Result<()> {
    let head = descriptor("pagemap_head")?;
    let body = descriptor("pagemap_entry")?;
    for (i, e) in entries.iter().enumerate() {
        let desc = if i == 0 { &head } else { &body };
        write_message(out, desc, e, &format!("entry {i}"))?;
    }
    Ok(())
}

fn ghost_file(out: &mut Vec<u8>, entries: &[Json]) -> Result<()> {
    let Some(first) = entries.first() else {
        return err("a ghost file image needs its ghost_file_entry");
    };
    let head = write_message(out, &descriptor("ghost_file_entry")?, first, "entry 0")?;
    let chunked = matches!(
        head.get_field_by_name("chunks").as_deref(),
        Some(Value::Bool(true))
    );
    if !chunked {
        out.extend_from_slice(&base64(required_extra(first, "entry 0")?, "entry 0")?);
        return Ok(());
    }
    let chunk = descriptor("ghost_chunk_entry")?;
    for (i, e) in entries.iter().enumerate().skip(1) {
        let at = format!("entry {i}");
        write_message(out, &chunk, e, &at)?;
        out.extend_from_slice(&base64(required_extra(e, &at)?, &at)?);
    }
    Ok(())
}

fn required_extra<'a>(e: &'a Json, at: &str) -> Result<&'a Json> {
    e.get("extra")
        .ok_or_else(|| EncodeError(format!("{at}: the file's contents (\"extra\") are missing")))
}

/// Python's truth of a JSON value (crit skips a falsy payload).
fn truthy(v: &Json) -> bool {
    match v {
        Json::Null => false,
        Json::Bool(b) => *b,
        Json::Number(n) => n.as_f64() != Some(0.0),
        Json::String(s) => !s.is_empty(),
        Json::Array(a) => !a.is_empty(),
        Json::Object(o) => !o.is_empty(),
    }
}

fn u64_field(msg: &DynamicMessage, name: &str) -> u64 {
    match msg.get_field_by_name(name).as_deref() {
        Some(Value::U32(v)) => u64::from(*v),
        Some(Value::U64(v)) => *v,
        Some(Value::I32(v)) => u64::try_from(*v).unwrap_or(0),
        Some(Value::I64(v)) => u64::try_from(*v).unwrap_or(0),
        _ => 0,
    }
}

fn pad(out: &mut Vec<u8>, len: u64, align: u64) {
    let rounded = len.div_ceil(align) * align;
    out.resize(out.len() + (rounded - len) as usize, 0);
}

fn write_payload(
    out: &mut Vec<u8>,
    kind: PayloadKind,
    extra: &Json,
    msg: &DynamicMessage,
    at: &str,
) -> Result<()> {
    let at = format!("{at} (extra)");
    match kind {
        PayloadKind::PipeData | PayloadKind::SkQueue | PayloadKind::BpfMap => {
            out.extend_from_slice(&base64(extra, &at)?);
        }
        PayloadKind::TcpStream => {
            let q = object(extra, &at)?;
            for name in ["inq", "outq"] {
                let v = q
                    .get(name)
                    .ok_or_else(|| EncodeError(format!("{at}: no {name:?}")))?;
                out.extend_from_slice(&base64(v, &at)?);
            }
        }
        PayloadKind::IpcSem => {
            let values = extra
                .as_array()
                .ok_or_else(|| EncodeError(format!("{at}: not a list of semaphore values")))?;
            let nsems = u64_field(msg, "nsems");
            if values.len() as u64 != nsems {
                return err(format!(
                    "{at}: {} values for {nsems} semaphores",
                    values.len()
                ));
            }
            for v in values {
                let n = v
                    .as_u64()
                    .and_then(|n| u16::try_from(n).ok())
                    .ok_or_else(|| EncodeError(format!("{at}: {v} is not a u16")))?;
                out.extend_from_slice(&n.to_le_bytes());
            }
            pad(out, 2 * nsems, 8);
        }
        PayloadKind::IpcMsg => ipc_messages(out, extra, &at)?,
        PayloadKind::IpcShm => {
            let size = u64_field(msg, "size");
            let data = base64(extra, &at)?;
            let take = data.len().min(size as usize);
            out.extend_from_slice(&data[..take]);
            pad(out, size, 4);
        }
    }
    Ok(())
}

/// A message queue: (ipc_msg, its bytes) pairs, each padded to 8 bytes.
fn ipc_messages(out: &mut Vec<u8>, extra: &Json, at: &str) -> Result<()> {
    let items = extra
        .as_array()
        .ok_or_else(|| EncodeError(format!("{at}: not a list of messages")))?;
    let desc = descriptor("ipc_msg")?;
    for pair in items.chunks(2) {
        let header = write_message(out, &desc, &pair[0], at)?;
        let msize = u64_field(&header, "msize");
        let data = match pair.get(1) {
            Some(d) => base64(d, at)?,
            None => return err(format!("{at}: a message without its data")),
        };
        let take = data.len().min(msize as usize);
        out.extend_from_slice(&data[..take]);
        out.resize(out.len() + (msize.div_ceil(8) * 8 - msize) as usize, 0);
    }
    Ok(())
}

/// Base64 as Python's `base64.decodebytes`: characters outside the
/// alphabet (the newlines crit writes every 76) are skipped.
fn base64(v: &Json, at: &str) -> Result<Vec<u8>> {
    let s = v
        .as_str()
        .ok_or_else(|| EncodeError(format!("{at}: {v} is not a base64 string")))?;
    let clean: String = s
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/'))
        .collect();
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(clean.as_bytes())
        .or_else(|e| err(format!("{at}: bad base64: {e}")))
}

/// crit's `dict2pb`: the fields of `d` that the message has, by name.
fn message(desc: &MessageDescriptor, d: &Map<String, Json>, at: &str) -> Result<DynamicMessage> {
    let mut msg = DynamicMessage::new(desc.clone());
    for field in desc.fields() {
        let Some(value) = d.get(field.name()) else {
            continue;
        };
        let at = format!("{at}.{}", field.name());
        let v = if field.is_list() {
            Value::List(list(&field, value, &at)?)
        } else if let Kind::Message(sub) = field.kind() {
            Value::Message(message(&sub, object(value, &at)?, &at)?)
        } else {
            scalar(&field, &opts::field_options(&field), value, &at)?
        };
        msg.try_set_field(&field, v)
            .or_else(|e| err(format!("{at}: {e}")))?;
    }
    Ok(msg)
}

fn list(field: &FieldDescriptor, value: &Json, at: &str) -> Result<Vec<Value>> {
    let items = value
        .as_array()
        .ok_or_else(|| EncodeError(format!("{at}: not a list")))?;
    let o = opts::field_options(field);
    if let (true, Some(Json::String(addr))) = (o.ipadd, items.first()) {
        return ip_words(addr, at);
    }
    items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let at = format!("{at}[{i}]");
            match field.kind() {
                Kind::Message(sub) => Ok(Value::Message(message(&sub, object(v, &at)?, &at)?)),
                _ => scalar(field, &o, v, &at),
            }
        })
        .collect()
}

/// An address as crit stores it: one u32 (IPv4) or four (IPv6), each in
/// network byte order read as a little-endian number.
fn ip_words(addr: &str, at: &str) -> Result<Vec<Value>> {
    let ip: IpAddr = addr
        .parse()
        .or_else(|_| err(format!("{at}: {addr:?} is not an IP address")))?;
    let words: Vec<u32> = match ip {
        IpAddr::V4(v4) => vec![u32::from_ne_bytes(v4.octets())],
        IpAddr::V6(v6) => v6
            .octets()
            .chunks(4)
            .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    };
    Ok(words.into_iter().map(Value::U32).collect())
}

fn scalar(field: &FieldDescriptor, o: &FieldOpts, v: &Json, at: &str) -> Result<Value> {
    match field.kind() {
        Kind::Bytes => {
            let s = v
                .as_str()
                .ok_or_else(|| EncodeError(format!("{at}: {v} is not a string")))?;
            let bytes = match o.conv.as_deref() {
                Some("unix_name") => quoted_printable(s),
                _ => base64(v, at)?,
            };
            Ok(Value::Bytes(bytes.into()))
        }
        Kind::Enum(e) => {
            let number = match v {
                Json::String(name) => e.get_value_by_name(name).map(|x| x.number()),
                Json::Number(n) => n.as_i64().and_then(|n| i32::try_from(n).ok()),
                _ => None,
            };
            number
                .map(Value::EnumNumber)
                .ok_or_else(|| EncodeError(format!("{at}: {v} is not a value of {}", e.name())))
        }
        Kind::Bool => Ok(Value::Bool(truthy(v))),
        Kind::String => Ok(Value::String(match v {
            Json::String(s) => s.clone(),
            other => other.to_string(),
        })),
        Kind::Double => number_f64(v, at).map(Value::F64),
        Kind::Float => number_f64(v, at).map(|f| Value::F32(f as f32)),
        Kind::Message(_) => err(format!("{at}: a message where a value was expected")),
        int => integer(field, o, v, at).and_then(|n| int_value(&int, n, at)),
    }
}

fn number_f64(v: &Json, at: &str) -> Result<f64> {
    v.as_f64()
        .ok_or_else(|| EncodeError(format!("{at}: {v} is not a number")))
}

/// An integer field's value: a JSON number, or a string crit wrote in the
/// pretty style.
fn integer(field: &FieldDescriptor, o: &FieldOpts, v: &Json, at: &str) -> Result<i128> {
    let bad = || EncodeError(format!("{at}: {v} is not an integer"));
    let s = match v {
        Json::Number(n) => {
            return n
                .as_i64()
                .map(i128::from)
                .or_else(|| n.as_u64().map(i128::from))
                .or_else(|| n.as_f64().map(|f| f.trunc() as i128))
                .ok_or_else(bad)
        }
        Json::Bool(b) => return Ok(i128::from(*b)),
        Json::String(s) => s,
        _ => return Err(bad()),
    };
    if o.dev {
        return device(s, o.odev).ok_or_else(bad);
    }
    if let Some(table) = o.flags.as_deref().and_then(opts::flag_table) {
        return unmap_flags(s, table).ok_or_else(bad);
    }
    if let Some(dict) = &o.dict {
        if let Some(n) = opts::dict_value(dict, field.name(), s) {
            return Ok(n);
        }
    }
    python_int(s).ok_or_else(bad)
}

fn int_value(kind: &Kind, n: i128, at: &str) -> Result<Value> {
    let range = || EncodeError(format!("{at}: {n} is out of range for {kind:?}"));
    Ok(match kind {
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            Value::I32(i32::try_from(n).map_err(|_| range())?)
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            Value::I64(i64::try_from(n).map_err(|_| range())?)
        }
        Kind::Uint32 | Kind::Fixed32 => Value::U32(u32::try_from(n).map_err(|_| range())?),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(u64::try_from(n).map_err(|_| range())?),
        _ => return Err(range()),
    })
}

/// `int(s, 0)`: decimal, or `0x`/`0o`/`0b` with a sign and underscores.
fn python_int(s: &str) -> Option<i128> {
    let s = s.trim();
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let lower = s.to_ascii_lowercase();
    let (radix, digits) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d)
    } else {
        // Python refuses leading zeros in a decimal with base 0.
        if lower.len() > 1 && lower.starts_with('0') && lower.bytes().any(|b| b != b'0') {
            return None;
        }
        (10, lower.as_str())
    };
    let digits = digits.strip_prefix('_').unwrap_or(digits);
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
    {
        return None;
    }
    let n = i128::from_str_radix(&digits.replace('_', ""), radix).ok()?;
    Some(if neg { -n } else { n })
}

/// crit's `unmap_flags`: `NAME | NAME | 0x..`, summed.
fn unmap_flags(s: &str, table: &[(&str, u64)]) -> Option<i128> {
    if s.is_empty() {
        return Some(0);
    }
    s.split('|')
        .map(str::trim)
        .map(|part| match table.iter().find(|(name, _)| *name == part) {
            Some((_, bit)) => Some(i128::from(*bit)),
            None => python_int(part),
        })
        .sum()
}

/// `major:minor`, in the kernel's encoding (`major << 20 | minor`) or,
/// for `odev` fields, glibc's `makedev`.
fn device(s: &str, old: bool) -> Option<i128> {
    let (major, minor) = s.split_once(':')?;
    let major: u64 = major.trim().parse().ok()?;
    let minor: u64 = minor.trim().parse().ok()?;
    let v = if old {
        ((major & 0xffff_f000) << 32)
            | ((major & 0xfff) << 8)
            | ((minor & 0xffff_ff00) << 12)
            | (minor & 0xff)
    } else {
        (major << 20) | minor
    };
    Some(i128::from(v))
}

/// Quoted-printable (`binascii.a2b_qp`): `=XX` is a byte, `=` before a line
/// end is a soft break, anything else stands for itself.
fn quoted_printable(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'=' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let hex = |c: u8| (c as char).to_digit(16);
        match (b.get(i + 1), b.get(i + 2)) {
            (Some(b'\n'), _) => i += 2,
            (Some(b'\r'), Some(b'\n')) => i += 3,
            (Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (None, _) => i += 1,
            _ => {
                out.push(b'=');
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_int_accepts_what_int_base_0_does() {
        assert_eq!(python_int("0x1f"), Some(31));
        assert_eq!(python_int(" -0x10 "), Some(-16));
        assert_eq!(python_int("0o17"), Some(15));
        assert_eq!(python_int("1_000"), Some(1000));
        assert_eq!(python_int("0"), Some(0));
        assert_eq!(python_int("000"), Some(0));
        assert_eq!(python_int("010"), None);
        assert_eq!(python_int("0x"), None);
        assert_eq!(python_int("abc"), None);
    }

    #[test]
    fn flags_devices_and_names_read_back() {
        let prot = opts::flag_table("mmap.prot").unwrap();
        assert_eq!(unmap_flags("PROT_READ | PROT_WRITE", prot), Some(3));
        assert_eq!(unmap_flags("PROT_READ | 0x100", prot), Some(0x101));
        assert_eq!(unmap_flags("", prot), Some(0));
        assert_eq!(device("8:1", false), Some((8 << 20) | 1));
        assert_eq!(device("8:1", true), Some((8 << 8) | 1));
        assert_eq!(quoted_printable("a=3Db=\nc=00"), b"a=bc\0");
    }

    #[test]
    fn addresses_are_network_order_words() {
        let w = ip_words("127.0.0.1", "x").unwrap();
        assert_eq!(w, vec![Value::U32(0x0100_007f)]);
        assert_eq!(ip_words("::1", "x").unwrap().len(), 4);
    }

    #[test]
    fn malformed_documents_are_errors_not_panics() {
        for doc in [
            serde_json::json!({}),
            serde_json::json!({"magic": "NOPE", "entries": []}),
            serde_json::json!({"magic": "PSTREE"}),
            serde_json::json!({"magic": "PSTREE", "entries": [1]}),
            serde_json::json!({"magic": "PSTREE", "entries": [{"pid": "x"}]}),
            serde_json::json!({"magic": "PSTREE", "entries": [{"pid": 1u64 << 40}]}),
            serde_json::json!({"magic": "GHOST_FILE", "entries": []}),
        ] {
            assert!(encode(&doc).is_err(), "{doc}");
        }
    }
}
