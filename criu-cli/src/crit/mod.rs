//! CRIU's `crit`, both ways: `decode`/`show` render an image as crit's
//! JSON (criu-image does the rendering, this module prints it as Python's
//! `json.dump` does), `encode` writes an image back from that JSON,
//! `info` counts entries, and `x` explores a checkpoint directory.
//!
//! * `encode`: JSON to image bytes;
//! * `explore`: `x ps|fds|mems|rss`.
//!
//! CRIU's field options and the name tables that `encode` reverses are
//! criu-image's (`criu_image::crit::field_options`, `flag_table`,
//! `dict_value`), the ones its decoder applies.

pub mod encode;
pub mod explore;

use criu_image::crit::{render, Style};
use criu_image::{Extra, Image, Layout};
use prost::Message as _;
use serde_json::{json, Value};

use crate::output::python_json;

/// `crit decode [--pretty]`'s output (with its final newline).
pub fn decode(image: &Image, pretty: bool) -> String {
    let style = if pretty { Style::Pretty } else { Style::Plain };
    let indent = pretty.then_some(4);
    python_json(&render(image, style), indent) + "\n"
}

/// `crit show [--nopl]`'s output: the pretty style, indented; with
/// `nopl`, each payload replaced by its size (`... <4KB>`).
pub fn show(image: &Image, nopl: bool) -> String {
    let mut doc = render(image, Style::Pretty);
    if nopl {
        strip_payloads(image, &mut doc);
    }
    python_json(&doc, Some(4)) + "\n"
}

fn strip_payloads(image: &Image, doc: &mut Value) {
    let Some(entries) = doc.get_mut("entries").and_then(Value::as_array_mut) else {
        return;
    };
    for (e, rendered) in image.entries.iter().zip(entries.iter_mut()) {
        let Some(map) = rendered.as_object_mut() else {
            continue;
        };
        if image.kind.layout == Layout::GhostFile {
            map.remove("extra");
        } else if let Some(extra) = &e.extra {
            map.insert(
                "extra".into(),
                Value::String(format!("... <{}>", human_size(payload_size(extra)))),
            );
        }
    }
}

/// What crit's payload handlers count as the payload's size.
fn payload_size(extra: &Extra) -> u64 {
    match extra {
        Extra::Bytes(b) => b.len() as u64,
        Extra::TcpQueues { inq, outq } => (inq.len() + outq.len()) as u64,
        Extra::Semaphores(v) => 2 * v.len() as u64,
        Extra::Messages(msgs) => msgs
            .iter()
            .map(|(header, data)| (header.encoded_len() + data.len()) as u64)
            .sum(),
    }
}

/// crit's `human_readable`: `512B`, `4KB`, `1.5MB`.
fn human_size(n: u64) -> String {
    let mut num = n as f64;
    for unit in ["", "K", "M", "G", "T", "P", "E", "Z"] {
        if num < 1024.0 {
            return if num.fract() == 0.0 {
                format!("{num:.0}{unit}B")
            } else {
                format!("{num:.1}{unit}B")
            };
        }
        num /= 1024.0;
    }
    format!("{num:.1}YB")
}

/// `crit info`'s output: the magic and the number of entries (a pagemap's
/// head not counted).
pub fn info(image: &Image) -> String {
    let count = match image.kind.layout {
        Layout::Pagemap => image.entries.len().saturating_sub(1),
        _ => image.entries.len(),
    };
    python_json(&json!({ "magic": image.magic, "count": count }), Some(4)) + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_crit_prints_them() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(512), "512B");
        assert_eq!(human_size(4096), "4KB");
        assert_eq!(human_size(1536), "1.5KB");
    }
}
