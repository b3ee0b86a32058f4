//! The pieces a [`ChangeMap`](crate::ChangeMap) is made of: chunks of
//! [`CHUNK_BLOCKS`] blocks, each held in the cheapest of three forms.
//!
//! - [`Node::Full`]: a stretch of chunks whose every block changed, one entry however many
//!   chunks it spans (a whole-disk change of 2^39 blocks is one entry);
//! - [`Node::List`]: a partly changed chunk with at most [`LIST_MAX_RUNS`] runs, as sorted
//!   `(first, last)` offsets inside the chunk, 4 bytes a run;
//! - [`Node::Bits`]: a partly changed chunk with more runs than that, as 65 536 bits (8 KiB).
//!
//! The form is a function of the chunk's content (see `ChangeMap`'s invariants), so two maps
//! of the same blocks are built of the same nodes and the derived equality holds.

use std::iter::FusedIterator;

/// log2 of [`CHUNK_BLOCKS`].
pub(crate) const CHUNK_SHIFT: u32 = 16;

/// Blocks per chunk: 2^16, so that an offset inside a chunk fits a `u16` and a dense chunk's
/// bits (8 KiB) are worth a heap allocation of their own.
pub(crate) const CHUNK_BLOCKS: u64 = 1 << CHUNK_SHIFT;

/// Offset of a block inside its chunk.
pub(crate) const CHUNK_MASK: u64 = CHUNK_BLOCKS - 1;

/// 64-bit words of a [`Bits`] chunk.
pub(crate) const CHUNK_WORDS: usize = (CHUNK_BLOCKS / 64) as usize;

/// The most runs a chunk keeps as a list. At 4 bytes a run, a full list (4 KiB, or 4 KiB of
/// capacity at most, since it is never grown past this length) is half a bits chunk, so no
/// chunk ever costs more than its bits: the worst case of the whole map stays that of a
/// dense bitmap.
pub(crate) const LIST_MAX_RUNS: usize = 1024;

/// The content of one or more chunks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Node {
    /// This chunk and the `n - 1` after it have every block changed (the last chunk of a map
    /// is full when every block it has, up to the block count, changed). `n >= 1`.
    Full(u64),
    /// A partly changed chunk: its maximal runs as inclusive `(first, last)` offsets, sorted,
    /// separated by at least one unchanged block; 1 to [`LIST_MAX_RUNS`] of them.
    List(Vec<(u16, u16)>),
    /// A partly changed chunk with more than [`LIST_MAX_RUNS`] runs.
    Bits(Box<Bits>),
}

/// The bits of one chunk, with its changed-block and run counts kept up to date.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Bits {
    /// Bit `i % 64` of word `i / 64` is block `i` of the chunk; bits past the map's last
    /// block are zero.
    pub(crate) words: [u64; CHUNK_WORDS],
    /// Set bits.
    pub(crate) count: u32,
    /// Maximal runs of set bits inside the chunk.
    pub(crate) runs: u32,
}

/// Blocks in chunk `k` of a map of `block_count` blocks: [`CHUNK_BLOCKS`], less for the last
/// chunk. Only called for chunks the map has (`k << CHUNK_SHIFT < block_count`).
pub(crate) fn chunk_len(block_count: u64, k: u64) -> u32 {
    debug_assert!(k << CHUNK_SHIFT < block_count);
    (block_count - (k << CHUNK_SHIFT)).min(CHUNK_BLOCKS) as u32
}

/// Ones in bits `lo..=hi` of a word (`lo <= hi < 64`).
fn mask(lo: u32, hi: u32) -> u64 {
    (!0u64 << lo) & (!0u64 >> (63 - hi))
}

/// Sets bits `lo..=hi` of `words` (`hi < 64 * words.len()`).
pub(crate) fn fill_range(words: &mut [u64], lo: u32, hi: u32) {
    let (lw, hw) = ((lo / 64) as usize, (hi / 64) as usize);
    if lw == hw {
        words[lw] |= mask(lo % 64, hi % 64);
        return;
    }
    words[lw] |= !0u64 << (lo % 64);
    words[lw + 1..hw].fill(!0);
    words[hw] |= !0u64 >> (63 - hi % 64);
}

/// Set bits and maximal runs of set bits in `words`, read as one bit string.
pub(crate) fn count_and_runs(words: &[u64]) -> (u32, u32) {
    let (mut count, mut starts, mut carry) = (0u32, 0u32, 0u64);
    for &w in words {
        count += w.count_ones();
        // A run starts at a set bit whose lower neighbour is clear.
        starts += (w & !((w << 1) | carry)).count_ones();
        carry = w >> 63;
    }
    (count, starts)
}

