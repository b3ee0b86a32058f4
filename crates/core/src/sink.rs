//! Writing images, format-neutrally: an [`ImageSink`] takes a disk's blocks in order, and
//! [`copy_into`] feeds one from any [`DiskImage`].

use std::sync::Mutex;

use rayon::prelude::*;

use crate::{for_each_extent, Advice, Allocation, DiskImage, Progress, ReadOnce, Result, Throttle};

/// Where a written image's blocks go (a raw file, a device, any VMDK subformat, an object in
/// a store). Blocks come in increasing offset order.
pub trait ImageSink: Send {
    /// The block size `put` expects: data ranges are rounded out to it (the grain size of
    /// sparse outputs; 4 KiB for raw and flat ones).
    fn block_size(&self) -> u64;

    /// Whether `put` takes runs of any number of whole blocks at once (raw and flat outputs,
    /// which copy bytes as they are); otherwise each block comes on its own.
    fn takes_runs(&self) -> bool {
        false
    }

    /// Store blocks: `(offset, bytes)` with `offset` a multiple of [`ImageSink::block_size`]
    /// and `bytes` whole blocks (shorter only at the end of the disk). All-zero blocks may be
    /// passed; sparse outputs store nothing for them. Ranges never passed read as zero.
    fn put(&mut self, blocks: &[(u64, &[u8])]) -> Result<()>;

    /// Write the metadata, make everything durable and visible under its final name.
    fn finish(self: Box<Self>) -> Result<()>;
}

/// How [`copy_into`] reads.
#[derive(Default, Clone, Copy)]
pub struct CopyOptions<'a> {
    /// Read-rate limit.
    pub throttle: Option<&'a Throttle>,
    /// Told of bytes read and of unallocated bytes passed over, from any thread.
    pub progress: Option<&'a dyn Progress>,
}

/// What a copy did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Virtual size of the output.
    pub size: u64,
    /// Bytes read from the source (allocated data only).
    pub bytes_read: u64,
}

/// Bytes read by one task: large enough to amortise a task, small enough to keep a batch per
/// thread in flight with little memory, and a multiple of every grain size qemu or VMware
/// writes, so compressed grains inflate straight into the buffer.
pub const COPY_CHUNK: u64 = 4 << 20;
/// Chunks read in parallel before they are handed to the output.
const BATCH: usize = 16;

/// Cut `[start, end)` into pieces that never cross a multiple of `chunk`: the one chunk
/// cutter of copies and scans, so that a task never spans two chunks of the disk (and so
/// never two extent files of a split image, whose sizes are multiples of every chunk).
pub fn chunks(start: u64, end: u64, chunk: u64) -> impl Iterator<Item = (u64, u64)> {
    let chunk = chunk.max(1);
    let mut off = start;
    std::iter::from_fn(move || {
        if off >= end {
            return None;
        }
        let stop = ((off / chunk) + 1).saturating_mul(chunk).min(end);
        let piece = (off, stop);
        off = stop;
        Some(piece)
    })
}

/// A chunk's bytes: read into a pooled buffer, or lent by a mapped source (a raw file), which
/// saves a copy of every byte.
enum ChunkBytes<'i> {
    Read(Vec<u8>),
    Lent(&'i [u8]),
}

impl ChunkBytes<'_> {
    fn bytes(&self, n: usize) -> &[u8] {
        match self {
            ChunkBytes::Read(b) => &b[..n],
            ChunkBytes::Lent(b) => &b[..n],
        }
    }
}

/// A chunk read from the source: (disk offset, length, its bytes, the source's pages it
/// brought in, forgotten once the chunk is stored).
type Chunk<'i> = (u64, usize, ChunkBytes<'i>, ReadOnce<'i>);

