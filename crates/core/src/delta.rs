//! Writing deltas, format-neutrally: the blocks of a new disk state that a list of changes
//! names, into a sink that stores them on top of a parent (a VMDK link, a qcow2 overlay, a
//! VHDX differencing disk, a repository's incremental point).

use rayon::prelude::*;

use crate::{is_zero, Advice, DiskImage, ImageSink, ReadOnce, Result};

/// Called with every block a delta writer reads from the new image: (block index, bytes).
pub type BlockHook<'a> = dyn Fn(u64, &[u8]) + Sync + 'a;

/// What writing a delta did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeltaStats {
    /// Blocks stored with data.
    pub data_blocks: u64,
    /// Blocks stored as explicit zeros (zero now, not zero in the parent).
    pub zeroed_blocks: u64,
    /// Bytes read from the new image.
    pub bytes_read: u64,
}

/// Blocks read in parallel before they are handed to the sink.
const BATCH: usize = 256;

/// Changed blocks this close together share one allocation query (a query costs a round
/// trip on an NBD export; a few extra bytes of map cost nothing).
const SPAN_GAP: u64 = 1 << 20;

/// What a delta stores for one changed block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// The block's bytes.
    Data,
    /// Explicit zeros: zero now, not zero in the parent, so the parent must be masked.
    Zeroed,
    /// Nothing: zero now and zero in the parent.
    Skip,
}

/// Where a delta's blocks come from and go.
pub struct DeltaTarget<'a> {
    /// What the delta is written on: reads of blocks it does not store fall through to it.
    pub parent: &'a dyn DiskImage,
    /// The new state the delta (over the parent) must read as.
    pub new: &'a dyn DiskImage,
    /// A sink from a format's `create_delta`: it stores every block it is given, all-zero
    /// ones as explicit zeros. Its block size is the delta's block.
    pub sink: Box<dyn ImageSink + 'a>,
    /// Sees every block read, e.g. to hash it on the way.
    pub on_block: Option<&'a BlockHook<'a>>,
}

/// Write into `target.sink` every block of `target.new` that touches a range of `changed`
/// (`(start, length)` in bytes, sorted; a change map's `extents()` fits), then finish it.
/// Read through the delta, the disk is `new` wherever `changed` covers every difference
/// between `new` and the parent.
///
/// A changed block that is all zero is left out when the parent reads as zero there too,
/// and given as zeros (which mask the parent) otherwise.
pub fn write_delta(
    target: DeltaTarget<'_>,
    changed: impl IntoIterator<Item = (u64, u64)>,
) -> Result<DeltaStats> {
    let block = target.sink.block_size().max(1);
    let size = target.new.size();
    let mut blocks = changed.into_iter().flat_map(move |(start, len)| {
        let first = start / block;
        let end = start.saturating_add(len).min(size).div_ceil(block);
        first..end.max(first)
    });
    let groups = std::iter::from_fn(move || {
        let group: Vec<u64> = blocks.by_ref().take(BATCH).collect();
        (!group.is_empty()).then_some(Ok(group))
    });
    write_delta_from(target, groups)
}

