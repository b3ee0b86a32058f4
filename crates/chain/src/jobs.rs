//! The common jobs, one call each: back up an image into a repository, restore a point,
//! verify a repository.

use std::path::Path;

use vdisk_core::{CopyStats, Result};
use vdisk_image::{ConvertOptions, ImageLocation};
use vdisk_io::{CreateOptions, OutputPolicy, Protected};

use crate::{BackupOptions, BackupSummary, Location, PointReport, Repository, VerifyOptions};

/// Back up the image at `src` into the repository at `repo` (created by the first backup):
/// a full point the first time, an incremental point (found by hashing) after. `repo` is a
/// folder or an object store: a path, `"s3://BUCKET/PREFIX"` (credentials from the `AWS_*`
/// environment), or a [`Location`].
///
/// ```
/// let dir = tempfile::tempdir()?;
/// let repo = dir.path().join("repo");
/// let disk = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/chain/mid.vmdk");
/// let first = vdisk_chain::backup(disk, &repo)?;
/// assert_eq!((first.point, first.kind.name()), (1, "full"));
/// let again = vdisk_chain::backup(disk, &repo)?;
/// assert_eq!((again.point, again.kind.name()), (2, "incremental"));
/// // Nothing changed, so the second point stores nothing.
/// let points = vdisk_chain::Repository::open(&repo)?.points().to_vec();
/// assert_eq!(points[1].changed_bytes, 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn backup(src: impl Into<ImageLocation>, repo: impl Into<Location>) -> Result<BackupSummary> {
    Repository::open_or_create(repo)?.backup(src, &BackupOptions::default())
}

/// Restore point `point` (the newest when `None`) of the repository at `repo` as a raw image
/// at `dst` (refused if it exists). Every stored grain read is checked against the hash kept
/// at backup time; an output inside the repository being read is refused.
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
        create: CreateOptions {
            policy: OutputPolicy::new().protecting(protected),
            ..Default::default()
        },
        ..Default::default()
    };
    vdisk_image::convert(&image, dst.as_ref(), vdisk_raw_format(), &opts)
}

/// The raw format, which every build registers.
fn vdisk_raw_format() -> &'static dyn vdisk_io::Format {
    vdisk_image::registry::require("raw").expect("raw is always registered")
}

/// Check every point of the repository at `repo` against the hashes kept at backup time.
pub fn verify(repo: impl Into<Location>) -> Result<Vec<PointReport>> {
    Repository::open(repo)?.verify(None, &VerifyOptions::default())
}
