//! The scan engine behind `diff`, `hash` and `diff MANIFEST NEW`.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;
use vdisk_bitmap::ChangeMap;
use vdisk_core::{is_zero, Allocation, DiskImage, Granularity, Result, Throttle};

use crate::block_hash;
use crate::manifest::{Manifest, ManifestWriter};

/// Bytes of disk looked at per window: allocation maps are asked for, and mapped pages
/// released, one window at a time.
const WINDOW: u64 = 64 << 20;
/// Bytes per parallel task.
const CHUNK: u64 = 2 << 20;

/// How to scan.
#[derive(Clone, Copy)]
pub struct ScanOptions<'a> {
    /// Block size of the result (a power of two, at least 512).
    pub granularity: u64,
    /// Read-rate limit.
    pub throttle: Option<&'a Throttle>,
    /// Called with bytes of disk done, from the scanning thread.
    pub progress: Option<&'a (dyn Fn(u64) + Sync)>,
}

impl ScanOptions<'_> {
    /// Options with only a granularity.
    pub fn new(granularity: Granularity) -> ScanOptions<'static> {
        ScanOptions {
            granularity: granularity.bytes(),
            throttle: None,
            progress: None,
        }
    }

    fn check(&self) -> Result<()> {
        Granularity::new(self.granularity).map(|_| ())
    }

    fn window(&self) -> u64 {
        WINDOW.max(self.granularity)
    }

    /// Whether reads are paced.
    fn paced(&self) -> bool {
        self.throttle.is_some_and(|t| t.rate().is_some())
    }

    /// Prepare `img` for this scan's reads: paced reads read what is asked, nothing ahead.
    fn prepare(&self, img: &dyn DiskImage) {
        if self.paced() {
            img.read_as_asked();
        }
    }

    fn take(&self, bytes: u64) {
        if let Some(t) = self.throttle {
            t.take(bytes);
        }
    }

    fn tick(&self, bytes: u64) {
        if let Some(p) = self.progress {
            p(bytes);
        }
    }
}

/// What a diff found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffReport {
    /// The changed blocks, over the new image's size.
    pub map: ChangeMap,
    /// Bytes read from the images (both sides).
    pub bytes_read: u64,
}

/// A report is its change map wherever one is wanted (a delta link writer, a bitmap file).
impl AsRef<ChangeMap> for DiffReport {
    fn as_ref(&self) -> &ChangeMap {
        &self.map
    }
}

/// Byte ranges in `[start, end)` where `img` stores data, sorted.
fn data_ranges(img: &dyn DiskImage, start: u64, end: u64) -> Result<Vec<(u64, u64)>> {
    let end = end.min(img.size());
    if start >= end {
        return Ok(Vec::new());
    }
    Ok(img
        .allocation(start, end - start)?
        .into_iter()
        .filter(|e| e.allocation == Allocation::Data)
        .map(|e| (e.start, e.end()))
        .collect())
}

/// The union of sorted range lists, rounded out to blocks of `g`, clipped to `[start, end)`,
/// and cut into tasks of at most [`CHUNK`] that never cross a chunk boundary.
fn tasks(lists: &[Vec<(u64, u64)>], start: u64, end: u64, g: u64) -> Vec<(u64, u64)> {
    let mut all: Vec<(u64, u64)> = lists.iter().flatten().copied().collect();
    all.sort_unstable();
    let chunk = CHUNK.max(g);
    let mut out = Vec::new();
    let mut cur: Option<(u64, u64)> = None;
    let emit = |(s, e): (u64, u64), out: &mut Vec<(u64, u64)>| {
        let mut off = s;
        while off < e {
            let stop = ((off / chunk) + 1).saturating_mul(chunk).min(e);
            out.push((off, stop));
            off = stop;
        }
    };
    for (s, e) in all {
        let s = (s / g * g).max(start);
        let e = e.div_ceil(g).saturating_mul(g).min(end);
        if s >= e {
            continue;
        }
        match &mut cur {
            Some(c) if c.1 >= s => c.1 = c.1.max(e),
            _ => {
                if let Some(done) = cur.replace((s, e)) {
                    emit(done, &mut out);
                }
            }
        }
    }
    if let Some(done) = cur {
        emit(done, &mut out);
    }
    out
}