/// [`write_delta`] fed with block indices as they are found, in groups (for example one group
/// per window of a scan still running in another thread). Blocks come in ascending order
/// across groups; repeats are skipped. Each group is written before the next is waited for,
/// so writing overlaps with whatever produces the groups. An `Err` from `groups` stops the
/// writer: the sink is dropped unfinished (its files are removed) and the error returned.
///
/// The new image's allocation map is asked first for each batch: a changed block it says
/// reads as zero (a hole, a zeroed range: QEMU marks discarded blocks dirty) is taken as
/// zeros without being read, and `on_block` sees it as zeros.
pub fn write_delta_from(
    target: DeltaTarget<'_>,
    groups: impl IntoIterator<Item = Result<Vec<u64>>>,
) -> Result<DeltaStats> {
    let DeltaTarget {
        parent,
        new,
        mut sink,
        on_block,
    } = target;
    let size = new.size();
    let bs = sink.block_size().max(1);
    let block_count = size.div_ceil(bs);
    let zeros = vec![0u8; bs as usize];
    let mut stats = DeltaStats::default();
    let mut batch: Vec<u64> = Vec::with_capacity(BATCH);
    // Buffers for sources that cannot lend their bytes (kept across batches); a mapped source
    // (a raw disk) hands out slices of its map instead, with no copy.
    let mut bufs: Vec<Vec<u8>> = Vec::new();
    let mut last: Option<u64> = None;
    let range = |b: u64| {
        let off = b * bs;
        (off, bs.min(size - off))
    };
    let mut flush = |batch: &mut Vec<u64>,
                     sink: &mut Box<dyn ImageSink + '_>,
                     stats: &mut DeltaStats|
     -> Result<()> {
        if bufs.len() < batch.len() {
            bufs.resize_with(batch.len(), Vec::new);
        }
        // Blocks the new image's map says read as zero are not read.
        let known_zero = known_zero(new, batch, range)?;
        // Per block: where its bytes are, what the delta stores for it, and whether it was
        // read.
        type Planned<'r> = (Option<&'r [u8]>, Plan, Option<ReadOnce<'r>>);
        let plans: Vec<Planned<'_>> = batch
            .par_iter()
            .zip(bufs.par_iter_mut())
            .zip(known_zero.par_iter())
            .map(|((&b, buf), &zero)| {
                let (off, len) = range(b);
                if zero {
                    if let Some(f) = on_block {
                        f(b, &zeros[..len as usize]);
                    }
                    let plan = if reads_zero(parent, off, len)? {
                        Plan::Skip
                    } else {
                        Plan::Zeroed
                    };
                    return Ok((None, plan, None));
                }
                let once = ReadOnce::new(new, off, len);
                let lent = new.mapped(off, len);
                let data = match lent {
                    Some(d) => d,
                    None => {
                        buf.resize(len as usize, 0);
                        new.read_at(buf, off)?;
                        &buf[..]
                    }
                };
                if let Some(f) = on_block {
                    f(b, data);
                }
                let plan = if !is_zero(data) {
                    Plan::Data
                } else if reads_zero(parent, off, len)? {
                    Plan::Skip
                } else {
                    Plan::Zeroed
                };
                Ok((lent, plan, Some(once)))
            })
            .collect::<Result<_>>()?;
        let mut put: Vec<(u64, &[u8])> = Vec::with_capacity(batch.len());
        for ((&b, buf), (lent, plan, once)) in batch.iter().zip(&bufs).zip(&plans) {
            let (off, len) = range(b);
            if once.is_some() {
                stats.bytes_read += len;
            }
            match plan {
                Plan::Data => {
                    put.push((off, lent.unwrap_or(buf)));
                    stats.data_blocks += 1;
                }
                Plan::Zeroed => {
                    put.push((off, &zeros[..len as usize]));
                    stats.zeroed_blocks += 1;
                }
                Plan::Skip => {}
            }
        }
        if !put.is_empty() {
            sink.put(&put)?;
        }
        // Read once and written: unmap what the source's map lent (a page fault can map a
        // whole 2 MiB folio); dropping the plans drops behind the reader what the reads
        // brought into the cache.
        for &b in batch.iter() {
            let (off, len) = range(b);
            new.advise(off, len, Advice::Release);
        }
        drop(plans);
        batch.clear();
        Ok(())
    };
    for group in groups {
        for b in group? {
            // Ranges may share a block, and blocks past the end are not the disk's.
            if last.is_some_and(|l| b <= l) || b >= block_count {
                continue;
            }
            last = Some(b);
            batch.push(b);
            if batch.len() == BATCH {
                flush(&mut batch, &mut sink, &mut stats)?;
            }
        }
        // Write what this group brought before waiting for the next one.
        flush(&mut batch, &mut sink, &mut stats)?;
    }
    sink.finish()?;
    Ok(stats)
}

