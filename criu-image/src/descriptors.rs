//! The descriptors of every CRIU image message, with CRIU's custom field
//! options (`(criu).hex`, `ipadd`, `flags`, `dev`, `odev`, `dict`, `conv`)
//! kept, so that the renderer can walk messages as crit does.

use std::sync::OnceLock;

use prost_reflect::DescriptorPool;

/// `images/*.proto` as one encoded `FileDescriptorSet` (committed, made by
/// `scripts/update-image-protos.sh` with the types of [`crate::proto`]).
static ENCODED: &[u8] = include_bytes!("generated/images.fds");

/// The pool of CRIU's image message descriptors (built once).
pub fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(ENCODED)
            .expect("the committed descriptor set decodes (make generated-check)")
    })
}
