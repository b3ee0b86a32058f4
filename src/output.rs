//! Small crash-safe output files (bitmaps, manifests): written under a temporary name, synced,
//! renamed into place.

use std::io::{BufWriter, Write};
use std::path::Path;

use vdisk_core::{Error, Result};
use vdisk_raw::SparseWriter;

pub use vdisk_raw::write_file;

/// Write `path` atomically through a buffered stream filled by `fill`.
pub fn write_stream<T>(
    path: &Path,
    overwrite: bool,
    fill: impl FnOnce(&mut dyn Write) -> Result<T>,
) -> Result<T> {
    let w = SparseWriter::create(path, 0, overwrite)?;
    let value = {
        let mut out = BufWriter::with_capacity(1 << 20, w.file());
        let value = fill(&mut out).map_err(|e| e.with_path(path))?;
        out.flush()
            .map_err(|e| Error::io("cannot write", e).with_path(path))?;
        value
    };
    w.commit()?;
    Ok(value)
}
