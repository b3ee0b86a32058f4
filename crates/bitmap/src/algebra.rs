//! Set algebra between maps, resampling and resizing.
//!
//! Maps of different shapes are first brought to a common one: the finer granularity (coarse
//! blocks expand exactly to the fine blocks they cover; QEMU refuses to merge such bitmaps,
//! vdisk does it) and the larger size (blocks past the end of the smaller map are unchanged
//! in it). Maps of the same shape are combined chunk by chunk: a chunk only one map has is
//! copied (or skipped), full stretches are handled whole, two lists are merged run by run, and
//! a chunk where either side is bits is combined a word at a time. The result is built in
//! order (see `build`), so every operation costs O(runs + chunks) of its inputs.

use std::borrow::Cow;

use vdisk_core::Result;

use crate::build::Builder;
use crate::chunk::{
    chunk_len, fill_range, list_and, list_and_not, list_complement, list_or, Node, CHUNK_SHIFT,
    CHUNK_WORDS,
};
use crate::runs::Pieces;
use crate::{blocks_for, check_granularity, check_shape, ChangeMap};

/// How two maps combine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    /// Union.
    Or,
    /// Intersection.
    And,
    /// Difference.
    AndNot,
}

impl Op {
    fn word(self, x: u64, y: u64) -> u64 {
        match self {
            Op::Or => x | y,
            Op::And => x & y,
            Op::AndNot => x & !y,
        }
    }
}

/// A stretch of chunks `start..end` of one map and the node covering them: a full stretch
/// may be taken apart, a partial chunk is a stretch of one.
#[derive(Clone, Copy)]
struct Span<'a> {
    start: u64,
    end: u64,
    node: &'a Node,
}

fn spans(m: &ChangeMap) -> impl Iterator<Item = Span<'_>> {
    m.nodes.iter().map(|(&k, node)| Span {
        start: k,
        end: match node {
            Node::Full(n) => k + n,
            _ => k + 1,
        },
        node,
    })
}

/// The result under construction, with a scratch chunk for word-at-a-time work.
struct Combiner {
    out: Builder,
    block_count: u64,
    op: Op,
    a: Vec<u64>,
    b: Vec<u64>,
}

impl Combiner {
    /// Adds the blocks of a span as they are.
    fn copy(&mut self, span: Span<'_>) {
        let base = span.start << CHUNK_SHIFT;
        match span.node {
            Node::Full(_) => self.out.push_run(base, span.end << CHUNK_SHIFT),
            Node::List(list) => self.out.push_list(span.start, list.clone()),
            Node::Bits(bits) => self.out.push_words(span.start, &bits.words),
        }
    }

    /// Adds the blocks of chunk `k` that are not in `node` (a partial chunk).
    fn complement(&mut self, k: u64, node: &Node) {
        match node {
            Node::List(list) => {
                let len = chunk_len(self.block_count, k);
                self.out.push_list(k, list_complement(list, len));
            }
            Node::Bits(bits) => {
                self.a.clear();
                self.a.extend(bits.words.iter().map(|w| !w));
                // Bits past the map's end are dropped by the builder.
                self.out.push_words(k, &self.a);
            }
            Node::Full(_) => {}
        }
    }

    /// Combines two nodes covering the chunks `start..end` in both maps.
    fn both(&mut self, start: u64, end: u64, x: &Node, y: &Node) {
        let full = Span {
            start,
            end,
            node: &Node::Full(1),
        };
        let one = |node| Span {
            start,
            end: start + 1,
            node,
        };
        match (self.op, x, y) {
            (Op::Or, Node::Full(_), _) | (Op::Or, _, Node::Full(_)) => self.copy(full),
            (Op::And, Node::Full(_), Node::Full(_)) => self.copy(full),
            (Op::And, Node::Full(_), other) | (Op::And, other, Node::Full(_)) => {
                self.copy(one(other))
            }
            (Op::AndNot, _, Node::Full(_)) => {}
            (Op::AndNot, Node::Full(_), other) => self.complement(start, other),
            (op, Node::List(p), Node::List(q)) => self.lists(start, op, p, q),
            (_, p, q) => self.words(start, p, q),
        }
    }

