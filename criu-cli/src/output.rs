//! Writing results: one JSON object for `--json`, and JSON in the exact
//! text Python's `json.dump` produces (what crit prints), so that
//! `criu-rs decode` and `crit decode` print the same bytes.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use crate::error::{CliError, CliResult};

/// Prints `value` as one line of JSON on stdout.
pub fn print_json(value: &impl Serialize) -> CliResult {
    let text = serde_json::to_string(value)
        .map_err(|e| CliError::new(crate::error::Exit::Failure, format!("encoding JSON: {e}")))?;
    println!("{text}");
    Ok(())
}

/// Python's `json.dump(value, f, indent=indent)` with its defaults
/// (`ensure_ascii`, separators `", "`/`": "` unindented, `","`/`": "`
/// indented).
pub fn python_json(value: &Value, indent: Option<usize>) -> String {
    let mut out = String::new();
    write_value(&mut out, value, indent, 0);
    out
}

fn write_value(out: &mut String, value: &Value, indent: Option<usize>, depth: usize) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&python_number(n)),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            if items.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                separator(out, i, indent, depth + 1);
                write_value(out, item, indent, depth + 1);
            }
            close(out, indent, depth);
            out.push(']');
        }
        Value::Object(map) => {
            if map.is_empty() {
                out.push_str("{}");
                return;
            }
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                separator(out, i, indent, depth + 1);
                write_string(out, k);
                out.push_str(": ");
                write_value(out, v, indent, depth + 1);
            }
            close(out, indent, depth);
            out.push('}');
        }
    }
}

fn separator(out: &mut String, i: usize, indent: Option<usize>, depth: usize) {
    match indent {
        None if i > 0 => out.push_str(", "),
        None => {}
        Some(n) => {
            if i > 0 {
                out.push(',');
            }
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    }
}

fn close(out: &mut String, indent: Option<usize>, depth: usize) {
    if let Some(n) = indent {
        out.push('\n');
        out.push_str(&" ".repeat(n * depth));
    }
}

/// Python prints floats with `repr` (`1.0`, `1e-05`); integers as they are.
fn python_number(n: &serde_json::Number) -> String {
    match n.as_f64() {
        Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 1e16 => format!("{f:.1}"),
        _ => n.to_string(),
    }
}

/// A string as Python's `ensure_ascii` encoder writes it.
fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            c => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
}

/// The bytes of `path`, or of stdin when `None`.
pub fn read_input(path: Option<&Path>) -> CliResult<Vec<u8>> {
    let mut data = Vec::new();
    match path {
        Some(p) => {
            File::open(p)
                .and_then(|mut f| f.read_to_end(&mut data))
                .map_err(|e| CliError::io(format!("reading {}", p.display()), e))?;
        }
        None => {
            io::stdin()
                .read_to_end(&mut data)
                .map_err(|e| CliError::io("reading stdin", e))?;
        }
    }
    Ok(data)
}

/// Writes `data` to `path`, or to stdout when `None`.
pub fn write_output(path: Option<&Path>, data: &[u8]) -> CliResult {
    match path {
        Some(p) => {
            std::fs::write(p, data).map_err(|e| CliError::io(format!("writing {}", p.display()), e))
        }
        None => {
            let mut out = io::stdout().lock();
            out.write_all(data)
                .and_then(|()| out.flush())
                .map_err(|e| CliError::io("writing stdout", e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn python_separators_and_escapes() {
        let v = json!({"magic": "PSTREE", "entries": [{"pid": 1, "name": "a\u{e9}\n\u{1f600}"}], "e": []});
        let flat = python_json(&v, None);
        assert!(flat.contains(r#""entries": [{"#), "{flat}");
        assert!(flat.contains(r#""a\u00e9\n\ud83d\ude00""#), "{flat}");
        assert!(flat.contains(r#", "#), "{flat}");
        let pretty = python_json(&json!({"a": [1, 2]}), Some(4));
        assert_eq!(pretty, "{\n    \"a\": [\n        1,\n        2\n    ]\n}");
    }
}