/// `len` bytes of `img` at `off`: straight from its memory map when it has one and reads
/// are not paced (`true`), otherwise read into `buf` in paced pieces (`false`). Bytes past
/// the image's end read as zero.
///
/// Paced reads never go through the map: without read-ahead each page fault is one 4 KiB
/// disk read, too slow for one thread to keep up with the pace on a busy disk (a diff's
/// last seconds, read by one thread, fell to 0.7 times the limit), and a populate would read
/// the whole piece at once, ahead of the pace. A read of a paced piece is one request.
fn bytes_at<'a>(
    img: &'a dyn DiskImage,
    off: u64,
    len: u64,
    buf: &'a mut Vec<u8>,
    opts: &ScanOptions<'_>,
) -> Result<(&'a [u8], bool)> {
    let size = img.size();
    if off + len <= size && !opts.paced() {
        if let Some(s) = img.mapped(off, len) {
            img.populate(off, len);
            return Ok((s, true));
        }
    }
    buf.clear();
    buf.resize(len as usize, 0);
    let avail = size.saturating_sub(off).min(len);
    if avail > 0 {
        let dst = &mut buf[..avail as usize];
        match opts.throttle {
            Some(t) => t.paced(avail, |o, n| {
                img.read_at(&mut dst[o as usize..(o + n) as usize], off + o)
            })?,
            None => img.read_at(dst, off)?,
        }
    }
    Ok((&buf[..], false))
}

/// Compare `old` and `new` block by block. The result covers `new`'s size: blocks past the
/// old end are changed unless they are all zero, a block across the old end compares the old
/// bytes and zeros after them.
pub fn diff(
    old: &dyn DiskImage,
    new: &dyn DiskImage,
    opts: &ScanOptions<'_>,
) -> Result<DiffReport> {
    opts.check()?;
    let g = opts.granularity;
    let size = new.size();
    let mut map = ChangeMap::new(size, g)?;
    let read = AtomicU64::new(0);
    opts.prepare(old);
    opts.prepare(new);
    let window = opts.window();
    let mut start = 0;
    while start < size {
        let end = (start + window).min(size);
        // Ranges that read as zero on both sides are equal: only data on either side is read.
        let work = tasks(
            &[data_ranges(old, start, end)?, data_ranges(new, start, end)?],
            start,
            end,
            g,
        );
        let changed: Vec<Vec<u64>> = work
            .par_iter()
            .map_init(
                || (Vec::new(), Vec::new()),
                |(a, b), &(s, e)| -> Result<Vec<u64>> {
                    let len = e - s;
                    let old_has = old.size() > s;
                    let (nb, n_mapped) = bytes_at(new, s, len, a, opts)?;
                    let (ob, o_mapped) = if old_has {
                        let (o, m) = bytes_at(old, s, len, b, opts)?;
                        (Some(o), m)
                    } else {
                        (None, false)
                    };
                    let mapped_sides = u64::from(n_mapped) + u64::from(o_mapped);
                    read.fetch_add(len * (1 + u64::from(old_has)), Ordering::Relaxed);
                    let mut out = Vec::new();
                    let mut off = 0usize;
                    while off < len as usize {
                        let stop = (off + g as usize).min(len as usize);
                        // Pages are read as they are compared: pace block by block.
                        if mapped_sides > 0 {
                            opts.take((stop - off) as u64 * mapped_sides);
                        }
                        let differs = match ob {
                            Some(ob) => nb[off..stop] != ob[off..stop],
                            None => !is_zero(&nb[off..stop]),
                        };
                        if differs {
                            out.push((s + off as u64) / g);
                        }
                        off = stop;
                    }
                    Ok(out)
                },
            )
            .collect::<Result<_>>()?;
        for b in changed.into_iter().flatten() {
            map.set(b);
        }
        old.release(start, end - start);
        new.release(start, end - start);
        opts.tick(end - start);
        start = end;
    }
    Ok(DiffReport {
        map,
        bytes_read: read.into_inner(),
    })
}

/// Per-block digests of one window: the hash of the block's first `cut(block)` bytes (all of
/// it when `None`) and whether the bytes after the cut are zero.
fn digest_window(
    img: &dyn DiskImage,
    start: u64,
    end: u64,
    opts: &ScanOptions<'_>,
    read: &AtomicU64,
    cut: &(dyn Fn(u64) -> Option<u64> + Sync),
    zero_hash: &(dyn Fn(u64) -> u128 + Sync),
) -> Result<Vec<(u128, bool)>> {
    let g = opts.granularity;
    let first = start / g;
    let blocks = (end - start).div_ceil(g);
    let size = img.size();
    let block_len = |b: u64| g.min(size - b * g);
    // Blocks that read as zero get the hash of zeros without reading anything.
    let mut out: Vec<(u128, bool)> = (first..first + blocks)
        .map(|b| (zero_hash(cut(b).unwrap_or(block_len(b))), true))
        .collect();
    let work = tasks(&[data_ranges(img, start, end)?], start, end, g);
    let parts: Vec<(u64, Vec<(u128, bool)>)> = work
        .par_iter()
        .map_init(
            Vec::new,
            |buf, &(s, e)| -> Result<(u64, Vec<(u128, bool)>)> {
                let len = e - s;
                // Paced once: bytes_at paces what it reads into the buffer, and mapped bytes
                // are paced block by block below as they are touched.
                let (data, mapped) = bytes_at(img, s, len, buf, opts)?;
                read.fetch_add(len, Ordering::Relaxed);
                let mut v = Vec::with_capacity(len.div_ceil(g) as usize);
                let mut off = 0usize;
                while off < len as usize {
                    let stop = (off + g as usize).min(len as usize);
                    if mapped {
                        // Pages are read as they are hashed: pace block by block.
                        opts.take((stop - off) as u64);
                    }
                    let block = &data[off..stop];
                    let b = (s + off as u64) / g;
                    v.push(match cut(b) {
                        Some(c) if (c as usize) < block.len() => (
                            block_hash(&block[..c as usize]),
                            is_zero(&block[c as usize..]),
                        ),
                        _ => (block_hash(block), true),
                    });
                    off = stop;
                }
                Ok((s / g, v))
            },
        )
        .collect::<Result<_>>()?;
    for (b, v) in parts {
        let at = (b - first) as usize;
        out[at..at + v.len()].copy_from_slice(&v);
    }
    img.release(start, end - start);
    Ok(out)
}