impl Bits {
    /// An empty chunk.
    pub(crate) fn zeroed() -> Box<Bits> {
        Box::new(Bits {
            words: [0; CHUNK_WORDS],
            count: 0,
            runs: 0,
        })
    }

    /// A chunk holding `words` (at most [`CHUNK_WORDS`] of them, the rest zero), counted.
    pub(crate) fn from_words(words: &[u64]) -> Box<Bits> {
        let mut b = Bits::zeroed();
        b.words[..words.len()].copy_from_slice(words);
        b.recount();
        b
    }

    /// A chunk holding the runs of a list.
    pub(crate) fn from_list(list: &[(u16, u16)]) -> Box<Bits> {
        let mut b = Bits::zeroed();
        for &(lo, hi) in list {
            b.fill(u32::from(lo), u32::from(hi));
        }
        b.count = list.iter().map(|&(lo, hi)| u32::from(hi - lo) + 1).sum();
        b.runs = list.len() as u32;
        b
    }

    /// Recomputes `count` and `runs` from the words.
    pub(crate) fn recount(&mut self) {
        (self.count, self.runs) = count_and_runs(&self.words);
    }

    /// The runs of the chunk as a list (for a chunk with few enough of them).
    pub(crate) fn to_list(&self) -> Vec<(u16, u16)> {
        WordRuns::new(&self.words)
            .map(|(s, e)| (s as u16, (e - 1) as u16))
            .collect()
    }

    /// Whether block `off` of the chunk is set.
    pub(crate) fn test(&self, off: u32) -> bool {
        self.words[(off / 64) as usize] >> (off % 64) & 1 != 0
    }

    /// Sets bits `lo..=hi`, leaving the counts stale.
    pub(crate) fn fill(&mut self, lo: u32, hi: u32) {
        fill_range(&mut self.words, lo, hi);
    }

    /// Sets bits `lo..=hi` and keeps the counts, in time proportional to the range's words;
    /// returns how many blocks were newly set.
    pub(crate) fn set_range(&mut self, lo: u32, hi: u32) -> u32 {
        let (lw, hw) = ((lo / 64) as usize, (hi / 64) as usize);
        // Setting lo..=hi can change which of the bits lo..=hi+1 start a run, and nothing
        // else: count the run starts of those words (from the bit below them) before and after.
        let last = ((hi + 1).min(CHUNK_BLOCKS as u32 - 1) / 64) as usize;
        let carry = if lw == 0 { 0 } else { self.words[lw - 1] >> 63 };
        let starts = |words: &[u64]| {
            let mut c = carry;
            let mut n = 0u32;
            for &w in words {
                n += (w & !((w << 1) | c)).count_ones();
                c = w >> 63;
            }
            n
        };
        let ones = |words: &[u64]| words.iter().map(|w| w.count_ones()).sum::<u32>();
        let (ones_before, starts_before) =
            (ones(&self.words[lw..=hw]), starts(&self.words[lw..=last]));
        self.fill(lo, hi);
        let (ones_after, starts_after) =
            (ones(&self.words[lw..=hw]), starts(&self.words[lw..=last]));
        let added = ones_after - ones_before;
        self.count += added;
        self.runs = self.runs - starts_before + starts_after;
        added
    }

    /// Clears bit `off` and keeps the counts; returns whether it was set.
    pub(crate) fn clear_bit(&mut self, off: u32) -> bool {
        if !self.test(off) {
            return false;
        }
        let below = off > 0 && self.test(off - 1);
        let above = off + 1 < CHUNK_BLOCKS as u32 && self.test(off + 1);
        self.words[(off / 64) as usize] &= !(1u64 << (off % 64));
        self.count -= 1;
        match (below, above) {
            // A run split in two.
            (true, true) => self.runs += 1,
            // A run of one block gone.
            (false, false) => self.runs -= 1,
            // A run one block shorter.
            _ => {}
        }
        true
    }
}

/// Why a list operation was not done: the list would exceed [`LIST_MAX_RUNS`] runs, and the
/// chunk must become [`Bits`] first.
pub(crate) struct ListFull;

