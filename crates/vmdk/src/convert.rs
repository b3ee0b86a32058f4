//! Whole-image conversion: any readable image to raw or to any VMDK subformat.

use std::path::Path;

use crate::writer::{self, ImageSink, Subformat, WriteOptions};
use rayon::prelude::*;
use vdisk_core::{for_each_extent, Allocation, DiskImage, Result, Throttle};
use vdisk_raw::SparseWriter;

/// Bytes read by one task: large enough to amortise a task, small enough to keep a batch per
/// thread in flight with little memory, and a multiple of every grain size qemu or VMware
/// writes, so compressed grains inflate straight into the buffer.
pub const CHUNK: u64 = 4 << 20;
/// Chunks read in parallel before they are handed to the output.
const BATCH: usize = 16;

/// Options of a conversion.
#[derive(Default)]
pub struct ConvertOptions<'a> {
    /// Replace an existing destination (`--force`).
    pub overwrite: bool,
    /// Read-rate limit.
    pub throttle: Option<&'a Throttle>,
    /// Called with bytes of virtual disk done, from any thread.
    pub progress: Option<&'a (dyn Fn(u64) + Sync)>,
    /// Options of VMDK outputs (adapter type).
    pub vmdk: WriteOptions,
}

/// What a conversion did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConvertStats {
    /// Virtual size of the output.
    pub size: u64,
    /// Bytes read from the source (allocated data only).
    pub bytes_read: u64,
}

/// The output of a conversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A sparse raw file.
    Raw,
    /// A VMDK of this subformat.
    Vmdk(Subformat),
}

/// A raw output: holes where the data is zero.
struct RawSink(SparseWriter);

impl ImageSink for RawSink {
    fn block_size(&self) -> u64 {
        // Data ranges are rounded out to file-system blocks only: no more is read than the
        // source's map says holds data.
        4096
    }
    fn takes_runs(&self) -> bool {
        true
    }
    fn put(&mut self, blocks: &[(u64, &[u8])]) -> Result<()> {
        // One writer: threads writing one file contend for its inode lock (measured ~6 % of a
        // restore). Writeback starts right away so the final fsync has little left to do.
        for &(off, data) in blocks {
            self.0.write_at(data, off)?;
            self.0.start_writeback(off, data.len() as u64);
        }
        Ok(())
    }
    fn finish(self: Box<Self>) -> Result<()> {
        self.0.commit()
    }
}

/// Create the output `target` of `size` bytes at `dst`.
pub fn create_sink(
    dst: &Path,
    size: u64,
    target: Target,
    opts: &ConvertOptions<'_>,
) -> Result<Box<dyn ImageSink>> {
    Ok(match target {
        Target::Raw => Box::new(RawSink(SparseWriter::create(dst, size, opts.overwrite)?)),
        Target::Vmdk(sub) => {
            let wopts = WriteOptions {
                overwrite: opts.overwrite,
                ..opts.vmdk.clone()
            };
            writer::create(dst, size, sub, &wopts)?
        }
    })
}

/// Convert `img` to `target` at `dst`. Nothing appears at `dst` until the whole image is
/// written and synced.
pub fn convert(
    img: &dyn DiskImage,
    dst: &Path,
    target: Target,
    opts: &ConvertOptions<'_>,
) -> Result<ConvertStats> {
    let sink = create_sink(dst, img.size(), target, opts)?;
    copy_into(img, sink, opts)
}

/// Write `img` as a raw image at `dst` (see [`convert`]).
pub fn to_raw(img: &dyn DiskImage, dst: &Path, opts: &ConvertOptions<'_>) -> Result<ConvertStats> {
    convert(img, dst, Target::Raw, opts)
}

