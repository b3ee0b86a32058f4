//! Building a map from its runs, in block order: how decode, the algebra, resampling and
//! resizing make their results, in time proportional to the runs (and the dense chunks)
//! written, never to the disk size.

use std::collections::BTreeMap;

use crate::chunk::{
    chunk_len, count_and_runs, Bits, Node, WordRuns, CHUNK_BLOCKS, CHUNK_MASK, CHUNK_SHIFT,
    CHUNK_WORDS, LIST_MAX_RUNS,
};
use crate::ChangeMap;

/// A map under construction. Runs and chunks must come in increasing block order; a run may
/// overlap or touch the one before it (only its part past the blocks already added counts),
/// so that sorted sources can be fed without joining them first.
pub(crate) struct Builder {
    size: u64,
    granularity: u64,
    block_count: u64,
    /// Finished nodes, in chunk order.
    nodes: Vec<(u64, Node)>,
    count: u64,
    /// The chunk receiving runs, as a list or, past [`LIST_MAX_RUNS`] runs, as bits.
    open: Option<(u64, Node)>,
    /// Where the blocks added so far end.
    end: u64,
}

impl Builder {
    /// An empty map of this shape (already checked by the caller).
    pub(crate) fn new(size: u64, granularity: u64, block_count: u64) -> Builder {
        Builder {
            size,
            granularity,
            block_count,
            nodes: Vec::new(),
            count: 0,
            open: None,
            end: 0,
        }
    }

    /// An empty map of the shape of `m`.
    pub(crate) fn like(m: &ChangeMap) -> Builder {
        Builder::new(m.size, m.granularity, m.block_count)
    }

    /// Adds blocks `first..end` (clipped to the block count). Blocks before the end of what
    /// was added already are skipped.
    pub(crate) fn push_run(&mut self, first: u64, end: u64) {
        let first = first.max(self.end);
        let end = end.min(self.block_count);
        if first >= end {
            return;
        }
        self.end = end;
        let (kf, kl) = (first >> CHUNK_SHIFT, (end - 1) >> CHUNK_SHIFT);
        if kf == kl {
            self.add_piece(
                kf,
                (first & CHUNK_MASK) as u32,
                ((end - 1) & CHUNK_MASK) as u32,
            );
            return;
        }
        let mut full_from = kf;
        if first & CHUNK_MASK != 0 {
            self.add_piece(kf, (first & CHUNK_MASK) as u32, CHUNK_MASK as u32);
            full_from = kf + 1;
        }
        // The last chunk is whole when `end` is its end: a chunk boundary or the map's end.
        let last_whole = end & CHUNK_MASK == 0 || end == self.block_count;
        let full_to = if last_whole { kl + 1 } else { kl };
        if full_from < full_to {
            self.close();
            self.count += blocks_in(self.block_count, full_from, full_to);
            self.put_full(full_from, full_to);
        }
        if !last_whole {
            self.add_piece(kl, 0, ((end - 1) & CHUNK_MASK) as u32);
        }
    }

    /// Sets the blocks of chunk `k` whose bits are set in `words` (at most [`CHUNK_WORDS`];
    /// bits past the block count are ignored). The chunk must come after everything added.
    pub(crate) fn push_words(&mut self, k: u64, words: &[u64]) {
        debug_assert!(words.len() <= CHUNK_WORDS);
        let base = k << CHUNK_SHIFT;
        if base >= self.block_count || base < self.end {
            debug_assert!(
                base < self.block_count && base >= self.end,
                "chunk {k} out of order"
            );
            return;
        }
        self.close();
        let len = chunk_len(self.block_count, k);
        self.end = base + u64::from(len);
        if u64::from(len) < CHUNK_BLOCKS {
            // The map's last chunk: bits past its end do not count.
            let mut b = Bits::from_words(words);
            clip_bits(&mut b, len);
            self.count += u64::from(b.count);
            self.put_bits(k, b);
            return;
        }
        let (count, runs) = count_and_runs(words);
        self.count += u64::from(count);
        if runs as usize <= LIST_MAX_RUNS {
            let list = WordRuns::new(words)
                .map(|(s, e)| (s as u16, (e - 1) as u16))
                .collect();
            self.put_list(k, list);
        } else {
            self.nodes.push((k, Node::Bits(Bits::from_words(words))));
        }
    }

