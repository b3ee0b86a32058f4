//! The scan engine behind `diff`, `hash` and `diff MANIFEST NEW`.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;
use vdisk_bitmap::ChangeMap;
use vdisk_core::{
    is_zero, Advice, Allocation, DiskImage, Granularity, Progress, ReadOnce, Result, Throttle,
};

use crate::block_hash;
use crate::manifest::{Manifest, ManifestBytes, ManifestWriter, WindowHashes};

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
    /// Told of bytes read (both sides of a diff) and of stretches passed over without a
    /// read, from the scanning thread.
    pub progress: Option<&'a dyn Progress>,
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

    pub(crate) fn check(&self) -> Result<()> {
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
    pub(crate) fn prepare(&self, img: &dyn DiskImage) {
        if self.paced() {
            img.advise(0, img.size(), Advice::Paced);
        }
    }

    fn take(&self, bytes: u64) {
        if let Some(t) = self.throttle {
            t.take(bytes);
        }
    }

    /// A stretch of `bytes` passed over without a read.
    fn skipped(&self, bytes: u64) {
        if let Some(p) = self.progress {
            p.skipped(bytes);
        }
    }

    /// A window of `span` bytes scanned, `read` counting its bytes read so far and `before`
    /// its value when the window began.
    pub(crate) fn scanned(&self, span: u64, read: &AtomicU64, before: u64) {
        if let Some(p) = self.progress {
            let r = read.load(Ordering::Relaxed).saturating_sub(before);
            p.read(r);
            p.skipped(span.saturating_sub(r));
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
pub(crate) fn tasks(lists: &[Vec<(u64, u64)>], start: u64, end: u64, g: u64) -> Vec<(u64, u64)> {
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
pub(crate) fn bytes_at<'a>(
    img: &'a dyn DiskImage,
    off: u64,
    len: u64,
    buf: &'a mut Vec<u8>,
    opts: &ScanOptions<'_>,
) -> Result<(&'a [u8], bool)> {
    let size = img.size();
    if off + len <= size && !opts.paced() {
        if let Some(s) = img.mapped(off, len) {
            img.advise(off, len, Advice::Populate);
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
///
/// ```
/// use vdisk_core::{Granularity, MemImage};
/// use vdisk_diff::{diff, ScanOptions};
///
/// let old = vec![7u8; 1 << 20];
/// let mut new = old.clone();
/// new[70_000] = 8; // block 1 of 64 KiB
/// new[(1 << 20) - 1] = 9; // the last block
/// let report = diff(
///     &MemImage::new(old),
///     &MemImage::new(new),
///     &ScanOptions::new(Granularity::DEFAULT),
/// )?;
/// assert_eq!(report.map.count(), 2);
/// assert_eq!(
///     report.map.extents().collect::<Vec<_>>(),
///     [(64 << 10, 64 << 10), (15 << 16, 64 << 10)]
/// );
/// // Finer blocks, finer answer.
/// let fine = diff(
///     &MemImage::new(vec![7u8; 1 << 20]),
///     &MemImage::new({ let mut n = vec![7u8; 1 << 20]; n[70_000] = 8; n }),
///     &ScanOptions::new("4K".parse()?),
/// )?;
/// assert_eq!(fine.map.extents().collect::<Vec<_>>(), [(68 << 10, 4 << 10)]);
/// # Ok::<(), vdisk_core::Error>(())
/// ```
pub fn diff<'a>(
    old: &'a dyn DiskImage,
    new: &'a dyn DiskImage,
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
        // Stretches where neither side holds data are equal: passed over in one step.
        let next = match (old.next_data(start)?, new.next_data(start)?) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => size,
        };
        if next >= start + window {
            let to = (next / window * window).min(size);
            opts.skipped(to - start);
            start = to;
            continue;
        }
        let end = (start + window).min(size);
        let before = read.load(Ordering::Relaxed);
        // Ranges that read as zero on both sides are equal: only data on either side is read.
        let work = tasks(
            &[data_ranges(old, start, end)?, data_ranges(new, start, end)?],
            start,
            end,
            g,
        );
        // The two files' residency is noted side by side (a look at a warm GiB takes
        // milliseconds).
        // Dropped at the end of the window: what the reads brought into the cache leaves.
        let once = |img: &'a dyn DiskImage| -> Vec<ReadOnce<'a>> {
            work.iter()
                .map(|&(s, e)| ReadOnce::new(img, s, e - s))
                .collect()
        };
        let read_once = rayon::join(|| once(old), || once(new));
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
                    // Unmapped here, by each worker, rather than a window at a time on one
                    // thread while the others wait (tearing down page tables is a tenth of a
                    // warm diff's work).
                    new.advise(s, len, Advice::Release);
                    if old_has {
                        old.advise(s, len, Advice::Release);
                    }
                    Ok(out)
                },
            )
            .collect::<Result<_>>()?;
        for b in changed.into_iter().flatten() {
            map.set(b);
        }
        drop(read_once);
        opts.scanned(end - start, &read, before);
        start = end;
    }
    Ok(DiffReport {
        map,
        bytes_read: read.into_inner(),
    })
}

/// The digest of one block that holds data: its hash, and for a block that crosses the old
/// end of a grown disk, the hash of its old part and whether the rest is zero.
#[derive(Debug, Clone, Copy)]
struct BlockDigest {
    block: u64,
    hash: u128,
    cut: Option<(u128, bool)>,
}

/// Digests of the blocks of `[start, end)` that hold data on `img` (ascending): blocks not
/// listed read as zero and are not read at all.
fn digest_window(
    img: &dyn DiskImage,
    start: u64,
    end: u64,
    opts: &ScanOptions<'_>,
    read: &AtomicU64,
    cut: &(dyn Fn(u64) -> Option<u64> + Sync),
) -> Result<Vec<BlockDigest>> {
    let g = opts.granularity;
    let work = tasks(&[data_ranges(img, start, end)?], start, end, g);
    // Dropped at the end: what the reads brought into the cache leaves.
    let read_once: Vec<ReadOnce<'_>> = work
        .iter()
        .map(|&(s, e)| ReadOnce::new(img, s, e - s))
        .collect();
    let parts: Vec<Vec<BlockDigest>> = work
        .par_iter()
        .map_init(Vec::new, |buf, &(s, e)| -> Result<Vec<BlockDigest>> {
            let len = e - s;
            // Paced once: bytes_at paces what it reads into the buffer, and mapped bytes are
            // paced block by block below as they are touched.
            let (data, mapped) = bytes_at(img, s, len, buf, opts)?;
            read.fetch_add(len, Ordering::Relaxed);
            let mut v = Vec::with_capacity(len.div_ceil(g) as usize);
            let mut off = 0usize;
            while off < len as usize {
                let stop = (off + g as usize).min(len as usize);
                if mapped {
                    opts.take((stop - off) as u64);
                }
                let block = &data[off..stop];
                let b = (s + off as u64) / g;
                let hash = block_hash(block);
                let cut = cut(b).filter(|&c| (c as usize) < block.len()).map(|c| {
                    (
                        block_hash(&block[..c as usize]),
                        is_zero(&block[c as usize..]),
                    )
                });
                v.push(BlockDigest {
                    block: b,
                    hash,
                    cut,
                });
                off = stop;
            }
            // Unmapped by each worker, as in `diff`.
            img.advise(s, len, Advice::Release);
            Ok(v)
        })
        .collect::<Result<_>>()?;
    drop(read_once);
    Ok(parts.into_iter().flatten().collect())
}

/// Hash every block of `img` into a manifest written to `out`. Returns the bytes read.
///
/// Ranges the image's map says read as zero are not read, and cost nothing in the manifest.
///
/// A manifest made now lets a later diff read only the new disk:
///
/// ```
/// use vdisk_core::{Granularity, MemImage};
/// use vdisk_diff::{block_hash, diff_manifest, hash_image, Manifest, ScanOptions};
///
/// let opts = ScanOptions::new(Granularity::DEFAULT);
/// let old: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
/// let (bytes, read) = hash_image(&MemImage::new(old.clone()), Vec::new(), &opts)?;
/// assert_eq!(read, 1 << 20);
///
/// // The manifest is checked when decoded, and has a hash for every block.
/// let manifest = Manifest::decode(bytes.as_slice())?;
/// assert_eq!((manifest.size(), manifest.granularity()), (1 << 20, 64 << 10));
/// assert_eq!(manifest.block_count(), 16);
/// assert_eq!(manifest.hash(2)?, Some(block_hash(&old[2 << 16..3 << 16])));
///
/// // Later: the disk changed in block 5, and grew by half a block.
/// let mut new = old.clone();
/// new[(5 << 16) + 17] ^= 0xff;
/// new.extend(std::iter::repeat(3u8).take(32 << 10));
/// let report = diff_manifest(&manifest, &MemImage::new(new), &opts)?;
/// assert_eq!(
///     report.map.extents().collect::<Vec<_>>(),
///     [(5 << 16, 64 << 10), (16 << 16, 32 << 10)]
/// );
///
/// // A damaged manifest is an error, never a wrong answer.
/// let mut damaged = bytes.clone();
/// damaged[100] ^= 1;
/// assert!(Manifest::decode(damaged.as_slice()).is_err());
/// # Ok::<(), vdisk_core::Error>(())
/// ```
pub fn hash_image<W: Write>(
    img: &dyn DiskImage,
    out: W,
    opts: &ScanOptions<'_>,
) -> Result<(W, u64)> {
    opts.check()?;
    let g = opts.granularity;
    let size = img.size();
    let mut writer = ManifestWriter::new(out, size, g)?;
    opts.prepare(img);
    let read = AtomicU64::new(0);
    let window = opts.window();
    let mut start = 0;
    while start < size {
        // Empty stretches cost nothing in the manifest: passed over in one step.
        let next = img.next_data(start)?.unwrap_or(size);
        if next >= start + window {
            let to = (next / window * window).min(size);
            opts.skipped(to - start);
            start = to;
            continue;
        }
        let end = (start + window).min(size);
        let before = read.load(Ordering::Relaxed);
        for d in digest_window(img, start, end, opts, &read, &|_| None)? {
            writer.push(d.block, d.hash)?;
        }
        opts.scanned(end - start, &read, before);
        start = end;
    }
    Ok((writer.finish()?, read.into_inner()))
}

/// What a manifest scan found in one window: the blocks that changed, and the new disk's
/// hash of every block in the window that is not all zero (ascending). Blocks of the window
/// not in `hashes` are all zero on the new disk.
#[derive(Debug, Clone, Default)]
pub struct ScanWindow {
    /// Changed blocks, ascending.
    pub changed: Vec<u64>,
    /// `(block, hash)` of the new disk's non-zero blocks in the window, ascending.
    pub hashes: Vec<(u64, u128)>,
}

/// Find the blocks of `new` that differ from the disk `manifest` was made of, reading only
/// `new`. The result is at the manifest's granularity and covers `new`'s size.
///
/// A block across the old end is unchanged when its old bytes hash the same and the rest is
/// zero; a block past the old end is changed unless zero; the last block of a disk that
/// shrank inside a block counts as changed (the manifest cannot tell).
pub fn diff_manifest<B: ManifestBytes>(
    manifest: &Manifest<B>,
    new: &dyn DiskImage,
    opts: &ScanOptions<'_>,
) -> Result<DiffReport> {
    diff_manifest_each(manifest, new, opts, &mut |_| Ok(()))
}

/// [`diff_manifest`], handing each window's findings ([`ScanWindow`]: its changed blocks and
/// the new disk's hashes) to `on_window` as soon as the window is done, so that a consumer (a
/// link writer in another thread, a new manifest) can work while the scan goes on. An error
/// from `on_window` stops the scan.
///
/// Work follows the data: a window where neither the manifest nor the new disk holds any
/// data is passed over without reading or hashing anything.
pub fn diff_manifest_each<B: ManifestBytes>(
    manifest: &Manifest<B>,
    new: &dyn DiskImage,
    opts: &ScanOptions<'_>,
    on_window: &mut dyn FnMut(ScanWindow) -> Result<()>,
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
    let old_len = |b: u64| old_size.saturating_sub(b * g).min(g);
    let new_len = |b: u64| size.saturating_sub(b * g).min(g);
    // Hash only the old part of a block that grew past the old end.
    let cut = |b: u64| {
        let o = old_len(b);
        (o > 0 && o < new_len(b)).then_some(o)
    };
    let zero_new = {
        let full = block_hash(&vec![0u8; g as usize]);
        move |len: u64| {
            if len == g {
                full
            } else {
                block_hash(&vec![0u8; len as usize])
            }
        }
    };
    let wb = manifest.window_blocks();
    // The scan's windows are the manifest's: 64 MiB of disk each.
    let window = wb * g;
    let old_blocks = manifest.block_count();
    let read = AtomicU64::new(0);
    // Blocks the old disk's end makes special (the one across the old end, the last one of a
    // disk that shrank inside a block): their windows are never passed over.
    let specials = [old_size / g * g, (size.div_ceil(g).saturating_sub(1)) * g];
    let mut start = 0;
    while start < size {
        // Stretches where neither the new disk nor the manifest holds data, and no special
        // block lies, are unchanged: passed over in one step.
        let new_next = new.next_data(start)?.unwrap_or(size);
        let old_next = if start / g < old_blocks {
            manifest
                .next_data_window(start / window)
                .map_or(size, |w| w * window)
        } else {
            size
        };
        let special_next = specials
            .iter()
            .copied()
            .filter(|&s| s >= start)
            .min()
            .unwrap_or(size);
        let next = new_next.min(old_next).min(special_next);
        if next >= start + window {
            let to = (next / window * window).min(size);
            opts.skipped(to - start);
            start = to;
            continue;
        }
        let end = (start + window).min(size);
        let before = read.load(Ordering::Relaxed);
        let w = start / window;
        let first = start / g;
        let last = end.div_ceil(g);
        let new_has_data = new
            .allocation(start, end - start)?
            .iter()
            .any(|e| e.allocation == Allocation::Data);
        // Blocks the old disk's end makes special: the one across the old end, and the last
        // one of a disk that shrank inside a block.
        let special: Vec<u64> = [old_size / g, size.div_ceil(g).saturating_sub(1)]
            .into_iter()
            .filter(|&b| {
                (first..last).contains(&b) && (cut(b).is_some() || old_len(b) > new_len(b))
            })
            .collect();
        if !new_has_data
            && special.is_empty()
            && (first >= old_blocks || manifest.window_is_zero(w))
        {
            on_window(ScanWindow::default())?;
            opts.scanned(end - start, &read, before);
            start = end;
            continue;
        }
        let digests = digest_window(new, start, end, &opts, &read, &cut)?;
        let old = if first < old_blocks {
            manifest.window(w)?
        } else {
            WindowHashes {
                first_block: first,
                blocks: 0,
                stored: Vec::new(),
            }
        };
        // Candidates: blocks with data on either side, and the special ones; every other
        // block is zero on both sides.
        let mut candidates: Vec<u64> = digests
            .iter()
            .map(|d| d.block)
            .chain(old.stored.iter().map(|e| old.first_block + e.0))
            .chain(special)
            .filter(|b| (first..last).contains(b))
            .collect();
        candidates.sort_unstable();
        candidates.dedup();
        let mut found = Vec::new();
        let mut hashes = Vec::with_capacity(digests.len());
        let mut di = 0;
        for b in candidates {
            while di < digests.len() && digests[di].block < b {
                di += 1;
            }
            let digest = digests.get(di).filter(|d| d.block == b);
            let (o, n) = (old_len(b), new_len(b));
            let old_hash = || -> u128 {
                let i = b - old.first_block;
                match old.stored.binary_search_by_key(&i, |e| e.0) {
                    Ok(k) => old.stored[k].1,
                    Err(_) => manifest.zero_hash(o),
                }
            };
            let changed = if o == 0 {
                // Past the old end: changed unless zero.
                digest.is_some_and(|d| d.hash != zero_new(n))
            } else if o > n {
                true
            } else if let Some(c) = cut(b) {
                match digest.and_then(|d| d.cut) {
                    Some((h, rest_zero)) => h != old_hash() || !rest_zero,
                    None => zero_new(c) != old_hash(),
                }
            } else {
                digest.map_or(zero_new(n), |d| d.hash) != old_hash()
            };
            if let Some(d) = digest {
                hashes.push((b, d.hash));
            }
            if changed {
                map.set(b);
                found.push(b);
            }
        }
        on_window(ScanWindow {
            changed: found,
            hashes,
        })?;
        opts.scanned(end - start, &read, before);
        start = end;
    }
    Ok(DiffReport {
        map,
        bytes_read: read.into_inner(),
    })
}
