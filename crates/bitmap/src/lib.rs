//! vdisk-bitmap: changed-block bitmaps.
//!
//! A [`ChangeMap`] records which blocks of a disk of `size` bytes changed, at a `granularity`
//! (a power of two, at least 512 bytes): block `i` covers bytes `[i*g, min((i+1)*g, size))`.
//! It supports
//!
//! - set algebra ([`ChangeMap::union`], [`ChangeMap::intersection`], [`ChangeMap::difference`])
//!   between maps of any granularity and size,
//! - walking the changed blocks as runs ([`ChangeMap::runs`]) or byte extents
//!   ([`ChangeMap::extents`]),
//! - [`ChangeMap::resample`] and [`ChangeMap::resize`],
//! - a checksummed on-disk form ([`ChangeMap::encode`], [`ChangeMap::decode`]),
//! - extent lists as JSON ([`ChangeMap::from_extents_json`], [`ChangeMap::to_extents_json`]).
//!
//! The crate does no I/O: callers read and write the bytes.
//!
//! ```
//! use vdisk_bitmap::ChangeMap;
//! let mut map = ChangeMap::new(1 << 20, 64 << 10)?;
//! map.mark_bytes(1000, 70_000)?; // touches blocks 0 and 1
//! assert_eq!(map.extents().collect::<Vec<_>>(), [(0, 128 << 10)]);
//! let back = ChangeMap::decode(&map.encode())?;
//! assert_eq!(back, map);
//! # Ok::<(), vdisk_core::Error>(())
//! ```

//! # How a map is held
//!
//! A map costs memory and time in proportion to its changed blocks and how fragmented they
//! are, not to the disk size: a 256 TiB disk at 512 bytes (2^39 blocks) with three blocks
//! changed, or with every block changed, takes a few hundred bytes.
//!
//! The blocks are grouped in chunks of 2^16. Only chunks with a changed block are kept, in a
//! `BTreeMap` by chunk number, each in the cheapest of three forms:
//!
//! - a stretch of consecutive chunks whose every block changed is one entry, however long
//!   (so marking a whole disk changed, `set_blocks(0, n)`, is O(log chunks));
//! - a partly changed chunk with at most 1024 runs is a sorted list of `(first, last)` 16-bit
//!   offsets: 4 bytes a run (up to 8 with a growing list's spare capacity, never more than
//!   4 KiB);
//! - a partly changed chunk with more runs is its 2^16 bits: 8 KiB.
//!
//! The form of each chunk is a function of its blocks, so equal maps are equal structures.
//!
//! Why this shape: sorted runs alone cost 16 bytes or more a run, so a fragmented map (a
//! checkerboard) would take 128 times the dense bitmap; bits alone cost the disk size. Runs
//! inside chunks are cheap to edit in place (a list of at most 1024 entries, found with one
//! tree lookup), and a chunk switches to bits before its list would cost more than they do.
//!
//! Bounds, for a map with `R` maximal runs over `K` non-empty chunks (about 100 bytes each
//! for the tree entry):
//!
//! - memory: `100 K` bytes, plus 4 to 8 bytes a run in list chunks, plus 8 KiB a bits
//!   chunk. Run-shaped maps, the usual changed-block maps, take about 100 bytes a run when
//!   the runs are far apart and 4 to 8 when they share chunks. The worst case, any pattern
//!   at all, is a bits chunk everywhere: the dense bitmap's `blocks / 8` bytes plus about
//!   1.2% (measured: 136 MB for a checkerboard of 64 TiB at 64 KiB, 2^29 of 2^30 blocks;
//!   the dense form took 128 MiB whatever the map). No exact form can promise less: half of
//!   2^30 blocks chosen at random take 2^30 bits to write down, whatever the scheme.
//! - `test`, `set`, `clear`: O(log K), plus at most 1024 list entries moved or a few words
//!   of a bits chunk changed.
//! - `set_blocks`, `mark_bytes`: O(log K) for each chunk entry the range replaces, plus the
//!   words of the two partial chunks at its ends, however long the range.
//! - `runs`, `extents`, `encode`, `decode`, `union`, `intersection`, `difference`,
//!   `resample`, `resize`: O(R + K) (a bits chunk is walked a word at a time, 1024 words,
//!   and holds more than 1024 runs, so this stays within O(R)).
//! - `count`, `is_empty`: O(1), the count being kept up to date; `changed_bytes`: O(log K).

