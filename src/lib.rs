//! vdisk: read, compare and chain virtual-disk images (VMDK and raw).
//!
//! The common jobs are one call each:
//!
//! ```
//! # fn main() -> vdisk::Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! # let d = dir.path();
//! # std::fs::copy("fixtures/chain/top.vmdk", d.join("top.vmdk")).unwrap();
//! # std::fs::copy("fixtures/chain/mid.vmdk", d.join("mid.vmdk")).unwrap();
//! # std::fs::copy("fixtures/chain/base.vmdk", d.join("base.vmdk")).unwrap();
//! # std::fs::copy("fixtures/chain/base-flat.vmdk", d.join("base-flat.vmdk")).unwrap();
//! use vdisk::{DiskImage, Target};
//!
//! // Open any image: the format is detected from its bytes, a chain is followed.
//! let old = vdisk::open(d.join("mid.vmdk"))?;
//! let new = vdisk::open(d.join("top.vmdk"))?;
//!
//! // What changed, and a delta link on `old` holding just that.
//! let changes = vdisk::diff(&old, &new)?;
//! assert_eq!(changes.map.changed_bytes(), 128 << 10);
//! vdisk::write_delta(&old, &new, &changes, d.join("delta.vmdk"))?;
//!
//! // Convert, hash, back up and restore.
//! vdisk::convert(&new, d.join("top.raw"), Target::Raw)?;
//! vdisk::hash(&new, d.join("top.hashes"))?;
//! let summary = vdisk::backup(d.join("top.vmdk"), d.join("repo"))?;
//! assert_eq!(summary.point, 1);
//! vdisk::restore(d.join("repo"), None, d.join("restored.raw"))?;
//! assert!(vdisk::verify(d.join("repo"))?.iter().all(|p| p.sound()));
//! # Ok(())
//! # }
//! ```
//!
//! Below the facade, each crate of the workspace is re-exported as a module:
//! [`raw`], [`vmdk`], [`bitmap`], [`diff`](mod@diff), [`chain`]. A glob import
//! (`use vdisk::*`) brings in the facade and the image traits, and shadows nothing of `std`:
//!
//! ```
//! use vdisk::*;
//! let _ = core::mem::size_of::<Extent>(); // `core` is still the standard library's
//! let r: Result<u8, String> = Ok(1);      // vdisk's Result keeps a second parameter
//! assert_eq!(r, Ok(1));
//! ```
//!
//! The `cli` feature (on by default) builds the `vdisk` command; with
//! `default-features = false` the library builds without clap and indicatif.

mod convert;
mod format;
#[doc(hidden)]
pub mod fuzzing;
pub mod merge;

use std::path::Path;

pub use convert::{convert, convert_stream, convert_with, create_sink, ConvertOptions, Target};
pub use format::{detect, open, open_with, Format, Image, OpenOptions};
pub use vdisk_chain::{BackupOptions, BackupSummary, Location, PointReport, Repository, Source};
pub use vdisk_core::{
    copy_into, for_each_extent, size, Allocation, CopyOptions, CopyStats, DiskImage, Error,
    ErrorKind, Extent, FileId, Granularity, ImageSink, MemImage, Result, Throttle, MAP_WINDOW,
};
pub use vdisk_diff::DiffReport;
pub use vdisk_raw::{read_head, Existing, OutputPolicy, Protected};
pub use vdisk_vmdk::writer::{Adapter, LinkStats, Subformat};

/// The README's Rust blocks (the library section's jobs), compiled by `cargo test --doc` so
/// that they keep matching the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// vdisk-bitmap: changed-block maps.
pub use vdisk_bitmap as bitmap;
/// vdisk-chain: backup repositories.
pub use vdisk_chain as chain;
/// vdisk-diff: the compare and hash engine.
pub use vdisk_diff as diff;
/// vdisk-nbd: the read-only NBD server.
pub use vdisk_nbd as nbd;
/// vdisk-ova: the disks of OVA appliances, read in place.
pub use vdisk_ova as ova;
/// vdisk-raw: raw images, output files and devices.
pub use vdisk_raw as raw;
/// vdisk-vmdk: VMDK images.
pub use vdisk_vmdk as vmdk;

