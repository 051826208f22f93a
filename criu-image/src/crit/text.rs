//! The text encodings crit uses: Python's `base64.encodebytes` (76-column
//! lines, each ending in a newline), `quopri.encodestring`, `"0x%x"`,
//! `major:minor`, flag lists joined by `" | "`, and compressed IP addresses.

use base64::Engine;
use prost_reflect::Value;
use serde_json::Value as Json;

/// Base64 in lines of at most 76 characters, every line ending in `\n`.
pub(crate) fn base64_lines(data: &[u8]) -> String {
    let flat = base64::engine::general_purpose::STANDARD.encode(data);
    let mut out = String::with_capacity(flat.len() + flat.len() / 76 + 1);
    for chunk in flat.as_bytes().chunks(76) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out
}

/// Python's `"0x%x" % v` (a minus sign before the prefix when negative).
pub(crate) fn hex(v: i128) -> String {
    if v < 0 {
        format!("-0x{:x}", -v)
    } else {
        format!("0x{v:x}")
    }
}

/// A device number as `major:minor`: the kernel's packing (minor in the low
/// 20 bits) or, for `odev`, glibc's `major()`/`minor()` of a `dev_t`.
pub(crate) fn device(v: u64, old: bool) -> String {
    if old {
        // glibc's gnu_dev_major/minor, both 32-bit results.
        let major = ((v >> 8) & 0xfff) | ((v >> 32) & 0xffff_f000);
        let minor = (v & 0xff) | ((v >> 12) & 0xffff_ff00);
        format!("{major}:{minor}")
    } else {
        format!("{}:{}", v >> 20, v & ((1 << 20) - 1))
    }
}

/// The names of the bits set, then any unnamed rest in hex.
pub(crate) fn flag_names(value: u64, names: &[(&str, u64)]) -> String {
    let mut parts: Vec<String> = names
        .iter()
        .filter(|(_, bit)| value & bit != 0)
        .map(|(n, _)| n.to_string())
        .collect();
    let known = names.iter().fold(0, |acc, (_, bit)| acc | bit);
    let rest = value & !known;
    if rest != 0 {
        parts.push(format!("0x{rest:x}"));
    }
    parts.join(" | ")
}

/// CRIU stores addresses as u32 words in network order: one word is IPv4,
/// four are IPv6 (written compressed, as Python's `ipaddress` does).
pub(crate) fn ip_address(words: &[Value]) -> Json {
    let w: Vec<u32> = words
        .iter()
        .map(|v| match v {
            Value::U32(x) => *x,
            _ => 0,
        })
        .collect();
    match ip_words(&w) {
        Some(text) => Json::Array(vec![Json::String(text)]),
        None => w.iter().map(|x| Json::from(*x)).collect(),
    }
}

/// The address CRIU's network-order words hold (one word IPv4, four IPv6).
pub(crate) fn ip_words(w: &[u32]) -> Option<String> {
    match w.len() {
        1 => Some(std::net::Ipv4Addr::from(u32::from_be_bytes(w[0].to_le_bytes())).to_string()),
        n if n >= 4 => Some(ipv6_compressed(&w[..4])),
        _ => None,
    }
}

