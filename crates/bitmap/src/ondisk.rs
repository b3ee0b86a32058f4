//! The on-disk form of a [`ChangeMap`].
//!
//! ```text
//! offset  size  field
//!      0     8  magic "VDBITMAP"
//!      8     4  version, u32 LE = 1
//!     12     4  flags, u32 LE = 0 (none defined)
//!     16     8  size: disk bytes, u64 LE
//!     24     8  granularity: bytes per block, u64 LE (a power of two, >= 512)
//!     32     8  block_count, u64 LE = ceil(size / granularity), at most 2^32
//!     40  8*n   n = ceil(block_count / 64) words, u64 LE; bit i of word i/64 is block i,
//!               bits past block_count zero
//!  40+8n     4  CRC-32 (IEEE, as crc32fast computes it) of every byte before it, u32 LE
//! ```
//!
//! Everything is checked on decode: a damaged file is an error, never a wrong map.

use vdisk_core::{Error, Result};

use crate::{blocks_for, words_for, ChangeMap, MAX_BLOCKS};

/// The first 8 bytes of an encoded map.
pub const MAGIC: [u8; 8] = *b"VDBITMAP";

/// The version of the on-disk form that [`ChangeMap::encode`] writes and
/// [`ChangeMap::decode`] reads.
pub const VERSION: u32 = 1;

const HEADER_LEN: usize = 40;
const CRC_LEN: usize = 4;

/// The fixed-size header, as read, before any check.
struct RawHeader {
    version: u32,
    flags: u32,
    size: u64,
    granularity: u64,
    block_count: u64,
}

impl RawHeader {
    /// Reads the header from the first `HEADER_LEN` bytes (the caller checked the length).
    fn read(b: &[u8]) -> RawHeader {
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        RawHeader {
            version: u32_at(8),
            flags: u32_at(12),
            size: u64_at(16),
            granularity: u64_at(24),
            block_count: u64_at(32),
        }
    }
}

impl ChangeMap {
    /// The on-disk form, which [`decode`](Self::decode) reads back. All integers are little
    /// endian:
    ///
    /// ```text
    /// offset  size  field
    ///      0     8  magic "VDBITMAP"
    ///      8     4  version, u32 = 1
    ///     12     4  flags, u32 = 0
    ///     16     8  size: disk bytes, u64
    ///     24     8  granularity: bytes per block, u64
    ///     32     8  block_count = ceil(size / granularity), u64
    ///     40   8*n  n = ceil(block_count / 64) words, u64; bit i of word i/64 is block i
    ///  40+8n     4  CRC-32 (IEEE) of every byte before it, u32
    /// ```
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + 8 * self.words.len() + CRC_LEN);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.granularity.to_le_bytes());
        out.extend_from_slice(&self.block_count.to_le_bytes());
        // Sized once and filled chunk by chunk: a push per word would check the capacity
        // each time and keep LLVM from turning the loop into a plain copy.
        out.resize(HEADER_LEN + 8 * self.words.len(), 0);
        for (chunk, w) in out[HEADER_LEN..].chunks_exact_mut(8).zip(&self.words) {
            chunk.copy_from_slice(&w.to_le_bytes());
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Reads a map written by [`encode`](Self::encode), checking everything: magic, version,
    /// granularity, block count, length, checksum, and that no bit is set past the last block.
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
        if bytes.len() < HEADER_LEN + CRC_LEN {
            return Err(Error::corrupt(format!(
                "bitmap truncated: {} bytes, shorter than the {}-byte header and checksum",
                bytes.len(),
                HEADER_LEN + CRC_LEN
            )));
        }
        let h = RawHeader::read(bytes);
        // The version decides the layout, so it is checked before anything the layout places.
        if h.version != VERSION {
            return Err(Error::unsupported(format!(
                "bitmap version {} is not supported (this vdisk reads version {VERSION})",
                h.version
            ))
            .at(8));
        }
        if let Err(e) = vdisk_core::Granularity::new(h.granularity) {
            return Err(Error::corrupt(format!("bitmap: {}", e.message())).at(24));
        }
        let expected_blocks = blocks_for(h.size, h.granularity);
        if h.block_count != expected_blocks {
            return Err(Error::corrupt(format!(
                "bitmap block count {} does not match its size {} at granularity {} \
                 ({expected_blocks} blocks)",
                h.block_count, h.size, h.granularity
            ))
            .at(32));
        }
        if h.block_count > MAX_BLOCKS {
            return Err(Error::corrupt(format!(
                "bitmap has {} blocks, more than the limit of 2^32",
                h.block_count
            ))
            .at(32));
        }
        // block_count <= 2^32, so this is at most 2^26 words: no overflow, and the length is
        // compared with the input before anything is allocated from it.
        let n_words = words_for(h.block_count);
        let expected_len = HEADER_LEN + 8 * n_words + CRC_LEN;
        if bytes.len() != expected_len {
            let what = if bytes.len() < expected_len {
                "truncated"
            } else {
                "has trailing bytes"
            };
            return Err(Error::corrupt(format!(
                "bitmap {what}: {} bytes where {} blocks need {expected_len}",
                bytes.len(),
                h.block_count
            )));
        }
        let (body, crc_bytes) = bytes.split_at(expected_len - CRC_LEN);
        let stored = u32::from_le_bytes(crc_bytes.try_into().expect("4 bytes"));
        let actual = crc32fast::hash(body);
        if stored != actual {
            return Err(Error::corrupt(format!(
                "bitmap checksum mismatch (stored {stored:#010x}, computed {actual:#010x}): \
                 the file is damaged"
            ))
            .at((expected_len - CRC_LEN) as u64));
        }
        // Flags are checked after the checksum: with a good checksum a set flag was written
        // on purpose, by a newer vdisk, rather than flipped by damage.
        if h.flags != 0 {
            return Err(Error::unsupported(format!(
                "bitmap flags {:#x} are not supported by this vdisk",
                h.flags
            ))
            .at(12));
        }
        let words: Vec<u64> = body[HEADER_LEN..]
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        let used = h.block_count % 64;
        if let (Some(&last), true) = (words.last(), used != 0) {
            if last >> used != 0 {
                return Err(Error::corrupt(format!(
                    "bitmap has bits set past its last block ({})",
                    h.block_count
                ))
                .at((HEADER_LEN + 8 * (n_words - 1)) as u64));
            }
        }
        Ok(ChangeMap {
            size: h.size,
            granularity: h.granularity,
            block_count: h.block_count,
            words,
        })
    }
}

