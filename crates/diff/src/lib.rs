//! vdisk-diff: find which blocks changed between two disk states.
//!
//! - [`diff`]: compare two images of any formats block by block;
//! - [`hash_image`] and [`diff_manifest`]: a hash manifest (xxh3-128 of every block) made
//!   once, so that a later diff needs only the new image;
//! - [`diff_changed`] and [`diff_manifest_changed`]: the same, reading only the blocks a
//!   changed-block map names (a hypervisor's dirty bitmap);
//! - [`Manifest`]: the manifest's checksummed on-disk form.
//!
//! Scans walk the disk in windows. In each window the allocation maps of both sides decide
//! what must be read at all: ranges that read as zero on both sides are equal without reading
//! a byte. What must be read is split into chunks handled in parallel (rayon), compared or
//! hashed straight from memory maps where the image has them, and the window's mapped pages
//! are released before the next one, so resident memory stays flat however large the disk.

mod candidates;
#[doc(hidden)]
pub mod fuzzing;
mod manifest;
mod scan;

pub use candidates::{diff_changed, diff_manifest_changed};
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

/// Compare two images block by block in 64 KiB blocks ([`diff`] takes other block sizes, a
/// throttle or progress). Only ranges that hold data on either side are read.
///
/// ```
/// use vdisk_core::MemImage;
/// let old = MemImage::new(vec![1u8; 1 << 20]);
/// let mut bytes = vec![1u8; 1 << 20];
/// bytes[70_000] = 2;
/// let report = vdisk_diff::diff_images(&old, &MemImage::new(bytes))?;
/// assert_eq!(report.map.extents().collect::<Vec<_>>(), [(64 << 10, 64 << 10)]);
/// # Ok::<(), vdisk_core::Error>(())
/// ```
pub fn diff_images(
    old: &dyn vdisk_core::DiskImage,
    new: &dyn vdisk_core::DiskImage,
) -> vdisk_core::Result<DiffReport> {
    diff(
        old,
        new,
        &ScanOptions::new(vdisk_core::Granularity::DEFAULT),
    )
}

/// Hash every 64 KiB block of `img` into a manifest at `manifest` (refused if it exists, and
/// never one of `img`'s files), for a later [`diff_manifest`] that needs only the new image.
/// Returns the bytes read.
pub fn hash_to_file(
    img: &dyn vdisk_core::DiskImage,
    manifest: impl AsRef<std::path::Path>,
) -> vdisk_core::Result<u64> {
    let mut protected = vdisk_io::Protected::new();
    protected.add_image(img);
    let policy = vdisk_io::OutputPolicy::new().protecting(protected);
    let opts = ScanOptions::new(vdisk_core::Granularity::DEFAULT);
    vdisk_io::write_stream(manifest.as_ref(), &policy, |w| {
        Ok(hash_image(img, w, &opts)?.1)
    })
}
