//! The on-disk form of a [`ChangeMap`].
//!
//! Version 2, what [`ChangeMap::encode`] writes: the runs of changed blocks, and the bits of
//! the chunks too fragmented for runs to be cheaper. All integers little endian.
//!
//! ```text
//! offset  size  field
//!      0     8  magic "VDBITMAP"
//!      8     4  version, u32 = 2
//!     12     4  flags, u32 = 0 (none defined)
//!     16     8  size: disk bytes, u64
//!     24     8  granularity: bytes per block, u64 (a power of two, 512 B to 64 MiB)
//!     32     8  block_count, u64 = ceil(size / granularity), at most 2^39
//!     40     8  r: run records, u64
//!     48     8  c: chunk records, u64
//!     56  16*r  run records: first_block u64, block_count u64
//!      …  8200*c  chunk records: chunk u64, then 1024 words u64 (bit i of word i/64 is
//!               block chunk * 65536 + i)
//!      …     4  CRC-32 (IEEE, as crc32fast computes it) of every byte before it, u32
//! ```
//!
//! One encoding per map, and decode refuses any other (a damaged or hand-made file is an
//! error, never silently normalised): a chunk of 65 536 blocks is a chunk record when its
//! changed blocks form more than 512 runs inside it (then its 8 KiB of bits are no larger
//! than its runs would be), and every other changed block is in a run record. Run records
//! are the maximal runs of changed blocks outside chunk records: sorted, non-empty, neither
//! overlapping nor touching one another or a chunk record, inside the block count. Chunk
//! records are sorted, inside the map, and have no bit set past the block count. So a file
//! is at most about the size of the dense bitmap (version 1), and usually far smaller: 16
//! bytes a run.
//!
//! Version 1, still read: the dense bitmap.
//!
//! ```text
//!      0    32  as version 2, with version = 1
//!     32     8  block_count, u64 = ceil(size / granularity)
//!     40   8*n  n = ceil(block_count / 64) words, u64; bit i of word i/64 is block i,
//!               bits past block_count zero
//!  40+8n     4  CRC-32 of every byte before it, u32
//! ```
//!
//! Everything is checked on decode, each count against the input's length before anything
//! is sized from it.

use vdisk_core::{Error, Result};

use crate::build::Builder;
use crate::chunk::{
    chunk_len, count_and_runs, fill_range, Node, CHUNK_BLOCKS, CHUNK_SHIFT, CHUNK_WORDS,
};
use crate::runs::Pieces;
use crate::{blocks_for, ChangeMap, MAX_BLOCKS};

/// The first 8 bytes of an encoded map.
pub const MAGIC: [u8; 8] = *b"VDBITMAP";

/// The version of the on-disk form that [`ChangeMap::encode`] writes. [`ChangeMap::decode`]
/// reads it and version 1.
pub const VERSION: u32 = 2;

/// The header of version 1, and the part of version 2's that they share.
const HEADER_V1: usize = 40;
/// The header of version 2: version 1's and the two record counts.
const HEADER_V2: usize = 56;
const CRC_LEN: usize = 4;
const RUN_RECORD: usize = 16;
const CHUNK_RECORD: usize = 8 + 8 * CHUNK_WORDS;
/// A chunk with more runs than this is written as bits: 512 runs of 16 bytes are its 8 KiB.
const DISK_LIST_RUNS: u32 = 512;

/// The fixed-size header, as read, before any check.
struct RawHeader {
    version: u32,
    flags: u32,
    size: u64,
    granularity: u64,
    block_count: u64,
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

impl RawHeader {
    /// Reads the header from the first [`HEADER_V1`] bytes (the caller checked the length).
    fn read(b: &[u8]) -> RawHeader {
        RawHeader {
            version: u32::from_le_bytes(b[8..12].try_into().expect("4 bytes")),
            flags: u32::from_le_bytes(b[12..16].try_into().expect("4 bytes")),
            size: u64_at(b, 16),
            granularity: u64_at(b, 24),
            block_count: u64_at(b, 32),
        }
    }

    /// Checks the shape fields, which both versions share.
    fn check_shape(&self) -> Result<()> {
        if let Err(e) = vdisk_core::Granularity::new(self.granularity) {
            return Err(Error::corrupt(format!("bitmap: {}", e.message())).at(24));
        }
        let expected_blocks = blocks_for(self.size, self.granularity);
        if self.block_count != expected_blocks {
            return Err(Error::corrupt(format!(
                "bitmap block count {} does not match its size {} at granularity {} \
                 ({expected_blocks} blocks)",
                self.block_count, self.size, self.granularity
            ))
            .at(32));
        }
        if self.block_count > MAX_BLOCKS {
            return Err(Error::corrupt(format!(
                "bitmap has {} blocks, more than the limit of 2^39",
                self.block_count
            ))
            .at(32));
        }
        Ok(())
    }