/// Makes room for one more run in a list shorter than [`LIST_MAX_RUNS`]: doubling, as a `Vec`
/// does, but never past [`LIST_MAX_RUNS`] (a list cloned at its length would otherwise grow
/// to twice that), so a list never holds more than 4 KiB.
fn reserve_one(list: &mut Vec<(u16, u16)>) {
    if list.len() == list.capacity() {
        let more = list.len().max(4).min(LIST_MAX_RUNS - list.len());
        list.reserve_exact(more);
    }
}

/// Adds blocks `lo..=hi` to a run list (sorted, maximal); returns how many were newly set.
/// Refused, with the list unchanged, when it would need more than [`LIST_MAX_RUNS`] runs.
pub(crate) fn list_add(list: &mut Vec<(u16, u16)>, lo: u16, hi: u16) -> Result<u32, ListFull> {
    let (lo32, hi32) = (u32::from(lo), u32::from(hi));
    // The runs that overlap or touch lo..=hi are list[i0..i1]: those ending at lo - 1 or later
    // and starting at hi + 1 or earlier. Runs are sorted and apart, so i0 <= i1.
    let i0 = list.partition_point(|&(_, last)| u32::from(last) + 1 < lo32);
    let i1 = list.partition_point(|&(first, _)| u32::from(first) <= hi32 + 1);
    if i0 == i1 {
        if list.len() >= LIST_MAX_RUNS {
            return Err(ListFull);
        }
        reserve_one(list);
        list.insert(i0, (lo, hi));
        return Ok(hi32 - lo32 + 1);
    }
    let first = lo.min(list[i0].0);
    let last = hi.max(list[i1 - 1].1);
    let before: u32 = list[i0..i1]
        .iter()
        .map(|&(f, l)| u32::from(l - f) + 1)
        .sum();
    list[i0] = (first, last);
    list.drain(i0 + 1..i1);
    Ok(u32::from(last - first) + 1 - before)
}

/// Removes block `off` from a run list; returns whether it was set. Refused, with the list
/// unchanged, when splitting a run would need more than [`LIST_MAX_RUNS`] runs.
pub(crate) fn list_clear(list: &mut Vec<(u16, u16)>, off: u16) -> Result<bool, ListFull> {
    let i = list.partition_point(|&(first, _)| first <= off);
    let Some(j) = i.checked_sub(1) else {
        return Ok(false);
    };
    let (first, last) = list[j];
    if last < off {
        return Ok(false);
    }
    match (first == off, last == off) {
        (true, true) => {
            list.remove(j);
        }
        (true, false) => list[j].0 = off + 1,
        (false, true) => list[j].1 = off - 1,
        (false, false) => {
            if list.len() >= LIST_MAX_RUNS {
                return Err(ListFull);
            }
            reserve_one(list);
            list[j].1 = off - 1;
            list.insert(j + 1, (off + 1, last));
        }
    }
    Ok(true)
}

/// The union of two run lists (sorted, maximal), sorted and maximal. It may have more than
/// [`LIST_MAX_RUNS`] runs (the caller decides the form); its capacity exceeds that only when
/// its length does.
pub(crate) fn list_or(p: &[(u16, u16)], q: &[(u16, u16)]) -> Vec<(u16, u16)> {
    let mut out: Vec<(u16, u16)> = Vec::with_capacity((p.len() + q.len()).min(LIST_MAX_RUNS));
    let (mut i, mut j) = (0, 0);
    while i < p.len() || j < q.len() {
        // In order of first block; what overlaps or touches the last run joins it.
        let next = if j == q.len() || (i < p.len() && p[i].0 <= q[j].0) {
            i += 1;
            p[i - 1]
        } else {
            j += 1;
            q[j - 1]
        };
        match out.last_mut() {
            Some(last) if u32::from(next.0) <= u32::from(last.1) + 1 => last.1 = last.1.max(next.1),
            _ => out.push(next),
        }
    }
    out
}

