//! One module per command: parse nothing, call the library, print.

pub mod bitmap;
pub mod check;
pub mod convert;
pub mod diff;
pub mod hash;
pub mod info;
pub mod map;
pub mod merge;
pub mod repo;
pub mod stdin;

use vdisk::Result;

/// Exit status of a command that ran: 0 clean or identical, 1 problems or differences.
pub type Status = u8;

/// Write a JSON document to stdout, followed by a newline.
pub fn print_json(v: &serde_json::Value) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)
        .map_err(|e| vdisk::Error::io("writing output", e.into()))?;
    writeln!(out).map_err(|e| vdisk::Error::io("writing output", e))
}
