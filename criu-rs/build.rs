//! Forwards criu-sys's CRIU feature level (`DEP_CRIU_VERSION`) as cfgs, so
//! that wrappers of setters that appeared in later libcriu versions are
//! compiled only where the bindings have them.

const LEVELS: &[(u32, u32)] = &[(3, 19), (4, 0), (4, 1), (4, 2)];

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_CRIU_VERSION");
    let version = std::env::var("DEP_CRIU_VERSION").unwrap_or_default();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let have = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    for (maj, min) in LEVELS {
        println!("cargo::rustc-check-cfg=cfg(criu_{maj}_{min})");
        if have >= (*maj, *min) {
            println!("cargo:rustc-cfg=criu_{maj}_{min}");
        }
    }
    println!("cargo:rustc-env=CRIU_RS_HEADER_VERSION={version}");
    println!("cargo:rerun-if-env-changed=DEP_CRIU_BINDINGS");
    let bindings = std::env::var("DEP_CRIU_BINDINGS").unwrap_or_default();
    println!("cargo:rustc-env=CRIU_RS_BINDINGS={bindings}");
}