/// Copy every range of `img` that holds data into `sink`, then finish it.
///
/// Only ranges the allocation map says hold data are read, rounded out to the sink's blocks.
/// Chunks are read in parallel (inflating compressed grains in parallel); while the sink
/// stores one batch, the next is read. Memory stays at a few batches of [`COPY_CHUNK`]
/// whatever the disk's size or its number of extents.
///
/// A sink only has to take blocks in order; here one that counts what it is given:
///
/// ```
/// use vdisk_core::{copy_into, CopyOptions, ImageSink, MemImage, Result};
/// use std::sync::{Arc, Mutex};
///
/// /// Counts the non-zero blocks it is handed, and notes whether it was finished.
/// struct Counter(Arc<Mutex<(Vec<u64>, bool)>>);
///
/// impl ImageSink for Counter {
///     fn block_size(&self) -> u64 {
///         64 << 10
///     }
///     fn put(&mut self, blocks: &[(u64, &[u8])]) -> Result<()> {
///         let mut seen = self.0.lock().unwrap();
///         for (offset, bytes) in blocks {
///             if bytes.iter().any(|&b| b != 0) {
///                 seen.0.push(*offset);
///             }
///         }
///         Ok(())
///     }
///     fn finish(self: Box<Self>) -> Result<()> {
///         self.0.lock().unwrap().1 = true;
///         Ok(())
///     }
/// }
///
/// // 1 MiB with data in the 2nd and the 10th 64 KiB blocks.
/// let mut disk = vec![0u8; 1 << 20];
/// disk[(64 << 10) + 5] = 1;
/// disk[(9 << 16) + 100] = 2;
/// let seen = Arc::new(Mutex::new((Vec::new(), false)));
/// let stats = copy_into(
///     &MemImage::new(disk),
///     Box::new(Counter(Arc::clone(&seen))),
///     &CopyOptions::default(),
/// )?;
/// assert_eq!(stats.size, 1 << 20);
/// // Only the 4 KiB blocks MemImage reports as data were read.
/// assert_eq!(stats.bytes_read, 2 * 4096);
/// assert_eq!(*seen.lock().unwrap(), (vec![64 << 10, 9 << 16], true));
/// # Ok::<(), vdisk_core::Error>(())
/// ```
pub fn copy_into<'s, 'i>(
    img: &'i dyn DiskImage,
    mut sink: Box<dyn ImageSink + 's>,
    opts: &CopyOptions<'_>,
) -> Result<CopyStats> {
    let size = img.size();
    let bs = sink.block_size();
    let mut bytes_read = 0u64;
    let paced = opts.throttle.is_some_and(|t| t.rate().is_some());
    if paced {
        img.advise(0, size, Advice::Paced);
    }
    let mut pending: Vec<Chunk<'i>> = Vec::new();
    let mut batch: Vec<(u64, u64)> = Vec::new();

    // Chunk buffers are reused and keep their full length: fresh 4 MiB buffers would each
    // cost a thousand page faults, and regrowing a shorter one would zero it again.
    let pool: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
    let read = |batch: &[(u64, u64)]| -> Result<Vec<Chunk<'i>>> {
        batch
            .par_iter()
            .map(|&(off, len)| {
                let n = len as usize;
                let once = ReadOnce::new(img, off, len);
                // A mapped source lends its bytes: its pages are mapped in one call here, in
                // parallel, and the sink copies them out once. Not when reads are paced:
                // mapping 4 MiB at once would read it in one burst.
                let lent = if paced { None } else { img.mapped(off, len) };
                if let Some(lent) = lent {
                    img.advise(off, len, Advice::Populate);
                    if let Some(p) = opts.progress {
                        p.read(len);
                    }
                    return Ok((off, n, ChunkBytes::Lent(lent), once));
                }
                let mut buf = pool
                    .lock()
                    .ok()
                    .and_then(|mut p| p.pop())
                    .unwrap_or_else(|| vec![0u8; COPY_CHUNK as usize]);
                // Chunks never cross a COPY_CHUNK boundary, so one fits; read_at fills every
                // byte.
                let dst = &mut buf[..n];
                match opts.throttle {
                    // Read in small paced pieces, so no second reads much more than the rate.
                    Some(t) => t.paced(len, |o, k| {
                        img.read_at(&mut dst[o as usize..(o + k) as usize], off + o)
                    })?,
                    None => img.read_at(dst, off)?,
                }
                if let Some(p) = opts.progress {
                    p.read(len);
                }
                Ok((off, n, ChunkBytes::Read(buf), once))
            })
            .collect()
    };
    let runs = sink.takes_runs();
    let store = |sink: &mut Box<dyn ImageSink + 's>, chunks: &[Chunk<'i>]| -> Result<()> {
        let mut blocks: Vec<(u64, &[u8])> = Vec::new();
        for (off, n, buf, _) in chunks {
            let buf = buf.bytes(*n);
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
                pending: &mut Vec<Chunk<'i>>,
                sink: &mut Box<dyn ImageSink + 's>|
     -> Result<()> {
        let (stored, fresh) = rayon::join(|| store(sink, pending), || read(batch));
        stored?;
        // Read once and stored: dropping the guards drops behind the reader what the read
        // brought into the cache.
        // A lent range is unmapped from this process (the page cache keeps it), so that a
        // copy's memory does not grow with the disk.
        let mut back = Vec::new();
        for (off, n, buf, once) in pending.drain(..) {
            match buf {
                ChunkBytes::Read(b) => back.push(b),
                ChunkBytes::Lent(_) => img.advise(off, n as u64, Advice::Release),
            }
            drop(once);
        }
        if let Ok(mut p) = pool.lock() {
            p.extend(back);
        }
        *pending = fresh?;
        batch.clear();
        Ok(())
    };
    let queue = |(start, end): (u64, u64),
                 batch: &mut Vec<(u64, u64)>,
                 pending: &mut Vec<Chunk<'i>>,
                 sink: &mut Box<dyn ImageSink + 's>|
     -> Result<()> {
        for (s, e) in chunks(start, end, COPY_CHUNK) {
            batch.push((s, e - s));
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
                p.skipped(e.length);
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
    for (off, n, buf, _) in &pending {
        if let ChunkBytes::Lent(_) = buf {
            img.advise(*off, *n as u64, Advice::Release);
        }
    }
    drop(pending);
    sink.finish()?;
    Ok(CopyStats { size, bytes_read })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_never_cross_a_boundary_and_cover_the_range() {
        let v: Vec<_> = chunks(3, 25, 10).collect();
        assert_eq!(v, [(3, 10), (10, 20), (20, 25)]);
        assert_eq!(chunks(5, 5, 10).count(), 0);
        assert_eq!(chunks(u64::MAX - 3, u64::MAX, 1 << 20).count(), 1);
    }
}