/// For each of `blocks` (ascending), whether `img`'s allocation map says it reads as zero:
/// one map query per span of nearby blocks.
fn known_zero(
    img: &dyn DiskImage,
    blocks: &[u64],
    range: impl Fn(u64) -> (u64, u64),
) -> Result<Vec<bool>> {
    let mut out = vec![false; blocks.len()];
    let mut i = 0;
    while i < blocks.len() {
        let (start, len) = range(blocks[i]);
        let mut end = start + len;
        let mut j = i + 1;
        while j < blocks.len() {
            let (s, l) = range(blocks[j]);
            if s > end + SPAN_GAP {
                break;
            }
            end = s + l;
            j += 1;
        }
        let map = img.allocation(start, end - start)?;
        let mut k = 0;
        for (z, &b) in out[i..j].iter_mut().zip(&blocks[i..j]) {
            let (s, l) = range(b);
            while k < map.len() && map[k].end() <= s {
                k += 1;
            }
            // Every byte covered by extents that read as zero (a gap in the map is not).
            let mut at = s;
            let mut m = k;
            while at < s + l && m < map.len() && map[m].start <= at && map[m].reads_as_zero() {
                at = map[m].end();
                m += 1;
            }
            *z = at >= s + l;
        }
        i = j;
    }
    Ok(out)
}

