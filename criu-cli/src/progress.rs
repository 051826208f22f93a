//! The sender's progress bar: the images still to send, shown when the
//! transfer lasts over a second and stderr is a terminal.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// A progress bar that has not appeared yet.
pub struct Bar {
    start: Instant,
    bar: Option<indicatif::ProgressBar>,
}

impl Bar {
    /// A bar that appears after a second, on a terminal only.
    pub fn new() -> Bar {
        Bar {
            start: Instant::now(),
            bar: None,
        }
    }

    /// Bytes done, bytes in total (0 while unknown: stop-and-copy sends
    /// the images while the dump still writes them).
    pub fn update(&mut self, done: u64, total: u64) {
        if self.bar.is_none()
            && self.start.elapsed() > Duration::from_secs(1)
            && std::io::stderr().is_terminal()
        {
            let b = indicatif::ProgressBar::new(total);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "  sending images {bar:40} {bytes}/{total_bytes} {bytes_per_sec}, {msg}",
            ) {
                b.set_style(style);
            }
            self.bar = Some(b);
        }
        if let Some(b) = &self.bar {
            b.set_length(total.max(done));
            b.set_position(done);
            b.set_message(match total {
                0 => "while the dump writes".to_string(),
                t => format!("{} to go", indicatif::HumanBytes(t.saturating_sub(done))),
            });
        }
    }

    /// The closure `SourceConfig::progress` takes.
    pub fn callback(mut self) -> impl FnMut(u64, u64) + Send {
        move |done, total| self.update(done, total)
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
