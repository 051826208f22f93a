//! Finds libcriu and generates its bindings.
//!
//! Discovery order:
//! 1. `CRIU_LIB_DIR` (and `CRIU_INCLUDE_DIR`, `CRIU_STATIC`) when set;
//! 2. pkg-config's `criu` module, at least [`MIN_VERSION`].
//!
//! When `DOCS_RS` is set (docs.rs builds documentation on machines without
//! libcriu, and never links), nothing is probed: the bindings generated from
//! CRIU [`DOCS_VERSION`]'s headers, kept in `src/docs/`, stand in for them.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

/// The oldest libcriu whose header these bindings are generated against.
const MIN_VERSION: &str = "3.17";

/// CRIU feature levels turned into cfgs (`criu_4_2` means "headers >= 4.2").
const LEVELS: &[(u32, u32)] = &[(3, 19), (4, 0), (4, 1), (4, 2)];

/// The CRIU version whose headers generated `src/docs/bindings.rs`
/// (`scripts/update-docs-bindings.sh` regenerates it).
const DOCS_VERSION: (u32, u32, u32) = (4, 2, 1);

const SETUP_HINT: &str = "\
libcriu (CRIU's C library, >= 3.17, with criu.h and criu.pc) was not found.
  * On Debian, run `sudo scripts/setup.sh` from the criu-rs repository: it builds
    CRIU 4.x from Debian's source package into /usr/local (the distro's CRIU 3.17
    does not work on kernels >= 6.13).
  * Or point the build at an installed libcriu:
      CRIU_LIB_DIR=/path/to/dir/with/libcriu.so
      CRIU_INCLUDE_DIR=/path/to/dir/with/criu.h   (the one holding criu.h, version.h, rpc.pb-c.h)
      CRIU_STATIC=1                                (link libcriu.a instead)
  * Or set PKG_CONFIG_PATH to the directory holding criu.pc.";

struct Found {
    include_dirs: Vec<PathBuf>,
}

fn env_var(name: &str) -> Option<String> {
    println!("cargo:rerun-if-env-changed={name}");
    env::var(name).ok().filter(|v| !v.is_empty())
}

fn fail(reason: &str) -> ! {
    eprintln!("\nerror: {reason}\n{SETUP_HINT}\n");
    panic!("criu-sys: {reason}");
}

fn from_overrides(lib_dir: &str, include_dir: Option<String>, statik: bool) -> Found {
    let lib_dir = PathBuf::from(lib_dir);
    let lib_name = if statik { "libcriu.a" } else { "libcriu.so" };
    if !lib_dir.join(lib_name).exists() {
        fail(&format!(
            "CRIU_LIB_DIR={} holds no {lib_name}",
            lib_dir.display()
        ));
    }
    let include_dir = match include_dir {
        Some(d) => PathBuf::from(d),
        None => fail("CRIU_LIB_DIR is set but CRIU_INCLUDE_DIR is not"),
    };
    if !include_dir.join("criu.h").exists() {
        fail(&format!(
            "CRIU_INCLUDE_DIR={} holds no criu.h",
            include_dir.display()
        ));
    }
    println!("cargo:rustc-link-search=native={}", lib_dir.display());
    if statik {
        println!("cargo:rustc-link-lib=static=criu");
        // libcriu.a needs protobuf-c's runtime.
        println!("cargo:rustc-link-lib=dylib=protobuf-c");
    } else {
        println!("cargo:rustc-link-lib=dylib=criu");
    }
    Found {
        include_dirs: vec![include_dir],
    }
}

fn from_pkg_config(statik: bool) -> Found {
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    match pkg_config::Config::new()
        .atleast_version(MIN_VERSION)
        .statik(statik)
        .probe("criu")
    {
        Ok(lib) => {
            if statik {
                println!("cargo:rustc-link-lib=dylib=protobuf-c");
            }
            Found {
                include_dirs: lib.include_paths,
            }
        }
        Err(e) => fail(&format!(
            "pkg-config could not find criu >= {MIN_VERSION}: {e}"
        )),
    }
}

/// Reads `CRIU_VERSION_{MAJOR,MINOR,SUBLEVEL}` from `version.h`.
fn header_version(include_dirs: &[PathBuf]) -> (u32, u32, u32) {
    let path = include_dirs
        .iter()
        .map(|d| d.join("version.h"))
        .find(|p| p.exists())
        .unwrap_or_else(|| fail("criu's version.h was not found next to criu.h"));
    let text = fs::read_to_string(&path)
        .unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", path.display())));
    let field = |name: &str| -> u32 {
        text.lines()
            .filter_map(|l| l.trim().strip_prefix("#define"))
            .filter_map(|l| l.trim().strip_prefix(name))
            .find_map(|rest| rest.trim().parse().ok())
            .unwrap_or_else(|| fail(&format!("{} defines no {name}", path.display())))
    };
    (
        field("CRIU_VERSION_MAJOR"),
        field("CRIU_VERSION_MINOR"),
        field("CRIU_VERSION_SUBLEVEL"),
    )
}