mod algebra;
mod build;
mod chunk;
#[doc(hidden)]
pub mod fuzzing;
mod json;
mod ondisk;
mod runs;

use std::collections::BTreeMap;

pub use ondisk::{MAGIC, VERSION};
pub use runs::{Extents, Runs};

use chunk::{chunk_len, list_add, list_clear, Bits, ListFull, Node, CHUNK_MASK, CHUNK_SHIFT};
use vdisk_core::{Error, ErrorKind, Result};

/// The smallest granularity: one sector.
pub const MIN_GRANULARITY: u64 = 512;

/// The most blocks a map may have: 2^39, a disk of
/// [`vdisk_core::MAX_DISK_SIZE`] (256 TiB) at the smallest granularity (512 bytes). Maps cost
/// memory by their changed blocks, not their size, so this bounds what can be addressed, not
/// what is allocated; block numbers times the granularity stay well inside a `u64`.
pub const MAX_BLOCKS: u64 = vdisk_core::MAX_DISK_SIZE / MIN_GRANULARITY;

/// A changed-block map of a disk: which of its blocks of `granularity` bytes changed.
///
/// Held sparsely (see [the crate documentation](crate#how-a-map-is-held)): memory and time
/// follow the changed blocks and their runs, not the disk size. The form is canonical (a
/// function of the changed blocks), so the derived equality is equality of the maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeMap {
    size: u64,
    granularity: u64,
    block_count: u64,
    /// Changed blocks, kept up to date.
    count: u64,
    /// The chunks with a changed block, by chunk number (block >> 16). Invariants:
    /// - nodes do not overlap: a `Full(n)` at `k` has no other node in `k..k + n`;
    /// - a `Full` stretch never ends where another begins (they are joined);
    /// - a `List` is not empty, not one run covering the whole chunk (that is `Full`), and
    ///   has at most `LIST_MAX_RUNS` runs; a `Bits` chunk has more than that;
    /// - nothing is set past `block_count`.
    nodes: BTreeMap<u64, Node>,
}

/// Checks that `granularity` is a valid [`vdisk_core::Granularity`].
pub(crate) fn check_granularity(granularity: u64) -> Result<()> {
    vdisk_core::Granularity::new(granularity).map(|_| ())
}

/// Blocks of `granularity` bytes needed to cover `size` bytes (the last one may be partial).
pub(crate) fn blocks_for(size: u64, granularity: u64) -> u64 {
    size.div_ceil(granularity)
}

/// Checks a shape and returns its block count: a valid granularity, at most [`MAX_BLOCKS`].
pub(crate) fn check_shape(size: u64, granularity: u64) -> Result<u64> {
    check_granularity(granularity)?;
    let block_count = blocks_for(size, granularity);
    if block_count > MAX_BLOCKS {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!(
                "a {size}-byte disk at granularity {granularity} has {block_count} blocks, \
                 more than the limit of 2^39 (256 TiB at 512 bytes); use a coarser granularity"
            ),
        ));
    }
    Ok(block_count)
}

impl ChangeMap {
    /// An empty map (no block changed) of a disk of `size` bytes at `granularity`. Allocates
    /// nothing, whatever the size.
    ///
    /// Fails with [`ErrorKind::InvalidArgument`] when the granularity is not a power of two of
    /// at least 512 bytes, or when the disk would have more than [`MAX_BLOCKS`] blocks.
    pub fn new(size: u64, granularity: u64) -> Result<ChangeMap> {
        let block_count = check_shape(size, granularity)?;
        Ok(ChangeMap {
            size,
            granularity,
            block_count,
            count: 0,
            nodes: BTreeMap::new(),
        })
    }

    /// The disk size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes per block.
    pub fn granularity(&self) -> u64 {
        self.granularity
    }

    /// Blocks in the map: `ceil(size / granularity)`.
    pub fn block_count(&self) -> u64 {
        self.block_count
    }

    /// Marks block `block` changed.
    ///
    /// # Panics
    ///
    /// If `block >= block_count()`, like slice indexing.
    pub fn set(&mut self, block: u64) {
        self.check_block(block);
        let off = (block & CHUNK_MASK) as u16;
        self.set_in_chunk(block >> CHUNK_SHIFT, off, off);
    }

