//! A disk's index at one point: one entry per block (its id, or zero for an all-zero block,
//! and the block's xxh3-128 fingerprint), cut into chunks that are themselves stored as
//! content-addressed blobs, in a tree of fixed shape.
//!
//! - A *leaf* holds the entries of [`FANOUT`] consecutive blocks (the last one fewer): the
//!   byte `L`, then 48 bytes an entry (id, fingerprint; all zero for a zero block).
//! - A *node* holds the ids of [`FANOUT`] consecutive chunks of the level below: the byte
//!   `N`, then 32 bytes a child.
//! - A chunk whose entries are all zero has the zero id and is stored nowhere, so a thin
//!   disk's empty terabytes cost nothing, and a region that did not change between two
//!   points has the same chunk ids in both: a new point costs only the chunks above what
//!   changed. A 15 TiB disk's point is one root id.
//!
//! The shape follows from the disk's size alone (blocks, leaves, levels), so every chunk's
//! length is known before it is read, and checked.

use std::collections::HashMap;

use vdisk_core::{Error, Result};

use crate::crypto::{BlockId, ID_LEN};

/// Entries of a leaf, children of a node.
pub const FANOUT: u64 = 1024;
/// Bytes of a leaf entry.
pub const LEAF_ENTRY: usize = ID_LEN + 16;
/// Largest chunk: a full leaf.
pub const MAX_CHUNK: usize = 1 + FANOUT as usize * LEAF_ENTRY;

/// One block of a disk at a point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LeafEntry {
    /// The block's id ([`BlockId::ZERO`] for an all-zero block).
    pub id: BlockId,
    /// xxh3-128 of the block (0 for an all-zero block): what a hash-based incremental
    /// compares, so that only blocks whose fingerprint changed are hashed with BLAKE3.
    pub fp: u128,
}

impl LeafEntry {
    /// The entry of an all-zero block.
    pub const ZERO: LeafEntry = LeafEntry {
        id: BlockId::ZERO,
        fp: 0,
    };

    /// Whether this is an all-zero block.
    pub fn is_zero(&self) -> bool {
        self.id.is_zero()
    }
}

/// The shape of a disk's tree: how many chunks each level has (level 0: leaves).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    /// Blocks of the disk.
    pub blocks: u64,
    /// Chunks per level, leaves first; the last level has one chunk, the root.
    pub levels: Vec<u64>,
}

impl Shape {
    /// The shape of a disk of `size` bytes in blocks of `block_size` (`size` > 0).
    pub fn new(size: u64, block_size: u64) -> Result<Shape> {
        if size == 0 || block_size == 0 {
            return Err(Error::invalid("a disk of 0 bytes has no index"));
        }
        let blocks = size.div_ceil(block_size);
        let mut levels = vec![blocks.div_ceil(FANOUT)];
        while *levels.last().unwrap_or(&1) > 1 {
            let n = levels.last().copied().unwrap_or(1).div_ceil(FANOUT);
            levels.push(n);
        }
        Ok(Shape { blocks, levels })
    }

    /// Leaves.
    pub fn leaves(&self) -> u64 {
        self.levels[0]
    }

    /// Levels of nodes above the leaves.
    pub fn depth(&self) -> usize {
        self.levels.len() - 1
    }

    /// Items (entries or children) of chunk `j` of level `k`.
    pub fn items(&self, k: usize, j: u64) -> u64 {
        let below = if k == 0 {
            self.blocks
        } else {
            self.levels[k - 1]
        };
        below.saturating_sub(j * FANOUT).min(FANOUT)
    }
}

/// The bytes of a leaf.
pub fn encode_leaf(entries: &[LeafEntry]) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + entries.len() * LEAF_ENTRY);
    v.push(b'L');
    for e in entries {
        v.extend_from_slice(&e.id.0);
        v.extend_from_slice(&e.fp.to_le_bytes());
    }
    v
}

/// A leaf of `n` entries from its bytes.
pub fn decode_leaf(bytes: &[u8], n: u64) -> Result<Vec<LeafEntry>> {
    if bytes.first() != Some(&b'L') || bytes.len() as u64 != 1 + n * LEAF_ENTRY as u64 {
        return Err(Error::corrupt(format!(
            "a chunk of a disk's index is not a leaf of {n} blocks"
        )));
    }
    let out: Vec<LeafEntry> = bytes[1..]
        .chunks_exact(LEAF_ENTRY)
        .map(|c| LeafEntry {
            id: BlockId::from_slice(&c[..ID_LEN]).unwrap_or_default(),
            fp: u128::from_le_bytes(c[ID_LEN..].try_into().unwrap_or([0; 16])),
        })
        .collect();
    if out.iter().any(|e| e.id.is_zero() && e.fp != 0) {
        return Err(Error::corrupt(
            "a leaf holds a zero block with a fingerprint",
        ));
    }
    Ok(out)
}

