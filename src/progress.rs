//! Progress bars on stderr for long commands (only when stderr is a terminal), and the one
//! summary line each command that writes or checks prints after its work.
//!
//! A bar counts bytes really read, toward the bytes the job is expected to read (allocated
//! data, changed blocks, stored grains), so its rate and ETA are those of the reads, and an
//! `--io-limit` shows as the rate it is. Ranges passed over without a read (unallocated,
//! unchanged) never move it. A bar is labelled with the command and the disk, and fits the
//! terminal's width (80 columns at least).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use vdisk::size::human;

/// Widest label drawn before the bar: the rest of an 80-column line holds the bar, the
/// counts, the rate and the ETA.
const LABEL_WIDTH: usize = 28;

/// A labelled progress bar on a terminal (nothing otherwise), counting bytes read up to the
/// expected total.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
    quiet: bool,
    /// Whether the total is the job's whole span, from which what it passes over is taken
    /// away as it goes (otherwise it is the reads expected, known up front).
    shrinks: bool,
}

impl Progress {
    /// A bar labelled `label` (e.g. `backup web01.vmdk`), up to `expected` bytes read, unless
    /// `quiet` or stderr is not a terminal. `limit` is the `--io-limit` rate, shown beside the
    /// label.
    pub fn new(quiet: bool, label: &str, expected: Expect, limit: Option<u64>) -> Self {
        let (total, shrinks) = match expected {
            Expect::Reads(n) => (n, false),
            Expect::Span(n) => (n, true),
        };
        let show = !quiet && std::io::stderr().is_terminal();
        let bar = show.then(|| {
            let b = indicatif::ProgressBar::new(total.max(1));
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix} {wide_bar} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {when}",
                )
                .map(|s| {
                    // Nothing read yet: no ETA to speak of (indicatif would say 0s).
                    s.with_key(
                        "when",
                        |st: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                            let _ = if st.pos() == 0 {
                                write!(w, "?")
                            } else {
                                write!(w, "{:#}", indicatif::HumanDuration(st.eta()))
                            };
                        },
                    )
                })
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let mut prefix = shorten(label, LABEL_WIDTH);
            if let Some(rate) = limit {
                prefix.push_str(&format!(" ≤{}/s", human(rate)));
            }
            b.set_prefix(prefix);
            b.enable_steady_tick(Duration::from_millis(250));
            b
        });
        Progress {
            bar,
            started: Instant::now(),
            quiet,
            shrinks,
        }
    }

    /// Seconds since the bar was made.
    pub fn seconds(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Clear the bar and print the command's one summary line, `vdisk: LINE` (unless `-q`).
    pub fn finish(self, line: impl std::fmt::Display) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        if !self.quiet {
            eprintln!("vdisk: {line}");
        }
    }

    /// Clear the bar without a summary (a command that only reads and prints its result).
    pub fn clear(self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl vdisk::Progress for Progress {
    fn read(&self, bytes: u64) {
        if let Some(b) = &self.bar {
            // The expected total is an estimate (reads round out to blocks); a job that reads
            // more moves its end rather than running past it.
            let pos = b.position().saturating_add(bytes);
            if pos > b.length().unwrap_or(0) {
                b.set_length(pos);
            }
            b.inc(bytes);
        }
    }

    fn skipped(&self, bytes: u64) {
        if let Some(b) = self.bar.as_ref().filter(|_| self.shrinks) {
            let len = b.length().unwrap_or(0);
            b.set_length(len.saturating_sub(bytes).max(b.position()).max(1));
        }
    }
}

/// What a bar counts up to.
#[derive(Debug, Clone, Copy)]
pub enum Expect {
    /// The bytes the job will read, known before it starts (allocated data, changed
    /// blocks); ranges it passes over do not change it.
    Reads(u64),
    /// The job's whole span; ranges it passes over without a read are taken off as it goes.
    Span(u64),
}

/// `text`, cut to at most `width` characters with an ellipsis in the middle (a file name's
/// end, its extension, is kept).
pub fn shorten(text: &str, width: usize) -> String {
    let n = text.chars().count();
    if n <= width {
        return text.to_string();
    }
    let tail = width / 2;
    let head = width.saturating_sub(tail + 1);
    let start: String = text.chars().take(head).collect();
    let end: String = text.chars().skip(n - tail).collect();
    format!("{start}…{end}")
}

/// The name a label gives a file: its last component.
pub fn file_label(path: &std::path::Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.to_string_lossy().into_owned())
}

/// Seconds as a summary line writes them.
pub fn secs(s: f64) -> String {
    if s < 10.0 {
        format!("{s:.2} s")
    } else {
        format!("{s:.0} s")
    }
}

/// An amount of bytes moved, as a summary line writes it (`12.04 MiB`, as the bar does).
pub fn amount(bytes: u64) -> String {
    indicatif::BinaryBytes(bytes).to_string()
}

/// A rate as a summary line writes it.
pub fn rate(bytes: u64, seconds: f64) -> String {
    format!("{}/s", amount((bytes as f64 / seconds.max(1e-3)) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_cut_in_the_middle() {
        assert_eq!(shorten("backup web01.vmdk", 28), "backup web01.vmdk");
        let s = shorten("backup a-very-long-disk-name-of-a-vm-0001.vmdk", 28);
        assert_eq!(s.chars().count(), 28);
        assert!(s.starts_with("backup a-ve"), "{s}");
        assert!(s.ends_with("0001.vmdk"), "{s}");
    }
}
