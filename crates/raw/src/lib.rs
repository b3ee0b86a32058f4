//! vdisk-raw: raw disk images.
//!
//! - [`MappedFile`]: a read-only file behind a memory map, with a plain positional-read
//!   fallback where mapping is not possible (empty files, pipes, some special files);
//! - [`RawImage`]: a raw image as a [`vdisk_core::DiskImage`], whose allocation map comes from
//!   the file system's holes (`SEEK_DATA`/`SEEK_HOLE`);
//! - [`SparseWriter`]: writes an image file that leaves holes where the data is zero, under a
//!   temporary name that becomes the real one only when complete.

mod file;
mod holes;
mod image;
mod writer;

pub use file::MappedFile;
pub use holes::data_ranges;
pub use image::RawImage;
pub use writer::{partial_path, write_file, SealedFile, SparseWriter};
