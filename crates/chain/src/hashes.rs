//! The per-point hash manifests and stored-grain bitmaps.

use vdisk_bitmap::ChangeMap;
use vdisk_core::Result;
use vdisk_diff::{block_hash, ManifestWriter};
use vdisk_vmdk::VmdkImage;

use crate::GRAIN;

/// Hashes of an all-zero disk of `size` bytes, one per grain.
pub(crate) fn zero_hashes(size: u64) -> Vec<u128> {
    let full = block_hash(&vec![0u8; GRAIN as usize]);
    let blocks = size.div_ceil(GRAIN);
    let mut v = vec![full; blocks as usize];
    let tail = size % GRAIN;
    if tail != 0 {
        if let Some(last) = v.last_mut() {
            *last = block_hash(&vec![0u8; tail as usize]);
        }
    }
    v
}

/// The hash of `len` zero bytes (a whole grain, or the disk's last, shorter one).
pub(crate) fn zero_hash(len: u64) -> u128 {
    if len == GRAIN {
        static FULL: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
        *FULL.get_or_init(|| block_hash(&vec![0u8; GRAIN as usize]))
    } else {
        block_hash(&vec![0u8; len as usize])
    }
}

/// A manifest of `hashes` for a disk of `size` bytes.
pub(crate) fn manifest_bytes(size: u64, hashes: &[u128]) -> Result<Vec<u8>> {
    let mut w = ManifestWriter::new(Vec::new(), size, GRAIN)?;
    w.push(hashes)?;
    w.finish()
}

/// The grains a point's own files store (data or zeroed).
pub(crate) fn stored_map(img: &VmdkImage) -> Result<ChangeMap> {
    let mut map = ChangeMap::new(img.layers()[0].size(), GRAIN)?;
    img.for_each_stored(0, |e| map.mark_bytes(e.start, e.length))?;
    Ok(map)
}