    /// Flags are checked after the checksum: with a good checksum a set flag was written on
    /// purpose, by a newer vdisk, rather than flipped by damage.
    fn check_flags(&self) -> Result<()> {
        if self.flags != 0 {
            return Err(Error::unsupported(format!(
                "bitmap flags {:#x} are not supported by this vdisk",
                self.flags
            ))
            .at(12));
        }
        Ok(())
    }
}

/// Checks the length of the whole input against what the header says it holds.
fn check_len(bytes: &[u8], expected: Option<u64>, what: &str) -> Result<()> {
    let len = bytes.len() as u64;
    match expected {
        Some(n) if n == len => Ok(()),
        Some(n) if n < len => Err(Error::corrupt(format!(
            "bitmap has trailing bytes: {len} bytes where {what} need {n}"
        ))),
        Some(n) => Err(Error::corrupt(format!(
            "bitmap truncated: {len} bytes where {what} need {n}"
        ))),
        None => Err(Error::corrupt(format!(
            "bitmap truncated: {len} bytes where {what} need more than 2^64"
        ))),
    }
}

/// Checks the CRC-32 in the last 4 bytes (the length is checked already).
fn check_crc(bytes: &[u8]) -> Result<()> {
    let (body, crc_bytes) = bytes.split_at(bytes.len() - CRC_LEN);
    let stored = u32::from_le_bytes(crc_bytes.try_into().expect("4 bytes"));
    let actual = crc32fast::hash(body);
    if stored != actual {
        return Err(Error::corrupt(format!(
            "bitmap checksum mismatch (stored {stored:#010x}, computed {actual:#010x}): \
             the file is damaged"
        ))
        .at(body.len() as u64));
    }
    Ok(())
}

/// Version 2's run records, joining the pieces that touch.
struct RunWriter {
    out: Vec<u8>,
    pending: Option<(u64, u64)>,
    written: u64,
}

impl RunWriter {
    fn piece(&mut self, first: u64, end: u64) {
        match &mut self.pending {
            Some((_, pend)) if *pend == first => *pend = end,
            pending => {
                if let Some(run) = pending.replace((first, end)) {
                    self.write(run);
                }
            }
        }
    }

    fn write(&mut self, (first, end): (u64, u64)) {
        self.out.extend_from_slice(&first.to_le_bytes());
        self.out.extend_from_slice(&(end - first).to_le_bytes());
        self.written += 1;
    }