    /// Sets the blocks of chunk `k` in the run list `list` (sorted, maximal, inside the
    /// chunk, of any length). The chunk must come after everything added.
    pub(crate) fn push_list(&mut self, k: u64, list: Vec<(u16, u16)>) {
        let base = k << CHUNK_SHIFT;
        if base >= self.block_count || base < self.end {
            debug_assert!(
                base < self.block_count && base >= self.end,
                "chunk {k} out of order"
            );
            return;
        }
        self.close();
        self.end = base + u64::from(chunk_len(self.block_count, k));
        self.count += list
            .iter()
            .map(|&(lo, hi)| u64::from(hi - lo) + 1)
            .sum::<u64>();
        if list.len() > LIST_MAX_RUNS {
            self.nodes.push((k, Node::Bits(Bits::from_list(&list))));
        } else {
            self.put_list(k, list);
        }
    }

    /// The map.
    pub(crate) fn finish(mut self) -> ChangeMap {
        self.close();
        ChangeMap {
            size: self.size,
            granularity: self.granularity,
            block_count: self.block_count,
            count: self.count,
            // Sorted already: collecting builds the tree in one pass.
            nodes: self.nodes.into_iter().collect::<BTreeMap<_, _>>(),
        }
    }

    /// Adds offsets `lo..=hi` of chunk `k`, after everything in it so far.
    fn add_piece(&mut self, k: u64, lo: u32, hi: u32) {
        if self.open.as_ref().map(|(open, _)| *open) != Some(k) {
            self.close();
            self.open = Some((k, Node::List(Vec::new())));
        }
        self.count += u64::from(hi - lo + 1);
        let Some((_, node)) = &mut self.open else {
            return;
        };
        match node {
            Node::List(list) => {
                if let Some(last) = list.last_mut() {
                    if u32::from(last.1) + 1 >= lo {
                        last.1 = last.1.max(hi as u16);
                        return;
                    }
                }
                if list.len() < LIST_MAX_RUNS {
                    list.push((lo as u16, hi as u16));
                } else {
                    let mut bits = Bits::from_list(list);
                    bits.fill(lo, hi);
                    *node = Node::Bits(bits);
                }
            }
            // Counted when the chunk is closed.
            Node::Bits(bits) => bits.fill(lo, hi),
            Node::Full(_) => {}
        }
    }

    /// Turns the open chunk into a node.
    fn close(&mut self) {
        let Some((k, node)) = self.open.take() else {
            return;
        };
        match node {
            Node::List(list) => self.put_list(k, list),
            Node::Bits(mut bits) => {
                bits.recount();
                self.put_bits(k, bits);
            }
            Node::Full(n) => self.put_full(k, k + n),
        }
    }

    /// Adds chunk `k` held as bits (counted), in its canonical form.
    fn put_bits(&mut self, k: u64, bits: Box<Bits>) {
        if bits.runs as usize <= LIST_MAX_RUNS {
            self.put_list(k, bits.to_list());
        } else {
            self.nodes.push((k, Node::Bits(bits)));
        }
    }

    /// Adds chunk `k` held as a list, in its canonical form.
    fn put_list(&mut self, k: u64, list: Vec<(u16, u16)>) {
        match list[..] {
            [] => {}
            [(0, last)] if u32::from(last) + 1 == chunk_len(self.block_count, k) => {
                self.put_full(k, k + 1)
            }
            _ => self.nodes.push((k, Node::List(list))),
        }
    }

    /// Adds chunks `k0..k1` as full, joined to a full stretch that ends at `k0`.
    fn put_full(&mut self, k0: u64, k1: u64) {
        if let Some((key, Node::Full(n))) = self.nodes.last_mut() {
            if *key + *n == k0 {
                *n += k1 - k0;
                return;
            }
        }
        self.nodes.push((k0, Node::Full(k1 - k0)));
    }
}

/// Blocks of a map of `block_count` blocks in chunks `k0..k1`.
pub(crate) fn blocks_in(block_count: u64, k0: u64, k1: u64) -> u64 {
    (k1 << CHUNK_SHIFT).min(block_count) - (k0 << CHUNK_SHIFT)
}

/// Clears the bits at offsets `len..` of a chunk and recounts it.
pub(crate) fn clip_bits(b: &mut Bits, len: u32) {
    let (w, bit) = ((len / 64) as usize, len % 64);
    if w < CHUNK_WORDS {
        b.words[w] &= (1u64 << bit) - 1;
        b.words[w + 1..].fill(0);
    }
    b.recount();
}
