//! vdisk-vhd: VHD disks (Virtual PC, Hyper-V, Azure; qemu calls the format `vpc`).
//!
//! - [`VHD`]: the format driver the registry holds (name `vhd`, alias `vpc`);
//! - [`VhdImage`]: a fixed, dynamic or differencing disk as a [`vdisk_io::Layer`]: a
//!   differencing disk reads as one layer whose unallocated sectors come from the parent it
//!   names ([`vdisk_io::Layer::backing`], checked by the parent's unique id);
//! - [`FixedSink`] and [`DynamicSink`]: outputs. Fixed disks are sized for Azure (a whole
//!   number of MiB); dynamic and differencing disks keep the exact size. Both say "qem2" with
//!   the largest geometry, so qemu, Hyper-V and Azure size them by the footer's current size;
//! - [`RawFooter`], [`RawDynamicHeader`]: the on-disk structures, parsed and validated.
//!
//! The size of a disk is read exactly as qemu 10 reads it (see
//! [`RawFooter::virtual_sectors`]).

mod bat;
mod check;
mod footer;
mod format;
mod header;
mod image;
mod layer;
mod locator;
mod read;
mod uuid;
mod write;

#[doc(hidden)]
pub mod fuzzing;

pub use footer::{
    checksum, DiskType, Footer, Geometry, RawFooter, SizeSource, FEATURE_RESERVED,
    FEATURE_TEMPORARY, FOOTER_COOKIE, FOOTER_SIZE, MAX_SECTORS, NO_DATA_OFFSET, VHD_EPOCH,
};
pub use format::{new_parent, probe, Vhd, VHD};
pub use header::{
    DynamicHeader, ParentLocator, Platform, RawDynamicHeader, DEFAULT_BLOCK_SIZE, HEADER_COOKIE,
    HEADER_SIZE, UNALLOCATED,
};
pub use image::{ParentLink, VhdImage, LINK_KIND};
pub use layer::vhd_time;
pub use locator::LocatorName;
pub use uuid::Uuid;
pub use write::{
    fixed_size, DynamicSink, FixedSink, NewParent, AZURE_ALIGNMENT, BLOCK_SIZES, MAX_SIZE,
};
