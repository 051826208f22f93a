//! One process of a checkpoint: its place in the tree, its command line and
//! environment (read from its dumped memory), memory, files, namespaces.

use std::collections::BTreeMap;

use serde::Serialize;

use super::files::{self, FileView, SocketView};
use super::{typed, Checkpoint};
use crate::error::Result;
use crate::memory::Memory;
use crate::proto::{CoreEntry, FdinfoEntry, FileEntry, MmEntry, PstreeEntry, TaskKobjIdsEntry};

const MAP_SHARED: u32 = 0x1;
const MAP_ANONYMOUS: u32 = 0x20;

/// A process as the checkpoint holds it.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct ProcessView {
    /// Its pid (in its own pid namespace).
    pub pid: u32,
    /// Its parent's pid (0 for the root of the tree).
    pub ppid: u32,
    /// Its process group.
    pub pgid: u32,
    /// Its session.
    pub sid: u32,
    /// The command name (`comm`).
    pub command: String,
    /// Its threads' pids.
    pub threads: Vec<u32>,
    /// The command line, from its dumped memory.
    pub argv: Vec<String>,
    /// The environment, from its dumped memory.
    pub environment: Vec<String>,
    /// Its memory.
    pub memory: MemoryView,
    /// Its open files.
    pub files: Vec<FileView>,
    /// Its sockets.
    pub sockets: Vec<SocketView>,
    /// Its namespaces, by kind (`net`, `pid`, ...), as CRIU's ids.
    pub namespaces: NamespaceView,
}

/// A process's namespaces: kind to CRIU's namespace id.
pub type NamespaceView = BTreeMap<String, u32>;

/// A process's memory.
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct MemoryView {
    /// Number of mappings.
    pub vmas: usize,
    /// Bytes mapped.
    pub mapped_bytes: u64,
    /// Bytes of anonymous mappings.
    pub anonymous_bytes: u64,
    /// Bytes of shared mappings.
    pub shared_bytes: u64,
    /// Bytes of page contents dumped into this checkpoint.
    pub dumped_bytes: u64,
}

pub(super) fn view(
    ck: &Checkpoint,
    p: &PstreeEntry,
    all_files: &[FileEntry],
) -> Result<ProcessView> {
    let core: Vec<CoreEntry> = typed(&ck.image(&format!("core-{}.img", p.pid))?)?;
    let command = core
        .first()
        .and_then(|c| c.tc.as_ref())
        .map(|tc| tc.comm.clone())
        .unwrap_or_default();
    let ids: Option<TaskKobjIdsEntry> = typed(&ck.image(&format!("ids-{}.img", p.pid))?)?
        .into_iter()
        .next();
    let mm: Option<MmEntry> = match ck.optional(&format!("mm-{}.img", p.pid))? {
        Some(image) => typed(&image)?.into_iter().next(),
        None => None,
    };
    let memory = Memory::open(ck.dir(), p.pid).ok();
    let (argv, environment) = match (&mm, &memory) {
        (Some(mm), Some(mem)) => (
            strings(mem, mm.mm_arg_start, mm.mm_arg_end),
            strings(mem, mm.mm_env_start, mm.mm_env_end),
        ),
        _ => (Vec::new(), Vec::new()),
    };
    let fds: Vec<FdinfoEntry> = match &ids {
        Some(ids) => match ck.optional(&format!("fdinfo-{}.img", ids.files_id))? {
            Some(image) => typed(&image)?,
            None => Vec::new(),
        },
        None => Vec::new(),
    };
    let (files, sockets) = files::views(&fds, all_files);
    Ok(ProcessView {
        pid: p.pid,
        ppid: p.ppid,
        pgid: p.pgid,
        sid: p.sid,
        command,
        threads: p.threads.clone(),
        argv,
        environment,
        memory: memory_view(mm.as_ref(), memory.as_ref()),
        files,
        sockets,
        namespaces: ids.map(namespaces).unwrap_or_default(),
    })
}

/// NUL-separated strings of `[start, end)`; empty when not dumped.
fn strings(mem: &Memory, start: u64, end: u64) -> Vec<String> {
    let Ok(bytes) = mem.read(start, end) else {
        return Vec::new();
    };
    bytes
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

fn memory_view(mm: Option<&MmEntry>, memory: Option<&Memory>) -> MemoryView {
    let mut view = MemoryView {
        dumped_bytes: memory.map_or(0, Memory::dumped_bytes),
        ..MemoryView::default()
    };
    // A damaged or hostile mm image may list VMAs whose lengths add up past
    // u64::MAX (or end before they start): the sums saturate rather than
    // wrap (release) or panic (debug).
    for vma in mm.map(|m| m.vmas.as_slice()).unwrap_or_default() {
        let len = vma.end.saturating_sub(vma.start);
        view.vmas += 1;
        view.mapped_bytes = view.mapped_bytes.saturating_add(len);
        if vma.flags & MAP_ANONYMOUS != 0 {
            view.anonymous_bytes = view.anonymous_bytes.saturating_add(len);
        }
        if vma.flags & MAP_SHARED != 0 {
            view.shared_bytes = view.shared_bytes.saturating_add(len);
        }
    }
    view
}

fn namespaces(ids: TaskKobjIdsEntry) -> NamespaceView {
    [
        ("pid", ids.pid_ns_id),
        ("net", ids.net_ns_id),
        ("ipc", ids.ipc_ns_id),
        ("uts", ids.uts_ns_id),
        ("mnt", ids.mnt_ns_id),
        ("user", ids.user_ns_id),
        ("cgroup", ids.cgroup_ns_id),
        ("time", ids.time_ns_id),
    ]
    .into_iter()
    .filter_map(|(kind, id)| Some((kind.to_string(), id?)))
    .collect()
}
