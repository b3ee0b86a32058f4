//! Set algebra between maps, resampling and resizing.
//!
//! Maps of different shapes are first brought to a common one: the finer granularity (coarse
//! blocks expand exactly to the fine blocks they cover; QEMU refuses to merge such bitmaps,
//! vdisk does it) and the larger size (blocks past the end of the smaller map are unchanged
//! in it). Maps of the same shape are combined a word at a time.

use std::borrow::Cow;

use vdisk_core::Result;

use crate::{check_granularity, ChangeMap};

/// `op` applied word by word to two maps of the same shape. A plain zip-map-collect over two
/// slices of equal length: LLVM vectorizes it (and `op` never sets a bit that is zero in both
/// inputs' tails, so the tail stays zero).
fn combine(a: &ChangeMap, b: &ChangeMap, op: impl Fn(u64, u64) -> u64) -> ChangeMap {
    debug_assert!(a.same_shape(b));
    ChangeMap {
        size: a.size,
        granularity: a.granularity,
        block_count: a.block_count,
        words: a
            .words
            .iter()
            .zip(&b.words)
            .map(|(&x, &y)| op(x, y))
            .collect(),
    }
}

impl ChangeMap {
    fn same_shape(&self, other: &ChangeMap) -> bool {
        self.size == other.size && self.granularity == other.granularity
    }

    /// The shape two maps are combined in: the larger size, the finer granularity.
    fn common_shape(&self, other: &ChangeMap) -> (u64, u64) {
        (
            self.size.max(other.size),
            self.granularity.min(other.granularity),
        )
    }

    /// Marks in `self` every block that holds a byte changed in `other` (bytes past the end of
    /// `self` are dropped). Exact when `self` is finer or as fine; an OR of the blocks that
    /// fold together when `self` is coarser.
    fn or_from(&mut self, other: &ChangeMap) {
        if self.granularity == other.granularity {
            // Same blocks: OR the words both maps have. When `other` is longer its bits past
            // our last block land in our tail word, hence the clear.
            let n = self.words.len().min(other.words.len());
            for (x, &y) in self.words[..n].iter_mut().zip(&other.words[..n]) {
                *x |= y;
            }
            self.clear_tail();
            return;
        }
        let g = self.granularity;
        for (start, len) in other.extents() {
            if start >= self.size {
                break;
            }
            // Clipped to our size, so `end` cannot overflow and `end - 1` is a byte we have.
            let end = start + len.min(self.size - start);
            self.set_blocks(start / g, (end - 1) / g + 1);
        }
    }

    /// `self` in the shape (`size`, `granularity`), copied only when the shape differs.
    fn reshaped(&self, size: u64, granularity: u64) -> Result<Cow<'_, ChangeMap>> {
        if self.size == size && self.granularity == granularity {
            return Ok(Cow::Borrowed(self));
        }
        let mut out = ChangeMap::new(size, granularity)?;
        out.or_from(self);
        Ok(Cow::Owned(out))
    }

    /// Blocks changed in either map.
    ///
    /// The result has the finer granularity and the larger size of the two. It fails only
    /// when that shape has more than [`MAX_BLOCKS`](crate::MAX_BLOCKS) blocks (a fine small
    /// map with a coarse large one), with [`ErrorKind::InvalidArgument`](vdisk_core::ErrorKind).
    pub fn union(&self, other: &ChangeMap) -> Result<ChangeMap> {
        if self.same_shape(other) {
            return Ok(combine(self, other, |x, y| x | y));
        }
        let (size, granularity) = self.common_shape(other);
        let mut out = ChangeMap::new(size, granularity)?;
        out.or_from(self);
        out.or_from(other);
        Ok(out)
    }

    /// Adds the blocks changed in `other` to `self`, which takes the finer granularity and the
    /// larger size of the two. On error (see [`union`](Self::union)) `self` is unchanged.
    pub fn union_with(&mut self, other: &ChangeMap) -> Result<()> {
        if self.granularity <= other.granularity && self.size >= other.size {
            // Already the common shape: no new map needed.
            self.or_from(other);
        } else {
            *self = self.union(other)?;
        }
        Ok(())
    }

    /// Blocks changed in both maps, in the common shape (see [`union`](Self::union)).
    pub fn intersection(&self, other: &ChangeMap) -> Result<ChangeMap> {
        let (size, granularity) = self.common_shape(other);
        let a = self.reshaped(size, granularity)?;
        let b = other.reshaped(size, granularity)?;
        Ok(combine(&a, &b, |x, y| x & y))
    }

    /// Blocks changed in `self` and not in `other`, in the common shape (see
    /// [`union`](Self::union)). A fine block is removed when the coarse block covering it is
    /// set in `other`.
    pub fn difference(&self, other: &ChangeMap) -> Result<ChangeMap> {
        let (size, granularity) = self.common_shape(other);
        let a = self.reshaped(size, granularity)?;
        let b = other.reshaped(size, granularity)?;
        Ok(combine(&a, &b, |x, y| x & !y))
    }

    /// The same disk at another granularity. Going coarser, a block is set when any of the
    /// blocks folded into it was (so every changed byte stays covered); going finer, every
    /// sub-block of a set block is set (exact).
    ///
    /// Fails with [`ErrorKind::InvalidArgument`](vdisk_core::ErrorKind) when `granularity` is
    /// not a power of two of at least 512, or the result would have too many blocks.
    pub fn resample(&self, granularity: u64) -> Result<ChangeMap> {
        check_granularity(granularity)?;
        Ok(self.reshaped(self.size, granularity)?.into_owned())
    }

    /// The same map for a disk of `size` bytes: growing adds unchanged blocks; shrinking drops
    /// the blocks past the new end.
    ///
    /// Fails with [`ErrorKind::InvalidArgument`](vdisk_core::ErrorKind) when the new size has
    /// too many blocks.
    pub fn resize(&self, size: u64) -> Result<ChangeMap> {
        Ok(self.reshaped(size, self.granularity)?.into_owned())
    }
}

