//! The common jobs, one call each: back up an image into a repository, restore a point,
//! verify a repository.

use std::path::Path;

use vdisk_core::{CopyStats, Result};
use vdisk_image::{ConvertOptions, ImageLocation};
use vdisk_io::{CreateOptions, OutputPolicy, Protected};

use crate::{
    Access, BackupOptions, BackupSummary, DiskSource, Location, Report, Repository, Source,
    VerifyOptions,
};

/// Back up the image at `src` into the (unencrypted) repository at `repo`, made by the
/// first backup, as a point of the NAME that is `src`'s file stem: the NAME's first point
/// stores what the repository lacks, later ones are made against the newest. `repo` is a
/// folder or an object store: a path, `"s3://BUCKET/PREFIX"` (credentials from the `AWS_*`
/// environment), or a [`Location`].
///
/// ```
/// let dir = tempfile::tempdir()?;
/// let repo = dir.path().join("repo");
/// let disk = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/chain/mid.vmdk");
/// let first = vdisk_chain::backup(disk, &repo)?;
/// assert_eq!((first.name.as_str(), first.point, first.kind.name()), ("mid", 1, "full"));
/// let again = vdisk_chain::backup(disk, &repo)?;
/// assert_eq!((again.point, again.kind.name()), (2, "incremental"));
/// // Nothing changed, so the second point stores nothing.
/// assert_eq!(again.bytes_added, 0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn backup(src: impl Into<ImageLocation>, repo: impl Into<Location>) -> Result<BackupSummary> {
    let src = src.into();
    let img = vdisk_image::open(src)?;
    let source = Source::of(&img)?;
    let path = std::path::PathBuf::from(&source.identity);
    let name = path
        .file_stem()
        .map_or_else(|| "disk".to_string(), |s| s.to_string_lossy().into_owned());
    let label = path
        .file_name()
        .map_or_else(|| "disk".to_string(), |s| s.to_string_lossy().into_owned());
    let repository = Repository::open_or_init(repo, &Access::default())?;
    let disk = DiskSource {
        image: &img,
        source,
        label,
    };
    repository.backup(&name, &[disk], &BackupOptions::default())
}

/// Restore point `point` (the newest when `None`) of the only NAME of the (unencrypted)
/// repository at `repo` as a raw image at `dst` (refused if it exists). Every block read is
/// checked; an output inside the repository is refused.
pub fn restore(
    repo: impl Into<Location>,
    point: Option<u64>,
    dst: impl AsRef<Path>,
) -> Result<CopyStats> {
    let repository = Repository::open(repo, &Access::default())?;
    let p = repository.select(None, point)?;
    let image = repository.point_image(&p, None)?;
    let mut protected = Protected::new();
    if let Some(dir) = repository.local_dir() {
        protected.add_folder(dir)?;
    }
    let opts = ConvertOptions {
        create: CreateOptions {
            policy: OutputPolicy::new().protecting(protected),
            ..Default::default()
        },
        ..Default::default()
    };
    let raw = vdisk_image::registry::require("raw")?;
    vdisk_image::convert(&image, dst.as_ref(), raw, &opts)
}

/// Check every point of the (unencrypted) repository at `repo`.
pub fn verify(repo: impl Into<Location>) -> Result<Vec<Report>> {
    Repository::open(repo, &Access::default())?.verify(None, None, &VerifyOptions::default())
}
