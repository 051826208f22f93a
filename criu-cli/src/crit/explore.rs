//! `crit x DIR ps|fds|mems|rss`: the same lines crit prints, read from
//! crit's own (plain) JSON rendering of each image so that every lookup
//! behaves as crit's dictionaries do.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use criu_image::crit::{render, Style};
use criu_image::Image;
use serde_json::Value;

use crate::args::Explore;
use crate::error::{CliError, CliResult};

/// What `crit x dir what` prints.
pub fn explore(dir: &Path, what: Explore) -> CliResult<String> {
    let mut x = Explorer::new(dir);
    let mut out = String::new();
    match what {
        Explore::Ps => x.ps(&mut out)?,
        Explore::Fds => x.fds(&mut out)?,
        Explore::Mems => x.mems(&mut out)?,
        Explore::Rss => x.rss(&mut out)?,
    }
    Ok(out)
}

struct Explorer {
    dir: PathBuf,
    /// files.img's entries (empty when it cannot be read, as in crit).
    files: Option<Vec<Value>>,
    /// Per-type images (reg-files.img...), loaded when first needed.
    images: HashMap<&'static str, Vec<Value>>,
    /// Descriptions already worked out, by (type, id).
    cache: HashMap<(String, u64), String>,
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn get<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.get(key).unwrap_or(&Value::Null)
}

/// crit's `get_task_id`: `pid` (or `pgid`, `sid`), else `ns_pid[0]`.
fn task_id(p: &Value, key: &str) -> u64 {
    match p.get(key) {
        Some(v) => u(v),
        None => u(&p[format!("ns_{key}")][0]),
    }
}

impl Explorer {
    fn new(dir: &Path) -> Explorer {
        Explorer {
            dir: dir.to_path_buf(),
            files: None,
            images: HashMap::new(),
            cache: HashMap::new(),
        }
    }

    fn load(&self, name: &str) -> CliResult<Vec<Value>> {
        let path = self.dir.join(name);
        let image = Image::open(&path).map_err(|e| {
            CliError::from(e).hint(format!(
                "{} must be a checkpoint directory holding {name} (from `criu-rs dump`)",
                self.dir.display()
            ))
        })?;
        match render(&image, Style::Plain) {
            Value::Object(mut m) => match m.remove("entries") {
                Some(Value::Array(a)) => Ok(a),
                _ => Ok(Vec::new()),
            },
            _ => Ok(Vec::new()),
        }
    }

    fn first(&self, name: &str) -> CliResult<Value> {
        self.load(name)?
            .into_iter()
            .next()
            .ok_or_else(|| CliError::bad_input(format!("{name} has no entry")))
    }

    fn pstree(&self) -> CliResult<Vec<Value>> {
        self.load("pstree.img")
    }

    fn ps(&mut self, out: &mut String) -> CliResult {
        let mut order = Vec::new();
        let mut procs: HashMap<u64, (Value, String, Vec<u64>)> = HashMap::new();
        for p in self.pstree()? {
            let pid = task_id(&p, "pid");
            let core = self.first(&format!("core-{pid}.img"))?;
            let comm = core["tc"]["comm"].as_str().unwrap_or("").to_string();
            if !procs.contains_key(&pid) {
                order.push(pid);
            }
            procs.insert(pid, (p, comm, Vec::new()));
        }
        let mut root = None;
        for pid in &order {
            let ppid = u(get(&procs[pid].0, "ppid"));
            if ppid == 0 {
                root = Some(*pid);
                continue;
            }
            let parent = procs.get_mut(&ppid).ok_or_else(|| {
                CliError::bad_input(format!("pstree.img: the parent {ppid} of {pid} is missing"))
            })?;
            parent.2.push(*pid);
        }
        let _ = writeln!(out, "{:>7}{:>7}{:>7}   COMM", "PID", "PGID", "SID");
        let root = root.ok_or_else(|| CliError::bad_input("pstree.img has no root task"))?;
        show_ps(out, &procs, root, 0);
        Ok(())
    }

