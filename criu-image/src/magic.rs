//! CRIU's image magics: the names and values of `criu/include/magic.h`,
//! tabled by `scripts/update-image-protos.sh` (`src/generated/magic.rs`).

include!("generated/magic.rs");

/// The first magic of images other than the inventory.
pub const IMG_COMMON: u32 = 0x5456_4319;
/// The first magic of service files (statistics, irmap cache).
pub const IMG_SERVICE: u32 = 0x5510_5940;

/// The name crit gives an image magic (`PSTREE`), if CRIU defines it.
pub fn name_of(value: u32) -> Option<&'static str> {
    MAGICS
        .iter()
        .find(|(name, v)| *v == value && *name != "RAW_IMAGE")
        .map(|(name, _)| *name)
}

/// The value of a named magic.
pub fn value_of(name: &str) -> Option<u32> {
    MAGICS.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}
