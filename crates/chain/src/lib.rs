//! vdisk-chain: backup repositories.
//!
//! A repository is a folder, or a prefix of an S3 bucket ([`Location`]), holding the restore
//! points of one disk: a full point and
//! incremental points, each a twoGbMaxExtentSparse VMDK (a small descriptor plus sparse
//! extents) linked to the one before by parentFileNameHint and parentCID, so qemu-img or
//! VMware opens any point directly. Beside them, vdisk keeps per point a hash manifest of the
//! disk (one xxh3-128 per grain), a bitmap of the grains the point stores, and checksums of
//! its files' metadata; and `vdisk-repo.json`, the list of points.
//!
//! - [`Repository`]: opening (reading needs no lock and no write access; writing takes the
//!   kernel's lock and first removes what killed runs left), in `repo`;
//! - backing up ([`Repository::backup`]), in `backup`;
//! - restoring, with every grain checked against its hash ([`CheckedPoint`]), in `restore`;
//! - verifying ([`Repository::verify`]), in `verify`;
//! - pruning ([`Repository::prune`]), in `prune`;
//! - the metadata ([`RepoMeta`]) and file checksums, in `meta` and `checksums`.
//!
//! Every run writes new files under names nothing refers to yet, syncs them, and only then
//! switches `vdisk-repo.json` atomically. A run killed at any instant leaves the repository as
//! it was; the files it left behind are removed by the next writer.
//!
//! ```
//! use vdisk_chain::{BackupOptions, Repository, Source};
//! use vdisk_core::MemImage;
//! # let dir = tempfile::tempdir().unwrap();
//! let disk = MemImage::new(vec![7u8; 1 << 20]);
//! let source = Source { identity: "vm1/disk0".into(), unclean: false };
//! let mut repo = Repository::open_or_create(dir.path().join("repo"))?;
//! let first = repo.backup_image(&disk, &source, &BackupOptions::default())?;
//! assert_eq!(first.point, 1);
//! let point = repo.checked_point(None)?; // a DiskImage whose reads are checked
//! # Ok::<(), vdisk_core::Error>(())
//! ```

mod backup;
mod checksums;
mod hashes;
mod jobs;
mod lock;
mod meta;
mod prune;
mod repo;
mod restore;
mod source;
mod store;
mod sync;
#[cfg(test)]
mod tests;
mod verify;

#[doc(hidden)]
pub mod fuzzing;

pub use backup::{BackupOptions, BackupSummary};
pub use jobs::{backup, restore, verify};
pub use lock::{RepoLock, LOCK_FILE};
pub use meta::{
    now_rfc3339, Covers, DiskIdentity, FileCheck, PointKind, RepoMeta, RestorePoint, META_FILE,
};
pub use prune::PruneSummary;
pub use repo::Repository;
pub use restore::CheckedPoint;
pub use source::Source;
pub use store::Location;
pub use sync::SyncSummary;
pub use verify::{PointProblem, PointReport, VerifyOptions};

/// The format points are written in: a VMDK in the clustered layout (what a VMDK driver
/// writes into a store), a small descriptor file (which prune can rewrite atomically when a
/// link's parent becomes a synthetic full) and sparse extents cut along the data, so a point
/// costs its data, not its disk's size.
const POINT_FORMAT: &str = "vmdk";
/// Grain size of the points, and so the block size of hashes and bitmaps.
const GRAIN: u64 = 64 << 10;

/// The driver points are written with.
fn point_format() -> vdisk_core::Result<&'static dyn vdisk_io::Format> {
    vdisk_image::registry::require(POINT_FORMAT)
}

/// Make a small repository with two points at `dir`, for documentation examples.
#[doc(hidden)]
pub fn doc_example_repository(dir: &std::path::Path) {
    let source = Source {
        identity: "example".into(),
        unclean: false,
    };
    let mut repo = Repository::open_or_create(dir).expect("a repository in a fresh folder");
    for fill in [1u8, 2] {
        let disk = vdisk_core::MemImage::new(vec![fill; 256 << 10]);
        repo.backup_image(&disk, &source, &BackupOptions::default())
            .expect("a backup of an in-memory disk");
    }
}