    fn fds(&mut self, out: &mut String) -> CliResult {
        for p in self.pstree()? {
            let pid = task_id(&p, "pid");
            let ids = self.first(&format!("ids-{pid}.img"))?;
            let fdt = u(get(&ids, "files_id"));
            let fdinfo = self.load(&format!("fdinfo-{fdt}.img"))?;
            let _ = writeln!(out, "{pid}");
            for fd in fdinfo {
                let typ = get(&fd, "type").as_str().unwrap_or("").to_string();
                let desc = self.file_str(&typ, u(get(&fd, "id")))?;
                let _ = writeln!(out, "\t{:>7}: {desc}", u(get(&fd, "fd")));
            }
            let fs = self.first(&format!("fs-{pid}.img"))?;
            for key in ["cwd", "root"] {
                let desc = self.file_str("REG", u(get(&fs, &format!("{key}_id"))))?;
                let _ = writeln!(out, "\t{key:>7}: {desc}");
            }
        }
        Ok(())
    }

    fn mems(&mut self, out: &mut String) -> CliResult {
        let mut vids = VmaIds::default();
        for p in self.pstree()? {
            let pid = task_id(&p, "pid");
            let mm = self.first(&format!("mm-{pid}.img"))?;
            let _ = writeln!(out, "{pid}");
            let exe = self.file_str("REG", u(get(&mm, "exe_file_id")))?;
            let _ = writeln!(out, "\t{:<36}    {exe}", "exe");
            let vmas = get(&mm, "vmas").as_array().cloned().unwrap_or_default();
            for vma in &vmas {
                let fn_ = self.vma_name(vma, &mut vids)?;
                let prot = u(get(vma, "prot"));
                let mut p = String::new();
                p.push(if prot & 1 != 0 { 'r' } else { '-' });
                p.push(if prot & 2 != 0 { 'w' } else { '-' });
                p.push(if prot & 4 != 0 { 'x' } else { '-' });
                let range = format!("{:08x}-{:08x}", u(get(vma, "start")), u(get(vma, "end")));
                let _ = writeln!(out, "\t{range:<36}{p}{fn_}");
            }
        }
        Ok(())
    }

    fn vma_name(&mut self, vma: &Value, vids: &mut VmaIds) -> CliResult<String> {
        let st = u(get(vma, "status"));
        let shmid = u(get(vma, "shmid"));
        let mut name = if st & (1 << 10) != 0 {
            format!(" ips[{:x}]", vids.get(shmid))
        } else if st & (1 << 8) != 0 {
            format!(" shmem[{:x}]", vids.get(shmid))
        } else if st & (1 << 11) != 0 {
            format!(" packet[{:x}]", vids.get(shmid))
        } else if st & ((1 << 6) | (1 << 7)) != 0 {
            let mut s = format!(" {}", self.file_str("REG", shmid)?);
            let pgoff = u(get(vma, "pgoff"));
            if pgoff != 0 {
                let _ = write!(s, " + {pgoff:#x}");
            }
            if st & (1 << 7) != 0 {
                s.push_str(" (s)");
            }
            s
        } else if st & (1 << 1) != 0 {
            " [stack]".into()
        } else if st & (1 << 2) != 0 {
            " [vsyscall]".into()
        } else if st & (1 << 3) != 0 {
            " [vdso]".into()
        } else if u(get(vma, "flags")) & 0x0100 != 0 {
            " [stack?]".into()
        } else {
            String::new()
        };
        if st & 1 == 0 {
            name.push_str(" *");
        }
        Ok(name)
    }

