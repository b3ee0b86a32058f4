//! vdisk-diff: find which blocks changed between two disk states.
//!
//! - [`diff`]: compare two images of any formats block by block;
//! - [`hash_image`] and [`diff_manifest`]: a hash manifest (xxh3-128 of every block) made
//!   once, so that a later diff needs only the new image;
//! - [`Manifest`]: the manifest's checksummed on-disk form.
//!
//! Scans walk the disk in windows. In each window the allocation maps of both sides decide
//! what must be read at all: ranges that read as zero on both sides are equal without reading
//! a byte. What must be read is split into chunks handled in parallel (rayon), compared or
//! hashed straight from memory maps where the image has them, and the window's mapped pages
//! are released before the next one, so resident memory stays flat however large the disk.

#[doc(hidden)]
pub mod fuzzing;
mod manifest;
mod scan;

pub use manifest::{
    is_manifest, window_blocks, Manifest, ManifestBytes, ManifestFile, ManifestFileBytes,
    ManifestWriter, WindowHashes, MANIFEST_MAGIC,
};
pub use scan::{
    diff, diff_manifest, diff_manifest_each, hash_image, DiffReport, ScanOptions, ScanWindow,
};

/// The block hash: XXH3-128 (with run-time AVX2/SSE2 selection).
pub fn block_hash(data: &[u8]) -> u128 {
    twox_hash::XxHash3_128::oneshot(data)
}