/// Whether `img` reads as zero over `len` bytes at `off` without storing data there (past
/// its end counts as zero).
pub fn reads_zero(img: &dyn DiskImage, off: u64, len: u64) -> Result<bool> {
    let size = img.size();
    if off >= size {
        return Ok(true);
    }
    let len = len.min(size - off);
    Ok(img.allocation(off, len)?.iter().all(|e| e.reads_as_zero()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemImage;
    use std::sync::{Arc, Mutex};

    /// Records what it is given.
    struct Record(Arc<Mutex<Vec<(u64, bool)>>>);

    impl ImageSink for Record {
        fn block_size(&self) -> u64 {
            4096
        }
        fn put(&mut self, blocks: &[(u64, &[u8])]) -> Result<()> {
            let mut r = self.0.lock().unwrap();
            r.extend(blocks.iter().map(|(o, b)| (*o, is_zero(b))));
            Ok(())
        }
        fn finish(self: Box<Self>) -> Result<()> {
            Ok(())
        }
    }

    #[test]
    fn changed_blocks_are_stored_zeros_mask_the_parent_only_where_it_has_data() {
        let mut old = vec![0u8; 5 * 4096];
        old[4096..8192].fill(1); // block 1 holds data in the parent
        let mut new = old.clone();
        new[4096..8192].fill(0); // zeroed: must mask the parent
        new[3 * 4096] = 7; // block 3: data
                           // block 4 is zero in both: skipped even though "changed"
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stats = write_delta(
            DeltaTarget {
                parent: &MemImage::new(old),
                new: &MemImage::new(new),
                sink: Box::new(Record(Arc::clone(&seen))),
                on_block: None,
            },
            [(4096, 4096), (3 * 4096, 2 * 4096), (3 * 4096 + 5, 1)],
        )
        .unwrap();
        assert_eq!(*seen.lock().unwrap(), [(4096, true), (3 * 4096, false)]);
        assert_eq!((stats.data_blocks, stats.zeroed_blocks), (1, 1));
        // Blocks 1 and 4 read as zero by the new image's map: only block 3 is read.
        assert_eq!(stats.bytes_read, 4096);
    }

    /// A disk whose map says `[zero_start, zero_end)` reads as zero, and whose reads there
    /// fail (as a hostile or broken source might): the delta writer must not read there.
    struct ZeroByMap {
        inner: MemImage,
        zero: (u64, u64),
        reads: Mutex<Vec<(u64, usize)>>,
    }

    impl DiskImage for ZeroByMap {
        fn size(&self) -> u64 {
            self.inner.size()
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
            self.reads.lock().unwrap().push((offset, buf.len()));
            if offset < self.zero.1 && offset + buf.len() as u64 > self.zero.0 {
                return Err(crate::Error::corrupt("read a range the map says is zero"));
            }
            self.inner.read_at(buf, offset)
        }
        fn allocation(&self, offset: u64, length: u64) -> Result<Vec<crate::Extent>> {
            let end = offset + length;
            let mut map = Vec::new();
            let (zs, ze) = self.zero;
            for (s, e, a) in [
                (0, zs, crate::Allocation::Data),
                (zs, ze, crate::Allocation::Zero),
                (ze, self.size(), crate::Allocation::Data),
            ] {
                let (s, e) = (s.max(offset), e.min(end));
                if s < e {
                    crate::coalesce(
                        &mut map,
                        crate::Extent {
                            start: s,
                            length: e - s,
                            allocation: a,
                            depth: 0,
                        },
                    );
                }
            }
            Ok(map)
        }
        fn format_name(&self) -> &'static str {
            "test"
        }
    }

    #[test]
    fn dirty_blocks_the_map_says_are_zero_are_recorded_as_zero_without_a_read() {
        let bs = 4096u64;
        // The parent has data everywhere; the new disk is the parent with blocks 2..5
        // discarded (zero by the map) and block 7 rewritten.
        let old = vec![1u8; 10 * bs as usize];
        let mut new = old.clone();
        new[2 * 4096..5 * 4096].fill(0);
        new[7 * 4096] = 9;
        let new = ZeroByMap {
            inner: MemImage::new(new),
            zero: (2 * bs, 5 * bs),
            reads: Mutex::new(Vec::new()),
        };
        let seen = Arc::new(Mutex::new(Vec::new()));
        let hooked = Mutex::new(Vec::new());
        let hook = |b: u64, d: &[u8]| hooked.lock().unwrap().push((b, is_zero(d), d.len()));
        // Dirty: 1 (unchanged data), 2..5 (discarded), 7 (rewritten), 9 (past a gap).
        let stats = write_delta(
            DeltaTarget {
                parent: &MemImage::new(old),
                new: &new,
                sink: Box::new(Record(Arc::clone(&seen))),
                on_block: Some(&hook),
            },
            [(bs, 4 * bs), (7 * bs, 1), (9 * bs, bs)],
        )
        .unwrap();
        let reads = new.reads.lock().unwrap().clone();
        assert!(
            reads.iter().all(|&(o, _)| o < 2 * bs || o >= 5 * bs),
            "{reads:?}"
        );
        assert_eq!(reads.len(), 3, "{reads:?}");
        assert_eq!(stats.bytes_read, 3 * bs);
        assert_eq!(stats.zeroed_blocks, 3);
        assert_eq!(stats.data_blocks, 3);
        // The discarded blocks mask the parent with zeros, in order with the rest.
        let seen = seen.lock().unwrap().clone();
        let zeroed: Vec<u64> = seen.iter().filter(|s| s.1).map(|s| s.0 / bs).collect();
        assert_eq!(zeroed, [2, 3, 4]);
        // The hook saw every block, the unread ones as zeros of a whole block.
        let mut h = hooked.into_inner().unwrap();
        h.sort();
        assert_eq!(h.len(), 6);
        assert!(h
            .iter()
            .filter(|x| (2..5).contains(&x.0))
            .all(|x| x.1 && x.2 == 4096));
    }

    #[test]
    fn known_zero_needs_every_byte_of_a_block_to_read_as_zero() {
        let img = ZeroByMap {
            inner: MemImage::new(vec![1u8; 8 * 4096]),
            zero: (4096 + 512, 3 * 4096),
            reads: Mutex::new(Vec::new()),
        };
        let range = |b: u64| (b * 4096, 4096);
        assert_eq!(
            known_zero(&img, &[0, 1, 2, 3, 7], range).unwrap(),
            [false, false, true, false, false]
        );
        assert!(known_zero(&img, &[], range).unwrap().is_empty());
    }
}
