//! Which message each image holds, and how its entries are laid out: the
//! facts crit's image handlers encode, written as a table.

/// How an image's entries follow its magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Size-prefixed messages, each maybe followed by a payload.
    Entries(Option<PayloadKind>),
    /// `pagemap-*.img`: one `pagemap_head`, then `pagemap_entry`s.
    Pagemap,
    /// `ghost-file-*.img`: a `ghost_file_entry`, then either the raw file
    /// contents or (`chunks`) `ghost_chunk_entry`s each followed by its bytes.
    GhostFile,
}

/// The raw bytes some images carry after an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadKind {
    /// Pipe or FIFO contents: `bytes` bytes.
    PipeData,
    /// A socket queue packet: `length` bytes.
    SkQueue,
    /// A TCP connection's queues: `inq_len` then `outq_len` bytes.
    TcpStream,
    /// A BPF map's keys and values: `keys_bytes + values_bytes` bytes.
    BpfMap,
    /// A SysV semaphore set: `nsems` u16 values, padded to 8 bytes.
    IpcSem,
    /// A SysV message queue: `qnum` (`ipc_msg`, bytes padded to 8) pairs.
    IpcMsg,
    /// A SysV shared memory segment: `size` bytes, padded to 4.
    IpcShm,
}

/// An image type: its magic name, the message of its entries, its layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ImageKind {
    /// crit's name of the magic (`PSTREE`).
    pub magic: &'static str,
    /// The protobuf message of its entries (`pstree_entry`).
    pub message: &'static str,
    /// How the entries are framed.
    pub layout: Layout,
}

const fn plain(magic: &'static str, message: &'static str) -> ImageKind {
    ImageKind {
        magic,
        message,
        layout: Layout::Entries(None),
    }
}

const fn with(magic: &'static str, message: &'static str, payload: PayloadKind) -> ImageKind {
    ImageKind {
        magic,
        message,
        layout: Layout::Entries(Some(payload)),
    }
}

/// Every image crit decodes.
pub const KINDS: &[ImageKind] = &[
    plain("INVENTORY", "inventory_entry"),
    plain("CORE", "core_entry"),
    plain("IDS", "task_kobj_ids_entry"),
    plain("CREDS", "creds_entry"),
    plain("UTSNS", "utsns_entry"),
    plain("TIMENS", "timens_entry"),
    plain("PIDNS", "pidns_entry"),
    plain("IPC_VAR", "ipc_var_entry"),
    plain("FS", "fs_entry"),
    ImageKind {
        magic: "GHOST_FILE",
        message: "ghost_file_entry",
        layout: Layout::GhostFile,
    },
    plain("MM", "mm_entry"),
    plain("CGROUP", "cgroup_entry"),
    with("TCP_STREAM", "tcp_stream_entry", PayloadKind::TcpStream),
    plain("STATS", "stats_entry"),
    ImageKind {
        magic: "PAGEMAP",
        message: "pagemap_entry",
        layout: Layout::Pagemap,
    },
    plain("PSTREE", "pstree_entry"),
    plain("REG_FILES", "reg_file_entry"),
    plain("NS_FILES", "ns_file_entry"),
    plain("EVENTFD_FILE", "eventfd_file_entry"),
    plain("EVENTPOLL_FILE", "eventpoll_file_entry"),
    plain("EVENTPOLL_TFD", "eventpoll_tfd_entry"),
    plain("SIGNALFD", "signalfd_entry"),
    plain("TIMERFD", "timerfd_entry"),
    plain("INOTIFY_FILE", "inotify_file_entry"),
    plain("INOTIFY_WD", "inotify_wd_entry"),
    plain("FANOTIFY_FILE", "fanotify_file_entry"),
    plain("FANOTIFY_MARK", "fanotify_mark_entry"),
    plain("VMAS", "vma_entry"),
    plain("PIPES", "pipe_entry"),
    plain("FIFO", "fifo_entry"),
    plain("SIGACT", "sa_entry"),
    plain("NETLINK_SK", "netlink_sk_entry"),
    plain("REMAP_FPATH", "remap_file_path_entry"),
    plain("MNTS", "mnt_entry"),
    plain("TTY_FILES", "tty_file_entry"),
    plain("TTY_INFO", "tty_info_entry"),
    plain("TTY_DATA", "tty_data_entry"),
    plain("RLIMIT", "rlimit_entry"),
    plain("TUNFILE", "tunfile_entry"),
    plain("EXT_FILES", "ext_file_entry"),
    plain("IRMAP_CACHE", "irmap_cache_entry"),
    plain("FILE_LOCKS", "file_lock_entry"),
    plain("FDINFO", "fdinfo_entry"),
    plain("UNIXSK", "unix_sk_entry"),
    plain("INETSK", "inet_sk_entry"),
    plain("PACKETSK", "packet_sock_entry"),
    plain("ITIMERS", "itimer_entry"),
    plain("POSIX_TIMERS", "posix_timer_entry"),
    plain("NETDEV", "net_device_entry"),
    with("PIPES_DATA", "pipe_data_entry", PayloadKind::PipeData),
    with("FIFO_DATA", "pipe_data_entry", PayloadKind::PipeData),
    with("SK_QUEUES", "sk_packet_entry", PayloadKind::SkQueue),
    with("IPCNS_SHM", "ipc_shm_entry", PayloadKind::IpcShm),
    with("IPCNS_SEM", "ipc_sem_entry", PayloadKind::IpcSem),
    with("IPCNS_MSG", "ipc_msg_entry", PayloadKind::IpcMsg),
    plain("NETNS", "netns_entry"),
    plain("USERNS", "userns_entry"),
    plain("SECCOMP", "seccomp_entry"),
    plain("AUTOFS", "autofs_entry"),
    plain("FILES", "file_entry"),
    plain("CPUINFO", "cpuinfo_entry"),
    plain("MEMFD_FILE", "memfd_file_entry"),
    plain("MEMFD_INODE", "memfd_inode_entry"),
    plain("BPFMAP_FILE", "bpfmap_file_entry"),
    with("BPFMAP_DATA", "bpfmap_data_entry", PayloadKind::BpfMap),
    plain("APPARMOR", "apparmor_entry"),
];

impl ImageKind {
    /// The kind of the image with this magic name.
    pub fn by_magic(name: &str) -> Option<&'static ImageKind> {
        KINDS.iter().find(|k| k.magic == name)
    }
}