    /// Marks block `block` unchanged.
    ///
    /// # Panics
    ///
    /// If `block >= block_count()`, like slice indexing.
    pub fn clear(&mut self, block: u64) {
        self.check_block(block);
        let (k, off) = (block >> CHUNK_SHIFT, (block & CHUNK_MASK) as u16);
        let Some((&key, node)) = self.nodes.range(..=k).next_back() else {
            return;
        };
        match *node {
            Node::Full(n) => {
                if key + n <= k {
                    return;
                }
                // The stretch splits around chunk k, which keeps all its blocks but one.
                self.nodes.remove(&key);
                if k > key {
                    self.nodes.insert(key, Node::Full(k - key));
                }
                if key + n > k + 1 {
                    self.nodes.insert(k + 1, Node::Full(key + n - k - 1));
                }
                let len = chunk_len(self.block_count, k);
                let mut list = Vec::with_capacity(2);
                if off > 0 {
                    list.push((0, off - 1));
                }
                if u32::from(off) + 1 < len {
                    list.push((off + 1, (len - 1) as u16));
                }
                if !list.is_empty() {
                    self.nodes.insert(k, Node::List(list));
                }
                self.count -= 1;
                return;
            }
            _ if key != k => return,
            _ => {}
        }
        let Some(node) = self.nodes.get_mut(&k) else {
            return;
        };
        let cleared = match node {
            Node::List(list) => match list_clear(list, off) {
                Ok(cleared) => cleared,
                Err(ListFull) => {
                    let mut bits = Bits::from_list(list);
                    let cleared = bits.clear_bit(off.into());
                    *node = Node::Bits(bits);
                    cleared
                }
            },
            Node::Bits(bits) => bits.clear_bit(off.into()),
            Node::Full(_) => false,
        };
        if cleared {
            self.count -= 1;
            self.settle(k);
        }
    }

    /// Whether block `block` changed. Blocks past the end are unchanged.
    pub fn test(&self, block: u64) -> bool {
        if block >= self.block_count {
            return false;
        }
        let (k, off) = (block >> CHUNK_SHIFT, (block & CHUNK_MASK) as u16);
        match self.nodes.range(..=k).next_back() {
            Some((&key, Node::Full(n))) => key + n > k,
            Some((&key, Node::List(list))) if key == k => {
                let i = list.partition_point(|&(first, _)| first <= off);
                i > 0 && list[i - 1].1 >= off
            }
            Some((&key, Node::Bits(bits))) if key == k => bits.test(off.into()),
            _ => false,
        }
    }

    /// Marks blocks `first..end` changed. An empty range (`first >= end`) does nothing.
    /// Costs O(log chunks) plus the chunks it replaces, however long the range: whole chunks
    /// in the middle become one full stretch.
    ///
    /// # Panics
    ///
    /// If `end > block_count()` (and the range is not empty).
    pub fn set_blocks(&mut self, first: u64, end: u64) {
        if first >= end {
            return;
        }
        assert!(
            end <= self.block_count,
            "blocks {first}..{end} past the end of a {}-block map",
            self.block_count
        );
        let (kf, kl) = (first >> CHUNK_SHIFT, (end - 1) >> CHUNK_SHIFT);
        let last_off = ((end - 1) & CHUNK_MASK) as u16;
        if kf == kl {
            self.set_in_chunk(kf, (first & CHUNK_MASK) as u16, last_off);
            return;
        }
        let mut full_from = kf;
        if first & CHUNK_MASK != 0 {
            self.set_in_chunk(kf, (first & CHUNK_MASK) as u16, CHUNK_MASK as u16);
            full_from = kf + 1;
        }
        // The last chunk is whole when `end` is its end: a chunk boundary or the map's end.
        let last_whole = end & CHUNK_MASK == 0 || end == self.block_count;
        let full_to = if last_whole { kl + 1 } else { kl };
        if full_from < full_to {
            self.set_full(full_from, full_to);
        }
        if !last_whole {
            self.set_in_chunk(kl, 0, last_off);
        }
    }

    /// Marks every block that the byte range `start..start+len` touches: an unaligned range
    /// rounds out to whole blocks. A zero-length range does nothing.
    ///
    /// Fails with [`ErrorKind::OutOfBounds`] when the range ends past the disk size.
    pub fn mark_bytes(&mut self, start: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let (first, end) = self.blocks_of_bytes(start, len).map_err(|end| {
            Error::new(
                ErrorKind::OutOfBounds,
                format!(
                    "byte range {start}+{len} ends at {end}, past the end of the {}-byte disk",
                    self.size
                ),
            )
        })?;
        self.set_blocks(first, end);
        Ok(())
    }

