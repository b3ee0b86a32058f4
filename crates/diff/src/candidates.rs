//! Diffs where the hypervisor already said which blocks may have changed (a QEMU dirty
//! bitmap, a bitmap file): only those blocks are read and compared, and only those can be
//! reported.

use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;
use vdisk_bitmap::ChangeMap;
use vdisk_core::{is_zero, DiskImage, Result};

use crate::block_hash;
use crate::manifest::{Manifest, ManifestBytes};
use crate::scan::{bytes_at, tasks, DiffReport, ScanOptions};

/// Candidate bytes gathered before a batch of tasks is read in parallel.
const BATCH_BYTES: u64 = 64 << 20;

/// Walk the candidate ranges of `map` (rounded out to `g`, clipped to `size`) in batches of
/// tasks; `each` reads one batch and returns its changed blocks.
fn in_batches(
    candidates: &ChangeMap,
    size: u64,
    g: u64,
    opts: &ScanOptions<'_>,
    read: &AtomicU64,
    mut each: impl FnMut(&[(u64, u64)]) -> Result<Vec<u64>>,
) -> Result<ChangeMap> {
    let mut map = ChangeMap::new(size, g)?;
    let mut pending: Vec<(u64, u64)> = Vec::new();
    let mut bytes = 0u64;
    let mut flush = |pending: &mut Vec<(u64, u64)>, map: &mut ChangeMap| -> Result<()> {
        let work = tasks(&[std::mem::take(pending)], 0, size, g);
        let before = read.load(Ordering::Relaxed);
        for b in each(&work)? {
            map.set(b);
        }
        opts.scanned(work.iter().map(|(s, e)| e - s).sum(), read, before);
        Ok(())
    };
    for (s, l) in candidates.extents() {
        let e = s.saturating_add(l).min(size);
        if s >= e {
            continue;
        }
        pending.push((s, e));
        bytes += e - s;
        if bytes >= BATCH_BYTES {
            flush(&mut pending, &mut map)?;
            bytes = 0;
        }
    }
    flush(&mut pending, &mut map)?;
    Ok(map)
}

