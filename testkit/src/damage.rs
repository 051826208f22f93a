//! Images damaged on purpose, and the restore that must refuse them. For
//! tests: these panic, with the cause named, when the damage cannot be
//! done or the restore succeeds anyway.

use criu::{Criu, ImagesDir, Options};

use crate::KillOnDrop;

/// Truncates to half its size the first image file in `images` whose name
/// starts with `prefix` (`core-`, `pstree`, `pages-`...).
pub fn truncate_image(images: &ImagesDir, prefix: &str) {
    let file = std::fs::read_dir(images.path())
        .expect("listing the images")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .unwrap_or_else(|| panic!("no {prefix}* image"));
    let len = std::fs::metadata(&file).expect("the image's size").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .and_then(|f| f.set_len(len / 2))
        .expect("truncating the image");
}

/// Runs a (detached) restore that must fail, and returns its error.
/// CRIU must fail rather than hang: give `options` a deadline; its expiry
/// fails the test. A restore that succeeds anyway has its restored tree
/// killed (it is not our child) and fails the test, naming `what`.
pub fn restore_fails(criu: &Criu, options: &mut Options<'_>, what: &str) -> criu::Error {
    let e = match criu.restore(options) {
        Ok(r) => {
            let _kill = KillOnDrop(r.pid);
            panic!("{what} restored as pid {}", r.pid);
        }
        Err(e) => e,
    };
    assert!(!e.is_deadline_exceeded(), "CRIU must fail, not hang: {e}");
    e
}