    fn finish(mut self) -> (Vec<u8>, u64) {
        if let Some(run) = self.pending.take() {
            self.write(run);
        }
        (self.out, self.written)
    }
}

/// Whether a node is written as a chunk record.
fn written_as_bits(node: &Node) -> bool {
    match node {
        Node::Full(_) => false,
        Node::List(list) => list.len() > DISK_LIST_RUNS as usize,
        Node::Bits(_) => true,
    }
}

impl ChangeMap {
    /// The on-disk form (version 2, see the module documentation), which
    /// [`decode`](Self::decode) reads back. Its size follows the runs: 60 bytes, 16 bytes a
    /// run, and 8 KiB for each chunk of 65 536 blocks with more than 512 runs in it; never
    /// much more than the version 1 dense bitmap.
    pub fn encode(&self) -> Vec<u8> {
        let bits_chunks = self.nodes.values().filter(|n| written_as_bits(n)).count();
        // Pieces are an upper bound of the runs they join into.
        let pieces: usize = self
            .nodes
            .values()
            .map(|n| match n {
                Node::Full(_) => 1,
                Node::List(list) if !written_as_bits(n) => list.len(),
                _ => 0,
            })
            .sum();
        let mut out = Vec::with_capacity(
            HEADER_V2 + RUN_RECORD * pieces + CHUNK_RECORD * bits_chunks + CRC_LEN,
        );
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.granularity.to_le_bytes());
        out.extend_from_slice(&self.block_count.to_le_bytes());
        // The record counts, filled in below.
        out.extend_from_slice(&[0; 16]);
        let mut runs = RunWriter {
            out,
            pending: None,
            written: 0,
        };
        for (&k, node) in &self.nodes {
            let base = k << CHUNK_SHIFT;
            match node {
                Node::Full(n) => {
                    runs.piece(base, ((k + n) << CHUNK_SHIFT).min(self.block_count));
                }
                Node::List(list) if !written_as_bits(node) => {
                    for &(lo, hi) in list {
                        runs.piece(base + u64::from(lo), base + u64::from(hi) + 1);
                    }
                }
                _ => {}
            }
        }
        let (mut out, run_count) = runs.finish();
        let mut words = vec![0u64; CHUNK_WORDS];
        for (&k, node) in self.nodes.iter().filter(|(_, n)| written_as_bits(n)) {
            out.extend_from_slice(&k.to_le_bytes());
            let words: &[u64] = match node {
                Node::Bits(bits) => &bits.words,
                Node::List(list) => {
                    words.fill(0);
                    for &(lo, hi) in list {
                        fill_range(&mut words, lo.into(), hi.into());
                    }
                    &words
                }
                Node::Full(_) => continue,
            };
            for w in words {
                out.extend_from_slice(&w.to_le_bytes());
            }
        }
        out[40..48].copy_from_slice(&run_count.to_le_bytes());
        out[48..56].copy_from_slice(&(bits_chunks as u64).to_le_bytes());
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// The version 1 (dense) form: `block_count / 8` bytes however few blocks changed. Only
    /// for tests and the fuzzing checks of version 1 inputs.
    pub(crate) fn encode_v1(&self) -> Vec<u8> {
        let n_words = self.block_count.div_ceil(64) as usize;
        let mut out = Vec::with_capacity(HEADER_V1 + 8 * n_words + CRC_LEN);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.granularity.to_le_bytes());
        out.extend_from_slice(&self.block_count.to_le_bytes());
        out.resize(HEADER_V1 + 8 * n_words, 0);
        // Bit i of little-endian word i/64 is bit i%8 of byte i/8.
        let bits = &mut out[HEADER_V1..];
        for (first, end) in Pieces::new(self) {
            for b in first..end.min(first.next_multiple_of(8)) {
                bits[(b / 8) as usize] |= 1 << (b % 8);
            }
            let (byte_from, byte_to) = (first.div_ceil(8), end / 8);
            if byte_from < byte_to {
                bits[byte_from as usize..byte_to as usize].fill(0xff);
            }
            for b in (end / 8 * 8).max(first)..end {
                bits[(b / 8) as usize] |= 1 << (b % 8);
            }
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Reads a map written by [`encode`](Self::encode), in version 2 or the older version 1,
    /// checking everything: magic, version, granularity, block count, length, checksum, and
    /// that the records are the one canonical encoding of a map (see the module
    /// documentation). Memory is sized from the input's length, never from a count in it.
    ///
    /// Errors: [`ErrorKind::InvalidFormat`](vdisk_core::ErrorKind) when the bytes are not a
    /// vdisk bitmap at all, [`ErrorKind::Unsupported`](vdisk_core::ErrorKind) for another
    /// version or unknown flags, [`ErrorKind::Corrupt`](vdisk_core::ErrorKind) when the file is
    /// damaged. The error offset, when set, is where in `bytes` the problem is.
    pub fn decode(bytes: &[u8]) -> Result<ChangeMap> {
        if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
            return Err(Error::invalid(
                "not a vdisk change bitmap: it does not start with \"VDBITMAP\"",
            ));
        }
        if bytes.len() < HEADER_V1 + CRC_LEN {
            return Err(Error::corrupt(format!(
                "bitmap truncated: {} bytes, shorter than the {}-byte header and checksum",
                bytes.len(),
                HEADER_V1 + CRC_LEN
            )));
        }
        let h = RawHeader::read(bytes);
        // The version decides the layout, so it is checked before anything the layout places.
        match h.version {
            1 => decode_v1(bytes, &h),
            2 => decode_v2(bytes, &h),
            v => Err(Error::unsupported(format!(
                "bitmap version {v} is not supported (this vdisk reads versions 1 and 2)"
            ))
            .at(8)),
        }
    }
}

fn decode_v1(bytes: &[u8], h: &RawHeader) -> Result<ChangeMap> {
    h.check_shape()?;
    // block_count <= 2^39, so this is at most 2^33 words: no overflow in u64.
    let n_words = h.block_count.div_ceil(64);
    let expected = (HEADER_V1 + CRC_LEN) as u64 + 8 * n_words;
    check_len(bytes, Some(expected), &format!("{} blocks", h.block_count))?;
    check_crc(bytes)?;
    h.check_flags()?;
    let body = &bytes[HEADER_V1..bytes.len() - CRC_LEN];
    let used = h.block_count % 64;
    if let (Some(last), true) = (body.rchunks_exact(8).next(), used != 0) {
        if u64::from_le_bytes(last.try_into().expect("8 bytes")) >> used != 0 {
            return Err(Error::corrupt(format!(
                "bitmap has bits set past its last block ({})",
                h.block_count
            ))
            .at((body.len() - 8 + HEADER_V1) as u64));
        }
    }
    let mut out = Builder::new(h.size, h.granularity, h.block_count);
    let mut words = Vec::with_capacity(CHUNK_WORDS);
    for (k, chunk) in body.chunks(8 * CHUNK_WORDS).enumerate() {
        words.clear();
        words.extend(
            chunk
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))),
        );
        if words.iter().any(|&w| w != 0) {
            out.push_words(k as u64, &words);
        }
    }
    Ok(out.finish())
}

