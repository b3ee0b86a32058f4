//! vdisk-raw: raw disk images.
//!
//! - [`MappedFile`]: a read-only file behind a memory map, with a plain positional-read
//!   fallback where mapping is not possible (empty files, pipes, some special files);
//! - [`RawImage`]: a raw image as a [`vdisk_core::DiskImage`], whose allocation map comes from
//!   the file system's holes (`SEEK_DATA`/`SEEK_HOLE`);
//! - [`SparseWriter`]: writes an image file that leaves holes where the data is zero, unnamed
//!   (or under a temporary name) until it is complete;
//! - [`RawSink`] and [`DeviceWriter`]: raw outputs, to a new file or onto a device in place;
//! - [`OutputPolicy`], [`Existing`], [`Protected`]: the rules every output follows (an
//!   existing destination is refused or replaced; an input is never written over).

mod device;
mod file;
mod holes;
mod image;
mod output;
mod writer;

pub use device::{DeviceWriter, RawSink};
pub use file::{Cache, MappedFile, ReadAhead};
pub use holes::data_ranges;
pub use image::RawImage;
pub use output::{disk_usage, file_id, read_head, Destination, Existing, OutputPolicy, Protected};
pub use writer::{partial_path, write_file, write_stream, SealedFile, SparseWriter};