/// The bytes of a node.
pub fn encode_node(children: &[BlockId]) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + children.len() * ID_LEN);
    v.push(b'N');
    for c in children {
        v.extend_from_slice(&c.0);
    }
    v
}

/// A node of `n` children from its bytes.
pub fn decode_node(bytes: &[u8], n: u64) -> Result<Vec<BlockId>> {
    if bytes.first() != Some(&b'N') || bytes.len() as u64 != 1 + n * ID_LEN as u64 {
        return Err(Error::corrupt(format!(
            "a chunk of a disk's index is not a node of {n} chunks"
        )));
    }
    Ok(bytes[1..]
        .chunks_exact(ID_LEN)
        .map(|c| BlockId::from_slice(c).unwrap_or_default())
        .collect())
}

/// Builds a disk's tree from its leaves, in order: each chunk is handed to `store` (which
/// returns its id) as soon as it is complete, so memory holds one chunk per level.
pub struct TreeBuilder {
    shape: Shape,
    /// Items of the chunk being filled, per level (level 0: leaf ids).
    pending: Vec<Vec<BlockId>>,
    /// Chunks handed up, per level.
    done: Vec<u64>,
    root: Option<BlockId>,
}

impl TreeBuilder {
    /// A builder for a tree of `shape`.
    pub fn new(shape: Shape) -> Self {
        let n = shape.levels.len();
        TreeBuilder {
            shape,
            pending: vec![Vec::new(); n],
            done: vec![0; n],
            root: None,
        }
    }

    /// Add the next leaf's id (leaves in order); `store` stores a node and returns its id.
    pub fn push_leaf(
        &mut self,
        id: BlockId,
        store: &mut dyn FnMut(&[u8]) -> Result<BlockId>,
    ) -> Result<()> {
        self.push(0, id, store)
    }

    fn push(
        &mut self,
        k: usize,
        id: BlockId,
        store: &mut dyn FnMut(&[u8]) -> Result<BlockId>,
    ) -> Result<()> {
        if self.done[k] >= self.shape.levels[k] {
            return Err(Error::invalid("more chunks than the disk's tree has"));
        }
        self.done[k] += 1;
        if k == self.shape.depth() {
            self.root = Some(id);
            return Ok(());
        }
        self.pending[k].push(id);
        let total = self.shape.levels[k];
        if self.pending[k].len() as u64 == FANOUT || self.done[k] == total {
            let children = std::mem::take(&mut self.pending[k]);
            let node = if children.iter().all(BlockId::is_zero) {
                BlockId::ZERO
            } else {
                store(&encode_node(&children))?
            };
            self.push(k + 1, node, store)?;
        }
        Ok(())
    }

    /// The root id, once every leaf was pushed.
    pub fn finish(self) -> Result<BlockId> {
        self.root
            .ok_or_else(|| Error::invalid("a disk's tree was left incomplete"))
    }
}

/// Fetches a chunk of a tree by its id.
type Fetch<'a> = dyn Fn(&BlockId) -> Result<Vec<u8>> + Send + Sync + 'a;

/// Reads a disk's tree: leaves by number, with the nodes on the way kept.
pub struct TreeReader<'a> {
    shape: Shape,
    root: BlockId,
    fetch: Box<Fetch<'a>>,
    nodes: HashMap<(usize, u64), Vec<BlockId>>,
}

impl<'a> TreeReader<'a> {
    /// A reader of the tree of `shape` under `root`; `fetch` returns a chunk's bytes
    /// (checked against its id).
    pub fn new(
        shape: Shape,
        root: BlockId,
        fetch: impl Fn(&BlockId) -> Result<Vec<u8>> + Send + Sync + 'a,
    ) -> Self {
        TreeReader {
            shape,
            root,
            fetch: Box::new(fetch),
            nodes: HashMap::new(),
        }
    }