/// Copy every range of `img` that holds data into `sink`, then finish it.
///
/// Only ranges the allocation map says hold data are read, rounded out to the sink's blocks.
/// Chunks are read in parallel (inflating compressed grains in parallel); while the sink
/// stores one batch, the next is read.
pub fn copy_into<'s>(
    img: &dyn DiskImage,
    mut sink: Box<dyn ImageSink + 's>,
    opts: &ConvertOptions<'_>,
) -> Result<ConvertStats> {
    let size = img.size();
    let bs = sink.block_size();
    let mut bytes_read = 0u64;
    // (disk offset, chunk length, buffer of CHUNK bytes holding the chunk at its start)
    let mut pending: Vec<(u64, usize, Vec<u8>)> = Vec::new();
    let mut batch: Vec<(u64, u64)> = Vec::new();

    // Chunk buffers are reused and keep their full length: fresh 4 MiB buffers would each
    // cost a thousand page faults, and regrowing a shorter one would zero it again.
    let pool: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());
    let read = |batch: &[(u64, u64)]| -> Result<Vec<(u64, usize, Vec<u8>)>> {
        batch
            .par_iter()
            .map(|&(off, len)| {
                let mut buf = pool
                    .lock()
                    .ok()
                    .and_then(|mut p| p.pop())
                    .unwrap_or_else(|| vec![0u8; CHUNK as usize]);
                // Chunks never cross a CHUNK boundary, so one fits; read_at fills every byte.
                let n = len as usize;
                let dst = &mut buf[..n];
                match opts.throttle {
                    // Read in small paced pieces, so no second reads much more than the rate.
                    Some(t) => t.paced(len, |o, k| {
                        img.read_at(&mut dst[o as usize..(o + k) as usize], off + o)
                    })?,
                    None => img.read_at(dst, off)?,
                }
                if let Some(p) = opts.progress {
                    p(len);
                }
                Ok((off, n, buf))
            })
            .collect()
    };
    let runs = sink.takes_runs();
    let store =
        |sink: &mut Box<dyn ImageSink + 's>, chunks: &[(u64, usize, Vec<u8>)]| -> Result<()> {
            let mut blocks: Vec<(u64, &[u8])> = Vec::new();
            for (off, n, buf) in chunks {
                let buf = &buf[..*n];
                if runs {
                    blocks.push((*off, buf));
                    continue;
                }
                for (i, piece) in buf.chunks(bs as usize).enumerate() {
                    blocks.push((off + i as u64 * bs, piece));
                }
            }
            sink.put(&blocks)
        };
    // Read batch n+1 while batch n is stored.
    let step = |batch: &mut Vec<(u64, u64)>,
                pending: &mut Vec<(u64, usize, Vec<u8>)>,
                sink: &mut Box<dyn ImageSink + 's>|
     -> Result<()> {
        let (stored, fresh) = rayon::join(|| store(sink, pending), || read(batch));
        stored?;
        if let Ok(mut p) = pool.lock() {
            p.extend(pending.drain(..).map(|(_, _, buf)| buf));
        }
        *pending = fresh?;
        batch.clear();
        Ok(())
    };
    // Cut a range into chunks that never cross a CHUNK boundary of the disk.
    let queue = |(start, end): (u64, u64),
                 batch: &mut Vec<(u64, u64)>,
                 pending: &mut Vec<(u64, usize, Vec<u8>)>,
                 sink: &mut Box<dyn ImageSink + 's>|
     -> Result<()> {
        let mut off = start;
        while off < end {
            let stop = ((off / CHUNK) + 1).saturating_mul(CHUNK).min(end);
            batch.push((off, stop - off));
            off = stop;
            if batch.len() >= BATCH {
                step(batch, pending, sink)?;
            }
        }
        Ok(())
    };

    // The map is walked once, front to back; ranges are queued as soon as they are known, so
    // memory does not grow with the number of extents.
    let mut current: Option<(u64, u64)> = None;
    for_each_extent(img, |e| {
        if e.allocation != Allocation::Data {
            if let Some(p) = opts.progress {
                p(e.length);
            }
            return Ok(());
        }
        bytes_read += e.length;
        // Round out to whole blocks of the output, joining ranges that share a block.
        let start = e.start / bs * bs;
        let end = e.end().div_ceil(bs).saturating_mul(bs).min(size);
        match &mut current {
            Some(cur) if cur.1 >= start => cur.1 = cur.1.max(end),
            _ => {
                if let Some(done) = current.replace((start, end)) {
                    queue(done, &mut batch, &mut pending, &mut sink)?;
                }
            }
        }
        Ok(())
    })?;
    if let Some(done) = current {
        queue(done, &mut batch, &mut pending, &mut sink)?;
    }
    step(&mut batch, &mut pending, &mut sink)?;
    store(&mut sink, &pending)?;
    sink.finish()?;
    Ok(ConvertStats { size, bytes_read })
}