/// Compare two images block by block (64 KiB blocks); see [`diff::diff`] for other block
/// sizes, a throttle or progress. Only ranges that hold data on either side are read.
///
/// ```
/// // fixtures/README.md: top.vmdk writes 0x54 in 128..192 KiB and zeroes 192..256 KiB
/// // over mid.vmdk.
/// let mid = vdisk::open("fixtures/chain/mid.vmdk")?;
/// let top = vdisk::open("fixtures/chain/top.vmdk")?;
/// let changes = vdisk::diff(&mid, &top)?;
/// assert_eq!(changes.map.extents().collect::<Vec<_>>(), [(128 << 10, 128 << 10)]);
/// assert!(vdisk::diff(&top, &top)?.map.is_empty());
/// # Ok::<(), vdisk::Error>(())
/// ```
pub fn diff(old: &dyn DiskImage, new: &dyn DiskImage) -> Result<DiffReport> {
    vdisk_diff::diff(
        old,
        new,
        &vdisk_diff::ScanOptions::new(Granularity::DEFAULT),
    )
}

/// Hash every 64 KiB block of `img` into a manifest at `manifest` (refused if it exists), for a
/// later `diff` that needs only the new image ([`diff::diff_manifest`]). Returns the bytes read.
///
/// ```
/// use vdisk::diff::{diff_manifest, ManifestFile, ScanOptions};
/// let dir = tempfile::tempdir()?;
/// let mid = vdisk::open("fixtures/chain/mid.vmdk")?;
/// vdisk::hash(&mid, dir.path().join("mid.hashes"))?;
///
/// // Later, mid.vmdk itself is no longer needed to find what changed.
/// let hashes = ManifestFile::open(&dir.path().join("mid.hashes"))?;
/// let top = vdisk::open("fixtures/chain/top.vmdk")?;
/// let changes = diff_manifest(&hashes, &top, &ScanOptions::new(Default::default()))?;
/// assert_eq!(changes.map.extents().collect::<Vec<_>>(), [(128 << 10, 128 << 10)]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn hash(img: &dyn DiskImage, manifest: impl AsRef<Path>) -> Result<u64> {
    let mut protected = Protected::new();
    protected.add_image(img);
    let policy = OutputPolicy::new().protecting(protected);
    let opts = vdisk_diff::ScanOptions::new(Granularity::DEFAULT);
    vdisk_raw::write_stream(manifest.as_ref(), &policy, |w| {
        Ok(vdisk_diff::hash_image(img, w, &opts)?.1)
    })
}

/// Write a VMDK delta link at `dst` on `parent` (a VMDK) holding the blocks of `new` that
/// `changes` lists (a [`DiffReport`] or a [`bitmap::ChangeMap`]): read through the link, the
/// disk is `new`. An existing `dst` is refused; `dst` is never the parent or one of the
/// images' files.
///
/// ```
/// use vdisk::DiskImage;
/// let dir = tempfile::tempdir()?;
/// let d = dir.path();
/// for name in ["top.vmdk", "mid.vmdk", "base.vmdk", "base-flat.vmdk"] {
///     std::fs::copy(format!("fixtures/chain/{name}"), d.join(name))?;
/// }
/// let (mid, top) = (vdisk::open(d.join("mid.vmdk"))?, vdisk::open(d.join("top.vmdk"))?);
/// let changes = vdisk::diff(&mid, &top)?;
/// let stats = vdisk::write_delta(&mid, &top, &changes, d.join("delta.vmdk"))?;
/// // One grain of 0x54, and one zeroed grain masking the base's 0x42.
/// assert_eq!((stats.data_grains, stats.zeroed_grains), (1, 1));
///
/// // delta.vmdk on mid.vmdk reads as top.vmdk.
/// let delta = vdisk::open(d.join("delta.vmdk"))?;
/// assert!(vdisk::diff(&top, &delta)?.map.is_empty());
/// let e = vdisk::write_delta(&mid, &top, &changes, d.join("mid.vmdk")).unwrap_err();
/// assert_eq!(e.kind(), vdisk::ErrorKind::Refused);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn write_delta(
    parent: &Image,
    new: &dyn DiskImage,
    changes: impl AsRef<vdisk_bitmap::ChangeMap>,
    dst: impl AsRef<Path>,
) -> Result<LinkStats> {
    let dst = dst.as_ref();
    let vmdk = match parent {
        Image::Vmdk(v) => v,
        Image::Ova(_) => return Err(ova_parent()),
        Image::Raw(_) => {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "the parent of a delta link must be a VMDK (convert it first)",
            ))
        }
    };
    let mut protected = Protected::new();
    protected.add_image(parent);
    protected.add_image(new);
    let opts = vdisk_vmdk::writer::WriteOptions {
        policy: OutputPolicy::new().protecting(protected),
        ..Default::default()
    };
    vdisk_vmdk::writer::write_delta_link(
        &vdisk_vmdk::writer::LinkTarget {
            parent_path: vmdk.layers()[0].path(),
            parent: vmdk,
            layout: vdisk_vmdk::writer::Layout::Monolithic,
            opts: &opts,
            on_grain: None,
        },
        new,
        changes.as_ref().extents(),
        dst,
    )
}

