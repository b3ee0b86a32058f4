//! Walking the changed blocks of a map as maximal runs, or as byte extents.

use std::collections::btree_map;
use std::iter::FusedIterator;
use std::slice;

use crate::chunk::{Node, WordRuns, CHUNK_SHIFT};
use crate::ChangeMap;

/// The runs of one chunk not yet reported.
#[derive(Clone, Debug)]
enum Piece<'a> {
    Idle,
    List {
        base: u64,
        runs: slice::Iter<'a, (u16, u16)>,
    },
    Bits {
        base: u64,
        runs: WordRuns<'a>,
    },
}

/// Iterator over the runs of a map chunk by chunk, as half-open `(first, end)` block ranges,
/// in order; runs that continue into the next chunk come out in pieces.
#[derive(Clone, Debug)]
pub(crate) struct Pieces<'a> {
    nodes: btree_map::Iter<'a, u64, Node>,
    block_count: u64,
    piece: Piece<'a>,
}

impl<'a> Pieces<'a> {
    pub(crate) fn new(m: &'a ChangeMap) -> Pieces<'a> {
        Pieces {
            nodes: m.nodes.iter(),
            block_count: m.block_count,
            piece: Piece::Idle,
        }
    }
}

impl Iterator for Pieces<'_> {
    type Item = (u64, u64);

    fn next(&mut self) -> Option<(u64, u64)> {
        loop {
            match &mut self.piece {
                Piece::Idle => {}
                Piece::List { base, runs } => {
                    if let Some(&(lo, hi)) = runs.next() {
                        return Some((*base + u64::from(lo), *base + u64::from(hi) + 1));
                    }
                }
                Piece::Bits { base, runs } => {
                    if let Some((s, e)) = runs.next() {
                        return Some((*base + u64::from(s), *base + u64::from(e)));
                    }
                }
            }
            let (&k, node) = self.nodes.next()?;
            let base = k << CHUNK_SHIFT;
            self.piece = match node {
                Node::Full(n) => {
                    self.piece = Piece::Idle;
                    return Some((base, ((k + n) << CHUNK_SHIFT).min(self.block_count)));
                }
                Node::List(list) => Piece::List {
                    base,
                    runs: list.iter(),
                },
                Node::Bits(bits) => Piece::Bits {
                    base,
                    runs: WordRuns::new(&bits.words),
                },
            };
        }
    }
}

impl FusedIterator for Pieces<'_> {}

/// Iterator over the maximal runs of changed blocks, as `(first_block, block_count)` in
/// increasing order; made by [`ChangeMap::runs`].
#[derive(Clone, Debug)]
pub struct Runs<'a> {
    pieces: Pieces<'a>,
    /// The piece read past the end of the run last returned.
    next: Option<(u64, u64)>,
}

impl Iterator for Runs<'_> {
    type Item = (u64, u64);

    fn next(&mut self) -> Option<(u64, u64)> {
        let (first, mut end) = match self.next.take() {
            Some(piece) => piece,
            None => self.pieces.next()?,
        };
        // Pieces that touch are one run cut at a chunk boundary.
        for (s, e) in self.pieces.by_ref() {
            if s == end {
                end = e;
            } else {
                self.next = Some((s, e));
                break;
            }
        }
        Some((first, end - first))
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
    /// Costs O(runs): unchanged stretches are never visited, a full stretch of chunks is one
    /// step, and a dense chunk's bits are walked a word at a time.
    pub fn runs(&self) -> Runs<'_> {
        Runs {
            pieces: Pieces::new(self),
            next: None,
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
        // 2^38 blocks of 64 MiB: a disk of nearly 2^64 bytes, with a partial last block.
        let size = u64::MAX - 100;
        let mut m = ChangeMap::new(size, 64 << 20).unwrap();
        let n = m.block_count();
        assert_eq!(n, 1 << 38);
        m.set_blocks(n - 2, n);
        assert_eq!(
            m.extents().collect::<Vec<_>>(),
            [((n - 2) * (64 << 20), size - (n - 2) * (64 << 20))]
        );
        assert_eq!(m.changed_bytes(), size - (n - 2) * (64 << 20));
        m.set_blocks(0, n);
        assert_eq!(m.extents().collect::<Vec<_>>(), [(0, size)]);
        assert_eq!(m.changed_bytes(), size);
    }

    #[test]
    fn runs_join_across_chunks_and_forms() {
        const C: u64 = crate::fuzzing::CHUNK;
        let mut m = map(5 * C, &[]);
        m.set_blocks(C - 1, 2 * C); // a list piece, then a full chunk
        for i in 0..1100 {
            m.set(2 * C + 2 * i + 1); // a bits chunk, its first block clear
        }
        m.set(2 * C); // now it starts at the chunk's first block: joined to the run before
        m.set_blocks(3 * C - 1, 4 * C + 1); // the bits chunk's last block, a full one, a list
        let runs: Vec<_> = m.runs().collect();
        assert!(matches!(m.nodes.get(&2), Some(crate::chunk::Node::Bits(_))));
        assert_eq!(runs[0], (C - 1, C + 3)); // C-1, chunk 1, then 2C and 2C+1
        assert_eq!(runs[1], (2 * C + 3, 1));
        assert_eq!(runs.len(), 1 + 1099 + 1);
        assert_eq!(runs[1100], (3 * C - 1, C + 2));
        assert_eq!(m.count(), runs.iter().map(|r| r.1).sum::<u64>());
    }
}
