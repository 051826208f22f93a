//! A test's scratch directory: the counting workload, images directories
//! and a work directory inside it, all removed when the test ends (kept
//! for a post-mortem when `CRIU_RS_TEST_KEEP` is set). For tests: these
//! panic, with the step named, when the set-up fails.

use std::fs::File;
use std::path::{Path, PathBuf};

use criu::ImagesDir;
use tempfile::TempDir;

use crate::{fixture, Workload};

/// A temporary directory of one test (`/tmp/criu-rs-test-*`), removed on
/// drop unless `CRIU_RS_TEST_KEEP` is set (then its path is printed).
#[derive(Debug)]
pub struct Scratch {
    dir: TempDir,
}

impl Default for Scratch {
    fn default() -> Scratch {
        Scratch::new()
    }
}

impl Scratch {
    /// A new, empty directory.
    pub fn new() -> Scratch {
        let dir = tempfile::Builder::new()
            .prefix("criu-rs-test-")
            .tempdir()
            .expect("the test's temporary directory");
        Scratch { dir }
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A new images directory `name` inside the directory.
    pub fn images(&self, name: &str) -> ImagesDir {
        ImagesDir::create(self.path().join(name)).expect("the images directory")
    }

    /// The counting workload ([`fixture::counter`]) with `mib` MiB of
    /// patterned memory, writing to `out.log` here.
    pub fn counter(&self, mib: usize) -> Workload {
        fixture::counter(self.path(), mib)
    }

    /// A new directory `work` here, and the open descriptor of it that
    /// `Options::work_dir` takes.
    pub fn work_dir(&self) -> (PathBuf, File) {
        let work = self.path().join("work");
        std::fs::create_dir(&work).expect("the work directory");
        let fd = File::open(&work).expect("opening the work directory");
        (work, fd)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("CRIU_RS_TEST_KEEP").is_some() {
            let dir = std::mem::replace(&mut self.dir, TempDir::new().expect("a placeholder"));
            eprintln!("kept {}", dir.keep().display());
        }
    }
}
