//! What `crit encode` needs to read back `--pretty` values: CRIU's field
//! options (`opts.proto`, extension 1018 of `FieldOptions`) and the name
//! tables of its flag and dictionary fields, reversed (facts from CRIU's
//! `pb2dict.py`: names and their bit values).

use prost_reflect::{FieldDescriptor, Value};

/// The `(criu)` options of one field.
#[derive(Debug, Clone, Default)]
pub struct FieldOpts {
    /// `(criu).ipadd`: a repeated u32 that is an IPv4 or IPv6 address.
    pub ipadd: bool,
    /// `(criu).flags`: the name of a flag table.
    pub flags: Option<String>,
    /// `(criu).dev`: a `major:minor` device.
    pub dev: bool,
    /// `(criu).odev`: in the old (glibc `makedev`) encoding.
    pub odev: bool,
    /// `(criu).dict`: the name of a dictionary.
    pub dict: Option<String>,
    /// `(criu).conv`: a custom conversion (`unix_name`).
    pub conv: Option<String>,
}

/// The options of `field`.
pub fn of(field: &FieldDescriptor) -> FieldOpts {
    let Some(ext) = criu_image::pool().get_extension_by_name("criu") else {
        return FieldOpts::default();
    };
    let options = field.options();
    if !options.has_extension(&ext) {
        return FieldOpts::default();
    }
    let value = options.get_extension(&ext);
    let Value::Message(m) = value.as_ref() else {
        return FieldOpts::default();
    };
    let flag = |name: &str| {
        matches!(
            m.get_field_by_name(name).as_deref(),
            Some(Value::Bool(true))
        )
    };
    let text = |name: &str| match m.get_field_by_name(name).as_deref() {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    };
    FieldOpts {
        ipadd: flag("ipadd"),
        flags: text("flags"),
        dev: flag("dev"),
        odev: flag("odev"),
        dict: text("dict"),
        conv: text("conv"),
    }
}

const MMAP_PROT: &[(&str, u64)] = &[("PROT_READ", 0x1), ("PROT_WRITE", 0x2), ("PROT_EXEC", 0x4)];

const MMAP_FLAGS: &[(&str, u64)] = &[
    ("MAP_SHARED", 0x1),
    ("MAP_PRIVATE", 0x2),
    ("MAP_DROPPABLE", 0x08),
    ("MAP_ANON", 0x20),
    ("MAP_GROWSDOWN", 0x0100),
];

const MMAP_STATUS: &[(&str, u64)] = &[
    ("VMA_AREA_NONE", 0),
    ("VMA_AREA_REGULAR", 1 << 0),
    ("VMA_AREA_STACK", 1 << 1),
    ("VMA_AREA_VSYSCALL", 1 << 2),
    ("VMA_AREA_VDSO", 1 << 3),
    ("VMA_AREA_HEAP", 1 << 5),
    ("VMA_FILE_PRIVATE", 1 << 6),
    ("VMA_FILE_SHARED", 1 << 7),
    ("VMA_ANON_SHARED", 1 << 8),
    ("VMA_ANON_PRIVATE", 1 << 9),
    ("VMA_AREA_SYSVIPC", 1 << 10),
    ("VMA_AREA_SOCKET", 1 << 11),
    ("VMA_AREA_VVAR", 1 << 12),
    ("VMA_AREA_AIORING", 1 << 13),
    ("VMA_AREA_MEMFD", 1 << 14),
    ("VMA_AREA_SHSTK", 1 << 15),
    ("VMA_AREA_UPROBES", 1 << 17),
    ("VMA_UNSUPP", 1 << 31),
];

const RFILE_FLAGS: &[(&str, u64)] = &[
    ("O_WRONLY", 0o1),
    ("O_RDWR", 0o2),
    ("O_CREAT", 0o100),
    ("O_EXCL", 0o200),
    ("O_NOCTTY", 0o400),
    ("O_TRUNC", 0o1000),
    ("O_APPEND", 0o2000),
    ("O_NONBLOCK", 0o4000),
    ("O_DSYNC", 0o10000),
    ("FASYNC", 0o20000),
    ("O_DIRECT", 0o40000),
    ("O_LARGEFILE", 0o100000),
    ("O_DIRECTORY", 0o200000),
    ("O_NOFOLLOW", 0o400000),
    ("O_NOATIME", 0o1000000),
    ("O_CLOEXEC", 0o2000000),
];

const SEALS_FLAGS: &[(&str, u64)] = &[
    ("F_SEAL_SEAL", 0x1),
    ("F_SEAL_SHRINK", 0x2),
    ("F_SEAL_GROW", 0x4),
    ("F_SEAL_WRITE", 0x8),
    ("F_SEAL_FUTURE_WRITE", 0x10),
];

const PMAP_FLAGS: &[(&str, u64)] = &[("PE_PARENT", 1), ("PE_LAZY", 2), ("PE_PRESENT", 4)];

/// The names of the flag table `name` (`mmap.prot`...), if crit has it.
pub fn flag_table(name: &str) -> Option<&'static [(&'static str, u64)]> {
    Some(match name {
        "mmap.prot" => MMAP_PROT,
        "mmap.flags" => MMAP_FLAGS,
        "mmap.status" => MMAP_STATUS,
        "rfile.flags" => RFILE_FLAGS,
        "pmap.flags" => PMAP_FLAGS,
        "seals.flags" => SEALS_FLAGS,
        _ => return None,
    })
}

/// The number a dictionary (`gen`, `sk`) gives `name` for `field`.
pub fn dict_value(dict: &str, field: &str, name: &str) -> Option<i128> {
    let table: &[(&str, i128)] = match (dict, field) {
        ("gen", "task_state") => &[("Alive", 1), ("Zombie", 3), ("Stopped", 6)],
        ("sk", "family") => &[
            ("UNIX", 1),
            ("INET", 2),
            ("INET6", 10),
            ("NETLINK", 16),
            ("PACKET", 17),
        ],
        ("sk", "type") => &[
            ("STREAM", 1),
            ("DGRAM", 2),
            ("RAW", 3),
            ("SEQPACKET", 5),
            ("PACKET", 10),
        ],
        ("sk", "state") => &[
            ("ESTABLISHED", 1),
            ("SYN_SENT", 2),
            ("SYN_RECV", 3),
            ("FIN_WAIT1", 4),
            ("FIN_WAIT2", 5),
            ("TIME_WAIT", 6),
            ("CLOSE", 7),
            ("CLOSE_WAIT", 8),
            ("LAST_ACK", 9),
            ("LISTEN", 10),
        ],
        ("sk", "proto") => &[("IP", 0), ("TCP", 6), ("UDP", 17), ("UDPLITE", 136)],
        _ => return None,
    };
    table.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}
