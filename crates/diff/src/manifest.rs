//! Hash manifests: the xxh3-128 of every block of a disk, so that a later diff needs only the
//! new disk.
//!
//! Version 2 (written by vdisk now) keeps only what holds data: the disk is cut into windows
//! of 64 MiB (`window_blocks` blocks), and only windows with a block that is not all zero are
//! stored, each as its index, a bitmap of its non-zero blocks and their hashes. A block not
//! stored is all zero. So a manifest costs 16 bytes per block of data plus 8 bytes and a
//! 128-byte bitmap (at 64 KiB blocks) per window holding data — nothing for empty ranges,
//! however large the disk. Layout (little-endian):
//!
//! ```text
//! magic "VDHASHES" | version u32 = 2 | flags u32 = 0 | size u64 | granularity u64 |
//! window_blocks u64
//! per window holding data, in increasing order:
//!     window u64 | bitmap: window_blocks bits, rounded up to whole u64 words |
//!     16 bytes per set bit: the hashes of those blocks, in block order
//! windows u64 (how many were stored) | crc32 u32 of everything before it
//! ```
//!
//! Version 1 (dense: every block's hash, `VDHASHES`, version 1, size, granularity, block
//! count, 16 bytes per block, crc32) is still read.
//!
//! A manifest is read through positional reads ([`ManifestBytes`]: a file, or bytes in
//! memory), window by window, so reading one costs memory for its index (16 bytes per window
//! holding data) and one window at a time, never the whole file.

use std::io::Write;

use vdisk_core::{Error, Granularity, Result};

use crate::block_hash;

/// The first 8 bytes of a manifest.
pub const MANIFEST_MAGIC: &[u8; 8] = b"VDHASHES";
/// Disk bytes per window of a version 2 manifest.
const WINDOW_BYTES: u64 = 64 << 20;
const V1_HEADER: u64 = 40;
const V2_HEADER: u64 = 40;
const TRAILER: u64 = 12;

/// Where a manifest's bytes are read from.
pub trait ManifestBytes: Send + Sync {
    /// Length in bytes.
    fn len(&self) -> u64;
    /// Whether there are no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fill `buf` from `offset` (the range lies inside the bytes).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;
}

impl ManifestBytes for [u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let s = usize::try_from(offset).map_err(|_| Error::corrupt("manifest offset"))?;
        let src = self
            .get(s..s + buf.len())
            .ok_or_else(|| Error::corrupt("manifest is truncated"))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

impl ManifestBytes for Vec<u8> {
    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.as_slice().read_at(buf, offset)
    }
}

impl<T: ManifestBytes + ?Sized> ManifestBytes for &T {
    fn len(&self) -> u64 {
        (**self).len()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        (**self).read_at(buf, offset)
    }
}

impl ManifestBytes for std::fs::File {
    fn len(&self) -> u64 {
        self.metadata().map(|m| m.len()).unwrap_or(0)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        use std::os::unix::fs::FileExt;
        self.read_exact_at(buf, offset)
            .map_err(|e| Error::io("cannot read the manifest", e).at(offset))
    }
}

/// The bytes of a manifest file, read with positional reads (no map: a manifest of a large
/// disk is read a window at a time, never resident whole).
#[derive(Debug)]
pub struct ManifestFileBytes {
    file: std::fs::File,
    len: u64,
    id: vdisk_core::FileId,
}

impl ManifestBytes for ManifestFileBytes {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.file.read_at(buf, offset)
    }
}

/// How the hashes are laid out.
#[derive(Debug, Clone)]
enum Layout {
    /// Version 1: 16 bytes per block from this offset.
    Dense { hashes_at: u64 },
    /// Version 2: the windows holding data, `(window, offset of its bitmap)`, sorted.
    Sparse { index: Vec<(u64, u64)> },
}

/// A decoded, checked manifest.
#[derive(Debug)]
pub struct Manifest<B> {
    bytes: B,
    size: u64,
    granularity: u64,
    window_blocks: u64,
    layout: Layout,
    zero_full: u128,
    zero_tail: u128,
    /// The windows read last (lookups of nearby blocks, from several threads, read each
    /// window once).
    cache: std::sync::Mutex<Vec<std::sync::Arc<WindowHashes>>>,
}

/// Windows kept by a manifest's cache.
const CACHED_WINDOWS: usize = 8;