    /// The blocks `first..end` touched by the non-empty byte range `start..start+len`, or the
    /// (display form of the) end when the range does not fit the disk.
    pub(crate) fn blocks_of_bytes(&self, start: u64, len: u64) -> Result<(u64, u64), String> {
        debug_assert!(len > 0);
        match start.checked_add(len) {
            Some(end) if end <= self.size => {
                let g = self.granularity;
                // `end - 1` rounds down to the block holding the last byte; +1 makes it an end.
                Ok((start / g, (end - 1) / g + 1))
            }
            Some(end) => Err(end.to_string()),
            None => Err("more than 2^64".to_string()),
        }
    }

    /// Number of changed blocks (kept up to date: O(1)).
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Whether no block changed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes in changed blocks, the last block counted only up to the disk size.
    pub fn changed_bytes(&self) -> u64 {
        let g = self.granularity;
        match self.block_count.checked_sub(1) {
            // The partial last block holds `size - last * g` bytes. Neither product can
            // pass `size`, so nothing overflows, even for a disk of nearly 2^64 bytes.
            Some(last) if self.test(last) => (self.count - 1) * g + (self.size - last * g),
            _ => self.count * g,
        }
    }

    /// An estimate of the heap bytes the map holds, for tests of its memory bounds: its
    /// chunk lists and bits exactly, plus a generous allowance for each `BTreeMap` entry.
    #[doc(hidden)]
    pub fn heap_bytes(&self) -> usize {
        /// A B-tree leaf holds up to 11 entries in about 400 bytes and is at least 5/11
        /// full (but the root), and internal nodes add less than a tenth of that.
        const PER_ENTRY: usize = 100;
        self.nodes
            .values()
            .map(|node| {
                PER_ENTRY
                    + match node {
                        Node::Full(_) => 0,
                        Node::List(list) => list.capacity() * std::mem::size_of::<(u16, u16)>(),
                        Node::Bits(_) => std::mem::size_of::<Bits>(),
                    }
            })
            .sum()
    }

    fn check_block(&self, block: u64) {
        assert!(
            block < self.block_count,
            "block {block} past the end of a {}-block map",
            self.block_count
        );
    }

    /// Blocks in chunks `k0..k1`.
    fn blocks_in(&self, k0: u64, k1: u64) -> u64 {
        build::blocks_in(self.block_count, k0, k1)
    }

    /// Sets offsets `lo..=hi` of chunk `k`, with one B-tree lookup unless the chunk changes
    /// form (the diff engine calls this for every changed block).
    fn set_in_chunk(&mut self, k: u64, lo: u16, hi: u16) {
        let len = chunk_len(self.block_count, k);
        if lo == 0 && u32::from(hi) + 1 == len {
            self.set_full(k, k + 1);
            return;
        }
        // The node at or before chunk k: a full stretch over k, chunk k's own, or neither.
        let found = match self.nodes.range_mut(..=k).next_back() {
            Some((&key, Node::Full(n))) if key + *n > k => return,
            Some((&key, node)) if key == k => Some(node),
            _ => None,
        };
        let Some(node) = found else {
            // A new chunk of one run, not the whole chunk (handled above): a list.
            self.nodes.insert(k, Node::List(vec![(lo, hi)]));
            self.count += u64::from(hi - lo) + 1;
            return;
        };
        let (added, unsettled) = match node {
            Node::List(list) => match list_add(list, lo, hi) {
                Ok(added) => {
                    let full = matches!(list[..], [(0, last)] if u32::from(last) + 1 == len);
                    (added, full)
                }
                Err(ListFull) => {
                    // A new run past the limit: bits, with more runs than any list.
                    let mut bits = Bits::from_list(list);
                    let added = bits.set_range(lo.into(), hi.into());
                    *node = Node::Bits(bits);
                    (added, false)
                }
            },
            Node::Bits(bits) => {
                let added = bits.set_range(lo.into(), hi.into());
                (added, bits.runs as usize <= chunk::LIST_MAX_RUNS)
            }
            Node::Full(_) => (0, false),
        };
        self.count += u64::from(added);
        if unsettled {
            self.settle(k);
        }
    }