/// The intersection of two run lists, sorted and maximal (blocks next to each other in both
/// lists are in one run of each, so in one run of the result).
pub(crate) fn list_and(p: &[(u16, u16)], q: &[(u16, u16)]) -> Vec<(u16, u16)> {
    let mut out = Vec::with_capacity((p.len() + q.len()).min(LIST_MAX_RUNS));
    let (mut i, mut j) = (0, 0);
    while i < p.len() && j < q.len() {
        let (lo, hi) = (p[i].0.max(q[j].0), p[i].1.min(q[j].1));
        if lo <= hi {
            out.push((lo, hi));
        }
        if p[i].1 <= q[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// The runs of `p` less the blocks of `q`, sorted and maximal.
pub(crate) fn list_and_not(p: &[(u16, u16)], q: &[(u16, u16)]) -> Vec<(u16, u16)> {
    let mut out = Vec::with_capacity((p.len() + q.len()).min(LIST_MAX_RUNS));
    let mut j = 0;
    for &(lo, hi) in p {
        // Skip the runs of q that end before this one starts.
        while j < q.len() && q[j].1 < lo {
            j += 1;
        }
        // The part of the run not yet cut, as a half-open range.
        let (mut from, end) = (u32::from(lo), u32::from(hi) + 1);
        for &(qlo, qhi) in &q[j..] {
            if u32::from(qlo) >= end {
                break;
            }
            if u32::from(qlo) > from {
                out.push((from as u16, qlo - 1));
            }
            from = from.max(u32::from(qhi) + 1);
        }
        if from < end {
            out.push((from as u16, (end - 1) as u16));
        }
    }
    out
}

/// The blocks of a chunk of `len` blocks not in the run list `p`.
pub(crate) fn list_complement(p: &[(u16, u16)], len: u32) -> Vec<(u16, u16)> {
    let mut out = Vec::with_capacity((p.len() + 1).min(LIST_MAX_RUNS));
    let mut from = 0u32;
    for &(lo, hi) in p {
        if u32::from(lo) > from {
            out.push((from as u16, lo - 1));
        }
        from = u32::from(hi) + 1;
    }
    if from < len {
        out.push((from as u16, (len - 1) as u16));
    }
    out
}

/// Iterator over the maximal runs of set bits in a slice of words, as half-open
/// `(start, end)` bit offsets, in increasing order. Zero words are skipped whole and
/// all-ones words passed whole.
#[derive(Clone, Debug)]
pub(crate) struct WordRuns<'a> {
    words: &'a [u64],
    /// The word being walked (`words.len()` or more when done).
    index: usize,
    /// The bits of that word not yet reported.
    rest: u64,
}

impl<'a> WordRuns<'a> {
    pub(crate) fn new(words: &'a [u64]) -> WordRuns<'a> {
        WordRuns {
            words,
            index: 0,
            rest: words.first().copied().unwrap_or(0),
        }
    }
}

impl Iterator for WordRuns<'_> {
    type Item = (u32, u32);

    fn next(&mut self) -> Option<(u32, u32)> {
        while self.rest == 0 {
            if self.index >= self.words.len() {
                return None;
            }
            self.index += 1;
            self.rest = *self.words.get(self.index)?;
        }
        let base = self.index as u32 * 64;
        let tz = self.rest.trailing_zeros();
        // The zeros of the word from the run's first bit up: the lowest one ends the run.
        let zeros = !self.rest & (!0u64 << tz);
        if zeros != 0 {
            let end = zeros.trailing_zeros();
            self.rest &= !0u64 << end;
            return Some((base + tz, base + end));
        }
        // The run reaches the end of the word: follow it through all-ones words.
        loop {
            self.index += 1;
            let Some(&w) = self.words.get(self.index) else {
                self.rest = 0;
                return Some((base + tz, self.words.len() as u32 * 64));
            };
            if w != !0 {
                let end = (!w).trailing_zeros();
                self.rest = w & (!0u64 << end);
                return Some((base + tz, self.index as u32 * 64 + end));
            }
        }
    }
}

impl FusedIterator for WordRuns<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs_of(words: &[u64]) -> Vec<(u32, u32)> {
        WordRuns::new(words).collect()
    }

    #[test]
    fn word_runs_cross_words_and_end() {
        assert_eq!(runs_of(&[]), []);
        assert_eq!(runs_of(&[0, 0]), []);
        assert_eq!(runs_of(&[0b1011, 0]), [(0, 2), (3, 4)]);
        assert_eq!(runs_of(&[1 << 63, !0, 1]), [(63, 129)]);
        assert_eq!(runs_of(&[0, !0]), [(64, 128)]);
        assert_eq!(runs_of(&[!0, 0, 1 << 5]), [(0, 64), (133, 134)]);
        let mut it = WordRuns::new(&[1]);
        assert_eq!(it.next(), Some((0, 1)));
        assert_eq!(it.next(), None);
        assert_eq!(it.next(), None);
    }

    #[test]
    fn count_and_runs_across_words() {
        assert_eq!(count_and_runs(&[0b0110_1101]), (5, 3));
        // A run through a word boundary counts once.
        assert_eq!(count_and_runs(&[1 << 63, 1, 1 << 63]), (3, 2));
    }

    #[test]
    fn bits_keep_their_counts() {
        let mut b = Bits::zeroed();
        assert_eq!(b.set_range(10, 20), 11);
        assert_eq!(b.set_range(30, 200), 171);
        assert_eq!(b.set_range(21, 29), 9); // joins the two runs
        assert_eq!((b.count, b.runs), (191, 1));
        assert_eq!(b.set_range(63, 64), 0);
        assert!(b.clear_bit(100));
        assert!(!b.clear_bit(100));
        assert_eq!((b.count, b.runs), (190, 2));
        assert_eq!(b.set_range(65535, 65535), 1);
        assert!(b.clear_bit(10));
        assert!(b.clear_bit(200));
        let (count, runs) = (b.count, b.runs);
        b.recount();
        assert_eq!((b.count, b.runs), (count, runs));
        assert_eq!(b.to_list(), [(11, 99), (101, 199), (65535, 65535)]);
        assert_eq!(*Bits::from_list(&b.to_list()), *b);
    }

    #[test]
    fn list_add_joins_and_refuses_past_the_limit() {
        let mut l = vec![(2, 4), (10, 12)];
        assert_eq!(list_add(&mut l, 5, 5).ok(), Some(1));
        assert_eq!(l, [(2, 5), (10, 12)]);
        assert_eq!(list_add(&mut l, 0, 0).ok(), Some(1));
        assert_eq!(list_add(&mut l, 7, 9).ok(), Some(3));
        assert_eq!(l, [(0, 0), (2, 5), (7, 12)]);
        assert_eq!(list_add(&mut l, 1, 6).ok(), Some(2));
        assert_eq!(l, [(0, 12)]);
        assert_eq!(list_add(&mut l, 65535, 65535).ok(), Some(1));
        assert_eq!(list_add(&mut l, 3, 4).ok(), Some(0));
        let mut full: Vec<(u16, u16)> = (0..LIST_MAX_RUNS as u16).map(|i| (2 * i, 2 * i)).collect();
        assert!(list_add(&mut full, 60000, 60000).is_err());
        assert_eq!(full.len(), LIST_MAX_RUNS);
        assert_eq!(list_add(&mut full, 1, 1).ok(), Some(1)); // joins two: fewer runs
        assert_eq!(full.len(), LIST_MAX_RUNS - 1);
    }

    #[test]
    fn list_algebra() {
        let p = [(0, 3), (10, 20), (30, 30), (65530, 65535)];
        let q = [(2, 12), (21, 29), (31, 40), (65535, 65535)];
        assert_eq!(list_or(&p, &q), [(0, 40), (65530, 65535)]);
        assert_eq!(list_or(&p, &[]), p);
        assert_eq!(list_and(&p, &q), [(2, 3), (10, 12), (65535, 65535)]);
        assert_eq!(list_and(&p, &[]), []);
        assert_eq!(
            list_and_not(&p, &q),
            [(0, 1), (13, 20), (30, 30), (65530, 65534)]
        );
        assert_eq!(list_and_not(&q, &p), [(4, 9), (21, 29), (31, 40)]);
        assert_eq!(list_and_not(&[(0, 65535)], &q)[0], (0, 1));
        assert_eq!(list_complement(&p, 65536), [(4, 9), (21, 29), (31, 65529)]);
        assert_eq!(list_complement(&[(1, 2)], 3), [(0, 0)]);
        assert_eq!(list_complement(&[], 5), [(0, 4)]);
    }

    #[test]
    fn list_clear_splits_and_refuses_past_the_limit() {
        let mut l = vec![(2, 6)];
        assert_eq!(list_clear(&mut l, 1).ok(), Some(false));
        assert_eq!(list_clear(&mut l, 7).ok(), Some(false));
        assert_eq!(list_clear(&mut l, 4).ok(), Some(true));
        assert_eq!(l, [(2, 3), (5, 6)]);
        assert_eq!(list_clear(&mut l, 2).ok(), Some(true));
        assert_eq!(list_clear(&mut l, 6).ok(), Some(true));
        assert_eq!(l, [(3, 3), (5, 5)]);
        assert_eq!(list_clear(&mut l, 3).ok(), Some(true));
        assert_eq!(l, [(5, 5)]);
        let mut full: Vec<(u16, u16)> = (0..LIST_MAX_RUNS as u16)
            .map(|i| (4 * i, 4 * i + 2))
            .collect();
        assert!(list_clear(&mut full, 1).is_err());
        assert_eq!(list_clear(&mut full, 0).ok(), Some(true));
    }
}
