//! The image-transfer stream comes from the network: any bytes must be
//! received or rejected, never panic, and a rejected stream must leave
//! nothing behind in the target's parent directory. (A control message,
//! 'M', where a file is due goes through the message decoder too.)
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parent = tempfile::tempdir_in("/dev/shm").expect("tmpfs scratch");
    let target = parent.path().join("images");
    let mut r = data;
    let limits = criu::transfer::Limits::default();
    let ok = criu::transfer::receive_dir(&mut r, &target, &limits, None).is_ok();
    let entries = std::fs::read_dir(parent.path()).unwrap().count();
    if ok {
        assert!(target.is_dir());
        assert_eq!(entries, 1);
    } else {
        assert_eq!(entries, 0, "a rejected stream left something behind");
    }
});
