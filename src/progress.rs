//! Progress bars on stderr for long commands (only when stderr is a terminal), and the
//! summary line after them.

use std::io::IsTerminal;
use std::time::Instant;

/// A progress bar on a terminal (nothing otherwise), counting bytes up to a total.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
    show: bool,
}

impl Progress {
    /// A bar up to `total` bytes, unless `quiet` or stderr is not a terminal.
    pub fn new(quiet: bool, total: u64) -> Self {
        let show = !quiet && std::io::stderr().is_terminal();
        let bar = show.then(|| {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b
        });
        Progress {
            bar,
            started: Instant::now(),
            show,
        }
    }

    /// `n` more bytes done (from any thread).
    pub fn tick(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    /// Seconds since the bar was made.
    pub fn seconds(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Clear the bar and, on a terminal, print `vdisk: WHAT in N s`.
    pub fn done(self, what: &str) {
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
        if self.show {
            eprintln!(
                "vdisk: {what} in {:.2} s",
                self.started.elapsed().as_secs_f64()
            );
        }
    }
}