/// The error for a delta link asked on a disk inside an OVA: a link names its parent by a
/// file name, and no reader opens a file inside an archive.
pub fn ova_parent() -> Error {
    Error::new(
        ErrorKind::InvalidArgument,
        "the parent of a delta link must be a VMDK file of its own, not a disk inside an OVA archive (extract it first)",
    )
}

/// Back up the image at `src` into the repository at `repo` (created by the first backup):
/// a full point the first time, an incremental point (found by hashing) after.
/// `repo` is a folder or an object store: a path, `"s3://BUCKET/PREFIX"` (credentials from
/// the `AWS_*` environment), or a [`Location`].
///
/// ```
/// let dir = tempfile::tempdir()?;
/// let repo = dir.path().join("repo");
/// let first = vdisk::backup("fixtures/chain/mid.vmdk", &repo)?;
/// assert_eq!((first.point, first.kind.name()), (1, "full"));
/// let again = vdisk::backup("fixtures/chain/mid.vmdk", &repo)?;
/// assert_eq!((again.point, again.kind.name()), (2, "incremental"));
/// // Nothing changed, so the second point stores nothing.
/// let points = vdisk::Repository::open(&repo)?.points().to_vec();
/// assert_eq!(points[1].changed_bytes, 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn backup(src: impl AsRef<Path>, repo: impl Into<Location>) -> Result<BackupSummary> {
    let src = src.as_ref();
    let img = open(src)?;
    let source = source_of(src, &img)?;
    let mut repository = Repository::open_or_create(repo)?;
    repository.backup(&img, &source, &BackupOptions::default())
}

/// The source identity of the image `img` opened from `src`: its canonical path, and for a
/// disk of an OVA the archive's canonical path joined with the disk's name in it.
pub fn source_of(src: &Path, img: &Image) -> Result<Source> {
    match img {
        Image::Ova(o) => Source::of_member(src, &o.disk().name, img),
        _ => Source::of(src, img),
    }
}

/// Restore point `point` (the newest when `None`) of the repository at `repo` as a raw image
/// at `dst` (refused if it exists). Every stored grain read is checked against the hash kept
/// at backup time.
///
/// ```
/// let dir = tempfile::tempdir()?;
/// let repo = dir.path().join("repo");
/// vdisk::backup("fixtures/chain/top.vmdk", &repo)?;
/// vdisk::restore(&repo, None, dir.path().join("top.raw"))?;
/// let restored = std::fs::read(dir.path().join("top.raw"))?;
/// let expected: Vec<u8> = [0x42u8, 0x4d, 0x54, 0]
///     .iter()
///     .flat_map(|&b| std::iter::repeat(b).take(64 << 10))
///     .collect();
/// assert!(restored == expected);
/// // An output inside the repository being read is refused.
/// let e = vdisk::restore(&repo, Some(1), repo.join("x.raw")).unwrap_err();
/// assert_eq!(e.kind(), vdisk::ErrorKind::Refused);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn restore(
    repo: impl Into<Location>,
    point: Option<u64>,
    dst: impl AsRef<Path>,
) -> Result<CopyStats> {
    let repository = Repository::open(repo)?;
    let image = repository.checked_point(point)?;
    let mut protected = Protected::new();
    if let Some(dir) = repository.local_dir() {
        protected.add_folder(dir)?;
    }
    protected.add_image(&image);
    let opts = ConvertOptions {
        policy: OutputPolicy::new().protecting(protected),
        ..Default::default()
    };
    convert_with(&image, dst, Target::Raw, &opts)
}

/// Check every point of the repository at `repo` against the hashes kept at backup time.
///
/// ```
/// let dir = tempfile::tempdir()?;
/// let repo = dir.path().join("repo");
/// vdisk::backup("fixtures/chain/top.vmdk", &repo)?;
/// vdisk::backup("fixtures/chain/top.vmdk", &repo)?;
/// let reports = vdisk::verify(&repo)?;
/// let sound: Vec<_> = reports.iter().map(|r| (r.point, r.sound())).collect();
/// assert_eq!(sound, [(1, true), (2, true)]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn verify(repo: impl Into<Location>) -> Result<Vec<PointReport>> {
    Repository::open(repo)?.verify(None, &vdisk_chain::VerifyOptions::default())
}
