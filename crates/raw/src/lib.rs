//! vdisk-raw: raw disk images, where the file is the disk.
//!
//! - [`RawImage`]: a raw image as a [`vdisk_core::DiskImage`], whose allocation map comes from
//!   the file system's holes (`SEEK_DATA`/`SEEK_HOLE`);
//! - [`RawSink`]: the raw output, to a new file (holes for zeros, published when complete) or
//!   onto a device in place;
//! - [`RAW`]: the format driver the registry holds.

mod format;
mod image;
mod sink;

pub use format::{Raw, RAW};
pub use image::RawImage;
pub use sink::RawSink;
