//! vdisk-core: what every disk image format shares.
//!
//! - [`DiskImage`]: positional reads from `&self`, the virtual size and an allocation map;
//! - [`Extent`] and [`Allocation`]: byte ranges of an image and how they are stored;
//! - [`Error`] and [`ErrorKind`]: one error type with a matchable kind plus path/offset context;
//! - [`size`]: parsing and printing of byte sizes (`4K`, `1M`, …);
//! - [`Throttle`]: a cap on bytes read per second, shared by threads.
//!
//! This crate knows no on-disk format. Format crates (`vdisk-raw`, `vdisk-vmdk`) implement the
//! traits; everything above them (diff, bitmaps, chains, the CLI) works on the traits only.

mod error;
mod extent;
mod image;
pub mod size;
mod throttle;
mod zero;

pub use error::{Error, ErrorKind, Result};
pub use extent::{coalesce, Allocation, Extent};
pub use image::{check_range, for_each_extent, DiskImage, MAP_WINDOW};
pub use throttle::Throttle;
pub use zero::is_zero;

/// Bytes in a sector: every offset VMDK stores is counted in these.
pub const SECTOR: u64 = 512;