/// RFC 5952 text (Python's form: no dotted quad for mapped addresses).
fn ipv6_compressed(words: &[u32]) -> String {
    let groups: Vec<u16> = words
        .iter()
        .flat_map(|w| {
            let b = w.to_le_bytes();
            [
                u16::from_be_bytes([b[0], b[1]]),
                u16::from_be_bytes([b[2], b[3]]),
            ]
        })
        .collect();
    let (mut best_start, mut best_len) = (0, 0);
    let mut i = 0;
    while i < 8 {
        if groups[i] == 0 {
            let start = i;
            while i < 8 && groups[i] == 0 {
                i += 1;
            }
            if i - start > best_len {
                (best_start, best_len) = (start, i - start);
            }
        } else {
            i += 1;
        }
    }
    let join = |g: &[u16]| {
        g.iter()
            .map(|x| format!("{x:x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    if best_len < 2 {
        return join(&groups);
    }
    format!(
        "{}::{}",
        join(&groups[..best_start]),
        join(&groups[best_start + best_len..])
    )
}

/// Python's `quopri.encodestring` (binascii's quoted-printable for text,
/// tabs and spaces left alone except at a line end, 76-column soft breaks).
pub(crate) fn quoted_printable(data: &[u8]) -> String {
    const MAX_LINE: usize = 76;
    let crlf = data
        .iter()
        .position(|&c| c == b'\n')
        .is_some_and(|p| p > 0 && data[p - 1] == b'\r');
    let newline = if crlf { "\r\n" } else { "\n" };
    let mut out = String::new();
    let mut line_len = 0;
    let mut i = 0;
    while i < data.len() {
        let c = data[i];
        let last = i + 1 == data.len();
        let next = data.get(i + 1).copied();
        let lone_dot =
            c == b'.' && line_len == 0 && (last || matches!(next, Some(b'\n' | b'\r' | 0)));
        let trailing_space = (c == b'\t' || c == b' ') && last;
        let control = c < 33 && c != b'\r' && c != b'\n' && c != b'\t' && c != b' ';
        if c > 126 || c == b'=' || lone_dot || trailing_space || control {
            if line_len + 3 >= MAX_LINE {
                out.push('=');
                out.push_str(newline);
                line_len = 0;
            }
            out.push_str(&format!("={c:02X}"));
            line_len += 3;
            i += 1;
        } else if c == b'\n' || (c == b'\r' && next == Some(b'\n')) {
            if let Some(ws @ (' ' | '\t')) = out.chars().last() {
                out.pop();
                out.push_str(&format!("={:02X}", ws as u8));
            }
            out.push_str(newline);
            line_len = 0;
            i += if c == b'\r' { 2 } else { 1 };
        } else {
            if !last && next != Some(b'\n') && line_len + 1 >= MAX_LINE {
                out.push('=');
                out.push_str(newline);
                line_len = 0;
            }
            line_len += 1;
            out.push(c as char);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Python's own encoder `f` (stdlib only, no protobuf) applied to every
    /// sample, in one interpreter.
    fn python(f: &str) -> Option<Vec<String>> {
        let code = format!(
            "import base64, json, quopri, sys\n\
             print(json.dumps([{f}(bytes.fromhex(a)).decode() for a in sys.argv[1:]]))"
        );
        let hex = SAMPLES
            .iter()
            .map(|s| s.iter().map(|b| format!("{b:02x}")).collect::<String>());
        let out = std::process::Command::new("/usr/bin/python3")
            .args(["-c", &code])
            .args(hex)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    }

    const SAMPLES: &[&[u8]] = &[
        b"",
        b"/run/criu.sock",
        b"\0abstract name=1",
        b"trailing space ",
        b"tab\tinside\tand at end\t",
        b".",
        b"line\n.\nnext",
        b"crlf\r\nline \r\nend",
        b"\x7f\x80\xff high bytes and = signs ==",
        b"a very long name that goes on and on past the seventy-six column limit of quoted printable text",
        b"exactly-76-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx=",
    ];

    #[test]
    fn quoted_printable_is_pythons_quopri() {
        let expected = python("quopri.encodestring").expect("/usr/bin/python3 runs");
        for (s, expected) in SAMPLES.iter().zip(expected) {
            assert_eq!(quoted_printable(s), expected, "{s:?}");
        }
    }

    #[test]
    fn base64_lines_are_pythons_encodebytes() {
        let expected = python("base64.encodebytes").expect("/usr/bin/python3 runs");
        for (s, expected) in SAMPLES.iter().zip(expected) {
            assert_eq!(base64_lines(s), expected, "{s:?}");
        }
    }

    #[test]
    fn old_device_numbers_split_as_glibc_does() {
        let values: [u64; 5] = [0, 0x0103, 0x8_8001, 0xfff0_0abc, 0x1234_5678_9abc];
        let code = format!(
            "import os; print(' '.join('%d:%d' % (os.major(v), os.minor(v)) for v in {values:?}))"
        );
        let out = std::process::Command::new("/usr/bin/python3")
            .args(["-c", &code])
            .output()
            .expect("/usr/bin/python3 runs");
        let expected = String::from_utf8(out.stdout).unwrap();
        let ours: Vec<String> = values.iter().map(|v| device(*v, true)).collect();
        assert_eq!(ours.join(" "), expected.trim());
        assert_eq!(device((8 << 20) | 17, false), "8:17");
    }

    #[test]
    fn ipv6_is_written_as_python_compresses_it() {
        let words = |groups: [u16; 8]| -> Vec<Value> {
            groups
                .chunks(2)
                .map(|g| {
                    let b = [g[0].to_be_bytes(), g[1].to_be_bytes()].concat();
                    Value::U32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                })
                .collect()
        };
        let show = |g| ip_address(&words(g))[0].as_str().unwrap().to_string();
        assert_eq!(show([0, 0, 0, 0, 0, 0, 0, 1]), "::1");
        assert_eq!(show([0, 0, 0, 0, 0, 0xffff, 0x7f00, 1]), "::ffff:7f00:1");
        assert_eq!(show([0x2001, 0xdb8, 0, 0, 1, 0, 0, 1]), "2001:db8::1:0:0:1");
        assert_eq!(show([1, 0, 2, 0, 3, 0, 4, 0]), "1:0:2:0:3:0:4:0");
        assert_eq!(show([0; 8]), "::");
    }
}