    /// The tree's shape.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// The id of chunk `j` of level `k`.
    pub fn chunk_id(&mut self, k: usize, j: u64) -> Result<BlockId> {
        let depth = self.shape.depth();
        if k > depth || j >= self.shape.levels[k] {
            return Err(Error::invalid("no such chunk in the disk's index"));
        }
        if k == depth {
            return Ok(self.root);
        }
        let parent = j / FANOUT;
        let node_id = self.chunk_id(k + 1, parent)?;
        if node_id.is_zero() {
            return Ok(BlockId::ZERO);
        }
        if !self.nodes.contains_key(&(k + 1, parent)) {
            // Only the nodes on the current path are kept: a leaf walk in order touches each
            // node once.
            self.nodes.retain(|&(level, _), _| level != k + 1);
            let bytes = (self.fetch)(&node_id)?;
            let children = decode_node(&bytes, self.shape.items(k + 1, parent))?;
            self.nodes.insert((k + 1, parent), children);
        }
        Ok(self.nodes[&(k + 1, parent)][(j % FANOUT) as usize])
    }

    /// Where the largest all-zero chunk holding block `b` ends (a block number, at most the
    /// disk's blocks), or `None` when the leaf of `b` is stored. Nothing under a zero chunk
    /// is stored, so a walk over a thin disk's blocks skips its empty terabytes a node at a
    /// time instead of a block (or a leaf) at a time.
    pub fn zero_until(&mut self, b: u64) -> Result<Option<u64>> {
        if b >= self.shape.blocks {
            return Err(Error::invalid("no such block in the disk's index"));
        }
        for k in (0..=self.shape.depth()).rev() {
            // Blocks under one chunk of level k (past the disk's: the root covers it all).
            let span = u32::try_from(k + 1)
                .ok()
                .and_then(|e| FANOUT.checked_pow(e))
                .unwrap_or(u64::MAX);
            let j = b / span;
            if self.chunk_id(k, j)?.is_zero() {
                return Ok(Some(
                    j.saturating_add(1)
                        .saturating_mul(span)
                        .min(self.shape.blocks),
                ));
            }
        }
        Ok(None)
    }

