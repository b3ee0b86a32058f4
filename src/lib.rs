//! vdisk: read, write, compare and back up virtual-disk images of every hypervisor.
//!
//! The common jobs are one call each:
//!
//! ```
//! # fn main() -> vdisk::Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! # let d = dir.path();
//! # for name in ["top.vmdk", "mid.vmdk", "base.vmdk", "base-flat.vmdk"] {
//! #     std::fs::copy(format!("fixtures/chain/{name}"), d.join(name)).unwrap();
//! # }
//! use vdisk::DiskImage;
//!
//! // Open any image: the format is detected from its bytes, a backing chain is followed.
//! let old = vdisk::open(d.join("mid.vmdk"))?;
//! let new = vdisk::open(d.join("top.vmdk"))?;
//!
//! // What changed, and a delta on `old` holding just that (in `old`'s format).
//! let changes = vdisk::diff(&old, &new)?;
//! assert_eq!(changes.map.changed_bytes(), 128 << 10);
//! vdisk::write_delta(&old, &new, changes.map.extents(), &d.join("delta.vmdk"), &Default::default())?;
//!
//! // Convert (the format follows the name), hash, back up and restore.
//! let raw = vdisk::output_format(&d.join("top.raw"), None)?;
//! vdisk::convert(&new, &d.join("top.raw"), raw, &Default::default())?;
//! vdisk::hash(&new, d.join("top.hashes"))?;
//! let summary = vdisk::backup(d.join("top.vmdk"), d.join("repo"))?;
//! assert_eq!(summary.point, 1);
//! vdisk::restore(d.join("repo"), None, d.join("restored.raw"))?;
//! assert!(vdisk::verify(d.join("repo"))?.iter().all(|p| p.sound()));
//! # Ok(())
//! # }
//! ```
//!
//! This crate only gathers the workspace's crates: each is re-exported as a module
//! ([`image`] the format registry, [`io`], [`raw`], [`vmdk`], [`bitmap`], [`diff`](mod@diff),
//! [`chain`], [`nbd`], [`ova`]), and their everyday items at the top. A glob import
//! (`use vdisk::*`) brings in the facade and the image traits, and shadows nothing of `std`:
//!
//! ```
//! use vdisk::*;
//! let _ = core::mem::size_of::<Extent>(); // `core` is still the standard library's
//! let r: Result<u8, String> = Ok(1);      // vdisk's Result keeps a second parameter
//! assert_eq!(r, Ok(1));
//! ```
//!
//! Cargo features: `cli` (the `vdisk` command: clap, indicatif), `s3` (repositories on object
//! stores: tokio, reqwest), and one per format (`vmdk`, `ova`); all on by default. With
//! `default-features = false` the library reads raw images and VMDKs (which the
//! repository's points are), with no network stack.

/// The README's Rust blocks (the library section's jobs), compiled by `cargo test --doc` so
/// that they keep matching the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use vdisk_chain::{
    backup, restore, verify, BackupOptions, BackupSummary, Location, Report, Repository, Source,
};
pub use vdisk_core::{
    copy_into, for_each_extent, size, write_delta_from, Advice, Allocation, CopyOptions, CopyStats,
    DeltaStats, DiskImage, Error, ErrorKind, Extent, FileId, Finding, Granularity, ImageSink,
    MemImage, Progress, ReadOnce, Result, Severity, Throttle, MAP_WINDOW,
};
pub use vdisk_diff::{diff_images as diff, hash_to_file as hash, DiffReport};
pub use vdisk_image::{
    convert, convert_stream, merge, open, open_with, output_format, write_delta, ConvertOptions,
    DeltaOptions, Image, ImageLocation, OpenOptions,
};
pub use vdisk_io::{read_head, CreateOptions, Existing, Format, Layer, OutputPolicy, Protected};

/// vdisk-bitmap: changed-block maps.
pub use vdisk_bitmap as bitmap;
/// vdisk-chain: backup repositories.
pub use vdisk_chain as chain;
/// vdisk-diff: the compare and hash engine.
pub use vdisk_diff as diff;
/// vdisk-image: the format registry.
pub use vdisk_image as image;
/// vdisk-io: files, outputs and the format-driver traits.
pub use vdisk_io as io;
/// vdisk-nbd: the read-only NBD server.
pub use vdisk_nbd as nbd;
/// vdisk-ova: the disks of OVA appliances, read in place.
pub use vdisk_ova as ova;
/// vdisk-qcow2: qcow2 images (QEMU, KVM, Proxmox).
#[cfg(feature = "qcow2")]
pub use vdisk_qcow2 as qcow2;
/// vdisk-raw: raw images.
pub use vdisk_raw as raw;
/// vdisk-vdi: VDI images (VirtualBox).
#[cfg(feature = "vdi")]
pub use vdisk_vdi as vdi;
/// vdisk-vhd: VHD images (Virtual PC, Hyper-V, Azure; qemu's vpc).
#[cfg(feature = "vhd")]
pub use vdisk_vhd as vhd;
/// vdisk-vhdx: VHDX images (Hyper-V).
#[cfg(feature = "vhdx")]
pub use vdisk_vhdx as vhdx;
/// vdisk-vmdk: VMDK images.
pub use vdisk_vmdk as vmdk;

/// The fuzzing entry points that need the registry.
#[doc(hidden)]
pub use vdisk_image::fuzzing;