/// Cache of the hashes of all-zero blocks, by length (a scan meets at most a few lengths).
fn zero_hashes(g: u64, size: u64) -> impl Fn(u64) -> u128 + Sync {
    let mut known = HashMap::new();
    for len in [g, size % g] {
        known.insert(len, block_hash(&vec![0u8; len as usize]));
    }
    move |len| match known.get(&len) {
        Some(h) => *h,
        None => block_hash(&vec![0u8; len as usize]),
    }
}

/// Hash every block of `img` into a manifest written to `out`. Returns the bytes read.
pub fn hash_image<W: Write>(
    img: &dyn DiskImage,
    out: W,
    opts: &ScanOptions<'_>,
) -> Result<(W, u64)> {
    opts.check()?;
    let g = opts.granularity;
    let size = img.size();
    let mut writer = ManifestWriter::new(out, size, g)?;
    let zero = zero_hashes(g, size);
    opts.prepare(img);
    let read = AtomicU64::new(0);
    let mut start = 0;
    while start < size {
        let end = (start + opts.window()).min(size);
        let digests = digest_window(img, start, end, opts, &read, &|_| None, &zero)?;
        let hashes: Vec<u128> = digests.into_iter().map(|d| d.0).collect();
        writer.push(&hashes)?;
        opts.tick(end - start);
        start = end;
    }
    Ok((writer.finish()?, read.into_inner()))
}

/// Find the blocks of `new` that differ from the disk `manifest` was made of, reading only
/// `new`. The result is at the manifest's granularity and covers `new`'s size.
///
/// A block across the old end is unchanged when its old bytes hash the same and the rest is
/// zero; a block past the old end is changed unless zero; the last block of a disk that
/// shrank inside a block counts as changed (the manifest cannot tell).
pub fn diff_manifest(
    manifest: &Manifest<'_>,
    new: &dyn DiskImage,
    opts: &ScanOptions<'_>,
) -> Result<DiffReport> {
    diff_manifest_each(manifest, new, opts, &mut |_| Ok(()))
}

/// [`diff_manifest`], handing the changed blocks of each window (ascending block indices at
/// the manifest's granularity) to `on_window` as soon as the window is done, so that a
/// consumer (a link writer in another thread) can work while the scan goes on. An error
/// from `on_window` stops the scan.
pub fn diff_manifest_each(
    manifest: &Manifest<'_>,
    new: &dyn DiskImage,
    opts: &ScanOptions<'_>,
    on_window: &mut dyn FnMut(Vec<u64>) -> Result<()>,
) -> Result<DiffReport> {
    let g = manifest.granularity();
    let opts = ScanOptions {
        granularity: g,
        ..*opts
    };
    let size = new.size();
    let old_size = manifest.size();
    let mut map = ChangeMap::new(size, g)?;
    opts.prepare(new);
    let zero = zero_hashes(g, size);
    let old_len = |b: u64| old_size.saturating_sub(b * g).min(g);
    let new_len = |b: u64| size.saturating_sub(b * g).min(g);
    // Hash only the old part of a block that grew past the old end.
    let cut = |b: u64| {
        let o = old_len(b);
        (o > 0 && o < new_len(b)).then_some(o)
    };
    let read = AtomicU64::new(0);
    let mut start = 0;
    while start < size {
        let end = (start + opts.window()).min(size);
        let digests = digest_window(new, start, end, &opts, &read, &cut, &zero)?;
        let mut found = Vec::new();
        for (i, (h, rest_zero)) in digests.into_iter().enumerate() {
            let b = start / g + i as u64;
            let (o, n) = (old_len(b), new_len(b));
            let changed = if o == 0 {
                h != zero(n)
            } else if o > n {
                true
            } else {
                Some(h) != manifest.hash(b) || !rest_zero
            };
            if changed {
                map.set(b);
                found.push(b);
            }
        }
        on_window(found)?;
        opts.tick(end - start);
        start = end;
    }
    Ok(DiffReport {
        map,
        bytes_read: read.into_inner(),
    })
}