    /// Two lists of chunk `k`, run by run.
    fn lists(&mut self, k: u64, op: Op, p: &[(u16, u16)], q: &[(u16, u16)]) {
        let list = match op {
            Op::Or => list_or(p, q),
            Op::And => list_and(p, q),
            Op::AndNot => list_and_not(p, q),
        };
        self.out.push_list(k, list);
    }

    /// Chunk `k` of two partial nodes, a word at a time.
    fn words(&mut self, k: u64, p: &Node, q: &Node) {
        fill(&mut self.a, p);
        fill(&mut self.b, q);
        let op = self.op;
        for (x, &y) in self.a.iter_mut().zip(&self.b) {
            *x = op.word(*x, y);
        }
        self.out.push_words(k, &self.a);
    }
}

/// The bits of a partial chunk, in `words`.
fn fill(words: &mut Vec<u64>, node: &Node) {
    words.clear();
    match node {
        Node::Bits(bits) => words.extend_from_slice(&bits.words),
        Node::List(list) => {
            words.resize(CHUNK_WORDS, 0);
            for &(lo, hi) in list {
                fill_range(words, lo.into(), hi.into());
            }
        }
        Node::Full(_) => words.resize(CHUNK_WORDS, !0),
    }
}

/// `op` applied to two maps of the same shape.
fn combine(a: &ChangeMap, b: &ChangeMap, op: Op) -> ChangeMap {
    debug_assert!(a.same_shape(b));
    let mut c = Combiner {
        out: Builder::like(a),
        block_count: a.block_count,
        op,
        a: Vec::new(),
        b: Vec::new(),
    };
    // A span only one map has is kept in a union, and in a difference when it is the left
    // one's; the rest of a full span that started earlier is handled with the other map's span.
    let keep_a = op != Op::And;
    let keep_b = op == Op::Or;
    let (mut xs, mut ys) = (spans(a), spans(b));
    let (mut x, mut y) = (xs.next(), ys.next());
    loop {
        match (x, y) {
            (None, None) => break,
            (Some(sx), None) => {
                if !keep_a {
                    break;
                }
                c.copy(sx);
                x = xs.next();
            }
            (None, Some(sy)) => {
                if !keep_b {
                    break;
                }
                c.copy(sy);
                y = ys.next();
            }
            (Some(mut sx), Some(mut sy)) => {
                if sx.end <= sy.start {
                    if keep_a {
                        c.copy(sx);
                    }
                    x = xs.next();
                } else if sy.end <= sx.start {
                    if keep_b {
                        c.copy(sy);
                    }
                    y = ys.next();
                } else if sx.start < sy.start {
                    // sx spans more than one chunk, so it is full: its part before sy alone.
                    if keep_a {
                        c.copy(Span {
                            end: sy.start,
                            ..sx
                        });
                    }
                    sx.start = sy.start;
                    x = Some(sx);
                } else if sy.start < sx.start {
                    if keep_b {
                        c.copy(Span {
                            end: sx.start,
                            ..sy
                        });
                    }
                    sy.start = sx.start;
                    y = Some(sy);
                } else {
                    let end = sx.end.min(sy.end);
                    c.both(sx.start, end, sx.node, sy.node);
                    sx.start = end;
                    sy.start = end;
                    x = if sx.start < sx.end {
                        Some(sx)
                    } else {
                        xs.next()
                    };
                    y = if sy.start < sy.end {
                        Some(sy)
                    } else {
                        ys.next()
                    };
                }
            }
        }
    }
    c.out.finish()
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

    /// `self` in the shape (`size`, `granularity`), copied only when the shape differs.
    fn reshaped(&self, size: u64, granularity: u64) -> Result<Cow<'_, ChangeMap>> {
        if self.size == size && self.granularity == granularity {
            return Ok(Cow::Borrowed(self));
        }
        let block_count = check_shape(size, granularity)?;
        let mut out = Builder::new(size, granularity, block_count);
        let (g, new_g) = (self.granularity, granularity);
        if new_g == g {
            // The same blocks, cut or extended at the end: dense chunks are copied whole.
            for span in spans(self) {
                let base = span.start << CHUNK_SHIFT;
                if base >= block_count {
                    break;
                }
                match span.node {
                    Node::Full(_) => {
                        let end = (span.end << CHUNK_SHIFT).min(self.block_count);
                        out.push_run(base, end);
                    }
                    // A chunk wholly inside the new size is copied as it is.
                    Node::List(list) if (span.start + 1) << CHUNK_SHIFT <= block_count => {
                        out.push_list(span.start, list.clone())
                    }
                    Node::List(list) => {
                        for &(lo, hi) in list {
                            out.push_run(base + u64::from(lo), base + u64::from(hi) + 1);
                        }
                    }
                    Node::Bits(bits) => out.push_words(span.start, &bits.words),
                }
            }
        } else if new_g < g {
            // Finer: each block becomes `ratio` blocks, but a partial last block only the
            // fine blocks inside this map's size (and none past the new size).
            let ratio = g / new_g;
            let limit = blocks_for(self.size, new_g);
            for (first, end) in Pieces::new(self) {
                out.push_run(first * ratio, (end * ratio).min(limit));
            }
        } else {
            // Coarser: a block is set when a block folded into it is. Runs come in order, so
            // the coarse runs do too, overlapping only the one before.
            let ratio = new_g / g;
            for (first, end) in Pieces::new(self) {
                out.push_run(first / ratio, (end - 1) / ratio + 1);
            }
        }
        Ok(Cow::Owned(out.finish()))
    }

    /// Marks in `self` (of the finer or same granularity, and the larger or same size) the
    /// blocks changed in `other`, in place: worth it when `other` is small next to `self`.
    fn or_in_place(&mut self, other: &ChangeMap) {
        let ratio = other.granularity / self.granularity;
        // A coarse partial last block covers only the fine blocks inside `other`'s size.
        let limit = blocks_for(other.size, self.granularity);
        for (first, end) in Pieces::new(other) {
            self.set_blocks(first * ratio, (end * ratio).min(limit));
        }
    }

    /// Blocks changed in either map.
    ///
    /// The result has the finer granularity and the larger size of the two. It fails only
    /// when that shape has more than [`MAX_BLOCKS`](crate::MAX_BLOCKS) blocks (a fine small
    /// map with a coarse large one), with [`ErrorKind::InvalidArgument`](vdisk_core::ErrorKind).
    pub fn union(&self, other: &ChangeMap) -> Result<ChangeMap> {
        let (size, granularity) = self.common_shape(other);
        let a = self.reshaped(size, granularity)?;
        let b = other.reshaped(size, granularity)?;
        Ok(combine(&a, &b, Op::Or))
    }

    /// Adds the blocks changed in `other` to `self`, which takes the finer granularity and the
    /// larger size of the two. On error (see [`union`](Self::union)) `self` is unchanged.
    ///
    /// When `other` is much smaller than `self` (and `self` already has the common shape),
    /// its runs are marked in place, at O(log chunks) each, rather than rebuilding `self`.
    pub fn union_with(&mut self, other: &ChangeMap) -> Result<()> {
        let small = other.nodes.len().saturating_mul(16) < self.nodes.len()
            && other.nodes.values().all(|n| !matches!(n, Node::Bits(_)));
        if self.granularity <= other.granularity && self.size >= other.size && small {
            self.or_in_place(other);
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
        Ok(combine(&a, &b, Op::And))
    }

    /// Blocks changed in `self` and not in `other`, in the common shape (see
    /// [`union`](Self::union)). A fine block is removed when the coarse block covering it is
    /// set in `other`.
    pub fn difference(&self, other: &ChangeMap) -> Result<ChangeMap> {
        let (size, granularity) = self.common_shape(other);
        let a = self.reshaped(size, granularity)?;
        let b = other.reshaped(size, granularity)?;
        Ok(combine(&a, &b, Op::AndNot))
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