/// Compare `old` and `new` only where `candidates` (over `new`'s size, at any granularity)
/// says they may differ; every other block is taken as unchanged, unread. The result is at
/// `opts.granularity`, over `new`'s size, with the same rules at the ends as [`crate::diff`].
///
/// ```
/// use vdisk_bitmap::ChangeMap;
/// use vdisk_core::{Granularity, MemImage};
/// use vdisk_diff::{diff_changed, ScanOptions};
///
/// let old = vec![1u8; 1 << 20];
/// let mut new = old.clone();
/// new[5] = 2; // block 0: changed, but not a candidate, so not seen
/// new[(3 << 16) + 9] = 3; // block 3: a candidate that changed
/// let mut dirty = ChangeMap::new(1 << 20, 64 << 10)?;
/// dirty.set(3);
/// dirty.set(7); // a candidate that did not change
/// let r = diff_changed(
///     &MemImage::new(old),
///     &MemImage::new(new),
///     &dirty,
///     &ScanOptions::new(Granularity::DEFAULT),
/// )?;
/// assert_eq!(r.map.extents().collect::<Vec<_>>(), [(3 << 16, 64 << 10)]);
/// assert_eq!(r.bytes_read, 4 * (64 << 10));
/// # Ok::<(), vdisk_core::Error>(())
/// ```
pub fn diff_changed(
    old: &dyn DiskImage,
    new: &dyn DiskImage,
    candidates: &ChangeMap,
    opts: &ScanOptions<'_>,
) -> Result<DiffReport> {
    opts.check()?;
    let g = opts.granularity;
    let size = new.size();
    let read = AtomicU64::new(0);
    opts.prepare(old);
    opts.prepare(new);
    let map = in_batches(candidates, size, g, opts, &read, |work| {
        let changed: Vec<Vec<u64>> = work
            .par_iter()
            .map_init(
                || (Vec::new(), Vec::new()),
                |(a, b), &(s, e)| -> Result<Vec<u64>> {
                    let len = e - s;
                    let old_has = old.size() > s;
                    let (nb, _) = bytes_at(new, s, len, a, opts)?;
                    let ob = if old_has {
                        Some(bytes_at(old, s, len, b, opts)?.0)
                    } else {
                        None
                    };
                    read.fetch_add(len * (1 + u64::from(old_has)), Ordering::Relaxed);
                    let mut out = Vec::new();
                    let mut off = 0usize;
                    while off < len as usize {
                        let stop = (off + g as usize).min(len as usize);
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
        Ok(changed.into_iter().flatten().collect())
    })?;
    Ok(DiffReport {
        map,
        bytes_read: read.into_inner(),
    })
}

/// [`diff_changed`] against a hash manifest of the old disk: only `new`'s candidate blocks
/// are read and hashed. A candidate block across either disk's end counts as changed (the
/// manifest cannot tell); one past the old end is changed unless zero.
pub fn diff_manifest_changed<B: ManifestBytes>(
    manifest: &Manifest<B>,
    new: &dyn DiskImage,
    candidates: &ChangeMap,
    opts: &ScanOptions<'_>,
) -> Result<DiffReport> {
    let g = manifest.granularity();
    let opts = ScanOptions {
        granularity: g,
        ..*opts
    };
    let size = new.size();
    let old_size = manifest.size();
    let read = AtomicU64::new(0);
    opts.prepare(new);
    let map = in_batches(candidates, size, g, &opts, &read, |work| {
        let changed: Vec<Vec<u64>> = work
            .par_iter()
            .map_init(Vec::new, |a, &(s, e)| -> Result<Vec<u64>> {
                let len = e - s;
                let (nb, _) = bytes_at(new, s, len, a, &opts)?;
                read.fetch_add(len, Ordering::Relaxed);
                let mut out = Vec::new();
                let mut off = 0usize;
                while off < len as usize {
                    let stop = (off + g as usize).min(len as usize);
                    let b = (s + off as u64) / g;
                    let block = &nb[off..stop];
                    let old_len = old_size.saturating_sub(b * g).min(g);
                    let differs = if old_len == 0 {
                        !is_zero(block)
                    } else if old_len != block.len() as u64 {
                        true
                    } else {
                        manifest.hash(b)? != Some(block_hash(block))
                    };
                    if differs {
                        out.push(b);
                    }
                    off = stop;
                }
                Ok(out)
            })
            .collect::<Result<_>>()?;
        Ok(changed.into_iter().flatten().collect())
    })?;
    Ok(DiffReport {
        map,
        bytes_read: read.into_inner(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vdisk_core::{Granularity, MemImage};

    #[test]
    fn only_candidates_are_read_and_reported_with_the_ends_handled() {
        let g = 64u64 << 10;
        let old: Vec<u8> = (0..(4 * g) as usize).map(|i| (i % 13) as u8).collect();
        let mut new = old.clone();
        new.resize((6 * g) as usize, 0);
        new[(g + 1) as usize] ^= 1; // block 1 changed, a candidate
        new[(2 * g + 1) as usize] ^= 1; // block 2 changed, not a candidate
        new[(5 * g) as usize] = 7; // block 5 (past the old end) non-zero, a candidate
        let mut dirty = ChangeMap::new(6 * g, 4096).unwrap();
        dirty.mark_bytes(g + 100, 10).unwrap();
        dirty.mark_bytes(3 * g, 3 * g).unwrap(); // 3 unchanged, 4 zero past the end, 5
        let opts = ScanOptions::new(Granularity::DEFAULT);
        let (o, n) = (MemImage::new(old.clone()), MemImage::new(new.clone()));
        let r = diff_changed(&o, &n, &dirty, &opts).unwrap();
        assert_eq!(r.map.size(), 6 * g);
        assert_eq!(r.map.extents().collect::<Vec<_>>(), [(g, g), (5 * g, g)]);
        // Block 1, and blocks 3 to 5 (one task starting inside the old disk), counted on
        // both sides as diff counts them.
        assert_eq!(r.bytes_read, 2 * g + 2 * 3 * g);
        // The same against a manifest of the old disk.
        let (bytes, _) = crate::hash_image(&o, Vec::new(), &opts).unwrap();
        let m = Manifest::decode(bytes.as_slice()).unwrap();
        let r = diff_manifest_changed(&m, &n, &dirty, &opts).unwrap();
        assert_eq!(r.map.extents().collect::<Vec<_>>(), [(g, g), (5 * g, g)]);
        assert_eq!(r.bytes_read, 4 * g);
        // No candidates: nothing read, nothing changed.
        let none = ChangeMap::new(6 * g, g).unwrap();
        let r = diff_changed(&o, &n, &none, &opts).unwrap();
        assert!(r.map.is_empty() && r.bytes_read == 0);
    }
}
