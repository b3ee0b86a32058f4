//! Hash manifests: the xxh3-128 of every block of a disk, with a header and a crc32.
//!
//! Layout (little-endian): magic `VDHASHES` (8 bytes), version u32 = 1, flags u32 = 0,
//! size u64, granularity u64, block count u64, then 16 bytes per block (the hash as a u128),
//! then the crc32 of everything before it.

use std::io::Write;
use vdisk_core::{Error, Result};

/// The first 8 bytes of a manifest.
pub const MANIFEST_MAGIC: &[u8; 8] = b"VDHASHES";
const HEADER: usize = 40;
const VERSION: u32 = 1;

/// A decoded, checked manifest over borrowed bytes (a memory map or a buffer): hashes are read
/// in place, nothing is copied.
#[derive(Debug, Clone, Copy)]
pub struct Manifest<'a> {
    size: u64,
    granularity: u64,
    hashes: &'a [u8],
}

fn check_granularity(g: u64) -> Result<()> {
    vdisk_core::Granularity::new(g).map(|_| ())
}

impl<'a> Manifest<'a> {
    /// Check and open a manifest. Every field is checked against the input before use; a
    /// damaged manifest is an error, never a wrong answer.
    pub fn decode(bytes: &'a [u8]) -> Result<Self> {
        if bytes.len() < HEADER + 4 || &bytes[..8] != MANIFEST_MAGIC {
            return Err(Error::invalid(
                "not a vdisk hash manifest (no VDHASHES magic)",
            ));
        }
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap_or_default());
        let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap_or_default());
        let version = u32_at(8);
        if version != VERSION {
            return Err(Error::unsupported(format!(
                "manifest version {version} (vdisk reads version {VERSION})"
            )));
        }
        if u32_at(12) != 0 {
            return Err(Error::unsupported(
                "manifest uses flags this vdisk does not know",
            ));
        }
        let (size, granularity, count) = (u64_at(16), u64_at(24), u64_at(32));
        check_granularity(granularity)
            .map_err(|e| Error::corrupt(format!("manifest: {}", e.message())))?;
        if count != size.div_ceil(granularity) {
            return Err(Error::corrupt(
                "manifest block count does not match its size and granularity",
            ));
        }
        let want = count
            .checked_mul(16)
            .and_then(|h| h.checked_add((HEADER + 4) as u64));
        if want != Some(bytes.len() as u64) {
            return Err(Error::corrupt(format!(
                "manifest is {} bytes, its header says {} blocks (truncated or padded?)",
                bytes.len(),
                count
            )));
        }
        let body = bytes.len() - 4;
        let stored = u32_at(body);
        if crc32fast::hash(&bytes[..body]) != stored {
            return Err(Error::corrupt("manifest checksum does not match (damaged)"));
        }
        Ok(Manifest {
            size,
            granularity,
            hashes: &bytes[HEADER..body],
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
        (self.hashes.len() / 16) as u64
    }

    /// The hash of block `block`, or `None` past the end.
    pub fn hash(&self, block: u64) -> Option<u128> {
        let at = usize::try_from(block).ok()?.checked_mul(16)?;
        let b = self.hashes.get(at..at.checked_add(16)?)?;
        Some(u128::from_le_bytes(b.try_into().ok()?))
    }
}

/// A manifest file, mapped and checked once when opened; lookups after that read the map.
#[derive(Debug)]
pub struct ManifestFile {
    file: vdisk_raw::MappedFile,
    size: u64,
    granularity: u64,
}

impl ManifestFile {
    /// Open, map and check the manifest at `path` (errors name the file).
    pub fn open(path: &std::path::Path) -> Result<Self> {
        let file = vdisk_raw::MappedFile::open(path)?;
        let (size, granularity) = {
            let bytes = file
                .bytes()
                .ok_or_else(|| Error::unsupported("cannot map the manifest").with_path(path))?;
            let m = Manifest::decode(bytes).map_err(|e| e.with_path(path))?;
            (m.size, m.granularity)
        };
        Ok(ManifestFile {
            file,
            size,
            granularity,
        })
    }

