//! Generates the image types from the `.proto` files of the CRIU source tree
//! the set-up downloads (nothing of CRIU's is committed here).
//!
//! * `CRIU_SOURCE_DIR` (default `/var/cache/criu-rs/src/criu-4.2.1`) names
//!   the tree; its `images/*.proto` become Rust types (prost) and one encoded
//!   `FileDescriptorSet` that keeps CRIU's custom field options (the renderer
//!   reads them reflectively, as crit does); its `criu/include/magic.h`
//!   becomes the table of image magics.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

const DEFAULT_SOURCE: &str = "/var/cache/criu-rs/src/criu-4.2.1";

fn main() {
    println!("cargo:rerun-if-env-changed=CRIU_SOURCE_DIR");
    let source =
        PathBuf::from(env::var("CRIU_SOURCE_DIR").unwrap_or_else(|_| DEFAULT_SOURCE.into()));
    let images = source.join("images");
    let magic_h = source.join("criu/include/magic.h");
    if !images.is_dir() || !magic_h.is_file() {
        panic!(
            "criu-image needs CRIU's source tree (for images/*.proto and criu/include/magic.h), \
             looked in {}. Run scripts/setup.sh (it downloads and verifies it), or set \
             CRIU_SOURCE_DIR to an unpacked CRIU source tree.",
            source.display()
        );
    }
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let protos = proto_files(&images);
    for p in &protos {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    println!("cargo:rerun-if-changed={}", magic_h.display());
    compile_protos(&images, &protos, &out);
    write_magics(&magic_h, &out.join("magic.rs"));
}

fn proto_files(images: &Path) -> Vec<PathBuf> {
    let mut protos: Vec<PathBuf> = fs::read_dir(images)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", images.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        // The RPC protocol is not an image (and its criu_opts would clash
        // with opts.proto's CRIU_Opts in one Rust module).
        .filter(|p| p.file_name().is_some_and(|n| n != "rpc.proto"))
        .collect();
    protos.sort();
    protos
}

/// protox keeps custom options (`(criu).hex` and friends) in the encoded
/// descriptor set; prost-build then generates the typed structs from it.
fn compile_protos(images: &Path, protos: &[PathBuf], out: &Path) {
    let mut compiler = protox::Compiler::new([images]).expect("protox include path");
    compiler.include_imports(true).include_source_info(false);
    for p in protos {
        let name = p.file_name().expect("a file name");
        compiler
            .open_file(name)
            .unwrap_or_else(|e| panic!("cannot compile {}: {e}", p.display()));
    }
    let encoded = compiler.encode_file_descriptor_set();
    fs::write(out.join("criu-images.fds"), &encoded).expect("write descriptor set");
    let fds = compiler.file_descriptor_set();
    let mut config = prost_build::Config::new();
    config.out_dir(out);
    config
        .compile_fds(fds)
        .unwrap_or_else(|e| panic!("prost-build failed on CRIU's images: {e}"));
}

/// `#define NAME_MAGIC 0x...` lines of magic.h.
fn write_magics(magic_h: &Path, dest: &Path) {
    let text = fs::read_to_string(magic_h).expect("read magic.h");
    let mut table: Vec<(String, u32)> = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("#define") {
            continue;
        }
        let (Some(name), Some(value)) = (words.next(), words.next()) else {
            continue;
        };
        let Some(short) = name.strip_suffix("_MAGIC") else {
            continue;
        };
        // Aliases (SHMEM_PAGEMAP_MAGIC is PAGEMAP_MAGIC) are left out, as
        // crit leaves them out: an image names itself by its first name.
        let number = value
            .strip_prefix("0x")
            .and_then(|h| u32::from_str_radix(h, 16).ok());
        if let Some(number) = number {
            table.push((short.to_string(), number));
        }
    }
    let mut code = String::from("/// Every `*_MAGIC` of CRIU's magic.h: (name without `_MAGIC`, value).\npub const MAGICS: &[(&str, u32)] = &[\n");
    for (name, value) in &table {
        code.push_str(&format!("    ({name:?}, {value:#010x}),\n"));
    }
    code.push_str("];\n");
    fs::write(dest, code).expect("write magic.rs");
}
