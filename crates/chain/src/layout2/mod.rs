//! Layout 2, the earlier repository layout: the restore points of one disk, each a
//! twoGbMaxExtentSparse VMDK (a small descriptor plus sparse extents) linked to the one before
//! by parentFileNameHint and parentCID, so qemu-img or VMware opens any point directly. Beside
//! them, vdisk kept per point a hash manifest of the disk (one xxh3-128 per grain), a bitmap of
//! the grains the point stores, and checksums of its files' metadata; and `vdisk-repo.json`
//! (on an object store, `vdisk-repo.NNNNNNNNNNNN.json`), the list of points.
//!
//! Every reading command still reads it (list, verify, restore, serve), with every grain
//! checked against its hash ([`CheckedPoint`]); `vdisk sync OLD NEW` brings its points into
//! a layout-3 repository ([`crate::Repository::import_layout2`]). The writer stays, for
//! library users with repositories in this layout and for the tests that make them.
//!
//! - [`Repository`]: opening (reading needs no lock and no write access; writing takes the
//!   kernel's lock and first removes what killed runs left);
//! - backing up ([`Repository::backup`]), restoring ([`CheckedPoint`]), verifying
//!   ([`Repository::verify`]), pruning ([`Repository::prune`]), copying
//!   ([`Repository::sync_from`]);
//! - the metadata ([`RepoMeta`]) and file checksums.
//!
//! ```
//! use vdisk_chain::layout2::{BackupOptions, Repository};
//! use vdisk_chain::Source;
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

pub(crate) mod backup;
pub(crate) mod checksums;
pub(crate) mod hashes;
pub(crate) mod lock;
pub(crate) mod meta;
pub(crate) mod prune;
pub(crate) mod repo;
pub(crate) mod restore;
pub(crate) mod sync;
#[cfg(test)]
mod tests;
pub(crate) mod verify;

pub use backup::{BackupOptions, BackupSummary};
pub use lock::{RepoLock, LOCK_FILE};
pub use meta::{
    now_rfc3339, Covers, DiskIdentity, FileCheck, PointKind, RepoMeta, RestorePoint, META_FILE,
};
pub use prune::PruneSummary;
pub use repo::Repository;
pub use restore::CheckedPoint;
pub use sync::SyncSummary;
pub use verify::{PointProblem, PointReport, VerifyOptions};

/// The format points are written in: a VMDK in the clustered layout (what a VMDK driver
/// writes into a store), a small descriptor file (which prune can rewrite atomically when a
/// link's parent becomes a synthetic full) and sparse extents cut along the data, so a point
/// costs its data, not its disk's size.
const POINT_FORMAT: &str = "vmdk";
/// Grain size of the points, and so the block size of hashes and bitmaps.
pub(crate) const GRAIN: u64 = 64 << 10;

/// The driver points are written with.
fn point_format() -> vdisk_core::Result<&'static dyn vdisk_io::Format> {
    vdisk_image::registry::require(POINT_FORMAT)
}

/// Make a small layout-2 repository with two points at `dir`, for documentation examples.
#[doc(hidden)]
pub fn doc_example_repository(dir: &std::path::Path) {
    let source = crate::Source {
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
