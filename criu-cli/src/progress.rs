//! Progress on long transfers, on stderr, only when it is a terminal (and
//! never with `--json`, whose callers leave the bar out): [`Bar`] for a
//! transfer whose size is known as it goes (`send`, and `push` / `pull`
//! to and from a registry), [`Spinner`] for one whose progress is only
//! seen from outside (`push` / `pull` of an OCI layout directory).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar that has not appeared yet: it appears once the
/// transfer has lasted a second.
pub struct Bar {
    label: &'static str,
    unknown: &'static str,
    start: Instant,
    bar: Option<ProgressBar>,
    /// Whether the bar is styled for a known total, once styled.
    styled: Option<bool>,
}

impl Bar {
    /// A bar labelled `label` ("sending images").
    pub fn new(label: &'static str) -> Bar {
        Bar {
            label,
            unknown: "while the dump writes",
            start: Instant::now(),
            bar: None,
            styled: None,
        }
    }

    /// What the bar says while the total is unknown (0).
    pub fn unknown_total(mut self, says: &'static str) -> Bar {
        self.unknown = says;
        self
    }

    /// Bytes done, bytes in total (0 while unknown: stop-and-copy sends
    /// the images while the dump still writes them; a gzip push learns
    /// its layer's size at the end). While the total is unknown the bar
    /// shows the bytes and the rate only.
    pub fn update(&mut self, done: u64, total: u64) {
        if self.bar.is_none() && std::io::stderr().is_terminal() {
            // Made hidden at the first report, so that its rate counts
            // from the start; shown once the transfer has lasted a second.
            let hidden = ProgressDrawTarget::hidden();
            self.bar = Some(ProgressBar::with_draw_target(Some(total), hidden));
        }
        let Some(b) = &self.bar else { return };
        if b.is_hidden() && self.start.elapsed() > Duration::from_secs(1) {
            b.set_draw_target(ProgressDrawTarget::stderr());
        }
        let known = total > 0;
        if self.styled != Some(known) {
            self.styled = Some(known);
            let shape = match known {
                true => "{bar:40} {bytes}/{total_bytes}",
                false => "{bytes}",
            };
            let template = format!("  {} {shape} {{bytes_per_sec}}, {{msg}}", self.label);
            if let Ok(style) = ProgressStyle::with_template(&template) {
                b.set_style(style);
            }
        }
        b.set_length(total.max(done));
        b.set_position(done);
        b.set_message(match total {
            0 => self.unknown.to_string(),
            t => format!("{} to go", HumanBytes(t.saturating_sub(done))),
        });
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

/// A spinner with the elapsed time and, when `measure` can tell, the
/// bytes done so far (read every 200 ms on a thread of its own), for a
/// transfer that gives no callback. Hidden unless `shown` and stderr is a
/// terminal; cleared when dropped.
pub struct Spinner {
    bar: Option<ProgressBar>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Spinner {
    /// Starts a spinner saying `what` (`pushing 12 MiB to REF`).
    pub fn start(
        shown: bool,
        what: String,
        measure: impl Fn() -> Option<u64> + Send + 'static,
    ) -> Spinner {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        if !shown || !std::io::stderr().is_terminal() {
            return Spinner {
                bar: None,
                stop,
                thread: None,
            };
        }
        let bar = ProgressBar::new_spinner();
        if let Ok(style) = ProgressStyle::with_template("  {spinner} {msg} {elapsed}") {
            bar.set_style(style);
        }
        bar.set_message(what.clone());
        let (b, s) = (bar.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::SeqCst) {
                if let Some(done) = measure() {
                    b.set_message(format!("{what}: {} so far", HumanBytes(done)));
                }
                b.tick();
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        Spinner {
            bar: Some(bar),
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// The bytes of the regular files under `dir` (0 when it is missing).
pub fn bytes_under(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => bytes_under(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}