    /// The entries of leaf `j`.
    pub fn leaf(&mut self, j: u64) -> Result<Vec<LeafEntry>> {
        let n = self.shape.items(0, j);
        let id = self.chunk_id(0, j)?;
        if id.is_zero() {
            return Ok(vec![LeafEntry::ZERO; n as usize]);
        }
        decode_leaf(&(self.fetch)(&id)?, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn shapes_follow_the_size() {
        let s = Shape::new(1, 65536).unwrap();
        assert_eq!((s.blocks, s.levels.clone(), s.depth()), (1, vec![1], 0));
        let s = Shape::new(15 << 40, 65536).unwrap();
        assert_eq!(s.levels, vec![245_760, 240, 1]);
        assert_eq!(s.items(0, 245_759), 1024);
        assert_eq!(s.items(1, 239), 1024);
        assert_eq!(s.items(2, 0), 240);
        let s = Shape::new(1_000_000, 65536).unwrap();
        assert_eq!((s.blocks, s.items(0, 0)), (16, 16));
        assert!(Shape::new(0, 65536).is_err());
    }

    #[test]
    fn chunks_round_trip_and_wrong_lengths_are_refused() {
        let e = LeafEntry {
            id: BlockId([3; 32]),
            fp: 77,
        };
        let leaf = encode_leaf(&[e, LeafEntry::ZERO]);
        assert_eq!(decode_leaf(&leaf, 2).unwrap(), [e, LeafEntry::ZERO]);
        assert!(decode_leaf(&leaf, 1).is_err());
        assert!(decode_node(&leaf, 2).is_err());
        let node = encode_node(&[BlockId([1; 32])]);
        assert_eq!(decode_node(&node, 1).unwrap(), [BlockId([1; 32])]);
        let mut bad = encode_leaf(&[LeafEntry::ZERO]);
        bad[40] = 1;
        assert!(decode_leaf(&bad, 1).is_err());
    }

    /// A tree of a disk with data in a few leaves only: empty regions cost nothing, and the
    /// reader gives back every leaf.
    #[test]
    fn trees_store_only_what_is_not_zero_and_read_back() {
        // 3 levels: more than 1024 leaves.
        let block = 4096;
        let size = (FANOUT * FANOUT + 5) * block;
        let shape = Shape::new(size, block).unwrap();
        assert_eq!(shape.depth(), 2);
        let chunks = Mutex::new(HashMap::<BlockId, Vec<u8>>::new());
        let mut store = |bytes: &[u8]| -> Result<BlockId> {
            let id = BlockId(*blake3::hash(bytes).as_bytes());
            chunks.lock().unwrap().insert(id, bytes.to_vec());
            Ok(id)
        };
        let mut b = TreeBuilder::new(shape.clone());
        let data_leaves = [0u64, 700, 1024];
        let mut leaves = HashMap::new();
        for j in 0..shape.leaves() {
            let id = if data_leaves.contains(&j) {
                let n = shape.items(0, j);
                let entries: Vec<LeafEntry> = (0..n)
                    .map(|i| LeafEntry {
                        id: BlockId([(i % 200 + 1) as u8; 32]),
                        fp: u128::from(i as u32) + u128::from(j),
                    })
                    .collect();
                let bytes = encode_leaf(&entries);
                leaves.insert(j, entries);
                store(&bytes).unwrap()
            } else {
                BlockId::ZERO
            };
            b.push_leaf(id, &mut store).unwrap();
        }
        let root = b.finish().unwrap();
        // Three leaves and their nodes: 2 nodes at level 1 and the root.
        assert_eq!(chunks.lock().unwrap().len(), 3 + 2 + 1);
        let fetch = |id: &BlockId| -> Result<Vec<u8>> {
            chunks
                .lock()
                .unwrap()
                .get(id)
                .cloned()
                .ok_or_else(|| Error::corrupt("missing"))
        };
        let mut r = TreeReader::new(shape.clone(), root, fetch);
        for j in [0u64, 1, 700, 1023, 1024] {
            let got = r.leaf(j).unwrap();
            match leaves.get(&j) {
                Some(want) => assert_eq!(&got, want),
                None => assert!(got.iter().all(LeafEntry::is_zero)),
            }
        }
        assert_eq!(r.leaf(1024).unwrap().len(), 5);
        assert!(r.leaf(1025).is_err());
        // Zero runs end where the largest zero chunk does: a leaf, or a node's 1024 leaves.
        assert_eq!(r.zero_until(0).unwrap(), None);
        assert_eq!(r.zero_until(FANOUT).unwrap(), Some(2 * FANOUT));
        assert_eq!(r.zero_until(700 * FANOUT - 1).unwrap(), Some(700 * FANOUT));
        assert_eq!(r.zero_until(701 * FANOUT).unwrap(), Some(702 * FANOUT));
        assert_eq!(r.zero_until(700 * FANOUT).unwrap(), None);
        assert_eq!(r.zero_until(1024 * FANOUT).unwrap(), None);
        assert!(r.zero_until(shape.blocks).is_err());
        // Above a zero node, the whole node's blocks at once.
        let size = (3 * FANOUT * FANOUT) * block;
        let shape = Shape::new(size, block).unwrap();
        let mut b = TreeBuilder::new(shape.clone());
        for j in 0..shape.leaves() {
            let id = if j == 2 * FANOUT + 1 {
                store(&encode_leaf(&vec![leaves[&0][0]; FANOUT as usize])).unwrap()
            } else {
                BlockId::ZERO
            };
            b.push_leaf(id, &mut store).unwrap();
        }
        let root = b.finish().unwrap();
        let mut r = TreeReader::new(shape.clone(), root, fetch);
        assert_eq!(r.zero_until(5).unwrap(), Some(FANOUT * FANOUT));
        assert_eq!(
            r.zero_until(FANOUT * FANOUT).unwrap(),
            Some(2 * FANOUT * FANOUT)
        );
        assert_eq!(
            r.zero_until(2 * FANOUT * FANOUT).unwrap(),
            Some((2 * FANOUT + 1) * FANOUT)
        );
        assert_eq!(r.zero_until((2 * FANOUT + 1) * FANOUT).unwrap(), None);
        // Past it, under the same stored node: a leaf at a time.
        assert_eq!(
            r.zero_until((2 * FANOUT + 2) * FANOUT).unwrap(),
            Some((2 * FANOUT + 3) * FANOUT)
        );
        assert_eq!(r.zero_until(shape.blocks - 1).unwrap(), Some(shape.blocks));
        // A disk of zeros: one run.
        let mut r = TreeReader::new(
            shape.clone(),
            BlockId::ZERO,
            |_: &BlockId| -> Result<Vec<u8>> { Err(Error::corrupt("nothing is stored")) },
        );
        assert_eq!(r.zero_until(123).unwrap(), Some(shape.blocks));
    }
}
