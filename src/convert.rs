//! Whole-image conversion.

use std::path::Path;

use rayon::prelude::*;
use vdisk_core::{Allocation, DiskImage, Result};
use vdisk_raw::SparseWriter;

use crate::{for_each_extent, Throttle};

/// Bytes read and written by one task: large enough to amortise a task, small enough to keep
/// two per thread in flight with little memory, and a multiple of every grain size qemu or
/// VMware writes, so compressed grains inflate straight into the buffer.
const CHUNK: u64 = 4 << 20;

/// Options of a conversion.
#[derive(Default)]
pub struct ConvertOptions<'a> {
    /// Replace an existing destination (`--force`).
    pub overwrite: bool,
    /// Read-rate limit.
    pub throttle: Option<&'a Throttle>,
    /// Called with the bytes of virtual disk done so far, from any thread.
    pub progress: Option<&'a (dyn Fn(u64) + Sync)>,
}

/// What a conversion did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConvertStats {
    /// Virtual size of the output.
    pub size: u64,
    /// Bytes read from the source (allocated data only).
    pub bytes_read: u64,
}

/// Write `img` as a raw image at `dst`: holes where the source reads as zero, nothing at `dst`
/// until the whole image is written and synced.
///
/// Only ranges the source's allocation map says hold data are read; they are read in parallel
/// chunks (inflating compressed grains in parallel) and written with positional writes.
pub fn to_raw(img: &dyn DiskImage, dst: &Path, opts: &ConvertOptions<'_>) -> Result<ConvertStats> {
    let size = img.size();
    let writer = SparseWriter::create(dst, size, opts.overwrite)?;
    let mut chunks: Vec<(u64, u64)> = Vec::new();
    let mut bytes_read = 0u64;
    let flush = |chunks: &mut Vec<(u64, u64)>| -> Result<()> {
        chunks.par_iter().try_for_each_init(
            || vec![0u8; CHUNK as usize],
            |buf, &(off, len)| -> Result<()> {
                let buf = &mut buf[..len as usize];
                if let Some(t) = opts.throttle {
                    t.take(len);
                }
                img.read_at(buf, off)?;
                writer.write_at(buf, off)?;
                if let Some(p) = opts.progress {
                    p(len);
                }
                Ok(())
            },
        )?;
        chunks.clear();
        Ok(())
    };
    for_each_extent(img, |e| {
        if let Some(p) = opts.progress {
            if e.allocation != Allocation::Data {
                p(e.length);
            }
        }
        if e.allocation != Allocation::Data {
            return Ok(());
        }
        bytes_read += e.length;
        // Split on CHUNK boundaries of the disk, so grains are never split between tasks.
        let mut off = e.start;
        while off < e.end() {
            let next = ((off / CHUNK) + 1) * CHUNK;
            let end = next.min(e.end());
            chunks.push((off, end - off));
            off = end;
        }
        if chunks.len() >= 256 {
            flush(&mut chunks)?;
        }
        Ok(())
    })?;
    flush(&mut chunks)?;
    writer.commit()?;
    Ok(ConvertStats { size, bytes_read })
}
