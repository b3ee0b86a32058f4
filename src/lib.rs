//! vdisk: read, compare and chain virtual-disk images.
//!
//! This facade re-exports the crates of the workspace and adds what needs all of them:
//! format detection ([`open`]) and whole-image operations ([`convert`]).
//!
//! ```no_run
//! use vdisk::DiskImage;
//! let img = vdisk::open("disk.vmdk".as_ref())?;
//! let mut first_sector = [0u8; 512];
//! img.read_at(&mut first_sector, 0)?;
//! println!("{} bytes", img.size());
//! # Ok::<(), vdisk::Error>(())
//! ```

mod format;
#[doc(hidden)]
pub mod fuzzing;
pub mod merge;
pub mod output;

pub use format::{detect, open, open_with, read_head, Format, Image, OpenOptions};
pub use vdisk_core::{
    for_each_extent, size, Allocation, DiskImage, Error, ErrorKind, Extent, Result, Throttle,
    MAP_WINDOW,
};
pub use vdisk_vmdk::convert;

/// vdisk-bitmap: changed-block maps.
pub use vdisk_bitmap as bitmap;
/// vdisk-chain: backup repositories.
pub use vdisk_chain as chain;
/// vdisk-core: image traits, extents, errors.
pub use vdisk_core as core;
/// vdisk-diff: the compare and hash engine.
pub use vdisk_diff as diff;
/// vdisk-raw: raw images and the sparse writer.
pub use vdisk_raw as raw;
/// vdisk-vmdk: VMDK images.
pub use vdisk_vmdk as vmdk;