#[cfg(test)]
mod tests {
    use vdisk_core::ErrorKind;

    use super::*;

    fn sample() -> ChangeMap {
        let mut m = ChangeMap::new(100 * 512 + 7, 512).unwrap();
        m.set_blocks(3, 70);
        m.set(100);
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

    #[test]
    fn layout_field_by_field() {
        let mut m = ChangeMap::new(1000, 512).unwrap();
        m.set(1);
        let b = m.encode();
        assert_eq!(b.len(), 40 + 8 + 4);
        assert_eq!(&b[0..8], b"VDBITMAP");
        assert_eq!(b[8..12], [1, 0, 0, 0]); // version
        assert_eq!(b[12..16], [0, 0, 0, 0]); // flags
        assert_eq!(b[16..24], [0xe8, 0x03, 0, 0, 0, 0, 0, 0]); // size 1000
        assert_eq!(b[24..32], [0, 0x02, 0, 0, 0, 0, 0, 0]); // granularity 512
        assert_eq!(b[32..40], [2, 0, 0, 0, 0, 0, 0, 0]); // 2 blocks
        assert_eq!(b[40..48], [2, 0, 0, 0, 0, 0, 0, 0]); // block 1 set
        assert_eq!(b[48..52], crc32fast::hash(&b[..48]).to_le_bytes());
    }

    #[test]
    fn round_trip() {
        for m in [
            sample(),
            ChangeMap::new(0, 512).unwrap(),
            ChangeMap::new(64 * 512, 512).unwrap(),
        ] {
            assert_eq!(ChangeMap::decode(&m.encode()).unwrap(), m);
        }
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
        let b = patched(sample().encode(), 8, &2u32.to_le_bytes());
        let e = ChangeMap::decode(&b).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert!(e.message().contains("version 2"), "{}", e.message());
    }

    #[test]
    fn flags_with_good_checksum_are_unsupported() {
        let b = patched(sample().encode(), 12, &1u32.to_le_bytes());
        assert_eq!(
            ChangeMap::decode(&b).unwrap_err().kind(),
            ErrorKind::Unsupported
        );
    }

    #[test]
    fn header_fields_are_checked_behind_the_checksum() {
        let enc = sample().encode();
        for (at, value, words) in [
            (24, 1000u64, "power of two"),
            (24, 0, "power of two"),
            (16, 1 << 20, "does not match"),
            (32, 102, "does not match"),
        ] {
            let e = ChangeMap::decode(&patched(enc.clone(), at, &value.to_le_bytes())).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Corrupt, "{}", e.message());
            assert!(e.message().contains(words), "{}", e.message());
        }
    }

    /// A header claiming 2^40 blocks over a few bytes must fail on the length check, not
    /// allocate (the crosvm `test_huge_header` lesson).
    #[test]
    fn huge_block_count_does_not_allocate() {
        let g = 512u64;
        for blocks in [1u64 << 40, MAX_BLOCKS + 1, MAX_BLOCKS] {
            let b = patched(sample().encode(), 16, &(blocks * g).to_le_bytes());
            let b = patched(b, 32, &blocks.to_le_bytes());
            let e = ChangeMap::decode(&b).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Corrupt, "{}", e.message());
        }
    }

    #[test]
    fn truncated_and_trailing_bytes() {
        let enc = sample().encode();
        for n in [8, 20, 43, 44, enc.len() - 1] {
            let e = ChangeMap::decode(&enc[..n]).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Corrupt);
            assert!(e.message().contains("truncated"), "{n}: {}", e.message());
        }
        let mut longer = enc.clone();
        longer.push(0);
        let e = ChangeMap::decode(&longer).unwrap_err();
        assert!(e.message().contains("trailing"), "{}", e.message());
    }

    #[test]
    fn checksum_mismatch() {
        let mut enc = sample().encode();
        enc[45] ^= 0x10;
        let e = ChangeMap::decode(&enc).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        assert!(e.message().contains("checksum"), "{}", e.message());
    }

    #[test]
    fn bits_past_the_last_block_are_corrupt() {
        let enc = sample().encode(); // 101 blocks: bits 37.. of word 1 must be zero
        let b = patched(enc, 40 + 8, &(1u64 << 40).to_le_bytes());
        let e = ChangeMap::decode(&b).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        assert!(
            e.message().contains("past its last block"),
            "{}",
            e.message()
        );
    }
}