    /// Marks chunks `k0..k1` wholly changed, as one full stretch joined to its neighbours.
    fn set_full(&mut self, mut k0: u64, mut k1: u64) {
        // Blocks already set in the chunks the new stretch replaces.
        let mut had = 0u64;
        if let Some((&key, &Node::Full(n))) = self.nodes.range(..k0).next_back() {
            if key + n >= k0 {
                if key + n >= k1 {
                    return;
                }
                self.nodes.remove(&key);
                had += self.blocks_in(key, key + n);
                k0 = key;
            }
        }
        while let Some((&key, _)) = self.nodes.range(k0..k1).next() {
            had += match self.nodes.remove(&key) {
                Some(Node::Full(n)) => {
                    k1 = k1.max(key + n);
                    self.blocks_in(key, key + n)
                }
                Some(Node::List(list)) => list.iter().map(|&(lo, hi)| u64::from(hi - lo) + 1).sum(),
                Some(Node::Bits(bits)) => u64::from(bits.count),
                None => 0,
            };
        }
        if let Some(&Node::Full(n)) = self.nodes.get(&k1) {
            self.nodes.remove(&k1);
            had += self.blocks_in(k1, k1 + n);
            k1 += n;
        }
        self.nodes.insert(k0, Node::Full(k1 - k0));
        self.count = self.count - had + self.blocks_in(k0, k1);
    }

    /// Brings chunk `k`'s node (a list or bits just changed) back to its canonical form.
    fn settle(&mut self, k: u64) {
        let len = chunk_len(self.block_count, k);
        let Some(node) = self.nodes.get_mut(&k) else {
            return;
        };
        if let Node::Bits(bits) = node {
            if bits.runs as usize <= chunk::LIST_MAX_RUNS {
                *node = Node::List(bits.to_list());
            }
        }
        if let Node::List(list) = node {
            match list[..] {
                [] => {
                    self.nodes.remove(&k);
                }
                [(0, last)] if u32::from(last) + 1 == len => {
                    self.nodes.remove(&k);
                    self.count -= u64::from(len);
                    self.set_full(k, k + 1);
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::Node;

    fn blocks(m: &ChangeMap) -> Vec<u64> {
        (0..m.block_count()).filter(|&b| m.test(b)).collect()
    }

    #[test]
    fn new_checks_granularity() {
        for g in [0, 1, 256, 511, 513, 3 << 10, 65535] {
            let e = ChangeMap::new(1 << 20, g).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "granularity {g}");
            assert!(e.message().contains("power of two"), "{}", e.message());
        }
        assert!(ChangeMap::new(1 << 20, 512).is_ok());
        assert!(ChangeMap::new(1 << 20, 64 << 20).is_ok());
        assert!(ChangeMap::new(1 << 20, 128 << 20).is_err());
    }

    #[test]
    fn new_accepts_256_tib_at_512_and_refuses_more() {
        let m = ChangeMap::new(vdisk_core::MAX_DISK_SIZE, 512).unwrap();
        assert_eq!(m.block_count(), MAX_BLOCKS);
        assert_eq!(MAX_BLOCKS, 1 << 39);
        assert_eq!(m.heap_bytes(), 0);
        let e = ChangeMap::new((MAX_BLOCKS + 1) * 512, 512).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.message().contains("2^39"), "{}", e.message());
        let e = ChangeMap::new(u64::MAX, 512).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    }

    #[test]
    fn block_count_rounds_up_and_handles_huge_sizes() {
        assert_eq!(ChangeMap::new(0, 512).unwrap().block_count(), 0);
        assert_eq!(ChangeMap::new(1, 512).unwrap().block_count(), 1);
        assert_eq!(ChangeMap::new(1024, 512).unwrap().block_count(), 2);
        assert_eq!(ChangeMap::new(1025, 512).unwrap().block_count(), 3);
        let m = ChangeMap::new((2 << 26) + 1, 64 << 20).unwrap();
        assert_eq!(m.block_count(), 3);
        // The largest sizes fit at coarse granularities: 2^38 and 2^39 blocks.
        assert_eq!(
            ChangeMap::new(u64::MAX, 64 << 20).unwrap().block_count(),
            1 << 38
        );
        assert_eq!(
            ChangeMap::new(u64::MAX, 32 << 20).unwrap().block_count(),
            1 << 39
        );
        assert!(ChangeMap::new(u64::MAX, 16 << 20).is_err());
    }

    #[test]
    fn set_clear_test() {
        let mut m = ChangeMap::new(200 * 512, 512).unwrap();
        for b in [0, 63, 64, 130, 199] {
            m.set(b);
        }
        assert_eq!(blocks(&m), [0, 63, 64, 130, 199]);
        m.clear(64);
        assert!(!m.test(64));
        assert!(!m.test(200));
        assert!(!m.test(u64::MAX));
        assert_eq!(m.count(), 4);
    }

    #[test]
    #[should_panic(expected = "past the end")]
    fn set_past_end_panics() {
        ChangeMap::new(512, 512).unwrap().set(1);
    }

    #[test]
    fn set_blocks_matches_bit_by_bit() {
        for (first, end) in [
            (0, 0),
            (3, 5),
            (0, 64),
            (60, 70),
            (63, 129),
            (5, 300),
            (64, 256),
        ] {
            let mut a = ChangeMap::new(300 * 512, 512).unwrap();
            let mut b = a.clone();
            a.set_blocks(first, end);
            for i in first..end {
                b.set(i);
            }
            assert_eq!(a, b, "{first}..{end}");
        }
    }

    #[test]
    fn mark_bytes_rounds_out() {
        let mut m = ChangeMap::new(10_000, 1024).unwrap();
        m.mark_bytes(1023, 2).unwrap(); // last byte of block 0, first of block 1
        assert_eq!(blocks(&m), [0, 1]);
        m.mark_bytes(4096, 1024).unwrap(); // exactly block 4
        assert_eq!(blocks(&m), [0, 1, 4]);
        m.mark_bytes(9999, 1).unwrap(); // the partial last block
        assert_eq!(blocks(&m), [0, 1, 4, 9]);
        m.mark_bytes(123_456, 0).unwrap();
        assert_eq!(m.count(), 4);
    }

    #[test]
    fn mark_bytes_past_end_is_an_error() {
        let mut m = ChangeMap::new(10_000, 1024).unwrap();
        let e = m.mark_bytes(9_000, 1_001).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::OutOfBounds);
        assert!(e.message().contains("10001"), "{}", e.message());
        let e = m.mark_bytes(u64::MAX, 2).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::OutOfBounds);
        assert!(m.is_empty());
    }