fn decode_v2(bytes: &[u8], h: &RawHeader) -> Result<ChangeMap> {
    if bytes.len() < HEADER_V2 + CRC_LEN {
        return Err(Error::corrupt(format!(
            "bitmap truncated: {} bytes, shorter than the {}-byte version 2 header and checksum",
            bytes.len(),
            HEADER_V2 + CRC_LEN
        )));
    }
    h.check_shape()?;
    let (run_count, chunk_count) = (u64_at(bytes, 40), u64_at(bytes, 48));
    // A hostile header may claim 2^60 records: the length they need is computed without
    // overflow and compared with the input before anything is sized from them.
    let expected = run_count
        .checked_mul(RUN_RECORD as u64)
        .zip(chunk_count.checked_mul(CHUNK_RECORD as u64))
        .and_then(|(r, c)| r.checked_add(c))
        .and_then(|n| n.checked_add((HEADER_V2 + CRC_LEN) as u64));
    check_len(
        bytes,
        expected,
        &format!("{run_count} runs and {chunk_count} bitmap chunks"),
    )?;
    check_crc(bytes)?;
    h.check_flags()?;

    // Both counts fit the input now, so these products and offsets fit a usize.
    let runs_at = HEADER_V2;
    let chunks_at = runs_at + run_count as usize * RUN_RECORD;
    let run_bytes = &bytes[runs_at..chunks_at];
    let chunk_bytes = &bytes[chunks_at..bytes.len() - CRC_LEN];
    let block_count = h.block_count;
    let n_chunks = block_count.div_ceil(CHUNK_BLOCKS);

    let mut out = Builder::new(h.size, h.granularity, block_count);
    let mut runs = run_bytes
        .chunks_exact(RUN_RECORD)
        .map(|r| (u64_at(r, 0), u64_at(r, 8)))
        .enumerate()
        .peekable();
    let mut chunks = chunk_bytes
        .chunks_exact(CHUNK_RECORD)
        .enumerate()
        .peekable();
    let mut prev_run_end: Option<u64> = None;
    let mut prev_chunk: Option<u64> = None;
    // The chunk whose runs are being counted, and how many it has had.
    let mut counting = (u64::MAX, 0u32);
    let mut words = vec![0u64; CHUNK_WORDS];
    // The first block of a chunk record's chunk; a value past any block when it is out of
    // range (an error reported when the record is read).
    let start_of = |k: u64| k.saturating_mul(CHUNK_BLOCKS);
    loop {
        let next_chunk = chunks.peek().map(|(_, rec)| u64_at(rec, 0));
        let take_run = match (runs.peek(), next_chunk) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(&(_, (first, _))), Some(k)) => first < start_of(k),
        };
        if take_run {
            let Some((i, (first, count))) = runs.next() else {
                break;
            };
            let at = (runs_at + i * RUN_RECORD) as u64;
            if count == 0 {
                return Err(Error::corrupt(format!("bitmap run {i} is empty")).at(at + 8));
            }
            let end = match first.checked_add(count) {
                Some(end) if end <= block_count => end,
                _ => {
                    return Err(Error::corrupt(format!(
                        "bitmap run {i} (blocks {first}+{count}) ends past the last block \
                         ({block_count})"
                    ))
                    .at(at))
                }
            };
            if let Some(prev) = prev_run_end {
                if first <= prev {
                    return Err(Error::corrupt(format!(
                        "bitmap run {i} (from block {first}) does not start after the end of \
                         the run before it ({prev}): runs must be sorted, apart and joined"
                    ))
                    .at(at));
                }
            }
            let after_prev_chunk = prev_chunk.is_none_or(|p| first >= start_of(p + 1));
            let before_next_chunk = next_chunk.is_none_or(|k| end <= start_of(k));
            if !after_prev_chunk || !before_next_chunk {
                return Err(Error::corrupt(format!(
                    "bitmap run {i} (blocks {first}+{count}) overlaps a bitmap chunk"
                ))
                .at(at));
            }
            // Count the run's pieces in the chunks it starts and ends in (the chunks between
            // are full, one run each).
            let (cs, ce) = (first >> CHUNK_SHIFT, (end - 1) >> CHUNK_SHIFT);
            for c in [Some(cs), (ce > cs).then_some(ce)].into_iter().flatten() {
                counting = if counting.0 == c {
                    (c, counting.1 + 1)
                } else {
                    (c, 1)
                };
                if counting.1 > DISK_LIST_RUNS {
                    return Err(Error::corrupt(format!(
                        "bitmap chunk {c} has more than {DISK_LIST_RUNS} runs in run records: \
                         it must be a chunk record"
                    ))
                    .at(at));
                }
            }
            out.push_run(first, end);
            prev_run_end = Some(end);
        } else {
            let Some((j, rec)) = chunks.next() else {
                break;
            };
            let at = (chunks_at + j * CHUNK_RECORD) as u64;
            let k = u64_at(rec, 0);
            if k >= n_chunks {
                return Err(Error::corrupt(format!(
                    "bitmap chunk record {j} is for chunk {k}, past the map's {n_chunks} chunks"
                ))
                .at(at));
            }
            if prev_chunk.is_some_and(|p| k <= p) {
                return Err(Error::corrupt(format!(
                    "bitmap chunk record {j} (chunk {k}) is not after the one before it"
                ))
                .at(at));
            }
            for (w, b) in words.iter_mut().zip(rec[8..].chunks_exact(8)) {
                *w = u64::from_le_bytes(b.try_into().expect("8 bytes"));
            }
            let len = chunk_len(block_count, k);
            if len < CHUNK_BLOCKS as u32 {
                let (w, bit) = ((len / 64) as usize, len % 64);
                let past = (words[w] >> bit) != 0 || words[w + 1..].iter().any(|&x| x != 0);
                if past {
                    return Err(Error::corrupt(format!(
                        "bitmap has bits set past its last block ({block_count})"
                    ))
                    .at(at + 8 + 8 * w as u64));
                }
            }
            let (_, chunk_runs) = count_and_runs(&words);
            if chunk_runs <= DISK_LIST_RUNS {
                return Err(Error::corrupt(format!(
                    "bitmap chunk record {j} (chunk {k}) has {chunk_runs} runs, not more than \
                     {DISK_LIST_RUNS}: they must be run records"
                ))
                .at(at));
            }
            out.push_words(k, &words);
            prev_chunk = Some(k);
        }
    }
    Ok(out.finish())
}