    /// The manifest, without checking it again.
    pub fn manifest(&self) -> Manifest<'_> {
        let bytes = self.file.bytes().unwrap_or(&[]);
        let end = bytes.len().saturating_sub(4);
        Manifest {
            size: self.size,
            granularity: self.granularity,
            hashes: bytes.get(HEADER..end).unwrap_or(&[]),
        }
    }

    /// The file's identity.
    pub fn id(&self) -> vdisk_core::FileId {
        self.file.id()
    }
}

/// Writes a manifest front to back; the crc is computed on the way.
pub struct ManifestWriter<W: Write> {
    out: W,
    crc: crc32fast::Hasher,
    left: u64,
}

impl<W: Write> ManifestWriter<W> {
    /// Start a manifest of a `size`-byte disk at `granularity`.
    pub fn new(mut out: W, size: u64, granularity: u64) -> Result<Self> {
        check_granularity(granularity)?;
        let count = size.div_ceil(granularity);
        let mut head = Vec::with_capacity(HEADER);
        head.extend_from_slice(MANIFEST_MAGIC);
        head.extend_from_slice(&VERSION.to_le_bytes());
        head.extend_from_slice(&0u32.to_le_bytes());
        head.extend_from_slice(&size.to_le_bytes());
        head.extend_from_slice(&granularity.to_le_bytes());
        head.extend_from_slice(&count.to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head);
        out.write_all(&head)
            .map_err(|e| Error::io("cannot write the manifest", e))?;
        Ok(ManifestWriter {
            out,
            crc,
            left: count,
        })
    }

    /// Append the hashes of the next blocks, in order.
    pub fn push(&mut self, hashes: &[u128]) -> Result<()> {
        if hashes.len() as u64 > self.left {
            return Err(Error::invalid("more hashes than the manifest has blocks"));
        }
        self.left -= hashes.len() as u64;
        let bytes: Vec<u8> = hashes.iter().flat_map(|h| h.to_le_bytes()).collect();
        self.crc.update(&bytes);
        self.out
            .write_all(&bytes)
            .map_err(|e| Error::io("cannot write the manifest", e))
    }

    /// Write the checksum; every block must have been pushed.
    pub fn finish(mut self) -> Result<W> {
        if self.left != 0 {
            return Err(Error::invalid(format!(
                "manifest is missing {} block hashes",
                self.left
            )));
        }
        let crc = self.crc.finalize();
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

    fn sample() -> Vec<u8> {
        let mut w = ManifestWriter::new(Vec::new(), 3 * 4096 + 100, 4096).unwrap();
        w.push(&[1, 2]).unwrap();
        w.push(&[u128::MAX, 7]).unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn round_trips() {
        let bytes = sample();
        let m = Manifest::decode(&bytes).unwrap();
        assert_eq!(
            (m.size(), m.granularity(), m.block_count()),
            (3 * 4096 + 100, 4096, 4)
        );
        assert_eq!(m.hash(2), Some(u128::MAX));
        assert_eq!(m.hash(4), None);
    }

    #[test]
    fn any_flipped_byte_or_truncation_is_an_error() {
        let bytes = sample();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(Manifest::decode(&b).is_err(), "byte {i}");
        }
        for n in 0..bytes.len() {
            assert!(Manifest::decode(&bytes[..n]).is_err(), "cut at {n}");
        }
    }

    #[test]
    fn writer_refuses_too_many_or_too_few() {
        let mut w = ManifestWriter::new(Vec::new(), 4096, 4096).unwrap();
        assert!(w.push(&[1, 2]).is_err());
        assert!(ManifestWriter::new(Vec::new(), 4096, 4096)
            .unwrap()
            .finish()
            .is_err());
        assert!(ManifestWriter::new(Vec::new(), 4096, 1000).is_err());
    }
}