    const C: u64 = chunk::CHUNK_BLOCKS;

    /// A map of `chunks` chunks (and `extra` blocks) at 512 bytes.
    fn chunked(chunks: u64, extra: u64) -> ChangeMap {
        ChangeMap::new((chunks * C + extra) * 512, 512).unwrap()
    }

    fn runs(m: &ChangeMap) -> Vec<(u64, u64)> {
        m.runs().collect()
    }

    fn forms(m: &ChangeMap) -> Vec<(u64, char)> {
        m.nodes
            .iter()
            .map(|(&k, n)| {
                let c = match n {
                    Node::Full(_) => 'F',
                    Node::List(_) => 'L',
                    Node::Bits(_) => 'B',
                };
                (k, c)
            })
            .collect()
    }

    #[test]
    fn a_chunk_goes_from_list_to_bits_and_back() {
        let mut m = chunked(2, 0);
        // Every other block from C + 0: 1024 runs stay a list, the 1025th makes bits.
        for i in 0..1024 {
            m.set(C + 2 * i);
        }
        assert_eq!(forms(&m), [(1, 'L')]);
        m.set(C + 2048);
        assert_eq!(forms(&m), [(1, 'B')]);
        fuzzing::check_form(&m);
        assert_eq!(m.count(), 1025);
        // Joining two runs brings it back to 1024: a list again.
        m.set(C + 1);
        assert_eq!(forms(&m), [(1, 'L')]);
        assert_eq!(runs(&m)[0], (C, 3));
        // Splitting a run of a 1024-run list makes bits; clearing a lone block makes a list.
        m.clear(C + 1);
        assert_eq!(forms(&m), [(1, 'B')]);
        m.clear(C + 2048);
        assert_eq!(forms(&m), [(1, 'L')]);
        assert_eq!(m.count(), 1024);
        fuzzing::check_map(&m);
        // A range over a bits chunk keeps its counts.
        m.set(C + 2048);
        m.set_blocks(C + 100, C + 3000);
        assert_eq!(forms(&m), [(1, 'L')]);
        assert_eq!(m.count(), 50 + (3000 - 100));
        fuzzing::check_map(&m);
    }