#[cfg(test)]
mod tests {
    use vdisk_core::ErrorKind;

    use super::*;
    use crate::fuzzing;

    const C: u64 = CHUNK_BLOCKS;

    fn sample() -> ChangeMap {
        let mut m = ChangeMap::new(100 * 512 + 7, 512).unwrap();
        m.set_blocks(3, 70);
        m.set(100);
        m
    }

    /// A map with every kind of record: runs across chunk boundaries, a full stretch, a
    /// chunk of more than 1024 runs (bits in memory) and one of 600 (a list in memory, bits
    /// on disk), and a partial last chunk.
    fn mixed() -> ChangeMap {
        let mut m = ChangeMap::new((6 * C + 1000) * 512, 512).unwrap();
        m.set_blocks(5, 10);
        m.set_blocks(C - 3, 3 * C + 2);
        for i in 0..1500 {
            m.set(4 * C + 3 * i);
        }
        for i in 0..600 {
            m.set(5 * C + 5 * i);
        }
        m.set_blocks(6 * C + 998, 6 * C + 1000);
        m
    }

    /// Overwrites `bytes[at..]` with `patch` and fixes the checksum, so that only the checks
    /// behind the checksum can catch the change.
    fn patched(mut bytes: Vec<u8>, at: usize, patch: &[u8]) -> Vec<u8> {
        bytes[at..at + patch.len()].copy_from_slice(patch);
        let n = bytes.len() - 4;
        let crc = crc32fast::hash(&bytes[..n]);
        bytes[n..].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    /// A version 2 file with these run and chunk records, its checksum right.
    fn v2(size: u64, g: u64, runs: &[(u64, u64)], chunks: &[(u64, &[u64])]) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&2u32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        for v in [
            size,
            g,
            size.div_ceil(g),
            runs.len() as u64,
            chunks.len() as u64,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        for &(first, count) in runs {
            b.extend_from_slice(&first.to_le_bytes());
            b.extend_from_slice(&count.to_le_bytes());
        }
        for &(k, words) in chunks {
            b.extend_from_slice(&k.to_le_bytes());
            for i in 0..CHUNK_WORDS {
                b.extend_from_slice(&words.get(i).copied().unwrap_or(0).to_le_bytes());
            }
        }
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    fn corrupt(bytes: &[u8], words: &str) {
        let e = ChangeMap::decode(bytes).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{}", e.message());
        assert!(e.message().contains(words), "{}", e.message());
    }

    #[test]
    fn layout_field_by_field() {
        let mut m = ChangeMap::new(1000, 512).unwrap();
        m.set(1);
        let b = m.encode();
        assert_eq!(b.len(), 56 + 16 + 4);
        assert_eq!(&b[0..8], b"VDBITMAP");
        assert_eq!(b[8..12], [2, 0, 0, 0]); // version
        assert_eq!(b[12..16], [0, 0, 0, 0]); // flags
        assert_eq!(b[16..24], [0xe8, 0x03, 0, 0, 0, 0, 0, 0]); // size 1000
        assert_eq!(b[24..32], [0, 0x02, 0, 0, 0, 0, 0, 0]); // granularity 512
        assert_eq!(b[32..40], [2, 0, 0, 0, 0, 0, 0, 0]); // 2 blocks
        assert_eq!(b[40..48], [1, 0, 0, 0, 0, 0, 0, 0]); // 1 run record
        assert_eq!(b[48..56], [0, 0, 0, 0, 0, 0, 0, 0]); // no chunk record
        assert_eq!(b[56..64], [1, 0, 0, 0, 0, 0, 0, 0]); // run from block 1
        assert_eq!(b[64..72], [1, 0, 0, 0, 0, 0, 0, 0]); // of 1 block
        assert_eq!(b[72..76], crc32fast::hash(&b[..72]).to_le_bytes());
        assert_eq!(v2(1000, 512, &[(1, 1)], &[]), b);
    }

    #[test]
    fn chunk_records_hold_the_fragmented_chunks() {
        let m = mixed();
        let b = m.encode();
        // Runs: 5..10, C-3..3C+2 (one record across three chunk boundaries), the last two
        // blocks; chunks 4 (1500 runs) and 5 (600 runs) as bits.
        assert_eq!(u64_at(&b, 40), 3);
        assert_eq!(u64_at(&b, 48), 2);
        assert_eq!(b.len(), 56 + 3 * 16 + 2 * 8200 + 4);
        assert_eq!(
            (u64_at(&b, 56 + 16), u64_at(&b, 56 + 24)),
            (C - 3, 2 * C + 5)
        );
        let chunk5 = 56 + 3 * 16 + 8200;
        assert_eq!(u64_at(&b, chunk5), 5);
        let first_word = (0..13).fold(0u64, |w, i| w | 1 << (5 * i));
        assert_eq!(u64_at(&b, chunk5 + 8), first_word);
        assert_eq!(ChangeMap::decode(&b).unwrap(), m);
    }

    #[test]
    fn round_trip() {
        let mut full = ChangeMap::new((3 * C + 5) * 4096, 4096).unwrap();
        full.set_blocks(0, full.block_count());
        for m in [
            sample(),
            mixed(),
            full,
            ChangeMap::new(0, 512).unwrap(),
            ChangeMap::new(64 * 512, 512).unwrap(),
        ] {
            let b = m.encode();
            assert_eq!(ChangeMap::decode(&b).unwrap(), m);
            fuzzing::decode(&b);
            let v1 = m.encode_v1();
            assert_eq!(ChangeMap::decode(&v1).unwrap(), m);
            fuzzing::decode(&v1);
        }
    }

    #[test]
    fn version_1_still_decodes() {
        // Written out by hand: 1000 bytes at 512, block 1 set (as vdisk 0.1 wrote it).
        let mut b = b"VDBITMAP".to_vec();
        b.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]); // version 1, flags 0
        b.extend_from_slice(&[0xe8, 0x03, 0, 0, 0, 0, 0, 0]); // size 1000
        b.extend_from_slice(&[0, 0x02, 0, 0, 0, 0, 0, 0]); // granularity 512
        b.extend_from_slice(&[2, 0, 0, 0, 0, 0, 0, 0]); // 2 blocks
        b.extend_from_slice(&[2, 0, 0, 0, 0, 0, 0, 0]); // block 1 set
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        let m = ChangeMap::decode(&b).unwrap();
        assert_eq!(m.runs().collect::<Vec<_>>(), [(1, 1)]);
        assert_eq!(m.encode_v1(), b);
        // Re-encoding writes version 2.
        assert_eq!(m.encode()[8], 2);
    }

