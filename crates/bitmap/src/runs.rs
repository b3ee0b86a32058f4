//! Walking the changed blocks of a map as maximal runs, or as byte extents.

use std::iter::FusedIterator;

use crate::ChangeMap;

/// Iterator over the maximal runs of changed blocks, as `(first_block, block_count)` in
/// increasing order; made by [`ChangeMap::runs`].
#[derive(Clone, Debug)]
pub struct Runs<'a> {
    words: &'a [u64],
    block_count: u64,
    /// Index of the word being walked (`words.len()` when done).
    index: usize,
    /// The bits of that word not yet reported: those of runs already returned are cleared.
    rest: u64,
}

impl Iterator for Runs<'_> {
    type Item = (u64, u64);

    fn next(&mut self) -> Option<(u64, u64)> {
        // Whole zero words are skipped without looking at their bits: this is what makes a
        // sparse map of millions of blocks fast to walk.
        while self.rest == 0 {
            self.index += 1;
            self.rest = *self.words.get(self.index)?;
        }
        let base = self.index as u64 * 64;
        let tz = self.rest.trailing_zeros();
        let first = base + u64::from(tz);
        // The zeros of the word from the run's first bit up: the lowest one ends the run.
        let zeros = !self.rest & (!0u64 << tz);
        if zeros != 0 {
            let end = zeros.trailing_zeros();
            self.rest &= !0u64 << end;
            return Some((first, base + u64::from(end) - first));
        }
        // The run reaches the end of the word: follow it through all-ones words.
        loop {
            self.index += 1;
            let Some(&w) = self.words.get(self.index) else {
                self.rest = 0;
                return Some((first, self.block_count - first));
            };
            if w != !0 {
                // Bits past the last block are zero, so a run never ends past block_count.
                let end = (!w).trailing_zeros();
                self.rest = w & (!0u64 << end);
                return Some((first, self.index as u64 * 64 + u64::from(end) - first));
            }
        }
    }
}

impl FusedIterator for Runs<'_> {}

/// Iterator over the changed byte ranges of a map, as `(start, length)` in increasing order,
/// adjacent blocks joined and the last range clipped to the disk size; made by
/// [`ChangeMap::extents`].
#[derive(Clone, Debug)]
pub struct Extents<'a> {
    runs: Runs<'a>,
    granularity: u64,
    size: u64,
}

impl Iterator for Extents<'_> {
    type Item = (u64, u64);

    fn next(&mut self) -> Option<(u64, u64)> {
        let (first, count) = self.runs.next()?;
        // A run starts at a block below block_count, so before `size`: no overflow. Its end
        // can pass u64::MAX when the granularity is huge, hence the saturation.
        let start = first * self.granularity;
        let end = (first + count)
            .saturating_mul(self.granularity)
            .min(self.size);
        Some((start, end - start))
    }
}

impl FusedIterator for Extents<'_> {}

impl ChangeMap {
    /// The maximal runs of changed blocks, as `(first_block, block_count)`, in order.
    /// Zero words are skipped whole, so walking a sparse map costs little more than reading it.
    pub fn runs(&self) -> Runs<'_> {
        Runs {
            words: &self.words,
            block_count: self.block_count,
            index: 0,
            rest: self.words.first().copied().unwrap_or(0),
        }
    }

    /// The changed byte ranges, as `(start, length)`, in order, adjacent blocks joined, the
    /// last one clipped to the disk size.
    pub fn extents(&self) -> Extents<'_> {
        Extents {
            runs: self.runs(),
            granularity: self.granularity,
            size: self.size,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::ChangeMap;

    fn map(blocks: u64, set: &[u64]) -> ChangeMap {
        let mut m = ChangeMap::new(blocks * 512, 512).unwrap();
        for &b in set {
            m.set(b);
        }
        m
    }

    #[test]
    fn runs_of_an_empty_map() {
        assert_eq!(map(0, &[]).runs().count(), 0);
        assert_eq!(map(1000, &[]).runs().count(), 0);
    }

    #[test]
    fn runs_cross_word_boundaries() {
        let mut m = map(300, &[0, 1, 5]);
        m.set_blocks(62, 66); // 62, 63 | 64, 65
        m.set_blocks(127, 129); // 127 | 128
        m.set_blocks(190, 300); // to the very end, through a partial last word
        let runs: Vec<_> = m.runs().collect();
        assert_eq!(runs, [(0, 2), (5, 1), (62, 4), (127, 2), (190, 110)]);
    }

    #[test]
    fn run_ending_exactly_at_a_word_end() {
        let mut m = map(128, &[]);
        m.set_blocks(60, 128);
        assert_eq!(m.runs().collect::<Vec<_>>(), [(60, 68)]);
        let full = {
            let mut m = map(192, &[]);
            m.set_blocks(0, 192);
            m
        };
        assert_eq!(full.runs().collect::<Vec<_>>(), [(0, 192)]);
    }

    #[test]
    fn runs_skip_long_zero_stretches() {
        let m = map(100_000, &[3, 99_999]);
        assert_eq!(m.runs().collect::<Vec<_>>(), [(3, 1), (99_999, 1)]);
    }

    #[test]
    fn runs_is_fused() {
        let m = map(10, &[9]);
        let mut r = m.runs();
        assert_eq!(r.next(), Some((9, 1)));
        assert_eq!(r.next(), None);
        assert_eq!(r.next(), None);
    }

    #[test]
    fn extents_join_and_clip() {
        let mut m = ChangeMap::new(10 * 4096 + 100, 4096).unwrap();
        m.set_blocks(1, 3);
        m.set_blocks(9, 11);
        assert_eq!(
            m.extents().collect::<Vec<_>>(),
            [(4096, 8192), (9 * 4096, 4096 + 100)]
        );
    }

    #[test]
    fn extents_do_not_overflow_with_the_largest_shape() {
        // 2^32 blocks of 64 MiB: the largest map, a 2^58-byte disk with a partial last block.
        let size = (1u64 << 58) - 100;
        let mut m = ChangeMap::new(size, 64 << 20).unwrap();
        let n = m.block_count();
        m.set_blocks(n - 2, n);
        assert_eq!(
            m.extents().collect::<Vec<_>>(),
            [((n - 2) * (64 << 20), size - (n - 2) * (64 << 20))]
        );
        assert_eq!(m.changed_bytes(), size - (n - 2) * (64 << 20));
    }
}
