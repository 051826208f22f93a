//! The busybox image, built here: nothing can be pulled on these machines,
//! so the image is a root filesystem tar made from Debian's busybox-static
//! and imported through the API (what `docker import` does).

use std::path::Path;

use crate::container::BoxError;

/// The image's name and tag in every daemon the engine starts.
pub const IMAGE: (&str, &str) = ("criu-rs-busybox", "1");

/// The applets the counter needs, as links to busybox.
const APPLETS: [&str; 3] = ["sh", "expr", "sleep"];

fn dir_header(path: &str) -> Result<tar::Header, BoxError> {
    let mut h = tar::Header::new_gnu();
    h.set_path(path)?;
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    h.set_cksum();
    Ok(h)
}

/// A tar of `/bin/busybox` with its applets and the usual mount points.
pub fn busybox_rootfs_tar() -> Result<Vec<u8>, BoxError> {
    let busybox = Path::new("/bin/busybox");
    let bytes = std::fs::read(busybox).map_err(|e| {
        format!(
            "{}: {e}: install busybox-static (scripts/setup.sh does)",
            busybox.display()
        )
    })?;
    let mut tar = tar::Builder::new(Vec::new());
    for d in ["bin", "dev", "proc", "sys", "tmp", "etc"] {
        tar.append(&dir_header(d)?, std::io::empty())?;
    }
    let mut h = tar::Header::new_gnu();
    h.set_size(bytes.len() as u64);
    h.set_mode(0o755);
    h.set_cksum();
    tar.append_data(&mut h, "bin/busybox", bytes.as_slice())?;
    for applet in APPLETS {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        tar.append_link(&mut h, format!("bin/{applet}"), "busybox")?;
    }
    Ok(tar.into_inner()?)
}