    #[test]
    fn version_1_checks_are_kept() {
        let enc = sample().encode_v1(); // 101 blocks: bits 37.. of word 1 must be zero
        corrupt(
            &patched(enc.clone(), 40 + 8, &(1u64 << 40).to_le_bytes()),
            "past its last block",
        );
        corrupt(
            &patched(enc.clone(), 32, &102u64.to_le_bytes()),
            "does not match",
        );
        for n in [20, 43, 44, enc.len() - 1] {
            corrupt(&enc[..n], "truncated");
        }
        let mut longer = enc.clone();
        longer.push(0);
        corrupt(&longer, "trailing");
        let mut flipped = enc;
        flipped[45] ^= 0x10;
        corrupt(&flipped, "checksum");
    }

    #[test]
    fn wrong_magic_is_invalid_format() {
        for input in [
            &b""[..],
            b"VDBIT",
            b"QFI\xfb\0\0\0\x03 and more bytes than a header",
        ] {
            let e = ChangeMap::decode(input).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidFormat);
        }
    }

    #[test]
    fn other_version_is_unsupported() {
        for (version, enc) in [(3u32, sample().encode()), (0, sample().encode_v1())] {
            let b = patched(enc, 8, &version.to_le_bytes());
            let e = ChangeMap::decode(&b).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Unsupported);
            assert!(
                e.message().contains(&format!("version {version}")),
                "{}",
                e.message()
            );
        }
    }

    #[test]
    fn flags_with_good_checksum_are_unsupported() {
        for enc in [sample().encode(), sample().encode_v1()] {
            let b = patched(enc, 12, &1u32.to_le_bytes());
            let e = ChangeMap::decode(&b).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Unsupported);
        }
    }

    #[test]
    fn header_fields_are_checked_behind_the_checksum() {
        let enc = sample().encode();
        for (at, value, words) in [
            (24, 1000u64, "power of two"),
            (24, 0, "power of two"),
            (16, 1 << 20, "does not match"),
            (32, 102, "does not match"),
            (40, 3, "truncated"), // it has 2
            (40, 1, "trailing"),
            (48, 1, "truncated"),
        ] {
            corrupt(&patched(enc.clone(), at, &value.to_le_bytes()), words);
        }
    }

    /// Headers claiming more blocks or records than the input holds must fail on the length
    /// check, not allocate (the crosvm `test_huge_header` lesson).
    #[test]
    fn huge_counts_do_not_allocate() {
        let g = 512u64;
        let shape = |enc, blocks: u64| {
            let b = patched(enc, 16, &(blocks * g).to_le_bytes());
            patched(b, 32, &blocks.to_le_bytes())
        };
        for blocks in [1u64 << 40, MAX_BLOCKS + 1] {
            corrupt(&shape(sample().encode(), blocks), "limit of 2^39");
            corrupt(&shape(sample().encode_v1(), blocks), "limit of 2^39");
        }
        // The largest map: a dense file would need 64 GiB; the runs need no more.
        corrupt(&shape(sample().encode_v1(), MAX_BLOCKS), "truncated");
        let m = ChangeMap::decode(&shape(sample().encode(), MAX_BLOCKS)).unwrap();
        assert_eq!((m.block_count(), m.count()), (MAX_BLOCKS, 68));
        for (runs, chunks) in [
            (1u64 << 60, 0u64),
            (0, 1 << 60),
            (u64::MAX, u64::MAX),
            (u64::MAX / 16, 0),
            (1 << 59, u64::MAX / 8200 / 2 + 1),
        ] {
            let b = patched(sample().encode(), 40, &runs.to_le_bytes());
            let b = patched(b, 48, &chunks.to_le_bytes());
            corrupt(&b, "truncated");
        }
    }

    #[test]
    fn truncated_and_trailing_bytes() {
        let enc = sample().encode();
        for n in [8, 20, 43, 44, 59, 60, enc.len() - 1] {
            corrupt(&enc[..n], "truncated");
        }
        let mut longer = enc.clone();
        longer.push(0);
        corrupt(&longer, "trailing");
    }

    #[test]
    fn checksum_mismatch() {
        let mut enc = sample().encode();
        enc[60] ^= 0x10;
        corrupt(&enc, "checksum");
    }

    /// Every changed byte and every cut of a version 2 file is refused, in the header, the
    /// run records, a chunk record and the checksum.
    #[test]
    fn every_flipped_byte_and_every_cut_fails() {
        let enc = mixed().encode();
        for i in 0..enc.len() {
            for x in [0x01, 0x80, 0xff] {
                let mut b = enc.clone();
                b[i] ^= x;
                assert!(
                    ChangeMap::decode(&b).is_err(),
                    "byte {i} ^ {x:#x} went unnoticed"
                );
            }
        }
        for n in 0..enc.len() {
            assert!(
                ChangeMap::decode(&enc[..n]).is_err(),
                "cut at {n} went unnoticed"
            );
        }
    }

    #[test]
    fn records_must_be_canonical() {
        let n = 3 * C + 10; // blocks
        let size = n * 512;
        let ok = v2(size, 512, &[(0, 5), (7, 1)], &[]);
        assert!(ChangeMap::decode(&ok).is_ok());
        // A chunk of 513 runs, as bits.
        let dense: Vec<u64> = vec![0x5555_5555_5555_5555; 17];
        assert_eq!(count_and_runs(&dense).1, 544);
        let with_chunk = v2(size, 512, &[(0, 5), (2 * C, 3)], &[(1, &dense)]);
        assert_eq!(ChangeMap::decode(&with_chunk).unwrap().count(), 8 + 544);
        // Runs that touch the chunk record on either side are fine.
        let touching = v2(size, 512, &[(C - 2, 2), (2 * C, 3)], &[(1, &dense)]);
        assert!(ChangeMap::decode(&touching).is_ok());

        for (runs, chunks, words) in [
            (&[(0, 0)][..], &[][..], "is empty"),
            (&[(n - 1, 2)], &[], "past the last block"),
            (&[(u64::MAX, 2)], &[], "past the last block"),
            (&[(5, 1), (0, 2)], &[], "does not start after"),
            (&[(0, 5), (3, 5)], &[], "does not start after"),
            (&[(0, 5), (5, 5)], &[], "does not start after"),
            (&[(C - 2, 3)], &[(1, &dense[..])], "overlaps a bitmap chunk"),
            (&[(C + 4, 1)], &[(1, &dense[..])], "overlaps a bitmap chunk"),
            (
                &[(2 * C - 1, 3)],
                &[(1, &dense[..])],
                "overlaps a bitmap chunk",
            ),
            (&[], &[(1, &dense[..16])], "512 runs, not more than 512"),
            (&[], &[(1, &[][..])], "0 runs"),
            (
                &[],
                &[(2, &dense[..]), (1, &dense[..])],
                "not after the one before",
            ),
            (
                &[],
                &[(1, &dense[..]), (1, &dense[..])],
                "not after the one before",
            ),
            (&[], &[(4, &dense[..])], "past the map's 4 chunks"),
            (&[], &[(u64::MAX, &dense[..])], "past the map's 4 chunks"),
        ] {
            corrupt(&v2(size, 512, runs, chunks), words);
        }
        // 513 runs in one chunk must be a chunk record.
        let many: Vec<(u64, u64)> = (0..513).map(|i| (2 * i, 1)).collect();
        corrupt(&v2(size, 512, &many, &[]), "must be a chunk record");
        // ... and 512 must not, even when a run from the chunk before ends in it.
        let mut fine: Vec<(u64, u64)> = vec![(C - 1, 2)];
        fine.extend((1..512).map(|i| (C + 2 * i, 1)));
        assert!(ChangeMap::decode(&v2(size, 512, &fine, &[])).is_ok());
        fine.push((C + 1030, 1));
        corrupt(&v2(size, 512, &fine, &[]), "must be a chunk record");
        // Bits past the last block of the last chunk (10 blocks).
        let mut last = dense.clone();
        last[0] = 1 << 10;
        corrupt(&v2(size, 512, &[], &[(3, &last)]), "past its last block");
        last[0] = 0;
        corrupt(&v2(size, 512, &[], &[(3, &last)]), "past its last block");
    }
}
