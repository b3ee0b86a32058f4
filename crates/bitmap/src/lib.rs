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

mod algebra;
#[doc(hidden)]
pub mod fuzzing;
mod json;
mod ondisk;
mod runs;

pub use ondisk::{MAGIC, VERSION};
pub use runs::{Extents, Runs};

use vdisk_core::{Error, ErrorKind, Result};

/// The smallest granularity: one sector.
pub const MIN_GRANULARITY: u64 = 512;

/// The most blocks a map may have: 2^32, a 512 MiB bitmap. Every map is held in memory whole,
/// so this bounds what a hostile header or a mistyped size can make vdisk allocate.
pub const MAX_BLOCKS: u64 = 1 << 32;

/// A changed-block map of a disk: one bit per block of `granularity` bytes.
///
/// Bit `i` of word `i / 64` is block `i`. Bits past the last block are always zero, so the
/// derived equality is equality of the maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeMap {
    size: u64,
    granularity: u64,
    block_count: u64,
    words: Vec<u64>,
}

/// Checks that `granularity` is a valid [`vdisk_core::Granularity`].
pub(crate) fn check_granularity(granularity: u64) -> Result<()> {
    vdisk_core::Granularity::new(granularity).map(|_| ())
}

/// Blocks of `granularity` bytes needed to cover `size` bytes (the last one may be partial).
pub(crate) fn blocks_for(size: u64, granularity: u64) -> u64 {
    size.div_ceil(granularity)
}

/// Words of 64 bits holding `blocks` bits. Only called with `blocks <= MAX_BLOCKS`, so the
/// result fits a `usize` on 32-bit targets too.
fn words_for(blocks: u64) -> usize {
    blocks.div_ceil(64) as usize
}

impl ChangeMap {
    /// An empty map (no block changed) of a disk of `size` bytes at `granularity`.
    ///
    /// Fails with [`ErrorKind::InvalidArgument`] when the granularity is not a power of two of
    /// at least 512 bytes, or when the disk would have more than [`MAX_BLOCKS`] blocks.
    pub fn new(size: u64, granularity: u64) -> Result<ChangeMap> {
        check_granularity(granularity)?;
        let block_count = blocks_for(size, granularity);
        if block_count > MAX_BLOCKS {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "a {size}-byte disk at granularity {granularity} has {block_count} blocks, \
                     more than the limit of 2^32 (a 512 MiB bitmap); use a coarser granularity"
                ),
            ));
        }
        Ok(ChangeMap {
            size,
            granularity,
            block_count,
            words: vec![0; words_for(block_count)],
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
        self.words[(block / 64) as usize] |= 1 << (block % 64);
    }

    /// Marks block `block` unchanged.
    ///
    /// # Panics
    ///
    /// If `block >= block_count()`, like slice indexing.
    pub fn clear(&mut self, block: u64) {
        self.check_block(block);
        self.words[(block / 64) as usize] &= !(1 << (block % 64));
    }

    /// Whether block `block` changed. Blocks past the end are unchanged.
    pub fn test(&self, block: u64) -> bool {
        block < self.block_count && self.words[(block / 64) as usize] & (1 << (block % 64)) != 0
    }

    /// Marks blocks `first..end` changed, whole words at a time in the middle.
    /// An empty range (`first >= end`) does nothing.
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
        let (fw, fb) = ((first / 64) as usize, first % 64);
        let (lw, lb) = ((end / 64) as usize, end % 64);
        // Ones from bit `fb` up in the first word, ones below bit `lb` in the last.
        let head = !0u64 << fb;
        let tail = (1u64 << lb).wrapping_sub(1);
        if fw == lw {
            self.words[fw] |= head & tail;
            return;
        }
        self.words[fw] |= head;
        self.words[fw + 1..lw].fill(!0);
        if lb != 0 {
            self.words[lw] |= tail;
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

    /// Number of changed blocks.
    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Whether no block changed.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// Bytes in changed blocks, the last block counted only up to the disk size.
    pub fn changed_bytes(&self) -> u64 {
        self.extents().map(|(_, len)| len).sum()
    }

    fn check_block(&self, block: u64) {
        assert!(
            block < self.block_count,
            "block {block} past the end of a {}-block map",
            self.block_count
        );
    }

    /// Zeroes the bits past the last block, which every operation must leave zero.
    fn clear_tail(&mut self) {
        let used = self.block_count % 64;
        if used != 0 {
            if let Some(last) = self.words.last_mut() {
                *last &= (1u64 << used) - 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn new_refuses_more_than_2_pow_32_blocks_before_allocating() {
        let e = ChangeMap::new((MAX_BLOCKS + 1) * 512, 512).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.message().contains("512 MiB"), "{}", e.message());
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
        assert!(ChangeMap::new(u64::MAX, 64 << 20).is_err());
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

    #[test]
    fn changed_bytes_clips_the_last_block() {
        let mut m = ChangeMap::new(2500, 1024).unwrap();
        assert_eq!(m.changed_bytes(), 0);
        m.set(0);
        m.set(2);
        assert_eq!(m.changed_bytes(), 1024 + 452);
    }
}