/// A manifest read from a file.
pub type ManifestFile = Manifest<ManifestFileBytes>;

/// The hashes of one window of a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowHashes {
    /// The window's first block.
    pub first_block: u64,
    /// Blocks in the window.
    pub blocks: u64,
    /// The hash of each block that is not all zero: (block offset in the window, hash).
    /// Blocks not listed are all zero.
    pub stored: Vec<(u64, u128)>,
}

impl WindowHashes {
    /// Whether every block of the window is all zero.
    pub fn is_zero(&self) -> bool {
        self.stored.is_empty()
    }
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

/// Blocks per window of a version 2 manifest at `granularity`: 64 MiB of disk.
pub fn window_blocks(granularity: u64) -> u64 {
    (WINDOW_BYTES / granularity.max(1)).max(1)
}

/// Bytes of a window's bitmap.
fn bitmap_bytes(window_blocks: u64) -> u64 {
    window_blocks.div_ceil(64) * 8
}

impl Manifest<ManifestFileBytes> {
    /// Open and check the manifest at `path` (errors name the file).
    pub fn open(path: &std::path::Path) -> Result<Self> {
        let file =
            std::fs::File::open(path).map_err(|e| Error::io("cannot open", e).with_path(path))?;
        let meta = file
            .metadata()
            .map_err(|e| Error::io("cannot stat", e).with_path(path))?;
        let bytes = ManifestFileBytes {
            len: meta.len(),
            id: vdisk_io::file_id(&meta),
            file,
        };
        Manifest::decode(bytes).map_err(|e| e.with_path(path))
    }

