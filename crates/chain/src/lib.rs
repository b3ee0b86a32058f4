//! vdisk-chain: backup repositories, in a folder or under a prefix of an S3 bucket
//! ([`Location`]).
//!
//! A repository (layout 3, see the crate's README for the design and the reasons behind it)
//! holds the points of many NAMEs; a point is one instant of one NAME, one disk or several
//! disks of one VM taken together. Stored data is content-addressed: each disk is cut into
//! fixed, aligned blocks (64 KiB by default); a block's id is BLAKE3 keyed with a key of the
//! repository, so the same block in any disk, VM or point is stored once, and an all-zero
//! block is stored nowhere; blocks are compressed with zstd where that pays and sealed
//! (XChaCha20-Poly1305 in an encrypted repository, a keyed MAC otherwise) into packs of some
//! MiB; a disk's index at a point is itself cut into content-addressed chunks, so an
//! unchanged region costs a new point nothing.
//!
//! - [`Repository`]: making ([`Repository::init`]) and opening one, its points;
//! - [`Repository::backup`]: a point of a NAME (xxh3 fingerprints decide what to hash);
//! - [`Repository::point_image`]: a disk of a point as a [`vdisk_core::DiskImage`] whose every
//!   block is checked ([`PointImage`]);
//! - [`Repository::verify`], [`Repository::prune`] (retention, then garbage collection),
//!   [`Repository::sync_from`], [`Repository::add_key`];
//! - [`layout2`]: the earlier layout (a VMDK chain per folder), still read by every reading
//!   command, and brought into layout 3 by [`Repository::import_layout2`].
//!
//! ```
//! use vdisk_chain::{Access, BackupOptions, DiskSource, InitOptions, Repository, Source};
//! use vdisk_core::{DiskImage, MemImage};
//! # let dir = tempfile::tempdir().unwrap();
//! let repo = Repository::init(dir.path().join("repo"), &InitOptions::default())?;
//! let disk = MemImage::new(vec![7u8; 1 << 20]);
//! let src = DiskSource {
//!     image: &disk,
//!     source: Source { identity: "/vm1/disk0.raw".into(), unclean: false },
//!     label: "disk0.raw".into(),
//! };
//! let s = repo.backup("vm1", &[src], &BackupOptions::default())?;
//! assert_eq!(s.point, 1);
//! let point = repo.select(Some("vm1"), None)?;
//! let image = repo.point_image(&point, None)?; // a DiskImage whose reads are checked
//! assert_eq!(image.size(), 1 << 20);
//! # Ok::<(), vdisk_core::Error>(())
//! ```

mod backup;
mod clock;
mod config;
mod crypto;
mod gc;
mod index;
mod jobs;
pub mod layout2;
mod locks;
mod pack;
mod point;
mod prune;
mod reader;
mod repository;
mod restore;
mod retention;
mod source;
mod store;
mod sync;
#[cfg(test)]
mod tests;
mod tree;
mod verify;

#[doc(hidden)]
pub mod fuzzing;

pub use backup::{BackupOptions, BackupSummary, DiskSource, PointKind};
pub use clock::rfc3339;
pub use config::{DEFAULT_BLOCK, MAX_BLOCK, MIN_BLOCK};
pub use gc::GcSummary;
pub use jobs::{backup, restore, verify};
pub use point::{DiskRecord, PointRecord, PointStats};
pub use prune::{PruneOptions, PruneSummary};
pub use reader::{open_reader, Reader};
pub use repository::{Access, InitOptions, PasswordSource, Point, PointList, Repository};
pub use restore::PointImage;
pub use retention::Retention;
pub use source::Source;
pub use store::{Layout, Location};
pub use sync::SyncSummary;
pub use verify::{Problem, Report, VerifyOptions};