    fn rss(&mut self, out: &mut String) -> CliResult {
        for p in self.pstree()? {
            let pid = task_id(&p, "pid");
            let mm = self.first(&format!("mm-{pid}.img"))?;
            let vmas = get(&mm, "vmas").as_array().cloned().unwrap_or_default();
            let pms = self.load(&format!("pagemap-{pid}.img"))?;
            let _ = writeln!(out, "{pid}");
            let mut vmi: usize = 0;
            let mut pvmi: Option<usize> = None;
            for pm in pms.iter().skip(1) {
                let vaddr = u(get(pm, "vaddr"));
                let nr = u(get(pm, "nr_pages"));
                let pstr = format!("\t{vaddr:x} / {nr:<8}");
                while vmi < vmas.len() && u(get(&vmas[vmi], "end")) <= vaddr {
                    vmi += 1;
                }
                let pme = vaddr.wrapping_add(nr << 12);
                let mut vstr = String::new();
                while vmi < vmas.len() && u(get(&vmas[vmi], "start")) < pme {
                    let vma = &vmas[vmi];
                    if pvmi == Some(vmi) {
                        vstr.push_str(" ~");
                    } else {
                        let (start, end) = (u(get(vma, "start")), u(get(vma, "end")));
                        let _ = write!(vstr, " {start:08x} / {:<8}", end.wrapping_sub(start) >> 12);
                        if u(get(vma, "status")) & ((1 << 6) | (1 << 7)) != 0 {
                            let f = self.file_str("REG", u(get(vma, "shmid")))?;
                            let _ = write!(vstr, " {f}");
                        }
                        pvmi = Some(vmi);
                    }
                    let _ = write!(vstr, "\n\t{:>23}", "");
                    vmi += 1;
                }
                // crit steps back one mapping (to -1 when none was seen).
                vmi = vmi.wrapping_sub(1);
                if vmi == usize::MAX {
                    return Err(CliError::bad_input(format!(
                        "pagemap-{pid}.img: a page range before every mapping (crit fails here too)"
                    )));
                }
                let _ = writeln!(out, "{pstr:<24}{vstr}");
            }
        }
        Ok(())
    }

    /// crit's `get_file_str`: a path, `pipe[N]`, `unix[...]`, or `TYPE.ID`.
    fn file_str(&mut self, typ: &str, id: u64) -> CliResult<String> {
        let key = (typ.to_string(), id);
        if let Some(s) = self.cache.get(&key) {
            return Ok(s.clone());
        }
        let s = match typ {
            "REG" => match self.find(id, "reg", "reg-files.img")? {
                Some(rf) => match rf.get("name").and_then(Value::as_str) {
                    Some(name) if !name.is_empty() => name.to_string(),
                    _ => "unknown path".into(),
                },
                None => "unknown path".into(),
            },
            "PIPE" => match self.find(id, "pipe", "pipes.img")? {
                Some(p) => format!("pipe[{}]", u(get(&p, "pipe_id"))),
                None => "pipe[?]".into(),
            },
            "UNIXSK" => match self.find(id, "usk", "unixsk.img")? {
                Some(ux) => {
                    let name = match ux.get("name").and_then(Value::as_str) {
                        Some(n) if !n.is_empty() => format!(" {n}"),
                        _ => String::new(),
                    };
                    format!(
                        "unix[{} ({}){name}]",
                        u(get(&ux, "ino")),
                        u(get(&ux, "peer"))
                    )
                }
                None => "unix[?]".into(),
            },
            other => format!("{other}.{id}"),
        };
        // crit caches only descriptions that are not empty.
        if !s.is_empty() {
            self.cache.insert(key, s.clone());
        }
        Ok(s)
    }

    /// crit's `ftype_find_in_image`: the entry of `id` in files.img (its
    /// `field` part), else in the type's own image.
    fn find(&mut self, id: u64, field: &str, image: &'static str) -> CliResult<Option<Value>> {
        if self.files.is_none() {
            self.files = Some(self.load("files.img").unwrap_or_default());
        }
        let files = self.files.as_deref().unwrap_or(&[]);
        if let Some(f) = files.iter().find(|f| u(get(f, "id")) == id) {
            return Ok(f.get(field).cloned());
        }
        if !self.images.contains_key(image) {
            let entries = self.load(image)?;
            self.images.insert(image, entries);
        }
        Ok(self.images[image]
            .iter()
            .find(|f| u(get(f, "id")) == id)
            .cloned())
    }
}

fn show_ps(
    out: &mut String,
    procs: &HashMap<u64, (Value, String, Vec<u64>)>,
    pid: u64,
    depth: usize,
) {
    let (p, comm, kids) = &procs[&pid];
    let _ = writeln!(
        out,
        "{pid:>7}{:>7}{:>7}   {}{comm}",
        task_id(p, "pgid"),
        task_id(p, "sid"),
        " ".repeat(4 * depth)
    );
    for kid in kids {
        show_ps(out, procs, *kid, depth + 1);
    }
}

/// crit's `vma_id`: small numbers for shared memory ids, from 1 in order
/// of appearance.
#[derive(Default)]
struct VmaIds {
    ids: HashMap<u64, u64>,
}

impl VmaIds {
    fn get(&mut self, id: u64) -> u64 {
        let next = self.ids.len() as u64 + 1;
        *self.ids.entry(id).or_insert(next)
    }
}
