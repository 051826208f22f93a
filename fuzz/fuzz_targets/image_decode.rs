//! Checkpoint images come from wherever a checkpoint was made (a forensic
//! tool opens a stranger's): any bytes must decode or be refused with an
//! offset inside the input, never panic, and whatever decodes must render
//! in both of crit's styles.
#![no_main]

use criu_image::crit::{self, Style};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match criu_image::Image::decode(data) {
        Ok(image) => {
            let _ = crit::render(&image, Style::Plain);
            let _ = crit::render(&image, Style::Pretty);
        }
        Err(e) => assert!(e.offset <= data.len() as u64, "{e}"),
    }
});
