//! The JSON CRIU's `crit decode` prints, built by walking each message
//! reflectively as crit's `pb2dict` does: set fields in field order, enums
//! by name, bytes as base64 (or quoted-printable for `(criu).conv =
//! "unix_name"`), and, in the pretty style, CRIU's field options applied
//! (hex numbers, IP addresses, flag names, `major:minor` devices, names
//! of socket families, types, states and protocols).

mod options;
pub(crate) mod tables;
pub(crate) mod text;

use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, Value};
use serde_json::{json, Map, Value as Json};

use crate::image::{Entry, Image};
use crate::payload::Extra;
pub use options::{of as field_options, CriuOpts};

/// The names and bits of the flag table a `(criu).flags` option names
/// (`mmap.prot`, `mmap.flags`, `mmap.status`, `rfile.flags`,
/// `pmap.flags`, `seals.flags`), in the order crit lists them; `None` for
/// a table crit does not have.
pub fn flag_table(name: &str) -> Option<&'static [(&'static str, u64)]> {
    tables::flags(name)
}

/// The number `name` stands for in the `(criu).dict` dictionary `dict`
/// (`gen`, `sk`) of the field `field` (`task_state`, `family`, `type`,
/// `state`, `proto`): what `crit encode` reads back from a pretty value.
pub fn dict_value(dict: &str, field: &str, name: &str) -> Option<i128> {
    tables::dict_value(dict, field, name)
}

/// Which of crit's two renderings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Style {
    /// `crit decode`: numbers as numbers.
    Plain,
    /// `crit decode --pretty` (and `crit show`): CRIU's field options applied.
    Pretty,
}

/// The whole image as crit prints it: `{"magic": ..., "entries": [...]}`.
pub fn render(image: &Image, style: Style) -> Json {
    let entries: Vec<Json> = image.entries.iter().map(|e| entry(e, style)).collect();
    json!({ "magic": image.magic, "entries": entries })
}

fn entry(e: &Entry, style: Style) -> Json {
    let mut object = message(&e.message, style, false);
    if let (Some(extra), Json::Object(map)) = (&e.extra, &mut object) {
        map.insert("extra".into(), payload(extra));
    }
    object
}

/// crit renders payload headers (message queues) in the plain style always.
fn payload(extra: &Extra) -> Json {
    match extra {
        Extra::Bytes(b) => Json::String(text::base64_lines(b)),
        Extra::TcpQueues { inq, outq } => {
            json!({ "inq": text::base64_lines(inq), "outq": text::base64_lines(outq) })
        }
        Extra::Semaphores(values) => values.iter().map(|v| Json::from(*v)).collect(),
        Extra::Messages(msgs) => msgs
            .iter()
            .flat_map(|(header, data)| {
                [
                    message(header, Style::Plain, false),
                    Json::String(text::base64_lines(data)),
                ]
            })
            .collect(),
    }
}

/// A message as a JSON object; `hex` is inherited from a parent field
/// marked `(criu).hex`, as crit passes it down.
pub fn message(msg: &DynamicMessage, style: Style, hex: bool) -> Json {
    let mut fields: Vec<(FieldDescriptor, &Value)> = msg.fields().collect();
    fields.sort_by_key(|(f, _)| f.number());
    let mut map = Map::new();
    for (field, value) in fields {
        let opts = options::of(&field);
        let rendered = match value {
            Value::List(items) if style == Style::Pretty && opts.ipadd => text::ip_address(items),
            Value::List(items) => items
                .iter()
                .map(|v| scalar(&field, &opts, v, style, hex))
                .collect(),
            v => scalar(&field, &opts, v, style, hex),
        };
        map.insert(field.name().to_string(), rendered);
    }
    Json::Object(map)
}

fn scalar(
    field: &FieldDescriptor,
    opts: &CriuOpts,
    value: &Value,
    style: Style,
    hex: bool,
) -> Json {
    let hex = hex || opts.hex;
    match value {
        Value::Message(m) => message(m, style, hex),
        Value::Bytes(b) if opts.conv.as_deref() == Some("unix_name") => {
            Json::String(text::quoted_printable(b))
        }
        Value::Bytes(b) => Json::String(text::base64_lines(b)),
        Value::EnumNumber(n) => match field.kind() {
            Kind::Enum(e) => e
                .get_value(*n)
                .map_or(Json::Null, |v| Json::String(v.name().to_string())),
            _ => Json::from(*n),
        },
        Value::Bool(b) => Json::Bool(*b),
        Value::String(s) => Json::String(s.clone()),
        Value::I32(v) => integer(field, opts, i128::from(*v), style, hex),
        Value::I64(v) => integer(field, opts, i128::from(*v), style, hex),
        Value::U32(v) => integer(field, opts, i128::from(*v), style, hex),
        Value::U64(v) => integer(field, opts, i128::from(*v), style, hex),
        Value::F32(v) => Json::from(*v),
        Value::F64(v) => Json::from(*v),
        Value::List(_) | Value::Map(_) => Json::Null,
    }
}

/// crit's precedence for a pretty integer: hex, then device, then flags,
/// then a dictionary of names; a plain number otherwise.
fn integer(field: &FieldDescriptor, opts: &CriuOpts, v: i128, style: Style, hex: bool) -> Json {
    if style == Style::Pretty {
        if hex {
            return Json::String(text::hex(v));
        }
        if opts.dev {
            return Json::String(text::device(v as u64, opts.odev));
        }
        if let Some(map) = &opts.flags {
            return Json::String(match tables::flags(map) {
                Some(names) => text::flag_names(v as u64, names),
                None => text::hex(v),
            });
        }
        if let Some(dict) = &opts.dict {
            if let Some(name) = tables::dict(dict, field.name(), v) {
                return Json::String(name.to_string());
            }
        }
    }
    number(v)
}

fn number(v: i128) -> Json {
    if v < 0 {
        Json::from(v as i64)
    } else {
        Json::from(v as u64)
    }
}