#[cfg(test)]
mod tests {
    use vdisk_core::ErrorKind;

    use crate::ChangeMap;

    fn map(size: u64, g: u64, set: &[u64]) -> ChangeMap {
        let mut m = ChangeMap::new(size, g).unwrap();
        for &b in set {
            m.set(b);
        }
        m
    }

    fn blocks(m: &ChangeMap) -> Vec<u64> {
        (0..m.block_count()).filter(|&b| m.test(b)).collect()
    }

    #[test]
    fn same_shape_fast_path() {
        let a = map(200 * 512, 512, &[0, 64, 150]);
        let b = map(200 * 512, 512, &[64, 65, 199]);
        assert_eq!(blocks(&a.union(&b).unwrap()), [0, 64, 65, 150, 199]);
        assert_eq!(blocks(&a.intersection(&b).unwrap()), [64]);
        assert_eq!(blocks(&a.difference(&b).unwrap()), [0, 150]);
        let mut c = a.clone();
        c.union_with(&b).unwrap();
        assert_eq!(c, a.union(&b).unwrap());
    }

    #[test]
    fn mixed_granularities_expand_the_coarse_map() {
        let fine = map(8192, 512, &[0, 9]);
        let coarse = map(8192, 2048, &[2]); // bytes 4096..6144 = fine blocks 8..12
        let u = fine.union(&coarse).unwrap();
        assert_eq!((u.granularity(), u.size()), (512, 8192));
        assert_eq!(blocks(&u), [0, 8, 9, 10, 11]);
        assert_eq!(blocks(&fine.intersection(&coarse).unwrap()), [9]);
        assert_eq!(blocks(&fine.difference(&coarse).unwrap()), [0]);
        assert_eq!(blocks(&coarse.difference(&fine).unwrap()), [8, 10, 11]);
        let mut c = coarse.clone();
        c.union_with(&fine).unwrap();
        assert_eq!(c, u);
    }

    #[test]
    fn mixed_sizes_take_the_larger() {
        let small = map(1000, 512, &[1]); // block 1 is bytes 512..1000
        let large = map(4096, 512, &[7]);
        let u = small.union(&large).unwrap();
        assert_eq!(u.size(), 4096);
        assert_eq!(blocks(&u), [1, 7]);
        // A coarse partial last block expands only to the fine blocks inside the small disk.
        let coarse_small = map(1500, 1024, &[1]); // bytes 1024..1500
        let u = coarse_small.union(&large).unwrap();
        assert_eq!(blocks(&u), [2, 7]);
    }

    #[test]
    fn union_refuses_a_shape_with_too_many_blocks() {
        let fine = ChangeMap::new(1 << 20, 512).unwrap();
        let coarse_huge = ChangeMap::new(1 << 50, 64 << 20).unwrap();
        let e = fine.union(&coarse_huge).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        let mut f = fine.clone();
        assert!(f.union_with(&coarse_huge).is_err());
        assert_eq!(f, fine);
    }

    #[test]
    fn resample_both_ways() {
        let m = map(10 * 1024 + 100, 1024, &[0, 3, 4, 10]);
        let coarse = m.resample(4096).unwrap();
        assert_eq!(coarse.block_count(), 3);
        assert_eq!(blocks(&coarse), [0, 1, 2]);
        let fine = m.resample(512).unwrap();
        assert_eq!(fine.block_count(), 21);
        // Block 10 is bytes 10240..10340: only fine block 20 exists there.
        assert_eq!(blocks(&fine), [0, 1, 6, 7, 8, 9, 20]);
        assert_eq!(fine.resample(1024).unwrap(), m);
        assert_eq!(m.resample(1024).unwrap(), m);
        assert_eq!(
            m.resample(3000).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
    }

    #[test]
    fn resize_grow_and_shrink() {
        let m = map(100 * 512, 512, &[0, 63, 64, 99]);
        let grown = m.resize(1000 * 512).unwrap();
        assert_eq!(grown.block_count(), 1000);
        assert_eq!(blocks(&grown), [0, 63, 64, 99]);
        let shrunk = m.resize(64 * 512 + 1).unwrap(); // keeps block 64, partial now
        assert_eq!(blocks(&shrunk), [0, 63, 64]);
        let shrunk = m.resize(64 * 512).unwrap();
        assert_eq!(blocks(&shrunk), [0, 63]);
        let shrunk = m.resize(10 * 512).unwrap();
        assert_eq!(blocks(&shrunk), [0]);
        // Shrinking clears the bits past the new last block: growing back shows none.
        assert_eq!(shrunk.resize(100 * 512).unwrap(), map(100 * 512, 512, &[0]));
        assert_eq!(m.resize(0).unwrap().block_count(), 0);
        assert!(m.resize(u64::MAX).is_err());
    }
}