    /// The file's identity.
    pub fn id(&self) -> vdisk_core::FileId {
        self.bytes.id
    }
}

impl<B> Manifest<B> {
    /// The bytes the manifest is read from.
    pub fn bytes(&self) -> &B {
        &self.bytes
    }
}

impl<B: ManifestBytes> Manifest<B> {
    /// Check and open a manifest (version 1 or 2). Every field and the checksum are checked
    /// before use, reading the bytes once front to back a piece at a time; a damaged
    /// manifest is an error, never a wrong answer.
    pub fn decode(bytes: B) -> Result<Self> {
        let len = bytes.len();
        let mut head = [0u8; 40];
        if len < V1_HEADER + 4 {
            return Err(Error::invalid(
                "not a vdisk hash manifest (no VDHASHES magic)",
            ));
        }
        bytes.read_at(&mut head, 0)?;
        if &head[..8] != MANIFEST_MAGIC {
            return Err(Error::invalid(
                "not a vdisk hash manifest (no VDHASHES magic)",
            ));
        }
        let version = u32_at(&head, 8);
        if u32_at(&head, 12) != 0 {
            return Err(Error::unsupported(
                "manifest uses flags this vdisk does not know",
            ));
        }
        let (size, granularity) = (u64_at(&head, 16), u64_at(&head, 24));
        Granularity::new(granularity)
            .map_err(|e| Error::corrupt(format!("manifest: {}", e.message())))?;
        vdisk_core::check_disk_size(size)
            .map_err(|e| Error::corrupt(format!("manifest: {}", e.message())))?;
        let blocks = size.div_ceil(granularity);
        let zero_full = block_hash(&vec![0u8; granularity as usize]);
        let tail = size % granularity;
        let zero_tail = if tail == 0 {
            zero_full
        } else {
            block_hash(&vec![0u8; tail as usize])
        };
        let mut crc = crc32fast::Hasher::new();
        let layout = match version {
            1 => {
                let count = u64_at(&head, 32);
                if count != blocks {
                    return Err(Error::corrupt(
                        "manifest block count does not match its size and granularity",
                    ));
                }
                if Some(len) != count.checked_mul(16).map(|h| h + V1_HEADER + 4) {
                    return Err(Error::corrupt(format!(
                        "manifest is {len} bytes, its header says {count} blocks (truncated or padded?)"
                    )));
                }
                crc_range(&bytes, &mut crc, 0, len - 4)?;
                let mut stored = [0u8; 4];
                bytes.read_at(&mut stored, len - 4)?;
                if crc.finalize() != u32::from_le_bytes(stored) {
                    return Err(Error::corrupt("manifest checksum does not match (damaged)"));
                }
                Layout::Dense {
                    hashes_at: V1_HEADER,
                }
            }
            2 => {
                let wb = u64_at(&head, 32);
                if wb != window_blocks(granularity) {
                    return Err(Error::corrupt(
                        "manifest window size does not match its granularity",
                    ));
                }
                if len < V2_HEADER + TRAILER {
                    return Err(Error::corrupt("manifest is truncated"));
                }
                crc.update(&head);
                let windows = blocks.div_ceil(wb);
                let bm = bitmap_bytes(wb);
                let body_end = len - TRAILER;
                let mut index = Vec::new();
                let mut pos = V2_HEADER;
                let mut bitmap = vec![0u8; bm as usize];
                let mut last: Option<u64> = None;
                while pos < body_end {
                    let mut w = [0u8; 8];
                    if pos + 8 + bm > body_end {
                        return Err(Error::corrupt("manifest window runs past its end").at(pos));
                    }
                    bytes.read_at(&mut w, pos)?;
                    crc.update(&w);
                    let window = u64::from_le_bytes(w);
                    if window >= windows || last.is_some_and(|l| window <= l) {
                        return Err(Error::corrupt(format!(
                            "manifest window {window} is out of order or past the disk"
                        ))
                        .at(pos));
                    }
                    last = Some(window);
                    bytes.read_at(&mut bitmap, pos + 8)?;
                    crc.update(&bitmap);
                    // Bits past the window's (or the disk's) last block must be clear.
                    let in_window = (blocks - window * wb).min(wb);
                    let set: u64 = bitmap
                        .iter()
                        .enumerate()
                        .map(|(i, byte)| {
                            let mut b = *byte;
                            for bit in 0..8 {
                                if (i as u64) * 8 + bit >= in_window {
                                    b &= !(1u8 << bit);
                                }
                            }
                            u64::from(b.count_ones())
                        })
                        .sum();
                    let all: u64 = bitmap.iter().map(|b| u64::from(b.count_ones())).sum();
                    if set != all || set == 0 {
                        return Err(Error::corrupt(format!(
                            "manifest window {window} has a bad block bitmap"
                        ))
                        .at(pos + 8));
                    }
                    let hashes = pos + 8 + bm;
                    let end = hashes
                        .checked_add(set * 16)
                        .filter(|&e| e <= body_end)
                        .ok_or_else(|| {
                            Error::corrupt(format!("manifest window {window} is truncated")).at(pos)
                        })?;
                    crc_range(&bytes, &mut crc, hashes, end)?;
                    index.push((window, pos + 8));
                    pos = end;
                }
                let mut trailer = [0u8; 12];
                bytes.read_at(&mut trailer, body_end)?;
                crc.update(&trailer[..8]);
                if u64_at(&trailer, 0) != index.len() as u64 {
                    return Err(Error::corrupt(
                        "manifest window count does not match its windows (truncated?)",
                    ));
                }
                if crc.finalize() != u32_at(&trailer, 8) {
                    return Err(Error::corrupt("manifest checksum does not match (damaged)"));
                }
                Layout::Sparse { index }
            }
            v => {
                return Err(Error::unsupported(format!(
                    "manifest version {v} (vdisk reads versions 1 and 2)"
                )))
            }
        };
        Ok(Manifest {
            window_blocks: match layout {
                Layout::Dense { .. } => window_blocks(granularity),
                Layout::Sparse { .. } => u64_at(&head, 32),
            },
            bytes,
            size,
            granularity,
            layout,
            zero_full,
            zero_tail,
            cache: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Disk size the manifest describes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Block size.
    pub fn granularity(&self) -> u64 {
        self.granularity
    }

    /// Number of blocks.
    pub fn block_count(&self) -> u64 {
        self.size.div_ceil(self.granularity)
    }

    /// Blocks per window (64 MiB of disk).
    pub fn window_blocks(&self) -> u64 {
        self.window_blocks
    }

    /// The hash of `len` zero bytes, for `len` a whole block or the disk's last one.
    pub fn zero_hash(&self, len: u64) -> u128 {
        if len == self.granularity {
            self.zero_full
        } else if len == self.size % self.granularity {
            self.zero_tail
        } else {
            block_hash(&vec![0u8; len as usize])
        }
    }

    /// The length of block `b` (the last one may be shorter).
    pub fn block_len(&self, b: u64) -> u64 {
        self.size
            .saturating_sub(b.saturating_mul(self.granularity))
            .min(self.granularity)
    }

    /// Whether window `w` is known to be all zero without reading it (version 2: no window
    /// stored). Version 1 manifests know nothing without reading.
    pub fn window_is_zero(&self, w: u64) -> bool {
        match &self.layout {
            Layout::Sparse { index } => index.binary_search_by_key(&w, |e| e.0).is_err(),
            Layout::Dense { .. } => false,
        }
    }

    /// The hashes of window `w` (blocks `w * window_blocks()` on).
    pub fn window(&self, w: u64) -> Result<WindowHashes> {
        let first = w.saturating_mul(self.window_blocks);
        let blocks = self
            .block_count()
            .saturating_sub(first)
            .min(self.window_blocks);
        let mut stored = Vec::new();
        match &self.layout {
            Layout::Sparse { index } => {
                if let Ok(i) = index.binary_search_by_key(&w, |e| e.0) {
                    let at = index[i].1;
                    let bm = bitmap_bytes(self.window_blocks);
                    let mut bitmap = vec![0u8; bm as usize];
                    self.bytes.read_at(&mut bitmap, at)?;
                    let set: u64 = bitmap.iter().map(|b| u64::from(b.count_ones())).sum();
                    let mut hashes = vec![0u8; (set * 16) as usize];
                    self.bytes.read_at(&mut hashes, at + bm)?;
                    let mut k = 0;
                    for (i, byte) in bitmap.iter().enumerate() {
                        for bit in 0..8 {
                            if byte & (1 << bit) != 0 {
                                let h = u128::from_le_bytes(
                                    hashes[k * 16..k * 16 + 16].try_into().unwrap_or_default(),
                                );
                                stored.push(((i * 8 + bit) as u64, h));
                                k += 1;
                            }
                        }
                    }
                }
            }
            Layout::Dense { hashes_at } => {
                let mut raw = vec![0u8; (blocks * 16) as usize];
                self.bytes.read_at(&mut raw, hashes_at + first * 16)?;
                for (i, c) in raw.chunks_exact(16).enumerate() {
                    let h = u128::from_le_bytes(c.try_into().unwrap_or_default());
                    let b = first + i as u64;
                    if h != self.zero_hash(self.block_len(b)) {
                        stored.push((i as u64, h));
                    }
                }
            }
        }
        Ok(WindowHashes {
            first_block: first,
            blocks,
            stored,
        })
    }

    /// Window `w`, from the cache of recently read windows when it is there.
    pub fn cached_window(&self, w: u64) -> Result<std::sync::Arc<WindowHashes>> {
        let first = w.saturating_mul(self.window_blocks);
        {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(hit) = cache.iter().find(|c| c.first_block == first) {
                return Ok(std::sync::Arc::clone(hit));
            }
        }
        let fresh = std::sync::Arc::new(self.window(w)?);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHED_WINDOWS {
            cache.remove(0);
        }
        cache.push(std::sync::Arc::clone(&fresh));
        Ok(fresh)
    }

    /// The hash of block `b`, or `None` past the end (a zero block's hash is the hash of its
    /// zero bytes).
    pub fn hash(&self, b: u64) -> Result<Option<u128>> {
        if b >= self.block_count() {
            return Ok(None);
        }
        let w = self.cached_window(b / self.window_blocks)?;
        let i = b % self.window_blocks;
        Ok(Some(match w.stored.binary_search_by_key(&i, |e| e.0) {
            Ok(k) => w.stored[k].1,
            Err(_) => self.zero_hash(self.block_len(b)),
        }))
    }

    /// The first window at or after `w` that may hold data (version 2: the next one stored;
    /// version 1: `w`), `None` when none does.
    pub fn next_data_window(&self, w: u64) -> Option<u64> {
        match &self.layout {
            Layout::Sparse { index } => {
                let i = index.partition_point(|e| e.0 < w);
                index.get(i).map(|e| e.0)
            }
            Layout::Dense { .. } => {
                (w < self.block_count().div_ceil(self.window_blocks)).then_some(w)
            }
        }
    }

    /// Windows that hold data (version 2), or every window (version 1), in order.
    pub fn data_windows(&self) -> Vec<u64> {
        match &self.layout {
            Layout::Sparse { index } => index.iter().map(|e| e.0).collect(),
            Layout::Dense { .. } => (0..self.block_count().div_ceil(self.window_blocks)).collect(),
        }
    }
}

/// Feed `crc` the bytes `[start, end)` of `bytes`, a megabyte at a time.
fn crc_range<B: ManifestBytes>(
    bytes: &B,
    crc: &mut crc32fast::Hasher,
    start: u64,
    end: u64,
) -> Result<()> {
    let mut buf = vec![0u8; (end - start).min(1 << 20) as usize];
    let mut off = start;
    while off < end {
        let n = (end - off).min(1 << 20) as usize;
        bytes.read_at(&mut buf[..n], off)?;
        crc.update(&buf[..n]);
        off += n as u64;
    }
    Ok(())
}

/// Writes a version 2 manifest front to back: blocks come in increasing order, each with its
/// hash; blocks never given, and blocks whose hash is that of zeros, are all zero.
pub struct ManifestWriter<W: Write> {
    out: W,
    crc: crc32fast::Hasher,
    size: u64,
    granularity: u64,
    window_blocks: u64,
    /// The window being filled: its index, bitmap words and hashes.
    current: Option<(u64, Vec<u64>, Vec<u128>)>,
    next_block: u64,
    windows: u64,
    zero_full: u128,
    zero_tail: u128,
}

impl<W: Write> ManifestWriter<W> {
    /// Start a manifest of a `size`-byte disk at `granularity`.
    pub fn new(mut out: W, size: u64, granularity: u64) -> Result<Self> {
        Granularity::new(granularity)?;
        let wb = window_blocks(granularity);
        let mut head = Vec::with_capacity(V2_HEADER as usize);
        head.extend_from_slice(MANIFEST_MAGIC);
        head.extend_from_slice(&2u32.to_le_bytes());
        head.extend_from_slice(&0u32.to_le_bytes());
        head.extend_from_slice(&size.to_le_bytes());
        head.extend_from_slice(&granularity.to_le_bytes());
        head.extend_from_slice(&wb.to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head);
        out.write_all(&head)
            .map_err(|e| Error::io("cannot write the manifest", e))?;
        let zero_full = block_hash(&vec![0u8; granularity as usize]);
        let tail = size % granularity;
        let zero_tail = if tail == 0 {
            zero_full
        } else {
            block_hash(&vec![0u8; tail as usize])
        };
        Ok(ManifestWriter {
            out,
            crc,
            size,
            granularity,
            window_blocks: wb,
            current: None,
            next_block: 0,
            windows: 0,
            zero_full,
            zero_tail,
        })
    }

    fn emit(&mut self, bytes: &[u8]) -> Result<()> {
        self.crc.update(bytes);
        self.out
            .write_all(bytes)
            .map_err(|e| Error::io("cannot write the manifest", e))
    }

    fn flush_window(&mut self) -> Result<()> {
        if let Some((w, bits, hashes)) = self.current.take() {
            let mut buf = Vec::with_capacity(8 + bits.len() * 8 + hashes.len() * 16);
            buf.extend_from_slice(&w.to_le_bytes());
            for word in &bits {
                buf.extend_from_slice(&word.to_le_bytes());
            }
            for h in &hashes {
                buf.extend_from_slice(&h.to_le_bytes());
            }
            self.emit(&buf)?;
            self.windows += 1;
        }
        Ok(())
    }

    /// Record the hash of block `block` (blocks in increasing order).
    pub fn push(&mut self, block: u64, hash: u128) -> Result<()> {
        let blocks = self.size.div_ceil(self.granularity);
        if block < self.next_block || block >= blocks {
            return Err(Error::invalid(format!(
                "manifest block {block} is out of order or past the disk"
            )));
        }
        self.next_block = block + 1;
        let len = (self.size - block * self.granularity).min(self.granularity);
        let zero = if len == self.granularity {
            self.zero_full
        } else {
            self.zero_tail
        };
        if hash == zero {
            return Ok(());
        }
        let w = block / self.window_blocks;
        if self.current.as_ref().is_some_and(|c| c.0 != w) {
            self.flush_window()?;
        }
        let words = self.window_blocks.div_ceil(64) as usize;
        let cur = self
            .current
            .get_or_insert_with(|| (w, vec![0u64; words], Vec::new()));
        let i = block % self.window_blocks;
        cur.1[(i / 64) as usize] |= 1 << (i % 64);
        cur.2.push(hash);
        Ok(())
    }

    /// Record the hashes of consecutive blocks from `first`.
    pub fn push_all(&mut self, first: u64, hashes: &[u128]) -> Result<()> {
        for (i, &h) in hashes.iter().enumerate() {
            self.push(first + i as u64, h)?;
        }
        Ok(())
    }

    /// Write the trailer and the checksum.
    pub fn finish(mut self) -> Result<W> {
        self.flush_window()?;
        let count = self.windows.to_le_bytes();
        self.emit(&count)?;
        let crc = self.crc.clone().finalize();
        self.out
            .write_all(&crc.to_le_bytes())
            .map_err(|e| Error::io("cannot write the manifest", e))?;
        Ok(self.out)
    }
}

/// Whether a file's first bytes are a manifest's magic.
pub fn is_manifest(head: &[u8]) -> bool {
    head.starts_with(MANIFEST_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 3-block-and-a-bit disk at 4 KiB: blocks 1 and 3 hold data.
    fn sample() -> Vec<u8> {
        let mut w = ManifestWriter::new(Vec::new(), 3 * 4096 + 100, 4096).unwrap();
        w.push(1, 7).unwrap();
        w.push(3, u128::MAX).unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn round_trips_and_zero_blocks_cost_nothing() {
        let bytes = sample();
        let m = Manifest::decode(bytes.as_slice()).unwrap();
        assert_eq!(
            (m.size(), m.granularity(), m.block_count()),
            (3 * 4096 + 100, 4096, 4)
        );
        assert_eq!(m.hash(1).unwrap(), Some(7));
        assert_eq!(m.hash(3).unwrap(), Some(u128::MAX));
        assert_eq!(m.hash(0).unwrap(), Some(block_hash(&[0u8; 4096])));
        assert_eq!(m.hash(4).unwrap(), None);
        // Header, one window (its index, a bitmap of 16384 blocks, 2 hashes), trailer.
        assert_eq!(bytes.len(), 40 + 8 + 16384 / 8 + 32 + 12);
    }

    #[test]
    fn a_huge_empty_disk_has_a_tiny_manifest() {
        let w = ManifestWriter::new(Vec::new(), 1 << 48, 65536).unwrap();
        let bytes = w.finish().unwrap();
        assert_eq!(bytes.len(), 52);
        let m = Manifest::decode(bytes.as_slice()).unwrap();
        assert!(m.window_is_zero(12345));
        assert_eq!(
            m.hash((1 << 32) - 1).unwrap(),
            Some(block_hash(&[0u8; 65536]))
        );
    }

    #[test]
    fn any_flipped_byte_or_truncation_is_an_error() {
        let bytes = sample();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(Manifest::decode(b.as_slice()).is_err(), "byte {i}");
        }
        for n in 0..bytes.len() {
            assert!(Manifest::decode(&bytes[..n]).is_err(), "cut at {n}");
        }
    }

    #[test]
    fn version_1_manifests_still_read() {
        // Spelled out: header, 2 blocks of 512 bytes (one zero, one data), crc.
        let mut v1 = Vec::new();
        v1.extend_from_slice(b"VDHASHES");
        v1.extend_from_slice(&1u32.to_le_bytes());
        v1.extend_from_slice(&0u32.to_le_bytes());
        v1.extend_from_slice(&1024u64.to_le_bytes());
        v1.extend_from_slice(&512u64.to_le_bytes());
        v1.extend_from_slice(&2u64.to_le_bytes());
        v1.extend_from_slice(&block_hash(&[0u8; 512]).to_le_bytes());
        v1.extend_from_slice(&42u128.to_le_bytes());
        let crc = crc32fast::hash(&v1);
        v1.extend_from_slice(&crc.to_le_bytes());
        let m = Manifest::decode(v1.as_slice()).unwrap();
        assert_eq!(m.hash(1).unwrap(), Some(42));
        assert_eq!(m.hash(0).unwrap(), Some(block_hash(&[0u8; 512])));
        assert_eq!(m.window(0).unwrap().stored, vec![(1, 42)]);
    }

    #[test]
    fn writer_refuses_out_of_order_or_past_the_end() {
        let mut w = ManifestWriter::new(Vec::new(), 8192, 4096).unwrap();
        w.push(1, 5).unwrap();
        assert!(w.push(1, 6).is_err());
        assert!(w.push(2, 6).is_err());
        assert!(ManifestWriter::new(Vec::new(), 4096, 1000).is_err());
    }
}