    #[test]
    fn whole_chunks_become_one_full_stretch() {
        let mut m = chunked(10, 7);
        m.set_blocks(3 * C, 5 * C);
        assert_eq!(forms(&m), [(3, 'F')]);
        m.set_blocks(C + 5, 3 * C); // list in chunk 1, chunk 2 full: joins chunks 3..5
        assert_eq!(forms(&m), [(1, 'L'), (2, 'F')]);
        m.set_blocks(C, C + 5); // chunk 1 becomes full: one stretch 1..5
        assert_eq!(forms(&m), [(1, 'F')]);
        assert_eq!(runs(&m), [(C, 4 * C)]);
        // Filling chunk 5 one block at a time joins it too.
        for b in 5 * C..6 * C {
            m.set(b);
        }
        assert_eq!(forms(&m), [(1, 'F')]);
        assert_eq!(m.count(), 5 * C);
        // The last chunk has 7 blocks: full when they are.
        m.set_blocks(10 * C, 10 * C + 7);
        assert_eq!(forms(&m), [(1, 'F'), (10, 'F')]);
        m.set_blocks(0, m.block_count());
        assert_eq!(forms(&m), [(0, 'F')]);
        assert_eq!(runs(&m), [(0, 10 * C + 7)]);
        assert_eq!(m.count(), m.block_count());
        fuzzing::check_map(&m);
    }

    #[test]
    fn clearing_splits_a_full_stretch() {
        let mut m = chunked(6, 0);
        m.set_blocks(0, 6 * C);
        m.clear(3 * C + 9);
        assert_eq!(forms(&m), [(0, 'F'), (3, 'L'), (4, 'F')]);
        assert_eq!(runs(&m), [(0, 3 * C + 9), (3 * C + 10, 3 * C - 10)]);
        assert!(!m.test(3 * C + 9) && m.test(3 * C + 8) && m.test(3 * C + 10));
        m.clear(0);
        m.clear(6 * C - 1);
        assert_eq!(
            forms(&m),
            [(0, 'L'), (1, 'F'), (3, 'L'), (4, 'F'), (5, 'L')]
        );
        assert_eq!(m.count(), 6 * C - 3);
        fuzzing::check_map(&m);
        m.set(3 * C + 9);
        m.set(0);
        m.set(6 * C - 1);
        assert_eq!(forms(&m), [(0, 'F')]);
        // A map of one block, which is a whole chunk.
        let mut one = ChangeMap::new(512, 512).unwrap();
        one.set(0);
        assert_eq!(forms(&one), [(0, 'F')]);
        one.clear(0);
        assert!(one.is_empty() && one.nodes.is_empty());
    }

    #[test]
    fn set_blocks_matches_bit_by_bit_across_chunks() {
        let n = 3 * C + 100;
        for (first, end) in [
            (0, n),
            (5, n),
            (0, 2 * C),
            (C - 1, C + 1),
            (C, 3 * C + 100),
            (10, 3 * C + 1),
        ] {
            let mut a = chunked(3, 100);
            a.set(C + 7);
            a.set_blocks(2 * C + 50, 2 * C + 60);
            let mut b = a.clone();
            a.set_blocks(first, end);
            for i in first..end {
                b.set(i);
            }
            assert_eq!(a, b, "{first}..{end}");
            fuzzing::check_map(&a);
        }
    }

    #[test]
    fn huge_maps_cost_what_they_hold() {
        let mut m = ChangeMap::new(vdisk_core::MAX_DISK_SIZE, 512).unwrap();
        for b in [0, 1 << 38, MAX_BLOCKS - 1] {
            m.set(b);
        }
        assert!(m.heap_bytes() < 1024, "{}", m.heap_bytes());
        m.set_blocks(0, MAX_BLOCKS);
        assert_eq!(forms(&m), [(0, 'F')]);
        assert!(m.heap_bytes() < 256, "{}", m.heap_bytes());
        assert_eq!(m.count(), MAX_BLOCKS);
        assert_eq!(m.changed_bytes(), vdisk_core::MAX_DISK_SIZE);
    }

    #[test]
    fn changed_bytes_clips_the_last_block() {
        let mut m = ChangeMap::new(2500, 1024).unwrap();
        assert_eq!(m.changed_bytes(), 0);
        m.set(0);
        m.set(2);
        assert_eq!(m.changed_bytes(), 1024 + 452);
    }
}