fn header_path(include_dirs: &[PathBuf]) -> PathBuf {
    include_dirs
        .iter()
        .map(|d| d.join("criu.h"))
        .find(|p| p.exists())
        .unwrap_or_else(|| fail("criu.h was not found in the include paths of libcriu"))
}

fn main() {
    let (version, bindings) = if env_var("DOCS_RS").is_some() {
        docs_only_bindings()
    } else {
        generated_bindings()
    };
    emit_feature_levels(version);
    let (major, minor, sub) = version;
    // Seen by dependents as DEP_CRIU_VERSION / DEP_CRIU_BINDINGS (criu-rs
    // turns the first into the same cfgs and checks its coverage against
    // the second).
    println!("cargo:version={major}.{minor}.{sub}");
    println!("cargo:bindings={}", bindings.display());
    // This crate's own tests compare the generated bindings with the
    // documentation copy.
    println!("cargo:rustc-env=CRIU_SYS_BINDINGS={}", bindings.display());
    println!("cargo:rustc-env=CRIU_SYS_HEADER_VERSION={major}.{minor}.{sub}");
}

/// One cfg per CRIU feature level the headers reach.
fn emit_feature_levels((major, minor, _): (u32, u32, u32)) {
    for (maj, min) in LEVELS {
        println!("cargo::rustc-check-cfg=cfg(criu_{maj}_{min})");
        if (major, minor) >= (*maj, *min) {
            println!("cargo:rustc-cfg=criu_{maj}_{min}");
        }
    }
}

/// For docs.rs: the bindings of [`DOCS_VERSION`], copied to where the
/// generated ones would be; nothing is probed or linked.
fn docs_only_bindings() -> ((u32, u32, u32), PathBuf) {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let docs = manifest.join("src/docs/bindings.rs");
    println!("cargo:rerun-if-changed={}", docs.display());
    let path = out_dir().join("bindings.rs");
    fs::copy(&docs, &path)
        .unwrap_or_else(|e| fail(&format!("cannot copy {}: {e}", docs.display())));
    (DOCS_VERSION, path)
}

/// Finds libcriu, links it, and runs bindgen on its `criu.h`.
fn generated_bindings() -> ((u32, u32, u32), PathBuf) {
    let statik = env_var("CRIU_STATIC").is_some_and(|v| v != "0");
    let include_override = env_var("CRIU_INCLUDE_DIR");
    let found = match env_var("CRIU_LIB_DIR") {
        Some(dir) => from_overrides(&dir, include_override, statik),
        None => {
            let mut f = from_pkg_config(statik);
            if let Some(d) = include_override {
                f.include_dirs.insert(0, PathBuf::from(d));
            }
            f
        }
    };
    let version = header_version(&found.include_dirs);
    let header = header_path(&found.include_dirs);
    println!(
        "cargo:include={}",
        header.parent().unwrap_or(Path::new("/")).display()
    );
    println!("cargo:rerun-if-changed={}", header.display());
    (version, run_bindgen(&header, &found.include_dirs))
}

fn run_bindgen(header: &Path, include_dirs: &[PathBuf]) -> PathBuf {
    let mut builder = bindgen::Builder::default()
        .header(header.to_string_lossy())
        .allowlist_function("criu_.*")
        .allowlist_type("criu_.*|Criu.*")
        .allowlist_var("CRIU_.*")
        .derive_default(true)
        .generate_comments(true)
        // bindgen runs here for the very target it builds for, so its size
        // and offset assertions would restate its own arithmetic; without
        // them (as zstd-sys does) and with the `extern` blocks merged, the
        // documentation copy in `src/docs/` is half as long.
        .layout_tests(false)
        .merge_extern_blocks(true)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
    for dir in include_dirs {
        builder = builder.clang_arg(format!("-I{}", dir.display()));
    }
    let bindings = builder
        .generate()
        .unwrap_or_else(|e| fail(&format!("bindgen failed on {}: {e}", header.display())));
    let path = out_dir().join("bindings.rs");
    bindings
        .write_to_file(&path)
        .unwrap_or_else(|e| fail(&format!("cannot write the bindings: {e}")));
    path
}

fn out_dir() -> PathBuf {
    PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"))
}
