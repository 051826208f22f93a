//! A process's open files and sockets: `fdinfo-N.img` maps descriptors to
//! file ids, `files.img` says what each id is.

use serde::Serialize;

use crate::crit::{tables, text};
use crate::proto::{FdTypes, FdinfoEntry, FileEntry, InetSkEntry, UnixSkEntry};

/// An open descriptor.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct FileView {
    /// The descriptor number.
    pub fd: u32,
    /// What it is (`REG`, `PIPE`, `UNIXSK`, `INETSK`, `TTY`, ...).
    pub kind: String,
    /// The path (regular files), or a description (`pipe:[ID]`, `socket:[INO]`).
    pub path: String,
    /// The open flags, as crit names them (`O_WRONLY | O_APPEND`).
    pub flags: String,
    /// The file's mode bits, if recorded.
    pub mode: Option<u32>,
    /// The file offset, for regular files.
    pub pos: Option<u64>,
}

/// A socket descriptor.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct SocketView {
    /// The descriptor number.
    pub fd: u32,
    /// `UNIX`, `INET`, `INET6`, ...
    pub family: String,
    /// `STREAM`, `DGRAM`, ...
    pub kind: String,
    /// `ESTABLISHED`, `LISTEN`, ...
    pub state: String,
    /// The local address (`ADDR:PORT`, or a unix socket's name).
    pub local: String,
    /// The peer address (`ADDR:PORT`), or a unix peer's inode.
    pub remote: String,
}

pub(super) fn views(fds: &[FdinfoEntry], files: &[FileEntry]) -> (Vec<FileView>, Vec<SocketView>) {
    let mut out = (Vec::new(), Vec::new());
    for fd in fds {
        let Some(file) = files.iter().find(|f| f.id == fd.id) else {
            continue;
        };
        out.0.push(file_view(fd.fd, file));
        if let Some(isk) = &file.isk {
            out.1.push(inet_view(fd.fd, isk));
        }
        if let Some(usk) = &file.usk {
            out.1.push(unix_view(fd.fd, usk));
        }
    }
    out
}

fn file_view(fd: u32, file: &FileEntry) -> FileView {
    let kind = FdTypes::try_from(file.r#type)
        .map(|t| t.as_str_name().to_string())
        .unwrap_or_else(|_| file.r#type.to_string());
    let mut view = FileView {
        fd,
        kind,
        path: String::new(),
        flags: String::new(),
        mode: None,
        pos: None,
    };
    if let Some(reg) = &file.reg {
        view.path = reg.name.clone();
        view.flags = open_flags(reg.flags);
        view.mode = reg.mode;
        view.pos = Some(reg.pos);
    } else if let Some((path, flags)) = described(file) {
        view.path = path;
        view.flags = open_flags(flags);
    }
    view
}

/// How crit names a file that has no path, with its open flags: the
/// first of the kinds below that `file` is.
fn described(file: &FileEntry) -> Option<(String, u32)> {
    let socket = |ino: u32, flags: u32| (format!("socket:[{ino}]"), flags);
    file.pipe
        .as_ref()
        .map(|p| (format!("pipe:[{}]", p.pipe_id), p.flags))
        .or_else(|| file.isk.as_ref().map(|s| socket(s.ino, s.flags)))
        .or_else(|| file.usk.as_ref().map(|s| socket(s.ino, s.flags)))
        .or_else(|| {
            file.tty
                .as_ref()
                .map(|t| (format!("tty index {}", t.tty_info_id), t.flags))
        })
}

fn open_flags(flags: u32) -> String {
    let names = tables::flags("rfile.flags").unwrap_or_default();
    let text = text::flag_names(u64::from(flags), names);
    if text.is_empty() {
        "O_RDONLY".into()
    } else {
        text
    }
}

fn sk_name(field: &str, value: u32) -> String {
    tables::dict("sk", field, i128::from(value))
        .map(str::to_string)
        .unwrap_or_else(|| value.to_string())
}

fn inet_view(fd: u32, sk: &InetSkEntry) -> SocketView {
    let addr = |words: &[u32], port: u32| {
        let ip = text::ip_words(words).unwrap_or_else(|| "?".into());
        if ip.contains(':') {
            format!("[{ip}]:{port}")
        } else {
            format!("{ip}:{port}")
        }
    };
    SocketView {
        fd,
        family: sk_name("family", sk.family),
        kind: format!(
            "{}/{}",
            sk_name("type", sk.r#type),
            sk_name("proto", sk.proto)
        ),
        state: sk_name("state", sk.state),
        local: addr(&sk.src_addr, sk.src_port),
        remote: addr(&sk.dst_addr, sk.dst_port),
    }
}

fn unix_view(fd: u32, sk: &UnixSkEntry) -> SocketView {
    let name = if sk.name.first() == Some(&0) {
        format!("@{}", String::from_utf8_lossy(&sk.name[1..]))
    } else {
        String::from_utf8_lossy(&sk.name).into_owned()
    };
    SocketView {
        fd,
        family: "UNIX".into(),
        kind: sk_name("type", sk.r#type),
        state: sk_name("state", sk.state),
        local: name,
        remote: if sk.peer == 0 {
            String::new()
        } else {
            format!("peer ino {}", sk.peer)
        },
    }
}
