//! vdisk-core: what every disk image format shares.
//!
//! - [`DiskImage`]: positional reads from `&self`, the virtual size and an allocation map;
//! - [`Extent`] and [`Allocation`]: byte ranges of an image and how they are stored;
//! - [`Error`] and [`ErrorKind`]: one error type with a matchable kind plus path/offset context;
//! - [`size`]: parsing and printing of byte sizes (`4K`, `1M`, …);
//! - [`Throttle`]: a cap on bytes read per second, shared by threads, and [`Progress`]: how
//!   far a long job got, in bytes read and bytes passed over;
//! - [`Granularity`]: the block size of change maps, manifests and scans;
//! - [`ImageSink`] and [`copy_into`]: writing an image of any format from any image, and
//!   [`write_delta`]: the changed blocks of a new state on top of a parent;
//! - [`MemImage`]: a disk in memory, for tests and examples.
//!
//! - [`Finding`] and [`Severity`]: what a metadata check reports.
//!
//! This crate knows no on-disk format. Format crates (`vdisk-raw`, `vdisk-vmdk`, …) implement
//! the traits; everything above them (diff, bitmaps, repositories, the CLI) works on the traits
//! only.

mod delta;
mod error;
mod extent;
mod finding;
mod granularity;
mod image;
mod mem;
mod progress;
mod sink;
pub mod size;
mod throttle;
mod zero;

pub use delta::{reads_zero, write_delta, write_delta_from, BlockHook, DeltaStats, DeltaTarget};
pub use error::{Error, ErrorKind, Result};
pub use extent::{coalesce, Allocation, Extent};
pub use finding::{Finding, Severity};
pub use granularity::Granularity;
pub use image::{
    check_range, for_each_extent, walk_map, Advice, DiskImage, FileId, ReadOnce, MAP_WINDOW,
};
pub use mem::MemImage;
pub use progress::Progress;
pub use sink::{chunks, copy_into, CopyOptions, CopyStats, ImageSink, COPY_CHUNK};
pub use throttle::Throttle;
pub use zero::is_zero;

/// Bytes in a sector: every offset VMDK stores is counted in these.
pub const SECTOR: u64 = 512;

/// The largest virtual disk vdisk opens: 256 TiB, four times the largest VMFS disk (62 TiB).
/// Every command's memory and time stay bounded up to it; a larger size (a hostile descriptor
/// declaring exabytes) is refused when the image is opened, before anything is allocated.
pub const MAX_DISK_SIZE: u64 = 1 << 48;

/// Refuse a virtual size above [`MAX_DISK_SIZE`] ([`ErrorKind::Unsupported`]).
pub fn check_disk_size(size: u64) -> Result<()> {
    if size > MAX_DISK_SIZE {
        return Err(Error::unsupported(format!(
            "virtual size of {size} bytes is larger than vdisk handles ({})",
            size::human(MAX_DISK_SIZE)
        )));
    }
    Ok(())
}
