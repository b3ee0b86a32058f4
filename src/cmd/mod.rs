//! One module per command: its arguments (a clap `Args` struct) and its `run`, which parses
//! nothing more, calls the library and prints.

pub mod backup;
pub mod bitmap;
pub mod check;
pub mod completions;
pub mod convert;
pub mod diff;
pub mod hash;
pub mod info;
pub mod list;
pub mod map;
pub mod merge;
pub mod prune;
pub mod restore;
pub mod serve;
pub mod sync;
pub mod verify;

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use vdisk::{Error, OpenOptions, OutputPolicy, Protected, Result};

/// A repository location as typed: a folder, or `s3://BUCKET/PREFIX`.
pub fn location(repo: &Path) -> Result<vdisk::chain::Location> {
    vdisk::chain::Location::parse(repo.as_os_str())
}

/// Exit status of a command that ran: 0 clean or identical, 1 problems or differences.
pub type Status = u8;

/// Global settings every command gets.
pub struct Ctx {
    /// How images are opened (`-f`, `--allow-outside-paths`).
    pub open: OpenOptions,
    /// `--io-limit`.
    pub throttle: vdisk::Throttle,
    /// `-q`.
    pub quiet: bool,
}

impl Ctx {
    /// A progress bar up to `total` bytes (drawn only on a terminal, never with `-q`).
    pub fn progress(&self, total: u64) -> crate::progress::Progress {
        crate::progress::Progress::new(self.quiet, total)
    }

    /// Whether to print a summary line on stderr.
    pub fn summary(&self) -> bool {
        !self.quiet
    }
}

/// The output policy for `--force`, protecting `protected`.
pub fn policy(force: bool, protected: Protected) -> OutputPolicy {
    OutputPolicy {
        existing: if force {
            vdisk::Existing::Replace
        } else {
            vdisk::Existing::Refuse
        },
        protected: Arc::new(protected),
    }
}

/// An error writing to standard output (its reader gone: `BrokenPipe`, ended quietly by
/// `main`).
pub fn stdout_error(e: std::io::Error) -> Error {
    Error::io("writing output", e)
}

/// Write a JSON document to stdout, followed by a newline.
pub fn print_json(v: &impl serde::Serialize) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v).map_err(|e| stdout_error(e.into()))?;
    writeln!(out).map_err(stdout_error)?;
    out.flush().map_err(stdout_error)
}

/// Print lines of text to stdout.
pub fn print_text(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).map_err(stdout_error)?;
    out.flush().map_err(stdout_error)
}

/// A path as JSON text: UTF-8 as it is, other bytes replaced (JSON holds only text).
pub fn path_text(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}
